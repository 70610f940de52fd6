"""Every command has a docs page that mentions each of its options, and the CLI reference links
it: docs stay current with the CLI."""

import re
from pathlib import Path

import click
import typer

from soundnet_cli.cli.main import build_app

from ..conftest import REPO

DOCS = REPO / "docs"


def leaf_commands() -> dict[str, click.Command]:
    root = typer.main.get_command(build_app())
    found: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):  # a group (typer may vendor its own click)
                walk(command, [*prefix, name])
            else:
                found[" ".join([*prefix, name])] = command

    walk(root, [])  # type: ignore[arg-type]
    return found


def page_for(command: str) -> Path:
    return DOCS / "commands" / f"{command.split()[0]}.md"


def test_every_command_has_a_page_listing_its_options():
    for name, command in leaf_commands().items():
        page = page_for(name)
        assert page.is_file(), f"no docs page for `soundnet {name}` ({page})"
        text = page.read_text()
        assert f"soundnet {name}" in text, f"{page} does not show `soundnet {name}`"
        for param in command.params:
            if param.param_type_name == "option" and "--help" not in param.opts:
                assert any(opt in text for opt in param.opts), (
                    f"{page}: option {param.opts[0]} of `soundnet {name}` is not documented"
                )


def test_cli_reference_links_every_page():
    reference = (DOCS / "cli.md").read_text()
    for name in leaf_commands():
        assert f"commands/{name.split()[0]}.md" in reference, f"docs/cli.md lacks `{name}`"


def test_doc_links_resolve():
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+\.md)", page.read_text()):
            assert (page.parent / target).resolve().is_file(), f"{page}: broken link {target}"
