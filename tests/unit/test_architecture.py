"""The package layout of docs/architecture.md holds: imports run downward only, the few
allowed edges inside a layer are the documented ones, the top level stays small, and no module
replaces itself in ``sys.modules``."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "soundnet_cli"

LAYERS = {
    "core": {"errors", "atomic", "hookspecs", "plugins", "registry", "runtime", "_version"},
    "components": {"media", "students", "teachers", "datasets", "probes", "weights"},
    "assembly": {"models", "testing"},
    "workflows": {
        "extraction",
        "corpus",
        "training",
        "evaluation",
        "prediction",
        "search",
        "export",
    },
    "reports": {"visualize"},
    "entry": {"cli", "builtins", "__init__", "__main__"},
}
ORDER = list(LAYERS)
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}
# Edges inside one layer: one unit consumes another's format (docs/architecture.md).
SIDEWAYS = {
    ("registry", "errors"),
    ("runtime", "errors"),
    ("plugins", "errors"),
    ("plugins", "hookspecs"),
    ("plugins", "registry"),
    ("plugins", "_version"),
    ("atomic", "errors"),
    ("students", "media"),
    ("weights", "students"),
    ("weights", "media"),
    ("teachers", "weights"),
    ("probes", "media"),
    ("datasets", "media"),
    ("testing", "models"),
    ("training", "corpus"),
    ("prediction", "extraction"),
    ("search", "extraction"),
    ("cli", "builtins"),
    ("__init__", "cli"),
    ("__main__", "cli"),
}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        source = unit_of(".".join(relative.parts))
        source = "__init__" if relative.parts[1:] == ("__init__",) else source
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level:
                    continue  # the package uses absolute imports; relative ones stay inside
                if node.module == "soundnet_cli":
                    targets = [f"soundnet_cli.{alias.name}" for alias in node.names]
                elif node.module.startswith("soundnet_cli."):
                    targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("soundnet_cli.")]
            for target in targets:
                unit = unit_of(target)
                if unit == "__version__":
                    unit = "__init__"  # importing the package itself: running back up
                if unit != source:
                    edges[(source, unit)].append(str(relative))
    return edges


def test_every_package_has_a_place_on_the_map():
    units = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    assert units <= set(LAYER_OF), f"not on docs/architecture.md: {sorted(units - set(LAYER_OF))}"


def test_imports_run_downward_or_along_documented_edges():
    wrong = []
    for (source, target), where in sorted(import_edges().items()):
        if target not in LAYER_OF or source not in LAYER_OF:
            continue  # the previous test names it
        up = ORDER.index(LAYER_OF[target]) > ORDER.index(LAYER_OF[source])
        level = LAYER_OF[target] == LAYER_OF[source] and (source, target) not in SIDEWAYS
        if up or level:
            wrong.append(f"{source} -> {target} ({', '.join(sorted(set(where))[:3])})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_top_level_stays_small():
    modules = [p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "__main__.py"}]
    assert len(modules) <= 12, sorted(modules)


def test_no_module_replaces_itself_in_sys_modules():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "sys.modules[__name__]" not in text, path


def module_edges() -> set[tuple[str, str]]:
    """(importer, imported) for every pair of soundnet_cli modules, imports inside functions
    included (a circle through a lazy import is still a circle a reader has to untangle)."""
    modules = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
    }
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        source = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name in modules and name != source:
                    edges.add((source, name))
    return edges


# Circles being removed in another branch of the same wave (issue 24, the student contract);
# delete the entry once it is gone. Add none: break a circle by moving what both need down.
KNOWN_CIRCLES = {"soundnet_cli.students.base <-> soundnet_cli.students.contract"}


def test_no_two_modules_import_each_other():
    """media/audio and media/video imported each other (SAMPLE_RATE, Mix, is_video); what two
    modules share lives in a third (media/pcm.py, media/files.py)."""
    edges = module_edges()
    circles = {f"{a} <-> {b}" for a, b in edges if a < b and (b, a) in edges}
    assert not sorted(circles - KNOWN_CIRCLES)


def test_distillation_and_finetune_share_only_the_training_package():
    """The two objectives import the shared modules of training/, never each other."""
    crossing = sorted(
        f"{a} -> {b}"
        for a, b in module_edges()
        for x, y in (("distillation", "finetune"), ("finetune", "distillation"))
        if a.startswith(f"soundnet_cli.training.{x}") and b.startswith(f"soundnet_cli.training.{y}")
    )
    assert not crossing, crossing
