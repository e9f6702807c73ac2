"""Preflight refuses a real environment whose alerts would reach nobody (issue 25, "Delivery"): no ``alerting:``
section, or receivers / a heartbeat URL left as placeholders, in params or in the value a secret reference resolves
to (never shown).  The lab is not refused; preflight changes nothing (it only reads params and resolves secrets)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from hcbpg.errors import SecretError
from hcbpg.params import Params, load_params, parse_params
from hcbpg.steps import preflight

REPO = Path(__file__).resolve().parents[1]
LAB_SITE = "hcbpg.lab.site:LabSite"
#: what the team's 1Password items hold once set (planted, then looked for in every row)
REAL = {"op://HCB Engineering/Alerting Slack webhook/url": "https://hooks.slack.com/services/T0/B0/s3cr3tw3bh00k",
        "op://HCB Engineering/Alerting heartbeat/url": "https://hc-ping.com/5e1f0a2b-real-uuid-s3cr3t"}


class FakeRun:
    def __init__(self, params: Params) -> None:
        self.params, self.env, self.home = params, params.environment, REPO


def _production(**alerting: Any) -> dict[str, Any]:
    data = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    data["alerting"] = {**data["alerting"], **alerting}
    return data


def _set(data: dict[str, Any]) -> dict[str, Any]:
    """Production's params with the team's items named (the CHANGE-ME references edited)."""
    data = copy.deepcopy(data)
    data["alerting"]["receivers"]["slack"]["webhook_url"] = "op://HCB Engineering/Alerting Slack webhook/url"
    data["alerting"]["heartbeat_url"] = "op://HCB Engineering/Alerting heartbeat/url"
    return data


def _resolver(values: dict[str, str], calls: list[tuple[str, str]] | None = None):  # noqa: ANN202
    def resolve(ref: str, key: str) -> str:
        if calls is not None:
            calls.append((ref, key))
        if ref not in values:
            raise SecretError(f"{key}: {ref} cannot be resolved")
        return values[ref]
    return resolve


def _rows(params: Params, values: dict[str, str] | None = None) -> list[tuple[str, str]]:
    return [(c.name, c.status) for c in preflight.check_alerting(FakeRun(params), resolve=_resolver(values or {}))]


def test_the_committed_production_params_are_refused_until_both_alerting_references_are_set():
    params = load_params("production", REPO)
    placeholders = params.placeholders()
    assert {"alerting.receivers.slack.webhook_url", "alerting.heartbeat_url"} <= set(placeholders)
    rows = {c.name: c for c in preflight.check_params(FakeRun(params))}
    for key in ("alerting.receivers.slack.webhook_url", "alerting.heartbeat_url"):
        row = rows[f"placeholder {key}"]
        assert row.status == "fail" and "set it in production.yaml to the 1Password item" in row.detail, row
    assert _rows(params) == []  # check_params has their rows: not said twice
    # the lab is not refused: the same placeholders only warn
    lab = params.model_copy(update={"site": LAB_SITE})
    assert {c.status for c in preflight.check_params(FakeRun(lab)) if "alerting" in c.name} == {"warn"}


def test_production_without_an_alerting_section_is_refused_and_the_lab_is_not():
    data = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    del data["alerting"]
    rows = preflight.check_alerting(FakeRun(parse_params(data)))
    assert [(c.name, c.status) for c in rows] == [("alerting", "fail")]
    assert "no alerting section" in rows[0].detail and "nothing would page anyone" in rows[0].detail
    assert preflight.check_alerting(FakeRun(parse_params({**data, "site": LAB_SITE}))) == []
    lab = load_params("lab", REPO)  # the lab rehearses the monitor, its receiver and dead-man the lab's receiver
    assert lab.alerting is not None and lab.alerting.receivers.webhook is not None
    assert [(c.name, c.status) for c in preflight.check_alerting(FakeRun(lab), resolve=_resolver({}))] == [
        ("alerting", "pass")]


def test_set_references_whose_items_hold_real_urls_pass_and_no_value_is_shown():
    calls: list[tuple[str, str]] = []
    params = parse_params(_set(_production()))
    assert not [k for k in params.placeholders() if k.startswith("alerting.")]
    rows = preflight.check_alerting(FakeRun(params), resolve=_resolver(REAL, calls))
    assert [(c.name, c.status) for c in rows] == [("alerting", "pass")]
    assert "slack" in rows[0].detail and "every 1m" in rows[0].detail
    assert sorted(calls) == sorted([(ref, key) for ref, key in zip(
        REAL, ("alerting.receivers.slack.webhook_url", "alerting.heartbeat_url"), strict=True)])
    assert not any(v in c.detail for c in rows for v in REAL.values())


def test_an_item_that_still_holds_an_example_url_is_refused_without_showing_it():
    example = {**REAL, "op://HCB Engineering/Alerting heartbeat/url": "https://hc-ping.com/REPLACE-with-uuid-s3cr3t"}
    rows = preflight.check_alerting(FakeRun(parse_params(_set(_production()))), resolve=_resolver(example))
    assert [(c.name, c.status) for c in rows] == [("placeholder alerting.heartbeat_url", "fail")]
    assert "resolves to a placeholder" in rows[0].detail and "'replace'" in rows[0].detail
    assert "s3cr3t" not in rows[0].detail and "hc-ping" not in rows[0].detail
    # a reference that does not resolve is left to its "secret" row (rb.check_secrets): no second row here
    assert _rows(parse_params(_set(_production())), {}) == [("alerting", "pass")]


def test_example_receivers_written_in_params_are_refused_in_production_and_warn_in_the_lab():
    data = _set(_production())
    data["alerting"]["receivers"]["email"] = {"to": ["oncall@example.com"], "sender": "alerts@hcb.example",
                                              "smarthost": "smtp.hackclub.com:587"}
    data["alerting"]["receivers"]["webhook"] = {"url": "https://pager.example.org/integration"}
    rows = _rows(parse_params(data), REAL)
    assert rows == [("placeholder alerting.receivers.email.to[0]", "fail"),
                    ("placeholder alerting.receivers.email.sender", "fail"),
                    ("placeholder alerting.receivers.webhook.url", "fail")]
    assert {s for _, s in _rows(parse_params({**data, "site": LAB_SITE}), REAL)} == {"warn"}


def test_params_without_a_receiver_never_reach_preflight():
    import pytest

    from hcbpg.errors import ParamsError
    data = _production(receivers={})
    with pytest.raises((ParamsError, ValueError), match="at least one of slack, email, webhook"):
        parse_params(data)
