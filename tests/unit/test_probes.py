"""Instance state probes (pure): the request each provider takes, the state its answer names,
and which sources get a probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load
from bridge.monitor import plan
from bridge.probes import PROBES, StateAnswerError, StateRequest, status_class

GREEN = PROBES["greenapi"]
EVOLUTION = PROBES["evolution"]
WAHA = PROBES["waha"]


@pytest.mark.parametrize(
    ("provider", "body", "state"),
    [
        ("greenapi", b'{"stateInstance":"authorized"}', "authorized"),
        ("greenapi", b'{"stateInstance":"notAuthorized"}', "notAuthorized"),
        ("greenapi", b'{"stateInstance":"yellowCard","extra":1}', "yellowCard"),
        ("greenapi", b'{"stateInstance":"blocked"}', "blocked"),
        ("greenapi", b'{"stateInstance":"starting"}', "starting"),
        ("evolution", b'{"instance":{"instanceName":"bot","state":"open"}}', "open"),
        ("evolution", b'{"instance":{"instanceName":"bot","state":"connecting"}}', "connecting"),
        ("evolution", b'{"instance":{"state":"close"}}', "close"),
        ("evolution", b'{"state":"open"}', "open"),  # builds that answer the bare pair
        ("waha", b'{"name":"default","status":"WORKING","config":{}}', "WORKING"),
        ("waha", b'{"name":"default","status":"SCAN_QR_CODE"}', "SCAN_QR_CODE"),
        ("waha", b'{"status":"FAILED"}', "FAILED"),
        ("waha", b'{"status":"STOPPED"}', "STOPPED"),
        ("waha", b'{"status":"STARTING"}', "STARTING"),
        ("waha", b'{"status":"NEW_STATE_2"}', "NEW_STATE_2"),  # a new word is kept
    ],
)
def test_state_answers(provider: str, body: bytes, state: str) -> None:
    assert PROBES[provider].parse(body) == state


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("greenapi", b""),
        ("greenapi", b"not json"),
        ("greenapi", b'{"stateInstance":5}'),
        ("greenapi", b"{}"),
        ("greenapi", b'"\xff"'),
        ("greenapi", b"[" * 5000),
        ("greenapi", b'{"stateInstance":"has spaces in it"}'),
        ("greenapi", b'{"stateInstance":""}'),
        ("greenapi", b'{"stateInstance":"' + b"a" * 33 + b'"}'),
        ("evolution", b"{}"),
        ("evolution", b'{"instance":{}}'),
        ("evolution", b'{"instance":null}'),
        ("waha", b'{"name":"default"}'),
        ("waha", b"null"),
    ],
)
def test_unusable_answers_are_refused(provider: str, body: bytes) -> None:
    with pytest.raises(StateAnswerError):
        PROBES[provider].parse(body)


def test_requests() -> None:
    assert GREEN.request("https://1101.api.greenapi.com/", "1101000001", "t/k n") == StateRequest(
        "https://1101.api.greenapi.com/waInstance1101000001/getStateInstance/t%2Fk%20n", {}
    )
    assert EVOLUTION.request("http://evo:8080", "sales bot", "key") == StateRequest(
        "http://evo:8080/instance/connectionState/sales%20bot", {"apikey": "key"}
    )
    assert WAHA.request("http://waha:3000/", "default", "k") == StateRequest(
        "http://waha:3000/api/sessions/default", {"X-Api-Key": "k"}
    )
    assert WAHA.request("http://waha:3000", "default", None).headers == {}


def test_authorized_words() -> None:
    assert {name: set(p.authorized) for name, p in PROBES.items()} == {
        "greenapi": {"authorized"},
        "evolution": {"open"},
        "waha": {"WORKING"},
    }
    for probe in PROBES.values():
        assert probe.authorized <= set(probe.states)


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (429, "rate_limited"),
        (500, "http_500"),
        (503, "http_503"),
        (400, "http_400"),
        (99, "http_other"),
        (600, "http_other"),
    ],
)
def test_status_classes(status: int, label: str) -> None:
    assert status_class(status) == label


def test_plan_probes_the_sources_with_credentials(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(
        """
[[sources]]
provider = "greenapi"
mode = "poll"
instance = "1101000001"
api_url = "http://gw"
token_env = "T1"
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "1101000002"
webhook_token_env = "H"
api_url = "http://gw"
token_env = "T2"
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "1101000003"
webhook_token_env = "H"
[[sources]]
provider = "greenapi"
mode = "webhook"
instance = "1101000004"
api_url = "http://gw"
webhook_token_env = "H"
[[sources]]
provider = "evolution"
mode = "webhook"
instance = "bot"
api_url = "http://evo"
api_key_env = "K"
[[sources]]
provider = "evolution"
mode = "webhook"
instance = "nokey"
api_url = "http://evo"
[[sources]]
provider = "waha"
mode = "webhook"
instance = "default"
api_url = "http://waha"
[[sources]]
provider = "chatapi"
mode = "webhook"
instance = "123"
"""
    )
    settings = load(path, {"T1": "tok-one", "T2": "tok-two", "H": "hook", "K": "evo-key"})
    watches, unprobed = plan(settings)
    assert [(w.source.name, w.request) for w in watches] == [
        (
            "greenapi:1101000001",
            StateRequest("http://gw/waInstance1101000001/getStateInstance/tok-one", {}),
        ),
        (
            "greenapi:1101000002",
            StateRequest("http://gw/waInstance1101000002/getStateInstance/tok-two", {}),
        ),
        (
            "evolution:bot",
            StateRequest("http://evo/instance/connectionState/bot", {"apikey": "evo-key"}),
        ),
        ("waha:default", StateRequest("http://waha/api/sessions/default", {})),
    ]
    assert [(u.source.name, u.reason) for u in unprobed] == [
        ("greenapi:1101000003", "no api_url"),
        ("greenapi:1101000004", "no token_env or token_file"),
        ("evolution:nokey", "no api_key_env or api_key_file"),
    ]
