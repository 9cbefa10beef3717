//! The result journal, `results/journal.jsonl`: the terminal frames of
//! finished tasks that were not yet written to the socket, so that a
//! restarted worker still delivers them.
//!
//! One JSON record per line: `{"put":{…}}` when a task's terminal frame is
//! journaled (synced to disk before the frame can be sent), and
//! `{"done":{"task_id":…}}` once it was written to the socket (not synced:
//! after a crash such a result is sent again, as it would be if the worker
//! died between the write and the record). Whenever nothing in the file is
//! pending and it has grown it is emptied, and when it grows large anyway it
//! is rewritten with only what is pending.
//!
//! That rewrite writes and syncs a new file, renames it over the old one and
//! syncs the directory: milliseconds on a journaled disk, and on a busy
//! worker it is due every few hundred results (each time the file fills up
//! while other results wait). With a syncer running
//! ([`ResultJournal::set_background`]) it is made there, off the worker's
//! event loop: [`ResultJournal::begin_compaction`] takes a snapshot of what
//! is pending, [`Compaction::build`] writes and syncs the new file on the
//! blocking pool while results go on being recorded and marked done in
//! memory only, and [`ResultJournal::finish_compaction`] appends what
//! changed meanwhile and renames. Until the syncer has synced that (and the
//! directory), none of the results recorded meanwhile is sent.
//!
//! The file keeps a fixed size ([`PREALLOC`] bytes, written as zeros once):
//! records overwrite the zeros after the last record, and emptying writes
//! zeros back. So the sync before a result is sent flushes a data block and
//! nothing else; a file that grew at each record made every sync a
//! file-system journal commit (size and block changes), which on a journaled
//! ext4 cost more than the rest of the worker's file work per task
//! (bench/REPORT.md). Readers stop at the first NUL byte: every sync makes
//! all bytes before its record durable, and JSON never holds a raw NUL, so a
//! NUL can only follow the last record that mattered.
//!
//! One file for every task, because creating and deleting a file per task
//! cost more than anything else the worker does per task (inode allocation
//! in a directory with heavy churn, on ext4).
//!
//! Earlier versions wrote one `results/<task_id>.json` per result; those are
//! read at startup and folded into the journal. Journals of earlier versions
//! (no zeros) read the same way.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oz_protocol::WorkerMessage;
use serde::{Deserialize, Serialize};

pub const JOURNAL_FILE: &str = "journal.jsonl";
/// Below this size the file is never rewritten to drop delivered results.
const COMPACT_AT: u64 = 64 * 1024;
/// The size the file is kept at: records up to [`COMPACT_AT`] and the
/// longest record after it fit without growing it.
pub const PREALLOC: u64 = 2 * COMPACT_AT;

/// A result waiting to be written to the socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub task_id: String,
    /// The task's last log seq (0: it wrote nothing).
    pub last_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    pub frame: WorkerMessage,
}

impl Pending {
    fn valid(&self) -> bool {
        oz_protocol::is_safe_path_component(&self.task_id)
            && self.frame.is_terminal()
            && self.frame.task_id() == self.task_id
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Put(Pending),
    Done { task_id: String },
}

#[derive(Debug)]
pub struct ResultJournal {
    path: PathBuf,
    file: Option<File>,
    /// Where the records end (the next one is written here); the file is
    /// zeros from there to its end.
    len: u64,
    /// Results recorded so far (a result's ticket is the count after it)
    /// and the count a sync was last started for.
    written: u64,
    sync_started: u64,
    /// The `put` line of every pending result, by task id.
    pending: HashMap<String, Vec<u8>>,
    /// Compactions are left to the syncer ([`ResultJournal::set_background`]).
    background: bool,
    /// The file should be compacted (set with `background`).
    compaction_due: bool,
    /// Compact only past this length: [`COMPACT_AT`], or more after a
    /// compaction failed (so that a full disk is not retried at every
    /// result).
    compact_at: u64,
    /// The last rename is not known to be on disk: every sync includes the
    /// directory until one succeeds.
    dir_unsynced: bool,
    /// While a compaction is built: the pending lines it holds. Records and
    /// dones meanwhile change only `pending`; the difference is appended
    /// when it finishes.
    compacting: Option<HashMap<String, Vec<u8>>>,
    /// Compactions finished in the background (for tests).
    compactions: u64,
}

/// A compaction in progress: the new file to write, off the event loop.
#[derive(Debug)]
pub struct Compaction {
    tmp: PathBuf,
    lines: Vec<Vec<u8>>,
}

impl Compaction {
    /// Write the snapshot into a new file, zeros after it, and sync it:
    /// the slow part, for the blocking pool. The file and the length of
    /// its records.
    pub fn build(self) -> io::Result<(File, u64)> {
        write_new(&self.tmp, self.lines.iter())
    }
}

/// A sync for the syncer to make: the file (its data), the directory too
/// after a rename, and the ticket it covers once done.
#[derive(Debug)]
pub struct ToSync {
    pub file: io::Result<File>,
    pub dir: Option<PathBuf>,
    pub ticket: u64,
}

impl ToSync {
    /// Make it (blocking); the directory is synced even if the file could
    /// not be. The first error.
    pub fn run(self) -> io::Result<()> {
        let data = self.file.and_then(|f| f.sync_data());
        let dir = match self.dir {
            Some(dir) => File::open(dir).and_then(|d| d.sync_all()),
            None => Ok(()),
        };
        data.and(dir)
    }
}

impl ResultJournal {
    /// Open the journal in `dir` and return what is pending, in the order
    /// it was journaled. The file is rewritten with only that (and per-task
    /// files of earlier versions are folded in and removed).
    pub fn open(dir: &Path) -> io::Result<(ResultJournal, Vec<Pending>)> {
        let path = dir.join(JOURNAL_FILE);
        let mut order: Vec<String> = Vec::new();
        let mut found: HashMap<String, Pending> = HashMap::new();
        let mut rewrite = false;
        match fs::read(&path) {
            Ok(bytes) => {
                let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
                // Anything but zeros is rewritten away, also after the first
                // NUL: an emptying cut short by a crash can leave old records
                // there, which new ones would otherwise grow into.
                rewrite = bytes.iter().any(|b| *b != 0);
                let mut rest = &bytes[..end];
                while !rest.is_empty() {
                    let (line, complete) = match rest.iter().position(|b| *b == b'\n') {
                        Some(i) => (&rest[..i], true),
                        None => (rest, false),
                    };
                    rest = &rest[(line.len() + 1).min(rest.len())..];
                    match serde_json::from_slice::<Record>(line) {
                        Ok(Record::Put(p)) if p.valid() => {
                            if !found.contains_key(&p.task_id) {
                                order.push(p.task_id.clone());
                            }
                            found.insert(p.task_id.clone(), p);
                        }
                        Ok(Record::Put(_)) => {
                            tracing::warn!(path = %path.display(), "ignoring a journaled result that does not hold a terminal frame");
                        }
                        Ok(Record::Done { task_id }) => {
                            found.remove(&task_id);
                        }
                        // A crash in the middle of an append: that result
                        // was never synced, so never sent either.
                        Err(_) if !complete => {}
                        Err(err) => {
                            tracing::warn!(path = %path.display(), error = %err, "ignoring an unreadable line of the result journal");
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut legacy = Vec::new();
        for dirent in fs::read_dir(dir)? {
            let p = dirent?.path();
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                remove_quietly(&p);
                continue;
            }
            if name == JOURNAL_FILE || !name.ends_with(".json") {
                continue;
            }
            let read = fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Pending>(&b).map_err(|e| e.to_string()));
            match read {
                Ok(j) if j.valid() => {
                    if !found.contains_key(&j.task_id) {
                        order.push(j.task_id.clone());
                        found.insert(j.task_id.clone(), j);
                    }
                    legacy.push(p);
                }
                Ok(_) => {
                    tracing::warn!(path = %p.display(), "ignoring a result journal that does not hold a terminal frame");
                }
                Err(err) => {
                    tracing::warn!(path = %p.display(), error = %err, "ignoring an unreadable result journal");
                }
            }
        }
        let list: Vec<Pending> = order
            .into_iter()
            .filter_map(|id| found.remove(&id))
            .collect();
        let mut journal = ResultJournal {
            path,
            file: None,
            len: 0,
            written: 0,
            sync_started: 0,
            pending: HashMap::new(),
            background: false,
            compaction_due: false,
            compact_at: COMPACT_AT,
            dir_unsynced: false,
            compacting: None,
            compactions: 0,
        };
        for p in &list {
            journal.pending.insert(p.task_id.clone(), put_line(p)?);
        }
        if rewrite || !legacy.is_empty() {
            journal.rewrite()?;
            for p in legacy {
                remove_quietly(&p);
            }
        }
        Ok((journal, list))
    }

    /// A syncer takes over: results are [`ResultJournal::record`]ed and
    /// synced by it ([`ResultJournal::to_sync`]), and it makes the
    /// compactions ([`ResultJournal::begin_compaction`] when
    /// [`ResultJournal::compaction_due`]).
    pub fn set_background(&mut self, on: bool) {
        self.background = on;
    }

    /// Has a syncer taken over (see [`ResultJournal::set_background`])?
    pub fn background(&self) -> bool {
        self.background
    }

    /// Journal a result; when this returns Ok it is on disk. Only without a
    /// syncer: while a compaction is built it refuses.
    pub fn put(&mut self, p: &Pending) -> io::Result<()> {
        if self.compacting.is_some() {
            return Err(io::Error::other(
                "the result journal is being compacted by its syncer; results must be recorded for it",
            ));
        }
        self.record(p)?;
        self.file()?.sync_data()?;
        if let Some(dir) = self.unsynced_dir() {
            File::open(dir)?.sync_all()?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Write a result without syncing; it is on disk once a sync started
    /// after this call (see [`ResultJournal::to_sync`]) has returned. The
    /// result's ticket, for that comparison.
    pub fn record(&mut self, p: &Pending) -> io::Result<u64> {
        let line = put_line(p)?;
        if self.compacting.is_none() {
            self.append(&line, false)?;
        }
        self.pending.insert(p.task_id.clone(), line);
        self.written += 1;
        Ok(self.written)
    }

    /// What to sync for the results recorded since the last sync: a handle
    /// on the file (synced outside the caller's lock, so recording and
    /// marking results done go on meanwhile) and the ticket it covers.
    /// `None` when nothing waits. One sync covers every result recorded
    /// before it: the journal's group commit.
    pub fn to_sync(&mut self) -> Option<ToSync> {
        if self.sync_started >= self.written || self.compacting.is_some() {
            return None;
        }
        Some(self.sync_all_written())
    }

    /// The sync covering every result written so far, marked started. The
    /// file is the current one (after a rewrite the new file, already
    /// synced: cheap), with the directory while a rename is not known to be
    /// on disk.
    fn sync_all_written(&mut self) -> ToSync {
        self.sync_started = self.written;
        ToSync {
            file: self.file().and_then(|f| f.try_clone()),
            dir: self.unsynced_dir(),
            ticket: self.written,
        }
    }

    /// A sync that included the directory succeeded: the last rename is on
    /// disk.
    pub fn dir_synced(&mut self) {
        self.dir_unsynced = false;
    }

    fn unsynced_dir(&self) -> Option<PathBuf> {
        if self.dir_unsynced {
            self.path.parent().map(Path::to_path_buf)
        } else {
            None
        }
    }

    /// Is a compaction waiting for the syncer?
    pub fn compaction_due(&self) -> bool {
        self.compaction_due && self.compacting.is_none()
    }

    /// Start the compaction that is due: from now until
    /// [`ResultJournal::finish_compaction`] records and dones touch no file.
    pub fn begin_compaction(&mut self) -> Option<Compaction> {
        if !self.compaction_due() {
            return None;
        }
        self.compaction_due = false;
        let snapshot = self.pending.clone();
        let lines = snapshot.values().cloned().collect();
        self.compacting = Some(snapshot);
        Some(Compaction {
            tmp: self.tmp_path(),
            lines,
        })
    }

    /// End the compaction with what [`Compaction::build`] returned: append
    /// what changed meanwhile to the new file and rename it over the old
    /// one, or, if it could not be built, to the old file. The sync that
    /// then makes every result recorded so far durable.
    pub fn finish_compaction(&mut self, built: io::Result<(File, u64)>) -> ToSync {
        let snapshot = self.compacting.take().unwrap_or_default();
        let installed = built.and_then(|(f, len)| {
            let delta = self.delta(&snapshot)?;
            f.write_all_at(&delta, len)?;
            fs::rename(self.tmp_path(), &self.path)?;
            Ok((f, len + delta.len() as u64))
        });
        match installed {
            Ok((f, len)) => {
                self.file = Some(f);
                self.len = len;
                self.compactions += 1;
                self.compact_at = COMPACT_AT;
                // The rename is on disk only once the directory is synced.
                self.dir_unsynced = true;
            }
            Err(err) => {
                self.compact_at = self.len + COMPACT_AT;
                tracing::warn!(path = %self.path.display(), error = %err, "cannot compact the result journal; it keeps growing");
                if let Err(err) = self.abandon_compaction(&snapshot) {
                    tracing::error!(path = %self.path.display(), error = %err, "cannot write the results recorded during a compaction to the result journal; they are kept in memory only");
                }
            }
        }
        self.sync_all_written()
    }

    /// A compaction that will not be installed: the half-built file goes,
    /// and what changed since `snapshot` is appended to the old file.
    fn abandon_compaction(&mut self, snapshot: &HashMap<String, Vec<u8>>) -> io::Result<()> {
        remove_quietly(&self.tmp_path());
        let delta = self.delta(snapshot)?;
        self.append(&delta, false)
    }

    /// Compactions finished in the background so far.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// The records that take a file holding `snapshot` to what is pending
    /// now: a `done` for each result no longer pending, then the `put` of
    /// each result recorded (or recorded again) since.
    fn delta(&self, snapshot: &HashMap<String, Vec<u8>>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for task_id in snapshot.keys().filter(|id| !self.pending.contains_key(*id)) {
            out.extend(record_line(&Record::Done {
                task_id: task_id.clone(),
            })?);
        }
        for (task_id, line) in &self.pending {
            if snapshot.get(task_id) != Some(line) {
                out.extend_from_slice(line);
            }
        }
        Ok(out)
    }

    fn tmp_path(&self) -> PathBuf {
        self.path.with_extension("jsonl.tmp")
    }

    /// The result of `task_id` was written to the socket (or dropped).
    pub fn done(&mut self, task_id: &str) {
        if self.pending.remove(task_id).is_none() || self.compacting.is_some() {
            return;
        }
        let line = record_line(&Record::Done {
            task_id: task_id.to_owned(),
        });
        let result = match line.and_then(|l| self.append(&l, false)) {
            // Emptied only once it has grown: truncating after every task
            // is a file system metadata update per run (bench/REPORT.md).
            Ok(()) if self.pending.is_empty() && self.len > COMPACT_AT => self.truncate(),
            Ok(()) if self.pending.is_empty() => Ok(()),
            Ok(()) => {
                let live: u64 = self.pending.values().map(|l| l.len() as u64).sum();
                if self.len <= self.compact_at || self.len <= 4 * live {
                    Ok(())
                } else if self.background {
                    self.compaction_due = true;
                    Ok(())
                } else {
                    self.rewrite()
                }
            }
            Err(e) => Err(e),
        };
        if let Err(err) = result {
            // At worst the result is sent again after a restart.
            tracing::warn!(run_id = task_id, error = %err, path = %self.path.display(), "cannot record a delivered result in the result journal");
        }
    }

    /// Results journaled and not yet done.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&self.path)?;
            let size = f.metadata()?.len();
            if size < PREALLOC {
                // Real zeros, not a hole or fallocate: writing into either
                // allocates or converts blocks, a metadata change per sync.
                write_zeros(&f, size, PREALLOC - size)?;
                f.sync_data()?;
            }
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("result journal not open"))
    }

    fn append(&mut self, line: &[u8], sync: bool) -> io::Result<()> {
        let len = self.len;
        let f = self.file()?;
        let written = f
            .write_all_at(line, len)
            .and_then(|()| if sync { f.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Never leave half a record before the next one.
                let _ = write_zeros(f, len, line.len() as u64);
                self.file = None;
                Err(e)
            }
        }
    }

    /// Zeros over every record; the next one starts the file again. Not
    /// synced: after a crash the old records read as before (everything in
    /// them was done) or are partly zeros, which at worst sends a delivered
    /// result again.
    fn truncate(&mut self) -> io::Result<()> {
        let len = self.len;
        let f = self.file()?;
        if f.metadata()?.len() > PREALLOC {
            // Grown while many results waited: back to the usual size.
            f.set_len(PREALLOC)?;
        }
        write_zeros(f, 0, len.min(PREALLOC))?;
        self.len = 0;
        // Nothing left to compact.
        self.compaction_due = false;
        self.compact_at = COMPACT_AT;
        Ok(())
    }

    /// Replace the file by one holding only the pending results, on the
    /// caller's thread (at startup, and without a syncer).
    fn rewrite(&mut self) -> io::Result<()> {
        let tmp = self.tmp_path();
        let installed = write_new(&tmp, self.pending.values()).and_then(|(_, len)| {
            fs::rename(&tmp, &self.path)?;
            Ok(len)
        });
        let len = match installed {
            Ok(len) => len,
            Err(e) => {
                remove_quietly(&tmp);
                self.compact_at = self.len + COMPACT_AT;
                return Err(e);
            }
        };
        // The new file is in place from here on, whatever the directory
        // sync below says: later records must go to it.
        self.file = None;
        self.len = len;
        self.compact_at = COMPACT_AT;
        // The rename must be on disk before results written to the new
        // file are sent: their syncs flush data only, not the directory.
        self.dir_unsynced = true;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.dir_unsynced = false;
        Ok(())
    }
}

/// Create `path` holding `lines`, zeros after them up to [`PREALLOC`],
/// synced; the file and the length of the lines.
fn write_new<'a>(path: &Path, lines: impl Iterator<Item = &'a Vec<u8>>) -> io::Result<(File, u64)> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let mut len = 0u64;
    for line in lines {
        f.write_all(line)?;
        len += line.len() as u64;
    }
    if len < PREALLOC {
        write_zeros(&f, len, PREALLOC - len)?;
    }
    f.sync_data()?;
    Ok((f, len))
}

impl Drop for ResultJournal {
    /// A compaction cut short (the syncer stopped with the worker): what
    /// was recorded meanwhile goes to the old file, unsynced, as it would
    /// have without the compaction; the half-built file is removed (or, if
    /// its builder is still at it, at the next start).
    fn drop(&mut self) {
        if let Some(snapshot) = self.compacting.take()
            && let Err(err) = self.abandon_compaction(&snapshot)
        {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot write the results recorded during a compaction to the result journal");
        }
    }
}

fn record_line(r: &Record) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

fn put_line(p: &Pending) -> io::Result<Vec<u8>> {
    record_line(&Record::Put(p.clone()))
}

/// Write `n` zero bytes at `offset`.
fn write_zeros(f: &File, offset: u64, n: u64) -> io::Result<()> {
    const CHUNK: [u8; 8192] = [0; 8192];
    let mut done = 0;
    while done < n {
        let k = (n - done).min(CHUNK.len() as u64);
        // k <= 8192: the cast cannot truncate.
        f.write_all_at(&CHUNK[..k as usize], offset + done)?;
        done += k;
    }
    Ok(())
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_protocol::{MSG_COMPLETED, TaskCompleted};

    fn pending(task_id: &str, last_seq: u64) -> Pending {
        Pending {
            task_id: task_id.into(),
            last_seq,
            execution_id: Some(format!("e-{task_id}")),
            frame: WorkerMessage::TaskCompleted(TaskCompleted {
                task_id: task_id.into(),
                message: MSG_COMPLETED.into(),
                task_state: None,
            }),
        }
    }

    fn ids(list: &[Pending]) -> Vec<&str> {
        list.iter().map(|p| p.task_id.as_str()).collect()
    }

    fn size(dir: &Path) -> u64 {
        fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len()
    }

    /// The records: the bytes before the first NUL.
    fn records(dir: &Path) -> Vec<u8> {
        let bytes = fs::read(dir.join(JOURNAL_FILE)).unwrap();
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        bytes[..end].to_vec()
    }

    fn used(dir: &Path) -> u64 {
        records(dir).len() as u64
    }

    #[test]
    fn what_is_put_and_not_done_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, list) = ResultJournal::open(dir.path()).unwrap();
            assert!(list.is_empty());
            j.put(&pending("a", 3)).unwrap();
            j.put(&pending("b", 0)).unwrap();
            j.put(&pending("c", 1)).unwrap();
            j.done("b");
            assert_eq!(j.pending(), 2);
        }
        let (j, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["a", "c"]);
        assert_eq!(list[0].last_seq, 3);
        assert_eq!(list[0].execution_id.as_deref(), Some("e-a"));
        assert_eq!(j.pending(), 2);
        // The file was rewritten with only what is pending, then zeros.
        let text = String::from_utf8(records(dir.path())).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(!text.contains("done"));
        assert_eq!(size(dir.path()), PREALLOC);
    }

    #[test]
    fn the_file_is_emptied_once_grown_when_nothing_is_pending_and_never_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = ResultJournal::open(dir.path()).unwrap();
        j.put(&pending("a", 1)).unwrap();
        let ino = |d: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(d.join(JOURNAL_FILE)).unwrap().ino()
        };
        let first = ino(dir.path());
        j.done("a");
        // Small: kept, with a done line after the put.
        assert!(
            String::from_utf8(records(dir.path()))
                .unwrap()
                .contains("done")
        );
        let mut emptied = false;
        for i in 0..2000 {
            j.put(&pending(&format!("t{i}"), i)).unwrap();
            j.done(&format!("t{i}"));
            assert!(used(dir.path()) <= COMPACT_AT + 1024, "bounded");
            // The size never changes: a sync flushes data, no metadata.
            assert_eq!(size(dir.path()), PREALLOC);
            emptied |= used(dir.path()) == 0;
        }
        assert!(emptied, "emptied once it grew past {COMPACT_AT} bytes");
        assert_eq!(ino(dir.path()), first, "no file per result");
        // Whatever it holds now, nothing is pending after a restart.
        drop(j);
        let (mut j, again) = ResultJournal::open(dir.path()).unwrap();
        assert!(again.is_empty(), "{}", again.len());
        // Unknown or repeated ids are ignored.
        j.done("a");
        j.done("never");
        assert_eq!(j.pending(), 0);
    }

    #[test]
    fn a_journal_that_is_never_empty_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = ResultJournal::open(dir.path()).unwrap();
        j.put(&pending("keep", 1)).unwrap();
        for i in 0..2000 {
            j.put(&pending(&format!("t{i}"), i)).unwrap();
            j.done(&format!("t{i}"));
        }
        assert!(
            used(dir.path()) <= COMPACT_AT + 1024,
            "{}",
            used(dir.path())
        );
        assert_eq!(size(dir.path()), PREALLOC);
        drop(j);
        let (_, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["keep"]);
    }

    fn ino(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dir.join(JOURNAL_FILE)).unwrap().ino()
    }

    /// A journal left to a syncer, grown until a compaction is due while
    /// `keep` and `redo` wait.
    fn due_for_compaction(dir: &Path) -> ResultJournal {
        let (mut j, _) = ResultJournal::open(dir).unwrap();
        j.set_background(true);
        j.put(&pending("keep", 1)).unwrap();
        j.put(&pending("redo", 1)).unwrap();
        let mut i = 0;
        while !j.compaction_due() {
            j.put(&pending(&format!("t{i}"), i)).unwrap();
            j.done(&format!("t{i}"));
            i += 1;
            assert!(i < 10_000, "never due");
        }
        // Not rewritten on the caller's thread.
        assert!(used(dir) > COMPACT_AT);
        j
    }

    /// Meanwhile: one result is done, one recorded again, one new.
    fn change_meanwhile(j: &mut ResultJournal) {
        j.done("keep");
        j.record(&pending("redo", 2)).unwrap();
        j.record(&pending("new", 3)).unwrap();
    }

    fn reopened(dir: &Path) -> Vec<(String, u64)> {
        let (_, list) = ResultJournal::open(dir).unwrap();
        let mut v: Vec<(String, u64)> = list.into_iter().map(|p| (p.task_id, p.last_seq)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_background_compaction_keeps_what_changed_while_it_was_built() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = due_for_compaction(dir.path());
        let old = ino(dir.path());
        let before = records(dir.path());
        let c = j.begin_compaction().expect("due");
        assert!(j.begin_compaction().is_none(), "one at a time");
        change_meanwhile(&mut j);
        // Nothing is written to the old file while the new one is built, and
        // nothing is handed to the syncer either.
        assert_eq!(records(dir.path()), before);
        assert!(j.to_sync().is_none());
        let built = c.build();
        let job = j.finish_compaction(built);
        assert_eq!(job.ticket, j.written);
        assert!(job.dir.is_some(), "the rename is synced too");
        job.run().unwrap();
        // Until the syncer says the directory sync worked, every sync
        // includes it.
        j.record(&pending("more", 5)).unwrap();
        assert!(j.to_sync().unwrap().dir.is_some());
        j.dir_synced();
        j.record(&pending("more", 6)).unwrap();
        assert!(j.to_sync().unwrap().dir.is_none());
        j.done("more");
        assert_eq!(j.compactions(), 1);
        assert_ne!(ino(dir.path()), old, "a new file");
        assert_eq!(size(dir.path()), PREALLOC);
        assert!(used(dir.path()) < 4096, "{}", used(dir.path()));
        // Later records go to the new file.
        j.record(&pending("after", 4)).unwrap();
        drop(j);
        assert_eq!(
            reopened(dir.path()),
            [("after".into(), 4), ("new".into(), 3), ("redo".into(), 2)]
        );
    }

    #[test]
    fn a_compaction_that_cannot_be_built_leaves_the_old_file_complete() {
        // Failing to write the new file, and failing to rename it.
        for rename_fails in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let tmp = dir.path().join("journal.jsonl.tmp");
            let mut j = due_for_compaction(dir.path());
            let old = ino(dir.path());
            let c = j.begin_compaction().expect("due");
            change_meanwhile(&mut j);
            let built = if rename_fails {
                let built = c.build();
                assert!(tmp.exists());
                fs::remove_file(&tmp).unwrap();
                built
            } else {
                Err(io::Error::other("no space left"))
            };
            let job = j.finish_compaction(built);
            assert!(job.dir.is_none());
            job.run().unwrap();
            assert_eq!(j.compactions(), 0);
            assert_eq!(ino(dir.path()), old);
            assert!(!tmp.exists());
            // Not tried again at the next result: only once the file has
            // grown by as much again.
            j.put(&pending("x", 9)).unwrap();
            j.done("x");
            assert!(!j.compaction_due());
            drop(j);
            assert_eq!(
                reopened(dir.path()),
                [("new".into(), 3), ("redo".into(), 2)]
            );
        }
    }

    #[test]
    fn a_compaction_cut_short_by_a_stop_loses_nothing_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = due_for_compaction(dir.path());
        let c = j.begin_compaction().expect("due");
        change_meanwhile(&mut j);
        // The syncer stops (the worker exits) while the file is built.
        let _ = c.build();
        drop(j);
        assert_eq!(
            reopened(dir.path()),
            [("new".into(), 3), ("redo".into(), 2)]
        );
        assert!(!dir.path().join("journal.jsonl.tmp").exists());
    }

    #[test]
    fn a_torn_last_record_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, _) = ResultJournal::open(dir.path()).unwrap();
            j.put(&pending("a", 1)).unwrap();
        }
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        // After the last record: a line that is no record, a put without a
        // terminal frame, and a put cut short by a crash.
        f.write_all_at(b"garbage\n{\"put\":{\"task_id\":\"x\",\"last_seq\":0,\"frame\":{\"type\":\"task_claimed\",\"data\":{\"task_id\":\"x\",\"worker_id\":\"w\"}}}}\n{\"put\":{\"task_id\":\"b\",\"la", used(dir.path()))
            .unwrap();
        let (mut j, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["a"]);
        // Appends after the cut start on a clean line.
        j.put(&pending("c", 2)).unwrap();
        drop(j);
        let (_, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["a", "c"]);
    }

    #[test]
    fn a_journal_without_zeros_from_an_earlier_version_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = Vec::new();
        for (id, seq) in [("a", 1), ("b", 2)] {
            text.extend(put_line(&pending(id, seq)).unwrap());
        }
        text.extend(b"{\"done\":{\"task_id\":\"a\"}}\n");
        fs::write(dir.path().join(JOURNAL_FILE), &text).unwrap();
        let (mut j, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["b"]);
        assert_eq!(size(dir.path()), PREALLOC);
        j.put(&pending("c", 3)).unwrap();
        drop(j);
        let (_, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["b", "c"]);
    }

    #[test]
    fn records_after_the_first_nul_are_not_read() {
        // A crash while the file was being emptied: zeros, then old records.
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 100];
        bytes.extend(put_line(&pending("stale", 1)).unwrap());
        fs::write(dir.path().join(JOURNAL_FILE), &bytes).unwrap();
        let (mut j, list) = ResultJournal::open(dir.path()).unwrap();
        assert!(list.is_empty());
        j.put(&pending("new", 2)).unwrap();
        drop(j);
        let (_, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["new"]);
    }

    #[test]
    fn old_records_behind_zeros_are_cleared_before_new_ones_are_written() {
        // An emptying cut short by a crash: the first block is zeros, old
        // records (here a done for the task about to run again) follow.
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 8];
        bytes.extend(vec![b'\n'; 300]);
        bytes.extend(b"{\"done\":{\"task_id\":\"new\"}}\n");
        fs::write(dir.path().join(JOURNAL_FILE), &bytes).unwrap();
        let (mut j, list) = ResultJournal::open(dir.path()).unwrap();
        assert!(list.is_empty());
        j.put(&pending("new", 1)).unwrap();
        drop(j);
        let (_, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["new"]);
    }

    #[test]
    fn many_waiting_results_grow_the_file_and_it_shrinks_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = ResultJournal::open(dir.path()).unwrap();
        let n = 1000;
        for i in 0..n {
            j.put(&pending(&format!("t{i}"), i)).unwrap();
        }
        assert!(size(dir.path()) > PREALLOC, "{}", size(dir.path()));
        drop(j);
        let (mut j, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(list.len(), n as usize);
        for p in &list {
            j.done(&p.task_id);
        }
        assert_eq!(j.pending(), 0);
        // Compacted on the way down into a file of the usual size.
        assert_eq!(size(dir.path()), PREALLOC);
        assert!(used(dir.path()) <= COMPACT_AT + 1024);
        drop(j);
        let (_, list) = ResultJournal::open(dir.path()).unwrap();
        assert!(list.is_empty());
    }

    #[test]
    fn per_task_files_of_earlier_versions_are_folded_in() {
        let dir = tempfile::tempdir().unwrap();
        let old = pending("old", 4);
        fs::write(
            dir.path().join("old.json"),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        fs::write(dir.path().join("bad.json"), b"{").unwrap();
        fs::write(dir.path().join("x.json.tmp"), b"{").unwrap();
        let (_, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["old"]);
        assert_eq!(list[0].last_seq, 4);
        assert!(!dir.path().join("old.json").exists());
        assert!(!dir.path().join("x.json.tmp").exists());
        // An unreadable file is left for the operator.
        assert!(dir.path().join("bad.json").exists());
        let (_, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["old"]);
    }
}
