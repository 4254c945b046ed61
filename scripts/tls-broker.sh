#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A RabbitMQ node with TLS listeners, for the TLS tests and benchmarks. It is
# a node of its own (name, ports, data directory, configuration): it never
# touches the default broker (rabbit@<host> on 5672) nor the test cluster.
#
#   scripts/tls-broker.sh start    idempotent: makes the certificates if
#                                  missing, starts the node, returns once the
#                                  TLS port accepts connections
#   scripts/tls-broker.sh stop     stops the node and deletes its data (the
#                                  certificates stay)
#   scripts/tls-broker.sh status   exit 0 when the node runs
#   scripts/tls-broker.sh certs    (re)make the certificates only
#   scripts/tls-broker.sh env      the settings below, as shell assignments
#
# Listeners: plaintext AMQP on 127.0.0.1:AMQP_PORT, TLS on 127.0.0.1:PORT
# and 127.0.0.2:PORT (the second lets tests reach the node by an address its
# certificate does not name). Mutual TLS: the node asks every client for a
# certificate signed by the test CA and refuses a client without one.
# By the name the client sends in SNI the node presents:
#   localhost (or none)  server.pem     DNS:localhost, IP:127.0.0.1
#   expired.test         expired.pem    valid 2020-01-01 .. 2021-01-01
#   wronghost.test       wronghost.pem  DNS:wrong.example only
#
#   SLUICE_TLS_PORT       TLS port, default 5671 (amqps://'s default)
#   SLUICE_TLS_AMQP_PORT  plaintext port, default 5691
#   SLUICE_TLS_DIR        default /tmp/sluice-tls; certificates in DIR/certs:
#     ca.pem              the test CA (the client trusts it)
#     otherca.pem         a CA nobody trusts
#     server.pem/.key, expired.pem/.key, wronghost.pem/.key   served
#     client.pem/.key     client certificate signed by the test CA
#     rogueclient.pem/.key  client certificate signed by otherca
set -euo pipefail

cmd=${1:-start}
PORT=${SLUICE_TLS_PORT:-5671}
AMQP_PORT=${SLUICE_TLS_AMQP_PORT:-5691}
DIST_PORT=$((AMQP_PORT + 20000))
DIR=${SLUICE_TLS_DIR:-/tmp/sluice-tls}
CERTS=$DIR/certs
NODE=sluicetls@localhost

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}
node_pid() { [ -s "$DIR/pid" ] && tr -d '[:space:]' <"$DIR/pid"; }
node_up() {
  local pid; pid=$(node_pid) || return 1
  kill -0 "$pid" 2>/dev/null && port_open 127.0.0.1 "$PORT"
}

# ---- certificates ----------------------------------------------------------
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
          -out "$1" 2>/dev/null; }
make_ca() { # name, common name
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.pem"
}
make_leaf() { # name, ca, common name, subjectAltName, extendedKeyUsage
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' \
    "$4" "$5" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" \
    -CAcreateserial -days 825 -sha256 -extfile "$1.ext" -out "$1.pem" \
    2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
make_expired() { # an expired server certificate: `openssl x509` cannot
  # backdate, `openssl ca` can (-startdate/-enddate)
  key expired.key
  openssl req -new -key expired.key -subj "/CN=expired.test" -out expired.csr
  rm -rf cadb && mkdir cadb && : >cadb/index.txt && echo 1000 >cadb/serial
  cat >cadb/ca.cnf <<'EOF'
[ca]
default_ca = d
[d]
database = cadb/index.txt
serial = cadb/serial
new_certs_dir = cadb
default_md = sha256
policy = p
unique_subject = no
[p]
commonName = supplied
[x]
subjectAltName = DNS:expired.test,DNS:localhost
extendedKeyUsage = serverAuth
basicConstraints = CA:FALSE
EOF
  openssl ca -batch -config cadb/ca.cnf -cert ca.pem -keyfile ca.key \
    -in expired.csr -out expired.pem -startdate 20200101000000Z \
    -enddate 20210101000000Z -extensions x -notext 2>/dev/null
  rm -rf cadb expired.csr
}
make_certs() {
  rm -rf "$CERTS.new" && mkdir -p "$CERTS.new"
  (
    cd "$CERTS.new"
    make_ca ca "sluice test CA"
    make_ca otherca "sluice unknown CA"
    make_leaf server ca localhost "DNS:localhost,IP:127.0.0.1" serverAuth
    make_leaf wronghost ca wrong.example "DNS:wrong.example" serverAuth
    make_leaf client ca sluice-client "DNS:sluice-client" clientAuth
    make_leaf rogueclient otherca rogue-client "DNS:rogue-client" clientAuth
    make_expired
    rm -f ./*.srl
  )
  rm -rf "$CERTS" && mv "$CERTS.new" "$CERTS"
}
certs_ok() { # present, and the served ones valid for another day
  local f
  for f in ca otherca server wronghost client rogueclient expired; do
    [ -s "$CERTS/$f.pem" ] && [ -s "$CERTS/$f.key" ] || return 1
  done
  openssl x509 -in "$CERTS/server.pem" -noout -checkend 86400 >/dev/null &&
    openssl x509 -in "$CERTS/client.pem" -noout -checkend 86400 >/dev/null
}

# ---- the node --------------------------------------------------------------
write_config() {
  # advanced.config (Erlang terms), not rabbitmq.conf: sni_hosts has no
  # rabbitmq.conf form, and a rabbitmq.conf costs seconds of schema
  # translation at every boot.
  cat >"$DIR/advanced.config" <<EOF
[{rabbit, [
  {tcp_listeners, [{"127.0.0.1", $AMQP_PORT}]},
  {ssl_listeners, [{"127.0.0.1", $PORT}, {"127.0.0.2", $PORT}]},
  %% The default 5 s is too short for a client under valgrind.
  {ssl_handshake_timeout, 60000},
  {ssl_options, [
    {cacertfile, "$CERTS/ca.pem"},
    {certfile, "$CERTS/server.pem"},
    {keyfile, "$CERTS/server.key"},
    {verify, verify_peer},
    {fail_if_no_peer_cert, true},
    {versions, ['tlsv1.3', 'tlsv1.2']},
    {sni_hosts, [
      {"expired.test", [{certfile, "$CERTS/expired.pem"},
                        {keyfile, "$CERTS/expired.key"}]},
      {"wronghost.test", [{certfile, "$CERTS/wronghost.pem"},
                          {keyfile, "$CERTS/wronghost.key"}]}
    ]}
  ]}
]}].
EOF
}

start_node() {
  mkdir -p "$DIR/mnesia" "$DIR/log"
  [ -f "$DIR/enabled_plugins" ] || echo "[]." >"$DIR/enabled_plugins"
  : >"$DIR/rabbitmq-env.conf"
  write_config
  # rabbitmq-server runs as the rabbitmq user when started by root.
  if [ "$(id -u)" -eq 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq "$DIR"
  fi
  rm -f "$DIR/pid"
  env RABBITMQ_NODENAME="$NODE" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$AMQP_PORT" \
      RABBITMQ_DIST_PORT="$DIST_PORT" \
      RABBITMQ_SERVER_START_ARGS="-kernel inet_dist_listen_min $DIST_PORT -kernel inet_dist_listen_max $DIST_PORT" \
      RABBITMQ_MNESIA_BASE="$DIR/mnesia" \
      RABBITMQ_LOG_BASE="$DIR/log" \
      RABBITMQ_PID_FILE="$DIR/pid" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
      RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
      RABBITMQ_CONFIG_FILE="$DIR/none.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config" \
      rabbitmq-server -detached >/dev/null 2>&1
}

wait_up() { # seconds
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ]; do
    node_up && port_open 127.0.0.1 "$AMQP_PORT" && return 0
    # The node offers nothing a shell could wait on: poll.
    sleep 0.2
  done
  echo "tls-broker: $NODE did not come up in $1 s; log: $DIR/log" >&2
  return 1
}

case "$cmd" in
  start)
    if ! command -v rabbitmq-server >/dev/null; then
      echo "tls-broker: rabbitmq-server is not installed (run scripts/setup.sh)" >&2
      exit 1
    fi
    mkdir -p "$DIR"
    t0=$SECONDS
    if node_up; then
      certs_ok || { echo "tls-broker: running with stale certificates;" \
                    "run '$0 stop' then '$0 start'" >&2; exit 1; }
      echo "tls-broker: already running"
    else
      certs_ok || make_certs
      start_node
      wait_up 120
      echo "tls-broker: up in $((SECONDS - t0)) s"
    fi
    echo "tls-broker: $NODE TLS 127.0.0.1:$PORT, 127.0.0.2:$PORT;" \
         "AMQP 127.0.0.1:$AMQP_PORT; certificates in $CERTS"
    ;;
  stop)
    pid=$(node_pid || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      # Its data is deleted below: SIGTERM (RabbitMQ shuts down on it),
      # SIGKILL after 30 s.
      kill -TERM "$pid"
      end=$((SECONDS + 30))
      while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
      echo "tls-broker: stopped"
    else
      echo "tls-broker: not running"
    fi
    rm -rf "$DIR/mnesia" "$DIR/log" "$DIR/pid"
    ;;
  status)
    if node_up; then
      echo "tls-broker: $NODE running, TLS 127.0.0.1:$PORT, AMQP 127.0.0.1:$AMQP_PORT"
    else
      echo "tls-broker: not running"
      exit 1
    fi
    ;;
  certs)
    mkdir -p "$DIR"
    make_certs
    echo "tls-broker: certificates in $CERTS"
    ;;
  env)
    echo "SLUICE_TLS_PORT=$PORT"
    echo "SLUICE_TLS_AMQP_PORT=$AMQP_PORT"
    echo "SLUICE_TLS_DIR=$DIR"
    ;;
  *)
    echo "usage: $0 start|stop|status|certs|env" >&2
    exit 2
    ;;
esac
