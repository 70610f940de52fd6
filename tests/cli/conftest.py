from __future__ import annotations

import pytest
from typer.testing import CliRunner

from soundnet_cli.cli.main import build_app


@pytest.fixture
def run():
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(build_app(), list(args), catch_exceptions=False)

    return invoke
