//! Follow a run until it ends, printing each state change and, while the
//! server streams it, the run's live output.

use std::process::ExitCode;
use std::time::Duration;

use oz_protocol::api::{RunItem, RunState};

use super::exit;
use crate::client::Client;
use crate::output::Style;

const POLL: Duration = Duration::from_millis(500);
/// After the run ended, how long to wait for the rest of its output.
const LOG_TAIL_WAIT: Duration = Duration::from_secs(15);

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

    // The output, streamed beside the state polling. A server without the
    // logs endpoints just means no output is shown.
    let stop_logs = tokio_util::sync::CancellationToken::new();
    // True while the last output line printed had no newline yet.
    let open_line = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let logs = {
        let (client, run_id, stop) = (client.clone(), run_id.to_owned(), stop_logs.clone());
        let open_line = open_line.clone();
        tokio::spawn(async move {
            let mut print = |l: &oz_protocol::logs::LogLine| {
                open_line.store(
                    l.gap_bytes.is_none() && !l.newline && !l.bytes().is_empty(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                if to_stderr {
                    use std::io::Write;
                    let _ = std::io::stderr().write_all(&l.raw());
                } else {
                    super::logs::print_line(l);
                }
            };
            let filter = super::logs::LogFilter::default();
            let _ = super::logs::stream(
                &client,
                &run_id,
                &filter,
                &mut print,
                stop.cancelled_owned(),
            )
            .await;
        })
    };
    let mut logs = Some(logs);

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
        if run.state.is_terminal()
            && let Some(task) = logs.take()
        {
            // Let the last lines arrive before the final state is printed.
            if tokio::time::timeout(LOG_TAIL_WAIT, task).await.is_err() {
                stop_logs.cancel();
            }
            if open_line.load(std::sync::atomic::Ordering::Relaxed) {
                if to_stderr {
                    eprintln!();
                } else {
                    crate::say!();
                }
            }
        }
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
            _ = &mut ctrl_c => {
                stop_logs.cancel();
                return Ok(Followed::Interrupted);
            }
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
