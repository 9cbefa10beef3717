-- Initial schema of the Oz control plane (SQLite).
--
-- Timestamps are fixed-width RFC 3339 UTC strings with microseconds
-- (`oz_store::ts`), so text order is time order. JSON values are stored as
-- TEXT. Tables are STRICT so that a wrongly typed bind fails loudly.

CREATE TABLE teams (
    id          TEXT NOT NULL PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id            TEXT NOT NULL PRIMARY KEY,
    team_id       TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('admin', 'team', 'worker')),
    -- First characters of the key, for people to recognise it.
    prefix        TEXT NOT NULL,
    -- Lower-case hex SHA-256 of the full key; the secret is never stored.
    hash          TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    revoked_at    TEXT
) STRICT;

CREATE INDEX api_keys_team ON api_keys (team_id, created_at);

CREATE TABLE runs (
    run_id               TEXT NOT NULL PRIMARY KEY,
    team_id              TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    state                TEXT NOT NULL CHECK (state IN (
                             'QUEUED', 'PENDING', 'CLAIMED', 'INPROGRESS',
                             'SUCCEEDED', 'FAILED', 'BLOCKED', 'ERROR', 'CANCELLED')),
    prompt               TEXT NOT NULL,
    title                TEXT NOT NULL,
    -- JSON object: the resolved AmbientAgentConfig.
    config               TEXT NOT NULL,
    -- JSON object of string values.
    metadata             TEXT NOT NULL DEFAULT '{}',
    source               TEXT NOT NULL,
    mode                 TEXT,
    worker_host          TEXT NOT NULL,
    -- Denormalised from the config for filters and sorting.
    name                 TEXT,
    model_id             TEXT,
    environment_id       TEXT,
    skill_spec           TEXT,
    schedule_id          TEXT,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    started_at           TEXT,
    ended_at             TEXT,
    -- JSON StatusMessage.
    status_message       TEXT,
    execution_id         TEXT,
    holder               TEXT,
    assigned_at          TEXT,
    cancel_requested_at  TEXT,
    -- SHA-256 (hex) of the run-scoped token; cleared when the run ends.
    token_hash           TEXT,
    -- JSON array of artifacts.
    artifacts            TEXT NOT NULL DEFAULT '[]'
) STRICT;

-- The dispatcher's queue: QUEUED runs, oldest first.
CREATE INDEX runs_queue ON runs (state, created_at, run_id);
-- Listing, default sort and created_at sort.
CREATE INDEX runs_team_updated ON runs (team_id, updated_at, run_id);
CREATE INDEX runs_team_created ON runs (team_id, created_at, run_id);
-- Run-scoped token lookups.
CREATE INDEX runs_token_hash ON runs (token_hash) WHERE token_hash IS NOT NULL;
-- Runs routed to one worker.
CREATE INDEX runs_worker_host ON runs (worker_host, state);
