"""A run whose harness is one the SDK's enum does not know (`command`, or a
custom harness from a harness config; our CLI and quickstart create such
runs) must not break strict SDK clients: one such run would otherwise make
every strict `runs.list` page that contains it fail validation.

Last file on purpose: if the server gets this wrong, only this test fails,
not every later test that lists runs."""

from __future__ import annotations

import pytest
from oz_agent_sdk import OzAPI

import ozconf
from ozconf import UNSERVED_HOST, Stack, tag

pytestmark = pytest.mark.runs


@pytest.mark.parametrize("harness", ["command", "my-custom-harness"])
def test_run_with_a_harness_outside_the_sdk_enum_validates_strictly(
    stack: Stack, client: OzAPI, harness: str
) -> None:
    t = tag()
    # As `oz agent run-cloud --harness command` sends it (the SDK's types
    # would not let a Python caller write this).
    r = stack.http(
        "POST",
        "/agent/runs",
        json={
            "prompt": "echo hi",
            "config": {"worker_host": UNSERVED_HOST, "harness": {"type": harness}},
            "metadata": {"case": t},
        },
    )
    assert r.status_code == 200, r.text
    run_id = r.json()["run_id"]
    run = client.agent.runs.retrieve(run_id)
    assert run.run_id == run_id
    assert [x.run_id for x in client.agent.runs.list(metadata={"case": t})] == [run_id]
    # And an unfiltered page that contains it.
    assert run_id in [x.run_id for x in client.agent.runs.list(limit=100)]
    ozconf.cancel_quietly(client, run_id)
