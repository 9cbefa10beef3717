"""agent.schedules.*: create, retrieve, update (PUT), list (by name), pause,
resume, delete, and their errors."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import oz_agent_sdk
import pytest
from oz_agent_sdk import OzAPI

import ozconf
from ozconf import UNSERVED_HOST, tag

pytestmark = pytest.mark.schedules


def assert_next_run_daily_0900(item) -> None:
    """history.next_run of an enabled "0 9 * * *" schedule: the next 09:00 UTC."""
    assert item.history is not None and item.history.next_run is not None, item.history
    nxt = ozconf.utc(item.history.next_run)
    now = datetime.now(timezone.utc)
    assert (nxt.hour, nxt.minute, nxt.second) == (9, 0, 0), nxt
    assert now - timedelta(minutes=5) < nxt <= now + timedelta(days=1, minutes=5), (nxt, now)


def test_schedule_lifecycle(client: OzAPI) -> None:
    t = tag()
    created = client.agent.schedules.create(
        cron_schedule="0 9 * * *",
        name=f"conf-sched-{t}",
        prompt=f"echo scheduled {t}",
        enabled=True,
        agent_config={"worker_host": UNSERVED_HOST},
        metadata={"case": t},
    )
    assert created.id
    assert created.name == f"conf-sched-{t}"
    assert created.cron_schedule == "0 9 * * *"
    assert created.prompt == f"echo scheduled {t}"
    assert created.enabled is True
    assert created.agent_config is not None
    assert created.agent_config.worker_host == UNSERVED_HOST
    assert created.metadata == {"case": t}
    assert created.updated_at >= created.created_at
    assert_next_run_daily_0900(created)

    got = client.agent.schedules.retrieve(created.id)
    assert (got.id, got.name, got.cron_schedule, got.prompt, got.enabled) == (
        created.id,
        created.name,
        "0 9 * * *",
        created.prompt,
        True,
    )
    assert got.agent_config is not None and got.agent_config.worker_host == UNSERVED_HOST
    assert_next_run_daily_0900(got)

    updated = client.agent.schedules.update(
        created.id,
        cron_schedule="30 6 * * 1-5",
        enabled=True,
        name=f"conf-sched-{t}-renamed",
        prompt=f"echo updated {t}",
    )
    assert updated.id == created.id
    assert updated.cron_schedule == "30 6 * * 1-5"
    assert updated.name == f"conf-sched-{t}-renamed"
    assert updated.prompt == f"echo updated {t}"
    assert updated.enabled is True
    assert updated.updated_at >= created.updated_at
    again = client.agent.schedules.retrieve(created.id)
    assert (again.cron_schedule, again.name, again.prompt) == (
        "30 6 * * 1-5",
        f"conf-sched-{t}-renamed",
        f"echo updated {t}",
    )

    paused = client.agent.schedules.pause(created.id)
    assert paused.id == created.id and paused.enabled is False
    assert client.agent.schedules.retrieve(created.id).enabled is False

    resumed = client.agent.schedules.resume(created.id)
    assert resumed.id == created.id and resumed.enabled is True
    assert resumed.history is not None and resumed.history.next_run is not None

    deleted = client.agent.schedules.delete(created.id)
    assert deleted.success is True
    ozconf.not_found(lambda: client.agent.schedules.retrieve(created.id))
    ozconf.not_found(lambda: client.agent.schedules.delete(created.id))
    assert created.id not in [s.id for s in client.agent.schedules.list().schedules]


def test_schedule_update_is_a_full_replace(client: OzAPI) -> None:
    # The SDK marks only cron_schedule, enabled and name as required, but the
    # API documents PUT as a full replace that also needs a prompt or a skill:
    # leaving the prompt out is a 400, not "keep the old one".
    t = tag()
    s = client.agent.schedules.create(
        cron_schedule="0 9 * * *", name=f"conf-sched-{t}", prompt="echo x", enabled=True
    )
    with pytest.raises(oz_agent_sdk.BadRequestError) as err:
        client.agent.schedules.update(
            s.id, cron_schedule="0 9 * * *", enabled=False, name=f"conf-sched-{t}"
        )
    assert "prompt" in str(err.value.body)
    off = client.agent.schedules.update(
        s.id, cron_schedule="0 9 * * *", enabled=False, name=f"conf-sched-{t}", prompt="echo y"
    )
    assert (off.enabled, off.prompt) == (False, "echo y")
    assert off.history is None or off.history.next_run is None
    got = client.agent.schedules.retrieve(s.id)
    assert (got.enabled, got.prompt) == (False, "echo y")
    client.agent.schedules.delete(s.id)


def test_schedule_list_is_sorted_by_name(client: OzAPI) -> None:
    t = tag()
    made = [
        client.agent.schedules.create(
            cron_schedule="0 9 * * *",
            name=f"conf-list-{t}-{suffix}",
            prompt=f"echo {suffix}",
            agent_config={"worker_host": UNSERVED_HOST},
        )
        for suffix in ("bravo", "alpha", "charlie")
    ]
    listed = client.agent.schedules.list().schedules
    names = [s.name for s in listed]
    assert names == sorted(names), names
    ours = [s for s in listed if s.name.startswith(f"conf-list-{t}-")]
    assert [s.name.rsplit("-", 1)[1] for s in ours] == ["alpha", "bravo", "charlie"]
    assert {s.id for s in ours} == {s.id for s in made}
    for s in made:
        client.agent.schedules.delete(s.id)


@pytest.mark.parametrize("cron", ["not a cron", "61 9 * * *", "0 9 * *", "0 25 * * *"])
def test_schedule_create_with_bad_cron_is_bad_request(client: OzAPI, cron: str) -> None:
    with pytest.raises(oz_agent_sdk.BadRequestError):
        client.agent.schedules.create(cron_schedule=cron, name=f"conf-bad-{tag()}", prompt="x")


def test_schedule_update_with_bad_cron_is_bad_request(client: OzAPI) -> None:
    t = tag()
    s = client.agent.schedules.create(
        cron_schedule="0 9 * * *", name=f"conf-sched-{t}", prompt="echo x"
    )
    with pytest.raises(oz_agent_sdk.BadRequestError):
        client.agent.schedules.update(
            s.id, cron_schedule="every day", enabled=True, name=f"conf-sched-{t}"
        )
    assert client.agent.schedules.retrieve(s.id).cron_schedule == "0 9 * * *"
    client.agent.schedules.delete(s.id)


def test_schedule_create_without_prompt_or_skill_is_bad_request(client: OzAPI) -> None:
    with pytest.raises(oz_agent_sdk.BadRequestError):
        client.agent.schedules.create(cron_schedule="0 9 * * *", name=f"conf-bad-{tag()}")


def test_schedule_unknown_ids_are_not_found(client: OzAPI) -> None:
    unknown = str(uuid.uuid4())
    ozconf.not_found(lambda: client.agent.schedules.retrieve(unknown))
    ozconf.not_found(lambda: client.agent.schedules.pause(unknown))
    ozconf.not_found(lambda: client.agent.schedules.resume(unknown))
    ozconf.not_found(
        lambda: client.agent.schedules.update(
            unknown, cron_schedule="0 9 * * *", enabled=True, name="x"
        )
    )
