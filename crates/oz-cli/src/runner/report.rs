//! What a managed run tells the server: INPROGRESS, a status message, and
//! the pull requests the harness opened (`POST /agent/runs/{id}/report`).
//! A report that fails is a warning: the run itself goes on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::env::Env;
use super::exec::Sink;
use crate::client::Client;

/// Longest a single report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest status message sent (the rest is cut).
const MAX_STATUS: usize = 1000;
/// How long pending artifact reports may take once the harness is done.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Reporter {
    client: Client,
    run_id: String,
    stderr: Sink,
}

impl Reporter {
    pub fn new(client: Client, run_id: &str, stderr: Sink) -> Self {
        Reporter {
            client,
            run_id: run_id.to_owned(),
            stderr,
        }
    }

    async fn send(&self, what: &str, body: Value) -> bool {
        let result =
            tokio::time::timeout(REPORT_TIMEOUT, self.client.report(&self.run_id, &body)).await;
        let err = match result {
            Ok(Ok(_)) => return true,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", REPORT_TIMEOUT.as_secs()),
        };
        self.stderr
            .say(&format!("warning: cannot report {what}: {err}"))
            .await;
        false
    }

    pub async fn in_progress(&self) -> bool {
        self.send("that the run started", json!({ "state": "INPROGRESS" }))
            .await
    }

    pub async fn status(&self, message: &str) -> bool {
        self.send(
            "the status message",
            json!({ "status_message": truncate(message, MAX_STATUS) }),
        )
        .await
    }

    pub async fn pull_request(&self, url: &str, branch: &str) -> bool {
        let body = json!({
            "artifact": {
                "artifact_type": "PULL_REQUEST",
                "data": { "url": url, "branch": branch },
            }
        });
        self.send(&format!("pull request {url}"), body).await
    }
}

/// Report every distinct pull request received, each once, with the branch
/// checked out at the time. Ends when every sender is gone.
pub fn spawn_pr_reporter(
    reporter: Arc<Reporter>,
    cwd: PathBuf,
    env: Env,
) -> (mpsc::UnboundedSender<String>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        let mut seen = HashSet::new();
        while let Some(url) = rx.recv().await {
            if !seen.insert(url.clone()) {
                continue;
            }
            let branch = git_branch(&cwd, &env).await;
            reporter.pull_request(&url, &branch).await;
        }
    });
    (tx, task)
}

/// `git rev-parse --abbrev-ref HEAD` in `cwd`, else in `cwd/repo` (where
/// the worker's setup usually clones), else "".
pub async fn git_branch(cwd: &Path, env: &Env) -> String {
    for dir in [cwd.to_path_buf(), cwd.join("repo")] {
        if !dir.is_dir() {
            continue;
        }
        let Some(git) = env.find_program("git", cwd) else {
            return String::new();
        };
        let out = tokio::process::Command::new(git)
            .args(["rev-parse", "--abbrev-ref", "HEAD"])
            .current_dir(&dir)
            .env_clear()
            .envs(env.iter())
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await;
        if let Ok(out) = out
            && out.status.success()
        {
            let branch = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !branch.is_empty() {
                return branch;
            }
        }
    }
    String::new()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc…");
        assert_eq!(truncate("ééé", 2), "éé…");
    }

    fn git_env() -> Option<Env> {
        let env = Env::from_process();
        env.find_program("git", Path::new("/")).map(|_| env)
    }

    async fn git(dir: &Path, env: &Env, args: &[&str]) {
        let status = tokio::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(env.iter())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    #[tokio::test]
    async fn branch_of_cwd_or_repo_subdir() {
        let Some(env) = git_env() else {
            eprintln!("git is not installed; skipping");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        // Not a repository, no repo/: nothing.
        let outside = !dir.path().ancestors().any(|d| d.join(".git").exists());
        if outside {
            assert_eq!(git_branch(dir.path(), &env).await, "");
        }
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).expect("mkdir");
        git(&repo, &env, &["init", "-q", "-b", "feature/x"]).await;
        let commit = [
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        ];
        git(&repo, &env, &commit).await;
        if outside {
            assert_eq!(git_branch(dir.path(), &env).await, "feature/x");
        }
        assert_eq!(git_branch(&repo, &env).await, "feature/x");
    }
}
