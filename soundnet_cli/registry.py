"""Name -> factory lookups for one kind of component (students, teachers, probes)."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from soundnet_cli.errors import (
    DuplicateNameError,
    SoundnetError,
    UnknownNameError,
    UsageProblem,
)

NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")
# A family: a kebab-case prefix ending in ":" (``timm:``) that stands for every ``timm:<variant>``.
FAMILY_PATTERN = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*:$")
# Pretrained weights a component publishes under a tag: a native checkpoint file, or a function
# (no arguments) returning its path, e.g. one that downloads and caches the file first.
PretrainedSource = Union[str, os.PathLike, Callable[[], Union[str, os.PathLike]]]  # noqa: UP007


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    # tag -> weights, in the order registered (the first is the default tag)
    pretrained: Mapping[str, PretrainedSource] = field(default_factory=dict)

    @property
    def is_family(self) -> bool:
        return self.name.endswith(":")

    @property
    def default_tag(self) -> str | None:
        """The first pretrained tag registered, or None when no weights are published."""
        return next(iter(self.pretrained), None)

    def weights_path(self, tag: str | None = None) -> Path:
        """The checkpoint file of pretrained ``tag`` (default: :attr:`default_tag`); a source
        that is a function runs now (it may download). UsageProblem for an unknown tag."""
        if not self.pretrained:
            raise UsageProblem(f"{self.name!r} publishes no pretrained weights")
        chosen = tag if tag is not None else next(iter(self.pretrained))
        if chosen not in self.pretrained:
            raise UsageProblem(
                f"{self.name!r} has no pretrained weights tagged {chosen!r}; "
                f"its tags: {', '.join(self.pretrained)}"
            )
        source = self.pretrained[chosen]
        return Path(os.fspath(source() if callable(source) else source))


class Registry:
    """Components of one kind, keyed by kebab-case name.

    A name ending in ``:`` registers a family: ``timm:`` answers for ``timm:resnet18`` and any
    other ``timm:<variant>``, and its factory receives ``variant="resnet18"``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        description: str = "",
        plugin: str,
        pretrained: Mapping[str, PretrainedSource] | None = None,
    ) -> None:
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
        if not isinstance(description, str):
            raise SoundnetError(
                f"plugin {plugin!r}: the description of {self.kind} {name!r} must be a string"
            )
        tags = _check_pretrained(self.kind, name, plugin, pretrained)
        self.ensure_free(name, plugin)
        self._entries[name] = Entry(name, factory, description, plugin, tags)

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


def _check_pretrained(
    kind: str, name: str, plugin: str, pretrained: Mapping[str, PretrainedSource] | None
) -> dict[str, PretrainedSource]:
    """``pretrained`` as a plain dict, after checking its tags (kebab-case) and sources (a path
    or a function returning one); SoundnetError naming the plugin otherwise."""
    if pretrained is None:
        return {}
    where = f"plugin {plugin!r}, {kind} {name!r}"
    if not isinstance(pretrained, Mapping):
        raise SoundnetError(f"{where}: pretrained must map tags to weights, e.g. {{'v1': path}}")
    for tag, source in pretrained.items():
        if not isinstance(tag, str) or not NAME_PATTERN.match(tag):
            raise SoundnetError(
                f"{where}: pretrained tag {tag!r} must be lower-case kebab-case, like 'v1'"
            )
        if not (isinstance(source, (str, os.PathLike)) or callable(source)):
            raise SoundnetError(
                f"{where}: pretrained {tag!r} must be a checkpoint path or a function "
                f"returning one, not {type(source).__name__}"
            )
    return dict(pretrained)
