"""Starting traffic: the new DATABASE_URL handed to the operator in a 0600 file (only redacted URLs
are printed), and the downtime shown."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcbpg import secrets as hsecrets
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.migration import handoff_path, render_database_url, render_env_file
from hcbpg.display import show_table
from hcbpg.pg.conninfo import redact_url, render_role_url

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params


def write_private_file(path: Path, text: str) -> None:
    """Write *text* to a 0600 file (directory 0700), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class AppUrls:
    path: Path
    shown: dict[str, str]      # redacted: postgres://rails:[secret]@10.0.1.5:5432/hcb_production
    written: bool


def write_app_urls(params: "Params", password: str, *, dry_run: bool = False) -> AppUrls:
    """DATABASE_URL and BLAZER_DATABASE_URL into a 0600 file for the operator (nothing printed but redacted URLs)."""
    url = hsecrets.register(render_database_url(params, password))
    values = {"DATABASE_URL": url, "BLAZER_DATABASE_URL": url}
    path = handoff_path(params)
    if not dry_run:
        write_private_file(path, render_env_file(values))
    return AppUrls(path, {k: redact_url(v) for k, v in values.items()}, not dry_run)


def write_role_urls(params: "Params", values: Mapping[str, tuple[str, str]], *, path: Path,
                    dry_run: bool = False) -> AppUrls:
    """``NAME -> (role, password)`` as URLs (the app's URL builder) into a 0600 file; only redacted ones shown."""
    tls = desired_tls.client_tls(params)
    urls = {k: hsecrets.register(render_role_url(params, role, pw, query=tls)) for k, (role, pw) in values.items()}
    if not dry_run:
        write_private_file(path, render_env_file(urls))
    return AppUrls(path, {k: redact_url(v) for k, v in urls.items()}, not dry_run)


def show_urls(urls: AppUrls) -> None:
    for k, v in urls.shown.items():
        print(f"{k}={v}")
    print(f"the real values are {'in' if urls.written else 'would be written to'} {urls.path} (mode 0600)")


def show_downtime(dt: Mapping[str, Any]) -> None:
    rows = [{"what": "maintenance on (approved)", "value": dt.get("maintenance_on_at") or "-"},
            {"what": "traffic on (approved)", "value": dt.get("traffic_on_at") or "-"},
            {"what": "downtime", "value": f"{dt['total_s']:.1f} s" if dt.get("total_s") is not None else "-"}]
    rows += [{"what": k, "value": f"{v:.1f} s"} for k, v in (dt.get("phases_s") or {}).items()]
    show_table(rows, ["what", "value"])
