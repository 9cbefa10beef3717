//! `oz-bench logs`: log throughput from agent write to server store, and
//! the server's memory while many runs stream at once.

use std::time::{Duration, Instant};

use anyhow::bail;
use oz_cli::client::Client;
use serde_json::{Value, json};

use crate::harness::{Agent, Server, Worker, WorkerSpec, machine, rss_kib, run_body};

pub struct Opts {
    pub bytes: u64,
    pub repeat: u32,
    pub concurrent: u32,
    pub concurrent_bytes: u64,
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            bytes: 256 << 10,
            repeat: 1,
            concurrent: 4,
            concurrent_bytes: 64 << 10,
        }
    }
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

pub async fn run(o: &Opts) -> anyhow::Result<Value> {
    let Opts {
        bytes,
        repeat,
        concurrent,
        concurrent_bytes,
    } = *o;
    let server = Server::start().await?;
    let client = server.client()?;
    // Lines of 100 characters; a predictable amount of output.
    let agent = format!("head -c {bytes} /dev/zero | tr '\\0' 'x' | fold -w 99");
    let _worker = Worker::start(
        &server,
        &WorkerSpec::new("bench", Agent::Script(&agent), concurrent.max(8) + 4),
    )
    .await?;
    let (idle_rss, _) = rss_kib(server.pid());

    // Throughput: submit → every byte stored.
    let mut rates = Vec::new();
    for _ in 0..repeat {
        let t0 = Instant::now();
        let run = client.create_run(&run_body("bench")).await?;
        let (state, stored, done_at) = wait_log_complete(&client, &run.run_id).await?;
        let secs = (done_at - t0).as_secs_f64();
        if state != "SUCCEEDED" {
            bail!("throughput run ended {state}");
        }
        rates.push(json!({"bytes": stored, "seconds": secs, "mib_per_s": stored as f64 / secs / (1 << 20) as f64}));
    }

    // Memory: many runs streaming at once (each writes its share in 50 slices).
    let slice = (concurrent_bytes / 50).max(1);
    let slow_agent = format!(
        "i=0; while [ $i -lt 50 ]; do head -c {slice} /dev/zero | tr '\\0' 'y' | fold -w 99; sleep 0.1; i=$((i+1)); done"
    );
    let _slow = Worker::start(
        &server,
        &WorkerSpec::new("bench-many", Agent::Script(&slow_agent), concurrent + 4),
    )
    .await?;
    let mut runs = Vec::new();
    for _ in 0..concurrent {
        let r = client.create_run(&run_body("bench-many")).await?;
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
