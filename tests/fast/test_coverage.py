"""The fast tier covers every public ``ensure_*`` in :mod:`hcbpg.ops` in every case of :data:`specs.CASES`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import hcbpg.ops
from tests.fast import specs


def _public_ensures() -> set[str]:
    out: set[str] = set()
    for info in pkgutil.walk_packages(hcbpg.ops.__path__, "hcbpg.ops."):
        if info.name.startswith("hcbpg.ops.jobs"):
            continue  # stdlib-only scripts shipped to servers, not operations
        mod = importlib.import_module(info.name)
        for name, fn in vars(mod).items():
            if name.startswith("ensure_") and inspect.isfunction(fn) and fn.__module__ == info.name:
                out.add(f"{info.name}.{name}")
    return out


def _load_specs() -> None:
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        if path.stem != "test_coverage":
            importlib.import_module(f"tests.fast.{path.stem}")


def test_every_public_ensure_has_a_spec_for_every_case():
    _load_specs()
    missing = {name: sorted(set(specs.CASES) - specs.COVERED.get(name, set()))
               for name in sorted(_public_ensures())}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, "ensure_* without a fast spec for these cases:\n" + "\n".join(
        f"  {k}: {', '.join(v)}" for k, v in missing.items())


def test_specs_name_functions_that_exist():
    _load_specs()
    stale = sorted(set(specs.COVERED) - _public_ensures())
    assert not stale, f"specs cover functions that are not public ensure_* in hcbpg.ops: {stale}"
