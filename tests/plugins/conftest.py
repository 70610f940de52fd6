"""The CLI fixture (``run``) for plugin tests that go through commands."""

from ..cli.conftest import run  # noqa: F401
