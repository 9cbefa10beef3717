//! Custom harnesses, declared in a YAML file:
//!
//! ```yaml
//! default: aider            # optional: the harness to use when none is named
//! harnesses:
//!   aider:
//!     command: [aider, --yes, --model, "{model}", --message, "{prompt}"]
//!     env: { AIDER_CHECK_UPDATE: "false" }
//!     install_hint: pip install aider-chat
//! ```
//!
//! `{prompt}` and `{model}` are replaced inside every argument after the
//! first. Without a model, an argument holding `{model}` is left out, and so
//! is the option just before it (`--model` above) when the argument is not
//! an option itself and that option has no placeholder of its own. The file is strict: an unknown key, a duplicate
//! name or a built-in name is an error that names the line.
//!
//! Where the file is: `--harness-config PATH`, else `OZ_HARNESS_CONFIG`,
//! else `$XDG_CONFIG_HOME/oz/harnesses.yaml` (`~/.config/…`) when it exists.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Invocation, OutputMode, Request, is_reserved};
use crate::runner::env::Env;

/// Environment variable naming the harness config file.
pub const ENV_CONFIG: &str = "OZ_HARNESS_CONFIG";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarnessConfig {
    pub path: PathBuf,
    pub default: Option<String>,
    pub harnesses: BTreeMap<String, CustomHarness>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomHarness {
    pub name: String,
    /// Program and arguments, with placeholders.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub install_hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    default: Option<Spanned<String>>,
    #[serde(default)]
    harnesses: HashMap<Spanned<String>, RawHarness>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHarness {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    install_hint: Option<String>,
}

/// Parse the text of a harness config file; errors start with the path and
/// name the line.
pub fn parse(text: &str, path: &Path) -> Result<HarnessConfig, String> {
    let shown = path.display();
    let raw = if text.trim().is_empty() {
        None
    } else {
        serde_saphyr::from_str::<Option<RawFile>>(text).map_err(|e| format!("{shown}: {e}"))?
    };
    let Some(raw) = raw else {
        return Ok(HarnessConfig {
            path: path.to_path_buf(),
            default: None,
            harnesses: BTreeMap::new(),
        });
    };

    let mut entries: Vec<(Spanned<String>, RawHarness)> = raw.harnesses.into_iter().collect();
    entries.sort_by_key(|(name, _)| name.referenced.line());
    let mut harnesses = BTreeMap::new();
    for (name, h) in entries {
        let line = name.referenced.line();
        let name = name.value;
        let at = |msg: String| format!("{shown}: line {line}: {msg}");
        if is_reserved(&name) {
            return Err(at(format!(
                "{name:?} is a built-in harness name; give the custom harness another name"
            )));
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(at(format!(
                "harness name {name:?} must be letters, digits, '-', '_' or '.'"
            )));
        }
        match h.command.first() {
            None => return Err(at(format!("harness {name:?}: command must not be empty"))),
            Some(program) if program.trim().is_empty() || program.contains('{') => {
                return Err(at(format!(
                    "harness {name:?}: the first word of command must be the program, without placeholders"
                )));
            }
            Some(_) => {}
        }
        if let Some(key) = h
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(at(format!(
                "harness {name:?}: {key:?} is not a valid environment variable name"
            )));
        }
        if let Some(v) = h.env.values().find(|v| v.contains('\0')) {
            return Err(at(format!(
                "harness {name:?}: environment value {v:?} contains a NUL byte"
            )));
        }
        harnesses.insert(
            name.clone(),
            CustomHarness {
                name,
                command: h.command,
                env: h.env,
                install_hint: h.install_hint.filter(|s| !s.trim().is_empty()),
            },
        );
    }

    let default = match raw.default {
        None => None,
        Some(d) => {
            let name = d.value.trim().to_owned();
            let known = super::builtin(&name).is_some() || harnesses.contains_key(&name);
            if !known {
                return Err(format!(
                    "{shown}: line {}: default harness {name:?} is neither built in (claude, codex, gemini, command) nor defined under harnesses",
                    d.referenced.line()
                ));
            }
            Some(name)
        }
    };
    Ok(HarnessConfig {
        path: path.to_path_buf(),
        default,
        harnesses,
    })
}

/// Find and read the harness config. An explicitly named file must exist;
/// the default location is optional.
pub fn load(
    explicit: Option<&Path>,
    env: &Env,
    cwd: &Path,
) -> Result<Option<HarnessConfig>, String> {
    let (path, required) = if let Some(p) = explicit {
        (cwd.join(p), true)
    } else if let Some(p) = env.non_empty(ENV_CONFIG) {
        (cwd.join(p), true)
    } else if let Some(p) = default_path(env) {
        (p, false)
    } else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path).map(Some),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read the harness config {}: {e}",
            path.display()
        )),
    }
}

fn default_path(env: &Env) -> Option<PathBuf> {
    let base = match env.non_empty("XDG_CONFIG_HOME") {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(env.non_empty("HOME")?).join(".config"),
    };
    Some(base.join("oz").join("harnesses.yaml"))
}

pub fn invocation(h: &CustomHarness, req: &Request<'_>) -> Invocation {
    let program = h.command.first().cloned().unwrap_or_default();
    let args = substitute(
        h.command.get(1..).unwrap_or_default(),
        req.prompt,
        req.model,
    );
    let install_hint = h
        .install_hint
        .clone()
        .unwrap_or_else(|| format!("install {program} or put it on PATH"));
    Invocation {
        label: h.name.clone(),
        program,
        args,
        env: h.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        output: OutputMode::Raw,
        install_hint,
    }
}

/// Fill `{prompt}` and `{model}` in (one pass, so a prompt that mentions
/// `{model}` stays as written).
fn substitute(args: &[String], prompt: &str, model: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    for (i, arg) in args.iter().enumerate() {
        if model.is_none() && arg.contains("{model}") {
            // `--model {model}`: the option goes too; `--model={model}` is one word.
            let flag_before = !arg.starts_with('-')
                && i.checked_sub(1)
                    .and_then(|j| args.get(j))
                    .is_some_and(|prev| prev.starts_with('-') && !prev.contains('{'));
            if flag_before {
                out.pop();
            }
            continue;
        }
        let mut filled = String::with_capacity(arg.len());
        let mut rest = arg.as_str();
        while let Some(open) = rest.find('{') {
            filled.push_str(&rest[..open]);
            let tail = &rest[open..];
            if let Some(after) = tail.strip_prefix("{prompt}") {
                filled.push_str(prompt);
                rest = after;
            } else if let Some(after) = tail.strip_prefix("{model}") {
                filled.push_str(model.unwrap_or_default());
                rest = after;
            } else {
                filled.push('{');
                rest = &tail[1..];
            }
        }
        filled.push_str(rest);
        out.push(filled);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::harness::tests::{request, s};

    const GOOD: &str = "\
default: aider
harnesses:
  aider:
    command: [aider, --yes, --model, \"{model}\", --message, \"{prompt}\"]
    env:
      AIDER_CHECK_UPDATE: \"false\"
    install_hint: pip install aider-chat
  echo:
    command: [\"./agent.sh\", \"--prompt={prompt}\"]
";

    fn good() -> HarnessConfig {
        parse(GOOD, Path::new("h.yaml")).expect("good config")
    }

    #[test]
    fn parses_a_good_file() {
        let c = good();
        assert_eq!(c.default.as_deref(), Some("aider"));
        assert_eq!(
            c.harnesses.get("aider"),
            Some(&CustomHarness {
                name: "aider".into(),
                command: s(&[
                    "aider",
                    "--yes",
                    "--model",
                    "{model}",
                    "--message",
                    "{prompt}"
                ]),
                env: [("AIDER_CHECK_UPDATE".to_owned(), "false".to_owned())].into(),
                install_hint: Some("pip install aider-chat".into()),
            })
        );
        assert_eq!(c.harnesses.len(), 2);
    }

    #[test]
    fn empty_file_is_empty_config() {
        for text in ["", "\n# nothing\n", "~\n"] {
            let c = parse(text, Path::new("h.yaml")).expect("empty");
            assert_eq!(c.default, None);
            assert!(c.harnesses.is_empty());
        }
    }

    #[test]
    fn unknown_keys_name_their_line() {
        let e = parse(
            "harnesses:\n  a:\n    command: [x]\n    args: [y]\n",
            Path::new("h.yaml"),
        )
        .unwrap_err();
        assert!(e.starts_with("h.yaml: "), "{e}");
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("args"), "{e}");
        let e = parse("defaults: a\n", Path::new("h.yaml")).unwrap_err();
        assert!(e.contains("line 1") && e.contains("defaults"), "{e}");
    }

    #[test]
    fn reserved_and_bad_names_are_refused_with_line() {
        for name in ["claude", "codex", "gemini", "command", "oz"] {
            let text =
                format!("harnesses:\n  ok:\n    command: [x]\n  {name}:\n    command: [y]\n");
            let e = parse(&text, Path::new("h.yaml")).unwrap_err();
            assert!(
                e.contains("line 4") && e.contains("built-in"),
                "{name}: {e}"
            );
        }
        let e = parse(
            "harnesses:\n  \"a b\":\n    command: [x]\n",
            Path::new("h.yaml"),
        )
        .unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn structural_errors() {
        let cases = [
            ("harnesses:\n  a:\n    command: []\n", "line 2"),
            ("harnesses:\n  a:\n    command: [\"{prompt}\"]\n", "line 2"),
            ("harnesses:\n  a: {}\n", "command"),
            (
                "harnesses:\n  a:\n    command: [x]\n    env: {\"A=B\": c}\n",
                "line 2",
            ),
            ("default: nope\n", "line 1"),
            (
                "harnesses:\n  a:\n    command: [x]\n  a:\n    command: [y]\n",
                "line 4",
            ),
            ("harnesses:\n  a:\n    command: x\n", "line 3"),
        ];
        for (text, want) in cases {
            let e = parse(text, Path::new("h.yaml")).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn default_may_name_a_builtin() {
        let c = parse("default: codex\n", Path::new("h.yaml")).expect("ok");
        assert_eq!(c.default.as_deref(), Some("codex"));
    }

    #[test]
    fn argv_with_and_without_model() {
        let c = good();
        let aider = c.harnesses.get("aider").expect("aider");
        let env = Env::default();
        let mut req = request(&env, "fix {model} bug");
        let inv = invocation(aider, &req);
        assert_eq!(inv.program, "aider");
        assert_eq!(inv.args, s(&["--yes", "--message", "fix {model} bug"]));
        assert_eq!(
            inv.env,
            vec![("AIDER_CHECK_UPDATE".to_owned(), "false".to_owned())]
        );
        assert_eq!(inv.install_hint, "pip install aider-chat");
        req.model = Some("sonnet");
        assert_eq!(
            invocation(aider, &req).args,
            s(&["--yes", "--model", "sonnet", "--message", "fix {model} bug"])
        );
    }

    #[test]
    fn placeholders_inside_arguments() {
        let c = good();
        let echo = c.harnesses.get("echo").expect("echo");
        let env = Env::default();
        let inv = invocation(echo, &request(&env, "hi {x}"));
        assert_eq!(inv.program, "./agent.sh");
        assert_eq!(inv.args, s(&["--prompt=hi {x}"]));
        assert_eq!(inv.install_hint, "install ./agent.sh or put it on PATH");
        assert_eq!(
            substitute(&s(&["{model}-{prompt}{", "--m={model}"]), "p", Some("m")),
            s(&["m-p{", "--m=m"])
        );
        assert_eq!(
            substitute(&s(&["-v", "--m={model}", "x"]), "p", None),
            s(&["-v", "x"])
        );
    }

    #[test]
    fn load_finds_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cwd = dir.path();
        // Nothing anywhere.
        let env = Env::from_pairs([("HOME", cwd.join("home").as_os_str())]);
        assert_eq!(load(None, &env, cwd), Ok(None));
        // Explicit but missing.
        let e = load(Some(Path::new("nope.yaml")), &env, cwd).unwrap_err();
        assert!(e.contains("nope.yaml"), "{e}");
        // Default location under HOME.
        let conf = cwd.join("home/.config/oz");
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(conf.join("harnesses.yaml"), "default: command\n").expect("write");
        let c = load(None, &env, cwd).expect("load").expect("some");
        assert_eq!(c.default.as_deref(), Some("command"));
        // The env variable beats the default location.
        std::fs::write(cwd.join("other.yaml"), "default: gemini\n").expect("write");
        let mut env2 = env.clone();
        env2.set(ENV_CONFIG, "other.yaml");
        let c = load(None, &env2, cwd).expect("load").expect("some");
        assert_eq!(c.default.as_deref(), Some("gemini"));
        // The flag beats both.
        std::fs::write(cwd.join("flag.yaml"), "default: codex\n").expect("write");
        let c = load(Some(Path::new("flag.yaml")), &env2, cwd)
            .expect("load")
            .expect("some");
        assert_eq!(c.default.as_deref(), Some("codex"));
    }
}
