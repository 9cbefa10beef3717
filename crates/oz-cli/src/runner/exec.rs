//! Running a harness: its own process group, stdin from /dev/null, stdout
//! and stderr relayed byte for byte (claude's stream-json rendered), lines
//! scanned for pull-request links, SIGTERM/SIGINT forwarded to its group.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc};

use super::env::Env;
use super::harness::claude::StreamRenderer;
use super::harness::{Invocation, OutputMode};
use super::scan::{Lines, SCAN_LINE_MAX, find_pr_urls};

/// After the harness exits, how long its output may still take to drain
/// (a background process it left behind can hold the pipes open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where output goes: shared, each write flushed at once. Write errors
/// (a closed pipe) are ignored so that the harness keeps running.
#[derive(Clone)]
pub struct Sink(Arc<Mutex<Box<dyn AsyncWrite + Send + Unpin>>>);

impl Sink {
    pub fn new(w: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        Sink(Arc::new(Mutex::new(Box::new(w))))
    }

    pub async fn write(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut w = self.0.lock().await;
        if w.write_all(bytes).await.is_ok() {
            let _ = w.flush().await;
        }
    }

    /// One message line, prefixed with `oz agent run: `.
    pub async fn say(&self, msg: &str) {
        self.write(format!("oz agent run: {msg}\n").as_bytes())
            .await;
    }
}

/// How the harness ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The runner's exit code.
    pub code: u8,
    /// Why the run failed, when it did.
    pub failure: Option<String>,
    /// The runner passed a SIGTERM/SIGINT on to the harness.
    pub interrupted: bool,
}

/// Where to run it and where its output goes.
pub struct Target<'a> {
    pub program: &'a Path,
    pub cwd: &'a Path,
    pub env: &'a Env,
    pub stdout: &'a Sink,
    pub stderr: &'a Sink,
    pub forward_signals: bool,
    /// Receives every pull-request link seen (duplicates included).
    pub prs: Option<mpsc::UnboundedSender<String>>,
}

pub async fn execute(inv: &Invocation, t: Target<'_>) -> Outcome {
    let mut cmd = Command::new(t.program);
    cmd.args(&inv.args)
        .current_dir(t.cwd)
        .env_clear()
        .envs(t.env.iter())
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Outcome {
                code,
                failure: Some(format!(
                    "cannot start {} ({}): {e}",
                    inv.label,
                    t.program.display()
                )),
                interrupted: false,
            };
        }
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());

    let renderer = (inv.output == OutputMode::ClaudeStreamJson).then(StreamRenderer::default);
    let mut out_task = child
        .stdout
        .take()
        .map(|r| tokio::spawn(pump(r, t.stdout.clone(), renderer, t.prs.clone())));
    let mut err_task = child
        .stderr
        .take()
        .map(|r| tokio::spawn(pump(r, t.stderr.clone(), None, t.prs.clone())));
    drop(t.prs);

    let (status, interrupted) = if t.forward_signals {
        wait_forwarding(&mut child, pgid).await
    } else {
        (child.wait().await, false)
    };

    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut claude_error = None;
        if let Some(task) = out_task.as_mut() {
            claude_error = task.await.ok().flatten();
        }
        if let Some(task) = err_task.as_mut() {
            let _ = task.await;
        }
        claude_error
    })
    .await;
    let claude_error = match drained {
        Ok(e) => e,
        Err(_) => {
            // Stop relaying (which also lets the pull-request reports end).
            for task in [out_task, err_task].into_iter().flatten() {
                task.abort();
            }
            t.stderr
                .say("the harness exited but something it started still holds its output open; not waiting for it")
                .await;
            None
        }
    };

    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                code: 1,
                failure: Some(format!("lost track of {}: {e}", inv.label)),
                interrupted,
            };
        }
    };
    let (code, mut failure) = describe(status, &inv.label);
    let code = match (code, claude_error) {
        (0, Some(e)) => {
            failure = Some(format!("{} reported an error: {}", inv.label, e));
            1
        }
        (code, _) => code,
    };
    Outcome {
        code,
        failure,
        interrupted,
    }
}

/// Exit code and failure text of an exit status: the code itself, or
/// 128+N for death by signal N.
pub fn describe(status: ExitStatus, label: &str) -> (u8, Option<String>) {
    if let Some(code) = status.code() {
        let byte = u8::try_from(code & 0xff).unwrap_or(1);
        let failure = (code != 0).then(|| format!("{label} exited with status {code}"));
        return (byte, failure);
    }
    let sig = status.signal().unwrap_or(0);
    let name =
        Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned());
    let code = u8::try_from((128 + sig) & 0xff).unwrap_or(1);
    (code, Some(format!("{label} was killed by {name}")))
}

/// Wait for the child, passing SIGTERM and SIGINT on to its process group.
/// A second signal kills the group.
async fn wait_forwarding(
    child: &mut Child,
    pgid: Option<i32>,
) -> (std::io::Result<ExitStatus>, bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return (child.wait().await, false);
    };
    let mut received = 0u32;
    loop {
        let sig = tokio::select! {
            status = child.wait() => return (status, received > 0),
            _ = term.recv() => Signal::SIGTERM,
            _ = int.recv() => Signal::SIGINT,
        };
        received += 1;
        let sig = if received > 1 { Signal::SIGKILL } else { sig };
        if let Some(pgid) = pgid {
            match killpg(Pid::from_raw(pgid), sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::debug!(pgid, error = %e, "cannot signal the harness"),
            }
        }
    }
}

/// Copy one output stream to its sink (rendering claude's stream-json when
/// a renderer is given) and scan what is shown for pull-request links.
/// Returns the error claude reported, if any.
async fn pump<R: AsyncRead + Unpin>(
    mut src: R,
    sink: Sink,
    mut renderer: Option<StreamRenderer>,
    prs: Option<mpsc::UnboundedSender<String>>,
) -> Option<String> {
    let mut lines = Lines::new(SCAN_LINE_MAX);
    let scan = |bytes: &[u8], lines: &mut Lines| {
        if let Some(tx) = &prs {
            lines.feed(bytes, |line| {
                for url in find_pr_urls(&String::from_utf8_lossy(line)) {
                    let _ = tx.send(url);
                }
            });
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        match renderer.as_mut() {
            Some(r) => {
                let shown = r.feed(chunk);
                sink.write(&shown).await;
                scan(&shown, &mut lines);
            }
            None => {
                sink.write(chunk).await;
                scan(chunk, &mut lines);
            }
        }
    }
    if let Some(r) = renderer.as_mut() {
        let shown = r.finish();
        sink.write(&shown).await;
        scan(&shown, &mut lines);
    }
    if let Some(tx) = &prs {
        lines.finish(|line| {
            for url in find_pr_urls(&String::from_utf8_lossy(line)) {
                let _ = tx.send(url);
            }
        });
    }
    renderer.and_then(|r| r.error().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        assert_eq!(describe(ExitStatus::from_raw(0), "x"), (0, None));
        assert_eq!(
            describe(ExitStatus::from_raw(7 << 8), "x"),
            (7, Some("x exited with status 7".into()))
        );
        assert_eq!(
            describe(ExitStatus::from_raw(15), "x"),
            (143, Some("x was killed by SIGTERM".into()))
        );
        assert_eq!(
            describe(ExitStatus::from_raw(9), "x"),
            (137, Some("x was killed by SIGKILL".into()))
        );
    }
}
