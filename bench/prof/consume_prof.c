/* SPDX-License-Identifier: MIT */
/* Consume throughput with the allocation profiler on, against the same
 * consumer with it off, in the same run, on the same broker. Every delivery
 * runs in a scope (sluice_prof_delivery_hooks); the handler does what a
 * handler does: copies the body, duplicates a field, frees both.
 *
 *   sluice-bench-prof-consume [--count N] [--size B] [--rounds R]
 *
 * Configurations (each in its own process, rounds interleaved):
 *   off       libsluice_prof loaded, never started, no hooks
 *   default   started at the default rate (512 KiB), hooks on: a scope per
 *             delivery, groups, growth curves, the background thread
 *   key       default, and the subscription names a key (the routing key):
 *             the key's value read per delivery and its group looked up
 *   rate1     every allocation with its stack, hooks on: what a message
 *             captured by the adaptive stacks costs
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
  if (atomic_fetch_add_explicit(&g_got, 1, memory_order_relaxed) + 1 == g_n)
    sluice_consumer_stop(g_c);
  return SLUICE_ACK;
}

static int child(const char *mode, unsigned long n) {
  sluice_consumer_opts o = {.uri = URI, .prefetch = 100};
  if (strcmp(mode, "off")) {
    sluice_prof_opts po = {0};
    if (!strcmp(mode, "rate1")) po.sample_rate = 1;
    if (sluice_prof_start(&po)) return 1;
    o.hooks = sluice_prof_delivery_hooks();
  }
  g_n = n;
  if (sluice_consumer_new(&o, &g_c)) return 1;
  sluice_subscribe_opts so = {.queue = QUEUE, .handler = handler};
  if (!strcmp(mode, "key")) so.key = "routing_key";
  if (sluice_consumer_subscribe(g_c, &so) || sluice_consumer_connect(g_c))
    return 1;
  double t0 = bu_now(), c0 = bu_cpu();
  int rc = sluice_consumer_run(g_c);
  double t1 = bu_now(), c1 = bu_cpu();
  if (rc || atomic_load(&g_got) != n) return 1;
  sluice_consumer_free(g_c);
  printf("rate=%.1f cpu_us=%.3f\n", n / (t1 - t0), (c1 - c0) * 1e6 / n);
  return 0;
}

extern char **environ;

static int run_child(const char *self, const char *mode, unsigned long n,
                     double *rate, double *cpu) {
  char nb[32];
  snprintf(nb, sizeof nb, "%lu", n);
  char *argv[] = {(char *)self, "--mode", (char *)mode, "--count", nb, NULL};
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

int main(int argc, char **argv) {
  unsigned long n = 100000;
  size_t size = 256;
  int rounds = 3;
  const char *mode = NULL;
  static struct option lo[] = {{"count", 1, 0, 'n'},
                               {"size", 1, 0, 's'},
                               {"rounds", 1, 0, 'r'},
                               {"mode", 1, 0, 'm'},
                               {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "n:s:r:m:", lo, NULL)) != -1) {
    if (ch == 'n') n = strtoul(optarg, NULL, 10);
    else if (ch == 's') size = strtoul(optarg, NULL, 10);
    else if (ch == 'r') rounds = atoi(optarg);
    else if (ch == 'm') mode = optarg;
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
  const char *modes[] = {"off", "default", "key", "rate1"};
  enum { M = 4 };
  if (rounds > 16) rounds = 16;
  double rate[M][16], cpu[M][16];
  int k[M] = {0};
  printf("consume with the profiler: %lu x %zu B, prefetch 100, ack each; "
         "%d interleaved rounds, median\n",
         n, size, rounds);
  fflush(stdout);
  for (int r = 0; r < rounds; r++)
    for (int i = 0; i < M; i++) {
      bu_fill(URI, QUEUE, n, size);
      double x, c;
      if (run_child(self, modes[i], n, &x, &c) == 0) {
        rate[i][k[i]] = x;
        cpu[i][k[i]] = c;
        k[i]++;
      } else {
        fprintf(stderr, "%s: run failed\n", modes[i]);
      }
    }
  double base = 0, base_cpu = 0;
  printf("%-10s %12s %8s %14s %8s\n", "profiler", "msg/s", "ratio",
         "CPU us/msg", "ratio");
  for (int i = 0; i < M; i++) {
    if (!k[i]) continue;
    qsort(rate[i], (size_t)k[i], sizeof(double), dcmp);
    qsort(cpu[i], (size_t)k[i], sizeof(double), dcmp);
    double x = rate[i][k[i] / 2], c = cpu[i][k[i] / 2];
    if (i == 0) {
      base = x;
      base_cpu = c;
    }
    printf("%-10s %12.0f %7.2fx %14.2f %7.2fx\n", modes[i], x,
           base ? x / base : 0, c, base_cpu ? c / base_cpu : 0);
  }
  return 0;
}
