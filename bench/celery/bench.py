#!/usr/bin/env python3
"""Celery with a Redis broker running the Oz benchmark's trivial task.

Starts its own redis-server on a free loopback port (no persistence) and,
for each concurrency N, a Celery worker with the prefork pool and
``--concurrency N``. The task (tasks.py) does what the Oz Direct worker does
for a trivial run: workspace directory, one child process that records its
start time, wait, workspace removed.

Measured for each N:

* dispatch latency: tasks submitted one at a time (the next after the
  previous one's result is in): from ``apply_async`` returning to the task's
  process starting (the timestamp it wrote) and to the result being
  available (``get`` returning); p50/p90/p99;
* throughput: a batch submitted with ``apply_async`` in a loop, then every
  result awaited; tasks/s from the first submission to the last result;
* memory: resident set (and proportional set) of the worker's processes, and
  of redis-server, idle after warm-up and again after the load.

Everything this starts is stopped on the way out, error or not.

Run: bash bench/celery/setup.sh && bench/celery/.venv/bin/python bench/celery/bench.py
"""

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "results", "celery.json")


def log(msg):
    print(f"[celery-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc


def proc_status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def proc_pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # Fields after the command name, which is in parentheses.
        rest = stat[stat.rindex(")") + 2 :].split()
        kids.setdefault(int(rest[1]), []).append(int(name))
    return kids


def process_tree(root):
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """CPU seconds spent by the whole machine, all cores, not idle."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal_guest = sum(fields[7:])  # steal, guest, guest_nice
    return (sum(fields) - idle - steal_guest) / CLK_TCK


def process_cpu_s(pid):
    """utime + stime of a process and of its reaped children."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    rest = stat[stat.rindex(")") + 2 :].split()
    return sum(int(x) for x in rest[11:15]) / CLK_TCK


class CpuMeter:
    """How much CPU the machine spent during a phase, and how much of it was
    not this benchmark's (another job on a shared machine skews numbers)."""

    def __init__(self, pids_fn):
        self.pids_fn = pids_fn
        self.start = self._sample()
        self.t0 = time.monotonic()

    def _sample(self):
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        ours += sum(process_cpu_s(p) for p in self.pids_fn() if p != os.getpid())
        return machine_busy_s(), ours

    def stop(self):
        busy1, ours1 = self._sample()
        busy = busy1 - self.start[0]
        ours = ours1 - self.start[1]
        return {
            "wall_s": round(time.monotonic() - self.t0, 2),
            "machine_busy_cpu_s": round(busy, 2),
            "benchmark_cpu_s": round(ours, 2),
            "other_cpu_s": round(max(0.0, busy - ours), 2),
        }


def memory_of(pids):
    rss = pss = 0
    alive = 0
    for pid in pids:
        r = proc_status_kib(pid, "VmRSS")
        p = proc_pss_kib(pid)
        if r is None:
            continue
        alive += 1
        rss += r
        pss += p or 0
    return {"processes": alive, "rss_kib": rss, "pss_kib": pss}


# ---------------------------------------------------------------- helpers


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[k - 1]


def summary_ms(values_ns):
    v = sorted(x / 1e6 for x in values_ns)
    if not v:
        return None
    r3 = lambda x: round(x, 3)  # noqa: E731
    return {
        "n": len(v),
        "p50": r3(pct(v, 50)),
        "p90": r3(pct(v, 90)),
        "p99": r3(pct(v, 99)),
        "mean": r3(statistics.fmean(v)),
        "min": r3(v[0]),
        "max": r3(v[-1]),
    }


def read_starts(out_dir):
    starts = {}
    for name in os.listdir(out_dir):
        with open(os.path.join(out_dir, name)) as f:
            text = f.read().strip()
        if text:
            starts[name] = int(text)
    return starts


def machine():
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = proc_meminfo_kib("MemTotal")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_kib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def proc_meminfo_kib(field):
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def stop_process(proc, name, grace=15.0, group=False):
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; with `group`, the
    whole process group goes too (the prefork pool's children)."""
    if proc is None:
        return
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop in {grace:.0f}s; killing it")
                proc.kill()
                proc.wait(timeout=5)
    finally:
        if group:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def compile_probe(tmp):
    """bench/agent/probe.c built as oz-bench's build.rs builds it (static if
    the C library allows); the path of the executable and how it was
    linked ("static" or "dynamic")."""
    src = os.path.join(os.path.dirname(HERE), "agent", "probe.c")
    exe = os.path.join(tmp, "oz-bench-probe")
    cc = os.environ.get("CC", "cc")
    base = [cc, "-O2", "-Wall", "-Wextra", "-o", exe, src]
    errors = []
    for extra in (["-static"], []):
        try:
            r = subprocess.run(base + extra, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise SystemExit(f"C compiler {cc!r} not found: install one or set CC (or use --agent sh-date)")
        if r.returncode == 0:
            if not extra:
                log("warning: the probe is linked dynamically (no static libc)")
                return exe, "dynamic"
            return exe, "static"
        errors.append(r.stderr)
    raise SystemExit(f"cannot compile {src}:\n" + "\n".join(errors))


# ---------------------------------------------------------------- redis


class Redis:
    def __init__(self, tmp):
        self.tmp = tmp
        self.proc = None
        self.port = None
        self.logfile = os.path.join(tmp, "redis.log")

    def start(self):
        exe = shutil.which("redis-server")
        if not exe:
            raise SystemExit("redis-server not found: run bash bench/celery/setup.sh")
        for _ in range(5):
            self.port = free_port()
            args = [
                exe,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", self.tmp,
                "--logfile", self.logfile,
            ]
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )
            if self._wait_ping(10.0):
                return
            stop_process(self.proc, "redis-server", grace=2)
            self.proc = None
        raise RuntimeError(f"redis-server did not start; see {self.logfile}")

    def _wait_ping(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.05)
        return False

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=0, decode_responses=True)

    def ping(self):
        import redis

        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.exceptions.ConnectionError:
            return False

    def version(self):
        with self.client() as c:
            return c.info("server")["redis_version"]

    def used_memory(self):
        with self.client() as c:
            return c.info("memory")["used_memory"]

    def delete_results(self):
        with self.client() as c:
            keys = list(c.scan_iter("celery-task-meta-*", count=1000))
            for i in range(0, len(keys), 500):
                c.delete(*keys[i : i + 500])
            return len(keys)

    def stop(self):
        stop_process(self.proc, "redis-server", grace=5, group=True)
        self.proc = None


# ---------------------------------------------------------------- worker


class Worker:
    def __init__(self, concurrency, redis_url, tmp):
        self.n = concurrency
        self.redis_url = redis_url
        self.logfile = os.path.join(tmp, f"worker-{concurrency}.log")
        self.proc = None

    def start(self, agent):
        env = dict(os.environ)
        env["OZ_BENCH_REDIS_URL"] = self.redis_url
        env["OZ_BENCH_AGENT"] = agent
        env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        args = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker",
            "--pool", "prefork",
            "--concurrency", str(self.n),
            "--loglevel", "WARNING",
            "--hostname", f"ozbench{self.n}@%h",
        ]
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(
                args, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def log_tail(self, lines=30):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, app, timeout=60.0):
        """Until the worker answers a ping and its pool has all N processes."""
        deadline = time.monotonic() + timeout
        name = f"ozbench{self.n}@{socket.gethostname()}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"celery worker exited {self.proc.returncode}:\n{self.log_tail()}"
                )
            replies = app.control.ping(destination=[name], timeout=0.5) or []
            if replies and len(process_tree(self.proc.pid)) >= self.n + 1:
                return
            time.sleep(0.1)
        raise RuntimeError(f"celery worker not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def memory(self):
        return memory_of(process_tree(self.proc.pid))

    def stop(self):
        stop_process(self.proc, f"celery worker (N={self.n})", grace=20, group=True)
        self.proc = None


# ---------------------------------------------------------------- phases


class Dirs:
    """Workspace root (the task's temporary root) and the agents' output
    directory of one phase."""

    def __init__(self, tmp, label):
        self.workspace_root = os.path.join(tmp, label, "workspaces")
        self.out = os.path.join(tmp, label, "out")
        os.makedirs(self.workspace_root)
        os.makedirs(self.out)

    def check_clean(self):
        left = os.listdir(self.workspace_root)
        if left:
            raise RuntimeError(f"{len(left)} workspaces left in {self.workspace_root}")


def run_batch(run, dirs, count, timeout):
    ids = [uuid.uuid4().hex for _ in range(count)]
    t0 = time.time_ns()
    results = [run.apply_async((i, dirs.workspace_root, dirs.out)) for i in ids]
    t_sent = time.time_ns()
    for r in results:
        r.get(timeout=timeout)
    t1 = time.time_ns()
    return ids, t0, t_sent, t1


def warm_up(run, tmp, n, timeout):
    dirs = Dirs(tmp, f"n{n}-warmup")
    ids, *_ = run_batch(run, dirs, max(2 * n, 4), timeout)
    if len(read_starts(dirs.out)) != len(ids):
        raise RuntimeError("warm-up: not every task's process ran")
    dirs.check_clean()


def latency_phase(run, tmp, n, count, timeout):
    dirs = Dirs(tmp, f"n{n}-latency")
    call_ns, returned = [], {}
    done_ns = []
    for _ in range(count):
        tid = uuid.uuid4().hex
        t_call = time.time_ns()
        r = run.apply_async((tid, dirs.workspace_root, dirs.out))
        t_ret = time.time_ns()
        r.get(timeout=timeout)
        t_done = time.time_ns()
        call_ns.append(t_ret - t_call)
        returned[tid] = t_ret
        done_ns.append(t_done - t_ret)
    starts = read_starts(dirs.out)
    missing = set(returned) - set(starts)
    if missing:
        raise RuntimeError(f"latency: {len(missing)} tasks left no start timestamp")
    dirs.check_clean()
    start_ns = [starts[tid] - returned[tid] for tid in returned]
    return {
        "tasks": count,
        "submit_to_process_start_ms": summary_ms(start_ns),
        "submit_to_result_ms": summary_ms(done_ns),
        "apply_async_call_ms": summary_ms(call_ns),
    }


def throughput_phase(run, tmp, n, batch, repeat, timeout):
    runs = []
    for k in range(repeat):
        dirs = Dirs(tmp, f"n{n}-throughput{k}")
        ids, t0, t_sent, t1 = run_batch(run, dirs, batch, timeout)
        starts = read_starts(dirs.out)
        if len(starts) != len(ids):
            raise RuntimeError(f"throughput: {len(ids) - len(starts)} tasks did not run")
        dirs.check_clean()
        secs = (t1 - t0) / 1e9
        runs.append({
            "tasks": batch,
            "seconds": round(secs, 3),
            "tasks_per_s": round(batch / secs, 1),
            "submit_seconds": round((t_sent - t0) / 1e9, 3),
            "first_to_last_process_start_s": round((max(starts.values()) - min(starts.values())) / 1e9, 3),
        })
        log(f"  N={n} batch {k + 1}/{repeat}: {batch} tasks in {secs:.2f}s = {batch / secs:.1f}/s")
    rates = [r["tasks_per_s"] for r in runs]
    return {
        "batch": batch,
        "runs": runs,
        "median_tasks_per_s": round(statistics.median(rates), 1),
        "best_tasks_per_s": max(rates),
    }


# ---------------------------------------------------------------- main


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,8,32",
                   help="comma-separated worker concurrencies (default 1,8,32)")
    p.add_argument("--latency-tasks", type=int, default=1000,
                   help="tasks submitted one at a time per concurrency (default 1000; 0 skips)")
    p.add_argument("--batch", type=int, default=2000,
                   help="tasks in one throughput batch (default 2000)")
    p.add_argument("--repeat", type=int, default=3,
                   help="throughput batches per concurrency (default 3)")
    p.add_argument("--idle-seconds", type=float, default=2.0,
                   help="quiet time before the idle memory sample (default 2)")
    p.add_argument("--task-timeout", type=float, default=120.0,
                   help="seconds to wait for any one result (default 120)")
    p.add_argument("--agent", choices=["probe", "sh-date"], default="probe",
                   help="the trivial agent: probe (bench/agent/probe.c, compiled here with cc, "
                        "as oz-bench does) or sh-date (/bin/sh running date +%%s%%N) (default probe)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, only to check that the benchmark works")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"JSON output file (default {os.path.relpath(DEFAULT_OUT)}); '-' for stdout")
    a = p.parse_args()
    if a.smoke:
        a.concurrency, a.latency_tasks, a.batch, a.repeat, a.idle_seconds = "1,2", 20, 40, 1, 0.5
    a.levels = [int(x) for x in a.concurrency.split(",") if x.strip()]
    if not a.levels or min(a.levels) < 1:
        p.error("--concurrency needs positive integers")
    return a


def raise_on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    args = parse_args()
    try:
        import billiard
        import celery
        import kombu
        import redis as redis_py
    except ImportError as e:
        raise SystemExit(f"{e}: run bash bench/celery/setup.sh and use bench/celery/.venv/bin/python")

    signal.signal(signal.SIGTERM, raise_on_signal)
    signal.signal(signal.SIGHUP, raise_on_signal)

    started = time.time()
    tmp = tempfile.mkdtemp(prefix="oz-celery-bench-")
    redis = Redis(tmp)
    worker = None
    try:
        redis.start()
        log(f"redis-server {redis.version()} on 127.0.0.1:{redis.port}")
        os.environ["OZ_BENCH_REDIS_URL"] = redis.url
        agent, agent_link = (compile_probe(tmp) if args.agent == "probe"
                             else ("sh-date", "script"))
        log(f"agent: {agent} ({agent_link})")
        sys.path.insert(0, HERE)
        import tasks

        app, run = tasks.app, tasks.run
        redis_empty = {"rss_kib": proc_status_kib(redis.proc.pid, "VmRSS"),
                       "used_memory_bytes": redis.used_memory()}

        levels = []
        for n in args.levels:
            log(f"N={n}: starting celery worker (prefork, concurrency {n})")
            worker = Worker(n, redis.url, tmp)
            worker.start(agent)
            worker.wait_ready(app)
            warm_up(run, tmp, n, args.task_timeout)
            time.sleep(args.idle_seconds)
            idle = {
                "worker": worker.memory(),
                "redis_rss_kib": proc_status_kib(redis.proc.pid, "VmRSS"),
                "redis_used_memory_bytes": redis.used_memory(),
            }
            log(f"N={n}: idle worker {idle['worker']['processes']} processes, "
                f"RSS {idle['worker']['rss_kib'] / 1024:.1f} MiB (PSS {idle['worker']['pss_kib'] / 1024:.1f} MiB); "
                f"redis RSS {idle['redis_rss_kib'] / 1024:.1f} MiB")
            level = {"concurrency": n, "memory_idle": idle}
            meter = CpuMeter(lambda: process_tree(worker.proc.pid) + [redis.proc.pid])
            if args.latency_tasks > 0:
                level["latency"] = latency_phase(run, tmp, n, args.latency_tasks, args.task_timeout)
                lat = level["latency"]
                log(f"N={n}: latency to process start p50 {lat['submit_to_process_start_ms']['p50']} ms, "
                    f"p99 {lat['submit_to_process_start_ms']['p99']} ms; to result p50 "
                    f"{lat['submit_to_result_ms']['p50']} ms, p99 {lat['submit_to_result_ms']['p99']} ms")
            if args.batch > 0 and args.repeat > 0:
                level["throughput"] = throughput_phase(run, tmp, n, args.batch, args.repeat, args.task_timeout)
            level["cpu"] = meter.stop()
            if level["cpu"]["other_cpu_s"] > max(0.5, 0.05 * level["cpu"]["wall_s"] * (os.cpu_count() or 1)):
                log(f"N={n}: warning: other processes used {level['cpu']['other_cpu_s']} CPU-s "
                    f"during these {level['cpu']['wall_s']} s; the machine was not quiet")
            level["memory_after_load"] = {
                "worker": worker.memory(),
                "redis_rss_kib": proc_status_kib(redis.proc.pid, "VmRSS"),
                "redis_used_memory_bytes": redis.used_memory(),
            }
            worker.stop()
            worker = None
            redis.delete_results()
            levels.append(level)

        result = {
            "bench": "celery",
            "description": "Celery (Redis broker and result backend, prefork pool) running "
                           "the trivial task: workspace dir, the trivial agent (see config.agent), "
                           "wait, workspace removed",
            "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 1),
            "smoke": args.smoke,
            "command": " ".join(["bench/celery/.venv/bin/python", "bench/celery/bench.py"] + sys.argv[1:]),
            "machine": machine(),
            "versions": {
                "celery": celery.__version__,
                "kombu": kombu.__version__,
                "billiard": billiard.__version__,
                "redis_py": redis_py.__version__,
                "redis_server": redis.version(),
                "python": platform.python_version(),
            },
            "config": {
                "agent": args.agent,
                "agent_link": agent_link,
                "concurrency": args.levels,
                "latency_tasks": args.latency_tasks,
                "batch": args.batch,
                "repeat": args.repeat,
                "pool": "prefork",
                "broker": "redis",
                "result_backend": "redis",
                "redis_persistence": "none (--save '' --appendonly no)",
            },
            "redis_empty": redis_empty,
            "levels": levels,
        }
    finally:
        if worker is not None:
            worker.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    text = json.dumps(result, indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        log(f"wrote {args.out} ({result['duration_s']} s)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        # Everything was stopped in main's `finally`; leave at once so that
        # Celery's result objects do not complain, while being collected,
        # about the redis-server that is gone.
        log(f"interrupted ({e or 'Ctrl-C'}); everything it started is stopped")
        sys.stderr.flush()
        os._exit(130)
    except Exception:
        import traceback

        traceback.print_exc()
        log("failed; everything it started is stopped")
        sys.stderr.flush()
        os._exit(1)
