//! Arguments of `oz agent run`, parsed by hand.
//!
//! The runner must accept every argv the official worker builds
//! (`oz_worker::args::agent_args`), including server-provided
//! `additional_oz_args` it has never heard of. So an unknown option is a
//! warning, never an error: it is dropped, and so is the token after it when
//! that token is not itself an option (`oz agent run` takes no positional
//! arguments, so such a token can only be the unknown option's value).

use std::path::PathBuf;

/// Value `--idle-on-complete` takes when given without one.
pub const DEFAULT_IDLE_ON_COMPLETE: &str = "45m";

/// Everything `oz agent run` understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunArgs {
    // Set by the worker.
    pub task_id: Option<String>,
    pub sandboxed: bool,
    pub server_root_url: Option<String>,
    pub share: Vec<String>,
    pub model: Option<String>,
    pub profile: Option<String>,
    pub skill: Option<String>,
    pub mcp: Vec<String>,
    /// `--computer-use` (true) / `--no-computer-use` (false); last one wins.
    pub computer_use: Option<bool>,
    pub bedrock_inference_role: Option<String>,
    pub bedrock_role_region: Option<String>,
    pub harness: Option<String>,
    pub no_snapshot: bool,
    pub snapshot_upload_timeout: Option<String>,
    pub snapshot_script_timeout: Option<String>,
    pub environment: Option<String>,
    /// The bare flag means [`DEFAULT_IDLE_ON_COMPLETE`].
    pub idle_on_complete: Option<String>,
    pub session_sharing_server_url: Option<String>,
    // Documented for local use.
    pub prompt: Option<String>,
    pub cwd: Option<PathBuf>,
    pub api_key: Option<String>,
    // Ours.
    /// API base URL (like the rest of `oz`), before `OZ_API_BASE_URL`.
    pub api_url: Option<String>,
    pub harness_config: Option<PathBuf>,
    pub help: bool,
}

/// Parse result: the arguments and one warning per dropped token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub args: RunArgs,
    pub warnings: Vec<String>,
}

/// A known option used wrongly (a value option without its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// How a known option consumes the command line.
#[derive(Clone, Copy)]
enum Kind {
    Switch(fn(&mut RunArgs)),
    Value(fn(&mut RunArgs, String)),
}

/// Long (and short) names of every known option.
fn lookup(name: &str) -> Option<Kind> {
    use Kind::{Switch, Value};
    let kind = match name {
        "--task-id" => Value(|a, v| a.task_id = Some(v)),
        "--sandboxed" => Switch(|a| a.sandboxed = true),
        "--server-root-url" => Value(|a, v| a.server_root_url = Some(v)),
        "--share" => Value(|a, v| a.share.push(v)),
        "--model" => Value(|a, v| a.model = Some(v)),
        "--profile" => Value(|a, v| a.profile = Some(v)),
        "--skill" => Value(|a, v| a.skill = Some(v)),
        "--mcp" => Value(|a, v| a.mcp.push(v)),
        "--computer-use" => Switch(|a| a.computer_use = Some(true)),
        "--no-computer-use" => Switch(|a| a.computer_use = Some(false)),
        "--bedrock-inference-role" => Value(|a, v| a.bedrock_inference_role = Some(v)),
        "--bedrock-role-region" => Value(|a, v| a.bedrock_role_region = Some(v)),
        "--harness" => Value(|a, v| a.harness = Some(v)),
        "--no-snapshot" => Switch(|a| a.no_snapshot = true),
        "--snapshot-upload-timeout" => Value(|a, v| a.snapshot_upload_timeout = Some(v)),
        "--snapshot-script-timeout" => Value(|a, v| a.snapshot_script_timeout = Some(v)),
        "--environment" | "-e" => Value(|a, v| a.environment = Some(v)),
        "--session-sharing-server-url" => Value(|a, v| a.session_sharing_server_url = Some(v)),
        "--prompt" => Value(|a, v| a.prompt = Some(v)),
        "--cwd" | "-C" => Value(|a, v| a.cwd = Some(PathBuf::from(v))),
        "--api-key" => Value(|a, v| a.api_key = Some(v)),
        "--api-url" => Value(|a, v| a.api_url = Some(v)),
        "--harness-config" => Value(|a, v| a.harness_config = Some(PathBuf::from(v))),
        "--help" | "-h" => Switch(|a| a.help = true),
        _ => return None,
    };
    Some(kind)
}

fn is_option(token: &str) -> bool {
    token.starts_with('-') && token != "-"
}

/// Parse the arguments after `oz agent run`.
pub fn parse(raw: &[String]) -> Result<Parsed, UsageError> {
    let mut out = Parsed::default();
    let mut i = 0;
    while i < raw.len() {
        let token = raw[i].as_str();
        i += 1;
        if token == "--" {
            for rest in &raw[i..] {
                out.warnings
                    .push(format!("ignoring unexpected argument {rest:?}"));
            }
            break;
        }
        if !is_option(token) {
            out.warnings
                .push(format!("ignoring unexpected argument {token:?}"));
            continue;
        }
        let (name, inline) = match token.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (token, None),
        };

        // The one option whose value is optional.
        if name == "--idle-on-complete" {
            let value = match inline {
                Some(v) => v,
                None => match raw.get(i) {
                    Some(next) if !is_option(next) => {
                        i += 1;
                        next.clone()
                    }
                    _ => DEFAULT_IDLE_ON_COMPLETE.to_owned(),
                },
            };
            if humantime::parse_duration(&value).is_err() {
                out.warnings.push(format!(
                    "--idle-on-complete {value:?} is not a duration (like 45m); ignored"
                ));
            }
            out.args.idle_on_complete = Some(value);
            continue;
        }

        match lookup(name) {
            Some(Kind::Switch(set)) => {
                if inline.is_some() {
                    out.warnings
                        .push(format!("ignoring the value given to {name}"));
                }
                set(&mut out.args);
            }
            Some(Kind::Value(set)) => {
                let value = match inline {
                    Some(v) => v,
                    None => match raw.get(i) {
                        // Taken as is, even when it starts with '-': the
                        // worker passes `--server-root-url ""` and a prompt
                        // may well begin with a dash.
                        Some(next) => {
                            i += 1;
                            next.clone()
                        }
                        None => {
                            return Err(UsageError(format!("{name} needs a value")));
                        }
                    },
                };
                set(&mut out.args, value);
            }
            None => {
                // Unknown: drop it, and its value if one follows.
                let mut dropped = format!("ignoring unknown option {name}");
                if inline.is_none()
                    && let Some(next) = raw.get(i)
                    && !is_option(next)
                {
                    i += 1;
                    dropped = format!("ignoring unknown option {name} (and its value)");
                }
                out.warnings.push(dropped);
            }
        }
    }
    Ok(out)
}

/// `oz agent run --help`.
pub const HELP: &str = "\
Run an agent harness on a task.

Usage:
  oz agent run --prompt <TEXT> [--harness <NAME>] [options]   run locally, no server
  oz agent run --task-id <ID> [options]                       run a task (started by the worker)

Options:
  --prompt <TEXT>           The task (local use). For the command harness it is a shell script.
  --task-id <ID>            Run this Oz run: read its prompt and config from the server, report
                            progress and pull requests. Auth: WARP_API_KEY (or --api-key);
                            API: --api-url, else OZ_API_BASE_URL, else
                            <--server-root-url>/api/v1. Files the harness leaves in
                            $OZ_ARTIFACTS_DIR (.oz/artifacts) are uploaded as artifacts,
                            those in $OZ_HANDOFF_DIR (.oz/handoff) as handoff files.
  --harness <NAME>          claude, codex, gemini, command, or a custom harness
                            (default: OZ_DEFAULT_HARNESS, else the harness config's `default`)
  --harness-config <PATH>   Custom harnesses (YAML; default: OZ_HARNESS_CONFIG, else
                            ~/.config/oz/harnesses.yaml)
  --model <ID>              Model for the harness
  --mcp <JSON|PATH>         MCP servers (repeatable; passed to the claude harness)
  --sandboxed               The workspace is disposable: let the harness act without asking
  -C, --cwd <PATH>          Working directory (default: the current one)
  --api-key <KEY>           API key (default: WARP_API_KEY)
  --api-url <URL>           API base URL (default: OZ_API_BASE_URL)
  --server-root-url <URL>   Oz server root, used when OZ_API_BASE_URL is not set
  -h, --help                Print this help

Accepted for compatibility with the Oz worker (no effect here): --share, --profile, --skill,
--computer-use, --no-computer-use, --bedrock-inference-role, --bedrock-role-region,
--no-snapshot, --snapshot-upload-timeout, --snapshot-script-timeout, -e/--environment,
--idle-on-complete [DURATION], --session-sharing-server-url.
Unknown options are ignored with a warning.

Exit status: the harness's (128+N when it dies of signal N); 127 when its CLI is not installed;
2 for a usage or configuration error; 1 when the run cannot be read from the server.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ok(parts: &[&str]) -> Parsed {
        match parse(&argv(parts)) {
            Ok(p) => p,
            Err(e) => panic!("{parts:?} should parse: {e}"),
        }
    }

    #[test]
    fn full_worker_argv() {
        let p = ok(&[
            "--share",
            "team:edit",
            "--task-id",
            "run-1",
            "--sandboxed",
            "--server-root-url",
            "http://127.0.0.1:8080",
            "--model",
            "m1",
            "--profile",
            "p1",
            "--skill",
            "s1",
            "--mcp",
            r#"{"a":{"k":"v"}}"#,
            "--computer-use",
            "--bedrock-inference-role",
            "r",
            "--bedrock-role-region",
            "g",
            "--harness",
            "claude",
            "--share",
            "public:view",
            "--no-snapshot",
            "--snapshot-upload-timeout",
            "1s",
            "--snapshot-script-timeout",
            "2s",
            "--environment",
            "env-1",
            "--idle-on-complete",
            "5m",
            "--session-sharing-server-url",
            "wss://s",
        ]);
        assert_eq!(p.warnings, Vec::<String>::new());
        let want = RunArgs {
            task_id: Some("run-1".into()),
            sandboxed: true,
            server_root_url: Some("http://127.0.0.1:8080".into()),
            share: vec!["team:edit".into(), "public:view".into()],
            model: Some("m1".into()),
            profile: Some("p1".into()),
            skill: Some("s1".into()),
            mcp: vec![r#"{"a":{"k":"v"}}"#.into()],
            computer_use: Some(true),
            bedrock_inference_role: Some("r".into()),
            bedrock_role_region: Some("g".into()),
            harness: Some("claude".into()),
            no_snapshot: true,
            snapshot_upload_timeout: Some("1s".into()),
            snapshot_script_timeout: Some("2s".into()),
            environment: Some("env-1".into()),
            idle_on_complete: Some("5m".into()),
            session_sharing_server_url: Some("wss://s".into()),
            ..Default::default()
        };
        assert_eq!(p.args, want);
    }

    #[test]
    fn empty_server_root_url_is_a_value() {
        let p = ok(&[
            "--task-id",
            "r",
            "--sandboxed",
            "--server-root-url",
            "",
            "--idle-on-complete",
        ]);
        assert_eq!(p.args.server_root_url.as_deref(), Some(""));
        assert_eq!(p.args.idle_on_complete.as_deref(), Some("45m"));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn bare_idle_on_complete_at_the_end() {
        let p = ok(&["--task-id", "r", "--idle-on-complete"]);
        assert_eq!(p.args.idle_on_complete.as_deref(), Some("45m"));
        assert_eq!(p.args.task_id.as_deref(), Some("r"));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn bare_idle_on_complete_before_another_flag() {
        let p = ok(&[
            "--idle-on-complete",
            "--session-sharing-server-url",
            "wss://s",
        ]);
        assert_eq!(p.args.idle_on_complete.as_deref(), Some("45m"));
        assert_eq!(
            p.args.session_sharing_server_url.as_deref(),
            Some("wss://s")
        );
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn idle_on_complete_with_value_and_inline() {
        assert_eq!(
            ok(&["--idle-on-complete", "0s"]).args.idle_on_complete,
            Some("0s".into())
        );
        assert_eq!(
            ok(&["--idle-on-complete=10m"]).args.idle_on_complete,
            Some("10m".into())
        );
        let p = ok(&["--idle-on-complete", "soon"]);
        assert_eq!(p.args.idle_on_complete.as_deref(), Some("soon"));
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    }

    #[test]
    fn unknown_switch_is_dropped() {
        let p = ok(&["--task-id", "r", "--skip-initial-turn", "--sandboxed"]);
        assert_eq!(p.args.task_id.as_deref(), Some("r"));
        assert!(p.args.sandboxed);
        assert_eq!(
            p.warnings,
            vec!["ignoring unknown option --skip-initial-turn"]
        );
    }

    #[test]
    fn unknown_option_with_inline_value_is_dropped() {
        let p = ok(&["--future-flag=value", "--sandboxed"]);
        assert!(p.args.sandboxed);
        assert_eq!(p.warnings, vec!["ignoring unknown option --future-flag"]);
    }

    #[test]
    fn unknown_option_with_separate_value_drops_both() {
        let p = ok(&["--future-flag", "value", "--task-id", "r"]);
        assert_eq!(p.args.task_id.as_deref(), Some("r"));
        assert_eq!(
            p.warnings,
            vec!["ignoring unknown option --future-flag (and its value)"]
        );
    }

    #[test]
    fn unknown_option_last_and_unknown_short_option() {
        let p = ok(&["--task-id", "r", "-x", "--debug"]);
        assert_eq!(p.args.task_id.as_deref(), Some("r"));
        assert_eq!(
            p.warnings,
            vec![
                "ignoring unknown option -x",
                "ignoring unknown option --debug"
            ]
        );
    }

    #[test]
    fn unknown_options_in_the_worker_position_before_idle() {
        // additional_oz_args sit between the snapshot flags and the idle flag.
        let p = ok(&[
            "--task-id",
            "r",
            "--sandboxed",
            "--server-root-url",
            "http://h",
            "--skip-initial-turn",
            "--future-flag",
            "v",
            "--idle-on-complete",
        ]);
        assert_eq!(p.args.idle_on_complete.as_deref(), Some("45m"));
        assert_eq!(p.warnings.len(), 2);
    }

    #[test]
    fn stray_positional_is_dropped() {
        let p = ok(&["stray", "--prompt", "x"]);
        assert_eq!(p.args.prompt.as_deref(), Some("x"));
        assert_eq!(p.warnings, vec![r#"ignoring unexpected argument "stray""#]);
    }

    #[test]
    fn inline_values_of_known_options() {
        let p = ok(&[
            "--prompt=a=b",
            "--model=m",
            "--harness-config=/x.yaml",
            "--api-url=http://h/api/v1",
            "--api-key",
            "k",
        ]);
        assert_eq!(p.args.api_url.as_deref(), Some("http://h/api/v1"));
        assert_eq!(p.args.api_key.as_deref(), Some("k"));
        assert_eq!(p.args.prompt.as_deref(), Some("a=b"));
        assert_eq!(p.args.model.as_deref(), Some("m"));
        assert_eq!(p.args.harness_config, Some(PathBuf::from("/x.yaml")));
    }

    #[test]
    fn value_may_start_with_a_dash() {
        let p = ok(&["--prompt", "-v is broken"]);
        assert_eq!(p.args.prompt.as_deref(), Some("-v is broken"));
    }

    #[test]
    fn computer_use_last_wins() {
        assert_eq!(
            ok(&["--computer-use", "--no-computer-use"])
                .args
                .computer_use,
            Some(false)
        );
    }

    #[test]
    fn missing_value_is_a_usage_error() {
        let e = parse(&argv(&["--task-id"])).unwrap_err();
        assert_eq!(e.0, "--task-id needs a value");
    }

    #[test]
    fn help_and_short_options() {
        assert!(ok(&["--help"]).args.help);
        assert!(ok(&["-h"]).args.help);
        let p = ok(&["-C", "/tmp", "-e", "env"]);
        assert_eq!(p.args.cwd, Some(PathBuf::from("/tmp")));
        assert_eq!(p.args.environment.as_deref(), Some("env"));
    }

    #[test]
    fn double_dash_ends_parsing() {
        let p = ok(&["--prompt", "x", "--", "--model", "m"]);
        assert_eq!(p.args.model, None);
        assert_eq!(p.warnings.len(), 2);
    }
}
