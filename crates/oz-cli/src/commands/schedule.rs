//! `oz schedule create | list | get | update | pause | unpause | delete`:
//! agents that run on a cron schedule (`/agent/schedules`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::agent::{parse_mcp, read_run_file, set_model};
use super::{api_error, exit};
use crate::client::{Client, ScheduledAgentItem};
use crate::output::{self, Column, Format, Style};

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: an agent run started at every cron tick.
    Create(Box<CreateArgs>),
    /// List schedules, sorted by name.
    List {
        /// table for people, json (the API's own) for scripts.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show one schedule.
    Get {
        /// Schedule id (see `oz schedule list`).
        schedule_id: String,
        /// table for people, json (the API's own) for scripts.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Change a schedule. Changes apply to future runs only.
    #[command(
        long_about = "Change a schedule. Changes apply to future runs only: runs already \
        started keep the settings they started with.\n\n\
        Only what the flags name changes; everything else stays as it is."
    )]
    Update(Box<UpdateArgs>),
    /// Pause a schedule: no runs until it is unpaused.
    Pause {
        /// Schedule id (see `oz schedule list`).
        schedule_id: String,
        /// table for people, json (the API's own) for scripts.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Unpause a paused schedule: runs start again at its next tick.
    Unpause {
        /// Schedule id (see `oz schedule list`).
        schedule_id: String,
        /// table for people, json (the API's own) for scripts.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Delete a schedule: no more runs. Runs it already made are kept.
    Delete {
        /// Schedule id (see `oz schedule list`).
        schedule_id: String,
        /// table for people, json (the API's own) for scripts.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Name of the schedule (lists are sorted by it).
    #[arg(long)]
    pub name: String,
    /// When to run: a five-field cron in UTC, e.g. "0 9 * * 1-5" (09:00 UTC on weekdays).
    #[arg(long, value_name = "CRON")]
    pub cron: String,
    /// What the agent should do on each run (needed unless a skill is given).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Cloud environment id (agent_config.environment_id); without one the agent gets a bare sandbox.
    #[arg(long, value_name = "ID")]
    pub environment: Option<String>,
    /// Skill spec, "owner/repo:path/to/SKILL.md" (agent_config.skill_spec).
    #[arg(long, value_name = "SPEC")]
    pub skill: Option<String>,
    /// Worker id that should run each run (agent_config.worker_host).
    #[arg(long, value_name = "WORKER_ID")]
    pub host: Option<String>,
    /// MCP servers (repeatable): a JSON object {name: config}, @FILE or a file holding one, or a server id.
    #[arg(long, value_name = "JSON|FILE|ID")]
    pub mcp: Vec<String>,
    /// Model id (agent_config.model_id, or agent_config.harness.model_id for a third-party harness).
    #[arg(long, value_name = "MODEL_ID")]
    pub model: Option<String>,
    /// Run file, as for `oz agent run-cloud --file`: its prompt, skill, config and metadata are used; flags override it.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Create it paused (enabled=false); start it later with `oz schedule unpause`.
    #[arg(long)]
    pub paused: bool,
    /// Output of the created schedule.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// Schedule id (see `oz schedule list`).
    pub schedule_id: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// New five-field cron, UTC.
    #[arg(long, value_name = "CRON")]
    pub cron: Option<String>,
    /// New prompt.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Cloud environment id.
    #[arg(long, value_name = "ID", conflicts_with = "remove_environment")]
    pub environment: Option<String>,
    /// Run without an environment (a bare sandbox).
    #[arg(long)]
    pub remove_environment: bool,
    /// Skill spec, "owner/repo:path/to/SKILL.md".
    #[arg(long, value_name = "SPEC", conflicts_with = "remove_skill")]
    pub skill: Option<String>,
    /// Drop the skill (the schedule then needs a prompt).
    #[arg(long)]
    pub remove_skill: bool,
    /// Worker id that should run each run.
    #[arg(long, value_name = "WORKER_ID", conflicts_with = "remove_host")]
    pub host: Option<String>,
    /// Drop the worker host (runs go to the server's default worker host).
    #[arg(long)]
    pub remove_host: bool,
    /// Add or replace MCP servers by name (repeatable): JSON {name: config}, @FILE, a file, or a server id.
    #[arg(long, value_name = "JSON|FILE|ID")]
    pub mcp: Vec<String>,
    /// Remove the MCP server of this name (repeatable).
    #[arg(long, value_name = "NAME")]
    pub remove_mcp: Vec<String>,
    /// Model id.
    #[arg(long, value_name = "MODEL_ID")]
    pub model: Option<String>,
    /// Pause it too (enabled=false).
    #[arg(long, conflicts_with = "unpaused")]
    pub paused: bool,
    /// Unpause it too (enabled=true).
    #[arg(long)]
    pub unpaused: bool,
    /// Output of the updated schedule.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

pub async fn run(client: &Client, cmd: ScheduleCommand) -> ExitCode {
    match cmd {
        ScheduleCommand::Create(a) => create(client, &a).await,
        ScheduleCommand::List { output } => list(client, output).await,
        ScheduleCommand::Get {
            schedule_id,
            output,
        } => get(client, &schedule_id, output).await,
        ScheduleCommand::Update(a) => update(client, &a).await,
        ScheduleCommand::Pause {
            schedule_id,
            output,
        } => set_paused(client, &schedule_id, true, output).await,
        ScheduleCommand::Unpause {
            schedule_id,
            output,
        } => set_paused(client, &schedule_id, false, output).await,
        ScheduleCommand::Delete {
            schedule_id,
            output,
        } => delete(client, &schedule_id, output).await,
    }
}

fn usage_error(e: &str) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(exit::USAGE)
}

// ---- create -----------------------------------------------------------------

/// Keys of a run file that a schedule takes besides prompt, skill, config.
const PASSED_ON: &[&str] = &["metadata", "mode", "agent_uid", "team"];

/// Build the `POST /agent/schedules` body from the run file and the flags.
pub fn build_create(a: &CreateArgs) -> Result<Value, String> {
    let mut file = match &a.file {
        None => Map::new(),
        Some(path) => read_run_file(path)?,
    };
    let mut config = take_config(&mut file)?;
    let mut body = Map::new();
    body.insert("name".into(), json!(a.name));
    body.insert("cron_schedule".into(), json!(a.cron));
    match file.remove("prompt") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) => {
            body.insert("prompt".into(), json!(p));
        }
        Some(_) => return Err("prompt in the run file must be text".into()),
    }
    match file.remove("skill") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            // A run's `skill` is a schedule's agent_config.skill_spec.
            if !config.contains_key("skill_spec") && !config.contains_key("skills") {
                config.insert("skill_spec".into(), json!(s));
            }
        }
        Some(_) => return Err("skill in the run file must be text".into()),
    }
    for key in PASSED_ON {
        if let Some(v) = file.remove(*key) {
            body.insert((*key).into(), v);
        }
    }
    if let (Some(path), false) = (&a.file, file.is_empty()) {
        let keys: Vec<&str> = file.keys().map(String::as_str).collect();
        eprintln!(
            "warning: {}: {} not used by a schedule; ignored",
            path.display(),
            keys.join(", ")
        );
    }
    if let Some(p) = &a.prompt {
        body.insert("prompt".into(), json!(p));
    }
    if let Some(s) = &a.skill {
        set_skill(&mut config, s);
    }
    if let Some(e) = &a.environment {
        config.insert("environment_id".into(), json!(e));
    }
    if let Some(h) = &a.host {
        config.insert("worker_host".into(), json!(h));
    }
    if let Some(m) = &a.model {
        set_model(&mut config, m);
    }
    if !a.mcp.is_empty() {
        let added = parse_mcp_flags(&a.mcp)?;
        let servers = mcp_servers(&mut config)?;
        servers.extend(added);
    }
    if !has_something_to_run(body.get("prompt"), &config) {
        return Err(
            "a schedule needs something to run: pass --prompt or --skill (or a --file with a prompt)"
                .into(),
        );
    }
    if !config.is_empty() {
        body.insert("agent_config".into(), Value::Object(config));
    }
    body.insert("enabled".into(), json!(!a.paused));
    Ok(Value::Object(body))
}

/// The run file's `config` (a run's name) or `agent_config` (a schedule's).
fn take_config(file: &mut Map<String, Value>) -> Result<Map<String, Value>, String> {
    let config = file.remove("config");
    let agent_config = file.remove("agent_config");
    let (key, v) = match (config, agent_config) {
        (Some(_), Some(_)) => {
            return Err("the run file has both config and agent_config: keep one".into());
        }
        (Some(v), None) => ("config", v),
        (None, Some(v)) => ("agent_config", v),
        (None, None) => return Ok(Map::new()),
    };
    match v {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m),
        _ => Err(format!("{key} in the run file must be a mapping")),
    }
}

/// `skill_spec` and `skills` exclude each other in requests.
fn set_skill(config: &mut Map<String, Value>, spec: &str) {
    config.remove("skills");
    config.insert("skill_spec".into(), json!(spec));
}

fn has_skill(config: &Map<String, Value>) -> bool {
    let spec = config
        .get("skill_spec")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty());
    let list = config
        .get("skills")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    spec || list
}

fn has_something_to_run(prompt: Option<&Value>, config: &Map<String, Value>) -> bool {
    let prompt = prompt
        .and_then(Value::as_str)
        .is_some_and(|p| !p.trim().is_empty());
    prompt || has_skill(config)
}

/// `agent_config.mcp_servers`, created empty when absent.
fn mcp_servers(config: &mut Map<String, Value>) -> Result<&mut Map<String, Value>, String> {
    let slot = config
        .entry("mcp_servers")
        .or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
        .ok_or_else(|| "agent_config.mcp_servers must be a mapping {name: server config}".into())
}

/// Every `--mcp`, merged by name; a name given twice is a mistake.
fn parse_mcp_flags(raw: &[String]) -> Result<Map<String, Value>, String> {
    let mut all = Map::new();
    for r in raw {
        let Value::Object(servers) = parse_mcp_flag(r)? else {
            return Err("--mcp must be a JSON object {name: server config}".into());
        };
        for (name, server) in servers {
            if all.insert(name.clone(), server).is_some() {
                return Err(format!("MCP server {name:?} is given twice in --mcp"));
            }
        }
    }
    Ok(all)
}

/// One `--mcp` (as `oz agent run` documents it): inline JSON, `@FILE` or a
/// path to a JSON file, or the id of a shared server or integration.
fn parse_mcp_flag(raw: &str) -> Result<Value, String> {
    let t = raw.trim();
    if t.starts_with('{') || t.starts_with('@') {
        return parse_mcp(t);
    }
    if Path::new(t).is_file() {
        return parse_mcp(&format!("@{t}"));
    }
    let is_id = !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if is_id {
        return Ok(json!({ t: {"warp_id": t} }));
    }
    Err(format!(
        "--mcp {raw:?} is neither a JSON object, a file nor a server id"
    ))
}

async fn create(client: &Client, a: &CreateArgs) -> ExitCode {
    let params = match build_create(a) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    let s = match client.create_schedule(&params).await {
        Ok(s) => s,
        Err(e) => return api_error(&e),
    };
    if a.output == Format::Json {
        output::print_json(&s);
        return ExitCode::from(exit::OK);
    }
    let id = &s.id;
    if s.enabled {
        crate::say!(
            "Schedule {id} created: {:?} runs at \"{}\" (UTC).",
            s.name,
            s.cron_schedule
        );
        if let Some(next) = s.next_run() {
            crate::say!("  Next run: {}", time_secs(next));
        }
    } else {
        crate::say!(
            "Schedule {id} created paused: {:?} will run at \"{}\" (UTC) once unpaused.",
            s.name,
            s.cron_schedule
        );
        crate::say!("  Start it: oz schedule unpause {id}");
    }
    crate::say!("  See it:   oz schedule get {id}");
    ExitCode::from(exit::OK)
}

// ---- list / get ---------------------------------------------------------------

async fn list(client: &Client, format: Format) -> ExitCode {
    let page = match client.list_schedules().await {
        Ok(p) => p,
        Err(e) => return api_error(&e),
    };
    match format {
        Format::Json => output::print_json(&page),
        Format::Table if page.schedules.is_empty() => crate::say!("No schedules."),
        Format::Table => crate::say_raw!("{}", render_list(&Style::detect(), &page.schedules)),
    }
    ExitCode::from(exit::OK)
}

fn paused(s: &ScheduledAgentItem) -> &'static str {
    if s.enabled { "no" } else { "yes" }
}

fn scope(s: &ScheduledAgentItem) -> String {
    s.scope
        .as_ref()
        .map_or_else(|| "-".to_owned(), |sc| sc.kind.clone())
}

/// `2025-01-02 09:00 UTC`: cron ticks are whole minutes.
fn time_minutes(ts: &str) -> String {
    oz_store::parse_ts(ts).map_or_else(
        || ts.to_owned(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// `2025-01-02 09:00:05 UTC`.
fn time_secs(ts: &str) -> String {
    oz_store::parse_ts(ts).map_or_else(
        || ts.to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

pub fn render_list(style: &Style, schedules: &[ScheduledAgentItem]) -> String {
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.cron_schedule.clone(),
                paused(s).to_owned(),
                s.last_ran()
                    .map_or_else(|| "never".to_owned(), time_minutes),
                s.next_run().map_or_else(|| "-".to_owned(), time_minutes),
                scope(s),
            ]
        })
        .collect();
    let col = |header, flexible| Column { header, flexible };
    let cols = [
        col("ID", false),
        col("NAME", true),
        col("SCHEDULE", false),
        col("PAUSED", false),
        col("LAST RAN", false),
        col("NEXT RUN", false),
        col("SCOPE", false),
    ];
    output::table(style, &cols, &rows, &|i, cell| {
        if i == 3 && cell == "yes" {
            style.bold(cell)
        } else {
            cell.to_owned()
        }
    })
}

async fn get(client: &Client, id: &str, format: Format) -> ExitCode {
    let s = match client.get_schedule(id).await {
        Ok(s) => s,
        Err(e) => return api_error(&e),
    };
    match format {
        Format::Json => output::print_json(&s),
        Format::Table => crate::say_raw!("{}", render_schedule(&Style::detect(), &s)),
    }
    ExitCode::from(exit::OK)
}

pub fn render_schedule(style: &Style, s: &ScheduledAgentItem) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("Schedule", s.id.clone()),
        ("Name", s.name.clone()),
        ("Cron", format!("{} (UTC)", s.cron_schedule)),
        ("Paused", paused(s).to_owned()),
        (
            "Next run",
            s.next_run().map_or_else(|| "-".to_owned(), time_secs),
        ),
        (
            "Last ran",
            s.last_ran().map_or_else(|| "never".to_owned(), time_secs),
        ),
    ];
    if let Some(e) = s.last_spawn_error.as_deref().filter(|e| !e.is_empty()) {
        lines.push(("Last error", e.to_owned()));
    }
    lines.push(("Worker", s.config_str("worker_host").unwrap_or("-").into()));
    let env_name = s
        .environment
        .as_ref()
        .and_then(|e| e.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let environment = match (s.config_str("environment_id"), env_name) {
        (Some(id), Some(name)) => format!("{id} ({name})"),
        (Some(id), None) => id.to_owned(),
        (None, _) => "none (bare sandbox)".to_owned(),
    };
    lines.push(("Environment", environment));
    let skill = s.config_str("skill_spec").map(str::to_owned).or_else(|| {
        let list = s.agent_config.as_ref()?.get("skills")?.as_array()?;
        let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
        (!names.is_empty()).then(|| names.join(", "))
    });
    if let Some(skill) = skill {
        lines.push(("Skill", skill));
    }
    let harness = s.agent_config.as_ref().and_then(|c| c.get("harness"));
    if let Some(h) = harness.and_then(|h| h.get("type")).and_then(Value::as_str) {
        lines.push(("Harness", h.to_owned()));
    }
    let model = s.config_str("model_id").or_else(|| {
        harness
            .and_then(|h| h.get("model_id"))
            .and_then(Value::as_str)
    });
    if let Some(m) = model {
        lines.push(("Model", m.to_owned()));
    }
    let mcp = s
        .agent_config
        .as_ref()
        .and_then(|c| c.get("mcp_servers"))
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty());
    if let Some(m) = mcp {
        let names: Vec<&str> = m.keys().map(String::as_str).collect();
        lines.push(("MCP servers", names.join(", ")));
    }
    if let Some(sc) = &s.scope {
        let uid = sc
            .uid
            .as_deref()
            .map(|u| format!(" {u}"))
            .unwrap_or_default();
        lines.push(("Scope", format!("{}{uid}", sc.kind)));
    }
    lines.push(("Created", time_secs(&s.created_at)));
    lines.push(("Updated", time_secs(&s.updated_at)));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{}  {v}\n", style.bold(&format!("{k:<width$}"))));
    }
    if !s.prompt.is_empty() {
        out.push_str(&format!("{}\n", style.bold("Prompt")));
        for l in s.prompt.lines() {
            out.push_str(&format!("  {l}\n"));
        }
    }
    out
}

// ---- update -------------------------------------------------------------------

/// What `oz schedule update` will change, checked before asking the API.
#[derive(Debug)]
pub struct UpdatePlan<'a> {
    args: &'a UpdateArgs,
    mcp: Map<String, Value>,
}

impl<'a> UpdatePlan<'a> {
    pub fn new(a: &'a UpdateArgs) -> Result<Self, String> {
        let nothing = a.name.is_none()
            && a.cron.is_none()
            && a.prompt.is_none()
            && a.environment.is_none()
            && !a.remove_environment
            && a.skill.is_none()
            && !a.remove_skill
            && a.host.is_none()
            && !a.remove_host
            && a.mcp.is_empty()
            && a.remove_mcp.is_empty()
            && a.model.is_none()
            && !a.paused
            && !a.unpaused;
        if nothing {
            return Err(
                "nothing to change: pass at least one of --name, --cron, --prompt, \
                 --environment, --skill, --host, --mcp, --model, their --remove-… forms, \
                 --paused or --unpaused"
                    .into(),
            );
        }
        let mcp = parse_mcp_flags(&a.mcp)?;
        if let Some(name) = a.remove_mcp.iter().find(|n| mcp.contains_key(*n)) {
            return Err(format!(
                "--mcp and --remove-mcp both name the MCP server {name:?}: keep one"
            ));
        }
        Ok(UpdatePlan { args: a, mcp })
    }

    /// The `PUT` body (the schedule as it is, with the changes) and what
    /// changed, in words.
    pub fn apply(&self, current: &ScheduledAgentItem) -> Result<(Value, Vec<String>), String> {
        let a = self.args;
        let mut changed = Vec::new();
        let mut config = current.agent_config.clone().unwrap_or_default();
        // Answers echo skills[0] as skill_spec; a request may hold only one.
        if config
            .get("skills")
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty())
        {
            config.remove("skill_spec");
        }
        let name = a.name.clone().unwrap_or_else(|| current.name.clone());
        if a.name.is_some() {
            changed.push("name".to_owned());
        }
        let cron = a
            .cron
            .clone()
            .unwrap_or_else(|| current.cron_schedule.clone());
        if a.cron.is_some() {
            changed.push("cron".to_owned());
        }
        let prompt = a.prompt.clone().unwrap_or_else(|| current.prompt.clone());
        if a.prompt.is_some() {
            changed.push("prompt".to_owned());
        }
        if let Some(e) = &a.environment {
            config.insert("environment_id".into(), json!(e));
            changed.push("environment".to_owned());
        }
        if a.remove_environment {
            config.remove("environment_id");
            changed.push("environment removed".to_owned());
        }
        if let Some(s) = &a.skill {
            set_skill(&mut config, s);
            changed.push("skill".to_owned());
        }
        if a.remove_skill {
            config.remove("skill_spec");
            config.remove("skills");
            changed.push("skill removed".to_owned());
        }
        if let Some(h) = &a.host {
            config.insert("worker_host".into(), json!(h));
            changed.push("host".to_owned());
        }
        if a.remove_host {
            config.remove("worker_host");
            changed.push("host removed".to_owned());
        }
        if let Some(m) = &a.model {
            set_model(&mut config, m);
            changed.push("model".to_owned());
        }
        if !a.remove_mcp.is_empty() || !self.mcp.is_empty() {
            let servers = mcp_servers(&mut config)?;
            for n in &a.remove_mcp {
                if servers.remove(n).is_none() {
                    let have: Vec<&str> = servers.keys().map(String::as_str).collect();
                    let have = if have.is_empty() {
                        "none".to_owned()
                    } else {
                        have.join(", ")
                    };
                    return Err(format!(
                        "schedule {} has no MCP server named {n:?} (it has: {have})",
                        current.id
                    ));
                }
            }
            servers.extend(self.mcp.clone());
            if servers.is_empty() {
                config.remove("mcp_servers");
            }
            changed.push("MCP servers".to_owned());
        }
        let enabled = if a.paused {
            changed.push("paused".to_owned());
            false
        } else if a.unpaused {
            changed.push("unpaused".to_owned());
            true
        } else {
            current.enabled
        };
        let prompt_value = json!(prompt);
        if !has_something_to_run(Some(&prompt_value), &config) {
            return Err(format!(
                "schedule {} would have nothing to run: it needs a prompt (--prompt) or a skill (--skill)",
                current.id
            ));
        }
        let mut body = Map::new();
        body.insert("name".into(), json!(name));
        body.insert("cron_schedule".into(), json!(cron));
        body.insert("enabled".into(), json!(enabled));
        if !prompt.is_empty() {
            body.insert("prompt".into(), prompt_value);
        }
        // Sent even when empty: leaving it out could keep what was removed.
        if current.agent_config.is_some() || !config.is_empty() {
            body.insert("agent_config".into(), Value::Object(config));
        }
        if let Some(u) = &current.agent_uid {
            body.insert("agent_uid".into(), json!(u));
        }
        if let Some(m) = &current.metadata {
            body.insert("metadata".into(), Value::Object(m.clone()));
        }
        if let Some(mode) = current.extra.get("mode").filter(|m| !m.is_null()) {
            body.insert("mode".into(), mode.clone());
        }
        Ok((Value::Object(body), changed))
    }
}

async fn update(client: &Client, a: &UpdateArgs) -> ExitCode {
    let plan = match UpdatePlan::new(a) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    let current = match client.get_schedule(&a.schedule_id).await {
        Ok(s) => s,
        Err(e) => return api_error(&e),
    };
    let (body, changed) = match plan.apply(&current) {
        Ok(b) => b,
        Err(e) => return usage_error(&e),
    };
    let s = match client.update_schedule(&current.id, &body).await {
        Ok(s) => s,
        Err(e) => return api_error(&e),
    };
    if a.output == Format::Json {
        output::print_json(&s);
    } else {
        crate::say!(
            "Schedule {} updated ({}); the changes apply to future runs only.",
            s.id,
            changed.join(", ")
        );
        if let (true, Some(next)) = (s.enabled, s.next_run()) {
            crate::say!("  Next run: {}", time_secs(next));
        }
    }
    ExitCode::from(exit::OK)
}

// ---- pause / unpause / delete ---------------------------------------------------

async fn set_paused(client: &Client, id: &str, pause: bool, format: Format) -> ExitCode {
    let res = if pause {
        client.pause_schedule(id).await
    } else {
        client.resume_schedule(id).await
    };
    let s = match res {
        Ok(s) => s,
        Err(e) => return api_error(&e),
    };
    match format {
        Format::Json => output::print_json(&s),
        Format::Table if pause => {
            crate::say!(
                "Schedule {} paused: no runs until `oz schedule unpause {}`.",
                s.id,
                s.id
            );
        }
        Format::Table => {
            let next = s
                .next_run()
                .map(|n| format!("; next run {}", time_secs(n)))
                .unwrap_or_default();
            crate::say!("Schedule {} unpaused{next}.", s.id);
        }
    }
    ExitCode::from(exit::OK)
}

async fn delete(client: &Client, id: &str, format: Format) -> ExitCode {
    let answer = match client.delete_schedule(id).await {
        Ok(a) => a,
        Err(e) => return api_error(&e),
    };
    if !answer.success {
        eprintln!("error: the API did not delete schedule {id}");
        return ExitCode::from(exit::API_ERROR);
    }
    match format {
        Format::Json => output::print_json(&answer),
        Format::Table => crate::say!(
            "Schedule {id} deleted: it starts no more runs; runs it already made are kept."
        ),
    }
    ExitCode::from(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct C {
        #[command(flatten)]
        a: CreateArgs,
    }

    #[derive(Parser)]
    struct U {
        #[command(flatten)]
        a: UpdateArgs,
    }

    fn create(args: &[&str]) -> Result<Value, String> {
        let mut argv = vec!["t", "--name", "nightly", "--cron", "0 9 * * *"];
        argv.extend_from_slice(args);
        build_create(&C::parse_from(argv).a)
    }

    fn update_args(args: &[&str]) -> Result<UpdateArgs, clap::Error> {
        let mut argv = vec!["t", "s1"];
        argv.extend_from_slice(args);
        U::try_parse_from(argv).map(|u| u.a)
    }

    fn update(current: &ScheduledAgentItem, args: &[&str]) -> Result<(Value, Vec<String>), String> {
        let a = update_args(args).map_err(|e| e.to_string())?;
        UpdatePlan::new(&a)?.apply(current)
    }

    fn item(v: Value) -> ScheduledAgentItem {
        let mut base = json!({
            "id": "s1", "name": "nightly", "cron_schedule": "0 9 * * *", "enabled": true,
            "prompt": "fix it", "created_at": "2025-01-02T03:04:05Z",
            "updated_at": "2025-01-02T03:04:05Z"
        });
        for (k, val) in v.as_object().cloned().unwrap_or_default() {
            base[k] = val;
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn create_flags_become_the_documented_fields() {
        let p = create(&[
            "--prompt",
            "fix it",
            "--environment",
            "env1",
            "--skill",
            "o/r:SKILL.md",
            "--host",
            "w1",
            "--model",
            "m1",
            "--mcp",
            r#"{"gh":{"url":"http://x"}}"#,
            "--mcp",
            "linear",
        ])
        .unwrap();
        assert_eq!(
            p,
            json!({
                "name": "nightly", "cron_schedule": "0 9 * * *", "prompt": "fix it",
                "enabled": true,
                "agent_config": {
                    "environment_id": "env1", "skill_spec": "o/r:SKILL.md",
                    "worker_host": "w1", "model_id": "m1",
                    "mcp_servers": {"gh": {"url": "http://x"}, "linear": {"warp_id": "linear"}}
                }
            })
        );
        let p = create(&["--prompt", "x", "--paused"]).unwrap();
        assert_eq!(p["enabled"], false);
        assert!(p.get("agent_config").is_none(), "{p}");
    }

    #[test]
    fn create_needs_a_prompt_or_a_skill() {
        let e = create(&[]).unwrap_err();
        assert!(e.contains("--prompt or --skill"), "{e}");
        assert!(create(&["--prompt", "  "]).is_err());
        let p = create(&["--skill", "o/r:S.md"]).unwrap();
        assert!(p.get("prompt").is_none(), "{p}");
        assert_eq!(p["agent_config"]["skill_spec"], "o/r:S.md");
    }

    #[test]
    fn create_uses_the_run_file_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("run.yaml");
        std::fs::write(
            &f,
            "prompt: from file\ntitle: ignored\nskill: o/r:F.md\nconfig:\n  worker_host: a\n  \
             harness: {type: claude}\nmetadata:\n  team: platform\n",
        )
        .unwrap();
        let p = create(&[
            "--file",
            f.to_str().unwrap(),
            "--host",
            "b",
            "--model",
            "opus",
        ])
        .unwrap();
        assert_eq!(p["prompt"], "from file");
        assert!(p.get("title").is_none(), "{p}");
        assert_eq!(p["metadata"], json!({"team": "platform"}));
        assert_eq!(
            p["agent_config"],
            json!({"worker_host": "b", "skill_spec": "o/r:F.md",
                   "harness": {"type": "claude", "model_id": "opus"}})
        );
        let p = create(&["--file", f.to_str().unwrap(), "--prompt", "flag"]).unwrap();
        assert_eq!(p["prompt"], "flag");
    }

    #[test]
    fn create_bad_input_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let both = dir.path().join("both.yaml");
        std::fs::write(&both, "prompt: p\nconfig: {}\nagent_config: {}\n").unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["--prompt", "x", "--mcp", "[1]"], "object"),
            (&["--prompt", "x", "--mcp", "not/a file.json"], "neither"),
            (
                &["--prompt", "x", "--mcp", "@/nonexistent.json"],
                "cannot read",
            ),
            (&["--prompt", "x", "--mcp", "gh", "--mcp", "gh"], "twice"),
            (&["--file", "/nonexistent.yaml"], "cannot read"),
            (&["--file", both.to_str().unwrap()], "keep one"),
        ];
        for (args, want) in cases {
            let e = create(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn mcp_can_come_from_a_file_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("mcp.json");
        std::fs::write(&f, r#"{"fs": {"command": "mcp-fs", "args": ["/"]}}"#).unwrap();
        let path = f.to_str().unwrap();
        for arg in [path.to_owned(), format!("@{path}")] {
            let p = create(&["--prompt", "x", "--mcp", &arg]).unwrap();
            assert_eq!(p["agent_config"]["mcp_servers"]["fs"]["command"], "mcp-fs");
        }
    }

    #[test]
    fn update_keeps_everything_it_is_not_told_to_change() {
        let cur = item(json!({
            "enabled": false,
            "agent_config": {"environment_id": "env1", "worker_host": "w1",
                             "harness": {"type": "claude"}, "runner_id": "r1"},
            "agent_uid": "a1", "metadata": {"k": "v"}, "mode": "normal",
            "history": {"next_run": "2025-01-03T09:00:00Z"}, "scope": {"type": "User"}
        }));
        let (body, changed) = update(&cur, &["--cron", "30 8 * * *"]).unwrap();
        assert_eq!(
            body,
            json!({
                "name": "nightly", "cron_schedule": "30 8 * * *", "enabled": false,
                "prompt": "fix it", "agent_uid": "a1", "metadata": {"k": "v"}, "mode": "normal",
                "agent_config": {"environment_id": "env1", "worker_host": "w1",
                                 "harness": {"type": "claude"}, "runner_id": "r1"}
            })
        );
        assert_eq!(changed, ["cron"]);
    }

    #[test]
    fn update_applies_each_change() {
        let cur = item(json!({
            "agent_config": {"environment_id": "env1", "worker_host": "w1",
                             "skills": ["o/r:A.md"], "skill_spec": "o/r:A.md",
                             "mcp_servers": {"gh": {"url": "http://x"}, "old": {"warp_id": "old"}}}
        }));
        let (body, changed) = update(
            &cur,
            &[
                "--name",
                "renamed",
                "--prompt",
                "new",
                "--remove-environment",
                "--host",
                "w2",
                "--skill",
                "o/r:B.md",
                "--remove-mcp",
                "old",
                "--mcp",
                "linear",
                "--model",
                "m",
                "--paused",
            ],
        )
        .unwrap();
        assert_eq!(
            body,
            json!({
                "name": "renamed", "cron_schedule": "0 9 * * *", "enabled": false,
                "prompt": "new",
                "agent_config": {"worker_host": "w2", "skill_spec": "o/r:B.md", "model_id": "m",
                                 "mcp_servers": {"gh": {"url": "http://x"},
                                                 "linear": {"warp_id": "linear"}}}
            })
        );
        assert_eq!(
            changed,
            [
                "name",
                "prompt",
                "environment removed",
                "skill",
                "host",
                "model",
                "MCP servers",
                "paused"
            ]
        );
        // Removing the last MCP server and the skill; the prompt remains.
        let cur = item(json!({"agent_config": {"skill_spec": "o/r:A.md",
                                               "mcp_servers": {"gh": {}}}}));
        let (body, _) = update(
            &cur,
            &["--remove-mcp", "gh", "--remove-skill", "--unpaused"],
        )
        .unwrap();
        assert_eq!(body["agent_config"], json!({}));
        assert_eq!(body["enabled"], true);
        // A schedule without agent_config gets none unless a flag adds one.
        let (body, _) = update(&item(json!({})), &["--name", "n"]).unwrap();
        assert!(body.get("agent_config").is_none(), "{body}");
        let (body, _) = update(&item(json!({})), &["--environment", "e"]).unwrap();
        assert_eq!(body["agent_config"], json!({"environment_id": "e"}));
    }

    #[test]
    fn conflicting_update_flags_are_usage_errors() {
        for args in [
            &["--environment", "e", "--remove-environment"][..],
            &["--skill", "s", "--remove-skill"],
            &["--host", "h", "--remove-host"],
            &["--paused", "--unpaused"],
        ] {
            let e = update_args(args).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{args:?}"
            );
            assert_eq!(e.exit_code(), 2);
        }
        let a = update_args(&["--mcp", "gh", "--remove-mcp", "gh"]).unwrap();
        assert!(UpdatePlan::new(&a).unwrap_err().contains("keep one"));
        let a = update_args(&[]).unwrap();
        assert!(
            UpdatePlan::new(&a)
                .unwrap_err()
                .contains("nothing to change")
        );
    }

    #[test]
    fn update_refuses_what_cannot_be_done() {
        let cur = item(json!({"agent_config": {"mcp_servers": {"gh": {}}}}));
        let e = update(&cur, &["--remove-mcp", "nope"]).unwrap_err();
        assert!(
            e.contains("no MCP server named \"nope\" (it has: gh)"),
            "{e}"
        );
        let e = update(&item(json!({})), &["--remove-mcp", "nope"]).unwrap_err();
        assert!(e.contains("(it has: none)"), "{e}");
        // No prompt, and the skill goes: nothing left to run.
        let cur = item(json!({"prompt": "", "agent_config": {"skill_spec": "o/r:A.md"}}));
        let e = update(&cur, &["--remove-skill"]).unwrap_err();
        assert!(e.contains("nothing to run"), "{e}");
        let e = update(&item(json!({})), &["--prompt", ""]).unwrap_err();
        assert!(e.contains("nothing to run"), "{e}");
    }

    #[test]
    fn render_list_shows_the_documented_columns() {
        let rows = [
            item(json!({"history": {"last_ran": "2025-01-02T09:00:01.5Z",
                                    "next_run": "2025-01-03T09:00:00Z"},
                        "scope": {"type": "Team", "uid": "t1"}})),
            item(json!({"id": "s2", "name": "paused one", "enabled": false})),
        ];
        let t = render_list(&Style::plain(200), &rows);
        let lines: Vec<&str> = t.lines().collect();
        fn words(l: &str) -> Vec<&str> {
            l.split("  ")
                .filter(|w| !w.is_empty())
                .map(str::trim)
                .collect()
        }
        assert_eq!(
            words(lines[0]),
            [
                "ID", "NAME", "SCHEDULE", "PAUSED", "LAST RAN", "NEXT RUN", "SCOPE"
            ]
        );
        assert_eq!(
            words(lines[1]),
            [
                "s1",
                "nightly",
                "0 9 * * *",
                "no",
                "2025-01-02 09:00 UTC",
                "2025-01-03 09:00 UTC",
                "Team"
            ]
        );
        assert_eq!(
            words(lines[2]),
            ["s2", "paused one", "0 9 * * *", "yes", "never", "-", "-"]
        );
    }

    #[test]
    fn render_schedule_shows_config_and_prompt() {
        let s = item(json!({
            "prompt": "line one\nline two",
            "agent_config": {"environment_id": "env1", "worker_host": "w1", "skills": ["o/r:A.md"],
                             "harness": {"type": "claude", "model_id": "opus"},
                             "mcp_servers": {"gh": {}, "linear": {}}},
            "environment": {"name": "Rust"},
            "last_spawn_error": "no such environment",
            "scope": {"type": "Team", "uid": "t1"}
        }));
        let t = render_schedule(&Style::plain(100), &s);
        for want in [
            "Schedule     s1\n",
            "Cron         0 9 * * * (UTC)\n",
            "Paused       no\n",
            "Next run     -\n",
            "Last ran     never\n",
            "Last error   no such environment\n",
            "Worker       w1\n",
            "Environment  env1 (Rust)\n",
            "Skill        o/r:A.md\n",
            "Harness      claude\n",
            "Model        opus\n",
            "MCP servers  gh, linear\n",
            "Scope        Team t1\n",
            "Created      2025-01-02 03:04:05 UTC\n",
            "Prompt\n  line one\n  line two\n",
        ] {
            assert!(t.contains(want), "{want:?} missing in:\n{t}");
        }
        let t = render_schedule(&Style::plain(100), &item(json!({})));
        assert!(t.contains("Environment  none (bare sandbox)\n"), "{t}");
        assert!(!t.contains("Skill"), "{t}");
    }
}
