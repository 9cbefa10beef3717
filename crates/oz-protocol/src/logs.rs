//! Extension `logs`: a run's output, line by line, from worker to server.
//!
//! Negotiated: the control plane lists [`crate::ext::LOGS`] in
//! `server_hello`; a worker never sends these frames otherwise, and the
//! official control plane never sees them.
//!
//! Every line carries a per-run sequence number; the server stores each
//! `(task_id, seq)` once and acknowledges with `log_ack`, after which the
//! worker may forget the lines. `log_end` says which seq was the last, so a
//! reader knows when the log is complete.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Which step of the task produced a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogPhase {
    Setup,
    Agent,
    Teardown,
}

impl LogPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            LogPhase::Setup => "setup",
            LogPhase::Agent => "agent",
            LogPhase::Teardown => "teardown",
        }
    }

    pub fn parse(s: &str) -> Option<LogPhase> {
        match s {
            "setup" => Some(LogPhase::Setup),
            "agent" => Some(LogPhase::Agent),
            "teardown" => Some(LogPhase::Teardown),
            _ => None,
        }
    }
}

/// One line (or one piece of a very long line) of output, or a gap marker.
///
/// The bytes are `text` when they are valid UTF-8, else `data_b64`.
/// `newline` tells whether the original line ended with `\n` (the last line
/// of an output may not; a piece of a long line does not), so the exact
/// bytes are the concatenation of every line's bytes plus `\n` where
/// `newline` is true. A gap marker has no bytes and `gap_bytes` set: that
/// many bytes were dropped (spool bound) before this point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    /// RFC 3339 UTC with microseconds.
    pub ts: String,
    pub stream: LogStream,
    pub phase: LogPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    #[serde(default)]
    pub newline: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_bytes: Option<u64>,
}

impl LogLine {
    /// A line carrying `bytes` (text when valid UTF-8).
    pub fn new(
        seq: u64,
        ts: String,
        stream: LogStream,
        phase: LogPhase,
        bytes: &[u8],
        newline: bool,
    ) -> Self {
        let (text, data_b64) = match std::str::from_utf8(bytes) {
            Ok(t) => (Some(t.to_owned()), None),
            Err(_) => (None, Some(STANDARD.encode(bytes))),
        };
        LogLine {
            seq,
            ts,
            stream,
            phase,
            text,
            data_b64,
            newline,
            gap_bytes: None,
        }
    }

    /// A marker for `dropped` bytes lost before this point.
    pub fn gap(seq: u64, ts: String, stream: LogStream, phase: LogPhase, dropped: u64) -> Self {
        LogLine {
            seq,
            ts,
            stream,
            phase,
            text: None,
            data_b64: None,
            newline: false,
            gap_bytes: Some(dropped),
        }
    }

    /// The line's bytes, without the newline. Undecodable base64 gives none.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.text, &self.data_b64) {
            (Some(t), _) => t.as_bytes().to_vec(),
            (None, Some(b)) => STANDARD.decode(b).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    /// Bytes plus the newline when it had one: what was written.
    pub fn raw(&self) -> Vec<u8> {
        let mut b = self.bytes();
        if self.newline {
            b.push(b'\n');
        }
        b
    }

    /// Size of the line on the wire, roughly (for batching).
    pub fn approx_size(&self) -> usize {
        64 + self.text.as_ref().map_or(0, String::len)
            + self.data_b64.as_ref().map_or(0, String::len)
    }
}

/// `log_lines.data`, worker → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLines {
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    pub lines: Vec<LogLine>,
}

/// `log_end.data`, worker → server: `last_seq` was the task's last line
/// (0 when it wrote nothing). Sent before the terminal frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEnd {
    pub task_id: String,
    /// The execution whose lines ended (absent from older workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    pub last_seq: u64,
}

/// `log_ack.data`, server → worker: every line of `task_id` with a seq up to
/// and including `seq` is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAck {
    #[serde(default)]
    pub task_id: String,
    #[serde(default)]
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_lines_round_trip() {
        let l = LogLine::new(
            1,
            "t".into(),
            LogStream::Stdout,
            LogPhase::Agent,
            b"hello",
            true,
        );
        assert_eq!(l.text.as_deref(), Some("hello"));
        assert_eq!(l.raw(), b"hello\n");
        let bin = LogLine::new(
            2,
            "t".into(),
            LogStream::Stderr,
            LogPhase::Setup,
            &[0xff, 0x00, b'a'],
            false,
        );
        assert!(bin.text.is_none());
        assert_eq!(bin.bytes(), vec![0xff, 0x00, b'a']);
        let json = serde_json::to_string(&bin).unwrap();
        let back: LogLine = serde_json::from_str(&json).unwrap();
        assert_eq!(back, bin);
        let gap = LogLine::gap(3, "t".into(), LogStream::Stdout, LogPhase::Agent, 99);
        assert!(gap.raw().is_empty());
        assert_eq!(gap.gap_bytes, Some(99));
    }
}
