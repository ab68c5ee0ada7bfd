#!/usr/bin/env bash
# `make run`: the built-in fake GREEN-API, seeded with the sample notifications and fed one more
# per instance every few seconds, polled by the bridge into the local RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
bridge=.venv/bin/bridge
export GREENAPI_TOKEN_1101000001=${GREENAPI_TOKEN_1101000001:-demo-token-1101000001}
export GREENAPI_TOKEN_1101000002=${GREENAPI_TOKEN_1101000002:-demo-token-1101000002}
export GREENAPI_WEBHOOK_TOKEN=${GREENAPI_WEBHOOK_TOKEN:-demo-greenapi-webhook-token}
export EVOLUTION_WEBHOOK_TOKEN=${EVOLUTION_WEBHOOK_TOKEN:-demo-evolution-webhook-token}
export CHATAPI_WEBHOOK_TOKEN=${CHATAPI_WEBHOOK_TOKEN:-demo-chatapi-webhook-token}
export WAHA_HMAC_KEY=${WAHA_HMAC_KEY:-demo-waha-hmac-key}
export META_APP_SECRET=${META_APP_SECRET:-demo-meta-app-secret}
export META_VERIFY_TOKEN=${META_VERIFY_TOKEN:-demo-meta-verify-token}

$bridge fake-provider --config bridge.toml --listen 127.0.0.1:8091 --seed-samples --feed 5 &
fake=$!
trap 'kill $fake 2>/dev/null; wait $fake 2>/dev/null || true' EXIT INT TERM

cat <<MSG

  The bridge is polling the fake provider on http://127.0.0.1:8091 into RabbitMQ.
  Management UI: http://127.0.0.1:15672 (guest/guest) -> Queues -> notifications.unrouted
  (no consumer queue is bound yet, so every notification lands there; bind your own with
  a queue on the 'notifications' exchange and routing key '#' or an event type).
  Webhooks: http://127.0.0.1:8080/webhooks/{greenapi,evolution,chatapi} — try
    bridge simulate --url http://127.0.0.1:8080 --provider greenapi --instance 1101000003 \
      --token demo-greenapi-webhook-token
  Stop with Ctrl-C.

MSG
$bridge run --config bridge.toml
