"""Shared helpers of the conformance suite: the stack under test, a raw HTTP
helper for our extension endpoints, and polling without timing assertions."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Optional, TypeVar

import httpx

# Worker id of the real worker the suite starts; also the server's
# --default-worker-host, so runs without a worker host execute.
WORKER_ID = "conf-worker"
# Worker ids nobody serves: runs routed there stay QUEUED.
UNSERVED_HOST = "conf-nobody-serves-this"
AGENT_HOST = "conf-agent-host"
RUN_HOST = "conf-run-host"

TERMINAL = {"SUCCEEDED", "FAILED", "ERROR", "BLOCKED", "CANCELLED"}

# Upper bound for anything the suite waits on (a bound, not an assertion
# about speed: the real worker normally finishes a run in about a second).
WAIT_S = 60.0

T = TypeVar("T")


@dataclasses.dataclass
class Stack:
    """The running server and worker."""

    addr: str
    admin_key: str
    team_key: str
    worker_key: str
    tmp: str

    @property
    def root(self) -> str:
        return f"http://{self.addr}"

    @property
    def api(self) -> str:
        return f"http://{self.addr}/api/v1"

    def http(
        self,
        method: str,
        path: str,
        *,
        key: Optional[str] = "",
        **kw: Any,
    ) -> httpx.Response:
        """A plain request to `/api/v1{path}`; key "" = the team key, None = no auth."""
        headers = dict(kw.pop("headers", {}) or {})
        if key == "":
            key = self.team_key
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        with httpx.Client(timeout=20.0) as c:
            return c.request(method, f"{self.api}{path}", headers=headers, **kw)


def strict(type_: Any, value: Any) -> Any:
    """Validate a JSON value exactly as a strict SDK client validates a
    response (for our extension endpoints, which the SDK does not call)."""
    from oz_agent_sdk._models import validate_type

    return validate_type(type_=type_, value=value)


def tag() -> str:
    """A unique value to tell one test's runs from every other test's."""
    return uuid.uuid4().hex[:12]


def wait_until(what: str, f: Callable[[], Optional[T]], limit: float = WAIT_S) -> T:
    deadline = time.monotonic() + limit
    last: Any = None
    while True:
        last = f()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit:.0f}s waiting for {what}")
        time.sleep(0.1)


def wait_terminal(client: Any, run_id: str, limit: float = WAIT_S) -> Any:
    """Poll runs.retrieve (strict) until the run ends; returns the RunItem."""
    seen: list = []

    def ended() -> Any:
        run = client.agent.runs.retrieve(run_id)
        seen.append(run.state)
        return run if run.state in TERMINAL else None

    try:
        return wait_until(f"run {run_id} to end", ended, limit)
    except AssertionError as e:
        raise AssertionError(f"{e}; states seen: {sorted(set(seen))}") from None


def utc(dt: datetime) -> datetime:
    assert dt.tzinfo is not None, f"timestamp {dt!r} has no offset"
    return dt.astimezone(timezone.utc)


def not_found(call: Callable[[], Any]) -> Any:
    """Run `call`, which must fail with the SDK's NotFoundError for a missing
    *resource*: the router's "no such endpoint" 404 does not count (it means
    the endpoint itself is not implemented)."""
    import oz_agent_sdk

    try:
        got = call()
    except oz_agent_sdk.NotFoundError as e:
        body = e.body if isinstance(e.body, dict) else {}
        detail = str(body.get("detail") or body.get("error") or e.body)
        assert "no such endpoint" not in detail, f"endpoint not implemented: {detail}"
        assert e.status_code == 404
        return e
    raise AssertionError(f"expected NotFoundError (404), got {got!r}")


def cancel_quietly(client: Any, run_id: str) -> None:
    """Tidy up a run left QUEUED on an unserved host (best effort)."""
    try:
        client.agent.runs.cancel(run_id)
    except Exception:  # noqa: BLE001 - tidying only; the test already decided
        pass
