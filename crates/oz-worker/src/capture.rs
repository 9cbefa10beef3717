//! Capture of a task's output: the stdout and stderr pipes of setup, agent
//! and teardown are drained continuously, split into lines, redacted, and
//! appended to the task's log spool.
//!
//! Lines: split on `\n`; a line longer than [`PIECE`] bytes goes out in
//! pieces of that size (`newline: false` on all but the last); the last line
//! of a stream without `\n` goes out at EOF with `newline: false`. Bytes are
//! kept exactly; what is not UTF-8 travels base64-encoded.
//!
//! Redaction runs on whole lines, so a secret written in several writes is
//! still caught. For the pieces of a long line, `max_secret_len - 1` bytes
//! are held back at each cut, so a secret across a piece boundary is caught
//! too. Values shorter than [`MIN_SECRET_LEN`] bytes are not treated as
//! secrets (else `1` or `true` would vanish from every line), and a
//! multi-line value is redacted line by line.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use oz_protocol::logs::{LogPhase, LogStream};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::spool::{Piece, Spool, now};

/// Longest piece of a line, in bytes of output.
pub const PIECE: usize = 64 * 1024;
/// Values shorter than this are not redacted.
pub const MIN_SECRET_LEN: usize = 6;
/// What replaces a secret.
pub const REDACTED: &[u8] = b"[REDACTED]";
/// How long pipes are still waited on after the task's processes were
/// swept: a process outside our reach (no marker, own session) may hold a
/// pipe open forever, and must not hold the task. Time spent waiting for
/// room in the spool (back-pressure) does not count.
pub const DRAIN_AFTER_SWEEP: Duration = Duration::from_secs(2);
/// How long, after a hook or the agent exited, its output may take to be
/// read before the next phase starts.
pub const SETTLE_BETWEEN_PHASES: Duration = Duration::from_millis(250);
const READ_CHUNK: usize = 64 * 1024;
/// A pipe's first read buffer. Most output fits, a trivial agent writes
/// nothing, and a read that fills it grows it to [`READ_CHUNK`]: zeroing
/// 64 KiB for each of a task's pipes cost more than the rest of a trivial
/// task's reading.
const FIRST_READ: usize = 4 * 1024;

/// A fixed set of secret values.
#[derive(Debug)]
pub struct SecretSet {
    /// Longest first, so the longest of two overlapping secrets wins.
    secrets: Vec<Vec<u8>>,
    first: Vec<bool>,
    max_len: usize,
}

impl Default for SecretSet {
    fn default() -> Self {
        SecretSet::new(std::iter::empty::<&[u8]>())
    }
}

impl SecretSet {
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        for v in values {
            for part in v.as_ref().split(|b| *b == b'\n') {
                let part = part.strip_suffix(b"\r").unwrap_or(part);
                if part.len() >= MIN_SECRET_LEN {
                    secrets.push(part.to_vec());
                }
            }
        }
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        let mut first = vec![false; 256];
        for s in &secrets {
            first[usize::from(s[0])] = true;
        }
        let max_len = secrets.first().map_or(0, Vec::len);
        SecretSet {
            secrets,
            first,
            max_len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Bytes to hold back at a cut so no secret is split.
    pub fn hold_back(&self) -> usize {
        self.max_len.saturating_sub(1)
    }

    fn match_at(&self, raw: &[u8], i: usize) -> Option<usize> {
        if !self.first[usize::from(raw[i])] {
            return None;
        }
        let rest = &raw[i..];
        self.secrets
            .iter()
            .find(|s| rest.starts_with(s))
            .map(Vec::len)
    }

    /// Redact the secrets that start before `limit` in `raw`, appending the
    /// result to `out`. Returns how many bytes of `raw` were consumed: at
    /// least `limit`, more when a secret straddles it.
    pub fn redact_prefix(&self, raw: &[u8], limit: usize, out: &mut Vec<u8>) -> usize {
        let limit = limit.min(raw.len());
        if self.secrets.is_empty() {
            out.extend_from_slice(&raw[..limit]);
            return limit;
        }
        let mut i = 0;
        let mut copied = 0;
        while i < limit {
            match self.match_at(raw, i) {
                Some(n) => {
                    out.extend_from_slice(&raw[copied..i]);
                    out.extend_from_slice(REDACTED);
                    i += n;
                    copied = i;
                }
                None => i += 1,
            }
        }
        let end = i.max(limit);
        out.extend_from_slice(&raw[copied..end]);
        end
    }

    pub fn redact(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len());
        self.redact_prefix(raw, raw.len(), &mut out);
        out
    }
}

/// The secrets of one task; values found later (the env file) are added.
#[derive(Debug, Default)]
pub struct Secrets {
    values: Mutex<Vec<Vec<u8>>>,
    set: RwLock<Arc<SecretSet>>,
}

impl Secrets {
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let s = Secrets::default();
        s.add(values);
        s
    }

    pub fn add<I, S>(&self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut all = self.values.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(values.into_iter().map(|v| v.as_ref().to_vec()));
        let set = Arc::new(SecretSet::new(all.iter()));
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = set;
    }

    pub fn current(&self) -> Arc<SecretSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Splits one stream into redacted lines and pieces.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// Raw bytes of the current line not yet emitted.
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feed bytes read from the stream; complete pieces go to `out`.
    pub fn push(&mut self, mut data: &[u8], secrets: &SecretSet, out: &mut Vec<Piece>) {
        while let Some(pos) = data.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&data[..pos]);
            self.emit_line(secrets, true, out);
            data = &data[pos + 1..];
        }
        self.pending.extend_from_slice(data);
        // A long line: emit pieces, holding back enough bytes that a secret
        // starting in a piece is seen whole.
        let hold = secrets.hold_back();
        while self.pending.len() > PIECE && self.pending.len() >= PIECE + hold {
            let cut = utf8_cut(&self.pending, PIECE);
            let mut bytes = Vec::with_capacity(cut);
            let used = secrets.redact_prefix(&self.pending, cut, &mut bytes);
            self.pending.drain(..used);
            out.push(Piece {
                bytes,
                newline: false,
            });
        }
    }

    /// End of the stream: the last line, if it had no `\n`.
    pub fn finish(&mut self, secrets: &SecretSet, out: &mut Vec<Piece>) {
        if !self.pending.is_empty() {
            self.emit_line(secrets, false, out);
        }
    }

    /// The whole rest of the line is known: every secret is visible.
    fn emit_line(&mut self, secrets: &SecretSet, newline: bool, out: &mut Vec<Piece>) {
        let raw = std::mem::take(&mut self.pending);
        let mut start = 0;
        loop {
            let rest = &raw[start..];
            let cut = if rest.len() <= PIECE {
                rest.len()
            } else {
                utf8_cut(rest, PIECE)
            };
            let mut bytes = Vec::with_capacity(cut);
            start += secrets.redact_prefix(rest, cut, &mut bytes);
            let last = start >= raw.len();
            out.push(Piece {
                bytes,
                newline: newline && last,
            });
            if last {
                break;
            }
        }
        // Keep the allocation for the next line when it is small.
        if raw.capacity() <= 2 * PIECE {
            self.pending = raw;
            self.pending.clear();
        }
    }
}

/// A cut near `n` that does not split a UTF-8 character (when the bytes
/// there are UTF-8 at all); never 0.
fn utf8_cut(b: &[u8], n: usize) -> usize {
    if n >= b.len() {
        return b.len();
    }
    let mut c = n;
    while c > 0 && n - c < 3 && (b[c] & 0xC0) == 0x80 {
        c -= 1;
    }
    if c == 0 || (b[c] & 0xC0) == 0x80 {
        n
    } else {
        c
    }
}

/// The output capture of one task: spawns a reader per pipe and waits for
/// them at the end.
pub struct TaskLog {
    spool: Arc<Spool>,
    task_id: Arc<str>,
    secrets: Arc<Secrets>,
    /// Each reader returns true when it stopped before the end of its pipe.
    readers: Mutex<Vec<JoinHandle<bool>>>,
    /// The task's processes were swept: readers get [`DRAIN_AFTER_SWEEP`]
    /// of waiting on their pipes from now on.
    swept: CancellationToken,
}

impl TaskLog {
    pub fn new(
        spool: Arc<Spool>,
        task_id: &str,
        execution_id: Option<String>,
        secrets: Secrets,
    ) -> Self {
        spool.begin(task_id, execution_id);
        TaskLog {
            spool,
            task_id: Arc::from(task_id),
            secrets: Arc::new(secrets),
            readers: Mutex::new(Vec::new()),
            swept: CancellationToken::new(),
        }
    }

    /// More values to redact from now on (the env file's, after setup).
    pub fn add_secrets<I, S>(&self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        self.secrets.add(values);
    }

    /// Take the child's stdout and stderr pipes and drain them.
    pub fn attach(&self, child: &mut Child, phase: LogPhase) {
        if let Some(out) = child.stdout.take() {
            self.spawn_reader(out, LogStream::Stdout, phase);
        }
        if let Some(err) = child.stderr.take() {
            self.spawn_reader(err, LogStream::Stderr, phase);
        }
    }

    fn spawn_reader<R>(&self, pipe: R, stream: LogStream, phase: LogPhase)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let handle = tokio::spawn(read_stream(
            pipe,
            stream,
            phase,
            self.spool.clone(),
            self.task_id.clone(),
            self.secrets.clone(),
            self.swept.clone(),
        ));
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    /// Wait up to `d` for the readers started so far to reach the end of
    /// their pipes; true when all did. Called between phases so that a
    /// phase's output comes before the next phase's (a process that keeps a
    /// pipe open costs that wait once).
    pub async fn settle(&self, d: Duration) -> bool {
        let handles = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = Instant::now() + d;
        let mut left = Vec::new();
        for mut h in handles {
            // A finished reader is reaped even after the deadline.
            if timeout_at(deadline, &mut h).await.is_err() {
                left.push(h);
            }
        }
        let all_done = left.is_empty();
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        left.append(&mut readers);
        *readers = left;
        all_done
    }

    /// Call after the task's processes were swept: wait for the pipes to
    /// close, each waited on for at most [`DRAIN_AFTER_SWEEP`], then stop
    /// reading. Every line read is in the spool when this returns.
    pub async fn close(&self) {
        self.swept.cancel();
        let handles = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|p| p.into_inner()));
        let mut cut = false;
        for h in handles {
            cut |= h.await.unwrap_or(false);
        }
        if cut {
            tracing::info!(
                run_id = %self.task_id,
                "a process outside the task's reach keeps its output open; no longer reading it"
            );
        }
    }
}

/// Drain one pipe into the spool; true when it stopped before the end of
/// the pipe (the drain time after the sweep ran out).
async fn read_stream<R>(
    mut pipe: R,
    stream: LogStream,
    phase: LogPhase,
    spool: Arc<Spool>,
    task_id: Arc<str>,
    secrets: Arc<Secrets>,
    swept: CancellationToken,
) -> bool
where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; FIRST_READ];
    let mut splitter = LineSplitter::default();
    let mut pieces = Vec::new();
    // Once swept: how much longer the pipe may be waited on.
    let mut drain_left: Option<Duration> = None;
    let mut cut = false;
    loop {
        // Back-pressure: with the spool full, stop reading (the task blocks
        // on its writes) until the control plane acknowledges lines.
        spool.room(&task_id).await;
        let read = match drain_left {
            None => tokio::select! {
                biased;
                // `read` is cancel-safe: nothing is lost by dropping it.
                _ = swept.cancelled() => {
                    drain_left = Some(DRAIN_AFTER_SWEEP);
                    continue;
                }
                r = pipe.read(&mut buf) => r,
            },
            Some(left) => {
                let started = Instant::now();
                match timeout(left, pipe.read(&mut buf)).await {
                    Ok(r) => {
                        drain_left = Some(left.saturating_sub(started.elapsed()));
                        r
                    }
                    Err(_) => {
                        cut = true;
                        break;
                    }
                }
            }
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(run_id = %task_id, stream = stream.as_str(), error = %e, "reading task output failed");
                break;
            }
        };
        let set = secrets.current();
        splitter.push(&buf[..n], &set, &mut pieces);
        if !pieces.is_empty() {
            spool.append(&task_id, stream, phase, &now(), &pieces);
            pieces.clear();
        }
        if n == buf.len() && buf.len() < READ_CHUNK {
            buf.resize(READ_CHUNK, 0);
        }
    }
    splitter.finish(&secrets.current(), &mut pieces);
    if !pieces.is_empty() {
        spool.append(&task_id, stream, phase, &now(), &pieces);
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], secrets: &SecretSet) -> Vec<Piece> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, secrets, &mut out);
        }
        s.finish(secrets, &mut out);
        out
    }

    fn joined(pieces: &[Piece]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in pieces {
            v.extend_from_slice(&p.bytes);
            if p.newline {
                v.push(b'\n');
            }
        }
        v
    }

    #[test]
    fn lines_and_a_last_line_without_newline() {
        let none = SecretSet::default();
        let p = split(&[b"a\nb", b"c\n\nlast"], &none);
        let want = [
            (&b"a"[..], true),
            (b"bc", true),
            (b"", true),
            (b"last", false),
        ];
        assert_eq!(p.len(), want.len());
        for (got, (bytes, nl)) in p.iter().zip(want) {
            assert_eq!(got.bytes, bytes);
            assert_eq!(got.newline, nl);
        }
        assert!(split(&[b"x\n"], &none).iter().all(|p| p.newline));
        assert!(split(&[], &none).is_empty());
    }

    #[test]
    fn long_lines_come_in_pieces_and_bytes_are_kept() {
        let none = SecretSet::default();
        let mut data = vec![b'x'; 3 * PIECE + 10];
        data.push(b'\n');
        data.extend_from_slice(&[0xff, 0xfe, b'\n']);
        for chunk in [7usize, 4096, 100_000] {
            let chunks: Vec<&[u8]> = data.chunks(chunk).collect();
            let p = split(&chunks, &none);
            assert_eq!(joined(&p), data, "chunk {chunk}");
            assert_eq!(p.len(), 5);
            assert!(p[..3].iter().all(|p| p.bytes.len() == PIECE && !p.newline));
            assert!(p[3].newline && p[3].bytes.len() == 10);
        }
        let exact = [vec![b'y'; PIECE], b"\n".to_vec()].concat();
        assert_eq!(split(&[&exact], &none).len(), 1);
    }

    #[test]
    fn pieces_do_not_split_utf8_characters() {
        let none = SecretSet::default();
        let mut data = vec![b'a'; PIECE - 1];
        data.extend_from_slice("é".as_bytes());
        data.extend_from_slice(b"tail\n");
        let p = split(&[&data], &none);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].bytes.len(), PIECE - 1);
        assert!(std::str::from_utf8(&p[1].bytes).is_ok());
        assert_eq!(joined(&p), data);
    }

    #[test]
    fn redaction_longest_first_and_short_values_ignored() {
        let s = SecretSet::new(["abcdef", "abcdefgh", "true", "line-one\nline-two"]);
        assert_eq!(
            s.redact(b"xabcdefghy abcdefz true"),
            b"x[REDACTED]y [REDACTED]z true"
        );
        assert_eq!(s.redact(b"line-one|line-two"), b"[REDACTED]|[REDACTED]");
        assert!(SecretSet::new(["12345"]).is_empty());
    }

    #[test]
    fn a_secret_split_across_writes_is_redacted() {
        let s = SecretSet::new(["s3cr3t-value"]);
        let p = split(&[b"tok=s3cr", b"3t-val", b"ue end\n"], &s);
        assert_eq!(joined(&p), b"tok=[REDACTED] end\n");
    }

    #[test]
    fn a_secret_across_a_piece_boundary_is_redacted() {
        let secret = b"0123456789-secret";
        let s = SecretSet::new([secret]);
        for offset in [PIECE - 5, PIECE - 1, PIECE, PIECE + 3] {
            for final_newline in [true, false] {
                let mut data = vec![b'z'; offset];
                data.extend_from_slice(secret);
                data.extend(vec![b'q'; PIECE]);
                if final_newline {
                    data.push(b'\n');
                }
                for chunk in [1000usize, 65536, data.len()] {
                    let chunks: Vec<&[u8]> = data.chunks(chunk).collect();
                    let p = split(&chunks, &s);
                    let out = joined(&p);
                    let want = [
                        vec![b'z'; offset],
                        REDACTED.to_vec(),
                        vec![b'q'; PIECE],
                        if final_newline {
                            b"\n".to_vec()
                        } else {
                            vec![]
                        },
                    ]
                    .concat();
                    assert_eq!(out, want, "offset {offset} chunk {chunk}");
                }
            }
        }
    }
}
