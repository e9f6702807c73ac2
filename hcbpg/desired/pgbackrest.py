"""pgBackRest's desired configuration from params: the repository path, every option of
``/etc/pgbackrest/pgbackrest.conf`` (secrets as placeholders until the file is written), and
reading a rendered file back.  Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hcbpg.desired import pgbackrest_server
from hcbpg.errors import ParamsError, PgBackRestError, SafetyCheckFailed
from hcbpg.pg.conf import MANAGED_HEADER, one_line

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, PgBackRest, S3Repo, Server


CONF_PATH = "/etc/pgbackrest/pgbackrest.conf"


SECRET_PLACEHOLDER = "<secret>"


#: config options whose values are secrets, and the params key of their secret reference
SECRET_OPTIONS = {
    "repo1-cipher-pass": "pgbackrest.cipher_pass",
    "repo1-s3-key": "pgbackrest.s3_key",
    "repo1-s3-key-secret": "pgbackrest.s3_key_secret",
    "repo2-cipher-pass": "pgbackrest.repo2.cipher_pass",
    "repo2-s3-key": "pgbackrest.repo2.s3_key",
    "repo2-s3-key-secret": "pgbackrest.repo2.s3_key_secret",
}


#: the first release in which block incremental is no longer beta (2.45 has it as beta only)
BLOCK_INCREMENTAL_SINCE = (2, 46, 0)


def parse_version(text: str) -> tuple[int, int, int]:
    """``(2, 45, 0)`` from ``pgbackrest version`` output (``pgBackRest 2.45``, ``pgBackRest 2.54.2``)."""
    m = re.search(r"pgBackRest\s+(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise PgBackRestError(f"cannot read a pgBackRest version from {text.strip()[:200]!r}",
                              hint="Is pgbackrest installed (`pgbackrest version`)?")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def repo_path(params: "Params", server: "Server | None" = None) -> str:
    """The cluster's repository path: ``<repo_path_prefix>/<stanza>``, the same whichever server is primary.

    It names the cluster, not the server (*server* is ignored, kept for callers): after a
    switchover or failover the new primary archives and backs up into the same stanza on its
    new timeline, so point-in-time recovery to a moment before the failover still works
    (pgBackRest's own answer; a server-named path started a new repository at each failover).
    """
    del server
    pb = pgbackrest_params(params)
    return f"{pb.repo_path_prefix.rstrip('/')}/{pb.stanza}"


def repo_index_path(params: "Params", repo: "S3Repo") -> str:
    """*repo*'s path for the cluster: ``<its repo_path_prefix>/<stanza>`` (see :func:`repo_path`)."""
    return f"{repo.repo_path_prefix.rstrip('/')}/{pgbackrest_params(params).stanza}"


def repo_indexes(params: "Params") -> list[int]:
    """The repositories' indexes in pgbackrest.conf: ``[1]``, or ``[1, 2]`` with ``pgbackrest.repo2``."""
    return [n for n, _ in pgbackrest_params(params).repos()]


def repo_options(params: "Params", n: int, repo: "S3Repo") -> dict[str, str]:
    """The ``repo<n>-*`` options of one repository (secrets as ``<secret>``)."""
    pb = pgbackrest_params(params)
    key = "pgbackrest" if n == 1 else f"pgbackrest.repo{n}"
    host, port = split_endpoint(repo.s3_endpoint, key=f"{key}.s3_endpoint")
    yn = lambda b: "y" if b else "n"  # noqa: E731
    r = f"repo{n}-"
    o = {
        r + "bundle": yn(pb.bundle),
        r + "cipher-type": repo.cipher_type,
        r + "path": repo_index_path(params, repo),
        r + "retention-full": str(repo.retention_full),
        r + "retention-full-type": repo.retention_full_type,
        r + "s3-bucket": repo.s3_bucket,
        r + "s3-endpoint": host,
        r + "s3-key": SECRET_PLACEHOLDER,
        r + "s3-key-secret": SECRET_PLACEHOLDER,
        r + "s3-region": repo.s3_region,
        r + "type": pb.repo_type,
    }
    if pb.block:
        o[r + "block"] = "y"
    if repo.cipher_type != "none":
        o[r + "cipher-pass"] = SECRET_PLACEHOLDER
    if port is not None:
        o[r + "storage-port"] = str(port)
    if repo.s3_uri_style != "host":
        o[r + "s3-uri-style"] = repo.s3_uri_style
    if repo.s3_ca_file:
        o[r + "storage-ca-file"] = repo.s3_ca_file
    if not repo.s3_verify_tls:
        o[r + "storage-verify-tls"] = "n"
    return o


#: disk size (GB) of Hetzner Cloud server types, for the default archive-push-queue-max
SERVER_TYPE_DISK_GB = {
    "cx22": 40, "cx32": 80, "cx42": 160, "cx52": 320,
    "cpx11": 40, "cpx21": 80, "cpx31": 160, "cpx41": 240, "cpx51": 360,
    "cax11": 40, "cax21": 80, "cax31": 160, "cax41": 320,
    "ccx13": 80, "ccx23": 160, "ccx33": 240, "ccx43": 360, "ccx53": 600, "ccx63": 960,
}
#: the share of the disk unarchived WAL may take before pgBackRest drops it from the archive
QUEUE_SHARE_OF_DISK = 0.2

#: io-timeout of archive-push by default (pgbackrest.archive_push_io_timeout, see conf_options): seconds without
#: progress before a try fails
ARCHIVE_PUSH_IO_TIMEOUT_S = 5

#: pgBackRest's own default archive-timeout (pgbackrest.archive_push_timeout: written only when another)
ARCHIVE_TIMEOUT_DEFAULT_S = 60

_SIZE_RE = re.compile(r"^(\d+)(MB|GB|TB)$")


def size_bytes(text: str) -> int:
    """``16GB`` -> bytes (powers of 1024, as pgBackRest and PostgreSQL read them)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ParamsError("params", [f"{text!r} is not a size such as 512MB or 16GB"])
    return int(m.group(1)) * {"MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}[m.group(2)]


def archive_push_queue_max(params: "Params") -> str:
    """``pgbackrest.archive_push_queue_max``, else a fifth of the server type's disk (``ccx13``: 80 GB -> 16GB).

    Past this much unarchived WAL pgBackRest drops WAL from the archive (PostgreSQL keeps
    running and pg_wal stops growing); the next backup closes the gap.
    """
    pb = pgbackrest_params(params)
    if pb.archive_push_queue_max:
        return pb.archive_push_queue_max
    disk = SERVER_TYPE_DISK_GB.get(params.hetzner.server_type)
    if disk is None:
        raise ParamsError("params", [
            f"pgbackrest.archive_push_queue_max: hcbpg does not know the disk of server type "
            f"{params.hetzner.server_type!r}; set it (e.g. a fifth of the disk: 16GB for 80 GB)"])
    return f"{max(1, int(disk * QUEUE_SHARE_OF_DISK))}GB"


def conf_options(params: "Params", server: "Server", *,
                 version: tuple[int, int, int] | None, standby: bool = True) -> dict[str, dict[str, str]]:
    """The options of pgbackrest.conf by section (secrets as ``<secret>``), for *server*'s repository.

    *version* None (pgBackRest not installed yet, in a plan) skips the version rule; the
    apply checks it once pgBackRest is installed.  *standby* False: no pg2 (backups from the standby,
    :func:`hcbpg.desired.pgbackrest_server.conf_sections`), while the other server's TLS server does not answer.
    """
    if version is not None:
        check_block_incremental(params, version)
    pb = pgbackrest_params(params)
    yn = lambda b: "y" if b else "n"  # noqa: E731
    g: dict[str, str] = {
        "compress-type": pb.compress_type,
        "process-max": str(pb.process_max),
        "start-fast": yn(pb.start_fast),
    }
    for n, repo in pb.repos():
        # every repository gets the WAL (archive-push pushes to each); backups name theirs (--repo=N)
        g.update(repo_options(params, n, repo))
    if pb.archive_async:
        # WAL is pushed by a background process from the spool; past the queue limit it is dropped
        # from the archive rather than filling the disk (see archive_push_queue_max)
        g["archive-async"] = "y"
        g["spool-path"] = pb.spool_path
        g["archive-push-queue-max"] = archive_push_queue_max(params)
    stanza: dict[str, str] = {"pg1-path": pg_data_path(params)}
    if params.postgres.port != 5432:
        stanza["pg1-port"] = str(params.postgres.port)
    sections = {pb.stanza: stanza, "global": g}
    if pb.archive_async:
        # the queue bound is checked when an archive-push run starts, and a run against an unreachable
        # repository gives up only after about 16 times io-timeout (measured with 2.45 and packets dropped: 82 s at
        # 5 s; each of archive.info and its copy is tried for 2 x io-timeout by the socket and again by the HTTP
        # request, and the push is tried twice): 16 minutes at the default 60 s. A short one (inactivity, not the
        # whole upload; a failed push is only tried again) keeps the overshoot past archive-push-queue-max to what
        # is written in those seconds; 5 s (the params default) leaves room for a slow link across the Atlantic
        push = {"io-timeout": str(pb.archive_push_io_timeout)}
        if pb.archive_push_timeout != ARCHIVE_TIMEOUT_DEFAULT_S:
            # archive_command waits this long for the background push of its segment, then fails (retried)
            push["archive-timeout"] = str(pb.archive_push_timeout)
        sections["global:archive-push"] = push
    if any(r.admin_s3_key is not None for _, r in pb.repos()):
        # a repository with an admin key: this server's key cannot erase history, so expiry runs on the jumpbox
        # with the admin key (hcbpg.desired.repo_history); a backup here must not try to expire
        sections["global:backup"] = {"expire-auto": "n"}
    # backups from the standby (pgbackrest.backup_standby): pg2 over TLS, backup-standby, the TLS server
    for name, options in pgbackrest_server.conf_sections(params, server, pg_path=pg_data_path(params),
                                                         standby=standby).items():
        sections.setdefault(name, {}).update(options)
    return sections


def render_pgbackrest_conf(params: "Params", server: "Server", *, version: tuple[int, int, int] | None,
                           secrets: Mapping[str, str] | None = None, standby: bool = True) -> str:
    """pgbackrest.conf for *server*'s repository, whole: header, ``[stanza]``, ``[global]``, keys sorted.

    Without *secrets* the secret options read ``<secret>`` (for plans and diffs); with
    *secrets* (option name -> value, see :func:`resolve_conf_secrets`) they hold the values,
    for the bytes written to the server only.
    """
    sections = conf_options(params, server, version=version, standby=standby)
    lines = [
        MANAGED_HEADER,
        f"# pgBackRest for {server.name}, rendered from params ({params.environment}) for "
        f"pgBackRest {format_version(version) if version else '(not installed yet)'}.",
        "# Holds the repository credentials and cipher passphrase: mode 0640, owner postgres.",
    ]
    for name, options in sections.items():
        if not _SECTION.fullmatch(name):
            raise SafetyCheckFailed(f"pgbackrest.conf: {one_line(name, 'a section name')!r} is not a section name")
        lines += ["", f"[{name}]"]
        for key in sorted(options):
            value = options[key]
            if not _OPTION.fullmatch(key):
                raise SafetyCheckFailed(f"pgbackrest.conf: {one_line(key, 'an option name')!r} is not an option name")
            if value == SECRET_PLACEHOLDER and secrets is not None:
                value = secrets[key]
                one_line(value, f"pgbackrest.conf option {key} ({SECRET_OPTIONS[key]})", secret=True)
                if not value or value != value.strip():
                    raise SafetyCheckFailed(f"the secret for {key} ({SECRET_OPTIONS[key]}) cannot be written "
                                            "to pgbackrest.conf: it is empty or has outer spaces")
            else:
                # every value from params, checked again here: a line break would add options of its own
                one_line(value, f"pgbackrest.conf option {key}")
                if value != value.strip():
                    raise SafetyCheckFailed(f"pgbackrest.conf option {key}: {value!r} has outer spaces, which "
                                            "pgBackRest would drop")
            lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


#: a section of pgbackrest.conf (``global``, ``global:archive-push``, a stanza) and an option's name
_SECTION = re.compile(r"[A-Za-z0-9_.-]+(:[a-z-]+)?")
_OPTION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def redact_conf(text: str) -> str:
    """*text* (an INI file) with every secret option's value replaced by ``<secret>``."""
    out = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"^(\s*)([A-Za-z0-9-]+)(\s*=\s*)(.*?)(\r?\n?)$", line)
        if m and m.group(2) in SECRET_OPTIONS:
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{SECRET_PLACEHOLDER}{m.group(5)}"
        out.append(line)
    return "".join(out)


def parse_conf(text: str) -> dict[str, dict[str, str]]:
    """The options of a pgBackRest INI file by section (comments and blank lines dropped)."""
    out: dict[str, dict[str, str]] = {}
    section = ""
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1].strip()
            out.setdefault(section, {})
            continue
        if "=" in s:
            k, v = s.split("=", 1)
            out.setdefault(section, {})[k.strip()] = v.strip()
    return out


def pgbackrest_params(params: "Params") -> "PgBackRest":
    if params.pgbackrest is None:
        raise ParamsError("params", ["pgbackrest: required for this step (the backup repository)"])
    return params.pgbackrest


def format_version(version: tuple[int, int, int]) -> str:
    return ".".join(str(p) for p in (version if version[2] else version[:2]))


def check_block_incremental(params: "Params", version: tuple[int, int, int]) -> None:
    """Refuse block incremental (``block: true``) unless bundling is on and pgBackRest is 2.46 or newer.

    pgBackRest 2.45 knows ``repo1-block`` only as a beta option and rejects it without
    ``beta=y``; a config that fails at the first backup is worse than no config.
    """
    pb = pgbackrest_params(params)
    if not pb.block:
        return
    problems = []
    if not pb.bundle:
        problems.append("pgbackrest.block: block incremental needs bundling: set bundle: true or block: false")
    if version < BLOCK_INCREMENTAL_SINCE:
        problems.append(
            f"pgbackrest.block: block incremental needs pgBackRest {format_version(BLOCK_INCREMENTAL_SINCE)} "
            f"or newer, and the server has {format_version(version)} (where it is a beta option that "
            "pgBackRest refuses): set block: false, or install pgBackRest 2.46+ (the PGDG repository "
            "has it) and run this step again")
    if problems:
        raise ParamsError("params", problems)


def split_endpoint(endpoint: str, *, key: str = "pgbackrest.s3_endpoint") -> tuple[str, int | None]:
    """``("10.0.1.1", 9443)`` from ``10.0.1.1:9443``; ``(host, None)`` when there is no port (*key*: the params
    key named in a problem)."""
    ep = re.sub(r"^https?://", "", endpoint.strip()).rstrip("/")
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:/\s]+)(?::(\d{1,5}))?", ep)
    if not m:
        raise ParamsError("params", [f"{key}: {endpoint!r} is not host or host:port"])
    if m.group(2) and not 1 <= int(m.group(2)) <= 65535:
        raise ParamsError("params", [f"{key}: port {m.group(2)} is not between 1 and 65535"])
    return m.group(1), int(m.group(2)) if m.group(2) else None


def pg_data_path(params: "Params") -> str:
    """The cluster's data directory on Debian/Ubuntu (``/var/lib/postgresql/15/main``)."""
    return f"/var/lib/postgresql/{params.postgres.version}/{params.postgres.cluster}"
