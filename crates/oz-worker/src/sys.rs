//! Process containment: every hook and agent runs in its own process group,
//! and carries a per-task marker in its environment so that descendants that
//! left the group (`setsid`, `setpgid`) can still be found in `/proc`.
//!
//! Stopping a tree means SIGTERM to the group and to every marked process,
//! a grace period, then SIGKILL until nothing is left.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// Name of the environment variable that marks every process of a task.
pub const MARKER_VAR: &str = "OZ_RUN_MARKER";

const POLL: Duration = Duration::from_millis(50);
/// How long SIGKILL rounds go on before we give up on stragglers
/// (processes in uninterruptible sleep can take a moment to die).
const KILL_ROUNDS_LIMIT: Duration = Duration::from_secs(5);

/// Why a supervised process was stopped before it exited by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its time limit ran out.
    Timeout,
    /// The task was cancelled (user request or worker shutdown).
    Cancelled,
    /// The worker is stopping at once: SIGKILL with no grace period.
    Killed,
}

/// The signals that can stop a task's processes.
#[derive(Debug, Clone, Default)]
pub struct StopTokens {
    /// Graceful stop: SIGTERM, grace period, SIGKILL.
    pub stop: CancellationToken,
    /// Immediate stop: SIGKILL at once.
    pub kill: CancellationToken,
}

/// How a supervised process ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub status: ExitStatus,
    pub stopped: Option<Stopped>,
    /// Process group id the process ran in (its own pid).
    pub pgid: i32,
}

/// Put the command in a new process group of its own and make sure it is
/// killed if the handle is dropped.
pub fn prepare(cmd: &mut Command) {
    cmd.process_group(0).kill_on_drop(true);
}

/// Spawn `cmd` in its own process group and wait for it, stopping the whole
/// tree when `timeout` expires or a stop token fires. `on_spawn` gets the
/// child right after the spawn (to take its output pipes).
pub async fn run_supervised(
    mut cmd: Command,
    marker: &str,
    timeout: Option<Duration>,
    tokens: &StopTokens,
    grace: Duration,
    on_spawn: impl FnOnce(&mut Child),
) -> io::Result<RunOutcome> {
    prepare(&mut cmd);
    let mut child = cmd.spawn()?;
    on_spawn(&mut child);
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| io::Error::other("spawned process has no pid"))?;
    let deadline = async {
        match timeout {
            Some(t) => sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let stopped = tokio::select! {
        status = child.wait() => return Ok(RunOutcome { status: status?, stopped: None, pgid }),
        _ = deadline => Stopped::Timeout,
        _ = tokens.stop.cancelled() => Stopped::Cancelled,
        _ = tokens.kill.cancelled() => Stopped::Killed,
    };
    let grace = if stopped == Stopped::Killed {
        Duration::ZERO
    } else {
        grace
    };
    terminate(Some(&mut child), &[pgid], marker, grace, &tokens.kill).await;
    let status = child.wait().await?;
    Ok(RunOutcome {
        status,
        stopped: Some(stopped),
        pgid,
    })
}

/// Stop every process of a task: the given groups and everything carrying
/// the marker. SIGTERM first, then SIGKILL after `grace` (or as soon as
/// `kill` fires). Returns how many processes had to be SIGKILLed.
pub async fn terminate(
    mut child: Option<&mut Child>,
    pgids: &[i32],
    marker: &str,
    grace: Duration,
    kill_now: &CancellationToken,
) -> usize {
    let mut leader_done = false;
    let alive = |child: &mut Option<&mut Child>, leader_done: &mut bool| {
        if let Some(c) = child.as_deref_mut()
            && !*leader_done
        {
            // try_wait reaps the direct child as soon as it exits, so it
            // never lingers as a zombie member of its group.
            *leader_done = matches!(c.try_wait(), Ok(Some(_)) | Err(_));
        }
        let rest = live_processes(pgids, marker);
        (child.is_none() || *leader_done, rest)
    };

    let (_, procs) = alive(&mut child, &mut leader_done);
    if !grace.is_zero() {
        signal_tree(pgids, &procs, Signal::SIGTERM);
        let until = Instant::now() + grace;
        loop {
            let (leader_gone, procs) = alive(&mut child, &mut leader_done);
            if leader_gone && procs.is_empty() {
                return 0;
            }
            if Instant::now() >= until || kill_now.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = sleep(POLL) => {}
                _ = kill_now.cancelled() => {}
            }
        }
    }

    let mut killed = 0usize;
    let until = Instant::now() + KILL_ROUNDS_LIMIT;
    loop {
        let (leader_gone, procs) = alive(&mut child, &mut leader_done);
        if leader_gone && procs.is_empty() {
            break;
        }
        killed = killed.max(procs.len());
        signal_tree(pgids, &procs, Signal::SIGKILL);
        if let Some(c) = child.as_deref_mut()
            && !leader_done
        {
            let _ = c.start_kill();
        }
        if Instant::now() >= until {
            tracing::warn!(
                remaining = procs.len(),
                "processes survived SIGKILL; giving up on them"
            );
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    killed
}

fn signal_tree(pgids: &[i32], procs: &[i32], sig: Signal) {
    for &pgid in pgids {
        match killpg(Pid::from_raw(pgid), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::debug!(pgid, error = %e, "killpg failed"),
        }
    }
    for &pid in procs {
        match kill(Pid::from_raw(pid), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::debug!(pid, error = %e, "kill failed"),
        }
    }
}

/// Live (non-zombie) processes that belong to one of `pgids` or carry
/// `OZ_RUN_MARKER=<marker>` in their environment. The worker itself is
/// never included.
pub fn live_processes(pgids: &[i32], marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = format!("{MARKER_VAR}={marker}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some((state, pgrp)) = read_stat(pid) else {
            continue;
        };
        if state == 'Z' || state == 'X' {
            continue;
        }
        if pgids.contains(&pgrp) || (!marker.is_empty() && environ_has(pid, needle.as_bytes())) {
            found.push(pid);
        }
    }
    found
}

/// State letter and process group from `/proc/<pid>/stat`.
fn read_stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or
    // parentheses, so parse from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

fn environ_has(pid: i32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|var| var == needle))
        .unwrap_or(false)
}

/// Is a process with this pid alive (not a zombie)?
pub fn pid_alive(pid: i32) -> bool {
    matches!(read_stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// Start time of a process in clock ticks since boot (field 22 of stat):
/// with the pid it identifies a process instance even across pid reuse.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // Fields after ')' start at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The exit code as the official worker reports it: the status of a normal
/// exit, or 128 + the signal number for a death by signal.
pub fn exit_code(status: &ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(0)
}

/// "exit status N" or "signal: terminated", the way Go words an exit error.
pub fn describe(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match Signal::try_from(sig) {
                Ok(Signal::SIGTERM) => "terminated".to_owned(),
                Ok(Signal::SIGKILL) => "killed".to_owned(),
                Ok(Signal::SIGINT) => "interrupt".to_owned(),
                Ok(Signal::SIGHUP) => "hangup".to_owned(),
                Ok(Signal::SIGSEGV) => "segmentation fault".to_owned(),
                Ok(Signal::SIGABRT) => "aborted".to_owned(),
                Ok(other) => other.as_str().to_owned(),
                Err(_) => format!("signal {sig}"),
            };
            format!("signal: {name}")
        }
        None => "exited".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_descriptions() {
        let exited = ExitStatus::from_raw(2 << 8);
        assert_eq!(exit_code(&exited), 2);
        assert_eq!(describe(&exited), "exit status 2");
        let termed = ExitStatus::from_raw(15);
        assert_eq!(exit_code(&termed), 143);
        assert_eq!(describe(&termed), "signal: terminated");
        let killed = ExitStatus::from_raw(9);
        assert_eq!(exit_code(&killed), 137);
        assert_eq!(describe(&killed), "signal: killed");
    }

    #[test]
    fn own_process_is_alive_and_has_a_start_time() {
        let me = std::process::id() as i32;
        assert!(pid_alive(me));
        assert!(process_start_time(me).is_some());
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group_including_setsid_escapees() {
        let marker = format!("test-{}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pids");
        // A shell that starts a plain background child and one that escapes
        // into a new session, records their pids, then waits.
        let script = format!(
            "sleep 300 & echo $! > {p}; setsid sleep 301 & echo $! >> {p}; wait",
            p = pidfile.display()
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).env(MARKER_VAR, &marker);
        let tokens = StopTokens::default();
        let out = run_supervised(
            cmd,
            &marker,
            Some(Duration::from_millis(300)),
            &tokens,
            Duration::from_secs(2),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(out.stopped, Some(Stopped::Timeout));
        let pids: Vec<i32> = std::fs::read_to_string(&pidfile)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2);
        for pid in pids {
            assert!(!pid_alive(pid), "pid {pid} survived");
        }
        assert!(live_processes(&[out.pgid], &marker).is_empty());
    }

    #[tokio::test]
    async fn sigterm_is_sent_before_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("got-term");
        let script = format!(
            "trap 'echo term > {}; exit 7' TERM; sleep 30 & wait",
            flag.display()
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        let tokens = StopTokens::default();
        let stop = tokens.stop.clone();
        tokio::spawn(async move {
            sleep(Duration::from_millis(200)).await;
            stop.cancel();
        });
        let out = run_supervised(
            cmd,
            "unused-marker-x",
            None,
            &tokens,
            Duration::from_secs(5),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(out.stopped, Some(Stopped::Cancelled));
        assert_eq!(out.status.code(), Some(7));
        assert!(flag.exists());
    }
}
