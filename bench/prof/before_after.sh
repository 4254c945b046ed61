#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Two builds of sluice-bench-prof-consume (say main's and a change's) in one
# run: ROUNDS rounds; in each, every (build, mode) runs once as its own
# process (fill the queue, then consume it), in an order rotated every
# round. Then, per build and mode, the medians of msg/s and client CPU per
# message, and the median over rounds of CPU per message against the same
# build's `off` of that round.
#
#   bench/prof/before_after.sh BEFORE_BIN AFTER_BIN ROUNDS [COUNT [MODES]]
#
# e.g. bench/prof/before_after.sh /tmp/before/bench/prof/sluice-bench-prof-consume \
#        build/bench/prof/sluice-bench-prof-consume 5 30000 off,default,key
# Needs the broker (127.0.0.1:5672). Raw lines go to $OUT (default: a
# temporary file, named at the end).
set -euo pipefail
[ $# -ge 3 ] || { sed -n 3,15p "$0"; exit 2; }
before=$1 after=$2 rounds=$3 count=${4:-30000} modes=${5:-off,default,key}
out=${OUT:-$(mktemp /tmp/sluice-prof-before-after.XXXXXX)}
: > "$out"
IFS=, read -r -a mlist <<< "$modes"
cfgs=()
for b in before after; do for m in "${mlist[@]}"; do cfgs+=("$b $m"); done; done
n=${#cfgs[@]}
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < n; i++)); do
    read -r which mode <<< "${cfgs[$(((i + r) % n))]}"
    bin=$before
    [ "$which" = after ] && bin=$after
    # A process that fails (the broker went away) loses its sample only.
    "$bin" --mode fill --count "$count" > /dev/null 2>&1 || continue
    line=$("$bin" --mode "$mode" --count "$count" 2> /dev/null) || continue
    echo "round=$r build=$which mode=$mode $line" >> "$out"
  done
done
python3 - "$out" "${mlist[@]}" <<'PY'
import re, statistics as st, sys
rows = [dict(re.findall(r'(\w+)=([\w.]+)', l)) for l in open(sys.argv[1])]
modes = sys.argv[2:]
print(f"{'build':8} {'mode':12} {'msg/s':>9} {'cpu us/msg':>11} {'cpu vs off':>11}")
for b in ('before', 'after'):
    for m in modes:
        sel = [r for r in rows if r['build'] == b and r['mode'] == m]
        if not sel:
            continue
        ratios = []
        for r in sel:
            off = [x for x in rows if x['build'] == b and x['mode'] == 'off'
                   and x['round'] == r['round']]
            if off:
                ratios.append(float(r['cpu_us']) / float(off[0]['cpu_us']))
        print(f"{b:8} {m:12} {st.median(float(r['rate']) for r in sel):9.0f} "
              f"{st.median(float(r['cpu_us']) for r in sel):11.2f} "
              f"{(st.median(ratios) if ratios else float('nan')):10.2f}x")
PY
echo "raw: $out"
