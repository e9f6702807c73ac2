"""Steps 00-04 (preflight, provision, install, allow connections, app role and database) against real lab hosts.

One from-scratch path: the real notebooks through the real CLI plan on no servers, step 01 makes two servers
through the lab's Hetzner API stand-in, steps 02-04 are first planned on them by the step functions (a dry run
against the empty servers), then run as notebooks, checked from the app host, run again (zero changes, as
notebooks and as step functions), then the bad inputs.  The tests run in file order and build on each other.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.host import Host
from hcbpg.errors import HostUnreachable, SafetyCheckFailed
from hcbpg.ops import app_database as roles
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import config as pg_config
from hcbpg.ops import server as pg_server
from hcbpg.ops import tls as tls_ops
from hcbpg.params import parse_params
from hcbpg.secrets import resolve
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import app_role_database as role_step
from hcbpg.steps import install_postgres as install_step

from labparams import lab_params
from stages import cli, latest_manifest

pytestmark = pytest.mark.lab

#: what a run may change on a server, hashed before and after a dry run
SNAPSHOT = ("pg_lsclusters -h; find /etc/postgresql /etc/apt/sources.list.d /var/lib/postgresql -xdev "
            "-type f -print0 2>/dev/null | sort -z | xargs -0 -r sha256sum")


@pytest.fixture(scope="module")
def params(lab, run_home):
    """The params the notebooks run with (run_home's), for the step functions called directly."""
    import yaml
    home, _env = run_home
    return parse_params(yaml.safe_load((home / "params" / "lab.yaml").read_text()))


@pytest.fixture(scope="module")
def hosts(params):
    hs = {s.name: Host.from_params(params, s.name, s.ssh_host or s.private_ip) for s in params.servers}
    yield hs
    for h in hs.values():
        h.close()


@pytest.fixture(scope="module")
def password(params):
    return resolve(params.postgres.app_role_password, key="postgres.app_role_password")


RUN_SERVERS = (("pg-run-1", 41, "primary"), ("pg-run-2", 42, "replica"))


@pytest.fixture(scope="module")
def run_home(lab, tmp_path_factory):
    """An HCBPG_HOME whose params point at this lab (servers made by step 01 through the API stand-in)."""
    import yaml
    cfg = lab.cfg
    home = tmp_path_factory.mktemp("server-steps-home")
    (home / "params").mkdir()
    # the lab's params, except: no site (this module plans as an operator's machine would), servers without an
    # ssh_host (step 01 records the addresses it makes), the key's name and the admin range step 01 uses
    data = lab_params(lab, [(n, cfg.address(off), r) for n, off, r in RUN_SERVERS])
    del data["site"]
    for server in data["servers"]:
        del server["ssh_host"]
    data["hetzner"].update({"api_endpoint": lab.status()["hcloud_endpoint"], "ssh_key_name": "hcb-lab",
                            "admin_source_ranges": [cfg.subnet]})
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"HCBPG_HOME": str(home), "HCBPG_STATE_DIR": str(home / "state"), "HCBPG_LAB_DIR": str(lab.lab_dir),
           "HCBPG_NOTEBOOKS": str(Path(__file__).resolve().parents[2] / "notebooks")}
    yield home, env
    import hcloud
    client = hcloud.Client(token=cfg.read_secret("hcloud-token"), api_endpoint=lab.status()["hcloud_endpoint"])
    for name, _off, _role in RUN_SERVERS:
        server = client.servers.get_by_name(name)
        if server is not None:
            server.delete()


def run_steps(params, hosts, password, *, dry_run):
    """Steps 02-04 as their modules run them: on a dry run each server is a DryRunHost (reads real, records
    the rest), and the primary's psql one where nothing is there while its cluster is not running."""
    hs = {name: DryRunHost(h) if dry_run else h for name, h in hosts.items()}
    outcomes = []
    for s in params.servers:
        outcomes += install_step.install_server(hs[s.name], params, s)
    for s in params.servers:
        outcomes += allow_step.allow_connections(hs[s.name], params, s)
    primary = hs[params.primary.name]
    running = pg_cluster.get_cluster_running(primary, params)
    psql = pg_cluster.get_psql(primary if running else AbsentHost(params.primary.name), params)
    outcomes += role_step.app_role_database(psql, params, password)
    return outcomes


def snapshot(hosts):
    return {name: h.probe(SNAPSHOT).stdout for name, h in hosts.items()}


def test_plan_on_no_servers_lists_changes_and_creates_no_host(lab, run_home):
    home, env = run_home
    hosts_before = sorted(h["name"] for h in lab.status()["hosts"])
    plan = cli(env, "plan", "lab", "--only", "00,01,02,03,04")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert sorted(h["name"] for h in lab.status()["hosts"]) == hosts_before, "a plan created hosts"
    planned = {s["key"]: s["changes"] for s in latest_manifest(home)["steps"]}
    assert planned["02_install_postgres"] > 0 and planned["04_app_role_database"] > 0


def test_run_until_01_makes_the_servers(lab, run_home):
    home, env = run_home
    first = cli(env, "run", "lab", "--until", "01")
    assert first.returncode == 0, first.stdout + first.stderr
    names = {h["name"] for h in lab.status()["hosts"]}
    assert {n for n, _off, _role in RUN_SERVERS} <= names, names


def test_servers_created_by_step_01_run_with_the_host_key_hcbpg_generated_and_pinned(lab, run_home):
    """Step 01 (run above) generated each server's host key, handed it over in cloud-init user_data (the
    stand-in installs it as cloud-init does) and pinned it: the key sshd serves is the pinned one,
    and no other host key type was generated."""
    from hcbpg.adapters import hostkeys
    for name, off, _role in RUN_SERVERS:
        [pin] = hostkeys.pins_for(lab.cfg.known_hosts, name)
        assert hostkeys.pinned_address(lab.cfg.known_hosts, name) == lab.cfg.address(off)
        served = lab.exec(name, "cat /etc/ssh/ssh_host_ed25519_key.pub; ls /etc/ssh", check=True).stdout
        assert pin.key in served and "ssh_host_ecdsa_key" not in served and "ssh_host_rsa_key" not in served
        assert hostkeys.get_offered_host_key(lab.cfg.address(off)).split()[1] == pin.key


def test_dry_run_on_fresh_servers_lists_changes_and_changes_nothing(params, hosts, password):
    before = snapshot(hosts)
    outcomes = run_steps(params, hosts, password, dry_run=True)
    assert snapshot(hosts) == before
    changed = {o.what for o in outcomes if o.changed}
    assert f"cluster 15/main on {params.primary.name}" in changed
    assert f"pg_hba.conf on {params.replicas[0].name}" in changed
    assert f"role rails on {params.primary.name}" in changed
    assert all(o.verb in ("would change", "unchanged") for o in outcomes)
    # the lab's servers already have the packages: dpkg says so, nothing to download
    assert not any(o.changed for o in outcomes if o.what.startswith("packages"))


def test_notebooks_02_to_04_change_the_fresh_servers(run_home):
    """Planned with --diff and saved (pg_hba's diff on the terminal), then applied as that saved plan."""
    home, env = run_home
    plan_file = home / "02-04.plan"
    planned = cli(env, "plan", "lab", "--from", "02", "--until", "04", "--diff", "--out", str(plan_file))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    replica = RUN_SERVERS[1][0]
    assert f"~ pg_hba.conf on {replica}: would change" in planned.stdout, planned.stdout[-4000:]
    assert "+hostssl" in planned.stdout and "pg_hba.conf (hcbpg)" in planned.stdout
    assert "Saved plan" in planned.stdout
    t0 = time.monotonic()
    first = cli(env, "run", "lab", "--plan", str(plan_file))
    assert first.returncode == 0, first.stdout + first.stderr
    assert latest_manifest(home)["selection"]["plan"]["signed_by"]
    changed = {s["key"]: s["changes"] for s in latest_manifest(home)["steps"]}
    assert all(changed.get(k, 0) > 0 for k in ("02_install_postgres", "03_allow_connections",
                                               "04_app_role_database")), changed
    print(f"notebooks 02-04 in {time.monotonic() - t0:.1f}s")


def test_postgres_configured_and_rails_working_from_the_app_host(lab, params, hosts, password):
    app = Host.from_params(params, "app", params.app_host.private_ip)
    assert tls_ops.ensure_client_ca(app, params).what == "PostgreSQL CA on app"
    checks = []
    for s in params.servers:
        checks += pg_server.check_server(hosts[s.name], params, s) + pg_server.check_connections(hosts[s.name], params, s, app)
    primary = hosts[params.primary.name]
    psql = pg_cluster.get_psql(primary, params)

    def outsider(cmd, stdin):
        cp = lab.outsider_exec(cmd, input=stdin, timeout=60)
        return cp.returncode, cp.stdout + cp.stderr

    checks += roles.check_role_database(psql, params, password)
    checks += roles.check_app_access(app, psql, params, password, server_ip=params.primary.private_ip,
                                     outsider=outsider)
    for s in params.servers:
        checks.append(tls_ops.check_server_cert(hosts[s.name], params, s))
        checks += tls_ops.check_tls_from(app, params, s)
    failed = [f"{c.target} {c.name}: {c.detail}" for c in checks if c.status != "pass"]
    assert not failed, failed
    outsider_row = next(c for c in checks if c.name.startswith("rails refused from"))
    assert "pg_hba" in outsider_row.detail
    # TLS, from the app host: plaintext refused by pg_hba, a client trusting another CA refused
    by = {(c.target, c.name): c for c in checks}
    for s in params.servers:
        assert "hostnossl" in by[(s.name, "plaintext refused from app")].detail
        assert "certificate verify failed" in by[(s.name, "another CA refused from app")].detail
        assert "reached password authentication" in by[(s.name, "TLS verify-full from app")].detail
    ssl = app.run("IFS= read -r PGPASSWORD && export PGPASSWORD && psql -X -A -t -d "
                  f"'host={params.primary.private_ip} dbname={params.postgres.database} user={params.postgres.app_role} "
                  "sslmode=verify-full sslrootcert=/etc/hcbpg/tls/lab-postgres-ca.crt' "
                  "-c 'SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()'",
                  stdin=password + "\n", quiet=True).stdout.strip()
    assert ssl == "t|TLSv1.3", ssl


def test_run_again_changes_nothing_and_no_secret_in_outputs(lab, run_home):
    home, env = run_home
    second = cli(env, "run", "lab", "--until", "04")
    assert second.returncode == 0, second.stdout + second.stderr
    again = {s["key"]: s["changes"] for s in latest_manifest(home)["steps"]}
    assert set(again) >= {"00_preflight", "02_install_postgres", "03_allow_connections", "04_app_role_database"}
    assert all(n == 0 for n in again.values()), again

    secrets = [lab.cfg.read_secret(n) for n in ("rails-password", "hcloud-token")]
    plans = list(home.glob("*.plan"))  # the saved plans (each change with its diff) hold no secret either
    assert plans, "the saved plan of 02-04 is gone"
    for path in [*(home / "outputs").rglob("*"), *plans]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not any(s in text for s in secrets), f"a secret in {path}"
            assert "SCRAM-SHA-256$" not in text, f"a password verifier in {path}"


def test_run_of_a_saved_plan_is_refused_when_a_server_changed_since_and_changes_nothing(lab, run_home, hosts):
    """pg_hba.conf edited by hand on the replica after the plan was saved: `run --plan` plans again, sees
    that step 03 would now change pg_hba.conf there, and applies nothing (the hand edit is still there)."""
    home, env = run_home
    plan_file = home / "03.plan"
    planned = cli(env, "plan", "lab", "--only", "03", "--out", str(plan_file))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    replica = RUN_SERVERS[1][0]
    hba = "/etc/postgresql/15/main/pg_hba.conf"
    hosts[replica].run(f"echo '# edited by hand after the plan' >> {hba}")
    refused = cli(env, "run", "lab", "--plan", str(plan_file))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "The world changed since plan" in refused.stdout
    assert f"step 03_allow_connections: now also changes pg_hba.conf on {replica}" in refused.stdout, refused.stdout
    assert "# edited by hand after the plan" in hosts[replica].run(f"cat {hba}").stdout, "a refused plan changed it"
    # a plain run puts pg_hba.conf back as params say (the later tests start from there)
    fixed = cli(env, "run", "lab", "--only", "03")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "# edited by hand" not in hosts[replica].run(f"cat {hba}").stdout


def test_second_run_changes_nothing(params, hosts, password):
    outcomes = run_steps(params, hosts, password, dry_run=False)
    assert [o.what for o in outcomes if o.changed] == []


def test_no_secret_reaches_any_command_line_or_output(params, hosts, password):
    for h in hosts.values():
        for r in h.history:
            assert password not in r.command + r.stdout + r.stderr


def test_setting_that_needs_a_restart_restarts_and_one_that_does_not_only_reloads(params, hosts):
    server = params.replicas[0]
    host = hosts[server.name]
    pid = lambda: host.probe("head -1 /var/lib/postgresql/15/main/postmaster.pid").stdout.strip()  # noqa: E731
    before = pid()
    o = pg_config.ensure_settings(host, params, server, "connections", extra={"work_mem": "8MB"})
    assert o.changed and "reload" in o.actions and not any("restart" in a for a in o.actions)
    assert pid() == before
    o = pg_config.ensure_settings(host, params, server, "connections", extra={"max_connections": 120})
    assert any(a.startswith("restart") and "max_connections" in a for a in o.actions)
    assert pid() != before
    before = pid()
    o = pg_config.ensure_settings(host, params, server, "connections")
    # back to what params say: max_connections returns to its default, which needs a restart too
    assert any(a.startswith("restart") and "max_connections" in a for a in o.actions)
    assert pid() != before
    assert not pg_config.ensure_settings(host, params, server, "connections").changed


def test_wrong_rails_secret_is_refused_naming_key_and_host(params, hosts):
    primary = hosts[params.primary.name]
    psql = pg_cluster.get_psql(primary, params)
    stored = roles.get_role(psql, "rails")["rolpassword"]
    with pytest.raises(SafetyCheckFailed) as info:
        role_step.app_role_database(psql, params, "a-different-password")
    assert "postgres.app_role_password" in str(info.value) and params.primary.name in str(info.value)
    assert roles.get_role(psql, "rails")["rolpassword"] == stored


def test_unreachable_host_error_names_the_host(lab, params):
    host = Host.from_params(params, "server-postgres-9", lab.cfg.address(99), connect_timeout=1)
    with pytest.raises(HostUnreachable) as info:
        host.run("true")
    assert "server-postgres-9" in str(info.value) and lab.cfg.address(99) in str(info.value)


def test_an_existing_server_without_a_pin_is_pinned_only_after_its_fingerprint_is_approved(lab, run_home):
    """A server step 01 did not create (here: its pin removed) has a key hcbpg never saw: step 01 reads the
    offered key, stops at a gate whose question shows the fingerprint, and pins it only once approved."""
    from hcbpg.adapters import hostkeys
    home, env = run_home
    name, off = RUN_SERVERS[0][0], RUN_SERVERS[0][1]
    [before] = hostkeys.pins_for(lab.cfg.known_hosts, name)
    hostkeys.pin(lab.cfg.known_hosts, "lab", name, [])
    try:
        waiting = cli(env, "run", "lab", "--only", "01")
        assert waiting.returncode == 3, waiting.stdout + waiting.stderr
        assert hostkeys.pins_for(lab.cfg.known_hosts, name) == []  # nothing pinned before the approval
        mf = latest_manifest(home)
        [(gate, g)] = [(k, v) for k, v in mf["gates"].items() if k.startswith(f"host-key-{name}-")]
        assert before.fingerprint in g["question"] and lab.cfg.address(off) in g["question"]
        ok = cli(env, "approve", mf["run_id"], gate, "--note", "matches the console")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        resumed = cli(env, "resume", mf["run_id"])
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    finally:
        if not hostkeys.pins_for(lab.cfg.known_hosts, name):
            hostkeys.pin(lab.cfg.known_hosts, "lab", name, [f"{before.keytype} {before.key}"],
                         address=lab.cfg.address(off))
    [after] = hostkeys.pins_for(lab.cfg.known_hosts, name)
    assert (after.keytype, after.key) == (before.keytype, before.key)
