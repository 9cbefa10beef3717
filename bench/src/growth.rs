//! `oz-bench growth`: does the cost of a run grow with the queue?
//!
//! For each size N in `--sizes` (fresh server each time):
//!
//! 1. **Fill**: N runs for a worker id nobody serves yet, with
//!    `--post-parallel` concurrent POSTs (POST latency and server CPU per
//!    POST).
//! 2. **Probe while queued**: a second worker with another id runs
//!    `--probe-runs` runs one at a time (submit → agent start), to show
//!    whether the long queue slows anybody else down.
//! 3. **Drain**: a worker with the queue's id and `--drain-concurrency`
//!    slots connects with the trivial agent; the bench samples progress
//!    every second (a binary search over the runs in submission order for
//!    the first one not yet ended) together with the server's and the
//!    worker's CPU time (utime + stime from `/proc/<pid>/stat`). Per-run
//!    figures: server CPU divided by runs drained; rate by quarter of the
//!    queue; agent start → terminal for about 500 sampled runs. Stops at
//!    `--drain-timeout` and reports what drained.
//! 4. **Probe after**: the same probe on the drained worker (N finished runs
//!    in the table, empty queue).

use std::time::{Duration, Instant};

use oz_cli::client::Client;
use serde_json::{Value, json};

use crate::dispatch::{describe, series, to_agent};
use crate::harness::{
    Agent, Server, Stamps, Submitted, Worker, WorkerSpec, check, cpu_secs, ended_ns, machine, mib,
    ms, pct, round, rss_kib, submit_many, summary, wait_workers,
};

pub struct Opts {
    pub sizes: Vec<usize>,
    pub drain_concurrency: u32,
    pub post_parallel: usize,
    pub probe_runs: usize,
    pub drain_timeout: f64,
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            sizes: vec![50, 200],
            drain_concurrency: 8,
            post_parallel: 8,
            probe_runs: 5,
            drain_timeout: 60.0,
        }
    }
}

async fn terminal(client: &Client, run_id: &str) -> anyhow::Result<bool> {
    Ok(client.get_run(run_id).await?.state.is_terminal())
}

/// How many runs (in submission order) have ended: the index of the first
/// one that has not, found by binary search (the queue drains in order,
/// give or take the slots in use).
async fn drained(client: &Client, subs: &[Submitted], slots: usize) -> anyhow::Result<usize> {
    let n = subs.len();
    if terminal(client, &subs[n - 1].run_id).await? {
        // The last one ended: only runs that started just before it may not have.
        let tail = n.saturating_sub(4 * slots + 16);
        for (i, s) in subs.iter().enumerate().skip(tail) {
            if !terminal(client, &s.run_id).await? {
                return Ok(i);
            }
        }
        return Ok(n);
    }
    let (mut lo, mut hi) = (0usize, n - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if terminal(client, &subs[mid].run_id).await? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

struct Point {
    secs: f64,
    done: usize,
    server_cpu: f64,
    worker_cpu: f64,
}

async fn one_size(o: &Opts, n: usize) -> anyhow::Result<Value> {
    let server = Server::start().await?;
    let client = server.client()?;

    // 1. Fill.
    let c0 = cpu_secs(server.pid());
    let t0 = Instant::now();
    let subs = submit_many(&client, "growth", n, o.post_parallel).await?;
    let fill_secs = t0.elapsed().as_secs_f64();
    let fill_cpu = cpu_secs(server.pid()) - c0;
    let post_ms: Vec<f64> = subs.iter().map(|s| ms(s.answered_ns - s.sent_ns)).collect();
    let tenth = (n / 10).max(1);
    let rss_filled = rss_kib(server.pid()).0;
    eprintln!("growth {n}: filled in {fill_secs:.1} s");

    // 2. Probe on another worker id while the queue waits.
    let probe_stamps = Stamps::new()?;
    let probe_agent = probe_stamps.agent();
    let probe = Worker::start(
        &server,
        &WorkerSpec::new("probe", Agent::Exe(&probe_agent), 1),
    )
    .await?;
    let probe_queued = series(&client, "probe", &probe_stamps, o.probe_runs).await?;
    probe.stop().await;

    // 3. Drain.
    let stamps = Stamps::new()?;
    let agent = stamps.agent();
    let slots = o.drain_concurrency as usize;
    let s0 = cpu_secs(server.pid());
    let t1 = Instant::now();
    let worker = Worker::spawn(
        &server,
        &WorkerSpec::new("growth", Agent::Exe(&agent), o.drain_concurrency),
    )?;
    let mut points = vec![Point {
        secs: 0.0,
        done: 0,
        server_cpu: 0.0,
        worker_cpu: 0.0,
    }];
    let timeout = Duration::from_secs_f64(o.drain_timeout);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let done = drained(&client, &subs, slots).await?;
        let p = Point {
            secs: t1.elapsed().as_secs_f64(),
            done,
            server_cpu: cpu_secs(server.pid()) - s0,
            worker_cpu: cpu_secs(worker.pid()),
        };
        points.push(p);
        if done >= n || t1.elapsed() > timeout {
            break;
        }
    }
    let last = points
        .last()
        .map(|p| (p.secs, p.done, p.server_cpu, p.worker_cpu));
    let (drain_secs, done, server_cpu, worker_cpu) = last.unwrap_or_default();
    let complete = done >= n;
    eprintln!("growth {n}: drained {done} in {drain_secs:.1} s");

    // Rate and CPU per run by quarter of the queue (between samples).
    let mut quarters = Vec::new();
    for q in 0..4 {
        let (from, to) = (n * q / 4, n * (q + 1) / 4);
        let a = points.iter().rev().find(|p| p.done <= from);
        let b = points.iter().find(|p| p.done >= to);
        if let (Some(a), Some(b)) = (a, b)
            && b.done > a.done
        {
            let runs = (b.done - a.done) as f64;
            quarters.push(json!({
                "quarter": q + 1,
                "runs_per_s": round(runs / (b.secs - a.secs), 1),
                "server_cpu_ms_per_run": round((b.server_cpu - a.server_cpu) * 1e3 / runs, 3),
            }));
        }
    }

    // Agent start → terminal for ~500 runs spread over the queue.
    let step = (done / 500).max(1);
    let mut run_ms = Vec::new();
    for s in subs.iter().take(done).step_by(step) {
        let run = client.get_run(&s.run_id).await?;
        if let (Some(e), Some(a)) = (ended_ns(&run), stamps.read(&s.run_id)) {
            run_ms.push(ms(e - a));
        }
    }

    // 4. Probe after the drain on the same worker (queue empty by now when
    // the drain completed).
    wait_workers(&client, "growth", 1).await?;
    let probe_after = if complete {
        Some(series(&client, "growth", &stamps, o.probe_runs).await?)
    } else {
        None
    };
    let rss_drained = rss_kib(server.pid());
    worker.stop().await;
    let per_run = |x: f64| round(x * 1e3 / done.max(1) as f64, 3);
    let (q50, q99) = {
        let l = to_agent(&probe_queued);
        (pct(&l, 0.5), pct(&l, 0.99))
    };
    Ok(json!({
        "queued": n,
        "fill": {
            "seconds": round(fill_secs, 2),
            "posts_per_s": round(n as f64 / fill_secs, 1),
            "post_ms": summary(post_ms.clone()),
            "post_ms_first_tenth": summary(post_ms[..tenth].to_vec()),
            "post_ms_last_tenth": summary(post_ms[n - tenth..].to_vec()),
            "server_cpu_ms_per_post": round(fill_cpu * 1e3 / n as f64, 3),
            "parallel_posts": o.post_parallel,
        },
        "probe_other_worker_while_queued": describe(&probe_queued),
        "probe_while_queued_submit_to_agent_ms": {"p50": round(q50, 3), "p99": round(q99, 3)},
        "drain": {
            "complete": complete,
            "drained": done,
            "seconds": round(drain_secs, 2),
            "runs_per_s": round(done as f64 / drain_secs.max(1e-9), 1),
            "server_cpu_ms_per_run": per_run(server_cpu),
            "worker_cpu_ms_per_run": per_run(worker_cpu),
            "slots": slots,
            "by_quarter": quarters,
            "agent_start_to_terminal_ms": summary(run_ms),
            "progress": points.iter().map(|p| json!([round(p.secs, 2), p.done, round(p.server_cpu, 2)])).collect::<Vec<_>>(),
        },
        "probe_same_worker_after_drain": probe_after.as_deref().map(describe),
        "server_rss_mib": {
            "after_fill": mib(rss_filled),
            "after_drain": mib(rss_drained.0),
            "high_water": mib(rss_drained.1),
        },
    }))
}

pub async fn run(o: &Opts) -> anyhow::Result<Value> {
    let mut sizes = Vec::new();
    for &n in &o.sizes {
        sizes.push(one_size(o, n.max(1)).await?);
    }
    let cost = |v: &Value| {
        v["drain"]["server_cpu_ms_per_run"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let period = |v: &Value| 1e3 / v["drain"]["runs_per_s"].as_f64().unwrap_or(f64::NAN);
    let mut targets = Vec::new();
    if let (Some(a), Some(b)) = (sizes.first(), sizes.last())
        && sizes.len() > 1
    {
        let label = format!("{} → {} queued", a["queued"], b["queued"]);
        targets.push(check(
            &format!("server CPU per run, {label} (ratio)"),
            cost(b) / cost(a),
            "×",
            true,
            1.2,
        ));
        targets.push(check(
            &format!("drain time per run, {label} (ratio)"),
            period(b) / period(a),
            "×",
            true,
            1.2,
        ));
        // Dispatch latency of a one-run-at-a-time probe (submit → agent
        // start, p50): on another worker id while the queue waits, and on
        // the drained worker id once all those runs are in the table.
        let probe = |v: &Value, key: &str| v[key]["submit_to_agent_start_ms"]["p50"].as_f64();
        for (key, what) in [
            (
                "probe_other_worker_while_queued",
                "another worker while queued",
            ),
            (
                "probe_same_worker_after_drain",
                "same worker after the drain",
            ),
        ] {
            if let (Some(x), Some(y)) = (probe(a, key), probe(b, key)) {
                targets.push(check(
                    &format!("dispatch p50, {what}, {label} (ratio)"),
                    y / x,
                    "×",
                    true,
                    1.2,
                ));
            }
        }
    }
    Ok(json!({
        "bench": "growth",
        "machine": machine(),
        "sizes": sizes,
        "targets": targets,
    }))
}
