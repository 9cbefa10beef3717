"""The official TypeScript SDK (npm `oz-agent-sdk`, see conformance/typescript)
against the same server and worker: one node process per group of checks.

run.sh installs it with `npm ci` and sets OZ_CONFORMANCE_TS=required; without
that (no npm, or pytest started by hand without the install) these skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ozconf import UNSERVED_HOST, WORKER_ID, Stack

TS_DIR = Path(__file__).resolve().parents[1] / "typescript"


@pytest.mark.typescript
@pytest.mark.parametrize("group", ["runs", "schedules", "skills"])
def test_typescript_sdk(stack: Stack, group: str) -> None:
    installed = (TS_DIR / "node_modules" / "oz-agent-sdk").is_dir()
    node = shutil.which("node")
    if not (installed and node):
        if os.environ.get("OZ_CONFORMANCE_TS") == "required":
            pytest.fail(f"the TypeScript SDK is not installed in {TS_DIR} (or node is missing)")
        pytest.skip("TypeScript SDK not installed (run conformance/run.sh)")
    env = dict(os.environ)
    env.update(
        OZ_API_BASE_URL=stack.api,
        WARP_API_KEY=stack.team_key,
        OZ_CONFORMANCE_WORKER_HOST=WORKER_ID,
        OZ_CONFORMANCE_UNSERVED_HOST=UNSERVED_HOST,
    )
    out = subprocess.run(
        [node, "smoke.mjs", group],
        cwd=TS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0, f"TypeScript SDK checks failed:\n{report}"
    assert "not ok" not in report and "ok - " in report, report
