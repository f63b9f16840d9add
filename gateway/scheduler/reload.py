"""A reload as a pure diff of two configurations: which models appear, go, change or stay."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import ModelEntry


@dataclass(frozen=True)
class ReloadDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # same id, different entry: the old version drains, the new one loads on demand
    unchanged: tuple[str, ...]  # kept as they are, loaded or not (their aliases may have changed)

    def summary(self) -> dict[str, list[str]]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "unchanged": list(self.unchanged),
        }


def same_version(old: ModelEntry, new: ModelEntry) -> bool:
    """Whether two entries are one version of a model: equal but for their aliases, which are names
    clients may use, not settings of the model (a reload that only renames keeps it loaded)."""
    return old.model_copy(update={"aliases": []}) == new.model_copy(update={"aliases": []})


def diff(old: Mapping[str, ModelEntry], new: Mapping[str, ModelEntry]) -> ReloadDiff:
    """Compare two configurations' models, in the new configuration's order (removed: the old's)."""
    return ReloadDiff(
        added=tuple(m for m in new if m not in old),
        removed=tuple(m for m in old if m not in new),
        changed=tuple(m for m in new if m in old and not same_version(old[m], new[m])),
        unchanged=tuple(m for m in new if m in old and same_version(old[m], new[m])),
    )
