//! In-process tests of the runner's flow (the binary is tested end to end
//! in `tests/runner.rs`).

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use super::*;

struct Captured {
    code: u8,
    stdout: Vec<u8>,
    stderr: String,
}

/// Run the runner in `cwd` with `env`, capturing its output in files.
async fn run_in(cwd: &Path, env: Env, raw: &[&str]) -> Captured {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out_path = out_dir.path().join("stdout");
    let err_path = out_dir.path().join("stderr");
    let stdout = tokio::fs::File::create(&out_path)
        .await
        .expect("stdout file");
    let stderr = tokio::fs::File::create(&err_path)
        .await
        .expect("stderr file");
    let ctx = Ctx {
        env,
        cwd: cwd.to_path_buf(),
        stdout: Sink::new(stdout),
        stderr: Sink::new(stderr),
        forward_signals: false,
    };
    let code = run(raw.iter().map(|s| (*s).to_owned()).collect(), ctx).await;
    Captured {
        code,
        stdout: std::fs::read(&out_path).expect("read stdout"),
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).expect("read stderr"))
            .into_owned(),
    }
}

/// PATH with only `dir` on it, plus HOME inside it (no user config leaks in).
fn env_with_path(dir: &Path) -> Env {
    Env::from_pairs([
        ("PATH", dir.as_os_str().to_owned()),
        ("HOME", dir.join("home").into_os_string()),
    ])
}

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test]
async fn command_harness_passes_output_and_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let got = run_in(
        dir.path(),
        env_with_path(Path::new("/usr/bin:/bin")),
        &[
            "--harness",
            "command",
            "--prompt",
            "printf 'a\\nb'; echo err >&2; exit 7",
        ],
    )
    .await;
    assert_eq!(got.code, 7, "{}", got.stderr);
    assert_eq!(got.stdout, b"a\nb");
    assert!(got.stderr.contains("err\n"), "{}", got.stderr);
    assert!(
        got.stderr.contains("command exited with status 7"),
        "{}",
        got.stderr
    );
}

#[tokio::test]
async fn missing_cli_is_127_with_install_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (harness, hint) in [
        ("claude", "npm install -g @anthropic-ai/claude-code"),
        ("codex", "npm install -g @openai/codex"),
        ("gemini", "npm install -g @google/gemini-cli"),
    ] {
        let got = run_in(
            dir.path(),
            env_with_path(dir.path()),
            &["--harness", harness, "--prompt", "hi"],
        )
        .await;
        assert_eq!(got.code, 127, "{harness}: {}", got.stderr);
        assert!(got.stderr.contains(hint), "{harness}: {}", got.stderr);
        assert!(got.stdout.is_empty());
    }
}

#[tokio::test]
async fn harness_comes_from_flag_then_env_then_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    script(&bin, "codex", "echo codex \"$@\"\n");
    script(&bin, "gemini", "echo gemini \"$@\"\n");
    std::fs::write(dir.path().join("h.yaml"), "default: gemini\n").expect("write");

    let mut env = env_with_path(&bin);
    env.set("OZ_HARNESS_CONFIG", dir.path().join("h.yaml"));
    let got = run_in(dir.path(), env.clone(), &["--prompt", "p"]).await;
    assert_eq!(got.stdout, b"gemini -p p\n", "{}", got.stderr);

    env.set("OZ_DEFAULT_HARNESS", "codex");
    let got = run_in(dir.path(), env.clone(), &["--prompt", "p"]).await;
    assert_eq!(
        got.stdout, b"codex exec --skip-git-repo-check p\n",
        "{}",
        got.stderr
    );

    let got = run_in(
        dir.path(),
        env,
        &["--prompt", "p", "--harness", "gemini", "--model", "m"],
    )
    .await;
    assert_eq!(got.stdout, b"gemini -p p -m m\n", "{}", got.stderr);
}

#[tokio::test]
async fn no_harness_or_oz_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let got = run_in(dir.path(), env_with_path(dir.path()), &["--prompt", "p"]).await;
    assert_eq!(got.code, 2);
    assert!(got.stderr.contains("no harness chosen"), "{}", got.stderr);
    let got = run_in(
        dir.path(),
        env_with_path(dir.path()),
        &["--prompt", "p", "--harness", "oz"],
    )
    .await;
    assert_eq!(got.code, 2);
    assert!(
        got.stderr.contains("oz harness is not provided"),
        "{}",
        got.stderr
    );
}

#[tokio::test]
async fn usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = env_with_path(dir.path());
    for (raw, want) in [
        (&[][..], "nothing to do"),
        (
            &["--prompt", "p", "--task-id", "t"][..],
            "do not go together",
        ),
        (&["--model"][..], "--model needs a value"),
        (&["--prompt", "p", "-C", "nope"][..], "does not exist"),
        (
            &["--prompt", " ", "--harness", "command"][..],
            "prompt is empty",
        ),
        (
            &["--prompt", "p", "--harness", "aider"][..],
            "unknown harness",
        ),
    ] {
        let got = run_in(dir.path(), env.clone(), raw).await;
        assert_eq!(got.code, 2, "{raw:?}: {}", got.stderr);
        assert!(got.stderr.contains(want), "{raw:?}: {}", got.stderr);
    }
}

#[tokio::test]
async fn help_goes_to_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let got = run_in(dir.path(), Env::default(), &["--help"]).await;
    assert_eq!(got.code, 0);
    assert!(String::from_utf8_lossy(&got.stdout).contains("--task-id <ID>"));
}

#[tokio::test]
async fn managed_without_server_url_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let got = run_in(dir.path(), env_with_path(dir.path()), &["--task-id", "r1"]).await;
    assert_eq!(got.code, 2);
    assert!(got.stderr.contains("OZ_API_BASE_URL"), "{}", got.stderr);
}

#[tokio::test]
async fn managed_unreachable_server_is_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut env = env_with_path(dir.path());
    env.set("WARP_API_KEY", "ozr_x");
    let url = format!("http://127.0.0.1:{port}");
    let got = run_in(
        dir.path(),
        env,
        &["--task-id", "r1", "--server-root-url", &url],
    )
    .await;
    assert_eq!(got.code, 1, "{}", got.stderr);
    assert!(got.stderr.contains("cannot read run r1"), "{}", got.stderr);
}

#[test]
fn model_for_third_party_and_oz_harnesses() {
    let a = RunArgs {
        model: Some("flag-model".into()),
        ..Default::default()
    };
    let none = RunArgs::default();
    let third =
        json!({ "model_id": "top", "harness": { "type": "claude", "model_id": " sonnet " } });
    assert_eq!(managed_model(Some(&third), &a).as_deref(), Some("sonnet"));
    let third_no_model = json!({ "model_id": "top", "harness": { "type": "codex" } });
    assert_eq!(managed_model(Some(&third_no_model), &a), None);
    let oz = json!({ "model_id": "top", "harness": { "type": "oz", "model_id": "x" } });
    assert_eq!(managed_model(Some(&oz), &a).as_deref(), Some("flag-model"));
    assert_eq!(managed_model(Some(&oz), &none).as_deref(), Some("top"));
    assert_eq!(managed_model(None, &none), None);
}

#[tokio::test]
async fn unmanaged_runs_make_no_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let got = run_in(
        dir.path(),
        env_with_path(Path::new("/usr/bin:/bin")),
        &[
            "--harness",
            "command",
            "--prompt",
            "echo \"${OZ_ARTIFACTS_DIR-unset} ${OZ_HANDOFF_DIR-unset}\"",
        ],
    )
    .await;
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(got.stdout, b"unset unset\n");
    assert!(!dir.path().join(".oz").exists());
    assert!(!got.stderr.contains("upload"), "{}", got.stderr);
}
