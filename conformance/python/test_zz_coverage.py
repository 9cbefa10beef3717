"""Every one of the 23 SDK methods is called somewhere in the suite through
a strict client (`client` or `bad_client`). A static guard against the
suite losing coverage when tests are edited; whether each call succeeds is
the other tests' business."""

from __future__ import annotations

import re
from pathlib import Path

SDK_METHODS = [
    "agent.list",
    "agent.get_artifact",
    "agent.list_environments",
    "agent.run",
    "agent.runs.retrieve",
    "agent.runs.list",
    "agent.runs.cancel",
    "agent.runs.list_handoff_attachments",
    "agent.runs.submit_followup",
    "agent.schedules.create",
    "agent.schedules.retrieve",
    "agent.schedules.update",
    "agent.schedules.list",
    "agent.schedules.delete",
    "agent.schedules.pause",
    "agent.schedules.resume",
    "agent.agent.create",
    "agent.agent.update",
    "agent.agent.list",
    "agent.agent.delete",
    "agent.agent.get",
    "agent.sessions.check_redirect",
    "agent.conversations.check_redirect",
]


def test_every_sdk_method_is_called_by_the_suite() -> None:
    assert len(SDK_METHODS) == 23
    here = Path(__file__).parent
    source = "\n".join(
        p.read_text() for p in sorted(here.glob("test_*.py")) if p.name != Path(__file__).name
    )
    missing = [
        m
        for m in SDK_METHODS
        if not re.search(r"\b(client|bad_client|c)\." + re.escape(m) + r"\(", source)
    ]
    assert not missing, f"no test calls: {missing}"
