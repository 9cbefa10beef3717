//! `oz run logs`: print a run's output, page by page or live (`-f`, over
//! Server-Sent Events, resumed with Last-Event-ID after a dropped
//! connection). Ctrl-C stops following, never the run.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use oz_protocol::logs::{LogLine, LogStream};
use serde_json::Value;

use super::{api_error, exit};
use crate::client::{Client, ClientError, encode_segment};

/// Filters of a log read.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Print lines after this seq only.
    pub since_seq: Option<u64>,
    /// Only this phase: setup, agent or teardown.
    pub phase: Option<String>,
}

impl LogFilter {
    fn query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        if let Some(s) = self.since_seq {
            q.push(("since_seq".to_owned(), s.to_string()));
        }
        if let Some(p) = &self.phase {
            q.push(("phase".to_owned(), p.clone()));
        }
        q
    }
}

/// Write one line as it was produced: stdout lines to stdout, stderr lines
/// to stderr, gaps as a note on stderr.
pub fn print_line(line: &LogLine) {
    if let Some(gap) = line.gap_bytes {
        eprintln!("[oz: {gap} bytes of output were dropped here (worker spool limit)]");
        return;
    }
    let raw = line.raw();
    let result = match line.stream {
        LogStream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(&raw).and_then(|()| out.flush())
        }
        LogStream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(&raw).and_then(|()| err.flush())
        }
    };
    if let Err(e) = result
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

pub async fn logs(client: &Client, run_id: &str, follow: bool, filter: LogFilter) -> ExitCode {
    if follow {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        return match stream(client, run_id, &filter, &mut |l| print_line(l), ctrl_c).await {
            Ok(StreamEnd::Ended(end)) => {
                let state = end.get("state").and_then(Value::as_str).unwrap_or("ended");
                eprintln!("[oz: run {run_id} {state}]");
                ExitCode::from(exit::OK)
            }
            Ok(StreamEnd::Stopped) => {
                eprintln!("Stopped following; the run goes on.");
                ExitCode::from(exit::INTERRUPTED)
            }
            Err(e) => api_error(&e),
        };
    }
    let mut since = filter.since_seq;
    loop {
        let mut q = LogFilter {
            since_seq: since,
            phase: filter.phase.clone(),
        }
        .query();
        q.push(("limit".to_owned(), "5000".to_owned()));
        let page: Value = match client
            .get_query(&format!("/agent/runs/{}/logs", encode_segment(run_id)), &q)
            .await
        {
            Ok(p) => p,
            Err(e) => return api_error(&e),
        };
        let lines: Vec<LogLine> = page
            .get("lines")
            .cloned()
            .and_then(|l| serde_json::from_value(l).ok())
            .unwrap_or_default();
        for l in &lines {
            print_line(l);
        }
        let more = page
            .get("has_more")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let next = page.get("next_seq").and_then(Value::as_u64);
        if !more || lines.is_empty() || next.is_none() {
            return ExitCode::from(exit::OK);
        }
        since = next;
    }
}

/// How a stream ended.
pub enum StreamEnd {
    /// The server sent `end` (run over, log complete): its data.
    Ended(Value),
    /// `stop` fired first.
    Stopped,
}

/// Stream a run's log to `on_line` until the server's `end` event or
/// `stop`; reconnects with Last-Event-ID when the connection drops.
pub async fn stream(
    client: &Client,
    run_id: &str,
    filter: &LogFilter,
    on_line: &mut (dyn FnMut(&LogLine) + Send),
    stop: impl std::future::Future<Output = ()>,
) -> Result<StreamEnd, ClientError> {
    tokio::pin!(stop);
    let path = format!("/agent/runs/{}/logs/stream", encode_segment(run_id));
    let mut last_seq = filter.since_seq;
    let mut failures = 0u32;
    // The position travels as Last-Event-ID, first time and after a drop.
    let q = LogFilter {
        since_seq: None,
        phase: filter.phase.clone(),
    }
    .query();
    loop {
        let resp = tokio::select! {
            r = client.get_stream(&path, &q, last_seq) => r,
            _ = &mut stop => return Ok(StreamEnd::Stopped),
        };
        let resp = match resp {
            Ok(r) => {
                failures = 0;
                r
            }
            // The server answered: that is final (404, 401, …).
            Err(e) if e.status().is_some() => return Err(e),
            Err(e) => {
                failures += 1;
                if failures > 30 {
                    return Err(e);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = &mut stop => return Ok(StreamEnd::Stopped),
                }
            }
        };
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        loop {
            let chunk = tokio::select! {
                c = body.next() => c,
                _ = &mut stop => return Ok(StreamEnd::Stopped),
            };
            let Some(Ok(chunk)) = chunk else {
                break; // dropped: reconnect from last_seq
            };
            for ev in parser.feed(&chunk) {
                match ev.event.as_str() {
                    "line" => {
                        if let Ok(line) = serde_json::from_str::<LogLine>(&ev.data)
                            && last_seq.is_none_or(|s| line.seq > s)
                        {
                            last_seq = Some(line.seq);
                            on_line(&line);
                        }
                    }
                    "end" => {
                        return Ok(StreamEnd::Ended(
                            serde_json::from_str(&ev.data).unwrap_or(Value::Null),
                        ));
                    }
                    _ => {}
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = &mut stop => return Ok(StreamEnd::Stopped),
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Incremental parser of a `text/event-stream` body.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feed bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if self.has_data {
                    let mut ev = std::mem::take(&mut self.current);
                    if ev.event.is_empty() {
                        ev.event = "message".into();
                    }
                    out.push(ev);
                }
                self.current = SseEvent::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // comment / keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "event" => self.current.event = value,
                "id" => self.current.id = Some(value),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(&value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_parsed_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nevent: line\nid: 3\nda").is_empty());
        let evs = p.feed(b"ta: {\"a\":1}\n\nevent: end\r\ndata: x\r\ndata: y\r\n\r\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event, "line");
        assert_eq!(evs[0].id.as_deref(), Some("3"));
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[1].event, "end");
        assert_eq!(evs[1].data, "x\ny");
    }
}
