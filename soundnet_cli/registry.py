"""Name -> factory lookups for one kind of component (students, teachers, probes)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from soundnet_cli.errors import DuplicateNameError, SoundnetError, UnknownNameError

NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")
# A family: a kebab-case prefix ending in ":" (``timm:``) that stands for every ``timm:<variant>``.
FAMILY_PATTERN = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*:$")


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str

    @property
    def is_family(self) -> bool:
        return self.name.endswith(":")


class Registry:
    """Components of one kind, keyed by kebab-case name.

    A name ending in ``:`` registers a family: ``timm:`` answers for ``timm:resnet18`` and any
    other ``timm:<variant>``, and its factory receives ``variant="resnet18"``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, factory: Callable[..., Any], *, description: str, plugin: str) -> None:
        if not isinstance(name, str) or not (
            NAME_PATTERN.match(name) or FAMILY_PATTERN.match(name)
        ):
            raise SoundnetError(
                f"plugin {plugin!r} tried to register {self.kind} {name!r}: names are lower-case "
                "kebab-case, like 'soundnet8' or 'vgg16-places' (or a family prefix like 'timm:')"
            )
        if not callable(factory):
            raise SoundnetError(
                f"plugin {plugin!r}: the factory for {self.kind} {name!r} is not callable"
            )
        self.ensure_free(name, plugin)
        self._entries[name] = Entry(name, factory, description, plugin)

    def ensure_free(self, name: str, plugin: str) -> None:
        """Raise DuplicateNameError, naming both plugins, if ``name`` is taken."""
        if name in self._entries:
            other = self._entries[name].plugin
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered by two plugins: {other!r} and {plugin!r}; "
                f"disable one of them (SOUNDNET_DISABLE_PLUGINS={plugin})"
            )

    def remove_plugin(self, plugin: str) -> list[str]:
        """Forget every name ``plugin`` registered (it failed later); returns those names."""
        names = [name for name, entry in self._entries.items() if entry.plugin == plugin]
        for name in names:
            del self._entries[name]
        return names

    def get(self, name: str) -> Entry:
        """The entry for ``name``; for ``family:variant``, the family's entry."""
        entry = self._entries.get(name)
        if entry is not None and not entry.is_family:
            return entry
        prefix, colon, variant = name.partition(":")
        family = self._entries.get(prefix + colon) if colon and variant else None
        if family is not None:
            return family
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        raise UnknownNameError(self.kind, name, known, close) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        entry = self.get(name)
        if entry.is_family:
            return entry.factory(variant=name.partition(":")[2], **kwargs)
        return entry.factory(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)
