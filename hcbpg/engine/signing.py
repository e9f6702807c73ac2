"""Signatures of the audit record: ``ssh-keygen -Y sign`` with the operator's own SSH key.

Why SSH signatures: every operator already has an SSH key (and usually an ssh-agent), OpenSSH
ships the signer and verifier (no new tool, no key format of our own), and the list of who may
sign is a plain ``allowed_signers`` file kept with the environment's params (committed, so a
change to it is reviewed like code).  Two namespaces keep a manifest signature from being
replayed as an approval and the other way round.

Trust lives outside ``outputs/``: the allowed-signers file and the chain head file
(``params/<env>.audit-head``: the newest sealed run and its manifest's sha256) sit beside the
params; anyone who can rewrite ``outputs/`` still cannot produce a signature from an allowed key,
nor make an older head look like the newest.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcbpg.engine import state
from hcbpg.errors import AuditError
from hcbpg.ops.audit_anchor import BucketAnchor
from hcbpg.params import Params

NS_MANIFEST = "hcbpg-audit"
NS_APPROVAL = "hcbpg-approval"
SIGNING_KEY_ENV = "HCBPG_SIGNING_KEY"
#: ssh-keygen signs and verifies in milliseconds; a hang is an agent waiting for a touch or a prompt
TIMEOUT_S = 60.0
_GOOD_RE = re.compile(r'^Good "(?P<ns>[^"]+)" signature for (?P<principal>.+) with (?P<type>\S+) key '
                      r'(?P<fp>SHA256:\S+)', re.M)


@dataclass(frozen=True)
class Trust:
    """Where one environment's trust is kept: who may sign, and the recorded chain head."""

    env: str
    allowed_signers: Path
    head_file: Path
    #: the head anchored in the backup bucket (params ``audit.anchor: bucket``), None when off
    bucket: BucketAnchor | None = None


@dataclass(frozen=True)
class Verified:
    """A signature that verified: who made it (principal in allowed_signers) and the key's fingerprint."""

    principal: str
    fingerprint: str


def _params_path(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base / "params" / p


def trust_for(params: Params | None, env: str, base: Path) -> Trust:
    """The allowed-signers and head files of *env* (params ``audit:``, else the defaults beside the params)."""
    audit = params.audit if params is not None else None
    if audit is not None and audit.allowed_signers:
        signers = _params_path(base, audit.allowed_signers)
    else:
        signers = base / "params" / f"{env}.allowed_signers"
        if not signers.is_file() and (base / "params" / "allowed_signers").is_file():
            signers = base / "params" / "allowed_signers"
    head = (_params_path(base, audit.head_file) if audit is not None and audit.head_file
            else base / "params" / f"{env}.audit-head")
    copy = state.state_dir(base) / "anchors" / f"{env}.bucket.json"  # this machine's copy of the bucket's sequence
    return Trust(env, signers, head, BucketAnchor.from_params(params, copy=copy) if params is not None else None)


def signing_key(params: Params | None) -> Path:
    """The operator's key that signs: ``HCBPG_SIGNING_KEY``, else params ``audit.signing_key``, else ``ssh.key_file``.

    A ``.pub`` file means the private half is in ssh-agent (ssh-keygen asks the agent)."""
    raw = os.environ.get(SIGNING_KEY_ENV) or (params.audit.signing_key if params is not None else None) \
        or (params.ssh.key_file if params is not None else None)
    if not raw:
        raise AuditError("no signing key: the audit record is signed with the operator's SSH key",
                         hint=f"Set {SIGNING_KEY_ENV} to your SSH private key (or its .pub with the key in ssh-agent).")
    key = Path(os.path.expanduser(raw))
    if not key.is_file():
        raise AuditError(f"signing key {key} does not exist",
                         hint=f"Set {SIGNING_KEY_ENV} to your SSH private key, or to its .pub with the key "
                              "loaded in ssh-agent (ssh-add).")
    return key


def _ssh_keygen(args: list[str], *, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["ssh-keygen", *args], input=data if data is not None else b"",
                              capture_output=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise AuditError("ssh-keygen is not installed (openssh-client)",
                         hint="Install openssh-client; it signs and verifies the audit record.") from None
    except subprocess.TimeoutExpired:
        raise AuditError(f"ssh-keygen {' '.join(args[:2])} did not finish within {TIMEOUT_S:.0f}s",
                         hint="Is ssh-agent waiting for a confirmation or a hardware key for a touch?") from None


def sign(data: bytes, key: Path, namespace: str) -> str:
    """An armored SSH signature of *data* (``-----BEGIN SSH SIGNATURE-----``)."""
    proc = _ssh_keygen(["-Y", "sign", "-q", "-f", str(key), "-n", namespace], data=data)
    if proc.returncode != 0 or b"BEGIN SSH SIGNATURE" not in proc.stdout:
        raise AuditError(f"could not sign with {key}: {proc.stderr.decode(errors='replace').strip()[:300]}",
                         hint=f"Check the key (or that ssh-agent holds it), or point {SIGNING_KEY_ENV} at another.")
    return proc.stdout.decode()


def parse_good_signature(output: str) -> Verified | None:
    """The principal and fingerprint from ``ssh-keygen -Y verify`` output; None when it says no good signature."""
    m = _GOOD_RE.search(output)
    return Verified(m.group("principal"), m.group("fp")) if m else None


def render_verify_time(at: _dt.datetime) -> str:
    """``ssh-keygen -O verify-time=`` form of *at* (UTC, to the second)."""
    return at.astimezone(_dt.timezone.utc).strftime("%Y%m%d%H%M%SZ")


def verify(data: bytes, signature: str, allowed_signers: Path, namespace: str,
           *, at: _dt.datetime | None = None) -> Verified:
    """Check *signature* over *data* against *allowed_signers*; raises AuditError saying why it does not hold.

    *at*: judge the keys' ``valid-after=``/``valid-before=`` at that time (when the signature was made)
    instead of now, so that retiring a key does not invalidate what it signed while it was valid."""
    when = [f"-Overify-time={render_verify_time(at)}"] if at is not None else []
    if not allowed_signers.is_file():
        raise AuditError(f"no allowed-signers file at {allowed_signers}",
                         hint="List each operator's public key there (ssh-keygen's allowed_signers format: "
                              'principal namespaces="hcbpg-audit,hcbpg-approval" ssh-ed25519 AAAA...) and commit it.')
    with tempfile.TemporaryDirectory(prefix="hcbpg-sig-") as d:
        sig = Path(d) / "sig"
        sig.write_text(signature)
        found = _ssh_keygen(["-Y", "find-principals", "-s", str(sig), "-f", str(allowed_signers), *when])
        principals = [p for p in found.stdout.decode(errors="replace").splitlines() if p.strip()]
        if found.returncode != 0 or not principals:
            when_said = f" as valid at {at:%Y-%m-%dT%H:%M:%SZ}" if at is not None else ""
            raise AuditError(f"signed by a key that is not in {allowed_signers}{when_said}")
        for principal in principals:
            proc = _ssh_keygen(["-Y", "verify", "-f", str(allowed_signers), "-I", principal, "-n", namespace,
                                "-s", str(sig), *when], data=data)
            good = parse_good_signature(proc.stdout.decode(errors="replace"))
            if proc.returncode == 0 and good is not None:
                return good
    raise AuditError(f"the signature does not match the content (or not for namespace {namespace}): "
                     "changed after it was signed")


def public_key_of(key: Path) -> str:
    """The public key line of *key* (its ``.pub``, or derived from the private key)."""
    pub = key if key.suffix == ".pub" else key.with_name(key.name + ".pub")
    if pub.is_file():
        return pub.read_text().strip()
    proc = _ssh_keygen(["-y", "-f", str(key)])
    if proc.returncode != 0:
        raise AuditError(f"cannot read the public key of {key}: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return proc.stdout.decode().strip()


def render_allowed_signer(principal: str, public_key: str) -> str:
    """One line of an allowed-signers file: *principal* may sign records and approvals with *public_key*."""
    if not re.fullmatch(r"[A-Za-z0-9._@+-]+", principal):
        raise AuditError(f"principal {principal!r}: use letters, digits and . _ @ + - only")
    fields = public_key.split()
    return f'{principal} namespaces="{NS_MANIFEST},{NS_APPROVAL}" {fields[0]} {fields[1]}'


def check_can_sign(params: Params | None, trust: Trust) -> Verified:
    """Before a run starts: the operator's key signs, and the environment's allowed signers accept it."""
    key = signing_key(params)
    probe = f"hcbpg signing probe for {trust.env}".encode()
    try:
        return verify(probe, sign(probe, key, NS_MANIFEST), trust.allowed_signers, NS_MANIFEST)
    except AuditError as exc:
        raise AuditError(f"{trust.env}: the record of this run could not be signed and verified: {exc.message}",
                         hint=f"Add your public key ({public_key_of(key).split()[0]} …) to {trust.allowed_signers} "
                              f"with your name as principal, or set {SIGNING_KEY_ENV} to a key listed there. "
                              "Nothing was run.") from None


# approvals -----------------------------------------------------------------------------

def plan_digest(*, step: str, gate: str, question: str, code_sha256: str, plan: Any = None) -> str:
    """sha256 of what a gate approves: the step's code, the gate's question (it names the plan) and *plan*."""
    body = json.dumps({"step": step, "gate": gate, "question": question, "code_sha256": code_sha256, "plan": plan},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


STATEMENT_FIELDS = ("run_id", "environment", "gate", "step", "question", "params_sha256", "plan_sha256",
                    "approved_at", "note", "via")


def render_statement(fields: dict[str, Any]) -> bytes:
    """The exact bytes an approval signs (canonical JSON of :data:`STATEMENT_FIELDS`)."""
    missing = [f for f in STATEMENT_FIELDS if f not in fields]
    if missing:
        raise AuditError(f"approval statement lacks {', '.join(missing)}")
    return json.dumps({f: fields[f] for f in STATEMENT_FIELDS}, sort_keys=True, separators=(",", ":")).encode()


def approval_problem(gate: dict[str, Any], *, run_id: str, env: str, name: str, step: str, params_sha256: str,
                     plan_sha256: str, allowed_signers: Path) -> str | None:
    """Why a recorded approval does not hold for this gate now (None: it holds).

    It holds when its statement is signed by an allowed signer and names this run, gate and
    step, the params as they are now and the plan as it is now."""
    proof = gate.get("proof")
    if not gate.get("approved_at"):
        return "not approved"
    if not isinstance(proof, dict) or not proof.get("signature") or not isinstance(proof.get("statement"), dict):
        return "the approval carries no signed statement (set by hand?)"
    st = proof["statement"]
    try:
        who = verify(render_statement(st), proof["signature"], allowed_signers, NS_APPROVAL)
    except AuditError as exc:
        return f"its signature does not hold: {exc.message}"
    expected = {"run_id": run_id, "environment": env, "gate": name, "step": step}
    for k, v in expected.items():
        if st.get(k) != v:
            return f"it approves {k} {st.get(k)!r}, not {v!r}"
    if st.get("approved_at") != gate.get("approved_at"):
        return "its time differs from the signed statement"
    if st.get("params_sha256") != params_sha256:
        return (f"the params changed since it was approved (sha256 {str(st.get('params_sha256'))[:12]}…, "
                f"now {params_sha256[:12]}…)")
    if st.get("plan_sha256") != plan_sha256:
        return "the step's plan changed since it was approved"
    if proof.get("principal") != who.principal:
        return f"it names the signer {proof.get('principal')!r} but was signed by {who.principal}"
    if gate.get("via") != "auto" and gate.get("approved_by") != who.principal:
        return f"it names {gate.get('approved_by')!r} as approver but was signed by {who.principal}"
    return None


def sign_approval(fields: dict[str, Any], params: Params | None, trust: Trust) -> dict[str, Any]:
    """Sign an approval statement with the operator's key; returns the gate's ``proof``."""
    statement = {f: fields[f] for f in STATEMENT_FIELDS}
    signature = sign(render_statement(statement), signing_key(params), NS_APPROVAL)
    who = verify(render_statement(statement), signature, trust.allowed_signers, NS_APPROVAL)
    return {"statement": statement, "signature": signature, "principal": who.principal,
            "key_fingerprint": who.fingerprint}
