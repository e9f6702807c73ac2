"""The lab's app: steady writes on the Heroku-like source from the app host, as HCB's app makes them
until maintenance mode is on, each logged after its commit, so a rehearsal, a test or a benchmark can
prove afterwards that every write made before maintenance-on is on the new primary.

Each write is one ``psql`` on the app host through the libpq service ``hcbpg-app-load`` (a 0600
service file holding the source's credentials, never a command line): an insert into ``events`` and
an update of an existing ``transactions`` row, at a fixed rate.  The log has ``i ID`` for an insert
and ``u ID MEMO`` for an update; ``stopped`` ends it once the load has seen its stop file (what
maintenance mode on means for the app).

Issue 28 adds two writers that run detached on a host, started and stopped by their pid:

* the **ActiveRecord writer** (:func:`start_ar_writer`, ``ar_load.rb``): what HCB's Rails app does with the
  handed-out ``DATABASE_URL`` (the opaque multi-host form), read from a 0600 env file on the app host, never
  from a command line.  Each acknowledged insert is logged ``i ID T_MS SERVER`` (``latency=True``: then its latency
  in microseconds, what bench/backup_latency.py measures); an error ``e T_MS CLASS``,
  after which it disconnects and tries again 50 ms later; ``mode="read"`` logs ``r T_MS SERVER`` per answer
  (Blazer's ``prefer-standby`` URL);
* the **local writer** (:func:`start_local_writer`): ``psql`` over a database server's unix socket, same log
  format, to measure what an isolated leader still accepts.

:func:`stop_writer` ends either by its pid (SIGTERM; its last line is ``stopped``) and returns its
:class:`LoadLog` (``acks`` with the server each went to, ``errors``, ``reads``).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from hcbpg.errors import LabError

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike

SERVICE = "hcbpg-app-load"
SERVICE_FILE = "/root/.pg_service.conf"
LOG = "/var/tmp/hcbpg-app-load.log"
STOP = "/var/tmp/hcbpg-app-load.stop"

_SCRIPT = r"""
rm -f @STOP@ @LOG@; n=0
while [ ! -e @STOP@ ]; do
  n=$((n+1)); t0=$(date +%s%N)
  out=$(psql "service=@SERVICE@" -X -q -At -v ON_ERROR_STOP=1 \
    -c "INSERT INTO events (user_id, name, properties, created_at) VALUES (1 + $n % @USERS@, 'load', '{}', now()) RETURNING id" \
    -c "UPDATE transactions SET memo = 'app-load $n' WHERE id = 1 + ($n * 7919) % @TRANSACTIONS@ RETURNING id" 2>/dev/null) \
    && set -- $out && [ -n "$2" ] && printf 'i %s\nu %s app-load %s\n' "$1" "$2" "$n" >> @LOG@
  left=$(( @PERIOD_NS@ - ($(date +%s%N) - t0) )); [ $left -gt 0 ] && sleep "0.$(printf '%09d' $left)"
done
echo stopped >> @LOG@
"""


def render_service_file(conn: Mapping[str, str]) -> str:
    """The app host's libpq service file for the load (the source's keywords, as parsed from its URL)."""
    return f"[{SERVICE}]\n" + "".join(f"{k}={v}\n" for k, v in conn.items()) + "application_name=hcbpg-app-load\n"


def render_start(rate: float, *, users: int = 1000, transactions: int = 5000) -> str:
    """The shell command that starts the load in the background (*rate* writes of each kind a second;
    *users* and *transactions* bound the ids it references and updates: rows the lab source has)."""
    script = (_SCRIPT.replace("@STOP@", STOP).replace("@LOG@", LOG).replace("@SERVICE@", SERVICE)
              .replace("@USERS@", str(users)).replace("@TRANSACTIONS@", str(transactions))
              .replace("@PERIOD_NS@", str(int(1e9 / rate))))
    return f"nohup bash -c {shlex.quote(script)} > /dev/null 2>&1 &"


#: stop the load (maintenance mode on) and wait until its last write is logged
STOP_COMMAND = (f"touch {STOP}; for i in $(seq 300); do tail -1 {LOG} 2>/dev/null | grep -qx stopped && exit 0; "
                "sleep 0.05; done; echo 'the load did not stop' >&2; exit 1")


@dataclass(frozen=True)
class Ack:
    """One acknowledged insert: the row's id, the wall-clock milliseconds at the ack, the server's address, and
    (the ActiveRecord writer with ``latency=True``) microseconds from sending it to its answer."""

    id: int
    t_ms: int
    server: str
    latency_us: int | None = None

    @property
    def sent_ms(self) -> int:
        """When the insert was sent: the ack's time less its latency (the ack's time when it was not timed)."""
        return self.t_ms - (self.latency_us or 0) // 1000


@dataclass(frozen=True)
class WriteError:
    """One failed try: when (wall-clock milliseconds) and the error's class (``PG::ConnectionBad``, ...)."""

    t_ms: int
    cls: str


@dataclass(frozen=True)
class Read:
    """One answer of a reading writer (``mode="read"``): when, and which server answered."""

    t_ms: int
    server: str


@dataclass
class LoadLog:
    """What the load wrote: inserted ids and, per updated id, the last memo written; the timed writers' acks
    (with their server), errors and reads."""

    inserted: list[int] = field(default_factory=list)
    updated: dict[int, str] = field(default_factory=dict)
    stopped: bool = False
    acks: list[Ack] = field(default_factory=list)
    errors: list[WriteError] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.inserted) + len(self.updated)

    def acks_by_server(self) -> dict[str, int]:
        """How many acks each server gave."""
        out: dict[str, int] = {}
        for a in self.acks:
            out[a.server] = out.get(a.server, 0) + 1
        return out


def parse_log(text: str) -> LoadLog:
    """The log of either load: ``i ID`` / ``u ID MEMO`` (the shell load), ``i ID T_MS SERVER [LATENCY_US]``, ``e T_MS CLASS``,
    ``r T_MS SERVER`` (the timed writers), ``stopped``.  A torn last line (the writer killed mid-write) is skipped."""
    log = LoadLog()
    for line in text.splitlines():
        words = line.split()
        try:
            if words[:1] == ["i"] and len(words) == 2:
                log.inserted.append(int(words[1]))
            elif words[:1] == ["i"] and len(words) in (4, 5):
                ack = Ack(int(words[1]), int(words[2]), words[3], int(words[4]) if len(words) == 5 else None)
                log.inserted.append(ack.id)
                log.acks.append(ack)
            elif line.startswith("u "):
                _, i, memo = line.split(" ", 2)
                log.updated[int(i)] = memo
            elif words[:1] == ["e"] and len(words) == 3:
                log.errors.append(WriteError(int(words[1]), words[2]))
            elif words[:1] == ["r"] and len(words) == 3:
                log.reads.append(Read(int(words[1]), words[2]))
            elif line == "stopped":
                log.stopped = True
        except ValueError:
            continue
    return log


def longest_gap_ms(acks: Sequence[Ack], *, since_ms: int, until_ms: int) -> int:
    """The longest stretch without an ack within [*since_ms*, *until_ms*] (the window's ends count as acks)."""
    times = [since_ms] + sorted(a.t_ms for a in acks if since_ms <= a.t_ms <= until_ms) + [until_ms]
    return max(b - a for a, b in zip(times, times[1:], strict=False))


def render_found_sql(log: LoadLog) -> str:
    """One query on the new primary: which of the logged inserts exist, and each updated row's memo."""
    ids = ",".join(map(str, log.inserted)) or "0"
    upd = ",".join(map(str, log.updated)) or "0"
    return ("SELECT json_build_object("
            f"'inserted', (SELECT coalesce(json_agg(id), '[]') FROM public.events WHERE id = ANY ('{{{ids}}}'::bigint[])), "
            f"'memos', (SELECT coalesce(json_object_agg(id, memo), '{{}}') FROM public.transactions "
            f"WHERE id = ANY ('{{{upd}}}'::bigint[])))")


def lost_writes(log: LoadLog, found: Mapping[str, Any]) -> list[str]:
    """Every logged write missing on the primary (an insert absent, an update not the last memo)."""
    have = {int(i) for i in found.get("inserted") or []}
    memos = {int(k): v for k, v in (found.get("memos") or {}).items()}
    return ([f"events {i}: missing" for i in log.inserted if i not in have]
            + [f"transactions {i}: memo {memos.get(i)!r}, expected {m!r}" for i, m in log.updated.items()
               if memos.get(i) != m])


def check_on_primary(log: LoadLog, query_json: Callable[[str], Any]) -> list[str]:
    """The lost writes, with *query_json* running one query on the new primary's database."""
    return lost_writes(log, query_json(render_found_sql(log)) or {})


# the timed writers (issue 28): detached on a host, by pid ----------------------------------------------------

#: where the ActiveRecord writer's script is put on a host (from this package's ar_load.rb)
AR_SCRIPT = "/usr/local/lib/hcbpg/ar_load.rb"
#: the app host's env file: the handed-out URLs as Hatchbox would hold them (0600, root's)
AR_ENV_FILE = "/etc/hcbpg-app/database.env"
_RUN_DIR = "/run/hcbpg-app"
_LOG_DIR = "/var/log/hcbpg-app"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class Writer:
    """A writer's files on its host, by *name*: its pidfile, its log (the ``i``/``e``/``r`` lines) and its
    stderr (what went wrong, one line per error)."""

    name: str

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= _NAME_CHARS:
            raise ValueError(f"writer name {self.name!r}: lowercase letters, digits and '-' only")

    @property
    def pidfile(self) -> str:
        return f"{_RUN_DIR}/{self.name}.pid"

    @property
    def log(self) -> str:
        return f"{_LOG_DIR}/{self.name}.log"

    @property
    def stderr(self) -> str:
        return f"{_LOG_DIR}/{self.name}.err"


def _rate(rate: float) -> float:
    if not 0 < rate <= 1000:
        raise ValueError(f"rate {rate}: between 0 and 1000 writes a second")
    return rate


def render_ar_command(writer: Writer, *, env_file: str = AR_ENV_FILE, var: str = "DATABASE_URL",
                      rate: float = 50.0, users: int = 1000, mode: Literal["write", "read"] = "write",
                      pg_async: bool = True, latency: bool = False) -> list[str]:
    """The ActiveRecord writer's argv: the env file's path and the variable to read, never a URL.  *pg_async*
    False: the pg gem connects with libpq's blocking call (``PG::Connection.async_api = false``), which moves
    on from a host that times out; the default asynchronous connect of ruby-pg 1.4.5 does not (#618).  *latency*:
    each ack's line also has the insert's latency (``Ack.latency_us``; write mode)."""
    if not var.isidentifier() or not var.isupper():
        raise ValueError(f"{var!r} is not an environment variable's name")
    return ["/usr/bin/ruby", AR_SCRIPT, f"env_file={env_file}", f"var={var}", f"log={writer.log}",
            f"rate={_rate(rate):g}", f"users={int(users)}", f"mode={mode}", f"pg_async={'on' if pg_async else 'off'}",
            *(["latency=on"] if latency else [])]


_LOCAL = r"""
stop=0; trap 'stop=1' TERM INT; n=0
while [ $stop = 0 ]; do
  n=$((n+1)); t0=$(date +%s%N)
  if out=$(psql -X -q -At -v ON_ERROR_STOP=1 -h @SOCKET@ -p @PORT@ -d @DB@ \
      -c "INSERT INTO events (user_id, name, properties, created_at)
          VALUES (1 + $n % @USERS@, 'local-load', '{}', now()) RETURNING id" 2>>@ERR@); then
    printf 'i %s %s %s\n' "$out" "$(( $(date +%s%N) / 1000000 ))" @LABEL@ >> @LOG@
  else
    rc=$?; printf 'e %s psql-exit-%s\n' "$(( $(date +%s%N) / 1000000 ))" "$rc" >> @LOG@; sleep 0.05
  fi
  left=$(( @PERIOD_NS@ - ($(date +%s%N) - t0) )); [ $left -gt 0 ] && sleep "0.$(printf '%09d' $left)"
done
echo stopped >> @LOG@
"""


def render_local_command(writer: Writer, *, label: str, database: str, port: int = 5432, rate: float = 50.0,
                         users: int = 1000, socket_dir: str = "/var/run/postgresql") -> list[str]:
    """The local writer's argv: a shell loop of ``psql`` over the unix socket (peer authentication: no
    password anywhere), each ack logged with *label* (the server's address) as its server."""
    for what, value in (("label", label), ("database", database), ("socket_dir", socket_dir)):
        if not value or any(c.isspace() or c in "'\"$`\\;&|<>()" for c in value):
            raise ValueError(f"{what} {value!r}: no spaces, quotes or shell characters")
    script = (_LOCAL.replace("@SOCKET@", socket_dir).replace("@PORT@", str(int(port))).replace("@DB@", database)
              .replace("@USERS@", str(int(users))).replace("@ERR@", writer.stderr).replace("@LOG@", writer.log)
              .replace("@LABEL@", label).replace("@PERIOD_NS@", str(int(1e9 / _rate(rate)))))
    # $0 of the loop is its log's path: what its pid's command line is recognized by
    return ["/bin/bash", "-c", script, writer.log]


def render_start_detached(writer: Writer, argv: Sequence[str], *, user: str = "root") -> str:
    """The shell line that starts *argv* detached under *user* (``setsid -f``; the pid written is the
    writer's own: the shell ``exec``s ``setpriv``, which ``exec``s ``env -i``, which ``exec``s it), with a clean
    environment and a fresh log (0600, *user*'s)."""
    if not user.isidentifier():
        raise ValueError(f"user {user!r}: not a system user name")
    env = f"PATH={_PATH} HOME=/ LANG=C.UTF-8 USER={user} LOGNAME={user}"
    inner = (f"echo $$ > {writer.pidfile} && cd / && exec setpriv --reuid={user} --regid={user} --init-groups -- "
             f"env -i {env} {shlex.join(argv)} >> {writer.stderr} 2>&1 < /dev/null")
    return (f"install -d -m 0755 {_RUN_DIR} {_LOG_DIR} && rm -f {writer.pidfile} && "
            f"install -m 0600 -o {user} /dev/null {writer.log} && install -m 0600 -o {user} /dev/null {writer.stderr} && "
            f"setsid -f /bin/sh -c {shlex.quote(inner)} < /dev/null > /dev/null 2>&1")


def render_stop_command(writer: Writer, *, timeout_s: float = 10.0) -> str:
    """SIGTERM to the writer's pid (when that pid still runs the writer: its command line names its log), wait
    for it to end (gone, or a zombie its parent has yet to reap), SIGKILL after *timeout_s*; prints ``gone``
    when it was not running."""
    ticks = max(int(timeout_s * 20), 1)
    return (f"p=$(cat {writer.pidfile} 2>/dev/null); case \"$p\" in ''|*[!0-9]*) echo gone; exit 0;; esac; "
            f"tr '\\0' '\\n' < /proc/$p/cmdline 2>/dev/null | grep -qxF -- {shlex.quote(writer.log)} "
            f"|| grep -qF -- {shlex.quote('log=' + writer.log)} /proc/$p/cmdline 2>/dev/null || {{ echo gone; exit 0; }}; "
            f"kill -TERM $p; for i in $(seq {ticks}); do grep -qsE '^State:[[:space:]]+[^Z[:space:]]' /proc/$p/status || exit 0; "
            "sleep 0.05; done; "
            f"kill -KILL $p; echo killed")


def put_env_file(host: "HostLike", text: str, path: str = AR_ENV_FILE) -> None:
    """The handed-out URLs' file on *host* (its text, as the operator got it), 0600 root's, directory 0700."""
    host.run(f"install -d -m 0700 {shlex.quote(path.rsplit('/', 1)[0])}", quiet=True)
    host.put_text(path, text, mode=0o600)


def writer_pid(host: "HostLike", writer: Writer) -> int | None:
    """The writer's pid while it runs (its pidfile's pid, whose command line names its log), else None."""
    res = host.probe(f"p=$(cat {writer.pidfile} 2>/dev/null) && [ -n \"$p\" ] && echo \"$p\" && "
                     "tr '\\0\\n' '  ' < /proc/$p/cmdline")
    first, _, cmdline = res.stdout.partition("\n") if res.ok else ("", "", "")
    words = cmdline.split()
    if first.strip().isdigit() and (writer.log in words or f"log={writer.log}" in words):
        return int(first)
    return None


def _start(host: "HostLike", writer: Writer, argv: Sequence[str], *, user: str, what: str,
           wait_s: float = 10.0) -> int:
    if writer_pid(host, writer) is not None:
        raise LabError(f"{writer.name} already runs on {host.name}", hint="stop_writer() it first")
    host.run(render_start_detached(writer, argv, user=user), display=f"start {what} {writer.name} on {host.name} "
             f"(log {writer.log})")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        pid = writer_pid(host, writer)
        if pid is not None:
            return pid
        time.sleep(0.05)
    err = host.read_text(writer.stderr) or ""
    raise LabError(f"{writer.name} did not start on {host.name} within {wait_s:.0f} s: {err.strip()[-300:]}")


def start_ar_writer(host: "HostLike", *, name: str = "ar-load", env_file: str = AR_ENV_FILE,
                    var: str = "DATABASE_URL", rate: float = 50.0, users: int = 1000,
                    mode: Literal["write", "read"] = "write", pg_async: bool = True,
                    latency: bool = False) -> Writer:
    """Put ``ar_load.rb`` on *host* and start it detached (as root), reading *var* from *env_file* (put it there
    first: :func:`put_env_file`); its pid is :func:`writer_pid`.  It writes ``INSERT INTO events`` (the table must
    exist) at *rate* a second until :func:`stop_writer`; *latency*: each ack with its latency (``Ack.latency_us``)."""
    writer = Writer(name)
    argv = render_ar_command(writer, env_file=env_file, var=var, rate=rate, users=users, mode=mode,
                             pg_async=pg_async, latency=latency)
    script = resources.files("hcbpg.lab").joinpath("ar_load.rb").read_text()
    host.run(f"install -d -m 0755 {AR_SCRIPT.rsplit('/', 1)[0]}", quiet=True)
    host.put_text(AR_SCRIPT, script, mode=0o644)
    _start(host, writer, argv, user="root", what="the ActiveRecord writer")
    return writer


def start_local_writer(host: "HostLike", *, label: str, database: str, name: str = "local-load", port: int = 5432,
                       rate: float = 50.0, users: int = 1000) -> Writer:
    """Start the local writer on database server *host* (as postgres, over the unix socket), acks logged with
    *label* as their server (give the server's private IP, as the ActiveRecord writer logs it)."""
    writer = Writer(name)
    argv = render_local_command(writer, label=label, database=database, port=port, rate=rate, users=users)
    _start(host, writer, argv, user="postgres", what="the local writer")
    return writer


def read_writer_log(host: "HostLike", writer: Writer) -> LoadLog:
    """The writer's log so far (:func:`parse_log`)."""
    return parse_log(host.read_text(writer.log) or "")


def stop_writer(host: "HostLike", writer: Writer, *, timeout_s: float = 10.0) -> LoadLog:
    """End the writer by its pid (SIGTERM, SIGKILL after *timeout_s*) and return its whole log."""
    host.run(render_stop_command(writer, timeout_s=timeout_s), display=f"stop {writer.name} on {host.name}",
             timeout=timeout_s + 30)
    return read_writer_log(host, writer)


__all__ = ["AR_ENV_FILE", "AR_SCRIPT", "LOG", "Ack", "LoadLog", "Read", "SERVICE", "SERVICE_FILE", "STOP",
           "STOP_COMMAND", "WriteError", "Writer", "check_on_primary", "longest_gap_ms", "lost_writes", "parse_log",
           "put_env_file", "read_writer_log", "render_ar_command", "render_found_sql", "render_local_command",
           "render_service_file", "render_start", "render_start_detached", "render_stop_command", "start_ar_writer",
           "start_local_writer", "stop_writer", "writer_pid"]
