"""The operator's secret store as an adapter: secret references (``env:``, ``file:``, ``op://``)
resolved and stored through :mod:`hcbpg.secrets`, with a journal like a host's, so an operation that
creates a missing secret is one code path on a real run and on a dry run.

    SecretStore()              resolves and stores for real (a ``file:`` secret written 0600)
    DryRunSecretStore(inner)   resolves through *inner*, records each store instead of doing it
                               (later resolves of that reference see the recorded value)

The operator's private files that hold secrets (the handed-out database URLs) go through it too:
``get_private_file`` reads (on a dry run as well), ``put_private_file`` writes 0600 whole (a dry run records).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from hcbpg import secrets as hsecrets


@runtime_checkable
class SecretStoreLike(Protocol):
    """Where secret references are resolved and new secrets stored (what ops that make secrets take)."""

    #: True when stores are only recorded
    dry_run: bool
    #: ``store <key> at <scheme>:`` per secret stored (or, on a dry run, that would be); never a value
    journal: list[str]

    def resolve(self, ref: str, *, key: str) -> str:
        """The secret's value (registered for scrubbing); SecretError when it cannot be read."""
        ...

    def store(self, ref: str, value: str, *, key: str) -> None:
        """Store a new value at *ref* (``file:`` 0600, ``op://``); SecretError for ``env:``."""
        ...

    def get_private_file(self, path: Path) -> str | None:
        """The text of the operator's private file *path* (None when there is none)."""
        ...

    def put_private_file(self, path: Path, text: str) -> None:
        """Write *path* whole, 0600 (its directory 0700), never through a symlink."""
        ...


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _shown(ref: str, key: str) -> str:
    return f"store {key} at {ref.split(':', 1)[0]}:"


class SecretStore:
    """The operator's secrets, through :func:`hcbpg.secrets.resolve` and :func:`~hcbpg.secrets.store_secret`."""

    dry_run = False

    def __init__(self) -> None:
        self.journal: list[str] = []

    def resolve(self, ref: str, *, key: str) -> str:
        return hsecrets.resolve(ref, key=key)

    def store(self, ref: str, value: str, *, key: str) -> None:
        self.journal.append(_shown(ref, key))
        hsecrets.store_secret(ref, value, key=key)

    def get_private_file(self, path: Path) -> str | None:
        return _read(path)

    def put_private_file(self, path: Path, text: str) -> None:
        self.journal.append(f"write {path} (0600)")
        hsecrets.write_private_file(path, text)


class DryRunSecretStore:
    """Reads *inner*; records what it would store (and answers later resolves of it), stores nothing."""

    dry_run = True

    def __init__(self, inner: SecretStoreLike) -> None:
        self.inner = inner
        self.journal: list[str] = []
        self.stored: dict[str, str] = {}

    def resolve(self, ref: str, *, key: str) -> str:
        if ref in self.stored:
            return self.stored[ref]
        return self.inner.resolve(ref, key=key)

    def store(self, ref: str, value: str, *, key: str) -> None:
        hsecrets.register(value)
        self.journal.append(_shown(ref, key))
        self.stored[ref] = value

    def get_private_file(self, path: Path) -> str | None:
        return self.inner.get_private_file(path)

    def put_private_file(self, path: Path, text: str) -> None:
        self.journal.append(f"write {path} (0600)")


def secret_store(dry_run: bool) -> SecretStoreLike:
    """The operator's store, or a dry run over it."""
    return DryRunSecretStore(SecretStore()) if dry_run else SecretStore()
