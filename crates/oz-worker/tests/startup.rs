//! Startup refuses bad configuration clearly (T3, T4, T5, T9, T10) and
//! `--check-config` validates without connecting.
mod common;

use common::*;

fn direct_yaml(sb: &Sandbox, extra: &str) -> String {
    format!(
        "backend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n{extra}",
        sb.workspace_root().display(),
        sb.agent_path().display()
    )
}

async fn refused(b: WorkerBuilder, needle: &str) -> String {
    let (status, stderr) = b.run_to_exit().await;
    assert_eq!(status.code(), Some(1), "expected exit 1, stderr:\n{stderr}");
    assert!(
        stderr.contains(needle),
        "stderr must mention {needle:?}:\n{stderr}"
    );
    stderr
}

#[tokio::test]
async fn t3_oz_missing_from_path() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let yaml = format!(
        "backend:\n  direct:\n    workspace_root: {}\n",
        sb.workspace_root().display()
    );
    let b = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml))
        .env("PATH", "/nonexistent-dir");
    refused(b, "oz CLI not found in PATH").await;
}

#[tokio::test]
async fn t3_oz_found_on_path() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let yaml = format!(
        "backend:\n  direct:\n    workspace_root: {}\n",
        sb.workspace_root().display()
    );
    let path = format!(
        "{}:/usr/bin:/bin",
        sb.agent_path().parent().unwrap().display()
    );
    let (status, out) = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml))
        .env("PATH", &path)
        .arg("--check-config")
        .run_to_exit()
        .await;
    assert_eq!(status.code(), Some(0), "{out}");
}

#[tokio::test]
async fn t3_bad_oz_path() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let yaml = format!(
        "backend:\n  direct:\n    workspace_root: {}\n    oz_path: /nonexistent/oz\n",
        sb.workspace_root().display()
    );
    refused(
        WorkerBuilder::new(&sb, &cp).config(Some(yaml)),
        "/nonexistent/oz",
    )
    .await;
    let not_exec = sb.write("not-exec", "#!/bin/sh\n");
    let yaml = format!(
        "backend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n",
        sb.workspace_root().display(),
        not_exec.display()
    );
    refused(
        WorkerBuilder::new(&sb, &cp).config(Some(yaml)),
        "not executable",
    )
    .await;
}

#[tokio::test]
async fn t4_bad_target_dir() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let b = WorkerBuilder::new(&sb, &cp).args(["--target-dir", "/nonexistent/checkout"]);
    refused(b, "target_dir /nonexistent/checkout").await;
    let file = sb.write("a-file", "x");
    let b = WorkerBuilder::new(&sb, &cp)
        .arg("--target-dir")
        .arg(file.to_str().unwrap());
    refused(b, "not a directory").await;
}

#[tokio::test]
async fn t5_workspace_root_cannot_be_created() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let file = sb.write("blocker", "x");
    let yaml = format!(
        "backend:\n  direct:\n    workspace_root: {}/ws\n    oz_path: {}\n",
        file.display(),
        sb.agent_path().display()
    );
    refused(
        WorkerBuilder::new(&sb, &cp).config(Some(yaml)),
        "workspace_root",
    )
    .await;
}

#[tokio::test]
async fn workspace_root_is_created_with_mode_0700() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let yaml = format!(
        "backend:\n  direct:\n    workspace_root: {}/deep/ws\n    oz_path: {}\n",
        sb.path().display(),
        sb.agent_path().display()
    );
    let (status, out) = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml))
        .arg("--check-config")
        .run_to_exit()
        .await;
    assert_eq!(status.code(), Some(0), "{out}");
    let mode = std::fs::metadata(sb.path().join("deep/ws"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
}

#[tokio::test]
async fn t9_reserved_worker_ids() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let b = WorkerBuilder::new(&sb, &cp).args(["--worker-id", "warp-box"]);
    refused(b, "reserved").await;
    let yaml = format!("worker_id: warp1\n{}", direct_yaml(&sb, ""));
    let b = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml))
        .without("--worker-id");
    refused(b, "reserved").await;
    // The flag beats the file: a good --worker-id overrides a bad file value.
    let yaml = format!("worker_id: warp1\n{}", direct_yaml(&sb, ""));
    let (status, out) = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml))
        .arg("--check-config")
        .run_to_exit()
        .await;
    assert_eq!(status.code(), Some(0), "{out}");
}

#[tokio::test]
async fn t10_invalid_configs_name_key_and_line() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let cases = [
        (direct_yaml(&sb, "  docker: {}\n"), "at most one backend"),
        (direct_yaml(&sb, "    workspace_rot: /x\n"), "line 5"),
        (
            direct_yaml(&sb, "    environment:\n      - value: x\n"),
            "line 6",
        ),
        (
            direct_yaml(&sb, "    environment:\n      - name: \"A B\"\n"),
            "whitespace",
        ),
        (direct_yaml(&sb, "    setup_timeout: soon\n"), "line 5"),
        (
            format!("max_concurrent_tasks: many\n{}", direct_yaml(&sb, "")),
            "line 1",
        ),
        (
            format!("log_level: debug\n{}", direct_yaml(&sb, "")),
            "--log-level",
        ),
    ];
    for (yaml, needle) in cases {
        let stderr = refused(
            WorkerBuilder::new(&sb, &cp).config(Some(yaml.clone())),
            needle,
        )
        .await;
        assert!(
            stderr.contains("worker.yaml"),
            "the error names the file: {stderr}"
        );
    }
}

#[tokio::test]
async fn missing_api_key_and_worker_id() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let b = WorkerBuilder::new(&sb, &cp).env("WARP_API_KEY", "");
    refused(b, "API key is required").await;
    let b = WorkerBuilder::new(&sb, &cp).without("--worker-id");
    refused(b, "worker-id is required").await;
}

#[tokio::test]
async fn unreadable_config_file() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let b = WorkerBuilder::new(&sb, &cp)
        .config(None)
        .args(["--config-file", "/nonexistent/worker.yaml"]);
    refused(b, "cannot read config file /nonexistent/worker.yaml").await;
}

#[tokio::test]
async fn unsupported_backend_is_refused() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let b = WorkerBuilder::new(&sb, &cp)
        .config(None)
        .args(["--backend", "docker"]);
    refused(b, "not implemented").await;
    let b = WorkerBuilder::new(&sb, &cp).config(None);
    refused(b, "no backend selected").await;
}

#[tokio::test]
async fn bad_usage_exits_2() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let (status, stderr) = WorkerBuilder::new(&sb, &cp)
        .arg("--no-such-flag")
        .run_to_exit()
        .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
}

#[tokio::test]
async fn check_config_never_prints_secrets() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let mut cmd = WorkerBuilder::new(&sb, &cp)
        .args(["-e", "TOKEN=sekrit-env-value", "--check-config"])
        .env("WARP_API_KEY", "wk-sekrit-key")
        .command();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = cmd.output().await.unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("configuration is valid"));
    assert!(all.contains("TOKEN"));
    assert!(!all.contains("sekrit"), "{all}");
}
