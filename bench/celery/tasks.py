"""Celery side of the comparison: one task that does what the Oz Direct
worker does for a trivial run.

Per task: create a private workspace directory (0700) under a temporary
root, run the trivial agent in it as a child process with a minimal
environment and its stdout/stderr piped (the Oz worker captures both), wait
for it, remove the workspace, and return the exit status.

The agent writes the time it started, in nanoseconds since the epoch, to
``$OZ_BENCH_STAMPS/$TASK_ID``; bench.py reads those files to tell when each task's process
really started.

Broker and result backend come from OZ_BENCH_REDIS_URL (set by bench.py).
Everything else is Celery's default, as a user would have it.
"""

import os
import shutil
import subprocess

from celery import Celery

REDIS_URL = os.environ.get("OZ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("ozbench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)

# The same trivial agent the Oz benchmark runs: the probe bench.py compiled
# (its path in OZ_BENCH_AGENT), or, with OZ_BENCH_AGENT=sh-date, the shell
# script of the first reports.
SH_DATE = ["/bin/sh", "-c", 'date +%s%N > "$OZ_BENCH_STAMPS/$TASK_ID"']
_agent = os.environ.get("OZ_BENCH_AGENT", "sh-date")
AGENT = SH_DATE if _agent == "sh-date" else [_agent]


@app.task(name="ozbench.run")
def run(task_id: str, workspace_root: str, out_dir: str) -> int:
    if not task_id or "/" in task_id or task_id in (".", ".."):
        raise ValueError(f"invalid task id {task_id!r}")
    workspace = os.path.join(workspace_root, task_id)
    os.mkdir(workspace, 0o700)
    try:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": workspace,
            "OZ_BENCH_STAMPS": out_dir,
            "TASK_ID": task_id,
        }
        proc = subprocess.run(
            AGENT,
            cwd=workspace,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"agent exited {proc.returncode}: {proc.stderr.decode(errors='replace')[:200]}"
        )
    return proc.returncode
