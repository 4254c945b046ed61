#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Start, stop or inspect a local RabbitMQ on 127.0.0.1:5672 (guest/guest).
#   scripts/broker.sh start    idempotent; waits until the broker accepts work
#   scripts/broker.sh stop
#   scripts/broker.sh status
#   scripts/broker.sh restart-app   stop_app + start_app (used by tests)
set -euo pipefail

cmd=${1:-start}
LOGDIR=/var/log/rabbitmq
export RABBITMQ_NODE_IP_ADDRESS=${RABBITMQ_NODE_IP_ADDRESS:-127.0.0.1}

running() { rabbitmqctl -q status >/dev/null 2>&1; }

log_hint() { echo "broker: logs in $LOGDIR ($(ls $LOGDIR/*.log 2>/dev/null | head -n 1))"; }

case "$cmd" in
  start)
    if ! command -v rabbitmq-server >/dev/null; then
      echo "broker: rabbitmq-server is not installed (run scripts/setup.sh)" >&2
      exit 1
    fi
    if running; then
      echo "broker: already running"
    else
      echo "broker: starting rabbitmq-server"
      # The epmd daemon and the node run detached; the node listens on
      # loopback only (RABBITMQ_NODE_IP_ADDRESS).
      if [ "$(id -u)" -eq 0 ] && id rabbitmq >/dev/null 2>&1; then
        mkdir -p "$LOGDIR" /var/lib/rabbitmq
        chown -R rabbitmq:rabbitmq "$LOGDIR" /var/lib/rabbitmq 2>/dev/null || true
      fi
      rabbitmq-server -detached
    fi
    if ! timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1; then
      # await_startup can fail while the node is still registering with epmd.
      for _ in $(seq 1 60); do running && break; sleep 1; done
      timeout 120 rabbitmqctl -q await_startup
    fi
    # Wait until the AMQP listener is up, not only the node.
    for _ in $(seq 1 100); do
      (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break
      sleep 0.2
    done
    echo "broker: up on 127.0.0.1:5672"
    log_hint
    ;;
  stop)
    if running; then
      rabbitmqctl -q stop >/dev/null 2>&1 || true
      echo "broker: stopped"
    else
      echo "broker: not running"
    fi
    ;;
  status)
    if running; then echo "broker: running"; log_hint; else echo "broker: not running"; exit 1; fi
    ;;
  restart-app)
    rabbitmqctl -q stop_app
    rabbitmqctl -q start_app
    ;;
  *)
    echo "usage: $0 start|stop|status|restart-app" >&2
    exit 2
    ;;
esac
