"""The plugin manager: builtins first, then third-party entry points in the "soundnet" group.

Builtin components live in ordinary plugin modules under ``soundnet_cli/builtins`` and are
declared in our own ``[project.entry-points.soundnet]`` table, so they load through the same path
as anyone else's. A plugin that fails to import, or whose hook fails, is recorded and skipped.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
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

log = logging.getLogger(__name__)

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
    warnings: list[str] = field(default_factory=list)  # e.g. what it printed while loading

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
            "warnings": list(self.warnings),
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
        """Let every plugin add its CLI commands to ``app``.

        Each plugin adds to a scratch app first; its commands move to ``app`` only when the hook
        succeeded and no name is taken (a builtin command, or another plugin's), so a plugin
        can never replace ``extract``. A plugin that fails here registers nothing at all.
        """
        import typer

        taken = {name: "soundnet-cli" for name in command_names(app)}
        for impl in self.manager.hook.register_commands.get_hookimpls():
            info = self.infos[impl.plugin_name]
            if info.status != "loaded":
                continue
            scratch = typer.Typer()
            try:
                with _quiet(info, "adding commands"):
                    impl.function(app=scratch)
                names = command_names(scratch)
                for name in names:
                    if name in taken:
                        owner = taken[name]
                        raise SoundnetError(
                            f"it adds the command {name!r}, which "
                            + (
                                "is a builtin command"
                                if owner == "soundnet-cli"
                                else f"plugin {owner!r} adds too"
                            )
                        )
            except CONTAINED as exc:  # a broken plugin must not break the CLI
                reason = str(exc) if isinstance(exc, SoundnetError) else _describe(exc)
                self.fail(info, f"register_commands failed: {reason}")
                continue
            taken.update(dict.fromkeys(names, info.name))
            app.registered_commands.extend(scratch.registered_commands)
            app.registered_groups.extend(scratch.registered_groups)
            info.adds_commands = bool(names)

    def fail(self, info: PluginInfo, message: str) -> None:
        """Mark a plugin failed and take back everything it registered."""
        _fail(info, message)
        self.forget(info)

    def forget(self, info: PluginInfo) -> None:
        for registry in self.registries.values():
            registry.remove_plugin(info.name)
        info.registered = {}
        if self.manager.get_plugin(info.name) is not None:
            self.manager.unregister(name=info.name)


# What a plugin may raise and we contain: any error, and SystemExit (a plugin that calls
# sys.exit() at import must not end the CLI); KeyboardInterrupt still stops everything.
CONTAINED = (Exception, SystemExit)


def command_names(app: Any) -> list[str]:
    """The names of the commands and command groups added to a Typer ``app``."""
    from typer.main import get_command_name
    from typer.models import DefaultPlaceholder

    names = []
    for command in app.registered_commands:
        name = command.name or get_command_name(command.callback.__name__)
        names.append(name)
    for group in app.registered_groups:
        name = group.name
        if name is None or isinstance(name, DefaultPlaceholder):
            name = group.typer_instance.info.name if group.typer_instance else None
        if isinstance(name, str):
            names.append(name)
    return names


@contextlib.contextmanager
def _quiet(info: PluginInfo, stage: str) -> Any:
    """Keep what a plugin prints off stdout (where `--json` output goes); say what it printed
    on stderr (a warning) and in the plugin's ``warnings``."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        text = printed.getvalue().strip()
        if text:
            shown = text if len(text) <= 200 else text[:200] + "..."
            message = f"printed while {stage} (kept off stdout): {shown!r}"
            info.warnings.append(message)
            log.warning("plugin %r %s", info.name, message)


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
            with _quiet(info, "loading"):
                module = loader()
            pm.register(module, name=name)
        except CONTAINED as exc:  # import errors, sys.exit(), bad hook signatures: skip
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
        if BUILTIN_PLUGINS.get(ep.name) == ep.value:  # our own table's entry for a builtin
            continue
        dist, version = _distribution_of(ep)
        if ep.name in infos:  # a name a builtin (or an earlier plugin) already has
            _refuse_duplicate(infos, ep, dist, version)
            continue
        add(ep.name, ep.value, ep.load, False, dist, version)

    registries = {kind: Registry(kind) for kind in COMPONENT_HOOKS}
    for kind, hook_name in COMPONENT_HOOKS.items():
        _collect(pm, hook_name, registries[kind], infos)
    loaded = Plugins(pm, registries, infos)
    for info in loaded.failures():  # a plugin that failed in one hook keeps nothing from others
        loaded.forget(info)
    return loaded


def _refuse_duplicate(
    infos: dict[str, PluginInfo],
    ep: metadata.EntryPoint,
    dist: str | None,
    version: str | None,
) -> None:
    """List an entry point whose name is taken as blocked, with the reason, and warn: it is
    never loaded, and it must not disappear silently either."""
    owner = infos[ep.name]
    taken_by = "a builtin plugin of soundnet-cli" if owner.builtin else f"{owner.module}"
    reason = (
        f"entry point {ep.name!r} ({ep.value}) is not loaded: the name is taken by {taken_by}; "
        "the plugin must use another entry-point name"
    )
    key, n = f"{ep.name} ({dist or ep.value})", 2
    while key in infos:
        key, n = f"{ep.name} ({dist or ep.value}, {n})", n + 1
    infos[key] = PluginInfo(
        ep.name, ep.value, dist, version, False, status="blocked", errors=[reason]
    )
    log.warning("plugin %s", reason)


def _collect(
    pm: pluggy.PluginManager, hook_name: str, registry: Registry, infos: dict[str, PluginInfo]
) -> None:
    """Call one register_* hook plugin by plugin; a plugin's registrations land all or none."""
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # registration order: builtins first
        info = infos[impl.plugin_name]
        if info.status != "loaded":
            continue
        pending: list[tuple[str, Any, dict[str, Any]]] = []

        def register(
            name: str,
            factory: Any,
            *,
            _pending: list[tuple[str, Any, dict[str, Any]]] = pending,
            **options: Any,
        ) -> None:
            _pending.append((name, factory, options))  # description=, pretrained=

        try:
            with _quiet(info, f"running {hook_name}"):
                impl.function(register=register)
            staged = Registry(registry.kind)  # validates names and duplicates within the plugin
            for name, factory, options in pending:
                registry.ensure_free(name, impl.plugin_name)
                staged.add(name, factory, plugin=impl.plugin_name, **options)
        except SoundnetError as exc:
            _fail(info, str(exc))
            continue
        except CONTAINED as exc:
            _fail(info, f"{hook_name} failed: {_describe(exc)}")
            continue
        for name, factory, options in pending:
            registry.add(name, factory, plugin=impl.plugin_name, **options)
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
