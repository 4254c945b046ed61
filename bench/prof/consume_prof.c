/* SPDX-License-Identifier: MIT */
/* Consume throughput with the allocation profiler on, against the same
 * consumer with it off, in the same run, on the same broker. Every delivery
 * runs in a scope (sluice_prof_delivery_hooks); the handler does what a
 * handler does: copies the body, duplicates a field, frees both.
 *
 *   sluice-bench-prof-consume [--count N] [--size B] [--rounds R]
 *                             [--leak B] [--modes off,default,...]
 *
 * Configurations (each in its own process, rounds interleaved):
 *   off         libsluice_prof loaded, never started, no hooks
 *   default     started at the default rate (512 KiB), hooks on: a scope
 *               per delivery, groups, growth curves, the background thread
 *   key         default, and the subscription names a key (the routing
 *               key): the key's value read per delivery and its group
 *               looked up
 *   key-noadapt key, with adaptive stacks off (adaptive_messages -1)
 *   rate1       every allocation with its stack, hooks on: what a message
 *               captured by the adaptive stacks costs
 * Default modes: off,default,key,rate1.
 *
 * --leak B: the handler also keeps B bytes per message (in every mode, off
 * included), so that the group turns GROWING and the adaptive stacks
 * capture the next adaptive_messages (1000) messages of its kind; with a
 * clean handler (the default) they never fire. Each profiled child then
 * prints its group's state and the stacks recorded on stderr.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sluice/profiling.h>
#include <sluice/sluice.h>

#include "../common/bench_util.h"

static const char *URI = "amqp://guest:guest@127.0.0.1:5672/";
static const char *QUEUE = "sluice.bench.prof.consume";

static sluice_consumer *g_c;
static unsigned long g_n;
static atomic_ulong g_got;
static size_t g_leak;

__attribute__((noinline)) static int handler(sluice_delivery *d,
                                             const sluice_message *m, void *u) {
  (void)d;
  (void)u;
  char *copy = malloc(m->body_len + 1);
  memcpy(copy, m->body, m->body_len);
  copy[m->body_len] = 0;
  char *key = strdup(m->routing_key ? m->routing_key : "");
  volatile char sink = copy[0] ^ key[0];
  (void)sink;
  free(key);
  free(copy);
  if (g_leak) { /* kept until the process exits */
    char *kept = malloc(g_leak);
    kept[0] = sink;
  }
  if (atomic_fetch_add_explicit(&g_got, 1, memory_order_relaxed) + 1 == g_n)
    sluice_consumer_stop(g_c);
  return SLUICE_ACK;
}

static int child(const char *mode, unsigned long n) {
  sluice_consumer_opts o = {.uri = URI, .prefetch = 100};
  int prof = strcmp(mode, "off") != 0;
  if (prof) {
    sluice_prof_opts po = {0};
    if (!strcmp(mode, "rate1")) po.sample_rate = 1;
    if (!strcmp(mode, "key-noadapt")) po.adaptive_messages = -1;
    if (sluice_prof_start(&po)) return 1;
    o.hooks = sluice_prof_delivery_hooks();
  }
  g_n = n;
  if (sluice_consumer_new(&o, &g_c)) return 1;
  sluice_subscribe_opts so = {.queue = QUEUE, .handler = handler};
  if (!strncmp(mode, "key", 3)) so.key = "routing_key";
  if (sluice_consumer_subscribe(g_c, &so) || sluice_consumer_connect(g_c))
    return 1;
  double t0 = bu_now(), c0 = bu_cpu();
  int rc = sluice_consumer_run(g_c);
  double t1 = bu_now(), c1 = bu_cpu();
  if (rc || atomic_load(&g_got) != n) return 1;
  sluice_consumer_free(g_c);
  printf("rate=%.1f cpu_us=%.3f\n", n / (t1 - t0), (c1 - c0) * 1e6 / n);
  if (prof && g_leak) { /* did the adaptive stacks have a reason to fire? */
    sluice_prof_residual_stats st[4];
    size_t k = sluice_prof_residual_stats_get(st, 4);
    sluice_prof_memstats ms;
    sluice_prof_memstats_read(&ms);
    for (size_t i = 0; i < k && i < 4; i++)
      fprintf(stderr, "%s: %s %s %.1f B/message, %llu stacks\n", mode,
              st[i].queue, sluice_prof_state_name(st[i].state),
              st[i].bytes_per_message, (unsigned long long)ms.stacks);
  }
  return 0;
}

extern char **environ;

static int run_child(const char *self, const char *mode, unsigned long n,
                     double *rate, double *cpu) {
  char nb[32], lb[32];
  snprintf(nb, sizeof nb, "%lu", n);
  snprintf(lb, sizeof lb, "%zu", g_leak);
  char *argv[] = {(char *)self, "--mode", (char *)mode, "--count",
                  nb,           "--leak", lb,           NULL};
  int fds[2];
  if (pipe(fds)) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  pid_t pid;
  int rc = posix_spawn(&pid, self, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc) {
    close(fds[0]);
    return -1;
  }
  char buf[256];
  size_t len = 0;
  ssize_t r;
  while ((r = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0 ||
         (r < 0 && errno == EINTR))
    if (r > 0) len += (size_t)r;
  buf[len] = 0;
  close(fds[0]);
  int st;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st)) return -1;
  return sscanf(buf, "rate=%lf cpu_us=%lf", rate, cpu) == 2 ? 0 : -1;
}

static int dcmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int k) {
  qsort(v, (size_t)k, sizeof(double), dcmp);
  return k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}

int main(int argc, char **argv) {
  unsigned long n = 100000;
  size_t size = 256;
  int rounds = 3;
  const char *mode = NULL;
  char modes_arg[256] = "off,default,key,rate1";
  static struct option lo[] = {{"count", 1, 0, 'n'},  {"size", 1, 0, 's'},
                               {"rounds", 1, 0, 'r'}, {"mode", 1, 0, 'm'},
                               {"leak", 1, 0, 'l'},   {"modes", 1, 0, 'M'},
                               {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "n:s:r:m:l:M:", lo, NULL)) != -1) {
    if (ch == 'n') n = strtoul(optarg, NULL, 10);
    else if (ch == 's') size = strtoul(optarg, NULL, 10);
    else if (ch == 'r') rounds = atoi(optarg);
    else if (ch == 'm') mode = optarg;
    else if (ch == 'l') g_leak = strtoul(optarg, NULL, 10);
    else if (ch == 'M') snprintf(modes_arg, sizeof modes_arg, "%s", optarg);
    else return 2;
  }
  if (mode && !strcmp(mode, "fill")) { /* for perf: fill, then --mode X */
    bu_fill(URI, QUEUE, n, size);
    return 0;
  }
  if (mode) return child(mode, n);

  char self[4096];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sl <= 0) return 1;
  self[sl] = 0;
  enum { MAXM = 8 };
  const char *modes[MAXM];
  int M = 0;
  for (char *sv, *t = strtok_r(modes_arg, ",", &sv); t && M < MAXM;
       t = strtok_r(NULL, ",", &sv)) {
    if (strcmp(t, "off") && strcmp(t, "default") && strcmp(t, "key") &&
        strcmp(t, "key-noadapt") && strcmp(t, "rate1")) {
      fprintf(stderr, "unknown mode %s\n", t);
      return 2;
    }
    modes[M++] = t;
  }
  if (rounds > 16) rounds = 16;
  double rate[MAXM][16], cpu[MAXM][16];
  printf("consume with the profiler: %lu x %zu B, prefetch 100, ack each, "
         "handler keeps %zu B/message; %d interleaved rounds (order rotated "
         "each round), medians; ratios against %s, also per round\n",
         n, size, g_leak, rounds, modes[0]);
  fflush(stdout);
  for (int r = 0; r < rounds; r++) {
    for (int j = 0; j < M; j++) {
      int i = (j + r) % M;
      double x = 0, c = 0;
      int ok = 0;
      for (int attempt = 0; attempt < 3 && !ok; attempt++) {
        if (attempt) { /* the shared broker may be restarting */
          fprintf(stderr, "%s: run failed, again\n", modes[i]);
          sleep(5);
        }
        bu_fill(URI, QUEUE, n, size);
        ok = run_child(self, modes[i], n, &x, &c) == 0;
      }
      rate[i][r] = ok ? x : 0;
      cpu[i][r] = ok ? c : 0;
    }
    printf("round %d:", r + 1);
    for (int i = 0; i < M; i++)
      printf(" %s %.0f msg/s %.2f us", modes[i], rate[i][r], cpu[i][r]);
    printf("\n");
    fflush(stdout);
  }
  printf("%-12s %10s %8s %12s %8s %14s\n", "profiler", "msg/s", "ratio",
         "CPU us/msg", "ratio", "CPU per round");
  for (int i = 0; i < M; i++) {
    /* Medians over the rounds where both this mode and the first ran. */
    double x[16], c[16], bx[16], bc[16], rr[16];
    int k = 0;
    for (int r = 0; r < rounds; r++)
      if (rate[i][r] > 0 && rate[0][r] > 0) {
        x[k] = rate[i][r];
        c[k] = cpu[i][r];
        bx[k] = rate[0][r];
        bc[k] = cpu[0][r];
        rr[k] = cpu[i][r] / cpu[0][r];
        k++;
      }
    if (!k) continue;
    double mx = median(x, k), mc = median(c, k);
    printf("%-12s %10.0f %7.2fx %12.2f %7.2fx %13.2fx\n", modes[i], mx,
           mx / median(bx, k), mc, mc / median(bc, k), median(rr, k));
  }
  return 0;
}
