#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The push-worker demo, once sluice is built and the broker is up:
#   bash examples/push_worker/demo.sh [BUILD_DIR]      (default: build)
# Starts the gateway stand-in, publishes a batch of push jobs (some broken,
# some the gateway refuses or fails), runs the worker until every job is
# finished and prints its summary and residual report; then does it again
# with a planted leak on the health probes only (--leak probe-path) to show
# the profiler finding it, per job type, in one line.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-$ROOT/build}
case "$BUILD" in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
BIN=$BUILD/examples/push_worker
for p in push-gateway push-publish push-worker; do
  if [ ! -x "$BIN/$p" ]; then
    echo "demo: $BIN/$p is missing: build first (cmake --build $BUILD)" >&2
    exit 1
  fi
done

TMP=$(mktemp -d)
GW_PID=
cleanup() {
  if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# The gateway stand-in: 5-15 ms per request, 2% random failures (400 or
# 503), 403 for "forbidden-*" tokens, 410 for "gone-*", 500 for "fail-*".
"$BIN/push-gateway" --latency-ms 5 --jitter-ms 10 --error-rate 0.02 \
  --error-4xx-share 0.3 --url-file "$TMP/url" >"$TMP/gateway.log" &
GW_PID=$!
for _ in $(seq 1 100); do [ -s "$TMP/url" ] && break; sleep 0.05; done
URL=$(cat "$TMP/url")
echo "=== gateway stand-in on $URL"

QUEUE=push.demo
MIX="probe=5,bad=1,missing=1,badtype=1,forbidden=1,gone=1,fail=1"
N=2000

echo "=== publish $N push jobs to $QUEUE (mix: $MIX)"
"$BIN/push-publish" --queue "$QUEUE" --fresh --count "$N" --mix "$MIX"

echo "=== push-worker (manual ack, prefetch 100): until all $N jobs are finished"
"$BIN/push-worker" --queue "$QUEUE" --gateway "$URL" --count "$N" \
  --max-attempts 3 --retry-delay-ms 20 --report --quiet

echo
echo "=== the same with a planted leak (--leak probe-path: the health-probe path returns"
echo "    before freeing its job); the residual is kept per job type (the 'type' property)"
echo "    and the verdict horizon is short for the demo (--horizon 100,1000: 100 messages"
echo "    of a kind and 1 s of growth; the default is 50,000 and 120 s)"
LEAK_MIX="probe=10,bad=1,missing=1,forbidden=1,gone=1"
"$BIN/push-publish" --queue "$QUEUE" --count 2000 --first "$N" --mix "$LEAK_MIX" >/dev/null
"$BIN/push-worker" --queue "$QUEUE" --gateway "$URL" --count 2000 \
  --max-attempts 3 --retry-delay-ms 20 --leak probe-path --horizon 100,1000 \
  --report --quiet 2>&1 |
  grep -E "^push-worker|^queue|^push\.demo +type=(probe|ok) +ack|top residual sites.*probe|job_new" | head -n 12

kill -USR1 "$GW_PID"
for _ in $(seq 1 50); do grep -q requests "$TMP/gateway.log" && break; sleep 0.05; done
echo
echo "=== gateway: $(grep requests "$TMP/gateway.log" | tail -n 1 | sed 's/^push-gateway: //')"
echo "=== dead letters (with x-reject-reason) are in $QUEUE.dead"
