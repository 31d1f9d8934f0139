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
    graph = {n["ref"]: (n["role"], n["parent"], n["text"]) for n in seen["lineage"]}
    assert graph == {
        "family/base@1": ("ancestor", None, "family/base@1"),
        "family/math@1": ("own", "family/base@1", "family/math@1"),
        "family/math-v2@1": ("child", "family/math@1", "family/math-v2@1"),
    }
    assert seen["lineageEdges"] == 2
    tags = {n["ref"]: (n["tags"], n["tagsText"]) for n in seen["lineage"]}
    assert tags == {  # build_zoo tags family/math@1 "prod" and "v1.0"
        "family/base@1": ("", None),
        "family/math@1": ("prod v1.0", "prod, v1.0"),
        "family/math-v2@1": ("", None),
    }
    assert seen["card"] == {"license": "apache-2.0", "base_model": "family/base", "tags": "math, tiny"}
    assert seen["cardHeading"] == "Math fine-tune"
    cli, sdk, hf = seen["snippets"]
    assert cli == f"export DELTAZOO_URL={server.url}\ndeltazoo pull family/math@1 ./math"
    assert f'Client(url="{server.url}")' in sdk and 'state_dict("family/math@1")' in sdk
    assert hf.startswith(f"export HF_ENDPOINT={server.url}") and 'revision="1"' in hf
    assert seen["copyButton"] in ("copied", "selected: press Ctrl+C")
    assert seen["modelOverflow"] <= 0 and seen["versionOverflow"] <= 0  # nothing wider than the window
    assert seen["modelSvg"] == 1 and shot.stat().st_size > 0

    detail = httpx.get(f"{server.url}/v1/models/family/math/versions/1").json()
    assert [(t["name"], t["encoding"], t["stored_bytes"]) for t in detail["tensors"]] == [
        (t["name"], t["encoding"], t["stored"]) for t in seen["tensors"]
    ]
    board = httpx.get(f"{server.url}/v1/leaderboard", params={"text": "fox"}).json()["items"]
    assert [(i["ref"], i["profile"], i["bpb"], i["gain_kept"]) for i in board] == [
        (e["ref"], e["profile"], e["bpb"], e["gain"]) for e in seen["leaderboard"]
    ]
    dense = [i for i in board if i["profile"] is None and i["status"] == "ready"]
    assert seen["leaderboardDots"] == 1 + len(dense)  # the 0 B version (math-v2) is drawn too
    assert any(i["stored_bytes"] == 0 for i in dense)
    assert seen["legend"] == ["lossy profile", "dense (exact) version", "deduplicated version (0 B stored)"]
    assert all(t.endswith("%") and float(t[:-1]) % 1 == 0 for t in seen["yticks"])
