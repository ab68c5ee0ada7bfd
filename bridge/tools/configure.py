"""`bridge configure`: write the bridge's webhook settings to the provider.

GREEN-API: ``POST {api}/waInstance{id}/setSettings/{token}`` with ``webhookUrl``,
``webhookUrlToken`` and the notification toggles, then ``getSettings`` to show what is stored.
Evolution: ``POST {api}/webhook/set/{instance}`` (header ``apikey``) with the v2 nested body,
or the flat v1 body with ``--v1``. WAHA: ``GET {api}/api/sessions/{session}`` (header
``X-Api-Key``), the bridge's item put into ``config.webhooks`` in place of the one with its URL
(or added; the other items and the rest of the config are kept), then ``PUT`` of the whole
config, which WAHA applies by restarting the session. Secrets come from environment variables
and are masked in everything printed; provider errors are shown with the provider's own message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import httpx

from bridge import arguments
from bridge.providers.evolution import config_name
from bridge.providers.greenapi import TOGGLES
from bridge.tools import waha

__all__ = [
    "DEFAULT_TOGGLES",
    "ConfigureError",
    "add_arguments",
    "evolution_body",
    "greenapi_body",
    "mask_evolution",
    "provider_message",
    "run",
]

DEFAULT_TOGGLES: Final = (
    "incomingWebhook",
    "outgoingWebhook",
    "outgoingMessageWebhook",
    "outgoingAPIMessageWebhook",
    "stateWebhook",
    "incomingCallWebhook",
)
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
_MASK: Final = "***"
_RATE_LIMIT_RETRIES: Final = 3

#: the command's arguments (defined in bridge.arguments, with every command's)
add_arguments = arguments.configure


class ConfigureError(Exception):
    """Something to tell the user, then exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --- pure pieces ---------------------------------------------------------------------------------


def greenapi_body(
    webhook_url: str, webhook_token: str, enable: list[str], disable: list[str]
) -> dict[str, str]:
    """The setSettings body: the webhook, the default toggles on, then --enable/--disable."""
    unknown = sorted({*enable, *disable} - set(TOGGLES))
    if unknown:
        raise ConfigureError(
            f"unknown toggle(s) {', '.join(unknown)}; known: {', '.join(TOGGLES)}", EXIT_USAGE
        )
    both = sorted(set(enable) & set(disable))
    if both:
        raise ConfigureError(f"both enabled and disabled: {', '.join(both)}", EXIT_USAGE)
    body = {"webhookUrl": webhook_url, "webhookUrlToken": webhook_token}
    for name in (*DEFAULT_TOGGLES, *enable):
        body[name] = "yes"
    for name in disable:
        body[name] = "no"
    return body


def evolution_body(
    webhook_url: str, webhook_token: str, *, by_events: bool, events: list[str], v1: bool
) -> dict[str, Any]:
    """The webhook/set body: v2 nested (token as ``authorization: Bearer``) or v1 flat."""
    names = [config_name(event) for event in events]
    if v1:
        return {
            "enabled": True,
            "url": webhook_url,
            "webhook_by_events": by_events,
            "webhook_base64": False,
            "events": names,
        }
    headers = {"authorization": f"Bearer {webhook_token}"} if webhook_token else {}
    webhook = {
        "enabled": True,
        "url": webhook_url,
        "headers": headers,
        "byEvents": by_events,
        "base64": False,
        "events": names,
    }
    return {"webhook": webhook}


def mask_evolution(stored: Any) -> Any:
    """The stored webhook with every header value masked."""
    if not isinstance(stored, dict):
        return stored
    masked: dict[str, Any] = {}
    for key, value in stored.items():
        if key == "headers" and isinstance(value, dict):
            masked[key] = dict.fromkeys(value, _MASK)
        else:
            masked[key] = mask_evolution(value)
    return masked


def _flatten(value: Any) -> list[str]:
    if isinstance(value, list):
        return [text for item in value for text in _flatten(item)]
    return [] if value is None else [str(value)]


def provider_message(response: httpx.Response) -> str:
    """The provider's error text: Evolution's ``response.message``, GREEN-API's ``message``,
    or the body itself (shortened)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        inner = body.get("response")
        if isinstance(inner, dict) and "message" in inner:
            return "; ".join(_flatten(inner["message"]))
        if "message" in body:
            return "; ".join(_flatten(body["message"]))
    return json.dumps(body)[:300]


# --- I/O -----------------------------------------------------------------------------------------


def _secret(var: str | None, what: str, *, required: bool) -> str:
    if var is None:
        if required:
            raise ConfigureError(f"{what} is required", EXIT_USAGE)
        return ""
    value = os.environ.get(var, "")
    if not value:
        raise ConfigureError(f"environment variable {var} ({what}) is not set", EXIT_USAGE)
    return value


def _request(send: Callable[[], httpx.Response], what: str, secrets: list[str]) -> httpx.Response:
    """One call, repeated after a second on 429 (GREEN-API allows 1 settings call/s)."""
    for attempt in range(_RATE_LIMIT_RETRIES + 1):
        try:
            response = send()
        except httpx.HTTPError as exc:
            raise ConfigureError(f"{what} failed: {_redact(_describe(exc), secrets)}") from None
        if response.status_code != 429 or attempt == _RATE_LIMIT_RETRIES:
            return response
        time.sleep(1.0)
    raise AssertionError("unreachable")


def _describe(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _MASK).replace(quote(secret, safe=""), _MASK)
    return text


def _greenapi_failure(response: httpx.Response, what: str, instance: str) -> ConfigureError:
    status, message = response.status_code, provider_message(response)
    hints = {
        401: "GREEN-API rejected the token: check --token-env",
        403: f"instance {instance} is unknown to this API host or not yours",
        404: "no such method here: check --api-url",
        429: "rate limited (1 settings call per second): try again",
        466: "the instance's quota is exceeded",
    }
    hint = hints.get(status, "")
    text = f"{what} answered {status} {response.reason_phrase}: {message}"
    return ConfigureError(f"{text}" + (f" ({hint})" if hint else ""))


def _configure_greenapi(args: argparse.Namespace, client: httpx.Client) -> int:
    token = _secret(args.token_env, "--token-env", required=True)
    webhook_token = _secret(args.webhook_token_env, "--webhook-token-env", required=False)
    body = greenapi_body(args.webhook_url, webhook_token, args.enable, args.disable)
    secrets = [token, webhook_token]
    base = f"{args.api_url.rstrip('/')}/waInstance{quote(args.instance, safe='')}"
    path_token = quote(token, safe="")
    response = _request(
        lambda: client.post(f"{base}/setSettings/{path_token}", json=body), "setSettings", secrets
    )
    if response.status_code != 200:
        raise _greenapi_failure(response, "setSettings", args.instance)
    try:
        saved = response.json()
    except ValueError:
        saved = None
    if saved != {"saveSettings": True}:
        raise ConfigureError(f"setSettings did not save: {_redact(response.text[:300], secrets)}")
    response = _request(
        lambda: client.get(f"{base}/getSettings/{path_token}"), "getSettings", secrets
    )
    if response.status_code != 200:
        raise _greenapi_failure(response, "getSettings", args.instance)
    settings = response.json()
    print(f"GREEN-API instance {args.instance}: settings saved; getSettings now shows:")
    for key, value in settings.items():
        shown = value
        if key == "webhookUrlToken":
            shown = f"{_MASK} (set)" if value else "(empty: no Authorization header)"
        print(f"  {key:<36} {_redact(str(shown), secrets)}")
    if not webhook_token and args.webhook_url:
        print("warning: no webhookUrlToken: the bridge expects one", file=sys.stderr)
    if settings.get("webhookUrl") != args.webhook_url:
        print("note: getSettings does not show the new webhookUrl yet", file=sys.stderr)
    print(
        "note: GREEN-API applies settings within about 5 minutes and reboots the instance;"
        " notifications queue meanwhile",
        file=sys.stderr,
    )
    return 0


def _evolution_failure(response: httpx.Response, v1: bool) -> ConfigureError:
    status, message = response.status_code, provider_message(response)
    hint = ""
    if status == 401:
        hint = "Evolution rejected the apikey: check --apikey-env"
    elif status == 404:
        hint = "check --instance and --api-url"
    elif status == 400 and not v1 and "url" in message and "webhook" not in message:
        hint = "this looks like Evolution 1.x: add --v1"
    elif status == 400 and v1 and 'requires property "webhook"' in message:
        hint = "this looks like Evolution 2.x: drop --v1"
    text = f"webhook/set answered {status} {response.reason_phrase}: {message}"
    return ConfigureError(text + (f" ({hint})" if hint else ""))


def _configure_evolution(args: argparse.Namespace, client: httpx.Client) -> int:
    apikey = _secret(args.apikey_env, "--apikey-env", required=True)
    webhook_token = _secret(args.webhook_token_env, "--webhook-token-env", required=False)
    if args.v1 and webhook_token:
        print(
            "warning: Evolution 1.x sends no custom headers: the webhook token is not sent",
            file=sys.stderr,
        )
    body = evolution_body(
        args.webhook_url, webhook_token, by_events=args.by_events, events=args.events, v1=args.v1
    )
    url = f"{args.api_url.rstrip('/')}/webhook/set/{quote(args.instance, safe='')}"
    secrets = [apikey, webhook_token]
    response = _request(
        lambda: client.post(url, json=body, headers={"apikey": apikey}), "webhook/set", secrets
    )
    if not 200 <= response.status_code < 300:
        raise _evolution_failure(response, args.v1)
    stored = mask_evolution(response.json())
    version = "1.x" if args.v1 else "2.x"
    print(f"Evolution {version} instance {args.instance}: webhook stored:")
    print(_redact(json.dumps(stored, indent=2, ensure_ascii=False), secrets))
    return 0


def _waha_failure(response: httpx.Response, what: str, session: str) -> ConfigureError:
    status, message = response.status_code, provider_message(response)
    hints = {
        401: "WAHA rejected the API key: check --api-key-env",
        404: f"no session {session} on this WAHA: check --session and --api-url",
    }
    hint = hints.get(status, "")
    text = f"{what} answered {status} {response.reason_phrase}: {message}"
    return ConfigureError(text + (f" ({hint})" if hint else ""))


def _session_config(response: httpx.Response, what: str) -> dict[str, Any]:
    """The ``config`` of a session answer ({} when it has none)."""
    try:
        session = response.json()
    except ValueError:
        session = None
    if not isinstance(session, dict):
        raise ConfigureError(f"{what} did not answer a session: {response.text[:300]}")
    config = session.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigureError(f"{what}: the session's config is not an object")
    return config


def _waha_entry(args: argparse.Namespace, key: str) -> dict[str, Any]:
    if args.retries_attempts < 0 or args.retries_delay < 0:
        raise ConfigureError("--retries-delay and --retries-attempts must be >= 0", EXIT_USAGE)
    return waha.webhook_entry(
        args.webhook_url,
        events=args.events or list(waha.DEFAULT_EVENTS),
        key=key,
        policy=args.retries_policy,
        delay=args.retries_delay,
        attempts=args.retries_attempts,
    )


def _configure_waha(args: argparse.Namespace, client: httpx.Client) -> int:
    api_key = _secret(args.api_key_env, "--api-key-env", required=False)
    key = _secret(args.hmac_key_env, "--hmac-key-env", required=False)
    entry = _waha_entry(args, key)
    url = f"{args.api_url.rstrip('/')}/api/sessions/{quote(args.session, safe='')}"
    headers = {"X-Api-Key": api_key} if api_key else {}
    secrets = [api_key, key]
    what = f"GET /api/sessions/{args.session}"
    response = _request(lambda: client.get(url, headers=headers), what, secrets)
    if response.status_code != 200:
        raise _waha_failure(response, what, args.session)
    config = _session_config(response, what)
    webhooks, replaced = waha.merge_webhook(list(config.get("webhooks") or []), entry)
    body = {"config": {**config, "webhooks": webhooks}}
    what = f"PUT /api/sessions/{args.session}"
    response = _request(lambda: client.put(url, json=body, headers=headers), what, secrets)
    if not 200 <= response.status_code < 300:
        raise _waha_failure(response, what, args.session)
    stored = _session_config(response, what).get("webhooks") or webhooks
    done = "replaced" if replaced is not None else "added"
    print(f"WAHA session {args.session}: webhook {args.webhook_url} {done}", end="")
    print(f" ({len(webhooks) - 1} other webhook(s) kept); config.webhooks now:")
    print(_redact(json.dumps(waha.masked_webhooks(stored), indent=2, ensure_ascii=False), secrets))
    if not key:
        print("warning: no --hmac-key-env: WAHA sends these webhooks unsigned", file=sys.stderr)
    print("note: WAHA restarts the session to apply a new config", file=sys.stderr)
    return 0


#: The webhook fields the bridge routes by item; subscribe the others you want too.
META_FIELDS = ("messages",)


def _configure_meta(args: argparse.Namespace) -> int:
    """Meta has no API to set an app's callback: print what to enter in the app dashboard."""
    url = args.webhook_url.rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise ConfigureError(f"--webhook-url must be an http(s) URL, got {url!r}")
    if not url.endswith("/webhooks/meta"):
        url += "/webhooks/meta"
    token = os.environ.get(args.verify_token_env, "")
    if not token:
        raise ConfigureError(f"environment variable {args.verify_token_env} is not set")
    print("In the app dashboard: WhatsApp > Configuration > Webhook > Edit")
    print(f"  Callback URL:  {url}")
    print(f"  Verify token:  {token}")
    print(f"  Subscribe:     {', '.join(META_FIELDS)} (and any other field you want routed)")
    print("Meta checks the URL at once (GET hub.challenge): the bridge must be running and")
    print("reachable over HTTPS, with a meta source whose verify_token_env holds this token.")
    if not url.startswith("https://"):
        print("warning: Meta accepts only https:// callback URLs", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.configure_provider == "meta":
            return _configure_meta(args)
        with httpx.Client(timeout=args.timeout) as client:
            if args.configure_provider == "greenapi":
                return _configure_greenapi(args, client)
            if args.configure_provider == "waha":
                return _configure_waha(args, client)
            return _configure_evolution(args, client)
    except ConfigureError as exc:
        print(f"bridge configure: {exc}", file=sys.stderr)
        return exc.code
