//! Live logs (extension `logs`), worker side, end to end: capture of setup,
//! agent and teardown output, byte-exact delivery, order against the
//! terminal frame, redaction, the spool across control-plane outages and
//! worker restarts, the spool bound, and v1 control planes.
mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

use oz_protocol::logs::{LogLine, LogPhase, LogStream};
use oz_protocol::{MSG_COMPLETED, TaskAssignment, WorkerMessage};
use tokio::time::{Instant, sleep};

// ---------------------------------------------------------------------------
// Helpers local to this file.
// ---------------------------------------------------------------------------

const PIECE: usize = 64 * 1024;

fn yaml(sb: &Sandbox, top: &str, direct: &str) -> String {
    format!(
        "{top}backend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n    grace_period: 2s\n{direct}",
        sb.workspace_root().display(),
        sb.agent_path().display()
    )
}

fn wait_for(gate: &Path) -> String {
    format!(
        "n=0; while [ ! -e {} ] && [ $n -lt 2400 ]; do sleep 0.05; n=$((n+1)); done\n",
        gate.display()
    )
}

fn touch(path: &Path) {
    std::fs::write(path, "").unwrap();
}

fn with_env(mut a: TaskAssignment, k: &str, v: &str) -> TaskAssignment {
    a.env_vars.insert(k.to_owned(), v.to_owned());
    a
}

/// Deterministic pseudo-random bytes (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// About `size` bytes of mixed output: short and empty lines, UTF-8 text,
/// invalid UTF-8, NUL, CR and tabs, and one line of 200 KiB.
fn mixed_output(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(size + 300_000);
    let mut long_done = false;
    while out.len() < size {
        match rng.below(10) {
            0 => {}
            1 => out.extend_from_slice("héllo wörld 日本語 ✓".as_bytes()),
            2 => out.extend_from_slice(&[0xff, 0xfe, b'x', 0xc3, b'(', 0x80]),
            3 => out.extend_from_slice(b"tab\there\r cr \0 nul"),
            _ => {
                let n = rng.below(300) as usize;
                out.extend((0..n).map(|_| b' ' + rng.below(95) as u8));
            }
        }
        if !long_done && out.len() > size / 2 {
            long_done = true;
            out.push(b'\n');
            out.extend((0..200 * 1024).map(|i| b'a' + (i % 26) as u8));
        }
        out.push(b'\n');
    }
    out
}

/// Assign, check the claim, and wait for the terminal frame.
async fn run_to_end(cp: &mut ControlPlane, a: TaskAssignment) -> WorkerMessage {
    let id = a.task_id.clone();
    cp.assign(a);
    cp.terminal(&id).await
}

fn assert_completed(m: &WorkerMessage) {
    match m {
        WorkerMessage::TaskCompleted(c) => assert_eq!(c.message, MSG_COMPLETED),
        other => panic!("expected task_completed, got {other:?}"),
    }
}

/// Wait for `log_lines` of `task_id` to arrive, then return.
async fn first_lines(cp: &mut ControlPlane, task_id: &str) {
    loop {
        if let WorkerMessage::LogLines(l) = cp.frame().await
            && l.task_id == task_id
        {
            return;
        }
    }
}

async fn wait_disconnected(cp: &mut ControlPlane) {
    loop {
        if let Event::Disconnected = cp.next().await {
            return;
        }
    }
}

fn text_lines(lines: &[LogLine], stream: LogStream, phase: LogPhase) -> String {
    String::from_utf8(reassemble(lines, stream, phase)).expect("utf-8 output")
}

// ---------------------------------------------------------------------------
// Delivery and order
// ---------------------------------------------------------------------------

#[tokio::test]
async fn several_mib_arrive_byte_exact_with_and_without_a_final_newline() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start_logs(&Acks::auto()).await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    let out_a = mixed_output(1, 5 * 1024 * 1024);
    let err_a = mixed_output(2, 512 * 1024);
    let mut out_b = mixed_output(3, 1024 * 1024);
    out_b.extend_from_slice(b"last line \xff without newline");
    let pa = sb.write("out-a", "");
    std::fs::write(&pa, &out_a).unwrap();
    let pe = sb.path().join("err-a");
    std::fs::write(&pe, &err_a).unwrap();
    let pb = sb.path().join("out-b");
    std::fs::write(&pb, &out_b).unwrap();

    // Two tasks at once: their frames interleave on the one connection.
    cp.assign(assignment_running(
        "run-a",
        &format!("cat {} & cat {} >&2; wait", pa.display(), pe.display()),
    ));
    cp.assign(assignment_running(
        "run-b",
        &format!("cat {}", pb.display()),
    ));
    let ta = cp.terminal("run-a").await;
    let tb = if cp.task_frames("run-b").iter().any(|f| f.is_terminal()) {
        cp.task_frames("run-b")
            .into_iter()
            .find(|f| f.is_terminal())
            .unwrap()
    } else {
        cp.terminal("run-b").await
    };
    assert_completed(&ta);
    assert_completed(&tb);

    for (id, want_out, want_err) in [("run-a", &out_a, &err_a[..]), ("run-b", &out_b, &b""[..])] {
        let frames = cp.task_frames(id);
        let last = assert_log_order(&frames);
        let lines = dedup_by_seq(&log_lines(&frames));
        assert_no_gaps(&lines, last);
        let got_out = reassemble(&lines, LogStream::Stdout, LogPhase::Agent);
        assert!(
            got_out == *want_out,
            "{id}: stdout differs ({} bytes, want {})",
            got_out.len(),
            want_out.len()
        );
        let got_err = reassemble(&lines, LogStream::Stderr, LogPhase::Agent);
        assert!(got_err == want_err, "{id}: stderr differs");
        for l in &lines {
            assert!(
                l.bytes().len() <= PIECE,
                "{id}: a line of {} bytes",
                l.bytes().len()
            );
            assert!(l.gap_bytes.is_none());
            assert!(
                l.ts.ends_with('Z') && l.ts.len() == "2025-01-01T00:00:00.000000Z".len(),
                "{}",
                l.ts
            );
        }
        // Invalid UTF-8 travels as base64, and text stays text.
        assert!(lines.iter().any(|l| l.data_b64.is_some()));
        assert!(
            lines
                .iter()
                .any(|l| l.text.as_deref().is_some_and(|t| t.contains("日本語")))
        );
    }
    // The 200 KiB line came in 64 KiB pieces, only the last with newline.
    let lines = dedup_by_seq(&log_lines(&cp.task_frames("run-a")));
    let stdout: Vec<&LogLine> = lines
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .collect();
    let start = stdout
        .iter()
        .position(|l| l.bytes().starts_with(b"abcdefghijklmnopqrstuvwxyzabcdef"))
        .expect("the long line");
    let long = &stdout[start..start + 4];
    assert!(
        long[..3]
            .iter()
            .all(|l| !l.newline && l.bytes().len() == PIECE)
    );
    assert!(long[3].newline && long[3].bytes().len() == 200 * 1024 - 3 * PIECE);
    // The last line of run-b had no newline.
    let last_b = dedup_by_seq(&log_lines(&cp.task_frames("run-b")));
    assert!(!last_b.last().unwrap().newline);

    // Acknowledged and delivered: nothing left in the state dir.
    eventually("the spool is empty", || sb.state_files("spool").is_empty()).await;
    assert!(sb.pending_results().is_empty());
    // The worker's own log has the phases, never the output.
    let log = sb.log();
    assert!(log.contains("agent started") && log.contains("agent exited"));
    assert!(!log.contains("without newline") && !log.contains("日本語"));

    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0), "{}", sb.log());
}

#[tokio::test]
async fn setup_agent_and_teardown_output_is_tagged_by_phase_in_read_order() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start_logs(&Acks::auto()).await;
    let cfg = yaml(
        &sb,
        "",
        "    setup_command: \"echo setup out; echo setup err >&2\"\n    teardown_command: \"echo teardown out $OZ_TASK_RESULT\"\n",
    );
    let mut w = WorkerBuilder::new(&sb, &cp).config(Some(cfg)).spawn();
    cp.connected().await;
    let t = run_to_end(
        &mut cp,
        assignment_running("run-p", "echo agent out; echo agent err >&2; exit 3"),
    )
    .await;
    assert!(matches!(t, WorkerMessage::TaskFailed(_)));
    let frames = cp.task_frames("run-p");
    let last = assert_log_order(&frames);
    let lines = dedup_by_seq(&log_lines(&frames));
    assert_no_gaps(&lines, last);
    assert_eq!(
        text_lines(&lines, LogStream::Stdout, LogPhase::Setup),
        "setup out\n"
    );
    assert_eq!(
        text_lines(&lines, LogStream::Stderr, LogPhase::Setup),
        "setup err\n"
    );
    assert_eq!(
        text_lines(&lines, LogStream::Stdout, LogPhase::Agent),
        "agent out\n"
    );
    assert_eq!(
        text_lines(&lines, LogStream::Stderr, LogPhase::Agent),
        "agent err\n"
    );
    assert_eq!(
        text_lines(&lines, LogStream::Stdout, LogPhase::Teardown),
        "teardown out failed\n"
    );
    // One counter per task, shared by every phase: phases come in order.
    let phases: Vec<LogPhase> = lines.iter().map(|l| l.phase).collect();
    let mut sorted = phases.clone();
    sorted.sort_by_key(|p| match p {
        LogPhase::Setup => 0,
        LogPhase::Agent => 1,
        LogPhase::Teardown => 2,
    });
    assert_eq!(phases, sorted);
    let log = sb.log();
    for phase in [
        "setup started",
        "setup finished",
        "agent started",
        "agent exited",
        "teardown started",
        "teardown finished",
    ] {
        assert_eq!(log.matches(phase).count(), 1, "{phase}:\n{log}");
    }
    assert!(!log.contains("setup out") && !log.contains("agent err"));
    w.signal(nix::sys::signal::Signal::SIGTERM);
    w.wait().await;
}

// ---------------------------------------------------------------------------
// Outages and restarts
// ---------------------------------------------------------------------------

fn counted_lines(from: u32, to: u32) -> String {
    format!("i={from}; while [ $i -lt {to} ]; do echo \"line $i\"; i=$((i+1)); done\n")
}

fn expected_counted(n: u32) -> String {
    (0..n).map(|i| format!("line {i}\n")).collect()
}

#[tokio::test]
async fn output_written_while_the_control_plane_is_down_arrives_once_in_order() {
    let sb = Sandbox::new();
    let acks = Acks::auto();
    let mut cp = ControlPlane::start_logs(&acks).await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    let go = sb.path().join("go");
    let script = format!(
        "{}{}{}",
        counted_lines(0, 2000),
        wait_for(&go),
        counted_lines(2000, 30000)
    );
    cp.assign(assignment_running("run-o", &script));
    first_lines(&mut cp, "run-o").await;

    let addr = cp.addr;
    cp.stop();
    wait_disconnected(&mut cp).await;
    touch(&go);
    eventually("the task finished while the server was down", || {
        sb.result_journaled("run-o")
    })
    .await;
    assert!(sb.spool_file("run-o").exists());

    let mut cp2 = ControlPlane::restart_logs_on(addr, &acks).await;
    let t = cp2.terminal("run-o").await;
    assert_completed(&t);
    assert_eq!(
        cp.task_frames("run-o")
            .iter()
            .filter(|f| f.is_terminal())
            .count(),
        0
    );
    let after = cp2.task_frames("run-o");
    let last = assert_log_order(&after);
    let mut all = log_lines(&cp.task_frames("run-o"));
    all.extend(log_lines(&after));
    let lines = dedup_by_seq(&all);
    assert_no_gaps(&lines, last);
    assert_eq!(
        text_lines(&lines, LogStream::Stdout, LogPhase::Agent),
        expected_counted(30000)
    );
    eventually("the spool is empty", || sb.state_files("spool").is_empty()).await;
    assert!(sb.pending_results().is_empty());
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0), "{}", sb.log());
}

#[tokio::test]
async fn a_worker_killed_with_spooled_output_delivers_it_after_restart() {
    let sb = Sandbox::new();
    let acks = Acks::auto();
    let mut cp = ControlPlane::start_logs(&acks).await;
    let builder = WorkerBuilder::new(&sb, &cp);
    let mut w = builder.spawn();
    cp.connected().await;

    let go = sb.path().join("go");
    let script = format!(
        "{}{}{}",
        counted_lines(0, 100),
        wait_for(&go),
        counted_lines(100, 20000)
    );
    cp.assign(assignment_running("run-k", &script));
    first_lines(&mut cp, "run-k").await;
    let addr = cp.addr;
    cp.stop();
    wait_disconnected(&mut cp).await;
    touch(&go);
    eventually("the result is journaled", || sb.result_journaled("run-k")).await;

    // kill -9: nothing is flushed, nothing is said.
    w.child.start_kill().unwrap();
    w.wait().await;
    assert!(sb.spool_file("run-k").exists());

    let mut w2 = builder.spawn();
    sleep(Duration::from_millis(300)).await;
    let mut cp2 = ControlPlane::restart_logs_on(addr, &acks).await;
    let t = cp2.terminal("run-k").await;
    assert_completed(&t);
    let after = cp2.task_frames("run-k");
    let last = assert_log_order(&after);
    let mut all = log_lines(&cp.task_frames("run-k"));
    all.extend(log_lines(&after));
    let lines = dedup_by_seq(&all);
    assert_no_gaps(&lines, last);
    assert_eq!(
        text_lines(&lines, LogStream::Stdout, LogPhase::Agent),
        expected_counted(20000)
    );
    eventually("the state dir is empty", || {
        sb.state_files("spool").is_empty() && sb.pending_results().is_empty()
    })
    .await;
    w2.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w2.wait().await.code(), Some(0), "{}", sb.log());
}

#[tokio::test]
async fn the_spool_bound_drops_the_oldest_lines_behind_a_gap_marker() {
    let sb = Sandbox::new();
    let acks = Acks::auto();
    let mut cp = ControlPlane::start_logs(&acks).await;
    let cfg = yaml(&sb, "log_spool_limit: 1MiB\n", "");
    let mut w = WorkerBuilder::new(&sb, &cp).config(Some(cfg)).spawn();
    cp.connected().await;

    let data = mixed_output(7, 4 * 1024 * 1024);
    let path = sb.path().join("big");
    std::fs::write(&path, &data).unwrap();
    let go = sb.path().join("go");
    cp.assign(assignment_running(
        "run-g",
        &format!("{}cat {}", wait_for(&go), path.display()),
    ));
    loop {
        if let WorkerMessage::TaskClaimed(_) = cp.frame().await {
            break;
        }
    }
    let addr = cp.addr;
    cp.stop();
    wait_disconnected(&mut cp).await;
    touch(&go);
    eventually("the result is journaled", || sb.result_journaled("run-g")).await;
    let size = std::fs::metadata(sb.spool_file("run-g")).unwrap().len();
    assert!(size <= 1024 * 1024, "the spool holds {size} bytes");

    let mut cp2 = ControlPlane::restart_logs_on(addr, &acks).await;
    assert_completed(&cp2.terminal("run-g").await);
    let frames = cp2.task_frames("run-g");
    let last = assert_log_order(&frames);
    let lines = dedup_by_seq(&log_lines(&frames));
    assert_eq!(*lines.iter().map(|l| &l.seq).max().unwrap(), last);
    let gaps: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].gap_bytes.is_some())
        .collect();
    assert_eq!(gaps.len(), 1, "one gap marker");
    let gap = &lines[gaps[0]];
    let dropped = gap.gap_bytes.unwrap() as usize;
    // Nothing had been sent: the marker takes seq 1, the first line dropped.
    assert_eq!(gap.seq, 1);
    let before: Vec<u8> = lines[..gaps[0]].iter().flat_map(|l| l.raw()).collect();
    let after: Vec<u8> = lines[gaps[0] + 1..].iter().flat_map(|l| l.raw()).collect();
    assert_eq!(before.len() + dropped + after.len(), data.len());
    assert!(data.starts_with(&before));
    assert!(data.ends_with(&after));
    assert!(after.len() > 256 * 1024, "the newest output is kept");
    // The seqs after the marker are those of the lines kept.
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]));
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0), "{}", sb.log());
}

/// Connected to a control plane that acknowledges slowly, a task whose
/// spool reaches the bound is no longer read (it blocks on its writes)
/// until acks free room: nothing is dropped.
#[tokio::test]
async fn a_full_spool_holds_the_task_back_while_connected_and_loses_nothing() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start_logs(&Acks::manual()).await;
    let limit = 1024 * 1024u64;
    let cfg = yaml(&sb, "log_spool_limit: 1MiB\n", "");
    let mut w = WorkerBuilder::new(&sb, &cp).config(Some(cfg)).spawn();
    cp.connected().await;

    // 4 MiB of text: four times the bound.
    let data: String = (0..40_000)
        .map(|i| format!("line {i:06} {}\n", "x".repeat(90)))
        .collect();
    let path = sb.path().join("big");
    std::fs::write(&path, &data).unwrap();
    let wrote_all = sb.path().join("wrote-all");
    cp.assign(assignment_running(
        "run-b",
        &format!("cat {}\ntouch {}\n", path.display(), wrote_all.display()),
    ));

    // No ack yet: the spool fills to the bound and the task cannot finish
    // its writes (nothing can be dropped, and 4 MiB do not fit).
    let spool = sb.spool_file("run-b");
    let size = || std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0);
    eventually("the spool reaches the bound", || size() >= limit).await;
    assert!(
        !wrote_all.exists(),
        "the task wrote everything past a full spool"
    );
    let held = size();
    assert!(held <= limit + 256 * 1024, "the spool holds {held} bytes");

    // A slow control plane: each batch is acknowledged a moment after it
    // arrives.
    loop {
        match cp.frame().await {
            WorkerMessage::LogLines(l) if l.task_id == "run-b" => {
                sleep(Duration::from_millis(5)).await;
                cp.ack("run-b", l.lines.iter().map(|l| l.seq).max().unwrap_or(0));
            }
            f if f.is_terminal() && f.task_id() == "run-b" => {
                assert_completed(&f);
                break;
            }
            _ => {}
        }
    }
    assert!(wrote_all.exists());
    let frames = cp.task_frames("run-b");
    let last = assert_log_order(&frames);
    let lines = dedup_by_seq(&log_lines(&frames));
    assert!(
        lines.iter().all(|l| l.gap_bytes.is_none()),
        "a gap marker: lines were dropped"
    );
    assert_no_gaps(&lines, last);
    assert_eq!(text_lines(&lines, LogStream::Stdout, LogPhase::Agent), data);
    assert!(
        !sb.log().contains("exceeds log_spool_limit"),
        "{}",
        sb.log()
    );
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0), "{}", sb.log());
}

// ---------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------

#[tokio::test]
async fn secrets_are_redacted_even_split_across_writes_and_never_spooled() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start_logs(&Acks::manual()).await;
    let setup = sb.write(
        "setup.sh",
        "printf \"FILE_SECRET='file-secret-777'\\n\" >> \"$OZ_ENVIRONMENT_FILE\"\necho \"setup sees $MY_TOKEN\"\n",
    );
    let cfg = yaml(
        &sb,
        "",
        &format!(
            "    setup_command: \"sh {}\"\n    teardown_command: \"echo teardown done\"\n",
            setup.display()
        ),
    );
    let mut w = WorkerBuilder::new(&sb, &cp)
        .config(Some(cfg))
        .args(["-e", "CFG_SECRET=cfg-secret-value-1"])
        .spawn();
    cp.connected().await;

    let script = "printf 'tok=my-token-'; sleep 0.2; printf 'value-42 end\\n'; \
                  echo \"key=$WARP_API_KEY\"; echo \"cfg=$CFG_SECRET\" >&2; \
                  echo \"file=$FILE_SECRET\"; echo \"plain=$NOT_SECRET short=$SHORT\"; \
                  head -c 65530 /dev/zero | tr '\\0' a; printf '%s' \"$MY_TOKEN\"; \
                  head -c 70000 /dev/zero | tr '\\0' b; echo";
    let mut a = assignment_running("run-x", script);
    a = with_env(a, "MY_TOKEN", "my-token-value-42");
    a = with_env(a, "WARP_API_KEY", "run-token-abcdef-123");
    a = with_env(a, "NOT_SECRET", "plain-value-99");
    a = with_env(a, "SHORT", "abc12");
    a.secret_env_vars = vec!["MY_TOKEN".into(), "SHORT".into()];
    let t = run_to_end(&mut cp, a).await;
    assert_completed(&t);

    let secrets = [
        "my-token-value-42",
        "run-token-abcdef-123",
        "cfg-secret-value-1",
        "file-secret-777",
    ];
    // Not acknowledged yet: the spool still holds the lines, redacted.
    let spooled = std::fs::read(sb.spool_file("run-x")).expect("spool file");
    for s in secrets {
        assert!(
            !spooled.windows(s.len()).any(|w| w == s.as_bytes()),
            "{s} is in the spool"
        );
    }
    let frames = cp.task_frames("run-x");
    for f in &frames {
        let text = f.encode();
        for s in secrets {
            assert!(!text.contains(s), "{s} was sent");
        }
    }
    let last = assert_log_order(&frames);
    let lines = dedup_by_seq(&log_lines(&frames));
    assert_no_gaps(&lines, last);
    let out = text_lines(&lines, LogStream::Stdout, LogPhase::Agent);
    let mut want = String::from(
        "tok=[REDACTED] end\nkey=[REDACTED]\nfile=[REDACTED]\nplain=plain-value-99 short=abc12\n",
    );
    want.push_str(&"a".repeat(65530));
    want.push_str("[REDACTED]");
    want.push_str(&"b".repeat(70000));
    want.push('\n');
    assert!(out == want, "agent stdout:\n{}", &out[..out.len().min(300)]);
    assert_eq!(
        text_lines(&lines, LogStream::Stderr, LogPhase::Agent),
        "cfg=[REDACTED]\n"
    );
    assert_eq!(
        text_lines(&lines, LogStream::Stdout, LogPhase::Setup),
        "setup sees [REDACTED]\n"
    );
    assert_eq!(
        text_lines(&lines, LogStream::Stdout, LogPhase::Teardown),
        "teardown done\n"
    );
    let log = sb.log();
    for s in secrets {
        assert!(!log.contains(s), "{s} is in the worker log");
    }

    // Acknowledging everything removes the spool file.
    cp.ack("run-x", last);
    eventually("the spool file is removed", || {
        !sb.spool_file("run-x").exists()
    })
    .await;
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0), "{}", sb.log());
}

// ---------------------------------------------------------------------------
// v1 control planes and stubborn pipes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_v1_control_plane_gets_no_log_frames_and_still_the_result() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;
    let t = run_to_end(
        &mut cp,
        assignment_running(
            "run-v",
            "i=0; while [ $i -lt 5000 ]; do echo line $i; i=$((i+1)); done",
        ),
    )
    .await;
    assert_completed(&t);
    if let Some(ev) = cp.next_within(Duration::from_millis(500)).await {
        panic!("unexpected event after the result: {ev:?}");
    }
    let kinds: Vec<&str> = cp.frames().iter().map(WorkerMessage::kind).collect();
    assert_eq!(kinds, ["task_claimed", "task_completed"]);
    eventually("the state dir is empty", || {
        sb.state_files("spool").is_empty() && sb.pending_results().is_empty()
    })
    .await;
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0), "{}", sb.log());
}

#[tokio::test]
async fn a_process_outside_the_task_holding_the_pipe_does_not_hold_the_result() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start_logs(&Acks::auto()).await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;
    let pidfile = sb.path().join("escaped");
    // Leaves the group and drops the marker, so the sweep cannot find it;
    // it keeps the agent's stdout open.
    let script = format!(
        "echo before; env -u OZ_RUN_MARKER setsid sleep 60 & echo $! > {}; echo after",
        pidfile.display()
    );
    let started = Instant::now();
    let t = run_to_end(&mut cp, assignment_running("run-e", &script)).await;
    assert_completed(&t);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let lines = dedup_by_seq(&log_lines(&cp.task_frames("run-e")));
    assert_eq!(
        text_lines(&lines, LogStream::Stdout, LogPhase::Agent),
        "before\nafter\n"
    );
    for pid in read_pids(&pidfile) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    w.signal(nix::sys::signal::Signal::SIGTERM);
    w.wait().await;
}

// ---------------------------------------------------------------------------
// The state directory
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unusable_state_dir_stops_the_worker_at_startup() {
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    let file = sb.write("not-a-dir", "x");
    let bad = file.join("state");
    let (status, stderr) = WorkerBuilder::new(&sb, &cp)
        .args(["--state-dir", bad.to_str().unwrap()])
        .run_to_exit()
        .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("state_dir")
            && stderr.contains("cannot be used")
            && stderr.contains("--state-dir"),
        "{stderr}"
    );
    // --check-config checks it too.
    let (status, stderr) = WorkerBuilder::new(&sb, &cp)
        .args(["--state-dir", bad.to_str().unwrap(), "--check-config"])
        .run_to_exit()
        .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
}

#[tokio::test]
async fn the_state_dir_is_private_and_not_shared_by_two_workers() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;
    for dir in [
        sb.state_dir(),
        sb.state_dir().join("spool"),
        sb.state_dir().join("results"),
    ] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    let (status, stderr) = WorkerBuilder::new(&sb, &cp).run_to_exit().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another oz-agent-worker"),
        "{stderr}"
    );
    // --check-config does not take the lock: it works next to a running worker.
    let (status, stderr) = WorkerBuilder::new(&sb, &cp)
        .arg("--check-config")
        .run_to_exit()
        .await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0), "{}", sb.log());
}
