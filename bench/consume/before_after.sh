#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Two builds of sluice-bench-consume (say main's and a change's) in one
# run: ROUNDS rounds, each running both binaries as separate processes for
# one round of every selected variant, the order of the two swapped every
# round; then, per variant and binary, the medians of the raw loop's rate,
# sluice's rate, their ratio, the CPU per message of each side, and of
# sluice's CPU per message over the raw loop's in the same process ("cpu x").
#
#   bench/consume/before_after.sh BEFORE_BIN AFTER_BIN ROUNDS [bench args]
#
# e.g. bench/consume/before_after.sh /tmp/before/sluice-bench-consume \
#        build/bench/consume/sluice-bench-consume 3 --count 200000 \
#        --only per-message
# The bench args must not include --rounds. Raw per-process output goes to
# stderr-free lines in $OUT (default: a temporary file, printed at the end).
set -euo pipefail
[ $# -ge 3 ] || { sed -n 3,15p "$0"; exit 2; }
before=$1 after=$2 rounds=$3
shift 3
out=${OUT:-$(mktemp /tmp/sluice-before-after.XXXXXX)}
: > "$out"
for ((r = 0; r < rounds; r++)); do
  if ((r % 2 == 0)); then order="before after"; else order="after before"; fi
  for which in $order; do
    bin=$before
    [ "$which" = after ] && bin=$after
    # A process that fails (the broker went away) loses its samples only.
    if ! "$bin" --rounds 1 "$@" > "$out.one"; then
      echo "# $which round $r failed" >&2
      continue
    fi
    grep -v '^#' "$out.one" | grep -v '^variant' |
      sed "s/^/$which $r|/" >> "$out"
  done
done
# Each line: "<which> <round>|<variant, padded to 46>  raw sluice ratio rawcpu
# sluicecpu"; medians per (variant, which).
awk -F'|' '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
      if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    split($1, h, " "); which = h[1]
    name = substr($2, 1, 46); sub(/ +$/, "", name)
    split(substr($2, 47), f, " ")
    if (f[1] == "skipped:") next
    k = name SUBSEP which
    if (!(name in seen)) { seen[name] = 1; names[++nn] = name }
    raw[k] = raw[k] " " f[1]; sl[k] = sl[k] " " f[2]
    rat[k] = rat[k] " " f[3] + 0; rc[k] = rc[k] " " f[4]; sc[k] = sc[k] " " f[5]
    cr[k] = cr[k] " " (f[4] > 0 ? f[5] / f[4] : 0)
  }
  END {
    printf "%-40s %-6s %10s %10s %7s %9s %9s %8s\n", "variant", "build",
      "raw msg/s", "sl msg/s", "ratio", "raw us", "sl us", "cpu x"
    for (i = 1; i <= nn; i++) for (w = 0; w < 2; w++) {
      which = w ? "after" : "before"; k = names[i] SUBSEP which
      printf "%-40s %-6s %10.0f %10.0f %6.2fx %9.2f %9.2f %7.2fx\n", names[i],
        which, median(raw[k]), median(sl[k]), median(rat[k]), median(rc[k]),
        median(sc[k]), median(cr[k])
    }
  }' "$out"
rm -f "$out.one"
echo "# per-process lines: $out"
