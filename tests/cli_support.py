"""Running ``deltazoo`` commands in-process in tests: through ``deltazoo.cli.main``, output captured."""

from __future__ import annotations

import pytest

from deltazoo.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``deltazoo ARGV...``: its exit code, stdout and stderr."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err
