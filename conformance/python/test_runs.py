"""agent.run and agent.runs.*: create, retrieve, list (pagination and every
filter), cancel, follow-ups, handoff attachments, a real run to SUCCEEDED."""

from __future__ import annotations

import uuid
from datetime import timedelta, timezone

import oz_agent_sdk
import pytest
from oz_agent_sdk import OzAPI

import ozconf
from ozconf import UNSERVED_HOST, WORKER_ID, tag

pytestmark = pytest.mark.runs


def queued_run(client: OzAPI, t: str, **kw) -> str:
    """A run on a host nobody serves: it stays QUEUED. `t` goes in metadata
    so list tests can isolate their own runs."""
    config = {"worker_host": UNSERVED_HOST, **kw.pop("config", {})}
    metadata = {"case": t, **kw.pop("metadata", {})}
    created = client.agent.run(
        prompt=kw.pop("prompt", f"echo queued {t}"), config=config, metadata=metadata, **kw
    )
    assert created.state == "QUEUED", created
    return created.run_id


def ids(page_or_iter) -> list:
    return [r.run_id for r in page_or_iter]


# ---- create / retrieve -------------------------------------------------------


def test_run_create_echoes_prompt_title_metadata_and_worker_host(client: OzAPI) -> None:
    t = tag()
    created = client.agent.run(
        prompt=f"echo create {t}",
        title=f"conformance create {t}",
        config={"worker_host": UNSERVED_HOST, "name": f"conf-name-{t}"},
        metadata={"case": t, "ticket_id": "VIS-238"},
    )
    assert isinstance(created, oz_agent_sdk.types.AgentRunResponse)
    assert created.run_id
    assert created.task_id == created.run_id
    assert created.state == "QUEUED"

    run = client.agent.runs.retrieve(created.run_id)
    assert run.run_id == created.run_id
    assert run.task_id == created.run_id
    assert run.state == "QUEUED"
    assert run.prompt == f"echo create {t}"
    assert run.title == f"conformance create {t}"
    assert run.metadata == {"case": t, "ticket_id": "VIS-238"}
    assert run.agent_config is not None
    assert run.agent_config.worker_host == UNSERVED_HOST
    assert run.agent_config.name == f"conf-name-{t}"
    assert run.source == "API"
    assert run.created_at.tzinfo is not None and run.updated_at >= run.created_at
    ozconf.cancel_quietly(client, created.run_id)


def test_run_create_without_worker_host_uses_the_server_default(client: OzAPI) -> None:
    created = client.agent.run(prompt="echo default host")
    run = client.agent.runs.retrieve(created.run_id)
    assert run.agent_config is not None
    assert run.agent_config.worker_host == WORKER_ID


def test_run_create_without_prompt_or_skill_is_bad_request(client: OzAPI) -> None:
    with pytest.raises(oz_agent_sdk.BadRequestError) as e:
        client.agent.run(config={"worker_host": UNSERVED_HOST})
    assert e.value.status_code == 400


def test_run_create_with_invalid_metadata_is_bad_request(client: OzAPI) -> None:
    with pytest.raises(oz_agent_sdk.BadRequestError):
        client.agent.run(prompt="x", metadata={"bad key!": "v"})


def test_run_retrieve_unknown_is_not_found(client: OzAPI) -> None:
    ozconf.not_found(lambda: client.agent.runs.retrieve(str(uuid.uuid4())))


def test_run_executes_on_the_real_worker_and_succeeds(succeeded_run) -> None:
    run = succeeded_run
    assert run.state == "SUCCEEDED", run.status_message
    assert run.prompt == "echo conformance-succeeded"
    assert run.title == "conformance: succeeded run"
    assert run.metadata == {"suite": "conformance"}
    assert run.agent_config is not None and run.agent_config.worker_host == WORKER_ID
    assert run.started_at is not None
    assert run.execution_location == "REMOTE"
    assert run.source == "API"


# ---- list: pagination and sorting ---------------------------------------------


def test_runs_list_auto_paginates_with_limit_2(client: OzAPI) -> None:
    t = tag()
    made = [queued_run(client, t, title=f"page {i} {t}") for i in range(5)]

    first = client.agent.runs.list(metadata={"case": t}, limit=2)
    assert len(first.runs) == 2
    assert first.page_info is not None and first.page_info.has_next_page is True
    assert first.page_info.next_cursor
    pages = list(first.iter_pages())
    assert len(pages) == 3, [len(p.runs) for p in pages]
    assert all(len(p.runs) <= 2 for p in pages)
    assert pages[-1].has_next_page() is False

    # Auto-iteration repeats the filter on every page: exactly our 5 runs.
    seen = ids(client.agent.runs.list(metadata={"case": t}, limit=2))
    assert len(seen) == 5 and sorted(seen) == sorted(made), seen
    # Default order: updated_at desc.
    runs = list(client.agent.runs.list(metadata={"case": t}, limit=2))
    stamps = [r.updated_at for r in runs]
    assert stamps == sorted(stamps, reverse=True)
    for r in made:
        ozconf.cancel_quietly(client, r)


def test_runs_list_sort_by_title_and_created_at(client: OzAPI) -> None:
    t = tag()
    made = [queued_run(client, t, title=f"{name} {t}") for name in ("bravo", "alpha", "charlie")]
    asc = list(client.agent.runs.list(metadata={"case": t}, sort_by="title", sort_order="asc"))
    assert [r.title.split()[0] for r in asc] == ["alpha", "bravo", "charlie"]
    desc = list(client.agent.runs.list(metadata={"case": t}, sort_by="title", sort_order="desc"))
    assert [r.title.split()[0] for r in desc] == ["charlie", "bravo", "alpha"]
    by_created = list(
        client.agent.runs.list(metadata={"case": t}, sort_by="created_at", sort_order="asc")
    )
    stamps = [r.created_at for r in by_created]
    assert stamps == sorted(stamps) and len(stamps) == 3
    for r in made:
        ozconf.cancel_quietly(client, r)


# ---- list: filters ----------------------------------------------------------------


def test_runs_list_filter_state_repeated(client: OzAPI) -> None:
    t = tag()
    queued = queued_run(client, t)
    cancelled = queued_run(client, t)
    client.agent.runs.cancel(cancelled)
    only_queued = ids(client.agent.runs.list(metadata={"case": t}, state=["QUEUED"]))
    assert only_queued == [queued]
    both = ids(client.agent.runs.list(metadata={"case": t}, state=["QUEUED", "CANCELLED"]))
    assert sorted(both) == sorted([queued, cancelled])
    assert ids(client.agent.runs.list(metadata={"case": t}, state=["SUCCEEDED"])) == []
    ozconf.cancel_quietly(client, queued)


def test_runs_list_filter_source(client: OzAPI) -> None:
    t = tag()
    run = queued_run(client, t)
    assert ids(client.agent.runs.list(metadata={"case": t}, source="API")) == [run]
    assert ids(client.agent.runs.list(metadata={"case": t}, source="SLACK")) == []
    ozconf.cancel_quietly(client, run)


def test_runs_list_filter_created_after_and_before_with_offsets(client: OzAPI) -> None:
    t = tag()
    run_id = queued_run(client, t)
    created = ozconf.utc(client.agent.runs.retrieve(run_id).created_at)
    plus5 = timezone(timedelta(hours=5))
    minus5 = timezone(timedelta(hours=-5))

    def listed(**kw) -> list:
        return ids(client.agent.runs.list(metadata={"case": t}, **kw))

    # The SDK sends datetime.isoformat(): "+00:00" / "+05:00" (as %2B), "-05:00".
    assert listed(created_after=created - timedelta(hours=1)) == [run_id]
    assert listed(created_after=created + timedelta(hours=1)) == []
    # Same instants written with other offsets: a server that drops the
    # offset would read these 5 hours off and answer the opposite.
    assert listed(created_after=(created - timedelta(hours=1)).astimezone(plus5)) == [run_id]
    assert listed(created_after=(created + timedelta(hours=1)).astimezone(minus5)) == []
    assert listed(created_before=(created + timedelta(hours=1)).astimezone(minus5)) == [run_id]
    assert listed(created_before=created - timedelta(hours=1)) == []
    # A string is sent as given.
    assert listed(created_after="2000-01-01T00:00:00+00:00") == [run_id]
    ozconf.cancel_quietly(client, run_id)


def test_runs_list_filter_updated_after(client: OzAPI) -> None:
    t = tag()
    run_id = queued_run(client, t)
    updated = ozconf.utc(client.agent.runs.retrieve(run_id).updated_at)
    listed = lambda **kw: ids(client.agent.runs.list(metadata={"case": t}, **kw))  # noqa: E731
    assert listed(updated_after=updated - timedelta(hours=1)) == [run_id]
    assert listed(updated_after=updated + timedelta(hours=1)) == []
    ozconf.cancel_quietly(client, run_id)


def test_runs_list_filter_metadata_pairs_are_anded(client: OzAPI) -> None:
    t = tag()
    a = queued_run(client, t, metadata={"team": "red"})
    b = queued_run(client, t, metadata={"team": "blue"})
    assert ids(client.agent.runs.list(metadata={"case": t, "team": "red"})) == [a]
    assert ids(client.agent.runs.list(metadata={"case": t, "team": "blue"})) == [b]
    assert sorted(ids(client.agent.runs.list(metadata={"case": t}))) == sorted([a, b])
    assert ids(client.agent.runs.list(metadata={"case": t, "team": "green"})) == []
    for r in (a, b):
        ozconf.cancel_quietly(client, r)


def test_runs_list_filter_q_searches_title_and_prompt(client: OzAPI) -> None:
    t = tag()
    word = f"zebra{t}"
    in_title = queued_run(client, t, title=f"has {word} in title")
    in_prompt = queued_run(client, t, prompt=f"echo {word}", title="plain")
    other = queued_run(client, t, title="nothing to see")
    found = ids(client.agent.runs.list(metadata={"case": t}, q=word))
    assert sorted(found) == sorted([in_title, in_prompt])
    for r in (in_title, in_prompt, other):
        ozconf.cancel_quietly(client, r)


def test_runs_list_filter_name(client: OzAPI) -> None:
    t = tag()
    named = queued_run(client, t, config={"name": f"conf-name-{t}"})
    other = queued_run(client, t, config={"name": "something-else"})
    assert ids(client.agent.runs.list(metadata={"case": t}, name=f"conf-name-{t}")) == [named]
    for r in (named, other):
        ozconf.cancel_quietly(client, r)


def test_runs_list_filter_model_id(client: OzAPI) -> None:
    t = tag()
    with_model = queued_run(client, t, config={"model_id": f"conf-model-{t}"})
    other = queued_run(client, t)
    assert client.agent.runs.retrieve(with_model).agent_config.api_model_id == f"conf-model-{t}"
    found = ids(client.agent.runs.list(metadata={"case": t}, model_id=f"conf-model-{t}"))
    assert found == [with_model]
    for r in (with_model, other):
        ozconf.cancel_quietly(client, r)


def test_runs_list_filter_skill_and_skill_spec(client: OzAPI) -> None:
    t = tag()
    spec = f"acme/tools-{t}:skills/lint/SKILL.md"
    skilled = queued_run(client, t, skill=spec)
    other = queued_run(client, t)
    run = client.agent.runs.retrieve(skilled)
    assert run.agent_config is not None and run.agent_config.skill_spec == spec
    assert ids(client.agent.runs.list(metadata={"case": t}, skill=spec)) == [skilled]
    assert ids(client.agent.runs.list(metadata={"case": t}, skill_spec=spec)) == [skilled]
    for r in (skilled, other):
        ozconf.cancel_quietly(client, r)


def test_runs_list_filter_schedule_id_excludes_api_runs(client: OzAPI) -> None:
    # No schedule fires during the suite (cron 09:00 UTC at the earliest), so
    # this can only check that API runs do not match a schedule id.
    t = tag()
    run = queued_run(client, t)
    assert ids(client.agent.runs.list(metadata={"case": t}, schedule_id=str(uuid.uuid4()))) == []
    ozconf.cancel_quietly(client, run)


def test_runs_list_filter_empty_environment(client: OzAPI) -> None:
    t = tag()
    run = queued_run(client, t)
    found = ids(client.agent.runs.list(metadata={"case": t}, environment_id="empty-environment"))
    assert found == [run]
    ozconf.cancel_quietly(client, run)


def test_runs_list_filter_execution_location(client: OzAPI) -> None:
    t = tag()
    run = queued_run(client, t)
    assert client.agent.runs.retrieve(run).execution_location == "REMOTE"
    assert ids(client.agent.runs.list(metadata={"case": t}, execution_location="REMOTE")) == [run]
    assert ids(client.agent.runs.list(metadata={"case": t}, execution_location="LOCAL")) == []
    ozconf.cancel_quietly(client, run)


def test_runs_list_filter_ancestor_run_id(client: OzAPI) -> None:
    t = tag()
    parent = queued_run(client, t, title="parent")
    child = queued_run(client, t, title="child", parent_run_id=parent)
    grandchild = queued_run(client, t, title="grandchild", parent_run_id=child)
    unrelated = queued_run(client, t, title="unrelated")
    assert client.agent.runs.retrieve(child).parent_run_id == parent
    assert client.agent.runs.retrieve(grandchild).parent_run_id == child
    found = ids(client.agent.runs.list(metadata={"case": t}, ancestor_run_id=parent))
    assert sorted(found) == sorted([child, grandchild])
    assert ids(client.agent.runs.list(metadata={"case": t}, ancestor_run_id=child)) == [grandchild]
    for r in (parent, child, grandchild, unrelated):
        ozconf.cancel_quietly(client, r)


def test_run_with_unknown_parent_run_id_is_bad_request(client: OzAPI) -> None:
    with pytest.raises(oz_agent_sdk.BadRequestError):
        client.agent.run(
            prompt="orphan",
            config={"worker_host": UNSERVED_HOST},
            parent_run_id=str(uuid.uuid4()),
        )


def test_runs_list_filter_artifact_type_pull_request(client: OzAPI) -> None:
    # The real runner reports every GitHub PR URL its harness prints.
    t = tag()
    url = f"https://github.com/acme/conformance/pull/{int(t[:6], 16) % 100000 + 1}"
    with_pr = client.agent.run(
        prompt=f"echo 'opened {url}'",
        config={"worker_host": WORKER_ID},
        metadata={"case": t},
    ).run_id
    without = client.agent.run(
        prompt="echo no pr here", config={"worker_host": WORKER_ID}, metadata={"case": t}
    ).run_id
    run = ozconf.wait_terminal(client, with_pr)
    ozconf.wait_terminal(client, without)
    assert run.state == "SUCCEEDED", run.status_message
    prs = [a for a in (run.artifacts or []) if a.artifact_type == "PULL_REQUEST"]
    assert [a.data.url for a in prs] == [url]
    assert isinstance(prs[0].data.branch, str)
    found = ids(client.agent.runs.list(metadata={"case": t}, artifact_type="PULL_REQUEST"))
    assert found == [with_pr]
    assert ids(client.agent.runs.list(metadata={"case": t}, artifact_type="PLAN")) == []


def test_runs_list_bad_filter_values_are_bad_request(client: OzAPI) -> None:
    with pytest.raises(oz_agent_sdk.BadRequestError):
        client.agent.runs.list(created_after="yesterday")
    with pytest.raises(oz_agent_sdk.BadRequestError):
        client.agent.runs.list(cursor="not-a-cursor")


# ---- cancel ------------------------------------------------------------------------


def test_run_cancel_queued_then_terminal_then_unknown(client: OzAPI) -> None:
    t = tag()
    run_id = queued_run(client, t)
    answer = client.agent.runs.cancel(run_id)
    # Python returns the raw text: a JSON string keeps its quotes.
    assert isinstance(answer, str) and answer.strip().strip('"') == run_id, answer
    run = client.agent.runs.retrieve(run_id)
    assert run.state == "CANCELLED"

    with pytest.raises(oz_agent_sdk.BadRequestError) as e:
        client.agent.runs.cancel(run_id)
    assert e.value.status_code == 400

    ozconf.not_found(lambda: client.agent.runs.cancel(str(uuid.uuid4())))


def test_run_cancel_succeeded_run_is_bad_request(client: OzAPI, succeeded_run) -> None:
    with pytest.raises(oz_agent_sdk.BadRequestError):
        client.agent.runs.cancel(succeeded_run.run_id)


# ---- follow-ups and handoff ------------------------------------------------------


def test_run_submit_followup_on_ended_run_runs_a_new_execution(client: OzAPI, stack) -> None:
    # An ended run is queued again; the real worker runs the run's prompt
    # followed by the follow-up (a markdown heading: a comment to sh).
    created = client.agent.run(prompt="echo before-follow-up", config={"worker_host": WORKER_ID})
    ended = ozconf.wait_terminal(client, created.run_id)
    assert ended.state == "SUCCEEDED", ended.status_message
    answer = client.agent.runs.submit_followup(
        created.run_id, message="echo the-follow-up", mode="normal"
    )
    assert isinstance(answer, dict), f"expected a JSON object, got {answer!r}"
    assert answer["delivery"] == "new_execution", answer
    # The run stays readable with a strict client afterwards.
    again = ozconf.wait_terminal(client, created.run_id)
    assert again.state == "SUCCEEDED", again.status_message
    assert again.prompt == "echo before-follow-up"

    def agent_lines() -> list:
        r = stack.http("GET", f"/agent/runs/{created.run_id}/logs?phase=agent")
        assert r.status_code == 200, r.text
        page = r.json()
        return page["lines"] if page["complete"] else None

    lines = ozconf.wait_until("the second execution's log", agent_lines)
    texts = [line.get("text") for line in lines]
    assert texts.count("before-follow-up") == 2, texts
    assert texts.index("the-follow-up") > texts.index("before-follow-up"), texts
    seqs = [line["seq"] for line in lines]
    assert seqs == sorted(set(seqs)), seqs


def test_run_submit_followup_unknown_run_is_not_found(client: OzAPI) -> None:
    ozconf.not_found(lambda: client.agent.runs.submit_followup(str(uuid.uuid4()), message="hi"))


def test_run_list_handoff_attachments(client: OzAPI, succeeded_run) -> None:
    answer = client.agent.runs.list_handoff_attachments(succeeded_run.run_id)
    assert isinstance(answer.attachments, list)
    for a in answer.attachments:
        assert a.attachment_id and a.filename and a.download_url.startswith("http")


def test_run_list_handoff_attachments_unknown_run_is_not_found(client: OzAPI) -> None:
    ozconf.not_found(lambda: client.agent.runs.list_handoff_attachments(str(uuid.uuid4())))


def test_runs_list_sees_its_runs_with_strict_validation(client: OzAPI, succeeded_run) -> None:
    # A page that mixes QUEUED, CANCELLED and SUCCEEDED runs validates strictly.
    seen = {r.run_id: r for r in client.agent.runs.list(limit=50)}
    assert succeeded_run.run_id in seen
    assert seen[succeeded_run.run_id].state == "SUCCEEDED"
