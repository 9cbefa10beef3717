//! `oz agent run`: the agent runner.
//!
//! Two modes:
//! - **managed** (`--task-id`, what the worker starts in each workspace):
//!   read the run from the server with the run-scoped token
//!   (`WARP_API_KEY`), pick the harness from the run's config, report
//!   INPROGRESS, run the harness, report the pull requests it opened and,
//!   when it fails, why; upload the files it left in `OZ_ARTIFACTS_DIR`
//!   and `OZ_HANDOFF_DIR` (see [`outbox`]); exit with its status.
//! - **unmanaged** (`--prompt`): run a harness in the current directory
//!   with no server at all.
//!
//! Code map: [`args`] (the command line), [`harness`] (one adapter per
//! agent CLI, custom ones from YAML), [`exec`] (process group, output relay,
//! signals), [`scan`] (pull-request links), [`report`] (server reports),
//! [`outbox`] (artifact and handoff uploads), [`env`] (the environment as
//! a value, PATH lookup).

pub mod args;
pub mod env;
pub mod exec;
pub mod harness;
pub mod outbox;
pub mod report;
pub mod scan;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;

use self::args::RunArgs;
use self::env::Env;
use self::exec::{Outcome, Sink, Target};
use self::harness::custom::{self, HarnessConfig};
use self::harness::{ENV_DEFAULT_HARNESS, Harness, Invocation, OZ_HARNESS_UNSUPPORTED, Request};
use self::outbox::{Outbox, Uploader};
use self::report::Reporter;
use crate::client::{Client, ENV_API_KEY, ENV_BASE_URL};

/// Exit code of a usage or configuration error.
const EXIT_USAGE: u8 = 2;
/// Exit code when the run cannot be read.
const EXIT_FAILURE: u8 = 1;
/// Exit code when the harness CLI is missing.
const EXIT_MISSING: u8 = 127;

/// What the runner works with: environment, directory, output, signals.
/// `main` takes the process's; tests build their own.
pub struct Ctx {
    pub env: Env,
    pub cwd: PathBuf,
    pub stdout: Sink,
    pub stderr: Sink,
    /// Pass SIGTERM/SIGINT on to the harness (the real process only).
    pub forward_signals: bool,
}

impl Ctx {
    /// This process's environment, directory, stdout and stderr.
    pub fn process() -> Self {
        Ctx {
            env: Env::from_process(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            stdout: Sink::new(tokio::io::stdout()),
            stderr: Sink::new(tokio::io::stderr()),
            forward_signals: true,
        }
    }
}

/// `oz agent run <args…>` (the arguments after `run`).
pub async fn main(raw: Vec<String>) -> ExitCode {
    ExitCode::from(run(raw, Ctx::process()).await)
}

/// The runner with an explicit context; returns the exit code.
pub async fn run(raw: Vec<String>, ctx: Ctx) -> u8 {
    let parsed = match args::parse(&raw) {
        Ok(p) => p,
        Err(e) => {
            ctx.stderr
                .say(&format!("{e} (see oz agent run --help)"))
                .await;
            return EXIT_USAGE;
        }
    };
    for warning in &parsed.warnings {
        ctx.stderr.say(warning).await;
    }
    let a = parsed.args;
    if a.help {
        ctx.stdout.write(args::HELP.as_bytes()).await;
        return 0;
    }
    let cwd = match &a.cwd {
        Some(dir) => ctx.cwd.join(dir),
        None => ctx.cwd.clone(),
    };
    if !cwd.is_dir() {
        ctx.stderr
            .say(&format!(
                "the working directory {} does not exist",
                cwd.display()
            ))
            .await;
        return EXIT_USAGE;
    }
    let task_id = a.task_id.as_deref().map(str::trim);
    match (task_id, a.prompt.as_deref()) {
        (Some(_), Some(_)) => {
            ctx.stderr
                .say("--prompt and --task-id do not go together: a managed run takes its prompt from the server")
                .await;
            EXIT_USAGE
        }
        (Some(""), None) => {
            ctx.stderr.say("--task-id is empty").await;
            EXIT_USAGE
        }
        (Some(id), None) => managed(id, &a, &ctx, &cwd).await,
        (None, Some(prompt)) => unmanaged(prompt, &a, &ctx, &cwd).await,
        (None, None) => {
            ctx.stderr
                .say("nothing to do: give --prompt TEXT (or --task-id ID when started by a worker); see --help")
                .await;
            EXIT_USAGE
        }
    }
}

/// A failure before the harness starts.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

/// The harness command and the program to run.
struct Plan {
    inv: Invocation,
    program: PathBuf,
}

struct Choice<'a> {
    harness: &'a Harness,
    prompt: &'a str,
    model: Option<&'a str>,
    managed: bool,
}

/// Build the invocation and find its program.
async fn plan(c: Choice<'_>, a: &RunArgs, ctx: &Ctx, cwd: &Path) -> Result<Plan, Failure> {
    if c.prompt.trim().is_empty() {
        return Err(Failure::usage("the prompt is empty"));
    }
    if a.skill.as_deref().is_some_and(|s| !s.trim().is_empty()) {
        ctx.stderr
            .say("skills are not supported by this runner; --skill ignored")
            .await;
    }
    let mcp = if *c.harness == Harness::Claude {
        let (config, warnings) = harness::claude::mcp_config(&a.mcp, cwd);
        for w in warnings {
            ctx.stderr.say(&w).await;
        }
        config
    } else {
        if !a.mcp.is_empty() {
            ctx.stderr
                .say("MCP servers are only passed to the claude harness; --mcp ignored")
                .await;
        }
        None
    };
    let req = Request {
        prompt: c.prompt,
        model: c.model,
        sandboxed: a.sandboxed,
        mcp_config: mcp.as_deref(),
        cwd,
        env: &ctx.env,
        isolate_state: c.managed,
        in_git_repo: harness::codex::in_git_work_tree(cwd),
    };
    let inv = c.harness.invocation(&req);
    match ctx.env.find_program(&inv.program, cwd) {
        Some(program) => Ok(Plan { inv, program }),
        None => Err(Failure {
            code: EXIT_MISSING,
            message: inv.missing_message(),
        }),
    }
}

async fn start(
    plan: &Plan,
    ctx: &Ctx,
    env: &Env,
    cwd: &Path,
    prs: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Outcome {
    ctx.stderr
        .say(&format!(
            "running the {} harness in {}",
            plan.inv.label,
            cwd.display()
        ))
        .await;
    let outcome = exec::execute(
        &plan.inv,
        Target {
            program: &plan.program,
            cwd,
            env,
            stdout: &ctx.stdout,
            stderr: &ctx.stderr,
            forward_signals: ctx.forward_signals,
            prs,
        },
    )
    .await;
    if let Some(f) = &outcome.failure {
        ctx.stderr.say(f).await;
    }
    outcome
}

fn load_config(a: &RunArgs, ctx: &Ctx, cwd: &Path) -> Result<Option<HarnessConfig>, Failure> {
    custom::load(a.harness_config.as_deref(), &ctx.env, cwd).map_err(Failure::usage)
}

// ---- unmanaged ----------------------------------------------------------

async fn unmanaged(prompt: &str, a: &RunArgs, ctx: &Ctx, cwd: &Path) -> u8 {
    let plan = match unmanaged_plan(prompt, a, ctx, cwd).await {
        Ok(p) => p,
        Err(f) => {
            ctx.stderr.say(&f.message).await;
            return f.code;
        }
    };
    start(&plan, ctx, &ctx.env, cwd, None).await.code
}

async fn unmanaged_plan(prompt: &str, a: &RunArgs, ctx: &Ctx, cwd: &Path) -> Result<Plan, Failure> {
    let config = load_config(a, ctx, cwd)?;
    let (name, saw_oz) = harness::first_named(&[
        a.harness.as_deref(),
        ctx.env.non_empty(ENV_DEFAULT_HARNESS),
        config.as_ref().and_then(|c| c.default.as_deref()),
    ]);
    let Some(name) = name else {
        let why = if saw_oz {
            "the built-in oz harness is not provided by this runner"
        } else {
            "no harness chosen"
        };
        return Err(Failure::usage(format!(
            "{why}: pass --harness claude, codex, gemini, command or a custom harness, or set {ENV_DEFAULT_HARNESS}"
        )));
    };
    let harness = harness::resolve(name, config.as_ref()).map_err(Failure::usage)?;
    let model = trimmed(a.model.as_deref());
    plan(
        Choice {
            harness: &harness,
            prompt,
            model,
            managed: false,
        },
        a,
        ctx,
        cwd,
    )
    .await
}

// ---- managed ------------------------------------------------------------

async fn managed(task_id: &str, a: &RunArgs, ctx: &Ctx, cwd: &Path) -> u8 {
    let (client, uploader) = match managed_client(a, &ctx.env, task_id) {
        Ok(c) => c,
        Err(message) => {
            ctx.stderr.say(&message).await;
            return EXIT_USAGE;
        }
    };
    let run = match client.get_run(task_id).await {
        Ok(run) => run,
        Err(e) => {
            ctx.stderr
                .say(&format!("cannot read run {task_id}: {e}"))
                .await;
            return EXIT_FAILURE;
        }
    };
    let reporter = Arc::new(Reporter::new(client, task_id, ctx.stderr.clone()));

    // After follow-ups the current execution has a prompt of its own.
    let prompt = run.execution_prompt.as_deref().unwrap_or(&run.prompt);
    let plan = match managed_plan(prompt, run.agent_config.as_ref(), a, ctx, cwd).await {
        Ok(p) => p,
        Err(f) => {
            ctx.stderr.say(&f.message).await;
            reporter.status(&f.message).await;
            return f.code;
        }
    };

    let (outbox, warnings) = Outbox::prepare(cwd);
    for w in warnings {
        ctx.stderr.say(&format!("warning: {w}")).await;
    }
    let mut env = ctx.env.clone();
    outbox.export(&mut env);

    reporter.in_progress().await;
    let (prs, pr_task) =
        report::spawn_pr_reporter(reporter.clone(), cwd.to_path_buf(), ctx.env.clone());
    let outcome = start(&plan, ctx, &env, cwd, Some(prs)).await;
    // Every sender is gone once the harness's output is drained.
    if tokio::time::timeout(report::FLUSH_TIMEOUT, pr_task)
        .await
        .is_err()
    {
        ctx.stderr
            .say("warning: gave up waiting for pull-request reports")
            .await;
    }
    // A cancelled run already has its reason on the server.
    if let Some(f) = &outcome.failure
        && !outcome.interrupted
    {
        reporter.status(f).await;
    }
    // Like the reports above: whatever the harness's status, but not when
    // the runner is being stopped (a cancelled run).
    if !outcome.interrupted {
        upload(&outbox, &uploader, ctx).await;
    }
    outcome.code
}

/// Upload the outbox and print the summary. A SIGTERM/SIGINT meanwhile
/// (the worker cancelling) abandons the rest: the runner must stop.
async fn upload(outbox: &Outbox, uploader: &Uploader, ctx: &Ctx) {
    let uploads = outbox::upload(outbox, uploader, &ctx.stderr);
    let summary = if ctx.forward_signals {
        tokio::select! {
            s = uploads => Some(s),
            () = stop_signal() => None,
        }
    } else {
        Some(uploads.await)
    };
    match summary {
        Some(s) => {
            if let Some(line) = s.line() {
                ctx.stderr.say(&line).await;
            }
        }
        None => {
            ctx.stderr
                .say("stopped: the remaining uploads are abandoned")
                .await;
        }
    }
}

/// The next SIGTERM or SIGINT (never, when they cannot be watched).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Client (and uploader) from `--api-url`, else `OZ_API_BASE_URL`, else
/// `--server-root-url`, else `WARP_SERVER_ROOT_URL`; and `--api-key`, else
/// `WARP_API_KEY`.
fn managed_client(a: &RunArgs, env: &Env, run_id: &str) -> Result<(Client, Uploader), String> {
    let base = trimmed(a.api_url.as_deref())
        .or_else(|| env.non_empty(ENV_BASE_URL))
        .or_else(|| trimmed(a.server_root_url.as_deref()))
        .or_else(|| env.non_empty("WARP_SERVER_ROOT_URL"))
        .ok_or_else(|| {
            format!("no server to report to: set {ENV_BASE_URL} or pass --server-root-url")
        })?;
    let key = trimmed(a.api_key.as_deref())
        .or_else(|| env.non_empty(ENV_API_KEY))
        .unwrap_or_default();
    // The binary installs ring at start; an embedding caller may not have.
    // A provider already installed stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(base, key).map_err(|e| e.to_string())?;
    let uploader = Uploader::new(client.base_url(), key, run_id)?;
    Ok((client, uploader))
}

async fn managed_plan(
    prompt: &str,
    agent_config: Option<&Value>,
    a: &RunArgs,
    ctx: &Ctx,
    cwd: &Path,
) -> Result<Plan, Failure> {
    let config = load_config(a, ctx, cwd)?;
    let config_str = |pointer: &str| {
        agent_config
            .and_then(|c| c.pointer(pointer))
            .and_then(Value::as_str)
    };
    let (name, _) = harness::first_named(&[
        config_str("/harness/type"),
        // Where the server keeps harness types the official API does not name.
        config_str("/runner_harness/type"),
        a.harness.as_deref(),
        ctx.env.non_empty(ENV_DEFAULT_HARNESS),
        config.as_ref().and_then(|c| c.default.as_deref()),
    ]);
    let Some(name) = name else {
        return Err(Failure::usage(OZ_HARNESS_UNSUPPORTED));
    };
    let harness = harness::resolve(name, config.as_ref()).map_err(Failure::usage)?;
    if prompt.trim().is_empty() {
        let msg = match trimmed(config_str("/skill_spec")).or(trimmed(a.skill.as_deref())) {
            Some(skill) => format!(
                "the run has no prompt, only the skill {skill:?}; this runner does not support skills"
            ),
            None => "the run has no prompt".to_owned(),
        };
        return Err(Failure::usage(msg));
    }
    let model = managed_model(agent_config, a);
    plan(
        Choice {
            harness: &harness,
            prompt,
            model: model.as_deref(),
            managed: true,
        },
        a,
        ctx,
        cwd,
    )
    .await
}

/// A third-party harness (config.harness.type set, not oz) takes
/// `harness.model_id`; otherwise `--model`, else the run's `model_id`.
fn managed_model(agent_config: Option<&Value>, a: &RunArgs) -> Option<String> {
    let get = |pointer: &str| {
        trimmed(
            agent_config
                .and_then(|c| c.pointer(pointer))
                .and_then(Value::as_str),
        )
    };
    let third_party = get("/harness/type").is_some_and(|t| t != "oz");
    let model = if third_party {
        get("/harness/model_id")
    } else {
        trimmed(a.model.as_deref()).or_else(|| get("/model_id"))
    };
    model.map(str::to_owned)
}

fn trimmed(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests;
