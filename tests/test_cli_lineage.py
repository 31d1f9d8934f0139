"""`deltazoo lineage` and `Client.lineage` over the paged lineage API: counts, one page, `--all`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deltazoo import Client, cli, cli_browse
from tests.checkpoints import CheckpointPair


@pytest.fixture
def family(embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path) -> str:
    """ORG/base with three fine-tunes (the same bytes under three names: the uploads are deduplicated)."""
    with Client(embedded_server, cache_dir=tmp_path / "cache") as c:
        base = c.push(checkpoint_pair.base, f"{unique_org}/base", quiet=True)
        for i in range(3):
            c.push(checkpoint_pair.finetune, f"{unique_org}/ft{i}", base=base.ref, quiet=True)
    return f"{unique_org}/base"


def test_sdk_lineage_fetches_every_page_or_stops_at_a_limit(
    embedded_server: str, family: str, tmp_path: Path
) -> None:
    org = family.split("/")[0]
    with Client(embedded_server, cache_dir=tmp_path / "cache") as c:
        whole = c.lineage(family, page_size=1)
        assert sorted(whole.descendants) == [f"{org}/ft{i}@1" for i in range(3)]
        assert whole.descendant_counts == {"finetune": 3} and whole.descendants_total == 3
        assert whole.next_cursor is None and len(whole.edges) == 3
        some = c.lineage(family, limit=2, page_size=1)
        assert len(some.descendants) == 2 and some.next_cursor is not None and some.descendants_total == 3


def test_cli_lineage_shows_a_page_and_the_counts_and_all_with_all(
    embedded_server: str, family: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_browse, "LINEAGE_SHOWN", 1)
    assert cli.main(["--url", embedded_server, "lineage", family]) == 0
    out = capsys.readouterr().out
    assert "3 descendant versions in other models: 3 finetune" in out
    assert "(1 shown, 2 more; use --all to list every one)" in out
    assert cli.main(["--url", embedded_server, "lineage", family, "--all"]) == 0
    out = capsys.readouterr().out
    assert "more; use --all" not in out and all(f"ft{i}@1" in out for i in range(3))
    assert cli.main(["--url", embedded_server, "lineage", family, "--all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["descendants"]) == 3
