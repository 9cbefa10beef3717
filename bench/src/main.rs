//! `oz-bench`: measurements of the real binaries on this machine.
//!
//! It starts `oz-server` and `oz-agent-worker` from the same target
//! directory as itself (build with `cargo build --release --workspace`),
//! drives them over the public API, and writes the numbers as JSON. No test
//! asserts a duration; `--smoke` runs a tiny version so CI keeps it working.
#![forbid(unsafe_code)]

mod dispatch;
mod floor;
mod growth;
mod harness;
mod logs;
mod memory;
mod store;
mod throughput;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

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
    /// The trivial agent: `probe` (a static binary that writes the time it
    /// started and exits) or `sh-date` (`/bin/sh` running `date +%s%N`, the
    /// agent of the first four reports).
    #[arg(long, global = true, value_enum, default_value = "probe")]
    agent: harness::AgentKind,
}

// Parsed once per process: `All`'s size does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Latency of single runs: submit → agent start, submit → terminal.
    Dispatch(DispatchArgs),
    /// Trivial runs per second for several worker setups, as ratios to the
    /// floor.
    Throughput {
        #[command(flatten)]
        args: ThroughputArgs,
        /// Seconds each floor loop runs.
        #[arg(long, default_value_t = 5.0)]
        floor_seconds: f64,
    },
    /// The same work without Oz: mkdir, spawn the agent, wait, rm.
    Floor(FloorArgs),
    /// Worker and server memory, idle, with running runs, and with many
    /// connected (simulated) workers.
    Memory(MemoryArgs),
    /// Per-run cost as the queue grows (fill, then drain).
    Growth(GrowthArgs),
    /// The store's own CPU per trivial run (its calls made in process, no
    /// server), one run at a time and several at once.
    Store(StoreArgs),
    /// Everything above; one JSON file per benchmark in --out-dir.
    All {
        /// Where the `<name>.json` files go [default: bench/results, or a
        /// temporary directory with --smoke].
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Benchmarks to leave out (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        skip: Vec<String>,
        #[command(flatten)]
        dispatch: DispatchArgs,
        #[command(flatten)]
        throughput: ThroughputArgs,
        #[command(flatten)]
        floor: FloorArgs,
        #[command(flatten)]
        memory: MemoryArgs,
        #[command(flatten)]
        growth: GrowthArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
struct DispatchArgs {
    /// Runs measured, one after another.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Runs before the measurement, not counted.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The worker's max_concurrent_tasks.
    #[arg(long, default_value_t = 8)]
    dispatch_max: u32,
}

#[derive(clap::Args)]
struct ThroughputArgs {
    /// Seconds each setup is measured for (after a pilot).
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// max_concurrent_tasks of the single worker, one setup each.
    #[arg(long, default_value = "1,8,32", value_parser = harness::parse_list)]
    concurrency: ::std::vec::Vec<usize>,
    /// Workers sharing one id (0: leave that setup out).
    #[arg(long, default_value_t = 4)]
    shared_workers: usize,
    /// max_concurrent_tasks of each shared worker.
    #[arg(long, default_value_t = 8)]
    shared_max: u32,
    /// The server's database URL instead of a fresh file in its data
    /// directory, e.g. `sqlite::memory:` for what the runs would cost with
    /// a store that does no file I/O (not durable: a bound, not a setup to
    /// run). Recorded in each result as `server_database`.
    #[arg(long, value_name = "URL")]
    server_database: Option<String>,
    /// Measure each setup this many times (an odd number), each right after
    /// a floor measurement of its own at the same concurrency and hooks,
    /// and report the median ratio with its range (1: one floor measurement
    /// per concurrency, shared).
    #[arg(long, default_value_t = 1, value_parser = odd_rounds)]
    rounds: u16,
    /// How the bench sees runs end: `list` asks for all the runs that
    /// ended every 10 ms; `get` asks for each run by id (a request per run
    /// that the server and the bench pay for, as before the eighth
    /// session). Recorded in each result as `watch`.
    #[arg(long, value_enum, default_value_t = throughput::Watch::List)]
    watch: throughput::Watch,
}

#[derive(clap::Args)]
struct FloorArgs {
    /// Seconds each floor loop runs.
    #[arg(long, default_value_t = 5.0)]
    floor_seconds: f64,
    /// Direct spawns timed for the agent's own start cost.
    #[arg(long, default_value_t = 1000)]
    agent_samples: usize,
}

#[derive(clap::Args)]
struct MemoryArgs {
    /// Runs running at once on one worker.
    #[arg(long, default_value_t = 32)]
    running: usize,
    /// Simulated workers connected to the server.
    #[arg(long, default_value_t = 1000)]
    sim_workers: usize,
    /// Runs of the dispatch probe, before and with the simulated workers.
    #[arg(long, default_value_t = 200)]
    probe_runs: usize,
    /// Seconds over which the server's idle CPU is read with them connected.
    #[arg(long, default_value_t = 10.0)]
    idle_cpu_seconds: f64,
}

#[derive(clap::Args)]
struct StoreArgs {
    /// Run lives per measurement.
    #[arg(long, default_value_t = 20_000)]
    store_runs: usize,
    /// Lives at once, one measurement level each.
    #[arg(long, default_value = "1,8", value_parser = harness::parse_list)]
    store_concurrency: ::std::vec::Vec<usize>,
    /// Measurements per level (the median is reported).
    #[arg(long, default_value_t = 3)]
    store_repeat: usize,
}

impl StoreArgs {
    fn opts(&self, smoke: bool) -> store::Opts {
        if smoke {
            return store::Opts::smoke();
        }
        store::Opts {
            runs: self.store_runs,
            concurrency: self.store_concurrency.clone(),
            repeat: self.store_repeat,
        }
    }
}

#[derive(clap::Args)]
struct GrowthArgs {
    /// Queue sizes, one fresh server each.
    #[arg(long, default_value = "1000,10000,100000", value_parser = harness::parse_list)]
    sizes: ::std::vec::Vec<usize>,
    /// max_concurrent_tasks of the draining worker.
    #[arg(long, default_value_t = 32)]
    drain_concurrency: u32,
    /// Concurrent POSTs while filling the queue.
    #[arg(long, default_value_t = 16)]
    post_parallel: usize,
    /// Runs of each dispatch probe.
    #[arg(long, default_value_t = 100)]
    growth_probe_runs: usize,
    /// Give up draining one queue after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    drain_timeout: f64,
}

impl DispatchArgs {
    fn opts(&self, smoke: bool, agent_samples: usize) -> dispatch::Opts {
        if smoke {
            return dispatch::Opts::smoke();
        }
        dispatch::Opts {
            runs: self.runs,
            warmup: self.warmup,
            max_concurrent: self.dispatch_max,
            agent_samples,
        }
    }
}

/// `--rounds`: 1 to 99 and odd, so that the median is one of the rounds.
fn odd_rounds(s: &str) -> Result<u16, String> {
    let n: u16 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of rounds"))?;
    if n == 0 || n > 99 || n.is_multiple_of(2) {
        return Err(format!(
            "{n} rounds: give an odd number from 1 to 99, so that the median is one of the rounds"
        ));
    }
    Ok(n)
}

impl ThroughputArgs {
    fn opts(&self, smoke: bool, floor_seconds: f64) -> throughput::Opts {
        if smoke {
            return throughput::Opts {
                server_database: self.server_database.clone(),
                rounds: usize::from(self.rounds),
                watch: self.watch,
                ..throughput::Opts::smoke()
            };
        }
        throughput::Opts {
            seconds: self.seconds,
            concurrency: self.concurrency.clone(),
            shared_workers: self.shared_workers,
            shared_max: self.shared_max,
            floor_seconds,
            smoke: false,
            server_database: self.server_database.clone(),
            rounds: usize::from(self.rounds),
            watch: self.watch,
        }
    }
}

impl FloorArgs {
    fn opts(&self, smoke: bool, concurrency: Vec<usize>) -> floor::Opts {
        if smoke {
            return floor::Opts::smoke();
        }
        floor::Opts {
            seconds: self.floor_seconds,
            concurrency,
            agent_samples: self.agent_samples,
            settle: true,
        }
    }
}

impl MemoryArgs {
    fn opts(&self, smoke: bool) -> memory::Opts {
        if smoke {
            return memory::Opts::smoke();
        }
        memory::Opts {
            running: self.running,
            sims: self.sim_workers,
            probe_runs: self.probe_runs,
            idle_cpu_secs: self.idle_cpu_seconds,
        }
    }
}

impl GrowthArgs {
    fn opts(&self, smoke: bool) -> growth::Opts {
        if smoke {
            return growth::Opts::smoke();
        }
        growth::Opts {
            sizes: self.sizes.clone(),
            drain_concurrency: self.drain_concurrency,
            post_parallel: self.post_parallel,
            probe_runs: self.growth_probe_runs,
            drain_timeout: self.drain_timeout,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    harness::set_agent_kind(cli.agent);
    let smoke = cli.smoke;
    let result = match cli.bench {
        Bench::Logs {
            bytes,
            repeat,
            concurrent,
            concurrent_bytes,
        } => {
            let o = if smoke {
                logs::Opts::smoke()
            } else {
                logs::Opts {
                    bytes,
                    repeat,
                    concurrent,
                    concurrent_bytes,
                }
            };
            logs::run(&o).await?
        }
        Bench::Dispatch(a) => dispatch::run(&a.opts(smoke, 1000)).await?,
        Bench::Throughput {
            args,
            floor_seconds,
        } => throughput::run(&args.opts(smoke, floor_seconds), None).await?,
        Bench::Floor(a) => floor::run(&a.opts(smoke, vec![1, 8, 32])).await?,
        Bench::Memory(a) => memory::run(&a.opts(smoke)).await?,
        Bench::Growth(a) => growth::run(&a.opts(smoke)).await?,
        Bench::Store(a) => store::run(&a.opts(smoke)).await?,
        Bench::All {
            out_dir,
            skip,
            dispatch,
            throughput,
            floor,
            memory,
            growth,
            store,
        } => {
            if cli.out.is_some() {
                bail!("`all` writes one file per benchmark: use --out-dir, not --out");
            }
            let dir = match out_dir {
                Some(d) => d,
                None if smoke => std::env::temp_dir().join("oz-bench-smoke"),
                None => Path::new(env!("CARGO_MANIFEST_DIR")).join("results"),
            };
            return all(
                &dir,
                &skip,
                smoke,
                &dispatch,
                &throughput,
                &floor,
                &memory,
                &growth,
                &store,
            )
            .await;
        }
    };
    write(cli.out.as_deref(), &result)
}

fn write(out: Option<&Path>, result: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(result)?;
    match out {
        Some(path) => std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display())),
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn all(
    dir: &Path,
    skip: &[String],
    smoke: bool,
    d: &DispatchArgs,
    t: &ThroughputArgs,
    f: &FloorArgs,
    m: &MemoryArgs,
    g: &GrowthArgs,
    st: &StoreArgs,
) -> anyhow::Result<()> {
    const NAMES: [&str; 7] = [
        "floor",
        "dispatch",
        "throughput",
        "memory",
        "growth",
        "logs",
        "store",
    ];
    for s in skip {
        if !NAMES.contains(&s.as_str()) {
            bail!("--skip {s:?}: not one of {}", NAMES.join(", "));
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let run = |name: &str| !skip.iter().any(|s| s == name);
    let mut targets = Vec::new();
    let mut keep = |name: &str, v: &Value, secs: f64| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.json"));
        write(Some(&path), v)?;
        eprintln!("{name}: {secs:.0} s → {}", path.display());
        for t in v["targets"].as_array().into_iter().flatten() {
            targets.push(json!({"bench": name, "check": t}));
        }
        Ok(())
    };

    // The floor first: throughput reuses its rates.
    let tput = t.opts(smoke, f.floor_seconds);
    let mut cs = tput.concurrency.clone();
    if tput.shared_workers > 0 {
        cs.push(tput.shared_workers * tput.shared_max as usize);
    }
    cs.sort_unstable();
    cs.dedup();
    let mut floor_rates = None;
    if run("floor") {
        let t0 = Instant::now();
        let v = floor::run(&f.opts(smoke, cs)).await?;
        floor_rates = v["rates"].as_array().cloned();
        keep("floor", &v, t0.elapsed().as_secs_f64())?;
    }
    if run("dispatch") {
        let t0 = Instant::now();
        let v = dispatch::run(&d.opts(smoke, f.agent_samples)).await?;
        keep("dispatch", &v, t0.elapsed().as_secs_f64())?;
    }
    if run("throughput") {
        let t0 = Instant::now();
        let v = throughput::run(&tput, floor_rates).await?;
        keep("throughput", &v, t0.elapsed().as_secs_f64())?;
    }
    if run("memory") {
        let t0 = Instant::now();
        let v = memory::run(&m.opts(smoke)).await?;
        keep("memory", &v, t0.elapsed().as_secs_f64())?;
    }
    if run("growth") {
        let t0 = Instant::now();
        let v = growth::run(&g.opts(smoke)).await?;
        keep("growth", &v, t0.elapsed().as_secs_f64())?;
    }
    if run("logs") {
        let t0 = Instant::now();
        let o = if smoke {
            logs::Opts::smoke()
        } else {
            logs::Opts {
                bytes: 64 << 20,
                repeat: 3,
                concurrent: 100,
                concurrent_bytes: 1 << 20,
            }
        };
        let v = logs::run(&o).await?;
        keep("logs", &v, t0.elapsed().as_secs_f64())?;
    }
    if run("store") {
        let t0 = Instant::now();
        let v = store::run(&st.opts(smoke)).await?;
        keep("store", &v, t0.elapsed().as_secs_f64())?;
    }

    // The targets at a glance (also for bench/REPORT.md).
    let mut table =
        String::from("| benchmark | metric | value | target | met? |\n|---|---|---|---|---|\n");
    for t in &targets {
        let c = &t["check"];
        table.push_str(&format!(
            "| {} | {} | {} {} | {} | {} |\n",
            t["bench"].as_str().unwrap_or_default(),
            c["metric"].as_str().unwrap_or_default(),
            c["value"],
            c["unit"].as_str().unwrap_or_default(),
            c["target"].as_str().unwrap_or_default(),
            if c["met"] == true { "yes" } else { "**no**" },
        ));
    }
    write(
        Some(&dir.join("targets.json")),
        &json!({"machine": harness::machine(), "targets": targets}),
    )?;
    println!("{table}");
    Ok(())
}
