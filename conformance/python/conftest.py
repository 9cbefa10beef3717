"""Session fixtures: the real `oz-server` and a real `oz-agent-worker` (Direct
backend, the built `oz` as its agent runner), and strict SDK clients.

The binaries come from $OZ_BIN_DIR (default: <repo>/target/debug); build
them first: cargo build --locked --bin oz-server --bin oz-agent-worker --bin oz
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator, List, Tuple

import httpx
import pytest
from oz_agent_sdk import OzAPI

import ozconf
from ozconf import WAIT_S, WORKER_ID, Stack

REPO = Path(__file__).resolve().parents[2]

def pytest_configure(config: pytest.Config) -> None:
    for name, what in [
        ("runs", "agent.run and agent.runs.*"),
        ("schedules", "agent.schedules.*"),
        ("identities", "agent.agent.* (agent identities)"),
        ("environments", "agent.list_environments and our environment extension"),
        ("skills", "agent.list (GET /agent)"),
        ("artifacts", "agent.get_artifact and our artifact upload extension"),
        ("redirects", "the two public redirect endpoints"),
        ("errors", "authentication and not-found errors"),
        ("typescript", "the official TypeScript SDK (conformance/typescript)"),
    ]:
        config.addinivalue_line("markers", f"{name}: {what}")


def _bin(name: str) -> Path:
    bin_dir = Path(os.environ.get("OZ_BIN_DIR") or REPO / "target" / "debug")
    path = (bin_dir if bin_dir.is_absolute() else REPO / bin_dir) / name
    if not path.is_file():
        pytest.exit(
            f"{path} is missing: build it first "
            "(cargo build --locked --bin oz-server --bin oz-agent-worker --bin oz) "
            "or set OZ_BIN_DIR",
            returncode=2,
        )
    return path


def _clean_env() -> dict:
    """This process's environment without settings that would change the stack."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OZ_") and k not in ("WARP_API_KEY",)
    }
    env["OZ_LOG"] = "info"
    env["NO_COLOR"] = "1"
    return env


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(lines[-n:])


def _stop(proc: subprocess.Popen, name: str) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within the bound."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        print(f"conformance: {name} did not stop on SIGTERM; killed")


def _start_server(tmp: Path) -> Tuple[subprocess.Popen, str]:
    log = open(tmp / "server.log", "ab")
    proc = subprocess.Popen(
        [
            str(_bin("oz-server")),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp / "data"),
            "--default-worker-host",
            WORKER_ID,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        env=_clean_env(),
    )
    log.close()
    found: List[str] = []
    ready = threading.Event()

    def read() -> None:
        # Read the address line, then keep draining stdout so the server
        # never blocks on a full pipe.
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            m = re.match(r"oz-server listening on http://(\S+)$", line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout=WAIT_S) or not found:
        _stop(proc, "oz-server")
        raise RuntimeError(
            "oz-server did not print its address; log:\n" + _tail(tmp / "server.log")
        )
    return proc, found[0]


def _create_key(addr: str, admin_key: str, kind: str) -> str:
    r = httpx.post(
        f"http://{addr}/api/v1/api-keys",
        headers={"Authorization": f"Bearer {admin_key}"},
        json={"name": f"conformance {kind}", "kind": kind},
        timeout=20,
    )
    assert r.status_code == 201, f"create {kind} key: {r.status_code} {r.text}"
    return r.json()["key"]


def _start_worker(tmp: Path, addr: str, worker_key: str) -> subprocess.Popen:
    config = tmp / "worker.yaml"
    # JSON strings are valid YAML scalars for any path.
    import json

    config.write_text(
        f"state_dir: {json.dumps(str(tmp / 'worker-state'))}\n"
        "backend:\n"
        "  direct:\n"
        f"    workspace_root: {json.dumps(str(tmp / 'workspaces'))}\n"
        f"    oz_path: {json.dumps(str(_bin('oz')))}\n"
        "    grace_period: 1s\n"
    )
    env = _clean_env()
    env["WARP_API_KEY"] = worker_key
    log = open(tmp / "worker.log", "ab")
    proc = subprocess.Popen(
        [
            str(_bin("oz-agent-worker")),
            "--worker-id",
            WORKER_ID,
            "--server-url",
            f"http://{addr}",
            "--config-file",
            str(config),
            # Runs that name no harness run their prompt as a shell script:
            # the SDK's harness enum has no "command", so the suite must not
            # put it in config.harness (strict clients would reject the echo).
            "-e",
            "OZ_DEFAULT_HARNESS=command",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
    )
    log.close()
    return proc


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="oz-conformance-"))
    procs: List[Tuple[subprocess.Popen, str]] = []
    try:
        server, addr = _start_server(tmp)
        procs.append((server, "oz-server"))
        admin_key = (tmp / "data" / "admin-api-key").read_text().strip()
        team_key = _create_key(addr, admin_key, "team")
        worker_key = _create_key(addr, admin_key, "worker")
        worker = _start_worker(tmp, addr, worker_key)
        procs.insert(0, (worker, "oz-agent-worker"))

        def connected() -> bool:
            if worker.poll() is not None:
                raise RuntimeError(
                    f"oz-agent-worker exited with {worker.returncode}; log:\n"
                    + _tail(tmp / "worker.log")
                )
            r = httpx.get(
                f"http://{addr}/api/v1/workers",
                headers={"Authorization": f"Bearer {admin_key}"},
                timeout=10,
            )
            return r.status_code == 200 and any(
                w.get("worker_id") == WORKER_ID and w.get("max_concurrent_tasks") is not None
                for w in r.json().get("workers", [])
            )

        ozconf.wait_until("the worker to connect", connected)
        yield Stack(
            addr=addr,
            admin_key=admin_key,
            team_key=team_key,
            worker_key=worker_key,
            tmp=str(tmp),
        )
    finally:
        # Worker first: it drains and reports, then the server.
        for proc, name in procs:
            _stop(proc, name)
        failed = request.session.testsfailed > 0
        if failed:
            print(f"\nconformance: logs kept in {tmp}")
            for name in ("server.log", "worker.log"):
                print(f"--- last lines of {name} ---\n{_tail(tmp / name)}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def make_client(stack: Stack, api_key: str) -> OzAPI:
    """A strict SDK client: no retries, strict response validation."""
    return OzAPI(
        base_url=stack.api,
        api_key=api_key,
        max_retries=0,
        timeout=20.0,
        _strict_response_validation=True,
    )


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[OzAPI]:
    c = make_client(stack, stack.team_key)
    yield c
    c.close()


@pytest.fixture(scope="session")
def bad_client(stack: Stack) -> Iterator[OzAPI]:
    """A client whose API key the server has never issued."""
    c = make_client(stack, "ozk_" + "0" * 64)
    yield c
    c.close()


@pytest.fixture(scope="session")
def succeeded_run(client: OzAPI) -> object:
    """One run executed end to end by the real worker (shared by tests that
    need an ended run)."""
    created = client.agent.run(
        prompt="echo conformance-succeeded",
        title="conformance: succeeded run",
        config={"worker_host": WORKER_ID},
        metadata={"suite": "conformance"},
    )
    return ozconf.wait_terminal(client, created.run_id)
