-- runs_dispatch held every run with its state in the key, so each state
-- change moved an entry (pending, claimed, in progress, ended: four per
-- run), while the dispatcher only ever asks for QUEUED runs. It now holds
-- only those. Filters on a worker id keep an index whose key never changes.
DROP INDEX runs_dispatch;
CREATE INDEX runs_dispatch ON runs (team_id, worker_host, created_at, run_id)
    WHERE state = 'QUEUED';
CREATE INDEX runs_team_worker ON runs (team_id, worker_host, created_at, run_id);
