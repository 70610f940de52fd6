from __future__ import annotations

import pytest
from typer.testing import CliRunner

from soundnet_cli.cli.main import build_app


@pytest.fixture
def run(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr).

    Commands run in an empty working folder, so that default output paths never land in the
    checkout.
    """
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    # Usage errors are drawn in a box as wide as the terminal: wide enough here that a message
    # naming a temporary path is never wrapped (its length depends on pytest's folder count).
    monkeypatch.setenv("COLUMNS", "1000")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(build_app(), list(args), catch_exceptions=False)

    return invoke
