#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A 3-node RabbitMQ cluster on this machine, for the cluster and crash tests.
# It never touches the default broker (rabbit@<host> on 5672).
#
#   scripts/cluster.sh start    idempotent: starts the nodes that are down and
#                               joins those not yet in the cluster; returns
#                               once every node accepts AMQP connections
#   scripts/cluster.sh stop     stops the nodes and deletes their data (waits
#                               for a running cluster test to finish first)
#   scripts/cluster.sh status   exit 0 when all three nodes run, clustered
#
# Node i (1..3): name sluice<i>@localhost, AMQP port PORT+i-1 on 127.0.0.1,
# distribution port PORT+20000+i-1, everything else (data, logs, pid file,
# enabled-plugins file) under DIR/node<i>.
#   SLUICE_CLUSTER_PORT  first AMQP port, default 5681 (5681, 5682, 5683)
#   SLUICE_CLUSTER_DIR   default /tmp/sluice-cluster
# Tests kill nodes by the pid in DIR/node<i>/pid and hold DIR/lock (flock)
# while they use the cluster, so concurrent suites take turns; start and
# stop wait for that lock (bounded) unless SLUICE_CLUSTER_LOCK_HELD=1 says
# the caller holds it.
set -euo pipefail

cmd=${1:-start}
PORT=${SLUICE_CLUSTER_PORT:-5681}
DIR=${SLUICE_CLUSTER_DIR:-/tmp/sluice-cluster}
NODES=(1 2 3)

name() { echo "sluice$1@localhost"; }
amqp_port() { echo $((PORT + $1 - 1)); }
dist_port() { echo $((PORT + 20000 + $1 - 1)); }
ndir() { echo "$DIR/node$1"; }

# A node runs when the process in its pid file is alive and its AMQP port
# accepts connections (checked without starting an Erlang CLI: ~1 s each).
# The pid counts only while it is this node's beam (its distribution port
# is on its command line) and not a zombie: a stale pid file must never
# make us signal another process.
node_pid() {
  local f pid; f="$(ndir "$1")/pid"
  [ -s "$f" ] || return 1
  pid=$(tr -d '[:space:]' <"$f")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
    grep -q "inet_dist_listen_min $(dist_port "$1") " || return 1
  case "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" in
    Z|X|"") return 1 ;;
  esac
  echo "$pid"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
node_up() {
  node_pid "$1" >/dev/null && port_open "$(amqp_port "$1")"
}

ctl() { # node, args...
  local n=$1; shift
  rabbitmqctl -q -n "$(name "$n")" "$@"
}

prepare_dirs() {
  mkdir -p "$DIR"
  # rabbitmq-server and rabbitmqctl run as the rabbitmq user when started by
  # root (the Debian wrapper su's to it): it must own the directories.
  : >"$DIR/rabbitmq-env.conf"
  for i in "${NODES[@]}"; do
    mkdir -p "$(ndir "$i")/mnesia" "$(ndir "$i")/log"
    [ -f "$(ndir "$i")/enabled_plugins" ] || echo "[]." >"$(ndir "$i")/enabled_plugins"
  done
  touch "$DIR/lock"
  chmod 666 "$DIR/lock"
  if [ "$(id -u)" -eq 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq "$DIR"
  fi
}

start_node() {
  local i=$1 d; d=$(ndir "$i")
  rm -f "$d/pid"
  # RABBITMQ_CONF_ENV_FILE and RABBITMQ_CONFIG_FILE keep /etc/rabbitmq out.
  # The config file does not exist on purpose: the defaults are what the
  # tests want, and a rabbitmq.conf costs seconds of schema translation
  # (cuttlefish) at every boot.
  env RABBITMQ_NODENAME="$(name "$i")" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$(amqp_port "$i")" \
      RABBITMQ_DIST_PORT="$(dist_port "$i")" \
      RABBITMQ_SERVER_START_ARGS="-kernel inet_dist_listen_min $(dist_port "$i") -kernel inet_dist_listen_max $(dist_port "$i")" \
      RABBITMQ_MNESIA_BASE="$d/mnesia" \
      RABBITMQ_LOG_BASE="$d/log" \
      RABBITMQ_PID_FILE="$d/pid" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
      RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
      RABBITMQ_CONFIG_FILE="$DIR/none.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/none.config" \
      rabbitmq-server -detached >/dev/null 2>&1 9>&-  # not the lock
}

# Wait (bounded) for a cluster test of a concurrent suite to finish: it may
# have killed a node on purpose and be starting it again itself.
lock() {
  [ "${SLUICE_CLUSTER_LOCK_HELD:-0}" = 1 ] && return 0
  exec 9<>"$DIR/lock"
  if ! flock -w 900 9; then
    echo "cluster: $DIR/lock still held after 900 s" >&2
    exit 1
  fi
}

wait_node() { # node, seconds: until the AMQP port accepts
  local i=$1 end=$((SECONDS + $2))
  while [ $SECONDS -lt $end ]; do
    node_up "$i" && return 0
    # The node offers no event we could wait on from a shell: poll.
    sleep 0.2
  done
  echo "cluster: $(name "$i") did not come up in $2 s; log: $(ndir "$i")/log" >&2
  return 1
}

# Nodes node 1 lists as running members. A node's AMQP port opens a moment
# before the CLI sees its app running: retry (bounded) while it says not.
members() {
  local out end=$((SECONDS + 60))
  until out=$(ctl 1 cluster_status --formatter json 2>/dev/null); do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.5
  done
  echo "$out" | sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' |
    tr -d '"' | tr ',' ' '
}

join() { # node
  local i=$1
  ctl "$i" stop_app
  ctl "$i" join_cluster "$(name 1)"
  ctl "$i" start_app
}

case "$cmd" in
  start)
    if ! command -v rabbitmq-server >/dev/null; then
      echo "cluster: rabbitmq-server is not installed (run scripts/setup.sh)" >&2
      exit 1
    fi
    t0=$SECONDS
    prepare_dirs
    lock
    started=()
    for i in "${NODES[@]}"; do
      if ! node_up "$i"; then
        start_node "$i"
        started+=("$i")
      fi
    done
    for i in "${started[@]}"; do wait_node "$i" 120; done
    t1=$SECONDS
    # A node that was a member before (killed and started again) rejoins by
    # itself from its data directory; a new one is joined to node 1, both
    # new ones at once (each join is three CLI calls of ~1 s).
    pids=()
    for i in 2 3; do
      if [ ! -e "$(ndir "$i")/joined" ]; then
        (join "$i" && touch "$(ndir "$i")/joined") &
        pids+=($!)
      fi
    done
    for p in "${pids[@]}"; do wait "$p"; done
    for i in "${NODES[@]}"; do wait_node "$i" 60; done
    if [ ${#pids[@]} -gt 0 ] || [ ${#started[@]} -gt 0 ]; then
      m=" $(members || true) "
      for i in "${NODES[@]}"; do
        case "$m" in
          *" $(name "$i") "*) ;;
          *) echo "cluster: $(name "$i") is not a running member:$m" >&2; exit 1 ;;
        esac
      done
    fi
    echo "cluster: up in $((SECONDS - t0)) s (nodes started: ${started[*]:-none}," \
         "$((t1 - t0)) s; joined: ${#pids[@]}, $((SECONDS - t1)) s):" \
         "$(for i in "${NODES[@]}"; do printf '%s:%s ' "$(name "$i")" "$(amqp_port "$i")"; done)"
    ;;
  stop)
    [ -d "$DIR" ] && lock
    # The data is deleted below, so a graceful stop buys nothing: SIGTERM
    # (RabbitMQ shuts down on it), SIGKILL after 30 s.
    for i in "${NODES[@]}"; do
      pid=$(node_pid "$i") && kill -TERM "$pid" 2>/dev/null || true
    done
    end=$((SECONDS + 30))
    for i in "${NODES[@]}"; do
      while node_pid "$i" >/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
      pid=$(node_pid "$i") && kill -9 "$pid" 2>/dev/null || true
    done
    for i in "${NODES[@]}"; do rm -rf "$(ndir "$i")"; done
    echo "cluster: stopped"
    ;;
  status)
    ok=1
    for i in "${NODES[@]}"; do
      if node_up "$i"; then s=up; else s=down; ok=0; fi
      echo "$(name "$i") amqp 127.0.0.1:$(amqp_port "$i") dist $(dist_port "$i"): $s"
    done
    if [ $ok = 1 ]; then
      m=" $(members || true) "
      for i in "${NODES[@]}"; do
        case "$m" in *" $(name "$i") "*) ;; *) ok=0 ;; esac
      done
      echo "running members:$m"
    fi
    [ $ok = 1 ] || exit 1
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
