"""Property tests over the webhook routes: any body, any headers, any path suffix —
never a 5xx, never a crash, and nothing published unless the answer is 200."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.component.test_webhooks import CHAT_TOKEN, EVO_TOKEN, GREEN_TOKEN, app, bearer

PATHS = st.sampled_from(
    ["/webhooks/greenapi", "/webhooks/greenapi/1101000002", "/webhooks/greenapi/1234", "/webhooks/greenapi/x",
     "/webhooks/evolution", "/webhooks/evolution/messages-upsert", "/webhooks/chatapi", "/webhooks/chatapi/x",
     "/webhooks/", "/webhooks/greenapi/1/2", "/readyz", "/healthz"]
)  # fmt: skip
TOKENS = st.sampled_from([GREEN_TOKEN, EVO_TOKEN, CHAT_TOKEN, "", "wrong", "Bearer", "\x00"])
HEADER_NAMES = st.sampled_from(
    [
        "authorization",
        "content-type",
        "content-length",
        "x-forwarded-for",
        "x-hook-secret",
        "x-junk",
    ]
)
HEADER_VALUES = st.one_of(
    TOKENS.map(lambda t: f"Bearer {t}"),
    TOKENS,
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
BODIES = st.one_of(
    st.binary(max_size=600),
    st.sampled_from([
        b'{"typeWebhook":"x","instanceData":{"idInstance":1101000002}}',
        b'{"event":"call","instance":"acme-sales","data":[]}',
        b'{"instanceId":"79926","messages":[{}],"ack":[1,"x",null]}',
        b'{"instanceId":79926,"surprise":[[],[{}]]}',
        b'{"event":"x","instance":"custom-header","apikey":"k","data":{"key":{"id":5}}}',
    ]),
)  # fmt: skip


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
    path=PATHS,
    query=st.sampled_from(
        ["", f"?token={CHAT_TOKEN}", f"?token={EVO_TOKEN}", "?token=", "?token=%00&token=x"]
    ),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
    body=BODIES,
)
def test_any_request_gets_a_deliberate_answer(
    tmp_path: Path, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    async def go() -> tuple[int, int]:
        client, stub = app(tmp_path)
        sent = [(k, v) for k, v in headers if k != "content-length"]
        async with client:
            response = await client.request(method, path + query, content=body, headers=sent)
        return response.status_code, len(stub.published)

    try:
        status, published = asyncio.run(go())
    except httpx.LocalProtocolError:
        return  # the client refused to send such a header; nothing reached the app
    assert status < 500
    assert status in {200, 400, 401, 403, 404, 405, 408, 413}
    if status != 200 or not path.startswith("/webhooks/"):
        assert published == 0
    else:
        assert published >= 1


DEEP = b"[" * 1900 + b"]" * 1900  # deeper than the recursion limit, within max_body_bytes


@pytest.mark.parametrize(
    ("path", "token", "body"),
    [
        ("/webhooks/greenapi", GREEN_TOKEN, b'{"instanceData":%s}' % DEEP),
        ("/webhooks/greenapi", GREEN_TOKEN, b'{"instanceData":{"idInstance":"\xff"}}'),
        ("/webhooks/greenapi/1101000002", GREEN_TOKEN, b'{"typeWebhook":"x","j":%s}' % DEEP),
        ("/webhooks/evolution", EVO_TOKEN, b'{"event":"\xff","instance":"acme-sales"}'),
        ("/webhooks/chatapi", CHAT_TOKEN, b'{"instanceId":"79926","messages":[{"id":"\xff"}]}'),
        ("/webhooks/chatapi", CHAT_TOKEN, b'{"instanceId":"79926","messages":%s}' % DEEP),
    ],
)
async def test_deep_or_invalid_utf8_bodies_are_quarantined(
    tmp_path: Path, path: str, token: str, body: bytes
) -> None:
    client, stub = app(tmp_path)
    async with client:
        response = await client.post(path, content=body, headers=bearer(token))
    assert response.status_code == 200
    assert stub.published and all(o.body for o in stub.published)


@pytest.mark.parametrize(
    "body",
    [
        b'{"event":1,"instance":"acme-sales","apikey":"secret"}',  # event not a string
        b'{"event":"call","apikey":"secret"}',  # no instance
        b'{"event":"call","instance":"acme-sales","api\\u006bey":"secret"}',
    ],
)
async def test_evolution_secret_never_republished(tmp_path: Path, body: bytes) -> None:
    client, stub = app(tmp_path)
    async with client:
        response = await client.post("/webhooks/evolution", content=body, headers=bearer(EVO_TOKEN))
    assert response.status_code == 200
    [out] = stub.published
    assert b"secret" not in out.body
