/* SPDX-License-Identifier: MIT */
/* Cost of allocation tracking on a malloc churn: small blocks (16..255 B)
 * allocated three calls deep and freed 1024 allocations later, measured as
 * nanoseconds per malloc+free pair.
 *
 * Without arguments this is the driver: it runs every configuration in its
 * own process, in interleaved rounds (a burst of noise on the shared
 * machine hits every configuration alike), and prints medians, minimums and
 * ratios, all from the same run:
 *   glibc alone            sluice-bench-prof-churn-glibc (not linked)
 *   sluice linked, off     profiler loaded, never started
 *   scopes only            inside a scope, no stacks (SLUICE_PROF_RATE_NONE)
 *   sampled 512 KiB        the default rate, no scope
 *   scope + sampled        what a consumer pays: both of the above
 *   every alloc + stacks   rate 1
 *   heaptrack              `heaptrack` running the glibc-only binary
 * With `--mode M` it is one measurement, printed as "ns_per_pair=X
 * cpu_ns_per_pair=Y": wall time, and the thread's CPU time, which time
 * spent preempted by other work on a shared machine does not inflate.
 *
 *   sluice-bench-prof-churn [--runs 5] [--iters 4000000] [--no-heaptrack]
 *                           [--ref OTHER-BUILD-OF-THIS-PROGRAM]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CHURN_GLIBC_ONLY
#include <sluice/profiling.h>
#endif

#define RING 1024

static void *ring[RING];

static double now(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

__attribute__((noinline)) static void *level3(size_t n) {
  char *p = malloc(n);
  p[0] = (char)n;
  return p;
}

__attribute__((noinline)) static void *level2(size_t n) {
  void *p = level3(n);
  __asm__ __volatile__("" ::: "memory");
  return p;
}

__attribute__((noinline)) static void level1(unsigned i) {
  size_t n = 16 + (i * 37u) % 240;
  void *p = level2(n);
  unsigned k = i & (RING - 1);
  free(ring[k]);
  ring[k] = p;
}

/* Nanoseconds per pair, wall clock; *cpu_ns: the thread's CPU time. */
__attribute__((noinline)) static double churn(unsigned long iters,
                                              double *cpu_ns) {
  for (unsigned i = 0; i < 2 * RING; i++) level1(i); /* warm up */
  double c0 = now(CLOCK_THREAD_CPUTIME_ID), t0 = now(CLOCK_MONOTONIC);
  for (unsigned long i = 0; i < iters; i++) level1((unsigned)i);
  double t1 = now(CLOCK_MONOTONIC), c1 = now(CLOCK_THREAD_CPUTIME_ID);
  for (unsigned i = 0; i < RING; i++) {
    free(ring[i]);
    ring[i] = NULL;
  }
  *cpu_ns = (c1 - c0) * 1e9 / (double)iters;
  return (t1 - t0) * 1e9 / (double)iters;
}

static int measure(const char *mode, unsigned long iters) {
#ifdef CHURN_GLIBC_ONLY
  if (strcmp(mode, "glibc")) {
    fprintf(stderr, "this binary only runs --mode glibc\n");
    return 2;
  }
#else
  sluice_prof_scope scope = 0;
  sluice_prof_opts o = {0};
  if (!strcmp(mode, "off")) {
    /* loaded, never started */
  } else if (!strcmp(mode, "count") || !strcmp(mode, "scopes")) {
    o.sample_rate = SLUICE_PROF_RATE_NONE;
  } else if (!strcmp(mode, "sampled")) {
    o.sample_rate = 524288;
  } else if (!strcmp(mode, "scoped-sampled")) {
    o.sample_rate = 524288;
  } else if (!strcmp(mode, "all")) {
    o.sample_rate = 1;
  } else {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  if (strcmp(mode, "off") && sluice_prof_start(&o)) return 1;
  if (!strcmp(mode, "scopes") || !strcmp(mode, "scoped-sampled")) {
    scope = sluice_prof_scope_begin("bench", 1, 1);
    sluice_prof_scope_enter(scope);
  }
#endif
  double cpu_ns;
  double ns = churn(iters, &cpu_ns);
#ifndef CHURN_GLIBC_ONLY
  if (scope) {
    sluice_prof_scope_enter(0);
    sluice_prof_scope_end(scope, 0, NULL);
  }
#endif
  printf("ns_per_pair=%.3f cpu_ns_per_pair=%.3f\n", ns, cpu_ns);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Driver. */
#ifndef CHURN_GLIBC_ONLY

extern char **environ;

/* Run argv, return the ns_per_pair it printed, or -1; *cpu gets its
 * cpu_ns_per_pair (-1 when it printed none). */
static double run_child(char *const argv[], double *cpu) {
  *cpu = -1;
  int fds[2];
  if (pipe(fds)) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", 0, 0);
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc) {
    close(fds[0]);
    return -1;
  }
  char buf[8192];
  size_t len = 0;
  ssize_t r;
  while ((r = read(fds[0], buf + len, sizeof buf - 1 - len)) != 0) {
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    len += (size_t)r;
    if (len == sizeof buf - 1) len = 0; /* keep the tail */
  }
  buf[len] = 0;
  close(fds[0]);
  int st;
  waitpid(pid, &st, 0);
  const char *p = strstr(buf, "ns_per_pair=");
  if (!WIFEXITED(st) || WEXITSTATUS(st) || !p) return -1;
  const char *c = strstr(buf, "cpu_ns_per_pair=");
  if (c) *cpu = strtod(c + 16, NULL);
  return strtod(p + 12, NULL);
}

static int dcmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median and minimum of the n values in v (sorted in place). */
static void stats(double *v, int n, double *med, double *min) {
  if (!n) {
    *med = *min = -1;
    return;
  }
  qsort(v, (size_t)n, sizeof *v, dcmp);
  *med = v[n / 2];
  *min = v[0];
}

/* `ref`: another build of this program (the library before a change), whose
 * "off" and "sampled" rows run interleaved with the others. */
static int driver(int runs, unsigned long iters, int heaptrack,
                  const char *ref) {
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 1;
  self[n] = 0;
  char it[32], it_ht[32];
  snprintf(it, sizeof it, "%lu", iters);
  snprintf(it_ht, sizeof it_ht, "%lu", iters);
  struct {
    const char *label;
    const char *mode;
    int ref;
  } rows[] = {
      {"glibc alone", NULL, 0},
      {"sluice linked, off", "off", 0},
      {"scopes only (no stacks)", "scopes", 0},
      {"sampled 512 KiB", "sampled", 0},
      {"scope + sampled 512 KiB", "scoped-sampled", 0},
      {"every alloc + stacks", "all", 0},
      {"ref: sluice linked, off", "off", 1},
      {"ref: sampled 512 KiB", "sampled", 1},
  };
  enum { N_ROWS = sizeof rows / sizeof rows[0] };
  double ns[N_ROWS + 1], mins[N_ROWS + 1], cns[N_ROWS + 1], cmins[N_ROWS + 1];
  double v[N_ROWS + 1][32], cv[N_ROWS + 1][32];
  int nv[N_ROWS + 1] = {0}, ncv[N_ROWS + 1] = {0};
  if (runs > 32) runs = 32;
  printf("malloc churn: %lu malloc+free pairs per run, 16..255 B blocks, "
         "3 call levels, %d live; %d rounds, each running every "
         "configuration once (interleaved)\n",
         iters, RING, runs);
  fflush(stdout);
  char tmpl[] = "/tmp/sluice-churn-ht-XXXXXX";
  int have_tmp = heaptrack && mkdtemp(tmpl) != NULL;
  char ht_out[256];
  snprintf(ht_out, sizeof ht_out, "%s/ht", tmpl);
  for (int r = 0; r < runs; r++) {
    for (int i = 0; i < N_ROWS; i++) {
      char *argv[6];
      if (rows[i].ref && !ref) continue;
      if (rows[i].ref) {
        argv[0] = (char *)ref;
        argv[2] = (char *)rows[i].mode;
      } else if (!rows[i].mode) {
        argv[0] = CHURN_GLIBC_BIN;
        argv[2] = "glibc";
      } else {
        argv[0] = self;
        argv[2] = (char *)rows[i].mode;
      }
      argv[1] = "--mode";
      argv[3] = "--iters";
      argv[4] = it;
      argv[5] = NULL;
      double c, x = run_child(argv, &c);
      if (x > 0) v[i][nv[i]++] = x;
      if (c > 0) cv[i][ncv[i]++] = c;
    }
    /* heaptrack is slow and writes a big trace: at most 3 rounds. */
    if (have_tmp && r < 3) {
      char *argv[] = {"heaptrack",     "-o",     ht_out,
                      CHURN_GLIBC_BIN, "--mode", "glibc",
                      "--iters",       it_ht,    NULL};
      double c, x = run_child(argv, &c);
      if (x > 0) v[N_ROWS][nv[N_ROWS]++] = x;
      if (c > 0) cv[N_ROWS][ncv[N_ROWS]++] = c;
      char cmd[512];
      snprintf(cmd, sizeof cmd, "rm -f '%s'/ht*", tmpl);
      if (system(cmd)) { /* best effort */
      }
    }
  }
  if (have_tmp) rmdir(tmpl);
  for (int i = 0; i <= N_ROWS; i++) {
    stats(v[i], nv[i], &ns[i], &mins[i]);
    stats(cv[i], ncv[i], &cns[i], &cmins[i]);
  }
  double base = ns[0], base_min = mins[0], cbase = cns[0];
  printf("%-28s %10s %9s %10s %9s %10s %9s\n", "configuration", "median ns",
         "ratio", "min ns", "ratio", "cpu ns", "ratio");
  for (int i = 0; i <= N_ROWS; i++) {
    const char *label = i < N_ROWS ? rows[i].label : "heaptrack (glibc binary)";
    if (ns[i] < 0) {
      if (i >= N_ROWS || !rows[i].ref) printf("%-28s %10s\n", label, "n/a");
      continue;
    }
    printf("%-28s %10.1f %8.2fx %10.1f %8.2fx", label, ns[i],
           base > 0 ? ns[i] / base : 0, mins[i],
           base_min > 0 ? mins[i] / base_min : 0);
    if (cns[i] > 0)
      printf(" %10.1f %8.2fx", cns[i], cbase > 0 ? cns[i] / cbase : 0);
    printf("\n");
  }
  if (base > 0 && ns[3] > 0)
    printf("sampled / glibc: %.2fx median, %.2fx min, %.2fx CPU time "
           "(target <= 1.10x)\n",
           ns[3] / base, mins[3] / base_min, cbase > 0 ? cns[3] / cbase : 0);
  if (ns[5] > 0 && ns[N_ROWS] > 0)
    printf("every alloc + stacks / heaptrack: %.2fx median, %.2fx min "
           "(target <= 0.50x)\n",
           ns[5] / ns[N_ROWS], mins[5] / mins[N_ROWS]);
  return 0;
}
#endif /* !CHURN_GLIBC_ONLY */

int main(int argc, char **argv) {
  const char *mode = NULL;
  unsigned long iters = 4000000;
  int runs = 5, heaptrack = 1;
  const char *ref = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--mode") && i + 1 < argc) mode = argv[++i];
    else if (!strcmp(argv[i], "--iters") && i + 1 < argc)
      iters = strtoul(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--no-heaptrack")) heaptrack = 0;
    else if (!strcmp(argv[i], "--ref") && i + 1 < argc) ref = argv[++i];
    else {
      fprintf(stderr,
              "usage: %s [--runs N] [--iters N] [--no-heaptrack] [--ref BIN] "
              "[--mode glibc|off|count|scopes|sampled|scoped-sampled|all]\n",
              argv[0]);
      return 2;
    }
  }
  if (mode) return measure(mode, iters);
#ifdef CHURN_GLIBC_ONLY
  (void)runs;
  (void)heaptrack;
  (void)ref;
  return measure("glibc", iters);
#else
  return driver(runs > 0 ? runs : 1, iters, heaptrack, ref);
#endif
}
