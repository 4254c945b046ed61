#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite: install what is missing, check the formatting
# (scripts/format.sh --check), start the broker, the 3-node test cluster and
# the TLS node, build and run every test (unit + broker + cluster + TLS
# integration) plainly (RelWithDebInfo), in a Release build, under
# ASan+UBSan and under TSan (both Debug), and the consumer's and the
# profiler's tests under valgrind.
#   SLUICE_TEST_QUICK=1   only the plain build
# The broker, the cluster and the TLS node are left running, as other suites
# on the same machine may be using them (scripts/cluster.sh stop ends the
# cluster, scripts/tls-broker.sh stop the TLS node).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=$(nproc)

bash scripts/setup.sh
# The house style first: it takes a second and names the files to fix.
bash scripts/format.sh --check
bash scripts/broker.sh start
# The cluster boots while the first build compiles (run_build waits for it).
CLUSTER_LOG=$(mktemp)
bash scripts/cluster.sh start >"$CLUSTER_LOG" 2>&1 &
CLUSTER_PID=$!
# So does the TLS node (scripts/tls-broker.sh: a RabbitMQ node of its own).
TLS_LOG=$(mktemp)
bash scripts/tls-broker.sh start >"$TLS_LOG" 2>&1 &
TLS_PID=$!

# Tests that need the broker or a tool setup.sh installs (go, promtool,
# prometheus) fail instead of skipping.
export SLUICE_REQUIRE_BROKER=1
export SLUICE_REQUIRE_CLUSTER=1  # cluster tests too (scripts/cluster.sh)
export SLUICE_REQUIRE_TLS=1      # and TLS tests (scripts/tls-broker.sh)
export CTEST_OUTPUT_ON_FAILURE=1

wait_cluster() {
  [ -n "$CLUSTER_PID" ] || return 0
  if ! wait "$CLUSTER_PID"; then
    cat "$CLUSTER_LOG" >&2
    echo "test.sh: scripts/cluster.sh start failed" >&2
    exit 1
  fi
  cat "$CLUSTER_LOG"
  rm -f "$CLUSTER_LOG"
  CLUSTER_PID=
}

wait_tls() {
  [ -n "$TLS_PID" ] || return 0
  if ! wait "$TLS_PID"; then
    cat "$TLS_LOG" >&2
    echo "test.sh: scripts/tls-broker.sh start failed" >&2
    exit 1
  fi
  cat "$TLS_LOG"
  rm -f "$TLS_LOG"
  TLS_PID=
}

run_build() { # name, cmake args...
  local name=$1 t0=$SECONDS; shift
  echo "=== build: $name"
  cmake -S "$ROOT" -B "$ROOT/build-$name" -DSLUICE_WERROR=ON "$@" >/dev/null
  cmake --build "$ROOT/build-$name" -j"$JOBS"
  wait_cluster
  wait_tls
  echo "=== test: $name"
  (cd "$ROOT/build-$name" && ctest -j"$JOBS" --timeout 600 \
     --output-on-failure)
  echo "=== $name: $((SECONDS - t0)) s"
}

run_build default -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ "${SLUICE_TEST_QUICK:-0}" != 1 ]; then
  echo "=== valgrind: consumer, reconnect and TLS tests (default build)"
  # Valgrind runs the client many times slower: tests whose outcome depends
  # on a time budget scale it (tests/common/broker_util.h).
  export SLUICE_TEST_TIME_SCALE=10
  for t in consumer/test_uri consumer/test_ackq consumer/test_bound \
           consumer/test_memguard consumer/test_memguard_broker \
           reconnect/test_registry consumer/test_consumer_broker \
           reconnect/test_connect_loop tls/test_tls_broker; do
    valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect \
      --error-exitcode=9 "$ROOT/build-default/tests/$t" >/dev/null
    echo "valgrind clean: $t"
  done
  unset SLUICE_TEST_TIME_SCALE
  # The profiler's own code (and libdw reading DWARF) under valgrind: a
  # build that does not replace malloc (valgrind's would win anyway).
  echo "=== valgrind: profiler tests (SLUICE_PROF_MALLOC=OFF)"
  cmake -S "$ROOT" -B "$ROOT/build-valgrind" -DSLUICE_WERROR=ON \
    -DSLUICE_PROF_MALLOC=OFF -DSLUICE_BUILD_BENCH=OFF >/dev/null
  prof_tests="test_prof_output test_prof_scope test_prof_bounds test_prof_tools
    test_prof_nursery"
  # shellcheck disable=SC2086
  cmake --build "$ROOT/build-valgrind" -j"$JOBS" --target $prof_tests
  for t in $prof_tests; do
    valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect \
      --error-exitcode=9 --suppressions="$ROOT/tests/profiling/valgrind.supp" \
      "$ROOT/build-valgrind/tests/profiling/$t" >/dev/null
    echo "valgrind clean: profiling/$t"
  done
  # test_prof_nursery's tests on a small scope pool (a process of their own)
  valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --error-exitcode=9 --suppressions="$ROOT/tests/profiling/valgrind.supp" \
    "$ROOT/build-valgrind/tests/profiling/test_prof_nursery" small-pool >/dev/null
  echo "valgrind clean: profiling/test_prof_nursery small-pool"
  # The cluster's kill -9 tests prove the broker's side (failover, what a
  # crash redelivers) once, in the default build: each restarts a node
  # (~10-30 s). The other builds run the memory alarm test, which drives the
  # publisher's blocked path, sluice code that no other test reaches.
  export SLUICE_CLUSTER_FILTER='memory_alarm*'
  run_build release -DCMAKE_BUILD_TYPE=Release
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_build asan -DCMAKE_BUILD_TYPE=Debug -DSLUICE_ASAN=ON -DSLUICE_UBSAN=ON
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    run_build tsan -DCMAKE_BUILD_TYPE=Debug -DSLUICE_TSAN=ON \
      -DSLUICE_BUILD_BENCH=OFF
  echo "=== fuzz: each target ${FUZZ_SECONDS:-25} s (clang, ASan+UBSan)"
  bash scripts/fuzz.sh
fi
echo "=== all tests passed in $SECONDS s"
