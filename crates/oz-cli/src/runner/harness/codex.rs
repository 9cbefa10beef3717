//! OpenAI Codex CLI: `codex exec [-m M] [--skip-git-repo-check] <prompt>`.

use std::path::Path;

use super::{Invocation, OutputMode, Request, positional};

pub const PROGRAM: &str = "codex";
pub const INSTALL_HINT: &str = "npm install -g @openai/codex";
/// Codex's state directory variable; one per workspace in managed runs.
pub const STATE_VAR: &str = "CODEX_HOME";

pub fn invocation(req: &Request<'_>) -> Invocation {
    let mut args = vec!["exec".to_owned()];
    if req.sandboxed {
        args.push("--dangerously-bypass-approvals-and-sandbox".to_owned());
    }
    if let Some(model) = req.model {
        args.extend(["-m".to_owned(), model.to_owned()]);
    }
    // Codex refuses to work outside a git repository unless told to; the
    // worker's workspace holds the checkout in a subdirectory.
    if !req.in_git_repo {
        args.push("--skip-git-repo-check".to_owned());
    }
    args.push(positional(req.prompt));
    let mut env = Vec::new();
    if req.isolate_state && !req.env.contains(STATE_VAR) {
        env.push((
            STATE_VAR.to_owned(),
            req.cwd.join(".codex").display().to_string(),
        ));
    }
    Invocation {
        label: "codex".to_owned(),
        program: PROGRAM.to_owned(),
        args,
        env,
        output: OutputMode::Raw,
        install_hint: INSTALL_HINT.to_owned(),
    }
}

/// Is `dir` inside a git work tree (a `.git` directory or file in it or an
/// ancestor)?
pub fn in_git_work_tree(dir: &Path) -> bool {
    dir.ancestors().any(|d| d.join(".git").exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::env::Env;
    use crate::runner::harness::tests::{request, s};

    #[test]
    fn argv_minimal_outside_a_repo() {
        let env = Env::default();
        let inv = invocation(&request(&env, "fix it"));
        assert_eq!(inv.program, "codex");
        assert_eq!(inv.args, s(&["exec", "--skip-git-repo-check", "fix it"]));
        assert_eq!(inv.env, vec![]);
        assert_eq!(inv.output, OutputMode::Raw);
    }

    #[test]
    fn argv_with_model_and_sandbox_in_a_repo() {
        let env = Env::default();
        let mut req = request(&env, "-x fails");
        req.model = Some("gpt-5-codex");
        req.sandboxed = true;
        req.in_git_repo = true;
        assert_eq!(
            invocation(&req).args,
            s(&[
                "exec",
                "--dangerously-bypass-approvals-and-sandbox",
                "-m",
                "gpt-5-codex",
                " -x fails",
            ])
        );
    }

    #[test]
    fn state_dir_in_managed_runs_unless_set() {
        let env = Env::default();
        let mut req = request(&env, "p");
        req.isolate_state = true;
        assert_eq!(
            invocation(&req).env,
            vec![("CODEX_HOME".to_owned(), "/work/space/.codex".to_owned())]
        );
        let set = Env::from_pairs([("CODEX_HOME", "/elsewhere")]);
        let mut req = request(&set, "p");
        req.isolate_state = true;
        assert_eq!(invocation(&req).env, vec![]);
    }

    #[test]
    fn git_work_tree_detection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).expect("mkdir");
        // (The temp dir is normally outside any repository.)
        let outside = !dir.path().ancestors().any(|d| d.join(".git").exists());
        if outside {
            assert!(!in_git_work_tree(&sub));
        }
        std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
        assert!(in_git_work_tree(&sub));
    }
}
