"""Every hook in soundnet_cli/hookspecs.py is documented in docs/plugins.md, with its
signature, and has a test named test_hook_<hook> (as datasette checks its own hooks)."""

from __future__ import annotations

import inspect
import re

import pytest

from soundnet_cli import hookspecs

from ..conftest import REPO

HOOKS = sorted(
    name
    for name, function in vars(hookspecs).items()
    if callable(function) and hasattr(function, f"{hookspecs.PROJECT}_spec")
)


def signature(name: str) -> str:
    parameters = inspect.signature(getattr(hookspecs, name)).parameters
    return f"{name}({', '.join(parameters)})"


def test_hooks_are_found():
    assert {"register_students", "register_teachers", "register_probes"} <= set(HOOKS)
    assert "register_commands" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_signature(hook):
    docs = (REPO / "docs" / "plugins.md").read_text()
    headings = re.findall(r"^### `([^`]+)`", docs, flags=re.MULTILINE)
    assert signature(hook) in headings, f"docs/plugins.md needs a '### `{signature(hook)}`' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    tests = "\n".join(path.read_text() for path in (REPO / "tests").rglob("test_*.py"))
    assert re.search(rf"^def test_hook_{hook}\(", tests, flags=re.MULTILINE), (
        f"no test named test_hook_{hook} under tests/"
    )


def test_documented_hooks_exist():
    docs = (REPO / "docs" / "plugins.md").read_text()
    documented = {
        h.split("(")[0] for h in re.findall(r"^### `(register_\w+\([^`]*\))`", docs, re.M)
    }
    assert documented == set(HOOKS)
