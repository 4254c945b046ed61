#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Build the libFuzzer targets of fuzz/ (clang, ASan + UBSan) and run each for
# a bounded time from the checked-in corpus (docs/fuzzing.md).
#   FUZZ_SECONDS=25        seconds per target
#   FUZZ_TARGETS="uri ..." targets to run (default: every fuzz/fuzz_*.c)
# New inputs go to build-fuzz/new/<target>, never into the repository; a
# crash leaves build-fuzz/artifacts/<target>/crash-* and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-25}
if [ -z "${FUZZ_TARGETS:-}" ]; then
  FUZZ_TARGETS=$(ls fuzz/fuzz_*.c | sed 's|fuzz/fuzz_||; s|\.c$||' | tr '\n' ' ')
fi
JOBS=$(nproc)

cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
  -DSLUICE_FUZZ=ON -DSLUICE_ASAN=ON -DSLUICE_UBSAN=ON \
  -DSLUICE_BUILD_TESTS=OFF -DSLUICE_BUILD_EXAMPLES=OFF \
  -DSLUICE_BUILD_BENCH=OFF -DSLUICE_BUILD_PROFILING=OFF >/dev/null
targets=()
for t in $FUZZ_TARGETS; do targets+=("fuzz_$t"); done
cmake --build build-fuzz -j"$JOBS" --target "${targets[@]}"

export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
failed=0
for t in $FUZZ_TARGETS; do
  new=build-fuzz/new/$t
  art=build-fuzz/artifacts/$t
  mkdir -p "$new" "$art"
  dirs=("$new" "fuzz/corpus/$t")
  if [ -d "fuzz/regressions/$t" ]; then dirs+=("fuzz/regressions/$t"); fi
  log=build-fuzz/fuzz-$t.log
  rc=0
  build-fuzz/fuzz/fuzz_$t -max_total_time="$SECONDS_EACH" -timeout=10 \
    -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$art/" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  added=$(sed -n 's/^stat::new_units_added: *//p' "$log")
  crashes=$(ls "$art" | wc -l)
  echo "fuzz: $t: ${execs:-0} executions in ${SECONDS_EACH} s, ${added:-0} new inputs, $crashes crashes"
  if [ "$rc" != 0 ] || [ "$crashes" != 0 ]; then
    failed=1
    grep -E "ERROR|runtime error|SUMMARY|Test unit written" "$log" | head -20 || true
    echo "fuzz: $t failed (exit $rc); see $log and $art/"
  fi
done
exit $failed
