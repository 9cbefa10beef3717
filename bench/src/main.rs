//! `oz-bench`: measurements of the real binaries on this machine.
//!
//! It starts `oz-server` and `oz-agent-worker` from the same target
//! directory as itself (build with `cargo build --release --workspace`),
//! drives them over the public API, and writes the numbers as JSON. No test
//! asserts a duration; `--smoke` runs a tiny version so CI keeps it working.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use oz_cli::client::Client;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Parser)]
#[command(
    name = "oz-bench",
    about = "Benchmarks of oz-server and oz-agent-worker (see bench/README.md)"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
    /// A tiny run that only proves the benchmark works (for CI).
    #[arg(long, global = true)]
    smoke: bool,
    /// Write the results (JSON) here; default: print them.
    #[arg(long, global = true, value_name = "PATH")]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Bench {
    /// Log throughput from agent write to server store, and the server's
    /// memory while many runs stream at once.
    Logs {
        /// Bytes one agent writes for the throughput measurement.
        #[arg(long, default_value_t = 64 << 20)]
        bytes: u64,
        /// Repetitions of the throughput measurement.
        #[arg(long, default_value_t = 3)]
        repeat: u32,
        /// Runs streaming at once for the memory measurement.
        #[arg(long, default_value_t = 100)]
        concurrent: u32,
        /// Bytes each of the concurrent runs writes (over about 5 s).
        #[arg(long, default_value_t = 1 << 20)]
        concurrent_bytes: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.bench {
        Bench::Logs {
            bytes,
            repeat,
            concurrent,
            concurrent_bytes,
        } => {
            let (bytes, repeat, concurrent, concurrent_bytes) = if cli.smoke {
                (256 << 10, 1, 4, 64 << 10)
            } else {
                (bytes, repeat, concurrent, concurrent_bytes)
            };
            logs_bench(bytes, repeat, concurrent, concurrent_bytes).await?
        }
    };
    let text = serde_json::to_string_pretty(&result)?;
    match cli.out {
        Some(path) => std::fs::write(&path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

/// The sibling binaries of this one.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first: cargo build --release --workspace",
            path.display()
        );
    }
    Ok(path)
}

/// A running server with its admin key.
struct Server {
    child: Child,
    url: String,
    key: String,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(sibling("oz-server")?)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("OZ_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(u) = l.strip_prefix("oz-server listening on ") {
                    return Some(u.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .context("the server did not report its address")?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let key = std::fs::read_to_string(dir.path().join("data/admin-api-key"))?
            .trim()
            .to_owned();
        Ok(Server {
            child,
            url,
            key,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.url, &self.key)?)
    }
}

/// Start a worker whose agent is a shell script.
async fn start_worker(
    server: &Server,
    id: &str,
    agent: &str,
    max: u32,
    dir: &Path,
) -> anyhow::Result<Child> {
    let oz = dir.join("agent.sh");
    std::fs::write(&oz, format!("#!/bin/sh\n{agent}\n"))?;
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&oz)
        .status()?;
    let cfg = dir.join("worker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "max_concurrent_tasks: {max}\nstate_dir: {}\nbackend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n",
            dir.join("state").display(),
            dir.join("ws").display(),
            oz.display()
        ),
    )?;
    let child = Command::new(sibling("oz-agent-worker")?)
        .args([
            "--worker-id",
            id,
            "--server-url",
            &server.url,
            "--config-file",
        ])
        .arg(&cfg)
        .env("WARP_API_KEY", &server.key)
        .env("OZ_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let client = server.client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let workers = client.list_workers().await?;
        if workers.iter().any(|w| w["worker_id"] == id) {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("worker {id} did not connect")
}

/// Resident set size (and its peak) of a process, in KiB, from /proc.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Poll (cheaply: a page past the end) until the run is terminal and its
/// log complete; then count the stored output bytes once.
async fn wait_log_complete(
    client: &Client,
    run_id: &str,
) -> anyhow::Result<(String, u64, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let path = format!("/agent/runs/{run_id}/logs");
    let (state, done_at) = loop {
        let page: Value = client
            .get_query(
                &path,
                &[
                    ("since_seq".into(), (u64::MAX / 2).to_string()),
                    ("limit".into(), "1".into()),
                ],
            )
            .await?;
        if page["complete"].as_bool() == Some(true) {
            break (
                page["state"].as_str().unwrap_or_default().to_owned(),
                Instant::now(),
            );
        }
        if Instant::now() > deadline {
            bail!("run {run_id} did not complete");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (mut since, mut bytes) = (0u64, 0u64);
    loop {
        let page: Value = client
            .get_query(
                &path,
                &[
                    ("since_seq".into(), since.to_string()),
                    ("limit".into(), "5000".into()),
                ],
            )
            .await?;
        for l in page["lines"].as_array().into_iter().flatten() {
            let line: oz_protocol::logs::LogLine = serde_json::from_value(l.clone())?;
            bytes += line.raw().len() as u64;
        }
        match (page["has_more"].as_bool(), page["next_seq"].as_u64()) {
            (Some(true), Some(n)) => since = n,
            _ => return Ok((state, bytes, done_at)),
        }
    }
}

async fn logs_bench(
    bytes: u64,
    repeat: u32,
    concurrent: u32,
    concurrent_bytes: u64,
) -> anyhow::Result<Value> {
    let server = Server::start().await?;
    let client = server.client()?;
    let dir = tempfile::tempdir()?;
    // Lines of 100 characters; a predictable amount of output.
    let agent = format!("head -c {bytes} /dev/zero | tr '\\0' 'x' | fold -w 99");
    let _worker = start_worker(&server, "bench", &agent, concurrent.max(8) + 4, dir.path()).await?;
    let (idle_rss, _) = rss_kib(server.pid());

    // Throughput: submit → every byte stored.
    let mut rates = Vec::new();
    for _ in 0..repeat {
        let t0 = Instant::now();
        let run = client
            .create_run(&json!({"prompt": "bench", "config": {"worker_host": "bench", "harness": {"type": "command"}}}))
            .await?;
        let (state, stored, done_at) = wait_log_complete(&client, &run.run_id).await?;
        let secs = (done_at - t0).as_secs_f64();
        if state != "SUCCEEDED" {
            bail!("throughput run ended {state}");
        }
        rates.push(json!({"bytes": stored, "seconds": secs, "mib_per_s": stored as f64 / secs / (1 << 20) as f64}));
    }

    // Memory: many runs streaming at once (each writes its share in 50 slices).
    let slice = (concurrent_bytes / 50).max(1);
    let dir2 = tempfile::tempdir()?;
    let slow_agent = format!(
        "i=0; while [ $i -lt 50 ]; do head -c {slice} /dev/zero | tr '\\0' 'y' | fold -w 99; sleep 0.1; i=$((i+1)); done"
    );
    let _slow = start_worker(
        &server,
        "bench-many",
        &slow_agent,
        concurrent + 4,
        dir2.path(),
    )
    .await?;
    let mut runs = Vec::new();
    for _ in 0..concurrent {
        let r = client
            .create_run(&json!({"prompt": "many", "config": {"worker_host": "bench-many", "harness": {"type": "command"}}}))
            .await?;
        runs.push(r.run_id);
    }
    let mut peak = 0u64;
    let t0 = Instant::now();
    loop {
        peak = peak.max(rss_kib(server.pid()).0);
        let page = client
            .list_runs(&[
                ("limit".into(), "500".into()),
                ("state".into(), "SUCCEEDED".into()),
            ])
            .await?;
        let done = page
            .runs
            .iter()
            .filter(|r| runs.contains(&r.run_id))
            .count();
        if done == runs.len() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("concurrent runs did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stored_total = 0u64;
    for id in &runs {
        stored_total += wait_log_complete(&client, id).await?.1;
    }
    let (_, hwm) = rss_kib(server.pid());
    let best = rates
        .iter()
        .filter_map(|r| r["mib_per_s"].as_f64())
        .fold(0.0f64, f64::max);
    Ok(json!({
        "bench": "logs",
        "machine": machine(),
        "throughput": {"runs": rates, "best_mib_per_s": best},
        "concurrent": {
            "runs": concurrent,
            "bytes_per_run": concurrent_bytes,
            "stored_bytes_total": stored_total,
            "seconds": t0.elapsed().as_secs_f64(),
            "server_rss_idle_kib": idle_rss,
            "server_rss_peak_sampled_kib": peak,
            "server_rss_high_water_kib": hwm,
        }
    }))
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    json!({"cpus": cpus, "memory": mem, "date": chrono::Utc::now().to_rfc3339()})
}
