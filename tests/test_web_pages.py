"""Web pages rendered by the server: numbers equal the API's, user input is escaped, links resolve."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from deltazoo.settings import Settings
from tests.test_api_support import push, wait_job
from tests.test_eval_leaderboard import CONFIG, PROFILE, TEXT, _files, _model_state


def build_zoo(client: Any) -> None:
    """A base, a fine-tune with a deltadq profile, a fine-tune of the fine-tune, one text set, evaluated.

    ``client`` is a TestClient or an httpx.Client on a running server.
    """
    base = _model_state(0, 0)
    ft = _model_state(0, 12)
    for name, state, parent, profiles in (
        ("family/base", base, None, []),
        ("family/math", ft, "family/base@1", [PROFILE]),
        ("family/math-v2", {k: v.clone() for k, v in ft.items()} | {"lm_head.weight": base["lm_head.weight"]},
         "family/math@1", []),
    ):
        answer = push(client, name, _files(state, CONFIG), base=parent, profiles=profiles)
        assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    client.post("/v1/models", json={"name": "family/x-script", "description": "<script>alert(1)</script>",
                                    "exist_ok": True})
    assert client.post("/v1/texts", params={"name": "fox"}, content=TEXT.encode()).status_code == 201
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        items = client.get("/v1/leaderboard", params={"text": "fox"}).json()["items"]
        if len(items) == 4 and all(i["status"] == "ready" for i in items):
            return
        time.sleep(0.2)
    raise AssertionError(f"evaluations did not finish: {items}")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("web") / "home"
    settings = Settings(home=home, database_url=None, broker_url=None, s3_endpoint=None, auth=False)
    with TestClient(create_app(settings)) as c:
        build_zoo(c)
        yield c


def _attr(html: str, row_attr: str, key: str, cls: str, attr: str) -> str:
    row = re.search(rf'<tr {row_attr}="{re.escape(key)}".*?</tr>', html, re.S)
    assert row, f"no row {row_attr}={key}"
    found = re.search(rf'class="{cls}"[^>]*>.*?{attr}="([^"]*)"', row.group(0), re.S)
    assert found, f"no {attr} in {cls} of {key}"
    return found.group(1)


def test_model_list_numbers_equal_the_api(client: TestClient) -> None:
    html = client.get("/").text
    for m in client.get("/v1/models").json()["items"]:
        assert int(_attr(html, "data-model", m["name"], "logical", "data-bytes")) == m["logical_bytes"]
        assert int(_attr(html, "data-model", m["name"], "stored", "data-bytes")) == m["stored_bytes"]
        if m["ratio"] is not None:
            assert float(_attr(html, "data-model", m["name"], "ratio", "data-ratio")) == m["ratio"]
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    only = client.get("/", params={"q": "math"}).text
    assert 'data-model="family/math"' in only and 'data-model="family/base"' not in only


def test_lineage_page_shows_the_tree_and_quality(client: TestClient) -> None:
    html = client.get("/models/family/math").text
    tree = html.split('id="lineage"')[1].split("</ul>\n<h2>")[0]
    # base -> math -> math-v2, nested in that order
    assert tree.index('data-ref="family/base@1"') < tree.index('data-ref="family/math@1"')
    assert tree.index('data-ref="family/math@1"') < tree.index('data-ref="family/math-v2@1"')
    assert "fox:" in tree and "bpb" in tree
    assert "<svg" in html and "stored / logical" in html
    for link in set(re.findall(r'href="(/models/[^"]+)"', html)):
        assert client.get(link).status_code == 200, link


def test_version_page_lists_tensors_and_artifacts(client: TestClient) -> None:
    api = client.get("/v1/models/family/math/versions/1").json()
    html = client.get("/models/family/math/1").text
    for t in api["tensors"]:
        assert int(_attr(html, "data-tensor", t["name"], "stored", "data-bytes")) == t["stored_bytes"]
        assert f'enc-{t["encoding"]}' in html
    art = api["artifacts"][0]
    assert int(_attr(html, "data-profile", art["profile"], "stored", "data-bytes")) == art["bytes"]


def test_leaderboard_page_equals_the_api_and_plots_gain(client: TestClient) -> None:
    board = client.get("/v1/leaderboard", params={"text": "fox"}).json()
    html = client.get("/leaderboard", params={"text": "fox"}).text
    rows = re.findall(r'<tr data-ref="([^"]+)" data-profile="([^"]*)">.*?data-bpb="([^"]*)"', html, re.S)
    assert [(r, p or None, float(b)) for r, p, b in rows] == [
        (i["ref"], i["profile"], i["bpb"]) for i in board["items"]
    ]
    assert "<circle" in html and "gain kept" in html
    missing = client.get("/leaderboard", params={"text": "<b>nope</b>"})
    assert missing.status_code == 404 and "<b>nope</b>" not in missing.text
    assert client.get("/models/family/none").status_code == 404
    assert client.get("/static/deltazoo.css").status_code == 200
