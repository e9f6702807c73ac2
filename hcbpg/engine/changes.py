"""What steps change: each change's diff on the terminal (``plan --diff``, ``run --diff``), and saved plans.

A saved plan is Terraform's ``plan -out``: ``hcbpg plan ENV --out FILE`` writes what a dry run of the
selected steps would change, each change with its diff, bound to the environment, the params, the
notebooks' code and hcbpg's own code, and signed with the operator's key (ssh-keygen, the
``hcbpg-approval`` namespace: a saved plan approves its changes).  ``hcbpg run ENV --plan FILE`` applies
exactly it:

1. the file is believed only once verified: signed by a key in the environment's allowed signers, for
   this environment, with the params and the code as they are now;
2. under the environment's lock, the same steps are planned again; the run starts only when every step
   would make exactly the changes of the file (same things, same actions, same diffs), else nothing
   runs and the terminal says what changed in the world since;
3. while it runs, a step that makes a change the plan does not list stops the run after that step.

The changes come from the run's manifest (``steps[].diffs``, recorded by the ledger as each outcome
is tracked, scrubbed): a plan file holds no secret, as the manifest does not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcbpg.engine import manifest as mf
from hcbpg.engine import signing
from hcbpg.errors import UsageError

FORMAT = "hcbpg-plan/1"
#: the namespace a plan is signed in: a saved plan is the operator's approval of its changes
NAMESPACE = signing.NS_APPROVAL
#: the fields of a plan file that are signed (everything but the signature and who signed)
SIGNED = ("format", "environment", "created", "plan_run_id", "params_sha256", "library_sha256", "selection",
          "steps")
LIB_DIR = Path(__file__).resolve().parents[1]


# -- the terminal ---------------------------------------------------------------------------------

def render_changes(changes: Sequence[Mapping[str, Any]], *, dry_run: bool, indent: str = "      ") -> list[str]:
    """The lines ``--diff`` prints for one step's changes: what, its actions, its diff (``ansible --diff``)."""
    verb = "would change" if dry_run else "changed"
    out: list[str] = []
    for c in changes:
        out.append(f"{indent}{'~' if dry_run else '*'} {c.get('what', '?')}: {verb}")
        out += [f"{indent}    - {a}" for a in c.get("actions") or []]
        out += [f"{indent}    {line}" for line in str(c.get("diff") or "").rstrip("\n").splitlines()]
    return out


# -- what a plan binds ----------------------------------------------------------------------------

def library_sha256(root: Path = LIB_DIR) -> str:
    """sha256 over hcbpg's own source (each ``.py`` and ``.yaml`` file by path): the code a plan was made with."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".yaml") and p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def plan_steps(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each step of a run's manifest as a plan holds it: key, the notebook's code digest, its changes."""
    return [{"key": s["key"], "code_sha256": s.get("code_sha256"),
             "changes": [{"what": c.get("what"), "actions": list(c.get("actions") or []), "diff": c.get("diff", "")}
                         for c in s.get("diffs") or []]}
            for s in manifest.get("steps", [])]


def render_plan(manifest: Mapping[str, Any], *, library: str, created: str | None = None) -> dict[str, Any]:
    """The plan (unsigned) of a finished dry run: its selection, params and code digests, each step's changes."""
    if not manifest.get("dry_run"):
        raise UsageError(f"run {manifest.get('run_id')} is not a plan (dry run): only a plan is saved")
    if manifest.get("status") != "succeeded":
        raise UsageError(f"plan {manifest.get('run_id')} did not succeed ({manifest.get('status')}): "
                         "nothing saved", hint="Fix what stopped it, then plan again.")
    sel = manifest.get("selection") or {}
    return {"format": FORMAT, "environment": manifest["environment"], "created": created or mf.utcnow(),
            "plan_run_id": manifest["run_id"], "params_sha256": manifest["params_sha256"], "library_sha256": library,
            "selection": {"steps": [s["key"] for s in manifest.get("steps", [])],
                          "inputs": dict(sel.get("inputs") or {})},
            "steps": plan_steps(manifest)}


def signed_bytes(plan: Mapping[str, Any]) -> bytes:
    """The canonical bytes a plan's signature covers."""
    return json.dumps({k: plan.get(k) for k in SIGNED}, sort_keys=True, separators=(",", ":")).encode()


def plan_sha256(plan: Mapping[str, Any]) -> str:
    return hashlib.sha256(signed_bytes(plan)).hexdigest()


def write_plan(path: Path, plan: dict[str, Any], *, key: Path, trust: signing.Trust) -> signing.Verified:
    """Sign *plan* with *key*, check the environment's allowed signers accept it, write it to *path*."""
    data = signed_bytes(plan)
    signature = signing.sign(data, key, NAMESPACE)
    who = signing.verify(data, signature, trust.allowed_signers, NAMESPACE)
    doc = {**plan, "signed_by": who.principal, "key_fingerprint": who.fingerprint, "signature": signature}
    mf.atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n", mode=0o644)
    return who


@dataclass(frozen=True)
class SavedPlan:
    """A plan file that verified: its content, who signed it and its digest."""

    plan: dict[str, Any]
    signer: signing.Verified
    sha256: str

    @property
    def steps(self) -> list[str]:
        return list(self.plan["selection"]["steps"])

    @property
    def inputs(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.plan["selection"].get("inputs") or {}).items()}

    def expected(self) -> dict[str, list[str]]:
        """What each step may change: the things the plan names (a step's manifest keeps it for the run)."""
        return {s["key"]: sorted({c["what"] for c in s["changes"]}) for s in self.plan["steps"]}


def load_plan(path: Path, *, env: str, trust: signing.Trust, params_sha256: str, library: str,
              code: Mapping[str, str]) -> SavedPlan:
    """Read and verify a plan file; UsageError (nothing runs) naming what does not hold.

    *code*: each step's notebook code digest now (``manifest.code_sha256``)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"plan file {path} cannot be read: {exc}", hint="Give the file `hcbpg plan --out` wrote.") \
            from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("signature"), str):
        raise UsageError(f"{path} is not an hcbpg plan ({FORMAT})", hint="Give the file `hcbpg plan --out` wrote.")
    try:
        who = signing.verify(signed_bytes(doc), doc["signature"], trust.allowed_signers, NAMESPACE)
    except Exception as exc:  # noqa: BLE001 - AuditError (or a malformed file): refused, said why
        raise UsageError(f"plan {path} is not believed: {getattr(exc, 'message', exc)}",
                         hint="Only a plan signed by a key in the allowed signers is applied; plan again.") from None
    plan = {k: doc[k] for k in SIGNED if k in doc}
    problems = plan_problems(plan, env=env, params_sha256=params_sha256, library=library, code=code)
    if problems:
        raise UsageError(f"plan {path} (signed by {who.principal}) no longer applies: " + "; ".join(problems),
                         hint=f"Plan again (hcbpg plan {env} --out FILE), review it, and apply the new one.")
    return SavedPlan(plan, who, plan_sha256(plan))


def plan_problems(plan: Mapping[str, Any], *, env: str, params_sha256: str, library: str,
                  code: Mapping[str, str]) -> list[str]:
    """Why a verified plan does not apply here and now ([] when it does)."""
    out = []
    if plan.get("environment") != env:
        out.append(f"it is a plan of {plan.get('environment')!r}, not of {env!r}")
    if plan.get("params_sha256") != params_sha256:
        out.append(f"params/{env}.yaml changed since it was planned")
    if plan.get("library_sha256") != library:
        out.append("hcbpg's code changed since it was planned")
    for s in plan.get("steps") or []:
        now = code.get(s.get("key", ""))
        if now is None:
            out.append(f"step {s.get('key')} is no longer a step")
        elif s.get("code_sha256") != now:
            out.append(f"the notebook of step {s.get('key')} changed since it was planned")
    return out


def compare_steps(planned: Iterable[Mapping[str, Any]], now: Iterable[Mapping[str, Any]]) -> list[str]:
    """What the world changed since the plan: each step whose changes now differ from the planned ones
    ([] when every step would make exactly the planned changes)."""
    before = {s["key"]: s for s in planned}
    after = {s["key"]: s for s in now}
    out = []
    for key in [*before, *[k for k in after if k not in before]]:
        a = [_norm(c) for c in (before.get(key) or {}).get("changes", [])]
        b = [_norm(c) for c in (after.get(key) or {}).get("changes", [])]
        if a == b:
            continue
        was = {c[0]: c for c in a}
        is_ = {c[0]: c for c in b}
        said = [f"now also changes {w}" for w in is_ if w not in was]
        said += [f"no longer changes {w}" for w in was if w not in is_]
        said += [f"{w}: a different change now" for w in was if w in is_ and was[w] != is_[w]]
        out.append(f"step {key}: " + ("; ".join(said) or "its changes are in another order"))
    return out


def _norm(c: Mapping[str, Any]) -> tuple[str, tuple[str, ...], str]:
    return (str(c.get("what")), tuple(c.get("actions") or ()), str(c.get("diff") or ""))


def beyond_plan(expected: Mapping[str, Sequence[str]], key: str, changes: Iterable[Mapping[str, Any]]) -> list[str]:
    """The things step *key* changed that the applied plan does not list for it."""
    allowed = set(expected.get(key, ()))
    return sorted({str(c.get("what")) for c in changes} - allowed)
