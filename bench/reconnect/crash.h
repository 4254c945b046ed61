/* SPDX-License-Identifier: MIT */
#ifndef SLUICE_BENCH_CRASH_H
#define SLUICE_BENCH_CRASH_H

/* sluice-bench-reconnect crash (crash.c): 0, or 1 when a round failed. */
int bench_crash(int rounds);

#endif
