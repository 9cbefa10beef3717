//! WAL checkpoints on a thread of their own.
//!
//! SQLite normally checkpoints inside the commit that takes the WAL past
//! `wal_autocheckpoint` pages: that commit copies the pages into the
//! database file and syncs both files, which on a journaled disk takes
//! milliseconds. The main connection runs on the server's runtime thread, so
//! that pause would hold up every request and WebSocket (bench/REPORT.md:
//! the POST round trip's p99 on a journaled ext4). Here a thread with its
//! own connection runs a PASSIVE checkpoint, which never blocks writers or
//! readers, every [`INTERVAL`]; the main connection keeps an automatic
//! threshold only as a backstop ([`BACKSTOP_PAGES`]).

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::db::describe;

/// How often the thread checkpoints.
pub(super) const INTERVAL: Duration = Duration::from_millis(200);

/// The main connection's own checkpoint threshold (40 MiB of WAL with 4 KiB
/// pages), reached only if the thread falls behind or is gone.
pub(super) const BACKSTOP_PAGES: i64 = 10_000;

/// SQLite's default threshold, for when the thread could not start.
pub(super) const DEFAULT_PAGES: i64 = 1_000;

/// How often a failing checkpoint is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The running checkpoint thread; stopping (or dropping) it waits for the
/// thread to finish its current checkpoint.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(conn: Connection, location: String) -> std::io::Result<Checkpointer> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("oz-sqlite-checkpoint".into())
            .spawn(move || run(&conn, &signal, &location))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    pub(super) fn stop(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the database checkpoint thread panicked");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(conn: &Connection, stop: &(Mutex<bool>, Condvar), location: &str) {
    let (flag, wake) = stop;
    let mut last_warning: Option<Instant> = None;
    loop {
        {
            let stopped = flag.lock().unwrap_or_else(PoisonError::into_inner);
            let (stopped, _) = wake
                .wait_timeout_while(stopped, INTERVAL, |stopped| !*stopped)
                .unwrap_or_else(PoisonError::into_inner);
            if *stopped {
                return;
            }
        }
        // (busy, frames in the WAL, frames copied): only the error matters.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            && last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY)
        {
            tracing::warn!(
                %location,
                error = %describe(&e),
                "checkpointing the database's write-ahead log failed; \
                 commits will checkpoint it themselves past the backstop"
            );
            last_warning = Some(Instant::now());
        }
    }
}
