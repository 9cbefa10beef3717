//! `oz-bench store`: the store's own cost of one trivial run's life.
//!
//! The store calls the server makes for a trivial run, made on `oz-store`
//! directly in this process: `insert_run` (the POST), `assign_next` (the
//! dispatcher), PENDING → CLAIMED (the worker's claim), `set_log_end`, the
//! terminal transition (the worker's result) and `get_run` (a client's
//! GET), with the patches the hub uses. No HTTP, no WebSocket, no other
//! process: the CPU per run is the store's alone (SQLite, the WAL writes,
//! the checkpoint thread), with a few percent of noise instead of the whole
//! system's, so that a change to the store can be judged on its own.
//!
//! `concurrency` lives run at once as tasks on one current-thread runtime,
//! as the server runs on a machine of up to 2 CPUs; each level is measured
//! `repeat` times on a fresh database under `TMPDIR`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use oz_store::{NewRun, RunPatch, RunState, SqliteStore, StatusMessage, Store};
use serde_json::{Value, json};

use crate::harness::{cpu_secs, machine, pct, round};

pub struct Opts {
    pub runs: usize,
    pub concurrency: Vec<usize>,
    pub repeat: usize,
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            runs: 50,
            concurrency: vec![1, 8],
            repeat: 1,
        }
    }
}

/// Microsecond timestamps that grow with `i`, like the server's.
fn ts(i: usize) -> String {
    let (s, us) = (i / 1_000_000, i % 1_000_000);
    format!(
        "2026-01-01T{:02}:{:02}:{:02}.{us:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// One run's life, as the server's hub and API drive it.
async fn life(store: &SqliteStore, i: usize) -> anyhow::Result<()> {
    let now = ts(i);
    store
        .insert_run(NewRun {
            run_id: format!("run-{i:09}"),
            team_id: "t".into(),
            prompt: "bench".into(),
            config: json!({"worker_host": "w"}),
            source: "API".into(),
            worker_host: "w".into(),
            created_at: now.clone(),
            ..NewRun::default()
        })
        .await?;
    let assign = RunPatch {
        holder: Some(Some("conn".into())),
        execution_id: Some(Some(format!("exec-{i:09}"))),
        assigned_at: Some(Some(now.clone())),
        token_hash: Some(Some(format!("{i:064}"))),
        status_message: Some(None),
        new_execution: true,
        ..RunPatch::default()
    };
    // The oldest queued run: with several lives at once, not always ours.
    let run = store
        .assign_next("t", "w", assign, &now)
        .await?
        .context("assign_next found no queued run")?;
    let claim = RunPatch {
        holder: Some(Some("conn".into())),
        status_message: Some(None),
        ..RunPatch::default()
    };
    store
        .transition(
            &run.run_id,
            &[RunState::Pending],
            RunState::Claimed,
            claim,
            &now,
        )
        .await?
        .context("the claim found the run in another state")?;
    store.set_log_end(&run.run_id, 0).await?;
    let end = RunPatch {
        status_message: Some(Some(StatusMessage::info("done"))),
        holder: Some(None),
        token_hash: Some(None),
        ended_at: Some(Some(now.clone())),
        ..RunPatch::default()
    };
    let from = [RunState::Pending, RunState::Claimed, RunState::Inprogress];
    store
        .transition(&run.run_id, &from, RunState::Succeeded, end, &now)
        .await?
        .context("the result found the run in another state")?;
    store
        .get_run(&run.run_id)
        .await?
        .context("the run is gone")?;
    Ok(())
}

/// `runs` lives, `concurrency` at once; returns (CPU, wall) seconds.
async fn measure(runs: usize, concurrency: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("oz.db")).await?);
    store.create_team("t", "T", &ts(0)).await?;
    let pid = std::process::id();
    let (t0, c0) = (Instant::now(), cpu_secs(pid));
    let mut tasks = Vec::new();
    for k in 0..concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (k..runs).step_by(concurrency) {
                life(&store, i).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (cpu, wall) = (cpu_secs(pid) - c0, t0.elapsed().as_secs_f64());
    store.close().await;
    Ok((cpu, wall))
}

pub async fn run(o: &Opts) -> anyhow::Result<Value> {
    let (runs, levels, repeat) = (o.runs.max(1), o.concurrency.clone(), o.repeat.max(1));
    // A runtime of its own, on a thread of its own: one thread like the
    // server's, and nothing else of the bench's on it.
    let results = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut results = Vec::new();
        for &c in &levels {
            let c = c.max(1);
            let mut cpu_us = Vec::new();
            let mut wall_us = Vec::new();
            for _ in 0..repeat {
                let (cpu, wall) = rt.block_on(measure(runs, c))?;
                cpu_us.push(round(cpu * 1e6 / runs as f64, 1));
                wall_us.push(round(wall * 1e6 / runs as f64, 1));
            }
            let mut sorted = cpu_us.clone();
            sorted.sort_by(f64::total_cmp);
            results.push(json!({
                "concurrency": c,
                "runs": runs,
                "cpu_us_per_run": round(pct(&sorted, 0.5), 1),
                "cpu_us_per_run_each": cpu_us,
                "wall_us_per_run_each": wall_us,
            }));
        }
        anyhow::Ok(results)
    })
    .await??;
    Ok(json!({
        "bench": "store",
        "machine": machine(),
        "config": {
            "runs": runs,
            "repeat": repeat,
            "calls_per_run": ["insert_run", "assign_next", "transition PENDING->CLAIMED",
                "set_log_end", "transition ->SUCCEEDED", "get_run"],
            "tmpdir": std::env::temp_dir().display().to_string(),
        },
        "results": results,
    }))
}
