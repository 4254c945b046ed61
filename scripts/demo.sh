#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: install what is missing, build, start RabbitMQ, run the demo
# and print its report.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash scripts/setup.sh
bash scripts/broker.sh start

echo "=== build"
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$ROOT/build" -j"$(nproc)" >/dev/null

echo "=== demo: publish with confirms, consume with sluice (manual ack, prefetch 100)"
"$ROOT/build/examples/sluice-demo" --count 20000 --ack manual --prefetch 100
echo "=== demo: the same in autoAck mode with 4 workers (bounded in-flight buffer)"
"$ROOT/build/examples/sluice-demo" --count 20000 --ack auto --workers 4
