"""The fake provider's instance state calls and their control (fakeprovider.states)."""

from __future__ import annotations

import httpx

from tests.support.harness import fake_greenapi

GREEN = "1101000001"
TOKEN = "green-token-abcdef"


async def test_state_calls_answer_like_the_providers() -> None:
    async with (
        fake_greenapi([(GREEN, TOKEN)]) as fake,
        httpx.AsyncClient(base_url=fake.url) as http,
    ):
        await http.post("/_control/evolution/instances", json={"name": "bot", "token": "evo-t"})
        await http.post("/_control/waha/sessions", json={"name": "s1", "working": False})
        green = f"/waInstance{GREEN}/getStateInstance/{TOKEN}"
        assert (await http.get(green)).json() == {"stateInstance": "authorized"}
        assert (await http.get(green)).status_code == 429  # GREEN-API: one a second
        assert (await http.get(f"/waInstance{GREEN}/getStateInstance/nope")).status_code == 401
        assert (await http.get(f"/waInstance9/getStateInstance/{TOKEN}")).status_code == 403
        assert (await http.get(f"/waInstanceX/getStateInstance/{TOKEN}")).status_code == 400
        assert (await http.post(green)).status_code == 404
        evolution = "/instance/connectionState/bot"
        answer = await http.get(evolution, headers={"apikey": "evo-t"})
        assert answer.json() == {"instance": {"instanceName": "bot", "state": "open"}}
        assert (await http.get(evolution)).status_code == 401
        assert (await http.get(evolution, headers={"apikey": "x"})).status_code == 401
        assert (await http.get("/instance/connectionState/other")).status_code == 404
        assert (await http.get("/instance/fetchInstances/bot")).status_code == 404
        assert (await http.get("/api/sessions/s1")).json()["status"] == "STOPPED"

        changed = await http.put("/_control/states/waha/s1", json={"state": "WORKING"})
        record = changed.json()
        assert (record["state"], record["fail"], len(record["calls"])) == ("WORKING", None, 1)
        assert (await http.get("/api/sessions/s1")).json()["status"] == "WORKING"
        await http.put("/_control/states/evolution/bot", json={"state": "close", "fail": 502})
        assert (await http.get(evolution, headers={"apikey": "evo-t"})).status_code == 502
        await http.put("/_control/states/evolution/bot", json={})
        answer = await http.get(evolution, headers={"apikey": "evo-t"})
        assert answer.json()["instance"]["state"] == "close"
        record = (await http.get("/_control/states/evolution/bot")).json()
        assert len(record["calls"]) == 3


REFUSED = [
    ("GET", "/_control/states/greenapi/404404", None, 404),
    ("GET", "/_control/states/nobody/x", None, 404),
    ("GET", "/_control/states/greenapi", None, 404),
    ("POST", f"/_control/states/greenapi/{GREEN}", {}, 404),
    ("PUT", f"/_control/states/greenapi/{GREEN}", {"state": ""}, 400),
    ("PUT", f"/_control/states/greenapi/{GREEN}", {"fail": 200}, 400),
    ("PUT", f"/_control/states/greenapi/{GREEN}", {"stat": "x"}, 400),
]


async def test_control_refusals_and_reset() -> None:
    async with (
        fake_greenapi([(GREEN, TOKEN)]) as fake,
        httpx.AsyncClient(base_url=fake.url) as http,
    ):
        for method, path, body, status in REFUSED:
            answer = await http.request(method, path, json=body)
            assert answer.status_code == status, (method, path, answer.text)
        await http.put(f"/_control/states/greenapi/{GREEN}", json={"state": "blocked"})
        assert (await http.post("/_control/reset")).status_code == 200
        await http.post("/_control/instances", json={"id": GREEN, "token": TOKEN})
        green = f"/waInstance{GREEN}/getStateInstance/{TOKEN}"
        assert (await http.get(green)).json() == {"stateInstance": "authorized"}
