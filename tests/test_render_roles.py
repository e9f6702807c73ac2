"""The app role's plan (pure): SCRAM-SHA-256 verifiers, and what ensure_role would run or refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from hcbpg.adapters.dryrun import AbsentHost
from hcbpg.adapters.psql import render
from hcbpg.desired import app_role as roles
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops.cluster import get_psql
from hcbpg.params import parse_params
from hcbpg.pg import scram as scram
from hcbpg.secrets import scrub
from hcbpg.steps import app_role_database as role_step

PARAMS = parse_params({
    "environment": "lab",
    "hetzner": {"token": "env:HCBPG_TEST_TOKEN", "ssh_public_key_file": "/dev/null"},
    "servers": [{"name": "server-postgres-1", "private_ip": "10.0.1.5", "role": "primary"}],
    "postgres": {"app_role_password": "file:/run/secrets/rails"},
})
PASSWORD = "correct horse battery staple"


def existing(**kw):
    role = {"rolname": "rails", "rolcanlogin": True, "rolinherit": True, "rolconnlimit": 500, "rolsuper": False,
            "rolcreatedb": False, "rolcreaterole": False, "rolreplication": False, "rolbypassrls": False,
            "rolpassword": scram.scram_verifier(PASSWORD)}
    role.update(kw)
    return role


def test_scram_keys_match_rfc_7677_example():
    # RFC 7677 section 3: user "user", password "pencil"; the server signature proves the ServerKey
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    _stored, server_key = scram._scram_keys("pencil", salt, 4096)
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    sig = base64.b64encode(hmac.new(server_key, auth.encode(), hashlib.sha256).digest()).decode()
    assert sig == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_verifier_has_postgres_format_and_checks_its_password():
    v = scram.scram_verifier(PASSWORD)
    mech, iter_salt, keys = v.split("$")
    assert mech == "SCRAM-SHA-256" and iter_salt.startswith("4096:") and len(keys.split(":")) == 2
    assert len(base64.b64decode(iter_salt.split(":")[1])) == 16
    assert scram.scram_matches(PASSWORD, v)
    assert not scram.scram_matches(PASSWORD + "x", v)
    assert not scram.scram_matches(PASSWORD, "md5abc") and not scram.scram_matches(PASSWORD, "garbage")


def test_verifiers_are_salted_and_scrubbed():
    a, b = scram.scram_verifier(PASSWORD), scram.scram_verifier(PASSWORD)
    assert a != b
    assert scrub(f"PASSWORD '{a}'") == "PASSWORD '[secret]'"


def test_new_role_is_created_with_a_verifier_never_the_password():
    [stmt] = roles.plan_role(PARAMS, None, PASSWORD, host_name="server-postgres-1")
    text = render(stmt)
    assert text.startswith('CREATE ROLE "rails" WITH LOGIN INHERIT')
    assert "CONNECTION LIMIT 500" in text and "PASSWORD 'SCRAM-SHA-256$4096:" in text
    assert PASSWORD not in text


def test_role_with_same_password_and_attributes_needs_nothing():
    assert roles.plan_role(PARAMS, existing(), PASSWORD, host_name="server-postgres-1") == []


def test_role_attributes_are_corrected_without_touching_the_password():
    [stmt] = roles.plan_role(PARAMS, existing(rolconnlimit=-1, rolinherit=False, rolcreatedb=True), PASSWORD,
                             host_name="server-postgres-1")
    assert render(stmt) == 'ALTER ROLE "rails" WITH INHERIT NOCREATEDB CONNECTION LIMIT 500'


def test_role_with_another_password_is_refused_naming_key_and_host():
    with pytest.raises(SafetyCheckFailed) as info:
        roles.plan_role(PARAMS, existing(rolpassword=scram.scram_verifier("another password")), PASSWORD,
                        host_name="server-postgres-1")
    msg = str(info.value)
    assert "postgres.app_role_password" in msg and "server-postgres-1" in msg and PASSWORD not in msg


def test_role_without_password_gets_one():
    [stmt] = roles.plan_role(PARAMS, existing(rolpassword=None), PASSWORD, host_name="h")
    assert "PASSWORD 'SCRAM-SHA-256$" in render(stmt)


def test_md5_password_that_matches_is_rehashed_as_scram_and_one_that_differs_is_refused():
    md5 = "md5" + hashlib.md5((PASSWORD + "rails").encode()).hexdigest()
    [stmt] = roles.plan_role(PARAMS, existing(rolpassword=md5), PASSWORD, host_name="h")
    assert "PASSWORD 'SCRAM-SHA-256$" in render(stmt)
    with pytest.raises(SafetyCheckFailed):
        roles.plan_role(PARAMS, existing(rolpassword="md5" + "0" * 32), PASSWORD, host_name="h")


def test_saslprep_leaves_ascii_alone_and_normalises_unicode():
    assert scram.saslprep("plain ascii") == "plain ascii"
    assert scram.saslprep("I\u00adX") == "IX"          # soft hyphen maps to nothing
    assert scram.saslprep("\u2168") == "IX"            # NFKC


def test_fresh_primary_plan_creates_role_database_and_grants():
    outcomes = role_step.app_role_database(get_psql(AbsentHost(PARAMS.primary.name), PARAMS), PARAMS, PASSWORD)
    assert [o.verb for o in outcomes] == ["would change"] * 3
    assert outcomes[1].actions == ['CREATE DATABASE "hcb_production" WITH OWNER "rails" ENCODING \'UTF8\' '
                                   "TEMPLATE template0"]
    assert all("[secret]" in a or "PASSWORD" not in a for o in outcomes for a in o.actions)
