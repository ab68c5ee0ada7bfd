#!/usr/bin/env bash
# Make sure a RabbitMQ broker accepts AMQP on $AMQP_HOST:$AMQP_PORT (default 127.0.0.1:5672).
# Starts the local rabbitmq-server when it is installed and stopped; otherwise says how to get one.
set -euo pipefail
host=${AMQP_HOST:-127.0.0.1}
port=${AMQP_PORT:-5672}
wait_seconds=${BROKER_WAIT:-90}

amqp_up() {
  # A broker answers the AMQP protocol header with its own (starts with "AMQP" or a Connection.Start frame).
  timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port && printf 'AMQP\x00\x00\x09\x01' >&3 && head -c 1 <&3 >/dev/null" 2>/dev/null
}

if amqp_up; then
  echo "broker: RabbitMQ answers on $host:$port"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  cat >&2 <<MSG
broker: nothing answers AMQP on $host:$port and rabbitmq-server is not installed.
Get a broker one of these ways, then run the command again:
  docker compose up -d rabbitmq          # from this repository (management UI on :15672)
  sudo apt-get install -y rabbitmq-server
MSG
  exit 1
fi

if [ "$host" = 127.0.0.1 ] || [ "$host" = localhost ]; then
  echo "broker: starting the local rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
fi
for _ in $(seq 1 "$wait_seconds"); do
  if amqp_up; then
    echo "broker: RabbitMQ answers on $host:$port"
    exit 0
  fi
  sleep 1
done
echo "broker: RabbitMQ did not answer on $host:$port within ${wait_seconds}s (see /var/log/rabbitmq/)" >&2
exit 1
