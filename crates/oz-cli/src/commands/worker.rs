//! `oz worker list`.

use std::process::ExitCode;

use serde_json::Value;

use super::{api_error, exit};
use crate::client::Client;
use crate::output::{self, Column, Format, Style};

pub async fn list(client: &Client, format: Format) -> ExitCode {
    let workers = match client.list_workers().await {
        Ok(w) => w,
        Err(e) => return api_error(&e),
    };
    if format == Format::Json {
        output::print_json(&serde_json::json!({ "workers": workers }));
        return ExitCode::from(exit::OK);
    }
    let style = Style::detect();
    if workers.is_empty() {
        crate::say!("No workers are connected.");
        return ExitCode::from(exit::OK);
    }
    crate::say_raw!("{}", render(&style, &workers));
    ExitCode::from(exit::OK)
}

pub fn render(style: &Style, workers: &[Value]) -> String {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let slots = match w.get("max_concurrent_tasks").and_then(Value::as_u64) {
                Some(0) => "unlimited".to_owned(),
                Some(n) => n.to_string(),
                None => "?".to_owned(),
            };
            let running = w
                .get("running_runs")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let state = if w.get("draining").and_then(Value::as_bool) == Some(true) {
                "draining"
            } else if w.get("at_capacity").and_then(Value::as_bool) == Some(true) {
                "full"
            } else {
                "ready"
            };
            vec![
                s(w, "worker_id"),
                s(w, "version"),
                s(w, "backend"),
                slots,
                running.to_string(),
                state.to_owned(),
                output::ago(&s(w, "connected_at")),
                s(w, "remote_addr"),
            ]
        })
        .collect();
    let cols = [
        Column {
            header: "WORKER ID",
            flexible: true,
        },
        Column {
            header: "VERSION",
            flexible: false,
        },
        Column {
            header: "BACKEND",
            flexible: false,
        },
        Column {
            header: "SLOTS",
            flexible: false,
        },
        Column {
            header: "RUNNING",
            flexible: false,
        },
        Column {
            header: "STATE",
            flexible: false,
        },
        Column {
            header: "CONNECTED",
            flexible: false,
        },
        Column {
            header: "ADDRESS",
            flexible: true,
        },
    ];
    output::table(style, &cols, &rows, &|_, c| c.to_owned())
}
