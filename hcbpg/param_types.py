"""The field types every params section is made of (secret references, networks, addresses, names) and the
base :class:`Model` (no extra key, frozen, no control character in any value): :mod:`hcbpg.params`'s building
blocks, apart so that the sections in :mod:`hcbpg.params_ha` use them without importing the whole schema."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from hcbpg.secrets import is_secret_ref
from hcbpg.values import control_problem, endpoint, own_directory, printable, private_network, site_ref


def _secret_ref(v: str) -> str:
    if not is_secret_ref(v):
        raise ValueError(
            f"{v!r} is not a secret reference; secrets are never written into params: "
            "use env:NAME, file:/path or op://vault/item/field")
    return v


SecretRef = Annotated[str, AfterValidator(_secret_ref)]


def _network(v: str) -> str:
    try:
        return str(ipaddress.ip_network(v, strict=True))
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not a network in CIDR notation (e.g. 10.0.1.0/24)") from exc
        addr = v.split("/")[0]
        raise ValueError(
            f"{v!r} has host bits set: a /{loose.prefixlen} that contains {addr} is {loose}, "
            f"so it means the whole of {loose}. Write {loose} if you mean that whole network, "
            f"or the smaller network you meant (for the subnet of {addr}, most likely "
            f"{ipaddress.ip_network(addr + '/24', strict=False)})") from None


Network = Annotated[str, AfterValidator(_network)]

#: a network inside the RFC 1918 ranges (the private network, its subnet, the app servers)
PrivateNetwork = Annotated[str, AfterValidator(_network), AfterValidator(private_network)]


def _address(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None


Address = Annotated[str, AfterValidator(_address)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*[a-z0-9]$", max_length=63)]
Ident = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=63)]
#: a PostgreSQL setting's name as hcbpg writes it (the same rule as hcbpg.pg.conf.SETTING_NAME)
SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")
#: a Site implementation by dotted reference, ``hcbpg.module:Class`` (see hcbpg.adapters.site)
SiteRef = Annotated[str, AfterValidator(site_ref)]
Port = Annotated[int, Field(ge=1, le=65535)]

#: a directory hcbpg creates and owns on a server (the dump directory, pgBackRest's spool)
OwnDirectory = Annotated[str, AfterValidator(own_directory)]

Endpoint = Annotated[str, AfterValidator(endpoint)]


#: PostgreSQL's most connections (max_connections, and so any role's connection limit)
MAX_CONNECTIONS = 262143

#: marks a value in params the operator must still set (e.g. pgbackrest.deadman_url)
PLACEHOLDER = "CHANGE-ME"


class Model(BaseModel):
    #: inf and nan are no timeout, port or size: refused everywhere
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _one_line(cls, v: Any) -> Any:
        """No value holds a control character (see :func:`control_problems`, which names the exact key)."""
        problem = control_problem(v)
        if problem:
            raise ValueError(problem)
        return v


# validation errors as the operator reads them --------------------------------------------------------

def fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Known field names of the model at *loc* (for 'did you mean' on an unknown key)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        try:
            ann = cur.model_fields[part].annotation
        except (AttributeError, KeyError):
            return []
        for cand in getattr(ann, "__args__", ()) or (ann,):
            inner = getattr(cand, "__args__", None)
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cur = cand
                break
            if inner:
                sub = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
                if sub:
                    cur = sub[0]
                    break
        else:
            return []
    return list(getattr(cur, "model_fields", {}))


def dotted_key(loc: tuple[Any, ...]) -> str:
    """A validation error's location as the dotted key the operator writes (``servers[0].name``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith("function-after") and "[" not in str(part):
            out += ("." if out else "") + printable(str(part))
    return out
