//! Harnesses: adapters from a prompt to a real agent CLI's command line.
//!
//! Built in: `claude`, `codex`, `gemini` and `command` (the prompt is a
//! shell script). Others come from a harness config file ([`custom`]). Each
//! adapter only builds an [`Invocation`]; running it is `runner::exec`'s job.

pub mod claude;
pub mod codex;
pub mod command;
pub mod custom;
pub mod gemini;

use std::path::Path;

use self::custom::{CustomHarness, HarnessConfig};
use crate::runner::env::Env;

/// Environment variable naming the harness to use when none is chosen.
pub const ENV_DEFAULT_HARNESS: &str = "OZ_DEFAULT_HARNESS";

/// Why a managed run has no harness.
pub const OZ_HARNESS_UNSUPPORTED: &str = "this run uses the built-in oz harness, which this runner does not provide; set config.harness.type to claude, codex, gemini or command, or set OZ_DEFAULT_HARNESS";

/// A harness the runner can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Harness {
    Claude,
    Codex,
    Gemini,
    Command,
    Custom(CustomHarness),
}

impl Harness {
    pub fn name(&self) -> &str {
        match self {
            Harness::Claude => "claude",
            Harness::Codex => "codex",
            Harness::Gemini => "gemini",
            Harness::Command => "command",
            Harness::Custom(c) => &c.name,
        }
    }

    pub fn invocation(&self, req: &Request<'_>) -> Invocation {
        match self {
            Harness::Claude => claude::invocation(req),
            Harness::Codex => codex::invocation(req),
            Harness::Gemini => gemini::invocation(req),
            Harness::Command => command::invocation(req),
            Harness::Custom(c) => custom::invocation(c, req),
        }
    }
}

/// A built-in harness by name (`claude-code` is an alias of `claude`).
pub fn builtin(name: &str) -> Option<Harness> {
    match name {
        "claude" | "claude-code" => Some(Harness::Claude),
        "codex" => Some(Harness::Codex),
        "gemini" => Some(Harness::Gemini),
        "command" => Some(Harness::Command),
        _ => None,
    }
}

/// Names a custom harness may not take.
pub fn is_reserved(name: &str) -> bool {
    builtin(name).is_some() || name == "oz"
}

/// The harness called `name`: built in, else from the config.
pub fn resolve(name: &str, config: Option<&HarnessConfig>) -> Result<Harness, String> {
    if let Some(h) = builtin(name) {
        return Ok(h);
    }
    if name == "oz" {
        return Err(OZ_HARNESS_UNSUPPORTED.to_owned());
    }
    if let Some(h) = config.and_then(|c| c.harnesses.get(name)) {
        return Ok(Harness::Custom(h.clone()));
    }
    let where_custom = match config {
        Some(c) => format!("none of that name in {}", c.path.display()),
        None => format!(
            "no harness config was found (--harness-config, {}, ~/.config/oz/harnesses.yaml)",
            custom::ENV_CONFIG
        ),
    };
    Err(format!(
        "unknown harness {name:?}: the built-in ones are claude, codex, gemini and command; custom ones come from a harness config ({where_custom})"
    ))
}

/// The first candidate that names a harness: set, not blank, not `oz`.
/// Returns the name and whether an `oz` was passed over on the way.
pub fn first_named<'a>(candidates: &[Option<&'a str>]) -> (Option<&'a str>, bool) {
    let mut saw_oz = false;
    for c in candidates.iter().flatten() {
        let name = c.trim();
        if name == "oz" {
            saw_oz = true;
        } else if !name.is_empty() {
            return (Some(name), saw_oz);
        }
    }
    (None, saw_oz)
}

/// What a harness needs to know to build its command line.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub prompt: &'a str,
    pub model: Option<&'a str>,
    /// The workspace is disposable: the harness may act without asking.
    pub sandboxed: bool,
    /// `--mcp-config` JSON (claude only).
    pub mcp_config: Option<&'a str>,
    pub cwd: &'a Path,
    /// The runner's environment (a variable already set is not overridden).
    pub env: &'a Env,
    /// Keep claude's and codex's state inside the workspace (managed runs:
    /// concurrent tasks must not share it; locally the user's own login is
    /// what counts).
    pub isolate_state: bool,
    /// `cwd` is inside a git work tree.
    pub in_git_repo: bool,
}

/// How the harness's stdout is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Byte for byte.
    Raw,
    /// Claude's stream-json, rendered for people.
    ClaudeStreamJson,
}

/// A harness command, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Name shown in messages.
    pub label: String,
    /// Program name (searched on PATH) or path.
    pub program: String,
    pub args: Vec<String>,
    /// Added to the runner's environment.
    pub env: Vec<(String, String)>,
    pub output: OutputMode,
    /// What to install when `program` is missing.
    pub install_hint: String,
}

impl Invocation {
    /// The message for a missing program.
    pub fn missing_message(&self) -> String {
        format!(
            "the {} harness needs `{}`, which is not installed or not on PATH; install it: {}",
            self.label, self.program, self.install_hint
        )
    }
}

/// A prompt as a positional argument of an agent CLI: one that starts with
/// a dash would be read as an option, so it gets a leading space (harmless
/// to a model).
pub fn positional(prompt: &str) -> String {
    if prompt.starts_with('-') {
        format!(" {prompt}")
    } else {
        prompt.to_owned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn s(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| (*p).to_owned()).collect()
    }

    /// A plain request: no model, not sandboxed, no MCP, unmanaged, outside
    /// a repository, in /work/space.
    pub(crate) fn request<'a>(env: &'a Env, prompt: &'a str) -> Request<'a> {
        Request {
            prompt,
            model: None,
            sandboxed: false,
            mcp_config: None,
            cwd: Path::new("/work/space"),
            env,
            isolate_state: false,
            in_git_repo: false,
        }
    }

    #[test]
    fn builtins_and_aliases() {
        assert_eq!(builtin("claude"), Some(Harness::Claude));
        assert_eq!(builtin("claude-code"), Some(Harness::Claude));
        assert_eq!(builtin("codex"), Some(Harness::Codex));
        assert_eq!(builtin("gemini"), Some(Harness::Gemini));
        assert_eq!(builtin("command"), Some(Harness::Command));
        assert_eq!(builtin("Claude"), None);
        assert!(is_reserved("oz"));
    }

    #[test]
    fn resolve_names() {
        assert_eq!(resolve("codex", None), Ok(Harness::Codex));
        assert_eq!(resolve("oz", None), Err(OZ_HARNESS_UNSUPPORTED.to_owned()));
        let e = resolve("aider", None).unwrap_err();
        assert!(e.contains("unknown harness \"aider\""), "{e}");
        let config = custom::parse(
            "harnesses:\n  aider:\n    command: [aider]\n",
            Path::new("h.yaml"),
        )
        .expect("config");
        assert!(
            matches!(resolve("aider", Some(&config)), Ok(Harness::Custom(c)) if c.name == "aider")
        );
        let e = resolve("other", Some(&config)).unwrap_err();
        assert!(e.contains("h.yaml"), "{e}");
    }

    #[test]
    fn first_named_skips_oz_and_blanks() {
        assert_eq!(
            first_named(&[None, Some(" "), Some("codex")]),
            (Some("codex"), false)
        );
        assert_eq!(
            first_named(&[Some("oz"), Some(" claude ")]),
            (Some("claude"), true)
        );
        assert_eq!(first_named(&[Some("oz"), None]), (None, true));
        assert_eq!(first_named(&[]), (None, false));
    }

    #[test]
    fn missing_message_names_the_install() {
        let env = Env::default();
        let inv = Harness::Claude.invocation(&request(&env, "p"));
        assert_eq!(
            inv.missing_message(),
            "the claude harness needs `claude`, which is not installed or not on PATH; install it: npm install -g @anthropic-ai/claude-code"
        );
    }
}
