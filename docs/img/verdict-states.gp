# SPDX-License-Identifier: MIT
# The verdict states along three growth curves, from
#   build/examples/sluice-leak-cookbook --trace verdict-states.csv
#   gnuplot -e "csv='verdict-states.csv'" docs/img/verdict-states.gp
# (horizon 2,000 messages and 20 s, 10 ms per message: see
# docs/profiling.md, "The verdict").
if (!exists("csv")) csv = 'verdict-states.csv'
set terminal svg size 900,420 font "sans,11" background rgb "white"
set output 'docs/img/verdict-states.svg'
set datafile separator ','
set key top left box opaque
set xlabel "messages of the group"
set ylabel "retained (kB)"
set grid
set xrange [0:6100]
set yrange [0:3200]
set arrow from 2000,0 to 2000,3200 nohead dt 2 lc rgb "#888888"
set label "horizon: 2,000 messages (and 20 s)" at 2050,3050 tc rgb "#555555"
set label "a leak: growth past the horizon" at 3300,2250 rotate by 20
set label "an LRU of 3,000: LEAK while it fills past the horizon, then bounded" at 2300,1650
set label "the LRU dropped: ok" at 4700,250 tc rgb "#2ca02c"
set arrow from 5650,200 to 5980,30 lc rgb "#2ca02c"
set label "an LRU of 1,000: growing, then bounded" at 3150,620
state(s) = s eq "ok" ? 0 : s eq "growing" ? 1 : s eq "bounded" ? 2 : 3
col(s) = s == 0 ? 0x2ca02c : s == 1 ? 0xff9f0e : s == 2 ? 0x1f77b4 : 0xd62728
plot \
  csv u ($0 < 0 ? 1/0 : 1/0):(1/0) w p pt 7 ps 1 lc rgb "#2ca02c" t "ok", \
  '' u (1/0):(1/0) w p pt 7 ps 1 lc rgb "#ff9f0e" t "growing", \
  '' u (1/0):(1/0) w p pt 7 ps 1 lc rgb "#1f77b4" t "bounded", \
  '' u (1/0):(1/0) w p pt 7 ps 1 lc rgb "#d62728" t "LEAK", \
  '' u (strcol(1) eq "leak" ? $2 : 1/0):3:(col(state(strcol(4)))) w p pt 7 ps 0.45 lc rgb variable notitle, \
  '' u (strcol(1) eq "lru-3000" ? $2 : 1/0):3:(col(state(strcol(4)))) w p pt 7 ps 0.45 lc rgb variable notitle, \
  '' u (strcol(4) eq "ok" ? $2 : 1/0):3 w p pt 7 ps 1.2 lc rgb "#2ca02c" notitle, \
  '' u (strcol(1) eq "lru-1000" ? $2 : 1/0):3:(col(state(strcol(4)))) w p pt 7 ps 0.45 lc rgb variable notitle
