"""The life of an environment's record beyond one run: a new chain (the old record set aside) and a change of
who may sign (a signed ``signers`` record in the chain).  See :mod:`hcbpg.engine.manifest` for the chain itself.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import socket
import tempfile
from pathlib import Path

from hcbpg.engine import manifest as mf
from hcbpg.engine import signing, state
from hcbpg.errors import AuditError, UsageError

# a new chain ------------------------------------------------------------------------

def set_aside(home: Path, env: str, trust: signing.Trust, *, why: str) -> Path | None:
    """Move *env*'s record (runs, head file, this machine's anchor) to ``outputs/.set-aside/<env>-<time>/``
    so that a new chain starts; returns where, or None when there was nothing to set aside."""
    edir = mf.env_dir(home, env)
    anchor = mf.anchor_path(home, env)
    has_runs = edir.is_dir() and any(edir.iterdir())
    if not (has_runs or trust.head_file.is_file() or anchor.is_file()):
        return None
    if trust.bucket is not None:  # the bucket's sequence starts again too (CloudError when it cannot be reached)
        trust.bucket.append_set_aside(at=mf.utcnow(), by=mf.operator_name(), why=why)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    dest = mf.outputs_dir(home) / ".set-aside" / f"{env}-{stamp}"
    dest.mkdir(parents=True)
    if edir.is_dir():
        shutil.move(str(edir), str(dest / "runs"))
    if trust.head_file.is_file():
        shutil.move(str(trust.head_file), str(dest / trust.head_file.name))
    if anchor.is_file():
        shutil.move(str(anchor), str(dest / "anchor.json"))
    shutil.rmtree(state.state_dir(home) / "written" / env, ignore_errors=True)
    (dest / "SET-ASIDE").write_text(f"set aside at {mf.utcnow()} by {mf.operator_name()} on {socket.gethostname()}: "
                                    f"{why}\n")
    return dest


# who may sign -----------------------------------------------------------------------

def last_signers(home: Path, env: str) -> tuple[mf.Run, dict[str, str]] | None:
    """The newest sealed run that recorded the allowed signers it was sealed against, and that record."""
    for run in reversed(mf.list_runs(home, env)):
        try:
            rec = (run.read().get("sealed") or {}).get("allowed_signers")
        except AuditError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            return run, rec
    return None


def record_signers_change(home: Path, env: str, sealer: mf.Sealer, *, params_sha256: str, repo: Path) -> mf.Run:
    """Add a signers-change record to *env*'s chain: the allowed-signers file as it is now, signed by the
    operator, whose key must be allowed by the file as the last run was sealed against it.

    The caller holds the environment's lock and has verified the chain."""
    last = last_signers(home, env)
    if last is None:
        raise UsageError(f"no sealed run of {env} records its allowed signers yet: there is no change to record",
                         hint="The first run sealed records them; later changes are recorded with this command.")
    before_run, before = last
    now = mf.signers_record(sealer.trust)
    if now["sha256"] == before["sha256"]:
        raise UsageError(f"{sealer.trust.allowed_signers} is as {before_run.path.name} was sealed against: "
                         "nothing to record")
    with tempfile.TemporaryDirectory(prefix="hcbpg-signers-") as d:
        old = Path(d) / "allowed_signers"
        old.write_text(before["text"])
        probe = f"hcbpg signers change of {env}".encode()
        try:
            signing.verify(probe, signing.sign(probe, sealer.key, signing.NS_MANIFEST), old, signing.NS_MANIFEST)
        except AuditError as exc:
            raise AuditError(f"{env}: only a key already allowed may change who may sign, and yours is not in the "
                             f"allowed signers {before_run.path.name} was sealed against: {exc.message}",
                             hint="Ask an operator whose key is allowed to record the change.") from None
    run = mf.create_run(home, env, steps=[], mode="signers", dry_run=False, params_sha256=params_sha256,
                        selection={}, repo=repo)
    change = mf.lines_changed(before["text"], now["text"])
    with run.update() as data:
        data.signers_change = {"from_sha256": before["sha256"], "to_sha256": now["sha256"],
                               "after": before_run.path.name, "change": change}
        data.status, data.finished = "succeeded", mf.utcnow()
    run.log(f"allowed signers of {env} changed: {change}")
    mf.seal(run, sealer, note="signers change")
    return run
