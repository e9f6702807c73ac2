"""The audit head anchored in the lab's S3 store (moto behind cheroot, over TLS, the lab's S3 key from its
secret files): real runs seal into the bucket, and a clone rolled back by someone without the bucket's key
is refused by `hcbpg audit verify` and by `hcbpg run` before its first step."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from hcbpg import secrets as hsecrets
from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.ops import audit_anchor
from hcbpg.params import parse_params

from labparams import lab_params, pgbackrest_section
from nbutil import hcbpg, write_notebook, write_steps

pytestmark = pytest.mark.lab


def test_runs_anchor_in_the_lab_bucket_and_a_rolled_back_clone_is_refused(lab, tmp_path):
    data = lab_params(lab, [("server-postgres-1", lab.cfg.address(63), "primary")],
                      pgbackrest=pgbackrest_section(lab, repo_path_prefix=f"/pgbackrest-anchor-{time.time_ns()}"))
    data["audit"] = {**data["audit"], "anchor": "bucket"}
    params = parse_params(data)
    home = tmp_path / "home"
    (home / "params").mkdir(parents=True)
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    nbs = home / "notebooks"
    nbs.mkdir()
    write_notebook(nbs / "00_a.ipynb", "00_a", "print('anchored')")
    write_steps(nbs, [("00_a.ipynb", "a")])
    env = {"HCBPG_HOME": str(home), "HCBPG_STATE_DIR": str(tmp_path / "state"), "HCBPG_NOTEBOOKS": str(nbs),
           "HCBPG_LAB_DIR": str(lab.lab_dir), "HCBPG_OPERATOR": "anchor-test", "HCBPG_SIGNING_KEY": str(lab.ssh_key)}
    for _ in range(2):
        r = hcbpg("run", "lab", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(1.05)  # run directories are named by the second
    pb = params.pgbackrest
    store = ObjectStore.from_params(params, hsecrets.resolve(pb.s3_key, key="pgbackrest.s3_key"),
                                    hsecrets.resolve(pb.s3_key_secret, key="pgbackrest.s3_key_secret"))
    prefix = audit_anchor.anchor_prefix(params)
    keys = store.keys(prefix)
    assert keys == [f"{prefix}00000000.json", f"{prefix}00000001.json"]
    runs = sorted(p for p in (home / "outputs" / "lab").iterdir() if p.is_dir())
    newest = json.loads(store.get(keys[-1])[0])
    assert newest["run"] == runs[-1].name and newest["kind"] == "seal"
    assert hcbpg("audit", "verify", "lab", env=env).returncode == 0

    # a fresh clone rolled back by a pusher: newest run gone, HEAD and the head file set back consistently
    shutil.rmtree(tmp_path / "state" / "anchors", ignore_errors=True)
    head_file = home / "params" / "lab.audit-head"
    first_sha = json.loads(store.get(keys[0])[0])["manifest_sha256"]
    shutil.rmtree(runs[-1])
    (home / "outputs" / "lab" / "HEAD").write_text(runs[0].name + "\n")
    head_file.write_text(f"{runs[0].name} {first_sha}\n")
    r = hcbpg("audit", "verify", "lab", env=env)
    assert r.returncode == 1, r.stdout
    assert f"00000001.json in s3://{pb.s3_bucket}/{prefix} names run {runs[-1].name} of lab" in r.stdout, r.stdout
    r = hcbpg("run", "lab", env=env)
    assert r.returncode != 0 and "rolled back" in r.stdout + r.stderr, r.stdout + r.stderr
    assert sorted(p for p in (home / "outputs" / "lab").iterdir() if p.is_dir()) == runs[:1]
