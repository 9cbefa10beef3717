//! A raw HTTP/1.1 client for Server-Sent Events over a `TcpStream`: reads
//! the head, then the (chunked) body incrementally, one event at a time.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// One event; comment-only blocks (keep-alives) are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }

    /// The `seq` of a `line` event (from its data), checked against its id.
    pub fn seq(&self) -> u64 {
        assert_eq!(self.event, "line", "not a line event: {self:?}");
        let seq = self.json()["seq"].as_u64().expect("seq");
        assert_eq!(
            self.id.as_deref(),
            Some(seq.to_string().as_str()),
            "{self:?}"
        );
        seq
    }
}

pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Body bytes received and not yet parsed into events.
    buf: Vec<u8>,
    eof: bool,
}

impl SseClient {
    /// `GET path` with `Accept: text/event-stream` and the given headers.
    pub async fn connect(
        addr: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let fut = async {
            let mut stream = TcpStream::connect(addr).await?;
            let mut head = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
            );
            if let Some(k) = key {
                head.push_str(&format!("Authorization: Bearer {k}\r\n"));
            }
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await?;
            let mut reader = BufReader::new(stream);
            let mut status_line = String::new();
            reader.read_line(&mut status_line).await?;
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await? == 0 {
                    break;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            Ok::<_, std::io::Error>((reader, status_line, headers))
        };
        let (reader, status_line, headers) = timeout(Duration::from_secs(15), fut)
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer within 15s"))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        SseClient {
            reader,
            status,
            headers,
            chunked,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole (finite) body, e.g. of an error answer.
    pub async fn body(mut self) -> String {
        while !self.eof {
            self.fill().await;
        }
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Read more body bytes; sets `eof` at the end of the body.
    async fn fill(&mut self) {
        let res: std::io::Result<()> = async {
            if self.chunked {
                let mut size_line = String::new();
                if self.reader.read_line(&mut size_line).await? == 0 {
                    self.eof = true;
                    return Ok(());
                }
                let size = usize::from_str_radix(
                    size_line.trim().split(';').next().unwrap_or("").trim(),
                    16,
                )
                .map_err(|e| std::io::Error::other(format!("bad chunk size {size_line:?}: {e}")))?;
                if size == 0 {
                    self.eof = true;
                    return Ok(());
                }
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).await?;
                chunk.truncate(size);
                self.buf.extend_from_slice(&chunk);
            } else {
                let mut chunk = [0u8; 4096];
                let n = self.reader.read(&mut chunk).await?;
                if n == 0 {
                    self.eof = true;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            // A reset connection ends the stream like a clean close.
            eprintln!("SSE read error: {e}");
            self.eof = true;
        }
    }

    /// The next event, or `None` when the stream ended. Panics after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        timeout(limit, self.next_inner())
            .await
            .unwrap_or_else(|_| panic!("no SSE event within {limit:?}"))
    }

    async fn next_inner(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                if let Some(ev) = parse_block(&text) {
                    return Some(ev);
                }
                continue;
            }
            if self.eof {
                return None;
            }
            self.fill().await;
        }
    }

    /// `line` events until `end` (inclusive) or the end of the stream.
    pub async fn until_end(&mut self, limit: Duration) -> (Vec<SseEvent>, Option<SseEvent>) {
        let mut lines = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(ev) if ev.event == "end" => return (lines, Some(ev)),
                Some(ev) => lines.push(ev),
                None => return (lines, None),
            }
        }
    }
}

/// `None` for a comment-only block.
fn parse_block(text: &str) -> Option<SseEvent> {
    let mut event = String::from("message");
    let mut id = None;
    let mut data: Vec<&str> = Vec::new();
    let mut any = false;
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        any = true;
        match field {
            "event" => event = value.to_owned(),
            "id" => id = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    any.then(|| SseEvent {
        event,
        id,
        data: data.join("\n"),
    })
}
