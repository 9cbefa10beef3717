-- Extension `logs`: the output of runs, line by line.
--
-- One row per (run, seq): the worker numbers every line of a run, and the
-- server stores each number once (INSERT OR IGNORE), so a frame sent twice
-- after a reconnect changes nothing. `data` holds the exact bytes of the
-- line without its newline; `is_text` says whether the worker sent them as
-- UTF-8 text (else base64), so they go back out the way they came in. A
-- gap marker has no bytes and `gap_bytes` set.

CREATE TABLE run_logs (
    run_id     TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL CHECK (seq > 0),
    ts         TEXT NOT NULL,
    stream     TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    phase      TEXT NOT NULL CHECK (phase IN ('setup', 'agent', 'teardown')),
    data       BLOB NOT NULL,
    is_text    INTEGER NOT NULL CHECK (is_text IN (0, 1)),
    newline    INTEGER NOT NULL CHECK (newline IN (0, 1)),
    gap_bytes  INTEGER CHECK (gap_bytes IS NULL OR gap_bytes >= 0),
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;

-- The seq of the run's last line, from `log_end`; NULL until then.
ALTER TABLE runs ADD COLUMN log_last_seq INTEGER;

-- Retention: runs that ended before a point in time.
CREATE INDEX runs_ended_at ON runs (ended_at) WHERE ended_at IS NOT NULL;
