//! `oz-bench throughput`: trivial runs completed per second.
//!
//! Setups: one worker at each `--concurrency` (its `max_concurrent_tasks`),
//! and `--shared-workers` workers sharing one id; each without hooks and
//! with a trivial setup and teardown hook. Each setup gets a fresh server.
//!
//! Load is closed-loop with a bounded backlog: four submitters keep at most
//! `4 × slots + 16` runs submitted but not yet seen ended, and let one more
//! in per ended run. The bench sees runs end through the runs list, one
//! request every 10 ms for all that ended meanwhile (`Watch::List`), or
//! with a GET per run in submission order (`Watch::Get`). A pilot of
//! `max(4 × slots, 40)` runs warms up and sizes the measurement to about
//! `--seconds`. The rate is taken from the server's end timestamps after
//! the first 10% of the runs (`steady`), and over the whole measurement
//! from the first POST (`overall`). The floor (see `floor`) is measured at the same
//! concurrency and hooks; the ratio is ours / floor. With `--rounds N` each
//! setup is measured N times, each right after its own floor measurement,
//! and the round with the median ratio is reported with all of them.
//!
//! `--server-database sqlite::memory:` runs the server on a database that
//! does no file I/O: not durable, so not a setup anyone should run, but the
//! bound on what any change to the store's I/O could gain. Such results
//! carry `server_database` and are not checked against the target.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use oz_cli::client::Client;
use oz_protocol::api::{RunItem, RunState};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::floor;
use crate::harness::{
    Agent, Server, Stamps, Submitted, Worker, WorkerSpec, check, cpu_secs, ended_ns, is_success,
    machine, ms, now_ns, round, settle, submit, wait_workers,
};

pub struct Opts {
    pub seconds: f64,
    pub concurrency: Vec<usize>,
    pub shared_workers: usize,
    pub shared_max: u32,
    pub floor_seconds: f64,
    pub smoke: bool,
    /// The server's `--database-url` (`None`: a file in its data dir).
    pub server_database: Option<String>,
    /// Measurements per setup, each right after its own floor
    /// measurement; the median ratio is reported (1: one floor measurement
    /// per concurrency, shared by the setups, as before).
    pub rounds: usize,
    /// How the bench sees runs end.
    pub watch: Watch,
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            seconds: 0.5,
            concurrency: vec![1, 8],
            shared_workers: 2,
            shared_max: 2,
            floor_seconds: 0.3,
            smoke: true,
            server_database: None,
            rounds: 1,
            watch: Watch::List,
        }
    }
}

struct Driven {
    runs: usize,
    failed: usize,
    first_sent: i128,
    /// Server end timestamps, sorted.
    ended: Vec<i128>,
    /// Requests the bench made to see the ends: GETs of one run, lists.
    gets: usize,
    lists: usize,
}

impl Driven {
    fn end(&mut self, run: &RunItem) {
        if !is_success(run) {
            self.failed += 1;
        }
        self.ended.push(ended_ns(run).unwrap_or_else(now_ns));
    }

    /// Runs per second after the first 10% (warm-up within the measurement).
    fn steady(&self) -> f64 {
        let n = self.ended.len();
        let k0 = n / 10;
        if n < 2 || k0 + 1 >= n {
            return self.overall();
        }
        let secs = ms(self.ended[n - 1] - self.ended[k0]) / 1e3;
        (n - 1 - k0) as f64 / secs
    }

    fn overall(&self) -> f64 {
        match self.ended.last() {
            Some(&last) => self.runs as f64 / (ms(last - self.first_sent) / 1e3),
            None => 0.0,
        }
    }
}

/// How the bench sees runs end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Watch {
    /// `GET /agent/runs?state=<ended>&updated_after=…` every
    /// [`LIST_EVERY`]: one request for all the runs that ended meanwhile.
    List,
    /// `GET /agent/runs/{id}` for each run, in submission order, paced by
    /// the completion rate (until the eighth session: a request per run
    /// that the server and the client both pay for).
    Get,
}

impl Watch {
    fn as_str(self) -> &'static str {
        match self {
            Watch::List => "list",
            Watch::Get => "get",
        }
    }
}

/// How often `Watch::List` asks. Ended runs wait up to this long to be
/// seen (and to let the next run in); the backlog window covers it.
const LIST_EVERY: Duration = Duration::from_millis(10);
/// How far back each list reaches before the latest end it has seen: a
/// run's end timestamp is taken just before its commit, so a run can
/// become visible after one with a later timestamp.
const LIST_OVERLAP_NS: i128 = 20_000_000;
/// A run submitted this long ago and not yet seen in a list is looked up
/// by id (and again this often while it has not ended): a safety net, so
/// that no timestamp ordering can lose a run.
const LIST_RECHECK: Duration = Duration::from_secs(2);

/// Push `n` runs through `worker_id` with at most `window` outstanding.
async fn drive(
    client: &Client,
    worker_id: &str,
    n: usize,
    window: usize,
    watch: Watch,
) -> anyhow::Result<Driven> {
    let sem = Arc::new(Semaphore::new(window));
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel::<anyhow::Result<Submitted>>();
    for _ in 0..4 {
        let (client, id, sem, next, tx) = (
            client.clone(),
            worker_id.to_owned(),
            sem.clone(),
            next.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            loop {
                if next.fetch_add(1, Ordering::Relaxed) >= n {
                    return;
                }
                match sem.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
                if tx.send(submit(&client, &id).await).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut d = Driven {
        runs: n,
        failed: 0,
        first_sent: i128::MAX,
        ended: Vec::with_capacity(n),
        gets: 0,
        lists: 0,
    };
    match watch {
        Watch::Get => watch_each(client, rx, &sem, &mut d).await?,
        Watch::List => watch_list(client, rx, &sem, &mut d).await?,
    }
    d.ended.sort_unstable();
    Ok(d)
}

/// [`Watch::Get`]: each run in submission order, a GET at a time.
async fn watch_each(
    client: &Client,
    mut rx: mpsc::UnboundedReceiver<anyhow::Result<Submitted>>,
    sem: &Semaphore,
    d: &mut Driven,
) -> anyhow::Result<()> {
    let t0 = now_ns();
    for done in 0..d.runs {
        let s = rx.recv().await.context("the submitters stopped")??;
        d.first_sent = d.first_sent.min(s.sent_ns);
        // Poll about as often as runs end.
        let spacing = ms(now_ns() - t0) / done.max(1) as f64;
        let every = Duration::from_secs_f64((spacing / 1e3).clamp(0.001, 0.05));
        let run = loop {
            d.gets += 1;
            let run = client.get_run(&s.run_id).await?;
            if run.state.is_terminal() {
                break run;
            }
            tokio::time::sleep(every).await;
        };
        d.end(&run);
        sem.add_permits(1);
    }
    Ok(())
}

/// [`Watch::List`]: every [`LIST_EVERY`], the runs that ended since the
/// last list (by end timestamp, with [`LIST_OVERLAP_NS`] of overlap); runs
/// not submitted by this drive, or already seen, are skipped.
async fn watch_list(
    client: &Client,
    mut rx: mpsc::UnboundedReceiver<anyhow::Result<Submitted>>,
    sem: &Semaphore,
    d: &mut Driven,
) -> anyhow::Result<()> {
    // Run id -> when to look it up by id if no list has shown it ended.
    let mut waiting: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut received = 0;
    let mut latest_end = now_ns();
    let mut tick = tokio::time::interval(LIST_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let states: Vec<(String, String)> = RunState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| ("state".to_owned(), s.as_str().to_owned()))
        .collect();
    while d.ended.len() < d.runs {
        // Take in what was submitted meanwhile; wait for a submission when
        // nothing is outstanding.
        loop {
            let got = if waiting.is_empty() && received < d.runs {
                rx.recv().await
            } else {
                match rx.try_recv() {
                    Ok(s) => Some(s),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            match got {
                Some(s) => {
                    let s = s?;
                    received += 1;
                    d.first_sent = d.first_sent.min(s.sent_ns);
                    waiting.insert(s.run_id, tokio::time::Instant::now() + LIST_RECHECK);
                }
                None if received < d.runs => bail!("the submitters stopped"),
                None => break,
            }
        }
        tick.tick().await;
        let since = latest_end - LIST_OVERLAP_NS;
        let mut query = states.clone();
        query.extend([
            ("sort_by".to_owned(), "updated_at".to_owned()),
            ("sort_order".to_owned(), "asc".to_owned()),
            ("limit".to_owned(), "500".to_owned()),
            ("updated_after".to_owned(), rfc3339_ns(since)),
        ]);
        loop {
            d.lists += 1;
            let page = client.list_runs(&query).await?;
            for run in &page.runs {
                let Some(end) = ended_ns(run) else { continue };
                latest_end = latest_end.max(end);
                if waiting.remove(&run.run_id).is_some() {
                    d.end(run);
                    sem.add_permits(1);
                }
            }
            match page.page_info.next_cursor {
                Some(c)
                    if page.page_info.has_next_page && !page.runs.is_empty() && !c.is_empty() =>
                {
                    query.retain(|(k, _)| k != "cursor");
                    query.push(("cursor".to_owned(), c));
                }
                _ => break,
            }
        }
        // The safety net (see LIST_RECHECK).
        let now = tokio::time::Instant::now();
        let due: Vec<String> = waiting
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            d.gets += 1;
            let run = client.get_run(&id).await?;
            if run.state.is_terminal() {
                waiting.remove(&id);
                d.end(&run);
                sem.add_permits(1);
            } else if let Some(at) = waiting.get_mut(&id) {
                *at = now + LIST_RECHECK;
            }
        }
    }
    Ok(())
}

/// RFC 3339 with nanoseconds, for a list's `updated_after`.
fn rfc3339_ns(ns: i128) -> String {
    let ns = i64::try_from(ns).unwrap_or(0);
    chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

struct Setup {
    workers: usize,
    max: u32,
    hooks: bool,
}

impl Setup {
    fn slots(&self) -> usize {
        self.workers * self.max as usize
    }

    fn label(&self) -> String {
        let hooks = if self.hooks { "hooks" } else { "no hooks" };
        if self.workers == 1 {
            format!("1 worker, max {}, {hooks}", self.max)
        } else {
            format!(
                "{} workers sharing an id, max {} each, {hooks}",
                self.workers, self.max
            )
        }
    }
}

async fn measure(setup: &Setup, o: &Opts) -> anyhow::Result<Value> {
    if !o.smoke {
        settle().await;
    }
    let server = Server::start_with(o.server_database.as_deref()).await?;
    let client = server.client()?;
    let stamps = Stamps::new()?;
    let agent = stamps.agent();
    let id = "tput";
    let spec = WorkerSpec::new(id, Agent::Exe(&agent), setup.max).hooks(setup.hooks);
    let mut workers = Vec::new();
    for _ in 0..setup.workers {
        workers.push(Worker::spawn(&server, &spec)?);
    }
    wait_workers(&client, id, setup.workers).await?;
    let slots = setup.slots();
    let window = 4 * slots + 16;

    let pilot_n = if o.smoke {
        2 * slots + 4
    } else {
        (4 * slots).max(40)
    };
    let pilot = drive(&client, id, pilot_n, window, o.watch).await?;
    let n = if o.smoke {
        2 * slots + 10
    } else {
        ((pilot.steady() * o.seconds) as usize).clamp(200, 50_000)
    };
    let cpu = |ws: &[Worker]| ws.iter().map(|w| cpu_secs(w.pid())).sum::<f64>();
    let (s0, w0) = (cpu_secs(server.pid()), cpu(&workers));
    let d = drive(&client, id, n, window, o.watch).await?;
    let (s1, w1) = (cpu_secs(server.pid()), cpu(&workers));
    for w in workers {
        w.stop().await;
    }
    Ok(json!({
        "label": setup.label(),
        "workers": setup.workers,
        "max_concurrent_tasks": setup.max,
        "slots": slots,
        "hooks": setup.hooks,
        "runs": d.runs,
        "failed": d.failed + pilot.failed,
        "runs_per_s": round(d.steady(), 1),
        "runs_per_s_overall": round(d.overall(), 1),
        "pilot_runs_per_s": round(pilot.steady(), 1),
        "backlog_window": window,
        "server_database": o.server_database,
        "watch": o.watch.as_str(),
        "client_gets_per_run": round(d.gets as f64 / d.runs as f64, 3),
        "client_lists_per_run": round(d.lists as f64 / d.runs as f64, 3),
        "cpu_ms_per_run": {
            "server": round((s1 - s0) * 1e3 / n as f64, 3),
            "workers": round((w1 - w0) * 1e3 / n as f64, 3),
        },
    }))
}

/// Floor runs/s for (concurrency, hooks) in a `floor` result.
fn floor_rate(rates: &[Value], c: usize, hooks: bool) -> Option<f64> {
    rates
        .iter()
        .find(|r| r["concurrency"] == c && r["hooks"] == hooks)
        .and_then(|r| r["runs_per_s"].as_f64())
}

/// `floor_rates`: the `rates` of a floor result covering every slot count
/// used here (from `all`); measured here when `None`.
pub async fn run(o: &Opts, floor_rates: Option<Vec<Value>>) -> anyhow::Result<Value> {
    let mut setups = Vec::new();
    for hooks in [false, true] {
        for &c in &o.concurrency {
            setups.push(Setup {
                workers: 1,
                max: c as u32,
                hooks,
            });
        }
        if o.shared_workers > 0 {
            setups.push(Setup {
                workers: o.shared_workers,
                max: o.shared_max,
                hooks,
            });
        }
    }
    let mut cs: Vec<usize> = setups.iter().map(Setup::slots).collect();
    cs.sort_unstable();
    cs.dedup();
    let paired = o.rounds > 1;
    let floor_rates = match floor_rates {
        _ if paired => Vec::new(),
        Some(r) if cs.iter().all(|&c| floor_rate(&r, c, false).is_some()) => r,
        _ => floor::rates(&cs, o.floor_seconds, !o.smoke).await?,
    };

    let mut results = Vec::new();
    let mut targets = Vec::new();
    for s in &setups {
        let r = if paired {
            rounds(s, o).await?
        } else {
            let mut r = measure(s, o).await?;
            let floor = floor_rate(&floor_rates, s.slots(), s.hooks).unwrap_or(f64::NAN);
            let ours = r["runs_per_s"].as_f64().unwrap_or(0.0);
            r["floor_runs_per_s"] = json!(floor);
            r["ratio_to_floor"] = json!(round(ours / floor, 3));
            r
        };
        let ours = r["runs_per_s"].as_f64().unwrap_or(0.0);
        let floor = r["floor_runs_per_s"].as_f64().unwrap_or(f64::NAN);
        // Unrounded, for the target check.
        let ratio = ours / floor;
        eprintln!(
            "throughput: {}: {ours:.1} runs/s, floor {floor:.1}, ratio {ratio:.3}{}",
            s.label(),
            match r.get("ratio_to_floor_range") {
                Some(range) => format!(" (median of {}; range {range})", o.rounds),
                None => String::new(),
            }
        );
        // Another database is an experiment, not the setup the target is
        // about: its ratios are reported, never checked.
        if s.workers == 1 && s.max == 8 && o.server_database.is_none() {
            targets.push(check(
                &format!(
                    "throughput / floor at concurrency 8 ({})",
                    if s.hooks { "hooks" } else { "no hooks" }
                ),
                ratio,
                "×",
                false,
                0.5,
            ));
        }
        results.push(r);
    }
    Ok(json!({
        "bench": "throughput",
        "machine": machine(),
        "rounds": o.rounds,
        "setups": results,
        "floor": floor_rates,
        "targets": targets,
    }))
}

/// `o.rounds` measurements of `s` (an odd count), each right after a floor
/// measurement of its own at the same slots and hooks, on a fresh floor
/// directory. The round with the median ratio, with every round in the
/// order measured and the range of the ratio.
async fn rounds(s: &Setup, o: &Opts) -> anyhow::Result<Value> {
    let mut all = Vec::new();
    for i in 0..o.rounds {
        if !o.smoke {
            settle().await;
        }
        let f = Arc::new(floor::Floor::new()?)
            .rate(s.slots(), s.hooks, o.floor_seconds)
            .await?;
        let floor_rate = f["runs_per_s"].as_f64().unwrap_or(0.0);
        if floor_rate.is_nan() || floor_rate <= 0.0 {
            bail!(
                "the floor completed no runs in {} s at {} slots; raise --floor-seconds",
                o.floor_seconds,
                s.slots()
            );
        }
        let mut r = measure(s, o).await?;
        let ours = r["runs_per_s"].as_f64().unwrap_or(0.0);
        r["round"] = json!(i + 1);
        r["floor_runs_per_s"] = json!(floor_rate);
        r["ratio_to_floor"] = json!(round(ours / floor_rate, 3));
        all.push((ours / floor_rate, r));
    }
    let in_order: Vec<Value> = all
        .iter()
        .map(|(_, r)| {
            json!({
                "round": r["round"],
                "runs_per_s": r["runs_per_s"],
                "floor_runs_per_s": r["floor_runs_per_s"],
                "ratio_to_floor": r["ratio_to_floor"],
                "cpu_ms_per_run": r["cpu_ms_per_run"],
            })
        })
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (lo, hi) = (all[0].0, all[all.len() - 1].0);
    let mut median = all.swap_remove(all.len() / 2).1;
    median["ratio_to_floor_range"] = json!([round(lo, 3), round(hi, 3)]);
    median["rounds"] = json!(in_order);
    Ok(median)
}
