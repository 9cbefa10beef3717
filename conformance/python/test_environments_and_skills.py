"""agent.list_environments (with our `POST /agent/environments` extension to
create one) and agent.list (GET /agent, skills)."""

from __future__ import annotations

import pytest
from oz_agent_sdk import OzAPI
from oz_agent_sdk.types import CloudEnvironment

import ozconf
from ozconf import UNSERVED_HOST, Stack, tag


def create_environment(stack: Stack, name: str, **extra) -> CloudEnvironment:
    """Our extension: the SDK has no create method."""
    body = {"name": name, "description": f"{name} description", "setup_commands": ["true"]}
    body.update(extra)
    r = stack.http("POST", "/agent/environments", json=body)
    assert r.status_code in (200, 201), f"POST /agent/environments: {r.status_code} {r.text}"
    # Same strictness as the SDK's: required fields present, types right.
    return ozconf.strict(CloudEnvironment, r.json())


@pytest.fixture(scope="module")
def environment(stack: Stack) -> CloudEnvironment:
    return create_environment(stack, f"conf-env-{tag()}")


@pytest.mark.environments
def test_environment_create_extension_returns_a_cloud_environment(stack: Stack) -> None:
    name = f"conf-env-{tag()}"
    env = create_environment(stack, name, setup_commands=["echo one", "echo two"])
    assert env.uid
    assert env.config.name == name
    assert env.config.description == f"{name} description"
    assert env.config.setup_commands == ["echo one", "echo two"]
    assert env.setup_failed is False
    assert env.last_updated.tzinfo is not None


@pytest.mark.environments
def test_environment_create_extension_rejects_a_missing_name(stack: Stack) -> None:
    r = stack.http("POST", "/agent/environments", json={"description": "no name"})
    assert r.status_code == 400, f"{r.status_code} {r.text}"


@pytest.mark.environments
def test_list_environments_includes_created(client: OzAPI, environment: CloudEnvironment) -> None:
    listed = client.agent.list_environments().environments
    mine = [e for e in listed if e.uid == environment.uid]
    assert len(mine) == 1, [e.uid for e in listed]
    assert mine[0].config.name == environment.config.name
    assert mine[0].config.setup_commands == ["true"]
    assert mine[0].setup_failed is False
    # Default order: most recently updated first.
    stamps = [e.last_updated for e in listed]
    assert stamps == sorted(stamps, reverse=True)


@pytest.mark.environments
def test_list_environments_sort_by_name(client: OzAPI, stack: Stack) -> None:
    t = tag()
    for suffix in ("bravo", "alpha"):
        create_environment(stack, f"conf-sort-{t}-{suffix}")
    listed = client.agent.list_environments(sort_by="name").environments
    names = [e.config.name or "" for e in listed]
    assert names == sorted(names), names
    ours = [n for n in names if n.startswith(f"conf-sort-{t}-")]
    assert ours == [f"conf-sort-{t}-alpha", f"conf-sort-{t}-bravo"]


@pytest.mark.environments
@pytest.mark.runs
def test_runs_list_filter_environment_id(client: OzAPI, environment: CloudEnvironment) -> None:
    t = tag()
    with_env = client.agent.run(
        prompt="echo env",
        config={"worker_host": UNSERVED_HOST, "environment_id": environment.uid},
        metadata={"case": t},
    ).run_id
    without = client.agent.run(
        prompt="echo no env", config={"worker_host": UNSERVED_HOST}, metadata={"case": t}
    ).run_id
    assert client.agent.runs.retrieve(with_env).agent_config.environment_id == environment.uid
    by_env = [
        r.run_id
        for r in client.agent.runs.list(metadata={"case": t}, environment_id=environment.uid)
    ]
    assert by_env == [with_env]
    empty = [
        r.run_id
        for r in client.agent.runs.list(metadata={"case": t}, environment_id="empty-environment")
    ]
    assert empty == [without]
    for run_id in (with_env, without):
        ozconf.cancel_quietly(client, run_id)


@pytest.mark.skills
def test_agent_list_returns_agents(client: OzAPI) -> None:
    # Skills come from environments' GitHub repositories or from workers; the
    # suite has neither, so this checks the shape (strictly) and the sort.
    answer = client.agent.list()
    assert isinstance(answer.agents, list)
    by_name = client.agent.list(sort_by="name", refresh=True, include_malformed_skills=True)
    names = [a.name for a in by_name.agents]
    assert names == sorted(names)
    for skill in by_name.agents:
        assert skill.variants, skill
        for v in skill.variants:
            assert v.id and v.source.owner and v.source.name and v.source.skill_path
