"""Web pages rendered by the server: numbers equal the API's, user input is escaped, links resolve."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from deltazoo.api.app import create_app
from deltazoo.registry.settings import Settings
from fastapi.testclient import TestClient

from tests.test_api_support import push, wait_job
from tests.test_eval_leaderboard import CONFIG, PROFILE, TEXT, _files, _model_state

CARD = (
    b"---\nlicense: apache-2.0\nbase_model: family/base\ntags:\n- math\n- tiny\n---\n"
    b"# Math fine-tune\n\nTrained on **sums**. <script>alert(2)</script>\n"
)


def build_zoo(client: Any) -> None:
    """A base, a fine-tune with a deltadq profile, a fine-tune of the fine-tune, one text set, evaluated.

    ``client`` is a TestClient or an httpx.Client on a running server.
    """
    base = _model_state(0, 0)
    ft = _model_state(0, 12)
    for name, state, parent, profiles in (
        ("family/base", base, None, []),
        ("family/math", ft, "family/base@1", [PROFILE]),  # with a model card (README.md)
        ("family/math-v2", {k: v.clone() for k, v in ft.items()} | {"lm_head.weight": base["lm_head.weight"]},
         "family/math@1", []),
    ):
        files = _files(state, CONFIG) | ({"README.md": CARD} if name == "family/math" else {})
        answer = push(client, name, files, base=parent, profiles=profiles)
        assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    for tag in ("prod", "v1.0"):  # shown in the lineage graph
        assert client.put(f"/v1/models/family/math/tags/{tag}", json={"revision": "1"}).status_code == 201
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


def test_model_page_shows_the_lineage_graph_card_and_snippet(client: TestClient) -> None:
    html = client.get("/models/family/math").text
    graph = html.split('id="lineage"')[1].split("</svg>")[0]
    nodes = re.findall(r'data-ref="([^"]+)" data-role="([^"]+)" data-parent="([^"]*)"', graph)
    assert sorted(nodes) == [
        ("family/base@1", "ancestor", ""),
        ("family/math-v2@1", "child", "family/math@1"),
        ("family/math@1", "own", "family/base@1"),
    ]
    assert graph.count('class="edge"') == 2
    tags = dict(re.findall(r'data-ref="([^"]+)"[^>]* data-tags="([^"]*)"', graph))
    assert tags == {"family/base@1": "", "family/math@1": "prod v1.0", "family/math-v2@1": ""}
    assert '<text class="tags"' in graph and ">prod, v1.0</text>" in graph
    versions = html.split('id="versions"')[1].split("</table>")[0]
    assert "fox:" in versions and "bpb" in versions
    assert "<svg" in html and "stored / logical" in html
    # the card: front matter as fields, Markdown rendered, raw HTML escaped
    assert '<dd data-field="license">apache-2.0</dd>' in html
    assert '<dd data-field="tags">math, tiny</dd>' in html
    assert "<h1>Math fine-tune</h1>" in html and "<strong>sums</strong>" in html
    assert "<script>alert(2)</script>" not in html and "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    # "use this model": the CLI and SDK lines name the latest ready revision and this server
    assert "deltazoo pull family/math@1 ./math" in html and 'client.state_dict("family/math@1")' in html
    assert 'from_pretrained("family/math", revision="1")' in html and "export HF_ENDPOINT=http" in html
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


def test_the_lineage_graph_draws_a_bounded_page(client: TestClient) -> None:
    """Last in the module: it adds versions. Three more children of the base; a page of two is drawn,
    and the page says how many it left out."""
    state = _model_state(0, 12)
    for i in range(3):
        answer = push(client, f"bounded/kid{i}", _files(state, CONFIG), base="family/base@1")
        assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    from deltazoo.registry.db import session_scope
    from deltazoo.registry.family_repository import FamilyRepository
    from deltazoo.registry.repositories import ModelRepository, VersionRepository

    with session_scope(client.app.state.settings) as session:  # type: ignore[attr-defined]
        base = ModelRepository(session).get("family", "base")
        math = ModelRepository(session).get("family", "math")
        assert base is not None and math is not None
        base_v = VersionRepository(session).latest(base.id)
        assert base_v is not None
        rows, total = FamilyRepository(session).children_page(
            [base_v.id], exclude_model_id=math.id, limit=2, private_namespaces=None
        )
    assert len(rows) == 2 and total == 3  # a page of two, and the count of all three
    html = client.get("/models/family/math").text  # math's siblings: bounded/kid0-2
    assert html.count('data-role="sibling"') == 3


def test_a_profile_whose_fine_tune_did_not_gain_shows_no_gain_kept(client: TestClient) -> None:
    """Made so in the stored figures: the fine-tune's bpb above its base's on this text."""
    from deltazoo.registry.db import session_scope
    from deltazoo.registry.models import Evaluation
    from sqlalchemy import select

    with session_scope(client.app.state.settings) as session:  # type: ignore[attr-defined]
        ev = session.scalars(select(Evaluation).where(Evaluation.artifact_id.is_not(None))).first()
        assert ev is not None and ev.details["gain_kept"] is not None
        base = ev.details["bpb_base"]
        ev.details = {**ev.details, "bpb_finetune": base + 0.25}
    board = client.get("/v1/leaderboard", params={"text": "fox"}).json()["items"]
    (profile,) = [i for i in board if i["profile"]]
    assert profile["gain_kept"] is None and profile["gain_note"] == "fine-tune did not gain here"
    assert profile["bpb_finetune"] == pytest.approx(base + 0.25) and profile["bpb_base"] == base
    html = client.get("/leaderboard", params={"text": "fox"}).text
    row = html.split(f'data-profile="{profile["profile"]}"')[1].split("</tr>")[0]
    assert "fine-tune did not gain here" in row and f"bpb base {base:.4f}" in row
    assert "stored bytes against gain kept" not in html  # no profile with a defined gain: no plot


def test_a_model_page_lists_its_newest_versions(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model of thousands of epochs is a page, not megabytes: the newest rows, the rest counted."""
    from deltazoo.api.routes import web

    state = _model_state(0, 12)
    for _ in range(2):  # family/epochs@1, @2
        answer = push(client, "family/epochs", _files(state, CONFIG) | {"note.txt": os.urandom(8)})
        assert wait_job(client, answer["job"]["id"])["status"] == "succeeded"
    monkeypatch.setattr(web, "WEB_VERSIONS_SHOWN", 1)
    html = client.get("/models/family/epochs").text
    assert '<tr data-ref="family/epochs@2">' in html and '<tr data-ref="family/epochs@1">' not in html
    assert re.search(r'id="versions-older">1 older version not listed', html)
