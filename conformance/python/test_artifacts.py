"""agent.get_artifact, with FILE artifacts uploaded through our extension
`POST /agent/runs/{run_id}/artifacts?artifact_type=FILE&filename=…&mime_type=…`
(raw bytes as the body), and the artifact_type runs filter."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import httpx
import pytest
from oz_agent_sdk import OzAPI
from oz_agent_sdk.types.agent.artifact_item import FileArtifact
from oz_agent_sdk.types.agent_get_artifact_response import FileArtifactResponse

import ozconf
from ozconf import UNSERVED_HOST, Stack, tag

pytestmark = pytest.mark.artifacts

CONTENT = "conformance report\nline 2: ✓ naïve café\n".encode()


def upload(
    stack: Stack, run_id: str, content: bytes, key: str | None = "", **params
) -> httpx.Response:
    query = {"artifact_type": "FILE", "filename": "report.txt", "mime_type": "text/plain"}
    query.update(params)
    return stack.http(
        "POST",
        f"/agent/runs/{run_id}/artifacts",
        key=key,
        params={k: v for k, v in query.items() if v is not None},
        content=content,
        headers={"Content-Type": "application/octet-stream"},
    )


@pytest.fixture(scope="module")
def uploaded(stack: Stack, client: OzAPI):
    t = tag()
    run_id = client.agent.run(
        prompt="echo artifacts", config={"worker_host": UNSERVED_HOST}, metadata={"case": t}
    ).run_id
    other = client.agent.run(
        prompt="echo no artifacts", config={"worker_host": UNSERVED_HOST}, metadata={"case": t}
    ).run_id
    r = upload(stack, run_id, CONTENT)
    assert r.status_code in (200, 201), f"upload: {r.status_code} {r.text}"
    item = ozconf.strict(FileArtifact, r.json())
    yield {"run_id": run_id, "other": other, "tag": t, "item": item}
    for rid in (run_id, other):
        ozconf.cancel_quietly(client, rid)


def test_artifact_upload_extension_returns_an_artifact_item(uploaded) -> None:
    item = uploaded["item"]
    assert item.artifact_type == "FILE"
    assert item.data.artifact_uid
    assert item.data.filename == "report.txt"
    assert item.data.filepath.endswith("report.txt")
    assert item.data.mime_type == "text/plain"
    assert item.data.size_bytes == len(CONTENT)
    assert item.created_at.tzinfo is not None


def test_get_artifact_file_and_download_without_auth(client: OzAPI, uploaded) -> None:
    uid = uploaded["item"].data.artifact_uid
    got = client.agent.get_artifact(uid)
    assert isinstance(got, FileArtifactResponse), type(got)
    assert got.artifact_type == "FILE"
    assert got.artifact_uid == uid
    assert got.data.filename == "report.txt"
    assert got.data.content_type.startswith("text/plain")
    if got.data.size_bytes is not None:
        assert got.data.size_bytes == len(CONTENT)
    assert ozconf.utc(got.data.expires_at) > datetime.now(timezone.utc)
    url = got.data.download_url
    assert url.startswith(("http://", "https://")), url
    # A signed URL: fetched as a browser would, no Authorization header.
    r = httpx.get(url, timeout=20)
    assert r.status_code == 200, f"download: {r.status_code} {r.text[:200]}"
    assert r.content == CONTENT
    # Anyone holding the URL may download, so it must not be forgeable: one
    # character changed at its end (the signature, or the id) is refused.
    forged = url[:-1] + ("0" if url[-1] != "0" else "1")
    bad = httpx.get(forged, timeout=20)
    assert bad.status_code in (400, 401, 403, 404), f"forged URL: {bad.status_code}"
    assert bad.content != CONTENT


def test_run_lists_its_file_artifact(client: OzAPI, uploaded) -> None:
    run = client.agent.runs.retrieve(uploaded["run_id"])
    files = [a for a in (run.artifacts or []) if a.artifact_type == "FILE"]
    assert [a.data.artifact_uid for a in files] == [uploaded["item"].data.artifact_uid]
    assert files[0].data.filename == "report.txt"


@pytest.mark.runs
def test_runs_list_filter_artifact_type_file(client: OzAPI, uploaded) -> None:
    t = uploaded["tag"]
    found = [r.run_id for r in client.agent.runs.list(metadata={"case": t}, artifact_type="FILE")]
    assert found == [uploaded["run_id"]]
    shots = client.agent.runs.list(metadata={"case": t}, artifact_type="SCREENSHOT")
    assert [r.run_id for r in shots] == []


def test_get_artifact_unknown_is_not_found(client: OzAPI) -> None:
    ozconf.not_found(lambda: client.agent.get_artifact(str(uuid.uuid4())))


def test_artifact_upload_extension_errors(stack: Stack, uploaded) -> None:
    run_id = uploaded["run_id"]
    assert upload(stack, run_id, CONTENT, key=None).status_code == 401
    assert upload(stack, str(uuid.uuid4()), CONTENT).status_code == 404
    bad_type = upload(stack, run_id, CONTENT, artifact_type="BOGUS")
    assert bad_type.status_code == 400, bad_type.text
    no_name = upload(stack, run_id, CONTENT, filename=None)
    assert no_name.status_code == 400, no_name.text
