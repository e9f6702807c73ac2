"""The rehearsal lab's stand-in for the Heroku CLI, on the operator's side: an executable ``heroku`` that answers
what hcbpg asks of the real one for ``source.method: heroku`` (``auth:whoami``, ``pg:credentials:url --app APP``)
with the lab source's URL, read from a 0600 file each time it is asked (so a test can rotate it), in the real
CLI's output format.  Every call is appended to a log beside it (the arguments only, never the URL).

    install_fake_heroku(bin_dir, url_file, app="hcb-lab") -> the path of bin_dir/heroku (put bin_dir first on PATH)
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

#: the account the stand-in says it is logged in as
ACCOUNT = "operator@hcbpg.lab"

_SCRIPT = '''#!{python}
# hcbpg's lab stand-in for the Heroku CLI (hcbpg/lab/heroku_cli.py): written by install_fake_heroku
import sys
sys.path.insert(0, {root!r})
from hcbpg.lab.heroku_cli import main
sys.exit(main(sys.argv[1:], url_file={url_file!r}, app={app!r}, log={log!r}))
'''


def render_credentials_output(url: str) -> str:
    """What ``heroku pg:credentials:url`` prints for *url* (the real CLI's layout, heroku 10)."""
    parts = urllib.parse.urlsplit(url)
    info = (f"dbname={parts.path.lstrip('/')} host={parts.hostname} port={parts.port or 5432} "
            f"user={urllib.parse.unquote(parts.username or '')} password={urllib.parse.unquote(parts.password or '')} "
            "sslmode=require")
    return (f"Connection information for default credential.\nConnection info string:\n  \"{info}\"\n"
            f"Connection URL:\n  {url}\n")


def main(argv: list[str], *, url_file: str, app: str, log: str) -> int:
    """The stand-in's command line: ``auth:whoami``, ``pg:credentials:url --app APP``; anything else fails."""
    with open(log, "a") as f:
        f.write(" ".join(argv) + "\n")
    if argv[:1] == ["auth:whoami"]:
        print(ACCOUNT)
        return 0
    if argv[:1] == ["pg:credentials:url"]:
        if argv[1:] != ["--app", app]:
            print(" ›   Error: Couldn't find that app.", file=sys.stderr)
            return 1
        sys.stdout.write(render_credentials_output(Path(url_file).read_text().strip()))
        return 0
    print(f" ›   Error: {' '.join(argv[:1])} is not in hcbpg's lab stand-in of the Heroku CLI", file=sys.stderr)
    return 1


def install_fake_heroku(bin_dir: Path, url_file: Path, *, app: str = "hcb-lab") -> Path:
    """An executable ``heroku`` in *bin_dir* answering for *app* with the URL in *url_file*; its log is
    ``bin_dir/heroku.log``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "heroku"
    root = str(Path(__file__).resolve().parents[2])
    path.write_text(_SCRIPT.format(python=sys.executable, root=root, url_file=str(url_file), app=app,
                                   log=str(bin_dir / "heroku.log")))
    path.chmod(0o755)
    return path
