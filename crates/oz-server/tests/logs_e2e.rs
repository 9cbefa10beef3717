//! End to end for live logs: the real `oz-server` binary, and a fake worker
//! played by the test over the real WebSocket (no `oz-agent-worker`
//! needed). Every wait is bounded.

mod e2e_support;
mod sse_support;

use std::time::Duration;

use e2e_support::{Sandbox, Server, WAIT};
use futures_util::{SinkExt, StreamExt};
use oz_protocol::logs::{LogEnd, LogLine, LogLines, LogPhase, LogStream};
use oz_protocol::{ServerMessage, TaskAssignment, TaskClaimed, TaskCompleted, WorkerMessage};
use serde_json::Value;
use sse_support::{SseClient, SseEvent};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const FRAME_WAIT: Duration = Duration::from_secs(15);

/// A worker that speaks the protocol by hand.
struct FakeWorker {
    ws: Ws,
}

impl FakeWorker {
    async fn connect(server: &Server, worker_id: &str, key: &str) -> FakeWorker {
        let mut req = format!(
            "ws://{}/api/v1/selfhosted/worker/ws?worker_id={worker_id}",
            server.addr
        )
        .into_client_request()
        .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let (ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake in time")
            .expect("handshake accepted");
        FakeWorker { ws }
    }

    /// The next frame from the server (pings are answered by tungstenite).
    async fn recv(&mut self) -> ServerMessage {
        loop {
            let msg = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("a frame from the server in time")
                .expect("connection open")
                .expect("frame");
            if let Message::Text(text) = msg {
                return ServerMessage::decode(text.as_str()).expect("a valid server frame");
            }
        }
    }

    async fn send(&mut self, msg: &WorkerMessage) {
        self.ws
            .send(Message::text(msg.encode()))
            .await
            .expect("send");
    }

    /// Frames written with one flush, as a worker sends what is ready
    /// together (a task's log_end and its result): the server reads them
    /// at once.
    async fn send_together(&mut self, msgs: &[WorkerMessage]) {
        for msg in msgs {
            self.ws
                .feed(Message::text(msg.encode()))
                .await
                .expect("feed");
        }
        self.ws.flush().await.expect("flush");
    }

    async fn expect_ack(&mut self, task_id: &str) -> u64 {
        match self.recv().await {
            ServerMessage::LogAck(a) => {
                assert_eq!(a.task_id, task_id);
                a.seq
            }
            other => panic!("expected log_ack, got {other:?}"),
        }
    }
}

fn lines(task_id: &str, lines: Vec<LogLine>) -> WorkerMessage {
    WorkerMessage::LogLines(LogLines {
        task_id: task_id.to_owned(),
        execution_id: None,
        lines,
    })
}

fn line(seq: u64, phase: LogPhase, bytes: &[u8]) -> LogLine {
    LogLine::new(
        seq,
        format!("2026-03-01T12:00:{seq:02}.000000Z"),
        LogStream::Stdout,
        phase,
        bytes,
        true,
    )
}

fn page_lines(v: &Value) -> Vec<LogLine> {
    serde_json::from_value(v["lines"].clone()).expect("lines of LogLine")
}

fn seqs(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(SseEvent::seq).collect()
}

#[tokio::test]
async fn fake_worker_streams_logs_through_the_real_server() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]).await;
    let key = server.create_key("worker", "fake worker").await;
    let mut worker = FakeWorker::connect(&server, "fake", &key).await;

    // 1. The hello announces the logs extension.
    match worker.recv().await {
        ServerMessage::ServerHello(h) => {
            assert!(
                h.has(oz_protocol::ext::LOGS),
                "extensions: {:?}",
                h.extensions
            );
            assert!(h.has(oz_protocol::ext::WORKER_STATUS));
        }
        other => panic!("expected server_hello first, got {other:?}"),
    }

    // 2. The assignment names its secrets.
    let run_id = server.submit("log something", Some("fake")).await;
    let assignment: TaskAssignment = match worker.recv().await {
        ServerMessage::TaskAssignment(a) => *a,
        other => panic!("expected task_assignment, got {other:?}"),
    };
    assert_eq!(assignment.task_id, run_id);
    assert_eq!(assignment.secret_env_vars, vec!["WARP_API_KEY".to_owned()]);
    let run_token = assignment
        .env_vars
        .get("WARP_API_KEY")
        .cloned()
        .expect("a run token");

    // A reader follows the run from before its first line.
    let stream_path = format!("/api/v1/agent/runs/{run_id}/logs/stream");
    let mut follower =
        SseClient::connect(&server.addr, &stream_path, Some(&server.admin_key), &[]).await;
    assert_eq!(follower.status, 200);

    worker
        .send(&WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: run_id.clone(),
            worker_id: "fake".into(),
        }))
        .await;
    server.wait_running(&run_id).await;

    // 3. Two frames, each acknowledged with its highest seq; a repeated frame
    // is acknowledged again and stored once.
    let binary = [b'b', 0xff, 0x00, 0xfe];
    let first = vec![
        line(1, LogPhase::Setup, b"cloning"),
        line(2, LogPhase::Agent, b"thinking"),
        line(3, LogPhase::Agent, &binary),
    ];
    let second = vec![
        line(4, LogPhase::Agent, "done ✓".as_bytes()),
        LogLine::gap(
            5,
            "2026-03-01T12:00:05.000000Z".into(),
            LogStream::Stderr,
            LogPhase::Teardown,
            10,
        ),
    ];
    worker.send(&lines(&run_id, first.clone())).await;
    assert_eq!(worker.expect_ack(&run_id).await, 3);
    worker.send(&lines(&run_id, second.clone())).await;
    assert_eq!(worker.expect_ack(&run_id).await, 5);
    worker.send(&lines(&run_id, first.clone())).await;
    assert_eq!(
        worker.expect_ack(&run_id).await,
        3,
        "a repeated frame is acknowledged again"
    );

    // While the run lives, its own token reads its log.
    let r = server
        .call(
            "GET",
            &format!("/api/v1/agent/runs/{run_id}/logs"),
            Some(&run_token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["complete"], false);
    assert_eq!(page_lines(&r.json()).len(), 5);

    // 4. The end: log_end, then the result.
    worker
        .send(&WorkerMessage::LogEnd(LogEnd {
            task_id: run_id.clone(),
            execution_id: None,
            last_seq: 5,
        }))
        .await;
    worker
        .send(&WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: run_id.clone(),
            message: oz_protocol::MSG_COMPLETED.into(),
            task_state: None,
        }))
        .await;
    let run = server.wait_terminal(&run_id, WAIT).await;
    assert_eq!(run["state"], "SUCCEEDED", "{run}");

    // 5. Stored exactly once, in order, byte for byte.
    let expected: Vec<LogLine> = first.iter().chain(second.iter()).cloned().collect();
    let r = server
        .get(&format!("/api/v1/agent/runs/{run_id}/logs"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(page_lines(&v), expected);
    assert_eq!(page_lines(&v)[2].bytes(), binary);
    assert_eq!(v["complete"], true, "{v}");
    assert_eq!(v["has_more"], false);
    assert_eq!(v["next_seq"], 5);
    assert_eq!(v["state"], "SUCCEEDED");
    let r = server
        .get(&format!(
            "/api/v1/agent/runs/{run_id}/logs?since_seq=2&limit=2"
        ))
        .await;
    let v = r.json();
    assert_eq!(
        page_lines(&v).iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(v["has_more"], true);

    // 6. The live follower saw every line once, then the end.
    let (got, end) = follower.until_end(WAIT).await;
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
    let got: Vec<LogLine> = got
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(got, expected);
    let end = end.expect("an end event").json();
    assert_eq!(end["state"], "SUCCEEDED");
    assert_eq!(end["status_message"]["message"], oz_protocol::MSG_COMPLETED);
    assert!(follower.next(WAIT).await.is_none(), "closed after end");

    // 7. A reader that comes later gets the backlog and the end; one that
    // resumes gets only what it missed.
    let mut late =
        SseClient::connect(&server.addr, &stream_path, Some(&server.admin_key), &[]).await;
    let (got, end) = late.until_end(WAIT).await;
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
    assert!(end.is_some());
    let mut resumed = SseClient::connect(
        &server.addr,
        &stream_path,
        Some(&server.admin_key),
        &[("Last-Event-ID", "4")],
    )
    .await;
    let (got, end) = resumed.until_end(WAIT).await;
    assert_eq!(seqs(&got), vec![5]);
    assert!(end.is_some());
    let mut agent_only = SseClient::connect(
        &server.addr,
        &format!("{stream_path}?phase=agent"),
        Some(&server.admin_key),
        &[],
    )
    .await;
    let (got, _) = agent_only.until_end(WAIT).await;
    assert_eq!(seqs(&got), vec![2, 3, 4]);
}

#[tokio::test]
async fn log_frames_for_unknown_runs_are_not_acknowledged() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]).await;
    let key = server.create_key("worker", "fake worker").await;
    let mut worker = FakeWorker::connect(&server, "fake", &key).await;
    assert!(matches!(worker.recv().await, ServerMessage::ServerHello(_)));

    worker
        .send(&lines("no-such-run", vec![line(1, LogPhase::Agent, b"x")]))
        .await;
    worker
        .send(&lines("", vec![line(1, LogPhase::Agent, b"x")]))
        .await;
    // Then a run of its own: after the assignment, its ack is the next frame.
    let mine = server.submit("mine", Some("fake")).await;
    let ServerMessage::TaskAssignment(a) = worker.recv().await else {
        panic!("expected the assignment");
    };
    assert_eq!(a.task_id, mine);
    worker
        .send(&lines(&mine, vec![line(1, LogPhase::Agent, b"y")]))
        .await;
    assert_eq!(worker.expect_ack(&mine).await, 1);
    let r = server.get("/api/v1/agent/runs/no-such-run/logs").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn log_retention_setting_is_parsed() {
    let sb = Sandbox::new();
    let out = tokio::process::Command::new(e2e_support::server_bin())
        .args(["--log-retention", "soon", "--data-dir"])
        .arg(sb.data_dir())
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("OZ_CONFIG")
        .env_remove("OZ_LOG_RETENTION")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log_retention"), "{err}");

    let mut server = Server::start(&sb, &["--log-retention", "0s"]).await;
    assert!(server.log().contains("forever"), "{}", server.log());
    server.stop().await;
    let config = sb.path().join("server.yaml");
    std::fs::write(&config, "log_retention: 36h\n").unwrap();
    let config = config.display().to_string();
    let mut server = Server::start(&sb, &["--config", &config]).await;
    assert!(server.log().contains("1day 12h"), "{}", server.log());
    server.stop().await;
}

async fn assignment(worker: &mut FakeWorker) -> TaskAssignment {
    loop {
        match worker.recv().await {
            ServerMessage::TaskAssignment(a) => return *a,
            ServerMessage::ServerHello(_) => {}
            other => panic!("expected task_assignment, got {other:?}"),
        }
    }
}

fn completed(run_id: &str) -> WorkerMessage {
    WorkerMessage::TaskCompleted(TaskCompleted {
        task_id: run_id.to_owned(),
        message: oz_protocol::MSG_COMPLETED.into(),
        task_state: None,
    })
}

fn claimed(run_id: &str) -> WorkerMessage {
    WorkerMessage::TaskClaimed(TaskClaimed {
        task_id: run_id.to_owned(),
        worker_id: "w".into(),
    })
}

/// One agent line of an execution.
fn exec_line(run_id: &str, execution_id: &Option<String>, seq: u64, text: &str) -> WorkerMessage {
    WorkerMessage::LogLines(LogLines {
        task_id: run_id.to_owned(),
        execution_id: execution_id.clone(),
        lines: vec![line(seq, LogPhase::Agent, text.as_bytes())],
    })
}

fn exec_end(run_id: &str, execution_id: &Option<String>, last_seq: u64) -> WorkerMessage {
    WorkerMessage::LogEnd(LogEnd {
        task_id: run_id.to_owned(),
        execution_id: execution_id.clone(),
        last_seq,
    })
}

/// Ask for a follow-up of an ended run: it is queued as a new execution.
async fn follow_up(server: &Server, run_id: &str) {
    let r = server
        .post(
            &format!("/api/v1/agent/runs/{run_id}/followups"),
            &serde_json::json!({"message": "again"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The run's stored log: its lines as text, and whether it is complete.
async fn stored_log(server: &Server, run_id: &str) -> (Vec<String>, Value) {
    let v = server
        .get(&format!("/api/v1/agent/runs/{run_id}/logs"))
        .await
        .json();
    let texts = page_lines(&v)
        .iter()
        .map(|l| String::from_utf8_lossy(&l.bytes()).into_owned())
        .collect();
    (texts, v["complete"].clone())
}

/// Claims and results count only from the connection that holds the run:
/// another connection (here of the same team; another team's can never
/// hold it either) cannot claim, finish or adopt it.
#[tokio::test]
async fn only_the_holding_connection_may_claim_or_finish_a_run() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]).await;
    let key = server.create_key("worker", "fake worker").await;
    let mut holder = FakeWorker::connect(&server, "w", &key).await;
    let mut other = FakeWorker::connect(&server, "x", &key).await;
    let _ = other.recv().await; // hello
    let run_id = server.submit("p", Some("w")).await;
    let a = assignment(&mut holder).await;
    assert_eq!(a.task_id, run_id);

    // The other connection claims, reports it as its own, and finishes it.
    other
        .send(&WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: run_id.clone(),
            worker_id: "x".into(),
        }))
        .await;
    other
        .send(&WorkerMessage::WorkerStatus(oz_protocol::WorkerStatus {
            running: vec![run_id.clone()],
            ..Default::default()
        }))
        .await;
    other.send(&completed(&run_id)).await;
    // Its lines are acknowledged (so a confused worker drains) but not
    // stored; the ack also proves its earlier frames were handled.
    other
        .send(&lines(&run_id, vec![line(1, LogPhase::Agent, b"not mine")]))
        .await;
    assert_eq!(other.expect_ack(&run_id).await, 1);
    let run = server.run(&run_id).await;
    assert_eq!(run["state"], "PENDING", "{run}");
    holder
        .send(&WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: run_id.clone(),
            worker_id: "w".into(),
        }))
        .await;
    let run = server.wait_running(&run_id).await;
    assert_eq!(run["state"], "CLAIMED", "{run}");

    holder.send(&completed(&run_id)).await;
    let run = server.wait_terminal(&run_id, WAIT).await;
    assert_eq!(run["state"], "SUCCEEDED", "{run}");
    let v = server
        .get(&format!("/api/v1/agent/runs/{run_id}/logs"))
        .await
        .json();
    assert!(page_lines(&v).is_empty(), "{v}");
}

/// A follow-up's execution handed to the same connection as the first one:
/// the server remembers which execution it gave the connection, so the
/// first execution's late lines are acknowledged but not stored, and the new
/// execution's lines go after the first one's.
#[tokio::test]
async fn a_second_execution_on_the_same_connection_logs_after_the_first() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]).await;
    let key = server.create_key("worker", "fake worker").await;
    let mut w = FakeWorker::connect(&server, "w", &key).await;
    let run_id = server.submit("p", Some("w")).await;
    let exec1 = assignment(&mut w).await.execution_id;
    w.send(&claimed(&run_id)).await;
    server.wait_running(&run_id).await;
    w.send(&exec_line(&run_id, &exec1, 1, "exec1 a")).await;
    assert_eq!(w.expect_ack(&run_id).await, 1);
    // The log's end and the result together: one transition stores both.
    w.send_together(&[exec_end(&run_id, &exec1, 1), completed(&run_id)])
        .await;
    let run = server.wait_terminal(&run_id, WAIT).await;
    assert_eq!(run["state"], "SUCCEEDED", "{run}");
    let (texts, complete) = stored_log(&server, &run_id).await;
    assert_eq!(texts, ["exec1 a"]);
    assert_eq!(complete, true, "the log_end was stored with the result");
    assert!(
        server.log().contains(&format!(
            "run_id=\"{run_id}\" state=SUCCEEDED log_last_seq=1"
        )),
        "one transition stored both: {}",
        server.log()
    );

    follow_up(&server, &run_id).await;
    let exec2 = assignment(&mut w).await.execution_id;
    assert_ne!(exec1, exec2);
    w.send(&claimed(&run_id)).await;
    server.wait_running(&run_id).await;

    // A line of the first execution that was still on its way.
    w.send(&exec_line(&run_id, &exec1, 2, "exec1 late")).await;
    assert_eq!(w.expect_ack(&run_id).await, 2, "acknowledged, so it drains");
    w.send(&exec_line(&run_id, &exec2, 1, "exec2 a")).await;
    assert_eq!(w.expect_ack(&run_id).await, 1, "in the worker's numbering");
    // The second execution's end is in its own numbering too.
    w.send_together(&[exec_end(&run_id, &exec2, 1), completed(&run_id)])
        .await;
    let run = server.wait_terminal(&run_id, WAIT).await;
    assert_eq!(run["state"], "SUCCEEDED", "{run}");
    let (texts, complete) = stored_log(&server, &run_id).await;
    assert_eq!(texts, ["exec1 a", "exec2 a"]);
    assert_eq!(complete, true);
    let v = server
        .get(&format!("/api/v1/agent/runs/{run_id}/logs"))
        .await
        .json();
    assert_eq!(v["next_seq"], 2, "{v}");
}

/// A worker that lost a run (lease expired), then comes back after a
/// follow-up started a new execution elsewhere: its late lines, log end and
/// result change nothing of the new execution.
#[tokio::test]
async fn a_past_execution_cannot_touch_the_follow_up_execution() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--lease-grace", "1s"]).await;
    let key = server.create_key("worker", "fake worker").await;
    let mut first = FakeWorker::connect(&server, "w", &key).await;
    let run_id = server.submit("p", Some("w")).await;
    let exec1 = assignment(&mut first).await.execution_id;
    first.send(&claimed(&run_id)).await;
    server.wait_running(&run_id).await;
    first.send(&exec_line(&run_id, &exec1, 1, "exec1 a")).await;
    assert_eq!(first.expect_ack(&run_id).await, 1);
    drop(first);
    let lost = server.wait_terminal(&run_id, WAIT).await;
    assert_eq!(lost["state"], "ERROR", "{lost}");

    // A follow-up: a new execution on another connection.
    follow_up(&server, &run_id).await;
    let mut second = FakeWorker::connect(&server, "w", &key).await;
    let exec2 = assignment(&mut second).await.execution_id;
    assert_ne!(exec1, exec2);
    second.send(&claimed(&run_id)).await;
    server.wait_running(&run_id).await;

    // The first worker is back with what it had left.
    let mut late = FakeWorker::connect(&server, "w", &key).await;
    let _ = late.recv().await; // hello
    late.send(&exec_line(&run_id, &exec1, 2, "exec1 b")).await;
    assert_eq!(
        late.expect_ack(&run_id).await,
        2,
        "acknowledged, so it drains"
    );
    late.send_together(&[exec_end(&run_id, &exec1, 2), completed(&run_id)])
        .await;

    // The new execution goes on and ends on its own terms.
    second.send(&exec_line(&run_id, &exec2, 1, "exec2 a")).await;
    assert_eq!(second.expect_ack(&run_id).await, 1);
    let run = server.run(&run_id).await;
    assert_eq!(
        run["state"], "CLAIMED",
        "the late result changed nothing: {run}"
    );
    second
        .send_together(&[exec_end(&run_id, &exec2, 1), completed(&run_id)])
        .await;
    let run = server.wait_terminal(&run_id, WAIT).await;
    assert_eq!(run["state"], "SUCCEEDED", "{run}");
    let (texts, complete) = stored_log(&server, &run_id).await;
    assert_eq!(texts, ["exec1 a", "exec2 a"]);
    assert_eq!(complete, true);
}

/// A run ended elsewhere (here: by another server on the same database, as
/// a replica's sweep would) while this server's connection still holds it:
/// the worker's log_end and result arrive together, the result is refused,
/// and the log still ends where the worker said.
#[tokio::test]
async fn a_log_end_with_a_refused_result_still_ends_the_log() {
    use oz_protocol::api::RunState;
    use oz_store::{RunPatch, Store};
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]).await;
    let key = server.create_key("worker", "fake worker").await;
    let mut w = FakeWorker::connect(&server, "w", &key).await;
    let run_id = server.submit("p", Some("w")).await;
    let exec = assignment(&mut w).await.execution_id;
    w.send(&claimed(&run_id)).await;
    server.wait_running(&run_id).await;
    w.send(&exec_line(&run_id, &exec, 1, "a")).await;
    assert_eq!(w.expect_ack(&run_id).await, 1);

    let replica = oz_store::SqliteStore::open(&sb.data_dir().join("oz.db"))
        .await
        .expect("the server's database");
    let now = oz_store::ts(chrono::Utc::now());
    let cancelled = replica
        .transition(
            &run_id,
            &[RunState::Claimed, RunState::Inprogress],
            RunState::Cancelled,
            RunPatch {
                ended_at: Some(Some(now.clone())),
                ..RunPatch::default()
            },
            &now,
        )
        .await
        .expect("the replica's transition");
    assert!(cancelled.is_some());

    w.send_together(&[exec_end(&run_id, &exec, 1), completed(&run_id)])
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (texts, complete) = stored_log(&server, &run_id).await;
        if complete == true {
            assert_eq!(texts, ["a"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never completed: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = server.run(&run_id).await;
    assert_eq!(
        run["state"], "CANCELLED",
        "the result changed nothing: {run}"
    );
    // The log ended by the log_end (seq 1), not by the 10 s grace.
    let stored = replica.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(stored.log_last_seq, Some(1));
}
