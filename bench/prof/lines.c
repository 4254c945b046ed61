/* SPDX-License-Identifier: MIT */
/* Cost of naming frames with source lines at report time: the time to
 * write a pprof profile (and a `top`) of N distinct stacks, and the memory
 * the profiler keeps afterwards, with lines (DWARF, libdw) against
 * function names only (ELF symbols; SLUICE_PROF_LINES=0), in the same run.
 *
 * The stacks are paths through 64 functions with 4 call sites each, 6 to
 * 9 levels deep, and an inlined helper at the leaf that allocates: a few
 * hundred distinct return addresses, each resolved once per report.
 *
 * Without --mode this is the driver: every configuration runs in its own
 * process, in interleaved rounds, and the medians are printed with the
 * ratio lines/functions. With --mode it is one measurement (times are the
 * CPU time of the reporting thread):
 *   cold_ms   the first report (ELF symbol tables read, DWARF opened)
 *   warm_ms   the second (caches kept across reports are warm; lines are
 *             resolved again: each report resolves an address once)
 *   top_ms    a `top` report after those
 *   held_kb   heap (mallinfo2, arena and mmapped chunks) kept after the
 *             first report: the symbol cache and the open DWARF sessions
 *   est_kb    what the profiler counts of it (overhead_bytes): its check
 *             of the estimate its DWARF bound works with
 *   peak_kb   growth of the peak RSS during the reports (file pages of the
 *             debug sections read included)
 *
 *   sluice-bench-prof-lines [--runs 5] [--stacks 1000,10000]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <malloc.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sluice/profiling.h>

#define NF 64

/* CPU time of this thread: the reports run here, and the shared machine's
 * other work does not count (wall time varied 3x between rounds). */
static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The leaf allocates through an inlined helper: two Line entries. */
__attribute__((always_inline)) static inline void *make(size_t n) {
  char *p = malloc(n);
  if (p) p[0] = (char)n;
  return p;
}

__attribute__((noinline)) static void sink(void *p) {
  __asm__ __volatile__("" : : "r"(p) : "memory");
  free(p);
}

typedef void (*fn_t)(unsigned path, int depth);
static fn_t fns[NF];

/* Four call sites per function, chosen by two bits of the path. Macros that
 * define functions, laid out by hand. */
/* clang-format off */
#define DEF(i)                                                        \
  __attribute__((noinline)) static void f##i(unsigned path, int depth) { \
    if (depth == 0) {                                                 \
      sink(make(16 + (i)));                                           \
      return;                                                         \
    }                                                                 \
    switch (path & 3) {                                               \
      case 0:                                                         \
        fns[((i) * 7 + 1) % NF](path >> 2, depth - 1);                \
        break;                                                        \
      case 1:                                                         \
        fns[((i) * 11 + 3) % NF](path >> 2, depth - 1);               \
        break;                                                        \
      case 2:                                                         \
        fns[((i) * 13 + 5) % NF](path >> 2, depth - 1);               \
        break;                                                        \
      default:                                                        \
        fns[((i) * 17 + 9) % NF](path >> 2, depth - 1);               \
        break;                                                        \
    }                                                                 \
    __asm__ __volatile__("" ::: "memory"); /* no tail call */          \
  }
#define DEF8(a)                                                     \
  DEF(a##0) DEF(a##1) DEF(a##2) DEF(a##3) DEF(a##4) DEF(a##5) DEF(a##6) \
  DEF(a##7)
DEF8(0) DEF8(1) DEF8(2) DEF8(3) DEF8(4) DEF8(5) DEF8(6) DEF8(7)
/* clang-format on */
#define REF8(a) \
  f##a##0, f##a##1, f##a##2, f##a##3, f##a##4, f##a##5, f##a##6, f##a##7
    static fn_t fns[NF] = {REF8(0), REF8(1), REF8(2), REF8(3),
                           REF8(4), REF8(5), REF8(6), REF8(7)};

/* N distinct stacks: the first function and the path differ. */
__attribute__((noinline)) static void make_stacks(unsigned n) {
  int depth = 4;
  while ((1u << (2 * depth)) * NF < n) depth++;
  for (unsigned i = 0; i < n; i++) fns[i % NF](i / NF, depth);
}

static size_t written;
static int count_sink(const void *d, size_t n, void *user) {
  (void)user;
  (void)d;
  written += n;
  return 0;
}

static long maxrss_kb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

static int measure(const char *mode, unsigned stacks) {
  if (!strcmp(mode, "functions")) setenv("SLUICE_PROF_LINES", "0", 1);
  else if (strcmp(mode, "lines")) return 2;
  sluice_prof_opts o = {.sample_rate = 1};
  if (sluice_prof_start(&o)) return 1;
  make_stacks(stacks);
  sluice_prof_stop();
  sluice_prof_output pb = {.format = SLUICE_PROF_FMT_PPROF,
                           .value = SLUICE_PROF_ALLOC_SPACE};
  sluice_prof_output top = {.format = SLUICE_PROF_FMT_TOP,
                            .value = SLUICE_PROF_ALLOC_SPACE};
  sluice_prof_snapshot *s;
  if (sluice_prof_snapshot_take(&s)) return 1;
  struct mallinfo2 m0 = mallinfo2();
  sluice_prof_memstats ms0, ms1;
  sluice_prof_memstats_read(&ms0);
  long rss0 = maxrss_kb();
  double t0 = now();
  if (sluice_prof_write(s, &pb, count_sink, NULL)) return 1;
  double t1 = now();
  struct mallinfo2 m1 = mallinfo2();
  sluice_prof_memstats_read(&ms1);
  size_t bytes = written;
  if (sluice_prof_write(s, &pb, count_sink, NULL)) return 1;
  double t2 = now();
  if (sluice_prof_write(s, &top, count_sink, NULL)) return 1;
  double t3 = now();
  long rss1 = maxrss_kb();
  sluice_prof_snapshot_free(s);
  /* Heap in use: arena chunks and mmapped ones (big inflated sections). */
  double held =
      ((double)(m1.uordblks + m1.hblkhd) - (double)(m0.uordblks + m0.hblkhd)) /
      1024.0;
  double est = ((double)ms1.overhead_bytes - (double)ms0.overhead_bytes) /
               1024.0;
  printf("cold_ms=%.3f warm_ms=%.3f top_ms=%.3f held_kb=%.1f est_kb=%.1f "
         "peak_kb=%ld pprof_bytes=%zu\n",
         (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, held, est,
         rss1 - rss0, bytes);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Driver. */

extern char **environ;

enum { V_COLD, V_WARM, V_TOP, V_HELD, V_EST, V_PEAK, N_V };
static const char *const keys[N_V] = {
    "cold_ms=", "warm_ms=", "top_ms=", "held_kb=", "est_kb=", "peak_kb="};

/* Run argv; parse the values it printed into v. 0 on success. */
static int run_child(char *const argv[], double *v) {
  int fds[2];
  if (pipe(fds)) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc) {
    close(fds[0]);
    return -1;
  }
  char buf[4096];
  size_t len = 0;
  ssize_t r;
  while (len < sizeof buf - 1 &&
         (r = read(fds[0], buf + len, sizeof buf - 1 - len)) != 0) {
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    len += (size_t)r;
  }
  buf[len] = 0;
  close(fds[0]);
  int st;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st)) return -1;
  for (int k = 0; k < N_V; k++) {
    const char *p = strstr(buf, keys[k]);
    if (!p) return -1;
    v[k] = strtod(p + strlen(keys[k]), NULL);
  }
  return 0;
}

static int dcmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  if (!n) return -1;
  qsort(v, (size_t)n, sizeof *v, dcmp);
  return v[n / 2];
}

#define MAX_SIZES 4
#define MAX_RUNS 32

static int driver(int runs, const unsigned *sizes, int n_sizes) {
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 1;
  self[n] = 0;
  static const char *const modes[2] = {"functions", "lines"};
  static double v[MAX_SIZES][2][N_V][MAX_RUNS];
  int nv[MAX_SIZES][2] = {{0}};
  printf("symbolization at report time: pprof of N distinct stacks "
         "(64 functions x 4 call sites, an inlined leaf), rate 1; %d rounds, "
         "each running every configuration once (interleaved), medians\n",
         runs);
  fflush(stdout);
  for (int r = 0; r < runs; r++)
    for (int si = 0; si < n_sizes; si++)
      for (int m = 0; m < 2; m++) {
        char st[32];
        snprintf(st, sizeof st, "%u", sizes[si]);
        char *argv[] = {self, "--mode", (char *)modes[m], "--stacks", st, NULL};
        double x[N_V];
        if (run_child(argv, x)) continue;
        for (int k = 0; k < N_V; k++) v[si][m][k][nv[si][m]] = x[k];
        nv[si][m]++;
      }
  printf("%7s %-10s %9s %9s %9s %9s %9s %9s\n", "stacks", "names", "cold ms",
         "warm ms", "top ms", "held kB", "est kB", "peak kB");
  for (int si = 0; si < n_sizes; si++) {
    double med[2][N_V];
    for (int m = 0; m < 2; m++) {
      for (int k = 0; k < N_V; k++) med[m][k] = median(v[si][m][k], nv[si][m]);
      printf("%7u %-10s %9.2f %9.2f %9.2f %9.1f %9.1f %9.0f\n", sizes[si],
             modes[m], med[m][V_COLD], med[m][V_WARM], med[m][V_TOP],
             med[m][V_HELD], med[m][V_EST], med[m][V_PEAK]);
    }
    printf("%7u %-10s %8.2fx %8.2fx %8.2fx %+9.1f %+9.1f %+9.0f\n", sizes[si],
           "ratio/diff", med[1][V_COLD] / med[0][V_COLD],
           med[1][V_WARM] / med[0][V_WARM], med[1][V_TOP] / med[0][V_TOP],
           med[1][V_HELD] - med[0][V_HELD], med[1][V_EST] - med[0][V_EST],
           med[1][V_PEAK] - med[0][V_PEAK]);
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *mode = NULL;
  unsigned stacks = 1000, sizes[MAX_SIZES] = {1000, 10000};
  int runs = 5, n_sizes = 2;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--mode") && i + 1 < argc) {
      mode = argv[++i];
    } else if (!strcmp(argv[i], "--stacks") && i + 1 < argc) {
      char *p = argv[++i];
      n_sizes = 0;
      while (*p && n_sizes < MAX_SIZES) {
        sizes[n_sizes++] = (unsigned)strtoul(p, &p, 10);
        if (*p == ',') p++;
      }
      stacks = sizes[0];
    } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = atoi(argv[++i]);
    } else {
      fprintf(stderr,
              "usage: %s [--runs N] [--stacks N[,N...]] "
              "[--mode lines|functions]\n",
              argv[0]);
      return 2;
    }
  }
  if (mode) return measure(mode, stacks);
  if (runs < 1) runs = 1;
  if (runs > MAX_RUNS) runs = MAX_RUNS;
  return driver(runs, sizes, n_sizes);
}
