"""The web pages in headless Chromium (playwright-core from tests/browser): they render, links work,
and the numbers the browser reads equal the API's. Needs /usr/bin/chromium and `npm ci` in tests/browser
(scripts/test.sh installs both)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ApiServer, start_api_server
from tests.test_web_pages import build_zoo

BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    missing = [
        what
        for what, ok in (
            (str(CHROMIUM), CHROMIUM.exists()),
            ("node", shutil.which("node") is not None),
            ("tests/browser/node_modules (npm ci)", (BROWSER_DIR / "node_modules/playwright-core").is_dir()),
        )
        if not ok
    ]
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}; scripts/test.sh installs them")
    server = start_api_server(tmp_path_factory.mktemp("browser") / "home", {"DELTAZOO_AUTH": "false"})
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            build_zoo(client)
        yield server
    finally:
        server.stop()


def test_pages_in_chromium(server: ApiServer, tmp_path: Path) -> None:
    shot = Path(__file__).parent.parent / "benchmarks" / "out" / "lineage.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        ["node", "check_pages.mjs", server.url, str(shot), str(tmp_path / "profile")],
        cwd=BROWSER_DIR, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["errors"] == []
    assert seen["cssApplied"] != "rgba(0, 0, 0, 0)"  # the stylesheet loaded

    api = httpx.get(f"{server.url}/v1/models").json()["items"]
    assert [(m["name"], m["logical_bytes"], m["stored_bytes"], m["ratio"]) for m in api] == [
        (m["name"], m["logical"], m["stored"], m["ratio"]) for m in seen["index"]
    ]
    assert "<script>" in next(m["description"] for m in seen["index"] if m["name"] == "family/x-script")

    assert seen["modelUrl"].endswith("/models/family/math")
    parents = {n["ref"]: n["parent"] for n in seen["lineage"]}
    assert parents == {
        "family/base@1": None, "family/math@1": "family/base@1", "family/math-v2@1": "family/math@1"
    }
    assert seen["modelSvg"] == 1 and shot.stat().st_size > 0

    detail = httpx.get(f"{server.url}/v1/models/family/math/versions/1").json()
    assert [(t["name"], t["encoding"], t["stored_bytes"]) for t in detail["tensors"]] == [
        (t["name"], t["encoding"], t["stored"]) for t in seen["tensors"]
    ]
    board = httpx.get(f"{server.url}/v1/leaderboard", params={"text": "fox"}).json()["items"]
    assert [(i["ref"], i["profile"], i["bpb"], i["gain_kept"]) for i in board] == [
        (e["ref"], e["profile"], e["bpb"], e["gain"]) for e in seen["leaderboard"]
    ]
    assert seen["leaderboardDots"] >= 2
