/* SPDX-License-Identifier: MIT */
/* sluice-bench-reconnect crash: time to the first delivery after a broker
 * crash, on node 3 of the test cluster (scripts/cluster.sh start).
 *
 * Each round fills a durable classic queue on node 3 with persistent
 * messages, consumes it with a consumer that knows only node 3 (default
 * backoff: 100 ms .. 30 s), kill -9s the node half-way, starts it again with
 * the script, and measures the kill -> node accepting TCP -> first delivery
 * on the new connection. Rounds alternate between the default (a node that
 * refuses is probed every ~250 ms) and refused_probe_ms = UINT32_MAX (plain
 * backoff), so both see the same machine; medians per variant. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>

#include "cl_stream.h"
#include "cluster_util.h"
#include "crash.h"

#define NODE 3
#define N_MSGS 2000

struct round {
  uint64_t accept_ms, first_ms, after_accept_ms; /* after the kill */
  unsigned attempts;
  int ok;
};

struct watch {
  uint64_t accepting_ms;
};

static void *watch_port(void *arg) {
  struct watch *w = arg;
  uint64_t end = cl_now_ms() + 180000;
  while (cl_now_ms() < end) {
    if (cl_node_up(NODE)) {
      w->accepting_ms = cl_now_ms();
      return NULL;
    }
    /* no event says "the port listens again": poll, 5 ms */
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static struct round one_round(int k, int probe) {
  struct round r = {0};
  char q[96];
  snprintf(q, sizeof(q), "sluice.bench.crash.%ld.%d", (long)getpid(), k);
  sluice_queue_decl d = {.name = q, .durable = 1};
  sluice_publisher_opts po = {.uri = cl_uri(NODE)};
  sluice_publisher *p = NULL;
  if (sluice_publisher_new(&po, &p) != 0) return r;
  sluice_publisher_delete_queue(p, q, NULL);
  int rc = sluice_publisher_declare_queue(p, &d);
  sluice_publisher_free(p);
  if (rc || cl_fill(cl_uri(NODE), q, 0, N_MSGS, 64) != 0) return r;

  cl_stream *s = cl_stream_new(q, N_MSGS);
  atomic_store(&s->stop_at_distinct, N_MSGS);
  sluice_consumer_opts o = {
      .uri = cl_uri(NODE),
      .connection_name = "bench crash",
      .reconnect = {.enabled = 1,
                    .max_attempts = UINT32_MAX,
                    .refused_probe_ms = probe ? 0 : UINT32_MAX},
  };
  if (!cl_stream_consumer(s, &o)) {
    cl_stream_free(s);
    return r;
  }
  sluice_consumer_declare_queue(s->c, &d);
  cl_stream_start(s);
  int ok = cl_wait_distinct(s, N_MSGS / 2, 60) == 0;
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  atomic_store(&s->after_gen, st.generation);
  unsigned reconnecting = atomic_load(&s->events[SLUICE_EV_RECONNECTING]);
  uint64_t t_kill = cl_now_ms();
  ok = ok && cl_kill(NODE) == 0;
  struct watch w = {0};
  pthread_t t;
  pthread_create(&t, NULL, watch_port, &w);
  ok = ok && cl_start() == 0;
  pthread_join(t, NULL);
  ok = ok && w.accepting_ms && cl_wait_first_after(s, 120) == 0;
  int to = 0;
  rc = cl_stream_join(s, 120, &to);
  uint64_t first = atomic_load(&s->first_after_ms);
  if (ok && !rc && !to && first) {
    r.ok = 1;
    r.accept_ms = w.accepting_ms - t_kill;
    r.first_ms = first - t_kill;
    r.after_accept_ms = first > w.accepting_ms ? first - w.accepting_ms : 0;
    r.attempts = atomic_load(&s->events[SLUICE_EV_RECONNECTING]) - reconnecting;
  }
  cl_stream_free(s);
  p = NULL;
  if (sluice_publisher_new(&po, &p) == 0) {
    sluice_publisher_delete_queue(p, q, NULL);
    sluice_publisher_free(p);
  }
  return r;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n) {
  qsort(v, (size_t)n, sizeof(*v), cmp_u64);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int bench_crash(int rounds) {
  cl_require("sluice-bench-reconnect crash", 900);
  uint64_t acc[2][32], first[2][32], after[2][32];
  int n[2] = {0, 0};
  printf("crash: %d rounds per variant on %s, %d persistent messages, kill "
         "-9 half-way\n",
         rounds, cl_name(NODE), N_MSGS);
  for (int k = 0; k < 2 * rounds; k++) {
    int probe = k % 2 == 0;
    struct round r = one_round(k, probe);
    printf("  round %2d %-13s: %s accepting after %6llu ms, first delivery "
           "after %6llu ms (%4llu ms after accepting), %u attempts\n",
           k / 2 + 1, probe ? "probe 250 ms" : "backoff only",
           r.ok ? "node" : "FAILED", (unsigned long long)r.accept_ms,
           (unsigned long long)r.first_ms,
           (unsigned long long)r.after_accept_ms, r.attempts);
    if (!r.ok) return 1;
    int v = probe ? 0 : 1;
    acc[v][n[v]] = r.accept_ms;
    first[v][n[v]] = r.first_ms;
    after[v][n[v]] = r.after_accept_ms;
    n[v]++;
  }
  for (int v = 0; v < 2; v++)
    printf("median %-13s: node accepting %llu ms after the kill, first "
           "delivery %llu ms after the kill, %llu ms after accepting\n",
           v == 0 ? "probe 250 ms" : "backoff only",
           (unsigned long long)median(acc[v], n[v]),
           (unsigned long long)median(first[v], n[v]),
           (unsigned long long)median(after[v], n[v]));
  return 0;
}
