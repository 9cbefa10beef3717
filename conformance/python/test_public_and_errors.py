"""The two public redirect endpoints (no auth), and authentication errors."""

from __future__ import annotations

import uuid

import oz_agent_sdk
import pytest
from oz_agent_sdk import OzAPI

from ozconf import Stack


@pytest.mark.redirects
def test_session_redirect_unknown_is_empty_and_needs_no_auth(bad_client: OzAPI) -> None:
    # bad_client's key is wrong: this only passes if the endpoint is public.
    answer = bad_client.agent.sessions.check_redirect(str(uuid.uuid4()))
    assert isinstance(answer, oz_agent_sdk.types.agent.SessionCheckRedirectResponse)
    assert answer.conversation_id is None


@pytest.mark.redirects
def test_conversation_redirect_unknown_is_empty_and_needs_no_auth(bad_client: OzAPI) -> None:
    answer = bad_client.agent.conversations.check_redirect(str(uuid.uuid4()))
    assert isinstance(answer, oz_agent_sdk.types.agent.ConversationCheckRedirectResponse)
    assert answer.session_id is None


@pytest.mark.redirects
@pytest.mark.parametrize("kind", ["sessions", "conversations"])
def test_redirect_without_any_authorization_header(stack: Stack, kind: str) -> None:
    r = stack.http("GET", f"/agent/{kind}/{uuid.uuid4()}/redirect", key=None)
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    assert r.json() == {}


@pytest.mark.redirects
def test_redirect_with_a_valid_key_works_too(client: OzAPI) -> None:
    assert client.agent.sessions.check_redirect(str(uuid.uuid4())).conversation_id is None
    assert client.agent.conversations.check_redirect(str(uuid.uuid4())).session_id is None


WRONG_KEY_CALLS = {
    "runs.list": lambda c: c.agent.runs.list(),
    "runs.retrieve": lambda c: c.agent.runs.retrieve(str(uuid.uuid4())),
    "run": lambda c: c.agent.run(prompt="x"),
    "runs.cancel": lambda c: c.agent.runs.cancel(str(uuid.uuid4())),
    "schedules.list": lambda c: c.agent.schedules.list(),
    "identities.list": lambda c: c.agent.agent.list(),
    "list_environments": lambda c: c.agent.list_environments(),
    "agent.list": lambda c: c.agent.list(),
    "get_artifact": lambda c: c.agent.get_artifact(str(uuid.uuid4())),
}


@pytest.mark.errors
@pytest.mark.parametrize("name", list(WRONG_KEY_CALLS))
def test_wrong_api_key_is_authentication_error(bad_client: OzAPI, name: str) -> None:
    with pytest.raises(oz_agent_sdk.AuthenticationError) as e:
        WRONG_KEY_CALLS[name](bad_client)
    assert e.value.status_code == 401


@pytest.mark.errors
def test_error_bodies_are_problem_json(stack: Stack) -> None:
    # The SDK only needs the status; the body shape is Warp's (RFC 7807).
    r = stack.http("GET", f"/agent/runs/{uuid.uuid4()}")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 404 and body["title"] and body["error"]
    assert body["type"].startswith(
        "https://docs.warp.dev/reference/api-and-sdk/troubleshooting/errors/"
    )
