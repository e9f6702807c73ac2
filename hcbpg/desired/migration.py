"""The migration as params make it (pure): where its files go, the restore-time settings file, the app's
DATABASE_URL and its handoff file, the sentinel's SQL read from the app host, the downtime, and the
verdicts that need no server (the source quiet, a plan before the primary exists)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import clock
from hcbpg import secrets as hsecrets
from hcbpg.desired import patroni as desired_patroni
from hcbpg.desired import server as desired_server
from hcbpg.desired import tls as desired_tls
from hcbpg.errors import SafetyCheckFailed, VerificationFailed
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import conf as pgconf
from hcbpg.pg import conninfo as pg_conninfo
from hcbpg.pg.cluster import ctl_command
from hcbpg.pg.compose import render

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: the conf.d part that holds the restore-time settings; read last, removed after the restore
RESTORE_PART = "90-hcbpg-restore.conf"


#: what the operator does to go back, told before the cutover's first action and in every error after it
ROLLBACK = """\
How to roll back (nothing on the source was changed by hcbpg except the sentinel row's one column):
  1. Do NOT change DATABASE_URL / BLAZER_DATABASE_URL in Hatchbox: they still point at Heroku.
  2. Enable the processes again (Sidekiq, etc.) in Hatchbox.
  3. Turn maintenance mode off in Hatchbox: the app runs on the old (Heroku) database as before.
  4. Leave the primary as it is; fix the cause named above and repeat the cutover later
     (07 drops and restores hcb_production again: it is marked as an hcbpg restore target)."""


ROLLBACK_WAY_BACK = """\
How to roll back now that traffic runs on the new primary (online transfer, the way back armed):
  1. Turn maintenance mode on in Hatchbox; disable the processes (Sidekiq, etc.).
  2. On the primary, start the way back if 09b has not (hcbpg run ENV --from 09b) and wait until
     `bucardo status hcbpg_back` shows a run ended after the last write: every write made on the new
     primary since traffic went on is then on Heroku too.
  3. Set DATABASE_URL / BLAZER_DATABASE_URL in Hatchbox back to their Heroku values; enable the
     processes; turn maintenance mode off: the app runs on Heroku, with nothing lost.
  4. Run 16_online_cleanup to end the way back and remove Bucardo; fix the cause and cut over again."""


# restore-time settings ----------------------------------------------------------------------------

def restore_part_path(params: "Params") -> str:
    """Where the restore-time settings are written on the primary (``conf.d``, read last)."""
    return f"{desired_server.config_dir(params)}/conf.d/{RESTORE_PART}"


def render_restore_settings(settings: Mapping[str, Any], *, server: str) -> str:
    """The restore-time part, whole (sorted, quoted, a header saying what it is and how to remove it)."""
    lines = [pgconf.MANAGED_HEADER,
             f"# {server}: restore-time settings (06/07 migration). Removed when the restore ends;",
             "# if you find this file after a crash, delete it and reload PostgreSQL (restart if it sets wal_level).", ""]
    lines += [f"{k} = {pgconf.quote_setting(settings[k])}" for k in sorted(settings)]
    return "\n".join(lines) + "\n"


def render_reload_and_wait(params: "Params", *, timeout_s: int = 30) -> str:
    """One command (as postgres): reload, wait until the postmaster has read the files
    (``pg_conf_load_time`` moves), then print the settings that need a restart (comma-separated)."""
    pg = params.postgres
    q = f"psql --cluster {pg.version}/{shlex.quote(pg.cluster)} -X -q -A -t -d postgres -c"
    loaded = f"$({q} 'SELECT pg_conf_load_time()')"
    return (f'before="{loaded}" && {ctl_command(pg.version, pg.cluster, "reload")} && '
            f'for i in $(seq {timeout_s * 10}); do [ "{loaded}" != "$before" ] && break; sleep 0.1; done && '
            f'if [ "{loaded}" = "$before" ]; then echo "the config reload was not picked up within {timeout_s}s" >&2; '
            f"exit 1; fi && {q} \"SELECT coalesce(string_agg(name, ',' ORDER BY name), '') FROM pg_settings "
            'WHERE pending_restart"')


# the app's URLs -----------------------------------------------------------------------------------

def handoff_path(params: "Params") -> Path:
    """Where the new DATABASE_URL is written for the operator (``postgres.app_url_file``): a 0600 file
    outside outputs/, by default ``~/.local/state/hcbpg/<env>/app-database-urls.env``."""
    configured = params.postgres.app_url_file
    if configured:
        return Path(os.path.expanduser(configured))
    base = Path(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"))
    return base / "hcbpg" / params.environment / "app-database-urls.env"


def release_urls_path(params: "Params") -> Path:
    """Where step 13 writes MIGRATIONS_DATABASE_URL and BLAZER_DATABASE_URL: beside the app's file, 0600."""
    return handoff_path(params).with_name("release-database-urls.env")


def render_env_file(values: Mapping[str, str], *, target: str = "") -> str:
    """``NAME=value`` lines (values single-quoted for a shell), for pasting into Hatchbox."""
    head = (f"# written by hcbpg: the database URLs of {target or 'this target'}, all of them as they are now.\n"
            "# Set them in Hatchbox. hcbpg rewrites this file whole whenever a step changes one (09, 13, 14);\n"
            "# it is yours alone (0600), outside outputs/.\n")
    return head + "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


#: the handed-out URLs that read only: under Patroni they prefer the standby (``target_session_attrs=prefer-standby``,
#: libpq 14 or later), so reports never load the leader while a standby answers
STANDBY_URLS = frozenset({"BLAZER_DATABASE_URL"})


def render_app_url(params: "Params", role: str, password: str, *, host: str | None = None,
                   prefer_standby: bool = False) -> str:
    """A URL the app (or Blazer, or the release command) connects with as *role*; ``sslmode=verify-full``
    with the environment's CA at ``desired.tls.client_ca_path`` on the app's machine (contains the password).

    Manual replication: ``postgres://role:pw@host:port/db?...`` on *host* (default: the primary's private IP).
    Under ``replication.manager: patroni`` (and no *host*): the opaque multi-host form Rails keeps
    (``postgresql:DB?host=h1,h2&port=...&target_session_attrs=read-write&...``, design section 6), naming every
    server, so after a failover the app finds the new leader through the same URL; *prefer_standby* asks for
    a standby when one answers (Blazer).
    """
    if host is None and desired_patroni.managed(params):
        tsa = "prefer-standby" if prefer_standby else "read-write"
        hsecrets.register(pg_conninfo.rails_url_value(password))  # as the URL spells it ('/' and ',' kept)
        return pg_conninfo.render_rails_url(params.postgres.database, desired_patroni.app_hosts(params),
                                            desired_patroni.app_url_query(params, role, password,
                                                                          target_session_attrs=tsa))
    return pg_conninfo.render_role_url(params, role, password, host=host, query=desired_tls.client_tls(params))


def render_database_url(params: "Params", password: str, *, host: str | None = None) -> str:
    """DATABASE_URL for the app as the app role (:func:`render_app_url`; contains the password)."""
    return render_app_url(params, params.postgres.app_role, password, host=host)


@dataclass
class AppUrls:
    """Database URLs for the operator: the 0600 file they go to (outside outputs/), the URLs themselves
    (secret: registered with the scrubber, never shown), and whether the file was written."""

    path: Path
    values: dict[str, str] = field(repr=False)
    written: bool = False
    #: who the URLs are for (the file's header)
    target: str = ""

    @property
    def shown(self) -> dict[str, str]:
        """The URLs as they may be printed (password redacted)."""
        return {k: pg_conninfo.redact_url(v) for k, v in self.values.items()}

    @property
    def text(self) -> str:
        """The file's text (:func:`render_env_file`)."""
        return render_env_file(self.values, target=self.target)


def render_role_urls(params: "Params", values: Mapping[str, tuple[str, str]], *, path: Path,
                     target: str = "") -> AppUrls:
    """``NAME -> (role, password)`` as URLs (:func:`render_app_url`; a name in :data:`STANDBY_URLS` prefers
    the standby under Patroni) for the file *path*."""
    for _role, pw in values.values():
        hsecrets.register(pw)
    return AppUrls(path, {k: hsecrets.register(render_app_url(params, role, pw, prefer_standby=k in STANDBY_URLS))
                          for k, (role, pw) in values.items()}, target=target)


def compute_downtime(gates: Mapping[str, Mapping[str, Any]], phases: Mapping[str, float], *,
                     start_gate: str = "maintenance-on", end_gate: str = "maintenance-off") -> dict[str, Any]:
    """Downtime from the maintenance-on approval to the traffic-on approval, with the phases' durations."""
    start = (gates.get(start_gate) or {}).get("approved_at")
    end = (gates.get(end_gate) or {}).get("approved_at")
    total = None
    if start and end:
        total = round((clock.parse_time(end) - clock.parse_time(start)).total_seconds(), 3)
    return {"maintenance_on_at": start, "traffic_on_at": end, "total_s": total,
            "phases_s": {k: round(float(v), 3) for k, v in phases.items()}}


# the cutover's verdicts ---------------------------------------------------------------------------

def check_source_quiet(sessions: Sequence[Mapping[str, Any]]) -> Check:
    """No other client on the source: the app and its processes are really stopped."""
    if not sessions:
        return Check("no other connections on the source", "pass", "only hcbpg is connected", "source")
    who = "; ".join(f"pid {s['pid']} {s['usename']}@{s.get('client') or 'socket'} "
                    f"{s.get('application_name') or '-'} {s.get('state')}{' WRITING' if s.get('writing') else ''}"
                    for s in sessions[:5])
    return Check("no other connections on the source", "fail", f"{len(sessions)} other: {who}", "source")


def raise_on_drift(checks: Sequence[Check]) -> None:
    """The drift guard's verdict: VerificationFailed naming every object that differs (with the rollback)."""
    bad = [c for c in checks if c.status == "fail"]
    if bad:
        raise VerificationFailed(
            "the schema of the source and the primary differ (a migration ran during the sync?): "
            + "; ".join(f"{c.name}: {c.detail}" for c in bad),
            failures=[c.name for c in bad],
            hint="The cutover stops here. Apply the same migration on the primary (or run 06b again from the "
                 "start after the deploy), then repeat.\n" + ROLLBACK)


def check_source_names(facts: Mapping[str, Any]) -> None:
    """Refuse a source whose schema, relation, column or constraint names hold control characters
    (SafetyCheckFailed naming them, nothing changed).

    Names are data: no script splits or parses them, but a name that prints as two lines would still
    mislead whoever reads a log or a plan.  The facts are read early (the plan); the transfer's own
    session reads the names again in its snapshot (:func:`~hcbpg.ops.migration.stream.run_stream`), for a table created since."""
    bad = [str(n) for n in facts.get("control_char_names") or []]
    if bad:
        raise SafetyCheckFailed(
            f"the source has {len(bad)} name(s) with control characters: "
            + ", ".join(repr(n) for n in bad[:10]) + ("" if len(bad) <= 10 else ", ..."),
            hint="Rename them on the source (ALTER TABLE ... RENAME TO ...), then run the step again; "
                 "no row was copied.")


def sentinel_value(run_id: str | None) -> str:
    """The last write's value: says who wrote it, when, in which run (not secret)."""
    return f"hcbpg last write {clock.utcnow()} run {run_id or 'ad-hoc'}"


def dry_run_sentinel() -> str:
    """The value 06 writes on the restored copy (never on the source)."""
    return f"hcbpg dry run {clock.utcnow()}"


def render_sentinel_sql(params: "Params", value: str | None) -> str:
    """The app host's script: the newest events row, the sentinel written (when *value*) and read back,
    each on a ``name=value`` line (:func:`parse_app_output`)."""
    src = params.source
    assert src is not None
    s = src.sentinel
    t, c = sql.Identifier(s.table), sql.Identifier(s.column)
    parts = [sql.SQL("SELECT 'newest-event=' || coalesce((SELECT max(id) FROM {})::text, 'none');").format(
        sql.Identifier(src.events_table))]
    if value is not None:
        parts.append(sql.SQL("UPDATE {} SET {} = {} WHERE id = {};").format(t, c, sql.Literal(value), sql.Literal(s.id)))
    parts.append(sql.SQL("SELECT 'sentinel=' || coalesce({}::text, '<null>') FROM {} WHERE id = {};").format(
        c, t, sql.Literal(s.id)))
    return "\n".join(render(p) for p in parts) + "\n"


def parse_app_output(stdout: str) -> dict[str, str]:
    """The ``newest-event=`` and ``sentinel=`` lines of :func:`render_sentinel_sql`'s output."""
    out = {}
    for line in stdout.splitlines():
        if "=" in line and line.split("=", 1)[0] in ("newest-event", "sentinel"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


def plan_without_primary(params: "Params", *, why: str = "the primary is not provisioned yet") -> list[Outcome]:
    """The plan when the primary is not ready (a dry run before provisioning or before 02-04)."""
    return [Outcome(f"dump of the source into {params.postgres.database} on {params.primary.name}", True, True,
                    actions=[f"{why}: dump, restore and verify would run after steps 01-04"])]
