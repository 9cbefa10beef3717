//! Process containment: every hook and agent runs in its own process group,
//! and carries a per-task marker in its environment so that descendants that
//! left the group (`setsid`, `setpgid`) can still be found.
//!
//! Stopping a tree means SIGTERM to the group and to every marked process,
//! a grace period, then SIGKILL until nothing is left.
//!
//! Finding what is left: [`Scan::All`] reads `/proc/<pid>/stat` (and, for
//! processes not older than the task, `environ`) of every process on the
//! machine. [`Scan::Children`] is the cheap way for a task that ended by
//! itself, and needs [`become_subreaper`]: whatever a task leaves running is
//! then re-parented to the worker, so the roots of its leftovers are all
//! among the worker's own children.
//!
//! Reaping: as a subreaper the worker also inherits zombies. Children spawned
//! here are registered until their exit status was collected; any other
//! child is an orphan of some task and is reaped with `waitpid(pid)` on that
//! pid (never `waitpid(-1)`, which would steal tokio's statuses).

use std::collections::BTreeSet;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
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

/// Set once this process is a child subreaper and can list its children.
static SUBREAPER: AtomicBool = AtomicBool::new(false);
/// Orphans are found in the main thread's children list alone.
static MAIN_THREAD_ADOPTS: AtomicBool = AtomicBool::new(false);
/// Pids of the children spawned here whose exit status tokio has not yet
/// collected. Spawns and reaps of orphans both hold this lock, so a child
/// of ours that is not in the set is an orphan.
static SPAWNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn spawned() -> MutexGuard<'static, BTreeSet<i32>> {
    SPAWNED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Make this process a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that
/// what a task leaves running is re-parented here rather than to init, and
/// can be found and reaped cheaply. Only for a process that starts children
/// through this module alone (the `oz-agent-worker` binary): every other
/// child that exits is reaped here. Without it, every search reads all of
/// `/proc`.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    // The children lists need CONFIG_PROC_CHILDREN; without them stay with
    // full scans (orphans are then only reaped, never searched for here).
    let me = std::process::id();
    std::fs::read(format!("/proc/{me}/task/{me}/children"))?;
    MAIN_THREAD_ADOPTS.store(main_thread_adopts(), Ordering::SeqCst);
    SUBREAPER.store(true, Ordering::SeqCst);
    Ok(())
}

/// Since Linux 3.19 the kernel gives an orphan to the subreaper's first
/// live thread, the main thread; before, to the thread that had spawned its
/// parent. Unknown release strings count as old (every thread is read).
fn main_thread_adopts() -> bool {
    release_adopts_in_main_thread(
        &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
    )
}

fn release_adopts_in_main_thread(release: &str) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (3, 19),
        _ => false,
    }
}

fn subreaper() -> bool {
    SUBREAPER.load(Ordering::SeqCst)
}

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

/// How [`terminate`] looks for what is left of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Every process on the machine: for cancels, timeouts and the startup
    /// sweep (processes of an earlier worker are not our children).
    All,
    /// The task's process groups and the worker's own children (the roots
    /// of everything a task left behind, as a subreaper): for a task that
    /// ended by itself. Falls back to [`Scan::All`] when the worker is not a
    /// subreaper.
    Children,
}

/// The signals that can stop a task's processes.
#[derive(Debug, Clone, Default)]
pub struct StopTokens {
    /// Graceful stop: SIGTERM, grace period, SIGKILL.
    pub stop: CancellationToken,
    /// Immediate stop: SIGKILL at once.
    pub kill: CancellationToken,
}

/// How the processes of one task are recognised outside its process
/// groups: `OZ_RUN_MARKER=<value>` in their environment. A process that
/// started before the task's first process cannot be the task's, so its
/// environment is not read.
#[derive(Debug, Default, Clone)]
pub struct Marker {
    value: String,
    /// Clock ticks since boot just before the task's first process started:
    /// no process of the task is older.
    since: OnceLock<u64>,
}

impl Marker {
    pub fn new(value: impl Into<String>) -> Self {
        Marker {
            value: value.into(),
            since: OnceLock::new(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// A process is about to start for the task: the first call sets
    /// `since` to now, which no process started later is older than. The
    /// clock is read instead of the new process's start time, which would
    /// cost opening `/proc/<pid>/stat` for every task.
    fn starting(&self) {
        if self.since.get().is_none()
            && let Some(t) = boot_ticks_now()
        {
            let _ = self.since.set(t);
        }
    }

    /// Could a process that started at `start` belong to the task?
    fn may_own(&self, start: u64) -> bool {
        self.since.get().is_none_or(|since| start >= *since)
    }

    fn needle(&self) -> Option<Vec<u8>> {
        (!self.value.is_empty()).then(|| format!("{MARKER_VAR}={}", self.value).into_bytes())
    }
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

/// A spawned child's pid, registered until this is dropped: drop it only
/// after its exit status was collected (or its `Child` was dropped).
struct Registered(i32);

impl Drop for Registered {
    fn drop(&mut self) {
        spawned().remove(&self.0);
    }
}

/// A child and its registration; fields drop in order, the child first.
struct Spawned {
    child: Child,
    registered: Registered,
}

/// Spawn and register the child before any orphan reaping can see it.
fn spawn_registered(cmd: &mut Command) -> io::Result<Spawned> {
    let mut set = spawned();
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| io::Error::other("spawned process has no pid"))?;
    set.insert(pid);
    Ok(Spawned {
        child,
        registered: Registered(pid),
    })
}

/// Spawn `cmd` in its own process group and wait for it, stopping the whole
/// tree when `timeout` expires or a stop token fires. `on_spawn` gets the
/// child right after the spawn (to take its output pipes).
pub async fn run_supervised(
    mut cmd: Command,
    marker: &Marker,
    timeout: Option<Duration>,
    tokens: &StopTokens,
    grace: Duration,
    on_spawn: impl FnOnce(&mut Child),
) -> io::Result<RunOutcome> {
    prepare(&mut cmd);
    marker.starting();
    let mut spawned = spawn_registered(&mut cmd)?;
    let pgid = spawned.registered.0;
    let child = &mut spawned.child;
    on_spawn(&mut *child);
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
    terminate(
        Some(&mut *child),
        &[pgid],
        marker,
        Scan::All,
        grace,
        &tokens.kill,
    )
    .await;
    let status = child.wait().await?;
    Ok(RunOutcome {
        status,
        stopped: Some(stopped),
        pgid,
    })
}

/// What a search found still running.
#[derive(Debug, Default)]
struct Left {
    /// Processes to signal one by one.
    procs: Vec<i32>,
    /// Process groups that still have members ([`Scan::Children`] only;
    /// [`Scan::All`] lists the members in `procs`).
    groups: usize,
}

impl Left {
    fn is_empty(&self) -> bool {
        self.procs.is_empty() && self.groups == 0
    }

    fn count(&self) -> usize {
        self.procs.len() + self.groups
    }
}

/// [`search`], with a full scan of `/proc` (which can take milliseconds on
/// a busy host, and repeats every poll of a grace period) on the blocking
/// pool so that it never holds up the worker's runtime thread.
async fn search_async(pgids: &[i32], marker: &Marker, scan: Scan) -> Left {
    if scan == Scan::Children {
        return search(pgids, marker, scan);
    }
    let (pgids, marker) = (pgids.to_vec(), marker.clone());
    match tokio::task::spawn_blocking(move || search(&pgids, &marker, scan)).await {
        Ok(left) => left,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down: nothing more can be signalled.
        Err(_) => Left::default(),
    }
}

fn search(pgids: &[i32], marker: &Marker, scan: Scan) -> Left {
    match scan {
        Scan::All => {
            if subreaper() {
                let _ = orphans();
            }
            Left {
                procs: live_processes(pgids, marker),
                groups: 0,
            }
        }
        Scan::Children => {
            let needle = marker.needle();
            let procs = orphans()
                .into_iter()
                .filter(|(pid, st)| {
                    pgids.contains(&st.pgrp)
                        || (marker.may_own(st.start)
                            && needle.as_deref().is_some_and(|n| environ_has(*pid, n)))
                })
                .map(|(pid, _)| pid)
                .collect();
            // Members of a group whose parent is still alive are no
            // children of ours; the group itself says whether any are left.
            let groups = pgids
                .iter()
                .filter(|&&pg| killpg(Pid::from_raw(pg), None).is_ok())
                .count();
            Left { procs, groups }
        }
    }
}

/// Stop every process of a task: the given groups and everything carrying
/// the marker. SIGTERM first, then SIGKILL after `grace` (or as soon as
/// `kill` fires). Returns how many processes (with [`Scan::Children`]:
/// processes and groups) had to be SIGKILLed. When nothing is left it
/// returns after one search, without signalling anything.
pub async fn terminate(
    mut child: Option<&mut Child>,
    pgids: &[i32],
    marker: &Marker,
    scan: Scan,
    grace: Duration,
    kill_now: &CancellationToken,
) -> usize {
    let scan = if subreaper() { scan } else { Scan::All };
    let mut leader_done = false;
    async fn alive(
        child: &mut Option<&mut Child>,
        leader_done: &mut bool,
        pgids: &[i32],
        marker: &Marker,
        scan: Scan,
    ) -> (bool, Left) {
        if let Some(c) = child.as_deref_mut()
            && !*leader_done
        {
            // try_wait reaps the direct child as soon as it exits, so it
            // never lingers as a zombie member of its group.
            *leader_done = matches!(c.try_wait(), Ok(Some(_)) | Err(_));
        }
        let rest = search_async(pgids, marker, scan).await;
        (child.is_none() || *leader_done, rest)
    }

    let (leader_gone, left) = alive(&mut child, &mut leader_done, pgids, marker, scan).await;
    if leader_gone && left.is_empty() {
        return 0;
    }
    if !grace.is_zero() {
        signal_tree(pgids, &left.procs, Signal::SIGTERM);
        let until = Instant::now() + grace;
        loop {
            tokio::select! {
                _ = sleep(POLL) => {}
                _ = kill_now.cancelled() => {}
            }
            let (leader_gone, left) =
                alive(&mut child, &mut leader_done, pgids, marker, scan).await;
            if leader_gone && left.is_empty() {
                return 0;
            }
            if Instant::now() >= until || kill_now.is_cancelled() {
                break;
            }
        }
    }

    let mut killed = 0usize;
    let until = Instant::now() + KILL_ROUNDS_LIMIT;
    loop {
        let (leader_gone, left) = alive(&mut child, &mut leader_done, pgids, marker, scan).await;
        if leader_gone && left.is_empty() {
            break;
        }
        killed = killed.max(left.count());
        signal_tree(pgids, &left.procs, Signal::SIGKILL);
        if let Some(c) = child.as_deref_mut()
            && !leader_done
        {
            let _ = c.start_kill();
        }
        if Instant::now() >= until {
            tracing::warn!(
                remaining = left.count(),
                "processes survived SIGKILL; giving up on them"
            );
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    if subreaper() {
        // The last ones killed may have become zombies since the search.
        let _ = orphans();
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

/// The live children of this process that it did not spawn itself (as a
/// subreaper: the orphans of tasks), with their stat. Zombies among them are
/// reaped on the way.
///
/// Only the main thread's list is read (Linux 3.19 and later; see
/// [`main_thread_adopts`]): the kernel gives an orphan to the first live
/// thread of the subreaper, which is the main thread (alive for as long as
/// the process). The children of the other threads are the
/// processes spawned here, all registered and skipped anyway; reading their
/// lists too cost a directory read and a file read per thread at every task.
/// With one runtime thread the main thread also spawns every task process,
/// and tokio reaps those whenever they exit. A children list read in
/// several calls can skip an entry when a child listed before it is reaped
/// in between, so the list is read in one call ([`read_list`]).
fn orphans() -> Vec<(i32, Stat)> {
    let me = std::process::id() as i32;
    let set = spawned();
    let mut found = Vec::new();
    let lists: Vec<String> = if MAIN_THREAD_ADOPTS.load(Ordering::SeqCst) {
        read_list(&format!("/proc/{me}/task/{me}/children"))
            .into_iter()
            .collect()
    } else {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return found;
        };
        tasks
            .flatten()
            .filter_map(|t| read_list(&t.path().join("children").to_string_lossy()))
            .collect()
    };
    for pid in lists
        .iter()
        .flat_map(|l| l.split_whitespace())
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if set.contains(&pid) {
            continue;
        }
        // The pid may have been reaped and reused since the list was read:
        // only a child of ours counts.
        let Some(st) = read_stat(pid).filter(|st| st.ppid == me) else {
            continue;
        };
        if st.dead() {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => tracing::debug!(pid, ?status, "reaped an orphan of a task"),
                Err(e) => tracing::debug!(pid, error = %e, "cannot reap an orphan"),
            }
            continue;
        }
        found.push((pid, st));
    }
    found
}

/// Live (non-zombie) processes that belong to one of `pgids` or carry the
/// marker in their environment. The worker itself is never included.
pub fn live_processes(pgids: &[i32], marker: &Marker) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = marker.needle();
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
        let Some(st) = read_stat(pid) else {
            continue;
        };
        if st.dead() {
            continue;
        }
        if pgids.contains(&st.pgrp)
            || (marker.may_own(st.start) && needle.as_deref().is_some_and(|n| environ_has(pid, n)))
        {
            found.push(pid);
        }
    }
    found
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy)]
struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
    /// Start time in clock ticks since boot (field 22).
    start: u64,
}

impl Stat {
    fn dead(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// A `/proc` list in a single `read` (see [`orphans`]); a list too long for
/// the buffer (thousands of children) is read the ordinary way.
fn read_list(path: &str) -> Option<String> {
    use std::io::Read;
    const ONE_READ: usize = 16 * 1024;
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; ONE_READ];
    let n = f.read(&mut buf).ok()?;
    if n == ONE_READ {
        return std::fs::read_to_string(path).ok();
    }
    buf.truncate(n);
    String::from_utf8(buf).ok()
}

fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name is in parentheses and may itself contain spaces or
    // parentheses, so parse from the last ')'. Fields after it start at
    // field 3 (state).
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let start = fields.nth(22 - 6)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgrp,
        start,
    })
}

fn environ_has(pid: i32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|var| var == needle))
        .unwrap_or(false)
}

/// Is a process with this pid alive (not a zombie)?
pub fn pid_alive(pid: i32) -> bool {
    read_stat(pid).is_some_and(|st| !st.dead())
}

/// Start time of a process in clock ticks since boot (field 22 of stat):
/// with the pid it identifies a process instance even across pid reuse.
pub fn process_start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|st| st.start)
}

/// Now, in the unit and on the clock of [`process_start_time`]: clock ticks
/// of `CLOCK_BOOTTIME` (the kernel rounds a start time down the same way).
fn boot_ticks_now() -> Option<u64> {
    static HZ: OnceLock<Option<u64>> = OnceLock::new();
    let hz = (*HZ.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > 0)
    }))?;
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let ns =
        u128::try_from(now.tv_sec()).ok()? * 1_000_000_000 + u128::try_from(now.tv_nsec()).ok()?;
    u64::try_from(ns * u128::from(hz) / 1_000_000_000).ok()
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
    fn kernels_that_give_orphans_to_the_main_thread() {
        for (release, yes) in [
            ("6.18.44-fc-v857", true),
            ("3.19.0", true),
            ("4.2.0-27-generic", true),
            ("3.10.0-1160.el7.x86_64", false),
            ("2.6.32", false),
            ("", false),
            ("unknown", false),
        ] {
            assert_eq!(release_adopts_in_main_thread(release), yes, "{release}");
        }
    }

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
    fn stat_fields_are_read_after_the_command_name() {
        let text =
            "4242 (a) (b c) S 17 4240 17 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 987654 5 6 7";
        let st = parse_stat(text).unwrap();
        assert_eq!(
            (st.state, st.ppid, st.pgrp, st.start),
            ('S', 17, 4240, 987654)
        );
        assert!(!st.dead());
        assert!(parse_stat("4242 (x) Z 1 2").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive_and_has_a_start_time() {
        let me = std::process::id() as i32;
        assert!(pid_alive(me));
        assert!(process_start_time(me).is_some());
    }

    /// `/bin/sh -c script` carrying the task marker, as a hook would.
    fn marked_sh(marker: &Marker, script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).env(MARKER_VAR, marker.as_str());
        cmd
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group_including_setsid_escapees() {
        let marker = Marker::new(format!("test-{}", std::process::id()));
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pids");
        // A shell that starts a plain background child and one that escapes
        // into a new session, records their pids, then waits.
        let script = format!(
            "sleep 300 & echo $! > {p}; setsid sleep 301 & echo $! >> {p}; wait",
            p = pidfile.display()
        );
        let cmd = marked_sh(&marker, &script);
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

    #[test]
    fn a_marker_only_owns_processes_not_older_than_the_task() {
        let m = Marker::new("m");
        assert!(m.may_own(0), "no process yet: anything may be the task's");
        m.starting();
        let since = *m.since.get().unwrap();
        // This process started before; a child started after.
        let me = process_start_time(std::process::id() as i32).unwrap();
        assert!(me <= since, "{me} > {since}");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let started = process_start_time(child.id() as i32).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(started >= since, "{started} < {since}");
        assert!(m.may_own(started) && m.may_own(since));
        assert!(!m.may_own(since.saturating_sub(1)) || since == 0);
        assert_eq!(m.needle().unwrap(), b"OZ_RUN_MARKER=m");
        assert!(Marker::new("").needle().is_none());
    }

    /// As a subreaper, a daemon left by a task that ended by itself is
    /// found among our children, killed and reaped (no zombie is left).
    /// nextest runs each test in its own process, so the subreaper
    /// attribute stays with this test.
    #[tokio::test]
    async fn children_scan_kills_and_reaps_a_daemonised_grandchild() {
        become_subreaper().unwrap();
        let marker = Marker::new(format!("test-daemon-{}", std::process::id()));
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // Double fork into a new session: the intermediate shell exits, so
        // the sleep is re-parented to us.
        let script = format!(
            "(setsid sleep 303 & echo $! > {p}) ; exit 0",
            p = pidfile.display()
        );
        let cmd = marked_sh(&marker, &script);
        let tokens = StopTokens::default();
        let out = run_supervised(cmd, &marker, None, &tokens, Duration::from_secs(2), |_| {})
            .await
            .unwrap();
        assert!(out.status.success());
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(pid_alive(pid));
        let killed = terminate(
            None,
            &[out.pgid],
            &marker,
            Scan::Children,
            Duration::from_secs(2),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(killed, 0, "sleep dies of SIGTERM within the grace period");
        assert!(!pid_alive(pid), "the daemon survived");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the daemon was not reaped"
        );
        // Nothing left: one search, nothing signalled.
        let again = terminate(
            None,
            &[out.pgid],
            &marker,
            Scan::Children,
            Duration::from_secs(2),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(again, 0);
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
            &Marker::new("unused-marker-x"),
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
