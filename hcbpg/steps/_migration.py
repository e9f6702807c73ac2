"""Helpers shared by the migration's steps (06 dry run, 07 cutover, 09 start traffic): they take the
notebook's runbook ``rb``, typed by the steps' one protocol :class:`hcbpg.steps.context.Run` (steps do
not import the engine)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.local import run_local
from hcbpg.adapters.secretstore import secret_store
from hcbpg.desired.migration import AppUrls, plan_without_primary
from hcbpg.display import show_plan, show_table
from hcbpg.errors import SecretError, VerificationFailed
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import handout, migration, progress
from hcbpg.ops.migration.source import get_source_url
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import stream as pg_stream
from hcbpg.pg.restore import GIB
from hcbpg.steps import targets

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, SourceLike
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def verify(rb: "Run", checks: Sequence[Check], *, rollback: str | None = None,
           stops: str = "The run stops here, before any traffic gate.") -> list[Check]:
    """rb.verify, with the rollback instructions in the error when something failed."""
    try:
        return rb.verify(checks)
    except VerificationFailed as exc:
        if rollback:
            raise VerificationFailed(exc.message, failures=exc.failures, hint=stops + "\n" + rollback) from None
        raise


def skip_if_live(rb: "Run", host: "Host | None") -> None:
    """End a migration step early when the migration is complete: the app already runs on the target.

    Re-running the runbook must never restore over the live database; with nothing left to
    do the step is recorded as done with no change (the runbook's second run changes nothing).
    """
    if host is None:
        return
    marker = migration.get_live_marker(host, rb.params)
    if marker:
        rb.skip(f"{rb.params.postgres.database} on {host.name} is live ({marker}): the migration is "
                "complete, there is nothing to restore or switch. Replacing a live database is not a "
                "re-run of this step: it is a new migration with its own plan.")


def run_migration(host: "HostLike", params: "Params", source: "SourceLike", facts: Mapping[str, Any], *, tag: str,
                  run_label: str, live_source: bool, app: "HostLike | None" = None, password: str | None = None,
                  sentinel_write: str | None = None, sentinel_expect: str | None = None,
                  keep_dump: bool = False) -> "migration.MigrationResult":
    """Dump, restore and verify (streamed, or a directory dump and its restore): what 06 and 07 do, timed per
    phase (the checks are not raised here)."""
    src = params.source
    assert src is not None
    with source:
        if src.method == "pg_dump" and pg_stream.transfer_method(params) == "stream" and not pg_stream.use_stream(params, facts):
            print(f"the source has {facts.get('large_objects')} large objects: they move with a directory dump "
                  "(source.transfer: directory), not streamed")
        if pg_stream.use_stream(params, facts):
            dump, restore = migration.run_stream(host, params, source, facts, tag, run_label=run_label)
            print(f"streamed (schema, rows, indexes, ANALYZE) in {restore.seconds:.1f}s")
            for note in restore.notes[restore.notes.index(next(n for n in restore.notes
                                                               if n.startswith("streamed in"))) + 1:]:
                print(f"  {note}")
        else:
            if src.method == "heroku":
                dump = migration.run_heroku_dump(host, params, tag)
            else:
                dump = migration.run_dump(host, params, source, tag)
            print(f"dump: {dump.bytes / GIB:.2f} GiB in {dump.seconds:.1f}s ({dump.format} format)")
            try:
                restore = migration.run_restore(host, params, dump, facts, run_label=run_label,
                                                sizes=progress.get_source_sizes(source))
            finally:
                if not keep_dump:
                    migration.ensure_dump_removed(host, dump)
            print(f"restore: {restore.seconds:.1f}s (of which ANALYZE {restore.analyze_seconds:.1f}s)")
        ver = migration.check_restore(host, params, source, dump, live_source=live_source, app=app,
                                      password=password, sentinel_write=sentinel_write, sentinel_expect=sentinel_expect)
    print(f"verify: {ver.seconds:.1f}s")
    phases = {"dump_s": round(dump.seconds, 3), "restore_s": round(restore.seconds, 3),
              "verify_s": round(ver.seconds, 3)}
    outcomes = [Outcome(f"database {params.postgres.database} on {host.name} dropped, recreated and restored",
                        True, False, actions=[f"dump {dump.bytes / GIB:.2f} GiB in {dump.seconds:.1f}s",
                                              f"restore in {restore.seconds:.1f}s",
                                              f"skipped from the dump (created beforehand): {len(restore.skipped_toc)} "
                                              "entries"])]
    return migration.MigrationResult(dump, restore, ver, phases, outcomes)


def dump_tag(rb: "Run") -> str:
    """The dump's directory name under source.dump_dir: run and step."""
    return f"{rb.run_id or 'adhoc'}-{rb.step}"


def run_label(rb: "Run") -> str:
    """The run and step, as the target database's comment names them."""
    return f"run {rb.run_id or 'ad hoc'}, step {rb.step}"


def connect(rb: "Run") -> "tuple[Host | None, migration.Source | None]":
    """The primary (None before it is provisioned) and the source reached from it."""
    host = targets.server_host(rb, rb.params.primary)
    if host is None:
        return None, None
    # with source.ca_file the primary verifies the source's certificate and name (verify-full); a dry
    # run reads the source as the primary can now (with the CA only when it is there already)
    ca = migration.ensure_source_ca(targets.hostlike(rb, host.name, host), rb.params)
    if ca.changed:
        rb.track(ca)
    # method heroku: the URL as `heroku pg:credentials:url` gives it now (Heroku rotates it), else source.url's secret
    return host, migration.Source(host, get_source_url(run_local, rb.params, rb.secret),
                                  sslrootcert=migration.get_source_ca(host, rb.params))


def plan(rb: "Run", host: "Host | None", source: "migration.Source | None") -> "migration.Plan | None":
    """Plan the migration (read-only) and show it; None when there is no primary yet, or (a dry run) no
    PostgreSQL running on it yet: the plan says so."""
    p: migration.Plan | None = None
    if host is None or source is None:
        outcomes = plan_without_primary(rb.params)
    elif rb.dry_run and not pg_cluster.get_cluster_running(host, rb.params):
        outcomes = plan_without_primary(rb.params, why=f"PostgreSQL is not running on {host.name} yet")
    else:
        p = migration.get_migration_plan(host, rb.params, source)
        outcomes = p.outcomes
    show_plan(outcomes)
    return p


def hand_out_urls(rb: "Run", make: "Callable[[], AppUrls | None]", what: str) -> AppUrls | None:
    """A target's URLs (*make*: :mod:`hcbpg.ops.handout`) as its 0600 file's whole content, tracked (unchanged
    when the file holds them already), shown redacted.  A plan whose passwords do not exist yet (13 makes
    them) says the file would be written."""
    try:
        urls = make()
    except SecretError:
        if not rb.dry_run:
            raise
        rb.track(Outcome(f"handed-out URLs of {what}", True, True,
                         actions=["written once the logins' passwords exist (this run makes them)"]), show=False)
        print(f"{what}: the URLs would be handed out once the passwords exist")
        return None
    if urls is None:
        return None
    outcome = rb.track(handout.ensure_urls_file(secret_store(rb.dry_run), urls), show=False)
    for k, v in urls.shown.items():
        print(f"{k}={v}")
    state = ("would be written to" if rb.dry_run else "are now in") if outcome.changed else "are already in"
    print(f"the URLs of {what}, all of them as they are now, {state} {urls.path} (mode 0600)")
    return replace(urls, written=outcome.changed and not rb.dry_run)


def show_comparison(result: "migration.MigrationResult") -> None:
    """The source/target table of objects and rows (each kind pass or fail)."""
    show_table(result.verification.table, ["what", "source", "target", "status"])


def preconditions(p: "migration.Plan | None") -> list[Check]:
    """The plan's preconditions (none without a primary)."""
    return p.checks if p else []


def summary(result: "migration.MigrationResult | None", *, dry_run: dict[str, Any]) -> dict[str, Any]:
    """What the step records: the result's summary, or *dry_run* when nothing ran."""
    return result.summary() if result else dry_run
