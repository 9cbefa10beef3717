//! The result journal, `results/journal.jsonl`: the terminal frames of
//! finished tasks that were not yet written to the socket, so that a
//! restarted worker still delivers them.
//!
//! One JSON record per line, appended: `{"put":{…}}` when a task's terminal
//! frame is journaled (synced to disk before the frame can be sent), and
//! `{"done":{"task_id":…}}` once it was written to the socket (not synced:
//! after a crash such a result is sent again, as it would be if the worker
//! died between the write and the record). Whenever nothing in the file is
//! pending it is emptied, and when it grows large anyway it is rewritten
//! with only what is pending.
//!
//! One file for every task, because creating and deleting a file per task
//! cost more than anything else the worker does per task (inode allocation
//! in a directory with heavy churn, on ext4).
//!
//! Earlier versions wrote one `results/<task_id>.json` per result; those are
//! read at startup and folded into the journal.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oz_protocol::WorkerMessage;
use serde::{Deserialize, Serialize};

pub const JOURNAL_FILE: &str = "journal.jsonl";
/// Below this size the file is never rewritten to drop delivered results.
const COMPACT_AT: u64 = 64 * 1024;

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
    len: u64,
    /// The `put` line of every pending result, by task id.
    pending: HashMap<String, Vec<u8>>,
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
                rewrite = !bytes.is_empty();
                let mut rest = &bytes[..];
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
            pending: HashMap::new(),
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

    /// Journal a result; when this returns Ok it is on disk.
    pub fn put(&mut self, p: &Pending) -> io::Result<()> {
        let line = put_line(p)?;
        self.append(&line, true)?;
        self.pending.insert(p.task_id.clone(), line);
        Ok(())
    }

    /// The result of `task_id` was written to the socket (or dropped).
    pub fn done(&mut self, task_id: &str) {
        if self.pending.remove(task_id).is_none() {
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
                if self.len > COMPACT_AT && self.len > 4 * live {
                    self.rewrite()
                } else {
                    Ok(())
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
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            self.len = f.metadata()?.len();
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
            .write_all(line)
            .and_then(|()| if sync { f.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Never leave half a record before the next one.
                let _ = f.set_len(len);
                self.file = None;
                Err(e)
            }
        }
    }

    fn truncate(&mut self) -> io::Result<()> {
        self.file()?.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    /// Replace the file by one holding only the pending results.
    fn rewrite(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut len = 0u64;
            for line in self.pending.values() {
                f.write_all(line)?;
                len += line.len() as u64;
            }
            f.sync_data()?;
            fs::rename(&tmp, &self.path)?;
            Ok(len)
        })();
        match written {
            Ok(len) => {
                self.file = None;
                self.len = len;
                Ok(())
            }
            Err(e) => {
                remove_quietly(&tmp);
                Err(e)
            }
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
        // The file was rewritten with only what is pending.
        let text = fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(!text.contains("done"));
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
        // Small: kept, with a done line appended.
        assert!(size(dir.path()) > 0);
        let mut emptied = false;
        for i in 0..2000 {
            j.put(&pending(&format!("t{i}"), i)).unwrap();
            j.done(&format!("t{i}"));
            assert!(size(dir.path()) <= COMPACT_AT + 1024, "bounded");
            emptied |= size(dir.path()) == 0;
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
            size(dir.path()) <= COMPACT_AT + 1024,
            "{}",
            size(dir.path())
        );
        drop(j);
        let (_, list) = ResultJournal::open(dir.path()).unwrap();
        assert_eq!(ids(&list), ["keep"]);
    }

    #[test]
    fn a_torn_last_record_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, _) = ResultJournal::open(dir.path()).unwrap();
            j.put(&pending("a", 1)).unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        // A line that is no record, a put without a terminal frame, and a
        // put cut short by a crash.
        f.write_all(b"garbage\n{\"put\":{\"task_id\":\"x\",\"last_seq\":0,\"frame\":{\"type\":\"task_claimed\",\"data\":{\"task_id\":\"x\",\"worker_id\":\"w\"}}}}\n{\"put\":{\"task_id\":\"b\",\"la")
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
