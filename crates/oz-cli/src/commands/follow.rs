//! Follow a run until it ends, printing each state change.

use std::process::ExitCode;
use std::time::Duration;

use oz_protocol::api::{RunItem, RunState};

use super::exit;
use crate::client::Client;
use crate::output::Style;

const POLL: Duration = Duration::from_millis(500);

/// How following ended.
pub enum Followed {
    Ended(Box<RunItem>),
    Interrupted,
}

/// Print state changes until the run ends or Ctrl-C. Transient API errors
/// are retried; the run is never touched.
/// `to_stderr` keeps stdout clean when it carries JSON.
pub async fn follow(
    client: &Client,
    run_id: &str,
    style: &Style,
    to_stderr: bool,
) -> Result<Followed, crate::client::ClientError> {
    let mut last: Option<(RunState, Option<String>)> = None;
    let mut failures = 0u32;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let run = match client.get_run(run_id).await {
            Ok(r) => {
                failures = 0;
                r
            }
            Err(e) if e.status().is_none() && failures < 10 => {
                failures += 1;
                eprintln!(
                    "{}",
                    style.dim(&format!("(cannot reach the server: {e}; retrying)"))
                );
                tokio::time::sleep(POLL * 4).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let msg = run.status_message.as_ref().map(|s| s.message.clone());
        let now = (run.state, msg.clone());
        if last.as_ref() != Some(&now) {
            let time = chrono::Local::now().format("%H:%M:%S");
            let detail = msg.map(|m| format!("  {m}")).unwrap_or_default();
            let state = format!("{:<10}", run.state.as_str());
            let state = state.replacen(run.state.as_str(), &style.state(run.state), 1);
            let line = format!("{}  {state}{detail}", style.dim(&time.to_string()));
            if to_stderr {
                eprintln!("{}", line.trim_end());
            } else {
                crate::say!("{}", line.trim_end());
            }
            last = Some(now);
        }
        if run.state.is_terminal() {
            return Ok(Followed::Ended(Box::new(run)));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut ctrl_c => return Ok(Followed::Interrupted),
        }
    }
}

/// Follow and turn the outcome into the exit status.
pub async fn follow_to_exit(client: &Client, run_id: &str, to_stderr: bool) -> ExitCode {
    let style = Style::detect();
    match follow(client, run_id, &style, to_stderr).await {
        Ok(Followed::Ended(run)) if run.state == RunState::Succeeded => ExitCode::from(exit::OK),
        Ok(Followed::Ended(run)) => {
            let why = run
                .status_message
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_else(|| "no reason given".into());
            eprintln!("error: run {run_id} ended {}: {why}", run.state);
            ExitCode::from(exit::RUN_FAILED)
        }
        Ok(Followed::Interrupted) => {
            eprintln!("Stopped following; the run goes on. See it with: oz run get {run_id}");
            ExitCode::from(exit::INTERRUPTED)
        }
        Err(e) => super::api_error(&e),
    }
}
