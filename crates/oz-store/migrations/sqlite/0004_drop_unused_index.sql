-- runs_worker_host (worker_host, state) serves no query since the
-- dispatcher's runs_dispatch (team_id, worker_host, state, …) exists (every
-- query names the team), yet every state change rewrote an entry in it.
DROP INDEX IF EXISTS runs_worker_host;
