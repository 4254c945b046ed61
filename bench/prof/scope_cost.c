/* SPDX-License-Identifier: MIT */
/* The profiler's work per message without a broker: what the consumer does
 * around a handler (the delivery hooks' begin and end) and what the handler
 * of bench/prof/consume_prof.c does (two malloc/free pairs: a copy of a
 * 256 B body, a duplicated routing key), in a loop. Deterministic under
 * callgrind, so that a change to the scope or block code can be measured
 * by instructions per message:
 *
 *   valgrind --tool=callgrind --toggle-collect=one_message \
 *     build/bench/prof/sluice-bench-prof-scope-cost --mode default
 *   (instructions in one_message / --count)
 *
 *   sluice-bench-prof-scope-cost [--mode off|default|key] [--count N]
 *                                [--threads T]
 * Without callgrind it prints ns per message (noisy: never asserted).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sluice/profiling.h>

static const sluice_delivery_hooks *g_hooks;
static int g_key;
static unsigned long g_count = 100000;

static const char *const keys[] = {"probe", "push", "auth", "other"};

__attribute__((noinline)) static void one_message(unsigned long i,
                                                  const char *body) {
  sluice_delivery_info info = {.queue = "sluice.bench.prof.scope",
                               .delivery_tag = i + 1,
                               .seq = i + 1,
                               .body_len = 256};
  if (g_key) {
    info.key_name = "routing_key";
    info.key = keys[i & 3];
  }
  void *tok = g_hooks ? g_hooks->begin(g_hooks->user, &info) : NULL;
  char *copy = malloc(257);
  memcpy(copy, body, 256);
  copy[256] = 0;
  char *key = strdup(info.key ? info.key : "rk");
  volatile char sink = copy[0] ^ key[0];
  (void)sink;
  free(key);
  free(copy);
  if (g_hooks) g_hooks->end(g_hooks->user, tok, &info, SLUICE_ACK);
}

static void *run(void *arg) {
  (void)arg;
  char body[256];
  memset(body, 'x', sizeof body);
  for (unsigned long i = 0; i < g_count; i++) one_message(i, body);
  return NULL;
}

int main(int argc, char **argv) {
  const char *mode = "default";
  int threads = 1;
  static const struct option lo[] = {{"mode", 1, 0, 'm'},
                                     {"count", 1, 0, 'n'},
                                     {"threads", 1, 0, 't'},
                                     {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    if (ch == 'm') mode = optarg;
    else if (ch == 'n') g_count = strtoul(optarg, NULL, 10);
    else if (ch == 't') threads = atoi(optarg);
    else return 2;
  }
  if (strcmp(mode, "off")) {
    sluice_prof_opts po = {0};
    if (sluice_prof_start(&po)) return 1;
    g_hooks = sluice_prof_delivery_hooks();
    g_key = !strcmp(mode, "key");
  }
  if (threads < 1 || threads > 64) return 2;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pthread_t th[64];
  for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, run, NULL);
  for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 +
              (double)(t1.tv_nsec - t0.tv_nsec);
  printf("mode=%s messages=%lu ns_per_message=%.1f\n", mode,
         g_count * (unsigned long)threads, ns / (double)(g_count * threads));
  if (g_hooks) {
    sluice_prof_residual_stats st[8];
    size_t k = sluice_prof_residual_stats_get(st, 8);
    for (size_t i = 0; i < k && i < 8; i++)
      if (st[i].retained_bytes ||
          st[i].messages != g_count * threads / (g_key ? 4 : 1))
        fprintf(stderr, "unexpected: %s %s retained %llu messages %llu\n",
                st[i].queue, st[i].key,
                (unsigned long long)st[i].retained_bytes,
                (unsigned long long)st[i].messages);
  }
  return 0;
}
