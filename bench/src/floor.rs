//! `oz-bench floor`: the same work as a trivial run, without our system.
//!
//! Each iteration creates the workspace directory (0700), optionally runs a
//! setup hook (`/bin/sh -c ': setup'`), spawns the trivial agent in the
//! directory with a minimal environment and `TASK_ID`, waits for it,
//! optionally runs the teardown hook, and removes the directory. `C` tasks
//! do that in a tight loop for a fixed time: runs per second is the floor
//! our throughput is compared with.
//!
//! The same spawn, one at a time, also gives the agent's own start cost:
//! from just before the spawn to the timestamp the agent writes.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::harness::{Stamps, machine, ms, now_ns, round, settle, summary};

pub struct Opts {
    pub seconds: f64,
    pub concurrency: Vec<usize>,
    pub agent_samples: usize,
    /// [`settle`] before each rate.
    pub settle: bool,
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            seconds: 0.3,
            concurrency: vec![1, 8],
            agent_samples: 20,
            settle: false,
        }
    }
}

/// The trivial agent on disk, and where its workspaces go.
pub struct Floor {
    stamps: Stamps,
    root: tempfile::TempDir,
    path_var: String,
    home: String,
}

impl Floor {
    pub fn new() -> anyhow::Result<Floor> {
        let stamps = Stamps::new()?;
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join("ws"))?;
        Ok(Floor {
            stamps,
            path_var: std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            home: std::env::var("HOME").unwrap_or_else(|_| "/".into()),
            root,
        })
    }

    async fn hook(&self, script: &str, dir: &Path) -> anyhow::Result<()> {
        let st = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env_clear()
            .env("PATH", &self.path_var)
            .env("HOME", &self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !st.success() {
            bail!("hook failed: {st}");
        }
        Ok(())
    }

    /// One run without our system; returns when the agent was spawned (ns).
    pub async fn once(&self, id: &str, hooks: bool) -> anyhow::Result<i128> {
        let dir = self.root.path().join("ws").join(id);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        if hooks {
            self.hook(": setup", &dir).await?;
        }
        let spawned = now_ns();
        let st = Command::new(self.stamps.agent())
            .args(["agent", "run", "--task-id", id])
            .current_dir(&dir)
            .env_clear()
            .env("TASK_ID", id)
            .env("PATH", &self.path_var)
            .env("HOME", &self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !st.success() {
            bail!("agent failed: {st}");
        }
        if hooks {
            self.hook(": teardown", &dir).await?;
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(spawned)
    }

    /// Milliseconds from spawning the agent to its own timestamp, `n` times
    /// one after another.
    pub async fn agent_start_ms(&self, n: usize) -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("start-{i}");
            let spawned = self.once(&id, false).await?;
            match self.stamps.read(&id) {
                Some(t) => out.push(ms(t - spawned)),
                None => bail!("the agent wrote no timestamp"),
            }
        }
        Ok(out)
    }

    /// Runs per second with `c` loops for `seconds`.
    pub async fn rate(
        self: &Arc<Self>,
        c: usize,
        hooks: bool,
        seconds: f64,
    ) -> anyhow::Result<Value> {
        let done = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs_f64(seconds);
        let tag = if hooks { "h" } else { "n" };
        let mut tasks = Vec::new();
        for t in 0..c {
            let (me, done) = (self.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0usize;
                while Instant::now() < until {
                    me.once(&format!("{tag}{c}-{t}-{i}"), hooks).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let secs = t0.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        Ok(json!({
            "concurrency": c,
            "hooks": hooks,
            "runs": n,
            "seconds": round(secs, 3),
            "runs_per_s": round(n as f64 / secs, 1),
        }))
    }
}

/// The floor for each concurrency, without and with hooks.
pub async fn rates(
    concurrency: &[usize],
    seconds: f64,
    settle_first: bool,
) -> anyhow::Result<Vec<Value>> {
    let floor = Arc::new(Floor::new()?);
    let mut out = Vec::new();
    for hooks in [false, true] {
        for &c in concurrency {
            if settle_first {
                settle().await;
            }
            out.push(floor.rate(c, hooks, seconds).await?);
        }
    }
    Ok(out)
}

pub async fn run(o: &Opts) -> anyhow::Result<Value> {
    let floor = Floor::new()?;
    let start = floor.agent_start_ms(o.agent_samples).await?;
    let rates = rates(&o.concurrency, o.seconds, o.settle).await?;
    Ok(json!({
        "bench": "floor",
        "machine": machine(),
        "agent_start_ms": summary(start),
        "rates": rates,
    }))
}
