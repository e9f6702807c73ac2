"""The shape inside the layers (issue 26), beyond imports:

- pure code (``render_*``, ``parse_*``, ``plan_*``) of the operational layers (adapters, ops, steps)
  lives in :mod:`hcbpg.pg` and :mod:`hcbpg.desired` (:data:`OPERATIONAL`; the foundation sits below
  pg/desired, so its own parsers stay there; the engine's record formats and the lab are not the
  runbook's operations);
- every public function of :mod:`hcbpg.ops` is an operation: its name starts with a verb of
  :data:`VERBS` and its first parameter is an adapter (a host, a psql, a cloud client, an object
  store), typed by its protocol;
- no operation takes ``Host | None``: a server not there yet is an ``AbsentHost``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import hcbpg
import hcbpg.ops

pytestmark = pytest.mark.architecture

PACKAGE = Path(hcbpg.__file__).parent

#: what a public operation's name starts with (STYLE.md: get_ reads, ensure_ is idempotent and returns
#: what changed, run_ is a deliberate one-shot, wait_for_ polls with a deadline, check_ verifies;
#: release_ gives back what an ensure_ took: a lock)
VERBS = ("get_", "ensure_", "run_", "wait_for_", "check_", "release_")

#: the types an operation's first parameter may have (protocols of hcbpg.adapters, and the clients
#: of outside services an adapter wraps)
ADAPTER_TYPES = re.compile(r"\b(HostLike|PsqlLike|EndpointLike|SourceLike|ObjectStoreLike|AnchorStoreLike|CloudLike|"
                           r"SecretStoreLike|Site|OutsiderRunner|LocalRunner|EtcdCtl|PatroniApi)\b")

#: pure function prefixes, at home only in pg/ and desired/
PURE = ("render_", "parse_", "plan_")

#: the layers where operations and their adapters and compositions live: no pure renderer, parser
#: or planner of their own
OPERATIONAL = ("adapters/", "ops/", "steps/")


def _ops_functions() -> list[tuple[str, str, inspect.Signature]]:
    out = []
    for info in pkgutil.walk_packages(hcbpg.ops.__path__, "hcbpg.ops."):
        if info.name.startswith("hcbpg.ops.jobs"):
            continue  # stdlib-only programs shipped to servers, not operations
        mod = importlib.import_module(info.name)
        for name, fn in vars(mod).items():
            if not name.startswith("_") and inspect.isfunction(fn) and fn.__module__ == info.name:
                out.append((info.name, name, inspect.signature(fn)))
    return out


def test_pure_functions_live_only_in_pg_and_desired():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not rel.startswith(OPERATIONAL) or rel.startswith("ops/jobs/"):
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith(PURE):
                wrong.append(f"hcbpg/{rel}:{node.lineno} {node.name}")
    assert not wrong, ("render_/parse_/plan_ functions in adapters, ops or steps (move them to hcbpg/pg or hcbpg/desired, or, if "
                       "they do I/O, name them as operations):\n  " + "\n  ".join(wrong))


def test_public_operations_are_named_with_a_verb():
    wrong = [f"{m}.{n}" for m, n, _ in _ops_functions() if not n.startswith(VERBS)]
    assert not wrong, f"public functions in hcbpg.ops not named {'/'.join(VERBS)}:\n  " + "\n  ".join(wrong)


def test_every_operation_takes_an_adapter_first():
    wrong = []
    for m, n, sig in _ops_functions():
        params = list(sig.parameters.values())
        first = params[0].annotation if params else None
        if not isinstance(first, str) or not ADAPTER_TYPES.search(first):
            wrong.append(f"{m}.{n}({params[0].name + ': ' + str(first) if params else ''})")
    assert not wrong, "operations whose first parameter is not an adapter protocol:\n  " + "\n  ".join(wrong)


def test_no_operation_takes_host_or_none():
    hits = [f"{p.relative_to(PACKAGE).as_posix()}:{i}" for p in sorted((PACKAGE / "ops").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if "Host | None" in line]
    assert not hits, "`Host | None` in hcbpg/ops (a server not there yet is an AbsentHost):\n  " + "\n  ".join(hits)


def test_ops_do_not_name_the_concrete_adapters():
    pattern = re.compile(r"from hcbpg\.adapters\.(host|psql) import .*\b(Host|Psql)\b(?!\w)")
    hits = [f"{p.relative_to(PACKAGE).as_posix()}:{i}: {line.strip()}"
            for p in sorted((PACKAGE / "ops").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "ops import the concrete Host/Psql (type them as HostLike/PsqlLike):\n  " + "\n  ".join(hits)
