"""Backups from the standby (issue 24, params ``pgbackrest.backup_standby``), pure: pgBackRest's TLS server on each
database server and the options of pgbackrest.conf that let a backup run on the leader copy its files from the
other server.

pgBackRest 2.45's ``backup-standby`` needs the backup command to reach both the primary and a standby.  The
servers take SSH only through the jumpbox, so each runs ``pgbackrest server`` (Debian's ``pgbackrest.service``)
on its private address at ``pgbackrest.tls_server_port`` (8432), with a certificate of the environment's CA naming
the server (server and client authentication: the same file answers as the server and connects as the client),
and authorises only the other server's certificate name for the stanza (``tls-server-auth``).  Each server's
pgbackrest.conf names itself pg1 and the other pg2 (``pg2-host-type=tls``) with ``backup-standby=y`` for the
backup command: the job keeps running on whichever server Patroni made leader, and pgBackRest works out which of
pg1 and pg2 is the standby.  2.45 fails a backup when no standby answers (``backup-standby=prefer`` came in 2.56),
so the backup job then takes it from the primary with ``--no-backup-standby``, saying so
(:mod:`hcbpg.desired.schedule`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.desired import tls as desired_tls
from hcbpg.desired.certs import CertSpec
from hcbpg.pg.services import ServiceSpec

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, Server

#: where the server's certificate and key lie (postgres's: pgBackRest runs as postgres)
TLS_DIR = "/etc/pgbackrest/tls"
CERT = f"{TLS_DIR}/server.crt"
KEY = f"{TLS_DIR}/server.key"
#: the server's log when no journal takes its output (pgBackRest also logs under /var/log/pgbackrest); a directory of
#: its own: the detached start makes its log's directory postgres's 0750, which /var/log/pgbackrest (0770, step 05's
#: paths) must not become, or every later run of steps 05/10 "changes" it back
SERVER_LOG = "/var/log/pgbackrest-server/tls-server.log"
#: the first pgBackRest with backup-standby=prefer (a backup from the primary when no standby answers)
STANDBY_PREFER_SINCE = (2, 56, 0)


def enabled(params: "Params") -> bool:
    """Whether backups are taken from the standby: ``pgbackrest.backup_standby`` and a second database server."""
    pb = params.pgbackrest
    return pb is not None and pb.backup_standby and len(params.servers) >= 2


def peer(params: "Params", server: "Server") -> "Server | None":
    """The other database server of *server* (pg2 in its pgbackrest.conf); None when *server* is none of params'
    servers (the drill's scratch host) or has no other."""
    names = [s.name for s in params.servers]
    if server.name not in names:
        return None
    others = [s for s in params.servers if s.name != server.name]
    return others[0] if others else None


def cert_spec(server: "Server") -> CertSpec:
    """The TLS server's certificate of *server*: its name (the name the other server authorises) and private IP;
    server and client authentication (it also connects to the other server's TLS server).  The IP is a DNS name
    too: pgBackRest 2.45 matches the host it connects to against the common name and the DNS names only ("unable
    to find hostname '10.0.1.6' in certificate common name or subject alternative names", seen in the lab)."""
    return CertSpec(server.name, (server.private_ip,), (server.name, server.private_ip), server=True, client=True)


def server_service(params: "Params") -> ServiceSpec:
    """``pgbackrest server`` as Debian's ``pgbackrest.service`` runs it (user postgres); it reads pgbackrest.conf's
    ``[global:server]`` section."""
    del params  # the config file says the rest
    return ServiceSpec(name="pgbackrest", user="postgres", home="/var/lib/postgresql",
                       argv=("/usr/bin/pgbackrest", "server"), log_file=SERVER_LOG)


def conf_sections(params: "Params", server: "Server", *, pg_path: str,
                  standby: bool = True) -> dict[str, dict[str, str]]:
    """pgbackrest.conf's sections for backups from the standby on *server* (empty when off or *server* has no
    peer): the stanza's pg2 over TLS, ``backup-standby=y`` for the backup command, the TLS server's options.
    *standby* False: the TLS server's options only, no pg2 and no backup-standby (the other server's TLS server
    does not answer yet, or no longer: ``pgbackrest check`` and ``backup`` would fail naming it).
    The caller merges them into its own (:func:`hcbpg.desired.pgbackrest.conf_options`)."""
    other = peer(params, server)
    if not enabled(params) or other is None:
        return {}
    pb = params.pgbackrest
    assert pb is not None  # enabled() says so
    ca = desired_tls.client_ca_path(params)
    stanza = {"pg2-host": other.private_ip, "pg2-host-type": "tls", "pg2-host-port": str(pb.tls_server_port),
              "pg2-host-cert-file": CERT, "pg2-host-key-file": KEY, "pg2-host-ca-file": ca, "pg2-path": pg_path}
    if params.postgres.port != 5432:
        stanza["pg2-port"] = str(params.postgres.port)
    tls_server = {"tls-server-address": server.private_ip, "tls-server-port": str(pb.tls_server_port),
                  "tls-server-cert-file": CERT, "tls-server-key-file": KEY, "tls-server-ca-file": ca,
                  # only the other server's certificate (its CN) may run commands, and only for this stanza
                  "tls-server-auth": f"{other.name}={pb.stanza}"}
    if not standby:
        return {"global:server": tls_server}
    return {pb.stanza: stanza, "global:backup": {"backup-standby": "y"}, "global:server": tls_server}


__all__ = ["CERT", "KEY", "SERVER_LOG", "STANDBY_PREFER_SINCE", "TLS_DIR", "cert_spec", "conf_sections", "enabled",
           "peer", "server_service"]
