"""The site a run happens at: what differs between the rehearsal lab and real servers, behind one seam.

Operations never ask ``environment == "lab"``; they ask the :class:`Site` for the params
(:func:`site_for`): the drill's default scratch host and whether it must be created first, where a command can be run
from outside the private subnet, the default dead-man's switch URL, whether cron runs jobs.
:class:`ProductionSite` is what real servers get; the lab's site is ``hcbpg.lab.site:LabSite``.

How the lab site is chosen without ops, steps or engine importing ``hcbpg.lab``: params name
it by dotted reference (``site: hcbpg.lab.site:LabSite``, as ``params/lab.yaml`` and the lab
tests' params do), loaded here with :mod:`importlib` at run time, so no module of ours imports
the lab statically and the import-linter contract holds.  A params file that names no site
gets :class:`ProductionSite`, except for the environment called ``lab``, which is the
rehearsal lab by definition (``hcbpg lab up`` builds it for ``params/lab.yaml``): that one
default lives in :data:`DEFAULT_SITES` here, so a lab params file written before ``site:``
existed behaves exactly as it did.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from hcbpg.errors import ParamsError
from hcbpg.values import SITE_REF, printable

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: runs a shell command with stdin from a vantage point outside the private subnet: (exit code, output)
OutsiderRunner = Callable[[str, str], "tuple[int, str]"]

#: the site of an environment whose params name none (environment name -> "module:attribute")
DEFAULT_SITES = {"lab": "hcbpg.lab.site:LabSite"}


class Site(Protocol):
    """What differs between the places hcbpg runs against."""

    #: True when cron runs scheduled jobs on the servers (a missing cron is a failure there)
    cron_runs_jobs: bool

    def ensure_scratch_host(self, params: "Params", name: str, private_ip: str, *, dry_run: bool) -> bool:
        """Make the drill's scratch host exist if this site creates it; False: it does not exist (dry run)."""
        ...

    def default_scratch_host(self, params: "Params") -> tuple[str, str] | None:
        """(name, private IP) of the drill's scratch host when params have no ``drill:`` (None: params must say)."""
        ...

    def outsider_runner(self, params: "Params") -> OutsiderRunner | None:
        """How to run a command from outside the private subnet (None: not available here)."""
        ...

    def deadman_url(self, params: "Params") -> str | None:
        """The dead-man's switch URL when params set none (None: nobody is pinged)."""
        ...

    def health_deadman_url(self, params: "Params") -> str | None:
        """The health job's base URL when params set none (None: nobody is pinged)."""
        ...


def local_runner(argv_prefix: list[str]) -> OutsiderRunner:
    """Run ``sh -c cmd`` on the operator's machine (after *argv_prefix*), 60 s at most."""
    def run(cmd: str, stdin: str) -> tuple[int, str]:
        try:
            proc = subprocess.run([*argv_prefix, "sh", "-c", cmd], input=stdin, capture_output=True,
                                  text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return 124, "timed out"
        return proc.returncode, proc.stdout + proc.stderr
    return run


class ProductionSite:
    """Real servers: the scratch host exists already, cron runs jobs, the dead-man's URL comes from params."""

    cron_runs_jobs = True

    def ensure_scratch_host(self, params: "Params", name: str, private_ip: str, *, dry_run: bool) -> bool:
        return True

    def default_scratch_host(self, params: "Params") -> tuple[str, str] | None:
        return None

    def outsider_runner(self, params: "Params") -> OutsiderRunner | None:
        # the operator's own machine is not on the private network: a connection from it must fail
        return local_runner([]) if shutil.which("psql") else None

    def deadman_url(self, params: "Params") -> str | None:
        return None

    def health_deadman_url(self, params: "Params") -> str | None:
        return None


_LOADED: dict[str, Site] = {}


#: what every site has (see :class:`Site`): a class without them is not one, and is never instantiated
SITE_MEMBERS = ("cron_runs_jobs", "ensure_scratch_host", "default_scratch_host", "outsider_runner", "deadman_url",
                "health_deadman_url")


def load_site(ref: str) -> Site:
    """The site named by *ref*: ``hcbpg.module:Class``, a class of hcbpg that has every member of :class:`Site`.

    Params check the form already (``site``); this checks it again before importing anything, so
    that a reference that got past them (``os:system``) still names nothing outside hcbpg, and
    refuses a class that is not a site before calling it.
    """
    if ref not in _LOADED:
        if not SITE_REF.fullmatch(ref):
            raise ParamsError("params", [f"site: {printable(ref)!r} is not a class of hcbpg "
                                         "(hcbpg.<module>:<Class>, e.g. hcbpg.lab.site:LabSite)"])
        module_name, _, attr = ref.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # noqa: BLE001 - any failure to import is the params' problem to report
            raise ParamsError("params", [f"site: {ref!r} cannot be loaded ({type(exc).__name__}: {exc})"]) from exc
        missing = [m for m in SITE_MEMBERS if not hasattr(obj, m)]
        if not isinstance(obj, type) or not obj.__module__.startswith("hcbpg.") or missing:
            why = f"missing: {', '.join(missing)}" if missing else "not a class"
            raise ParamsError("params", [f"site: {ref!r} is not a site: a class of hcbpg with "
                                         f"{', '.join(SITE_MEMBERS)} ({why})"])
        _LOADED[ref] = obj()
    return _LOADED[ref]


def site_for(params: "Params") -> Site:
    """The site *params* run against: ``params.site``, else the environment's default, else production."""
    ref = params.site or DEFAULT_SITES.get(params.environment)
    return load_site(ref) if ref else PRODUCTION


PRODUCTION: Site = ProductionSite()
