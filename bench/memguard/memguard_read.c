/* SPDX-License-Identifier: MIT */
/* The cost of one reading of the memory guard's default figure
 * (sluice_memory_read), the live heap against the RSS, on heaps of several
 * shapes: young, and fragmented into N free chunks (every other one of 2N
 * small blocks freed). glibc's mallinfo2() walks every free chunk, so the
 * heap's reading grows with N while the RSS's does not. Rounds interleave
 * the two readings; the figure is the median over the rounds of the loop
 * thread's CPU time per reading (CLOCK_THREAD_CPUTIME_ID, as the guard
 * spaces its checks by).
 *
 *   sluice-bench-memguard-read [rounds]   (default 7)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sluice/consumer.h>

static double cpu_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double one(int use_rss) {
  uint64_t v;
  double t0 = cpu_us();
  if (sluice_memory_read(use_rss, &v, NULL)) return -1;
  return cpu_us() - t0;
}

static void measure(const char *shape, int rounds) {
  double heap[64], rss[64];
  const char *src = "";
  uint64_t v = 0;
  sluice_memory_read(0, &v, &src);
  for (int r = 0; r < rounds; r++) {
    /* alternate which goes first */
    if (r % 2) {
      rss[r] = one(1);
      heap[r] = one(0);
    } else {
      heap[r] = one(0);
      rss[r] = one(1);
    }
  }
  qsort(heap, (size_t)rounds, sizeof(double), cmp);
  qsort(rss, (size_t)rounds, sizeof(double), cmp);
  double h = heap[rounds / 2], s = rss[rounds / 2];
  printf("%-34s heap (%s) %10.1f us   rss %6.1f us   heap/rss %8.1fx   "
         "figure %llu B\n",
         shape, src, h, s, s > 0 ? h / s : 0.0, (unsigned long long)v);
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 7;
  if (rounds < 1 || rounds > 64) rounds = 7;
  /* glibc's heap exists once something was allocated (a consumer always
   * has): before that mallinfo2() says 0 and the RSS stands in */
  char *volatile young = malloc(64);
  measure("young heap", rounds);
  free(young);
  const size_t steps[] = {10000, 100000, 500000, 2000000};
  for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
    size_t n = 2 * steps[k];
    char **p = malloc(n * sizeof *p);
    if (!p) return 1;
    for (size_t i = 0; i < n; i++) p[i] = malloc(16 + (i % 7) * 16);
    for (size_t i = 0; i < n; i += 2) free(p[i]);
    char shape[64];
    snprintf(shape, sizeof shape, "%zu free chunks", steps[k]);
    measure(shape, rounds);
    for (size_t i = 1; i < n; i += 2) free(p[i]);
    free(p);
  }
  return 0;
}
