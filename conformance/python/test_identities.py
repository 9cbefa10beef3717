"""agent.agent.* (agent identities): create, get, update, list, delete, and
how an identity's defaults reach its runs (worker host: run > agent > server
default; model: run > agent base_model)."""

from __future__ import annotations

import uuid

import pytest
from oz_agent_sdk import OzAPI

import ozconf
from ozconf import AGENT_HOST, RUN_HOST, WORKER_ID, tag

pytestmark = pytest.mark.identities


def test_identity_lifecycle(client: OzAPI) -> None:
    t = tag()
    created = client.agent.agent.create(
        name=f"conf-agent-{t}",
        description="conformance identity",
        worker_host=AGENT_HOST,
        base_model="conf-agent-model",
    )
    assert created.uid
    assert created.name == f"conf-agent-{t}"
    assert created.description == "conformance identity"
    assert created.worker_host == AGENT_HOST
    assert created.base_model == "conf-agent-model"
    assert isinstance(created.available, bool)
    # Required fields with nothing set: empty, never null.
    assert created.default_runner_uid == ""
    assert created.skills == []
    assert created.secrets == []
    assert created.memory.attached_stores == []
    assert isinstance(created.memory.auto_memory.enabled, bool)
    assert created.updated_at >= created.created_at

    got = client.agent.agent.get(created.uid)
    assert (got.uid, got.name, got.worker_host, got.base_model) == (
        created.uid,
        created.name,
        AGENT_HOST,
        "conf-agent-model",
    )

    listed = client.agent.agent.list().agents
    assert created.uid in [a.uid for a in listed]

    # Partial update: keys not sent stay as they were.
    renamed = client.agent.agent.update(created.uid, name=f"conf-agent-{t}-renamed")
    assert renamed.name == f"conf-agent-{t}-renamed"
    assert renamed.worker_host == AGENT_HOST
    assert renamed.base_model == "conf-agent-model"
    assert renamed.description == "conformance identity"

    # "" clears.
    cleared = client.agent.agent.update(created.uid, worker_host="")
    assert cleared.worker_host in (None, ""), cleared.worker_host
    assert client.agent.agent.get(created.uid).worker_host in (None, "")
    assert cleared.name == f"conf-agent-{t}-renamed"

    # 204 No Content; the SDK returns None.
    raw = client.agent.agent.with_raw_response.delete(created.uid)
    assert raw.status_code == 204, raw.status_code
    assert raw.parse() is None
    ozconf.not_found(lambda: client.agent.agent.get(created.uid))
    ozconf.not_found(lambda: client.agent.agent.delete(created.uid))
    assert created.uid not in [a.uid for a in client.agent.agent.list().agents]


def test_identity_worker_host_precedence_for_runs(client: OzAPI) -> None:
    t = tag()
    agent = client.agent.agent.create(name=f"conf-route-{t}", worker_host=AGENT_HOST)
    made = []

    def run_host(**kw) -> str:
        run_id = client.agent.run(prompt=f"echo route {t}", metadata={"case": t}, **kw).run_id
        made.append(run_id)
        run = client.agent.runs.retrieve(run_id)
        assert run.agent_config is not None
        return run.agent_config.worker_host

    # No run-level host: the agent's.
    assert run_host(agent_identity_uid=agent.uid) == AGENT_HOST
    # The run's own host wins over the agent's.
    assert run_host(agent_identity_uid=agent.uid, config={"worker_host": RUN_HOST}) == RUN_HOST
    # Cleared on the agent: the server default.
    client.agent.agent.update(agent.uid, worker_host="")
    assert run_host(agent_identity_uid=agent.uid) == WORKER_ID
    # No agent at all: the server default.
    assert run_host() == WORKER_ID

    for run_id in made:
        ozconf.cancel_quietly(client, run_id)
    client.agent.agent.delete(agent.uid)


def test_identity_base_model_applies_to_runs(client: OzAPI) -> None:
    t = tag()
    agent = client.agent.agent.create(
        name=f"conf-model-{t}", worker_host=AGENT_HOST, base_model="conf-agent-model"
    )
    inherited = client.agent.run(prompt="echo m", agent_identity_uid=agent.uid).run_id
    own = client.agent.run(
        prompt="echo m", agent_identity_uid=agent.uid, config={"model_id": "conf-run-model"}
    ).run_id
    assert client.agent.runs.retrieve(inherited).agent_config.api_model_id == "conf-agent-model"
    assert client.agent.runs.retrieve(own).agent_config.api_model_id == "conf-run-model"
    for run_id in (inherited, own):
        ozconf.cancel_quietly(client, run_id)
    client.agent.agent.delete(agent.uid)


def test_identity_unknown_uid_is_not_found(client: OzAPI) -> None:
    unknown = str(uuid.uuid4())
    ozconf.not_found(lambda: client.agent.agent.get(unknown))
    ozconf.not_found(lambda: client.agent.agent.update(unknown, name="x"))
    ozconf.not_found(lambda: client.agent.agent.delete(unknown))
