/* SPDX-License-Identifier: MIT */
/* Shared helpers for the benchmarks: queue filling, clocks, CPU time, RSS,
 * medians. */
#ifndef SLUICE_BENCH_UTIL_H
#define SLUICE_BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

double bu_now(void);   /* monotonic seconds */
double bu_cpu(void);   /* this process's user+system CPU seconds */
long bu_rss_kib(void); /* VmRSS */
long bu_hwm_kib(void); /* VmHWM (peak RSS) */
double bu_median(double *v, int n);
/* Delete, declare (durable) and fill a queue with n messages of `size`
 * bytes, with confirms. Exits on error. */
void bu_fill(const char *uri, const char *queue, unsigned long n, size_t size);
unsigned bu_depth(const char *uri, const char *queue);
/* 1 if 127.0.0.1:port accepts TCP connections. */
int bu_port_open(int port);
/* The inodes of the sockets process `pid` holds (/proc/PID/fd), at most
 * `max`; -1 if its descriptors cannot be read (another user's process). */
int bu_socket_inodes(int pid, unsigned long *ino, int max);

#endif
