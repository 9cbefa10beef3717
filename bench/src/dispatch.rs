//! `oz-bench dispatch`: latency of one run at a time.
//!
//! For each run: the bench takes the wall clock when `POST /agent/runs`
//! answers; the trivial agent writes the wall clock as soon as it starts;
//! the server's terminal transition is the run's `updated_at` once it is
//! terminal (microseconds, same clock). The bench waits for the end on the
//! run's log stream (`event: end`), then submits the next run.
//!
//! The agent's own start cost (measured by spawning the same agent directly
//! from the bench) is reported beside it, so that what is ours can be told
//! apart.

use serde_json::{Value, json};

use crate::floor::Floor;
use crate::harness::{
    Agent, Server, Stamps, Worker, WorkerSpec, check, cpu_secs, ended_ns, is_success, machine, ms,
    now_ns, pct, round, submit, summary, wait_end,
};
use oz_cli::client::Client;

pub struct Opts {
    pub runs: usize,
    pub warmup: usize,
    pub max_concurrent: u32,
    pub agent_samples: usize,
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            runs: 20,
            warmup: 2,
            max_concurrent: 8,
            agent_samples: 20,
        }
    }
}

/// One run's timings, in nanoseconds since the epoch.
pub struct Sample {
    pub sent: i128,
    pub answered: i128,
    pub agent: Option<i128>,
    pub ended: Option<i128>,
    pub observed: i128,
    pub ok: bool,
}

/// `n` runs on `worker_id`, one after another.
pub async fn series(
    client: &Client,
    worker_id: &str,
    stamps: &Stamps,
    n: usize,
) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = submit(client, worker_id).await?;
        wait_end(client, &s.run_id).await?;
        let observed = now_ns();
        let run = client.get_run(&s.run_id).await?;
        out.push(Sample {
            sent: s.sent_ns,
            answered: s.answered_ns,
            agent: stamps.read(&s.run_id),
            ended: ended_ns(&run),
            observed,
            ok: is_success(&run),
        });
    }
    Ok(out)
}

/// Percentiles of every interval of a series (milliseconds).
pub fn describe(samples: &[Sample]) -> Value {
    let col = |f: &dyn Fn(&Sample) -> Option<i128>| -> Vec<f64> {
        samples.iter().filter_map(f).map(ms).collect()
    };
    json!({
        "runs": samples.len(),
        "failed": samples.iter().filter(|s| !s.ok).count(),
        "post_round_trip_ms": summary(col(&|s| Some(s.answered - s.sent))),
        "submit_to_agent_start_ms": summary(col(&|s| s.agent.map(|a| a - s.answered))),
        "agent_start_to_terminal_ms": summary(col(&|s| Some(s.ended? - s.agent?))),
        "submit_to_terminal_ms": summary(col(&|s| s.ended.map(|e| e - s.answered))),
        "submit_to_terminal_observed_ms": summary(col(&|s| Some(s.observed - s.answered))),
    })
}

/// Sorted submit → agent start latencies (ms).
pub fn to_agent(samples: &[Sample]) -> Vec<f64> {
    let mut v: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.agent.map(|a| ms(a - s.answered)))
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

pub async fn run(o: &Opts) -> anyhow::Result<Value> {
    let server = Server::start().await?;
    let client = server.client()?;
    let stamps = Stamps::new()?;
    let agent = stamps.agent();
    let worker = Worker::start(
        &server,
        &WorkerSpec::new("dispatch", Agent::Exe(&agent), o.max_concurrent),
    )
    .await?;
    series(&client, "dispatch", &stamps, o.warmup).await?;
    let (s0, w0) = (cpu_secs(server.pid()), cpu_secs(worker.pid()));
    let t0 = now_ns();
    let samples = series(&client, "dispatch", &stamps, o.runs).await?;
    let wall = ms(now_ns() - t0) / 1e3;
    let (s1, w1) = (cpu_secs(server.pid()), cpu_secs(worker.pid()));
    worker.stop().await;

    let floor = Floor::new()?;
    let mut start = floor.agent_start_ms(o.agent_samples).await?;
    start.sort_by(f64::total_cmp);
    let lat = to_agent(&samples);
    let n = samples.len().max(1) as f64;
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    let (a50, a99) = (pct(&start, 0.5), pct(&start, 0.99));
    Ok(json!({
        "bench": "dispatch",
        "machine": machine(),
        "worker_max_concurrent_tasks": o.max_concurrent,
        "latency": describe(&samples),
        "agent_own_start_ms": summary(start.clone()),
        "ours_submit_to_agent_start_ms": {
            "p50": round(p50 - a50, 3),
            "p99": round(p99 - a99, 3),
            "note": "submit → agent start minus the agent's own start cost (same percentile of each)",
        },
        "cpu_ms_per_run": {
            "server": round((s1 - s0) * 1e3 / n, 3),
            "worker": round((w1 - w0) * 1e3 / n, 3),
        },
        "seconds": round(wall, 2),
        "targets": [
            check("dispatch p50 (submit → agent start)", p50, "ms", true, 5.0),
            check("dispatch p99 (submit → agent start)", p99, "ms", true, 25.0),
        ],
    }))
}
