//! Stored log lines and their conversion to and from the wire
//! [`LogLine`].
//!
//! A [`LogRecord`] holds the line's raw bytes, so what the worker sent is
//! kept byte for byte whether it came as UTF-8 `text` or as `data_b64`
//! (bytes that are not valid UTF-8). `is_text` remembers which of the two it
//! was, so a line goes back out in the same shape it came in.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use oz_protocol::logs::{LogLine, LogPhase, LogStream};

/// One stored line (or gap marker) of a run's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Per-run sequence number, from 1.
    pub seq: u64,
    /// RFC 3339 UTC, as the worker sent it.
    pub ts: String,
    pub stream: LogStream,
    pub phase: LogPhase,
    /// The line's bytes, without its newline.
    pub data: Vec<u8>,
    /// The bytes came as `text` (UTF-8) rather than `data_b64`.
    pub is_text: bool,
    /// The line ended with `\n`.
    pub newline: bool,
    /// A gap marker: this many bytes were dropped before this point.
    pub gap_bytes: Option<u64>,
}

/// Why a wire line cannot be stored as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log line {seq}: data_b64 is not valid base64: {reason}")]
pub struct InvalidLogLine {
    pub seq: u64,
    pub reason: String,
}

impl LogRecord {
    /// The record of a wire line. `text` wins when both `text` and
    /// `data_b64` are set (as [`LogLine::bytes`] reads it); a `data_b64`
    /// that does not decode is an error.
    pub fn from_line(line: &LogLine) -> Result<LogRecord, InvalidLogLine> {
        let (data, is_text) = match (&line.text, &line.data_b64) {
            (Some(t), _) => (t.as_bytes().to_vec(), true),
            (None, Some(b)) => {
                let bytes = STANDARD.decode(b).map_err(|e| InvalidLogLine {
                    seq: line.seq,
                    reason: e.to_string(),
                })?;
                (bytes, false)
            }
            (None, None) => (Vec::new(), false),
        };
        Ok(LogRecord {
            seq: line.seq,
            ts: line.ts.clone(),
            stream: line.stream,
            phase: line.phase,
            data,
            is_text,
            newline: line.newline,
            gap_bytes: line.gap_bytes,
        })
    }

    /// Like [`LogRecord::from_line`], but a line whose bytes cannot be
    /// decoded becomes a gap marker for about as many bytes, so that its
    /// seq is still accounted for.
    pub fn from_line_lossy(line: &LogLine) -> LogRecord {
        LogRecord::from_line(line).unwrap_or_else(|_| {
            let encoded = line.data_b64.as_ref().map_or(0, String::len) as u64;
            LogRecord {
                seq: line.seq,
                ts: line.ts.clone(),
                stream: line.stream,
                phase: line.phase,
                data: Vec::new(),
                is_text: false,
                newline: false,
                gap_bytes: Some(line.gap_bytes.unwrap_or(0) + encoded / 4 * 3),
            }
        })
    }

    /// The wire line: `text` when it came as text (and is UTF-8),
    /// `data_b64` otherwise; neither for a line without bytes that did not
    /// come as text (a gap marker).
    pub fn to_line(&self) -> LogLine {
        let (text, data_b64) = if self.is_text {
            match std::str::from_utf8(&self.data) {
                Ok(t) => (Some(t.to_owned()), None),
                Err(_) => (None, Some(STANDARD.encode(&self.data))),
            }
        } else if self.data.is_empty() {
            (None, None)
        } else {
            (None, Some(STANDARD.encode(&self.data)))
        };
        LogLine {
            seq: self.seq,
            ts: self.ts.clone(),
            stream: self.stream,
            phase: self.phase,
            text,
            data_b64,
            newline: self.newline,
            gap_bytes: self.gap_bytes,
        }
    }

    /// The bytes as written: the data plus `\n` when the line had one.
    pub fn raw(&self) -> Vec<u8> {
        let mut b = self.data.clone();
        if self.newline {
            b.push(b'\n');
        }
        b
    }
}

impl TryFrom<&LogLine> for LogRecord {
    type Error = InvalidLogLine;

    fn try_from(line: &LogLine) -> Result<Self, Self::Error> {
        LogRecord::from_line(line)
    }
}

impl From<&LogRecord> for LogLine {
    fn from(r: &LogRecord) -> Self {
        r.to_line()
    }
}

impl From<LogRecord> for LogLine {
    fn from(r: LogRecord) -> Self {
        r.to_line()
    }
}

/// Which lines [`crate::Store::read_logs`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub run_id: String,
    /// Only lines with a greater seq (0: from the start).
    pub after_seq: u64,
    pub limit: u32,
    /// Only lines of this phase.
    pub phase: Option<LogPhase>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(bytes: &[u8], newline: bool) -> LogLine {
        LogLine::new(
            7,
            "2026-03-01T12:00:00.000001Z".into(),
            LogStream::Stderr,
            LogPhase::Setup,
            bytes,
            newline,
        )
    }

    #[test]
    fn text_binary_empty_and_gap_lines_round_trip() {
        for l in [
            line(b"hello", true),
            line(b"", true),
            line(b"", false),
            line(&[0xff, 0xfe, 0, b'a', b'\n'], false),
            line("ünïcode".as_bytes(), false),
            LogLine::gap(8, "t".into(), LogStream::Stdout, LogPhase::Agent, 1234),
        ] {
            let r = LogRecord::from_line(&l).unwrap();
            assert_eq!(r.data, l.bytes(), "{l:?}");
            assert_eq!(r.raw(), l.raw(), "{l:?}");
            assert_eq!(r.to_line(), l, "round trip of {l:?}");
        }
    }

    #[test]
    fn invalid_utf8_keeps_its_bytes() {
        let bytes = [b'o', b'k', 0xc3, 0x28, 0x80];
        let l = line(&bytes, true);
        assert!(l.text.is_none());
        let r = LogRecord::from_line(&l).unwrap();
        assert!(!r.is_text);
        assert_eq!(r.data, bytes);
        assert_eq!(LogLine::from(&r).bytes(), bytes);
    }

    #[test]
    fn text_wins_over_data_b64_and_bad_base64_is_an_error() {
        let mut l = line(b"text", false);
        l.data_b64 = Some(STANDARD.encode(b"other"));
        assert_eq!(LogRecord::from_line(&l).unwrap().data, b"text");

        let mut bad = line(&[0xff], false);
        bad.data_b64 = Some("***not base64***".into());
        let err = LogRecord::from_line(&bad).unwrap_err();
        assert_eq!(err.seq, 7);
        let lossy = LogRecord::from_line_lossy(&bad);
        assert!(lossy.data.is_empty());
        assert!(lossy.gap_bytes.is_some_and(|n| n > 0));
        assert_eq!(lossy.seq, 7);
    }
}
