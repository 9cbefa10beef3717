//! `oz-bench memory`: resident memory of the worker and the server, idle
//! and under load, and the server with many connected workers.
//!
//! 1. Server idle (1 s after start); worker idle (1 s after it connected).
//! 2. `--running` runs at once on one worker (`max_concurrent_tasks` =
//!    `--running`) whose agent stamps and then sleeps: both processes are
//!    sampled every 100 ms while every agent is running.
//! 3. Idle again after those runs ended (allocators keep some memory).
//! 4. `--sim-workers` simulated plain-v1 workers (WebSocket clients in this
//!    process, each with its own worker id and the admin key) connect and
//!    stay connected, answering pings; the server's memory and CPU are read
//!    while they idle, and the dispatch latency of a real worker is probed
//!    before and while they are connected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::dispatch::{describe, series, to_agent};
use crate::harness::{
    Agent, Server, Stamps, Worker, WorkerSpec, check, cpu_secs, machine, mib, pct, round, rss_kib,
    submit_many, wait_terminal,
};

pub struct Opts {
    pub running: usize,
    pub sims: usize,
    pub probe_runs: usize,
    pub idle_cpu_secs: f64,
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            running: 4,
            sims: 20,
            probe_runs: 5,
            idle_cpu_secs: 0.5,
        }
    }
}

/// Highest RSS of each pid over `d`, sampled every 100 ms (KiB).
async fn peak_rss(pids: &[u32], d: Duration) -> Vec<u64> {
    let mut peak = vec![0u64; pids.len()];
    let until = Instant::now() + d;
    loop {
        for (p, pid) in peak.iter_mut().zip(pids) {
            *p = (*p).max(rss_kib(*pid).0);
        }
        if Instant::now() >= until {
            return peak;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connect `n` plain-v1 workers; each task keeps reading (which answers
/// the server's pings) until aborted.
async fn connect_sims(server: &Server, n: usize) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let auth = HeaderValue::from_str(&format!("Bearer {}", server.key))?;
    let gate = Arc::new(Semaphore::new(64));
    let mut connecting = Vec::with_capacity(n);
    for i in 0..n {
        let mut req = server
            .ws_url(&format!("sim-{i:05}"))
            .into_client_request()?;
        req.headers_mut().insert("Authorization", auth.clone());
        let gate = gate.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let (ws, _) = tokio_tungstenite::connect_async(req).await?;
            anyhow::Ok(ws)
        }));
    }
    let mut held = Vec::with_capacity(n);
    for c in connecting {
        let mut ws = c.await??;
        held.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    Ok(held)
}

pub async fn run(o: &Opts) -> anyhow::Result<Value> {
    let server = Server::start().await?;
    let client = server.client()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_idle = rss_kib(server.pid()).0;

    // A worker with `running` slots whose agents stay up a while.
    let stamps = Stamps::new()?;
    let hold = if o.running <= 4 { 1 } else { 5 };
    let agent = stamps.agent_then(&format!("exec sleep {hold}"))?;
    let worker = Worker::start(
        &server,
        &WorkerSpec::new("mem", Agent::Exe(&agent), o.running as u32),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let worker_idle = rss_kib(worker.pid()).0;
    let server_one_worker = rss_kib(server.pid()).0;

    let runs = submit_many(&client, "mem", o.running, 8).await?;
    let t0 = Instant::now();
    while stamps.count() < o.running {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("only {} of {} agents started", stamps.count(), o.running);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_running_after_ms = t0.elapsed().as_secs_f64() * 1e3;
    let sample_for = Duration::from_millis(if hold > 1 { 2000 } else { 300 });
    let peaks = peak_rss(&[worker.pid(), server.pid()], sample_for).await;
    let mut failed = 0;
    for r in &runs {
        let run = wait_terminal(&client, &r.run_id, Duration::from_millis(50)).await?;
        failed += usize::from(!crate::harness::is_success(&run));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let worker_after = rss_kib(worker.pid());
    let server_after = rss_kib(server.pid()).0;
    worker.stop().await;

    // Dispatch probe before and with the simulated workers.
    let probe_stamps = Stamps::new()?;
    let probe_agent = probe_stamps.agent();
    let probe = Worker::start(
        &server,
        &WorkerSpec::new("probe", Agent::Exe(&probe_agent), 1),
    )
    .await?;
    let before = series(&client, "probe", &probe_stamps, o.probe_runs).await?;
    let server_before_sims = rss_kib(server.pid()).0;

    let t_connect = Instant::now();
    let sims = connect_sims(&server, o.sims).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = client.list_workers().await?.len();
        if n > o.sims {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} connections listed after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server_sims = rss_kib(server.pid()).0;
    let c0 = cpu_secs(server.pid());
    let t_idle = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(o.idle_cpu_secs)).await;
    let idle_cpu_pct = (cpu_secs(server.pid()) - c0) / t_idle.elapsed().as_secs_f64() * 100.0;
    let with = series(&client, "probe", &probe_stamps, o.probe_runs).await?;
    let (server_sims_after, server_hwm) = rss_kib(server.pid());
    let still = client.list_workers().await?.len();
    for s in &sims {
        s.abort();
    }
    probe.stop().await;
    let (lb, lw) = (to_agent(&before), to_agent(&with));
    if still <= o.sims {
        eprintln!("memory: warning: only {still} connections left at the end");
    }

    let worker_idle_max = worker_idle.max(worker_after.0);
    let server_idle_max = server_idle.max(server_one_worker);
    let server_sims_max = server_sims.max(server_sims_after);
    Ok(json!({
        "bench": "memory",
        "machine": machine(),
        "rss_mib": {
            "server_idle": mib(server_idle),
            "server_idle_one_worker": mib(server_one_worker),
            "worker_idle": mib(worker_idle),
            "running_runs": o.running,
            "all_agents_running_after_ms": round(all_running_after_ms, 1),
            "worker_with_running_runs_peak": mib(peaks[0]),
            "server_with_running_runs_peak": mib(peaks[1]),
            "worker_idle_after_runs": mib(worker_after.0),
            "worker_high_water": mib(worker_after.1),
            "server_idle_after_runs": mib(server_after),
            "server_before_sim_workers": mib(server_before_sims),
            "sim_workers": o.sims,
            "server_with_sim_workers": mib(server_sims),
            "server_with_sim_workers_after_probe": mib(server_sims_after),
            "server_high_water": mib(server_hwm),
        },
        "failed_runs": failed,
        "sim_workers": {
            "count": o.sims,
            "connect_seconds": round(connect_secs, 2),
            "connections_listed_at_end": still,
            "server_cpu_percent_idle": round(idle_cpu_pct, 2),
            "idle_cpu_window_s": o.idle_cpu_secs,
        },
        "dispatch_probe": {
            "without_sim_workers": describe(&before),
            "with_sim_workers": describe(&with),
        },
        "targets": [
            check("worker idle RSS (largest of fresh and after runs)", mib(worker_idle_max), "MiB", true, 15.0),
            check("server idle RSS (largest of fresh and one worker)", mib(server_idle_max), "MiB", true, 50.0),
            check(&format!("server RSS with {} connected workers", o.sims), mib(server_sims_max), "MiB", true, 200.0),
        ],
        "info": {
            "probe_p50_ms": [round(pct(&lb, 0.5), 3), round(pct(&lw, 0.5), 3)],
            "probe_p99_ms": [round(pct(&lb, 0.99), 3), round(pct(&lw, 0.99), 3)],
        },
    }))
}
