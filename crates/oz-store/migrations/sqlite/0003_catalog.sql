-- The rest of the Oz API: schedules, agent identities, environments,
-- artifacts with content, handoff attachments, follow-ups; and the run
-- columns they need.

-- Who created the run and who executes it: JSON UserProfile snapshots, so a
-- renamed or revoked key does not rewrite history. `creator_id` (the key id)
-- and `agent_uid` are kept apart for the `creator` / `executor` filters.
ALTER TABLE runs ADD COLUMN creator_id TEXT;
ALTER TABLE runs ADD COLUMN creator TEXT;
ALTER TABLE runs ADD COLUMN agent_uid TEXT;
ALTER TABLE runs ADD COLUMN executor TEXT;
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE runs ADD COLUMN conversation_id TEXT;
-- JSON {cron_schedule, schedule_id, schedule_name} of the firing that made the run.
ALTER TABLE runs ADD COLUMN schedule TEXT;
-- Prompt of the current execution when it carries follow-ups (else the
-- run's own prompt is sent).
ALTER TABLE runs ADD COLUMN execution_prompt TEXT;
-- Follow-ups accepted but not yet given to an execution. Returned with every
-- terminal transition, so ending a run costs no extra query to learn it.
ALTER TABLE runs ADD COLUMN pending_followups INTEGER NOT NULL DEFAULT 0;
-- How many executions the run has had (the first assignment makes it 1).
ALTER TABLE runs ADD COLUMN executions INTEGER NOT NULL DEFAULT 0;
-- Workers number log lines from 1 in every execution; stored seq = base + seq,
-- so a later execution's lines follow the earlier ones.
ALTER TABLE runs ADD COLUMN log_seq_base INTEGER NOT NULL DEFAULT 0;
-- When the run last entered the queue as a new execution (its creation, or
-- a follow-up): the queue timeout counts from here.
ALTER TABLE runs ADD COLUMN queued_at TEXT NOT NULL DEFAULT '';
UPDATE runs SET queued_at = created_at;
DROP INDEX runs_queue;
CREATE INDEX runs_queue ON runs (state, queued_at, run_id);
-- Ended runs whose follow-ups still wait (normally none: a sweep finds them).
CREATE INDEX runs_pending_followups ON runs (run_id) WHERE pending_followups > 0;

-- The dispatcher's query: one worker id's queued runs, oldest first, without
-- walking the team's history (bench/REPORT.md, cause 4).
CREATE INDEX runs_dispatch ON runs (team_id, worker_host, state, created_at, run_id);
CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX runs_conversation ON runs (conversation_id) WHERE conversation_id IS NOT NULL;
CREATE INDEX runs_execution ON runs (execution_id) WHERE execution_id IS NOT NULL;

CREATE TABLE schedules (
    id                TEXT NOT NULL PRIMARY KEY,
    team_id           TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    cron_schedule     TEXT NOT NULL,
    enabled           INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    prompt            TEXT NOT NULL,
    -- JSON AmbientAgentConfig or NULL.
    agent_config      TEXT,
    agent_uid         TEXT,
    metadata          TEXT NOT NULL DEFAULT '{}',
    mode              TEXT,
    -- JSON UserProfile snapshots.
    created_by        TEXT,
    updated_by        TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    last_ran          TEXT,
    -- The next firing; NULL while paused. The scheduler claims a firing by
    -- moving this forward with a compare-and-set on its old value.
    next_run          TEXT,
    last_spawn_error  TEXT
) STRICT;

CREATE INDEX schedules_team ON schedules (team_id, name, id);
CREATE INDEX schedules_due ON schedules (next_run) WHERE enabled = 1 AND next_run IS NOT NULL;
CREATE INDEX runs_schedule ON runs (schedule_id) WHERE schedule_id IS NOT NULL;

CREATE TABLE agents (
    uid         TEXT NOT NULL PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    -- JSON object with every other field of the agent (worker_host,
    -- base_model, harness, environment_id, skills, secrets, memory, …).
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;

CREATE INDEX agents_team ON agents (team_id, created_at, uid);

CREATE TABLE environments (
    uid           TEXT NOT NULL PRIMARY KEY,
    team_id       TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    -- JSON CloudEnvironmentConfig.
    config        TEXT NOT NULL,
    -- JSON UserProfile snapshots.
    creator       TEXT,
    last_editor   TEXT,
    created_at    TEXT NOT NULL,
    last_updated  TEXT NOT NULL
) STRICT;

CREATE INDEX environments_team ON environments (team_id, last_updated, uid);
CREATE INDEX runs_environment ON runs (environment_id, created_at) WHERE environment_id IS NOT NULL;

-- File-like artifacts (FILE, SCREENSHOT, PLAN) with their content; the run's
-- `artifacts` JSON holds the entry that RunItem shows.
CREATE TABLE artifacts (
    uid            TEXT NOT NULL PRIMARY KEY,
    run_id         TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    team_id        TEXT NOT NULL,
    artifact_type  TEXT NOT NULL CHECK (artifact_type IN ('FILE', 'SCREENSHOT', 'PLAN')),
    filename       TEXT NOT NULL,
    filepath       TEXT NOT NULL,
    mime_type      TEXT NOT NULL,
    description    TEXT,
    title          TEXT,
    size_bytes     INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    content        BLOB NOT NULL
) STRICT;

CREATE INDEX artifacts_run ON artifacts (run_id);

CREATE TABLE handoff_attachments (
    id            TEXT NOT NULL PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    -- The execution that uploaded it; the API serves the latest ended one's.
    execution_id  TEXT NOT NULL,
    filename      TEXT NOT NULL,
    mime_type     TEXT,
    size_bytes    INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    content       BLOB NOT NULL
) STRICT;

CREATE INDEX handoff_run ON handoff_attachments (run_id, created_at);

CREATE TABLE followups (
    id            TEXT NOT NULL PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    message       TEXT NOT NULL,
    mode          TEXT,
    created_at    TEXT NOT NULL,
    -- 'next_execution': waits for the current execution to end;
    -- 'new_execution': the run had ended and was queued again for it.
    delivery      TEXT NOT NULL CHECK (delivery IN ('next_execution', 'new_execution')),
    -- Set when an execution takes it (the run's execution count then).
    execution     INTEGER
) STRICT;

CREATE INDEX followups_run ON followups (run_id, created_at, id);

-- Secrets the server keeps for itself (the key that signs download URLs),
-- shared by every replica of one database.
CREATE TABLE server_secrets (
    name   TEXT NOT NULL PRIMARY KEY,
    value  BLOB NOT NULL
) STRICT;
