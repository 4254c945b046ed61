#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: install what is missing, build, start RabbitMQ, run the
# push-worker demo and print its summary and residual report.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash scripts/setup.sh
bash scripts/broker.sh start

echo "=== build"
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$ROOT/build" -j"$(nproc)" >/dev/null

# The push-notification worker: gateway stand-in, a batch of push jobs, the
# worker until every job is finished, its summary and residual report; then
# the same with a planted leak, which the profiler names.
bash "$ROOT/examples/push_worker/demo.sh" "$ROOT/build"
