"""The plugin manager: builtins first, then third-party entry points in the "soundnet" group.

Builtin components live in ordinary plugin modules under ``soundnet_cli/builtins`` and are
declared in our own ``[project.entry-points.soundnet]`` table, so they load through the same path
as anyone else's. A plugin that fails to import, or whose hook fails, is recorded and skipped.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from soundnet_cli import hookspecs
from soundnet_cli.errors import SoundnetError
from soundnet_cli.registry import Registry

ENTRY_POINT_GROUP = "soundnet"
DISABLE_ENV = "SOUNDNET_DISABLE_PLUGINS"
CORE_DISTRIBUTION = "soundnet-cli"

# Same names and modules as pyproject.toml's entry-point table (a test keeps them in step).
BUILTIN_PLUGINS: dict[str, str] = {
    "builtin-students": "soundnet_cli.builtins.students",
    "builtin-probes": "soundnet_cli.builtins.probes",
    "builtin-datasets": "soundnet_cli.builtins.datasets",
    "builtin-teachers": "soundnet_cli.builtins.teachers",
}

COMPONENT_HOOKS: dict[str, str] = {
    "student": "register_students",
    "teacher": "register_teachers",
    "probe": "register_probes",
    "dataset": "register_datasets",
}


@dataclass
class PluginInfo:
    """What `soundnet plugins` shows about one plugin."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    builtin: bool
    status: str = "loaded"  # loaded | failed | blocked
    errors: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    adds_commands: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "status": self.status,
            "errors": list(self.errors),
            "registered": {k: list(v) for k, v in self.registered.items()},
            "adds_commands": self.adds_commands,
        }


@dataclass
class Plugins:
    """Loaded plugins and the registries they filled."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry]
    infos: dict[str, PluginInfo]

    @property
    def students(self) -> Registry:
        return self.registries["student"]

    @property
    def teachers(self) -> Registry:
        return self.registries["teacher"]

    @property
    def probes(self) -> Registry:
        return self.registries["probe"]

    @property
    def datasets(self) -> Registry:
        return self.registries["dataset"]

    def failures(self) -> list[PluginInfo]:
        return [info for info in self.infos.values() if info.status == "failed"]

    def add_commands(self, app: Any) -> None:
        """Let every plugin add its CLI commands to ``app``."""
        for impl in self.manager.hook.register_commands.get_hookimpls():
            info = self.infos[impl.plugin_name]
            try:
                impl.function(app=app)
                info.adds_commands = True
            except Exception as exc:  # a broken plugin must not break the CLI
                _fail(info, f"register_commands failed: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _fail(info: PluginInfo, message: str) -> None:
    info.status = "failed"
    info.errors.append(message)


def disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _core_version() -> str:
    from soundnet_cli._version import __version__

    return __version__


def installed_entry_points() -> list[metadata.EntryPoint]:
    """Entry points in the "soundnet" group of every installed distribution."""
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_plugins(disabled: Iterable[str] = ()) -> Plugins:
    """Load builtins and installed plugins, then collect what each registers."""
    blocked = set(disabled) | disabled_from_env()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}

    def add(
        name: str,
        module_name: str,
        loader: Callable[[], ModuleType],
        builtin: bool,
        dist: str | None,
        version: str | None,
    ) -> None:
        info = PluginInfo(name, module_name, dist, version, builtin)
        infos[name] = info
        if name in blocked:
            info.status = "blocked"
            pm.set_blocked(name)
            return
        try:
            pm.register(loader(), name=name)
        except Exception as exc:  # import errors, bad hook signatures: report and skip
            _fail(info, f"failed to load: {_describe(exc)}")

    for name, module_name in BUILTIN_PLUGINS.items():
        add(
            name,
            module_name,
            functools.partial(importlib.import_module, module_name),
            True,
            CORE_DISTRIBUTION,
            _core_version(),
        )

    for ep in installed_entry_points():
        if ep.name in infos:  # our own builtins, or a name already taken
            continue
        dist, version = _distribution_of(ep)
        add(ep.name, ep.value, ep.load, False, dist, version)

    registries = {kind: Registry(kind) for kind in COMPONENT_HOOKS}
    for kind, hook_name in COMPONENT_HOOKS.items():
        _collect(pm, hook_name, registries[kind], infos)
    return Plugins(pm, registries, infos)


def _collect(
    pm: pluggy.PluginManager, hook_name: str, registry: Registry, infos: dict[str, PluginInfo]
) -> None:
    """Call one register_* hook plugin by plugin; a plugin's registrations land all or none."""
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # registration order: builtins first
        info = infos[impl.plugin_name]
        if info.status != "loaded":
            continue
        pending: list[tuple[str, Any, str]] = []

        def register(
            name: str,
            factory: Any,
            *,
            description: str = "",
            _pending: list[tuple[str, Any, str]] = pending,
        ) -> None:
            _pending.append((name, factory, description))

        try:
            impl.function(register=register)
            staged = Registry(registry.kind)  # validates names and duplicates within the plugin
            for name, factory, description in pending:
                registry.ensure_free(name, impl.plugin_name)
                staged.add(name, factory, description=description, plugin=impl.plugin_name)
        except SoundnetError as exc:
            _fail(info, str(exc))
            continue
        except Exception as exc:
            _fail(info, f"{hook_name} failed: {_describe(exc)}")
            continue
        for name, factory, description in pending:
            registry.add(name, factory, description=description, plugin=impl.plugin_name)
        info.registered.setdefault(registry.kind, []).extend(name for name, _, _ in pending)


_loaded: Plugins | None = None
_extra_disabled: set[str] = set()


def disable(names: Iterable[str]) -> None:
    """Block plugins by name for this process (the CLI's --disable-plugin)."""
    global _loaded
    _extra_disabled.update(names)
    _loaded = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    global _loaded
    if _loaded is None:
        _loaded = load_plugins(_extra_disabled)
    return _loaded


def reset_plugins() -> None:
    """Forget loaded plugins (tests; after installing a package at run time)."""
    global _loaded
    _loaded = None
    _extra_disabled.clear()
