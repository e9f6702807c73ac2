"""The cloud adapter: the Hetzner Cloud API client (``hcloud.Client``) for the params' endpoint (the real
API or the lab's stand-in), the one place where its failures become a :class:`~hcbpg.errors.CloudError`
(:func:`map_cloud_errors`, like httpx's ``map_httpcore_exceptions``), and the wait for its actions.

    CloudLike             what operations take: an ``hcloud.Client`` (or anything shaped like it)
    make_client           a client for params ``hetzner.api_endpoint`` with the token handed in
    map_cloud_errors      hcloud / requests failures of one call → CloudError (code, hint), raised from them
    wait_for_actions      poll actions until they succeed, with a deadline
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import hcloud
import requests
from hcloud.actions.domain import ActionFailedException, ActionTimeoutException

from hcbpg.errors import CloudError, WaitTimeout
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: how long an operation waits for the API's actions by default
DEFAULT_WAIT_TIMEOUT = 600.0


@runtime_checkable
class CloudLike(Protocol):
    """The Hetzner Cloud API client operations use (``hcloud.Client``): its resource collections."""

    servers: Any
    server_types: Any
    locations: Any
    images: Any
    ssh_keys: Any
    networks: Any
    firewalls: Any
    placement_groups: Any

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """A raw API call (``hcloud.Client.request``): for what no resource collection says (a token's rights)."""
        ...


def make_client(params: "Params", token: str, *, poll_interval: float | None = None,
                timeout: float = 30.0) -> hcloud.Client:
    """An hcloud client for the params' API endpoint (the real API or the lab's stand-in), polling actions every
    *poll_interval* seconds (params hetzner.poll_interval_s unless given)."""
    if not token or not token.strip():
        raise CloudError("the Hetzner Cloud API token is empty",
                         hint=f"Put a read-write API token where params hetzner.token points ({params.hetzner.token}).")
    return hcloud.Client(token=token.strip(), api_endpoint=params.hetzner.api_endpoint,
                         poll_interval=params.hetzner.poll_interval_s if poll_interval is None else poll_interval,
                         timeout=timeout, application_name="hcbpg")


#: what to do next, by the API's error code
HINTS = {
    "unauthorized": "The API token was refused: check the token that params hetzner.token points to "
                    "(a read-write token of the right project).",
    "forbidden": "The token may be read-only: create a read-write API token for the project.",
    "token_readonly": "The token is read-only: create a read-write API token for the project.",
    "uniqueness_error": "A resource with that name was created meanwhile (or by hand); run the step again: "
                        "it finds existing resources by name and creates only what is missing.",
    "rate_limit_exceeded": "The API rate limit was hit; wait a minute and run the step again.",
    "resource_limit_exceeded": "The project hit a resource limit (servers, IPs); ask Hetzner to raise it.",
    "ip_not_available": "The private IP is taken or outside the network's subnets: check servers[].private_ip "
                        "and network.subnet in params.",
    "placement_error": "The placement group cannot take another server in this location; try again later or "
                       "ask Hetzner support.",
    "resource_unavailable": "The server type is sold out in this location right now; try again later.",
}


@contextlib.contextmanager
def map_cloud_errors(what: str) -> Iterator[None]:
    """Turn hcloud/requests failures of *what* into a CloudError (with the API's code) that says what to do next."""
    try:
        yield
    except hcloud.APIException as exc:
        details = ""
        fields = (exc.details or {}).get("fields") if isinstance(exc.details, dict) else None
        if fields:
            details = "; ".join(f"{f.get('name')}: {', '.join(f.get('messages', []))}" for f in fields)
        hint = HINTS.get(str(exc.code), "Nothing after this call was changed. Fix the cause and run the step "
                                        "again: it finds what exists and creates only what is missing.")
        raise CloudError(f"Hetzner Cloud API: {what} failed: {exc.message} ({exc.code})"
                         + (f" [{details}]" if details else ""), code=str(exc.code), hint=hint) from exc
    except (ActionFailedException, ActionTimeoutException) as exc:
        raise CloudError(f"Hetzner Cloud API: {what}: {exc.message}",
                         hint="Look at the action in the Hetzner console; run the step again once it is resolved.") from exc
    except requests.RequestException as exc:
        raise CloudError(f"Hetzner Cloud API: {what}: cannot reach the API ({type(exc).__name__}: {exc})",
                         hint="Check params hetzner.api_endpoint and the network; nothing was changed by this call.") from exc


def wait_for_actions(actions: Sequence[Any], *, what: str, timeout: float = DEFAULT_WAIT_TIMEOUT,
                     interval: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> None:
    """Poll hcloud actions until all succeeded; CloudError on an error, WaitTimeout at the deadline."""
    pending = [a for a in actions if a is not None]
    for _ in polling_loop(timeout, interval=interval, sleep=sleep, clock=clock):
        still = []
        for action in pending:
            with map_cloud_errors(f"{what}: polling action {action.id}"):
                action.reload()
            if action.status == "error":
                err = action.error or {}
                raise CloudError(f"Hetzner Cloud API: {what}: action {action.command} ({action.id}) failed: "
                                 f"{err.get('message', 'no message')} ({err.get('code', 'error')})",
                                 code=err.get("code"),
                                 hint="Look at the resource in the Hetzner console; run the step again once "
                                      "the cause is fixed.")
            if action.status != "success":
                still.append(action)
        if not still:
            return
        pending = still
    names = ", ".join(f"{a.command} ({a.id})" for a in pending)
    raise WaitTimeout(f"{what}: actions still running after {timeout:.0f}s: {names}", what=what, timeout=timeout,
                      last=names, hint="The API may be slow; run the step again later: it picks up what exists.")


def client_interval(client: CloudLike) -> float:
    """The client's own poll interval (so tests against the stand-in stay fast)."""
    func = getattr(getattr(client, "_client", None), "_poll_interval_func", None)
    try:
        return float(func(1)) if func else 1.0
    except Exception:  # noqa: BLE001 - a custom backoff function we cannot call this way
        return 1.0
