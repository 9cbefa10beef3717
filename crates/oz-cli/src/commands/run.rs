//! `oz run list | get | cancel`.

use std::process::ExitCode;
use std::time::Duration;

use oz_protocol::api::{RunItem, RunState};
use serde_json::Value;

use super::{api_error, exit};
use crate::client::Client;
use crate::output::{self, Column, Format, Style};

pub struct ListOptions {
    pub limit: u32,
    pub states: Vec<RunState>,
    pub name: Option<String>,
    pub format: Format,
}

pub async fn list(client: &Client, opts: ListOptions) -> ExitCode {
    let mut query = vec![("limit".to_owned(), opts.limit.to_string())];
    for s in &opts.states {
        query.push(("state".to_owned(), s.as_str().to_owned()));
    }
    if let Some(n) = &opts.name {
        query.push(("name".to_owned(), n.clone()));
    }
    let page = match client.list_runs(&query).await {
        Ok(p) => p,
        Err(e) => return api_error(&e),
    };
    match opts.format {
        Format::Json => output::print_json(&page),
        Format::Table => {
            if page.runs.is_empty() {
                crate::say!("No runs.");
            } else {
                crate::say_raw!("{}", render_list(&Style::detect(), &page.runs));
                if page.page_info.has_next_page {
                    crate::say!(
                        "{}",
                        Style::detect().dim("(more runs exist: raise --limit)")
                    );
                }
            }
        }
    }
    ExitCode::from(exit::OK)
}

fn worker_host(run: &RunItem) -> String {
    run.agent_config
        .as_ref()
        .and_then(|c| c.get("worker_host"))
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_owned()
}

pub fn render_list(style: &Style, runs: &[RunItem]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.run_id.clone(),
                r.state.as_str().to_owned(),
                worker_host(r),
                output::ago(&r.created_at),
                r.title.clone(),
            ]
        })
        .collect();
    let cols = [
        Column {
            header: "RUN ID",
            flexible: false,
        },
        Column {
            header: "STATE",
            flexible: false,
        },
        Column {
            header: "WORKER",
            flexible: false,
        },
        Column {
            header: "CREATED",
            flexible: false,
        },
        Column {
            header: "TITLE",
            flexible: true,
        },
    ];
    output::table(style, &cols, &rows, &|i, cell| {
        if i == 1 {
            RunState::parse(cell).map_or_else(|| cell.to_owned(), |s| style.state(s))
        } else {
            cell.to_owned()
        }
    })
}

pub async fn get(client: &Client, run_id: &str, format: Format) -> ExitCode {
    let run = match client.get_run(run_id).await {
        Ok(r) => r,
        Err(e) => return api_error(&e),
    };
    match format {
        Format::Json => output::print_json(&run),
        Format::Table => crate::say_raw!("{}", render_run(&Style::detect(), &run)),
    }
    ExitCode::from(exit::OK)
}

pub fn render_run(style: &Style, run: &RunItem) -> String {
    let mut lines: Vec<(String, String)> = vec![
        ("Run".into(), run.run_id.clone()),
        ("State".into(), style.state(run.state)),
        ("Title".into(), run.title.clone()),
        ("Worker".into(), worker_host(run)),
        ("Created".into(), run.created_at.clone()),
    ];
    if let Some(t) = &run.started_at {
        lines.push(("Started".into(), t.clone()));
    }
    lines.push(("Updated".into(), run.updated_at.clone()));
    if let Some(t) = &run.run_time {
        lines.push(("Run time".into(), t.clone()));
    }
    if let Some(s) = &run.status_message {
        let code = s
            .error_code
            .as_deref()
            .map(|c| format!(" [{c}]"))
            .unwrap_or_default();
        lines.push(("Status".into(), format!("{}{code}", s.message)));
    }
    // The server keeps harness types the official API does not name under
    // `runner_harness`.
    let harness_of = |pointer: &str| {
        run.agent_config
            .as_ref()
            .and_then(|c| c.pointer(pointer))
            .and_then(Value::as_str)
    };
    if let Some(harness) = harness_of("/harness/type").or(harness_of("/runner_harness/type")) {
        lines.push(("Harness".into(), harness.to_owned()));
    }
    for a in run.artifacts.iter().flatten() {
        let kind = a
            .get("artifact_type")
            .and_then(Value::as_str)
            .unwrap_or("ARTIFACT");
        let url = a.pointer("/data/url").and_then(Value::as_str).unwrap_or("");
        lines.push(("Artifact".into(), format!("{kind} {url}").trim().to_owned()));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{}  {v}\n", style.bold(&format!("{k:<width$}"))));
    }
    out.push_str(&format!("{}\n", style.bold("Prompt")));
    for l in run.prompt.lines() {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

pub async fn cancel(client: &Client, run_id: &str) -> ExitCode {
    // 409 means the run is being handed to a worker right now: retry a few
    // times, as the official SDK does.
    let mut delay = Duration::from_millis(300);
    let mut attempt = 0;
    loop {
        match client.cancel_run(run_id).await {
            Ok(_) => break,
            Err(e) if e.status() == Some(409) && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return api_error(&e),
        }
    }
    match client.get_run(run_id).await {
        Ok(run) if run.state == RunState::Cancelled => crate::say!("Run {run_id} cancelled."),
        Ok(run) => crate::say!(
            "Cancellation sent; run {run_id} is {} until its worker stops it (then CANCELLED).",
            run.state
        ),
        Err(_) => crate::say!("Cancellation requested for run {run_id}."),
    }
    ExitCode::from(exit::OK)
}
