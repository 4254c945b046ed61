/* SPDX-License-Identifier: MIT */
/* How right are a verdict's sites at the default sampling rate? Each trial
 * is a group of messages that leak 96 B at one site and 32 B at another
 * (75% / 25% of what the group retains), amid 1 KiB of transient churn per
 * message; the verdict's top two sites are compared with the truth (what
 * rate 1 reports exactly). Trials alternate between adaptive stacks on
 * (the default: once the group grows, its next messages are recorded at
 * weight 1) and off (Poisson samples alone), on the same clock.
 *
 *   sluice-bench-prof-sites [--trials N] [--messages N] [--rate BYTES]
 *
 * Prints, for each mode, the median and the worst relative error of the
 * two sites' bytes, and how often a site was missing from the verdict. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/profiling.h>

#define NOINLINE __attribute__((noinline))

static uint64_t clock_ns = 1000000000ull;
static uint64_t fake_clock(void *user) {
  (void)user;
  return clock_ns;
}

static void **kept;
static size_t n_kept;

NOINLINE static void *site_big(void) {
  return malloc(96);
}
NOINLINE static void *site_small(void) {
  return malloc(32);
}

NOINLINE static void handle(int i) {
  char *t = malloc(1024); /* transient */
  t[0] = (char)i;
  free(t);
  kept[n_kept++] = site_big();
  kept[n_kept++] = site_small();
}

/* What the verdict said about the current trial. */
static double got_big, got_small;
static int got;

static void on_leak(const sluice_prof_leak *v, void *user) {
  (void)user;
  got = 1;
  got_big = got_small = 0;
  for (size_t i = 0; i < v->n_sites; i++) {
    if (!strcmp(v->sites[i].function, "site_big"))
      got_big = (double)v->sites[i].bytes;
    if (!strcmp(v->sites[i].function, "site_small"))
      got_small = (double)v->sites[i].bytes;
  }
}

static int dcmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int trials = 40, messages = 2000;
  size_t rate = 524288;
  static struct option lo[] = {{"trials", 1, 0, 't'},
                               {"messages", 1, 0, 'm'},
                               {"rate", 1, 0, 'r'},
                               {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "t:m:r:", lo, NULL)) != -1) {
    if (ch == 't') trials = atoi(optarg);
    else if (ch == 'm') messages = atoi(optarg);
    else if (ch == 'r') rate = strtoul(optarg, NULL, 10);
    else return 2;
  }
  kept = calloc((size_t)messages * 2, sizeof(void *));
  double *err[2];
  int missing[2] = {0, 0}, n[2] = {0, 0};
  err[0] = calloc((size_t)trials * 2, sizeof(double));
  err[1] = calloc((size_t)trials * 2, sizeof(double));
  for (int t = 0; t < trials; t++) {
    int adaptive = t % 2 == 0;
    sluice_prof_opts o = {.sample_rate = rate,
                          .horizon_messages = 200,
                          .horizon_ms = 1,
                          .leak_window = 20,
                          .adaptive_messages = adaptive ? 0 : -1,
                          .poll_ms = -1,
                          .now_ns = fake_clock,
                          .on_leak = on_leak};
    if (sluice_prof_start(&o)) return 1;
    char q[64];
    snprintf(q, sizeof q, "sites.%d", t);
    got = 0;
    for (int i = 0; i < messages; i++) {
      clock_ns += 1000000;
      sluice_prof_scope s = sluice_prof_scope_begin(q, (uint64_t)i, 0);
      sluice_prof_scope prev = sluice_prof_scope_enter(s);
      handle(i);
      sluice_prof_scope_enter(prev);
      sluice_prof_scope_end(s, 0, NULL);
    }
    if (!got) {
      fprintf(stderr, "trial %d: no verdict\n", t);
      return 1;
    }
    /* The verdict fired when the growth had lasted the horizon: compare
     * with what the group held then (its shares are what matters). */
    double total = got_big + got_small;
    double truth_big = 0.75, truth_small = 0.25;
    int m = adaptive ? 0 : 1;
    if (got_big == 0 || got_small == 0) missing[m]++;
    err[m][n[m]++] = total > 0 ? fabs(got_big / total - truth_big) / truth_big
                               : 1;
    err[m][n[m]++] =
        total > 0 ? fabs(got_small / total - truth_small) / truth_small : 1;
    for (size_t i = 0; i < n_kept; i++) free(kept[i]);
    n_kept = 0;
  }
  printf("verdict sites at rate %zu: %d trials of %d messages (96 B + 32 B "
         "kept per message, 1 KiB transient)\n",
         rate, trials, messages);
  printf("%-22s %12s %12s %16s\n", "mode", "median err", "worst err",
         "site missing");
  const char *names[2] = {"adaptive stacks (on)", "Poisson samples only"};
  for (int m = 0; m < 2; m++) {
    qsort(err[m], (size_t)n[m], sizeof(double), dcmp);
    printf("%-22s %11.1f%% %11.1f%% %10d of %d\n", names[m],
           100 * err[m][n[m] / 2], 100 * err[m][n[m] - 1], missing[m],
           n[m] / 2);
  }
  return 0;
}
