/* SPDX-License-Identifier: MIT */
/* Reconnect figures, against the broker on 127.0.0.1:5672 through the
 * loopback fault proxy of the tests (tests/common/proxy.c):
 *
 *   latency  time from the proxy accepting connections again to the first
 *            delivery handled on the new connection, median of N cuts
 *            (target: under 1.5 x min_delay_ms + one round trip)
 *   memory   heap and listener count after 100 and after N reconnect cycles
 *            (target: equal within 1%)
 *   crash    on the test cluster instead (scripts/cluster.sh): kill -9 of a
 *            node and restart, time to the first delivery after the node
 *            accepts again, probing refused nodes vs backoff only (crash.c)
 *
 * Usage: sluice-bench-reconnect [latency|memory|all] [cuts=20] [cycles=10000]
 *                               [min_delay_ms=100]
 *        sluice-bench-reconnect crash [rounds=5]
 *
 * One message circulates: the handler defers it and never completes it on
 * its own connection; after the cut the broker redelivers it on the next
 * one, and the stale handle is completed then (SLUICE_ESTALE). So every
 * cycle also goes through a delivery, a deferral and a stale completion. */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>

#include "../common/bench_util.h"
#include "crash.h"
#include "proxy.h"

#define BROKER "amqp://guest:guest@127.0.0.1:5672/"
/* latency mode: reset_after_ms, and how long each connection lives before
 * the next cut */
#define STABLE_MS 20

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static size_t heap_in_use(void) {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd; /* arena chunks + mmapped ones */
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double median_ms(uint64_t *us, int n) {
  qsort(us, (size_t)n, sizeof(*us), cmp_u64);
  return n % 2 ? us[n / 2] / 1000.0 : (us[n / 2 - 1] + us[n / 2]) / 2000.0;
}

struct state {
  sluice_consumer *c;
  tproxy *p;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* loop thread writes, others read under mu */
  unsigned closed, reconnecting, connected, deliveries;
  uint64_t reconnecting_us, delay_ms; /* last RECONNECTING event */
  uint64_t delivery_us;               /* last first-delivery-of-a-connection */
  uint64_t last_gen;
  sluice_delivery *held; /* the deferred delivery of the live connection */
  unsigned stale_ok, stale_bad;
  /* memory mode */
  int cut_on_delivery;
  unsigned target;
  size_t heap[4];
  long rss[4];
  size_t listeners[4];
  unsigned refused;
};

static void signal_state(struct state *s) {
  pthread_cond_broadcast(&s->cv);
}

static int handler(sluice_delivery *d, const sluice_message *m, void *user) {
  struct state *s = user;
  pthread_mutex_lock(&s->mu);
  if (m->generation != s->last_gen) {
    s->last_gen = m->generation;
    s->delivery_us = now_us();
    s->deliveries++;
  }
  s->held = d;
  signal_state(s);
  int cut = s->cut_on_delivery && s->connected < s->target;
  pthread_mutex_unlock(&s->mu);
  if (cut) tproxy_cut(s->p);
  return SLUICE_DEFER;
}

static void bench_listener(sluice_consumer *c, const sluice_event *ev,
                           void *user) {}

static void on_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  struct state *s = user;
  pthread_mutex_lock(&s->mu);
  switch (ev->type) {
    case SLUICE_EV_CLOSED: s->closed++; break;
    case SLUICE_EV_RECONNECTING:
      s->reconnecting++;
      s->reconnecting_us = now_us();
      s->delay_ms = ev->delay_ms;
      break;
    case SLUICE_EV_CONNECTED: {
      s->connected++;
      if (s->held) {
        /* the previous connection's deferred delivery, completed late */
        int rc = sluice_delivery_done(s->held, SLUICE_ACK);
        if (rc == SLUICE_ESTALE) s->stale_ok++;
        else s->stale_bad++;
        s->held = NULL;
      }
      if (s->target) {
        /* what the field failure did: a listener on every connection */
        sluice_listener h;
        if (sluice_consumer_on_close(c, bench_listener, s,
                                     SLUICE_LISTEN_GENERATION, &h) != 0)
          s->refused++;
        static const unsigned at[4] = {1, 100, 1000, 0};
        for (int i = 0; i < 4; i++) {
          unsigned when = at[i] ? at[i] : s->target;
          if (s->connected == when) {
            s->heap[i] = heap_in_use();
            s->rss[i] = bu_rss_kib();
            s->listeners[i] = sluice_consumer_close_listener_count(c);
          }
        }
        if (s->connected >= s->target) sluice_consumer_stop(c);
      }
      break;
    }
    default: break;
  }
  signal_state(s);
  pthread_mutex_unlock(&s->mu);
}

static sluice_consumer *make_consumer(struct state *s, const char *queue,
                                      unsigned min_delay_ms) {
  char uri[128];
  sluice_consumer_opts o = {
      .uri = tproxy_uri(s->p, uri, sizeof(uri)),
      .prefetch = 1,
      .on_event = on_event,
      .event_user = s,
      .log_level = SLUICE_LOG_ERROR,
      .reconnect = {.enabled = 1,
                    .min_delay_ms = min_delay_ms,
                    .max_delay_ms = min_delay_ms > 2 ? 30000 : 2,
                    .max_attempts = UINT32_MAX,
                    /* Each cut here follows a connection that stayed up
                     * STABLE_MS: a first outage after a stable period, so
                     * the delay starts from min_delay_ms. With the default
                     * (10 s) a cut every few ms is a flapping link, and the
                     * delay grows towards max_delay_ms instead (by
                     * design). */
                    .reset_after_ms = STABLE_MS},
  };
  sluice_consumer *c = NULL;
  int rc = sluice_consumer_new(&o, &c);
  sluice_subscribe_opts so = {.queue = queue, .handler = handler, .user = s};
  if (rc == 0) rc = sluice_consumer_subscribe(c, &so);
  if (rc) {
    fprintf(stderr, "consumer: %s\n", sluice_strerror(rc));
    exit(1);
  }
  return c;
}

/* Wait until `*v >= want` (under s->mu), at most 30 s. */
static int wait_for(struct state *s, unsigned *v, unsigned want) {
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 30;
  while (*v < want)
    if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) != 0) return -1;
  return 0;
}

struct run_arg {
  sluice_consumer *c;
  int rc;
};

static void *run_thread(void *arg) {
  struct run_arg *a = arg;
  a->rc = sluice_consumer_run(a->c);
  return NULL;
}

/* One AMQP round trip through the proxy (queue.declare passive). */
static double rtt_ms(tproxy *p, const char *queue) {
  char uri[128];
  sluice_publisher_opts po = {.uri = tproxy_uri(p, uri, sizeof(uri))};
  sluice_publisher *pub = NULL;
  if (sluice_publisher_new(&po, &pub) != 0) return -1;
  uint64_t us[50];
  for (int i = 0; i < 50; i++) {
    uint64_t t = now_us();
    uint32_t m;
    sluice_publisher_queue_depth(pub, queue, &m, NULL);
    us[i] = now_us() - t;
  }
  sluice_publisher_free(pub);
  return median_ms(us, 50);
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int bench_latency(const char *queue, int cuts, unsigned min_ms) {
  struct state s = {0};
  pthread_mutex_init(&s.mu, NULL);
  pthread_cond_init(&s.cv, NULL);
  if (tproxy_start(5672, &s.p) != 0) return 1;
  double rtt = rtt_ms(s.p, queue);
  s.c = make_consumer(&s, queue, min_ms);
  struct run_arg ra = {s.c, 0};
  pthread_t th;
  pthread_create(&th, NULL, run_thread, &ra);

  uint64_t total[64], wait[64], cost[64], delay[64], direct[64];
  int done = 0, bad = 0;
  pthread_mutex_lock(&s.mu);
  if (wait_for(&s, &s.deliveries, 1) != 0) bad = 1;
  for (int i = 0; i < cuts && i < 64 && !bad; i++) {
    /* A: the node stops accepting, the link drops, one attempt is refused,
     * then the node accepts again: measure from that moment. */
    unsigned closed = s.closed, rec = s.reconnecting, del = s.deliveries;
    pthread_mutex_unlock(&s.mu);
    sleep_ms(STABLE_MS + 5); /* the connection has been up a while */
    tproxy_refuse(s.p, 1);
    tproxy_cut(s.p);
    pthread_mutex_lock(&s.mu);
    if (wait_for(&s, &s.closed, closed + 1) ||
        wait_for(&s, &s.reconnecting, rec + 2)) {
      bad = 1;
      break;
    }
    uint64_t next_attempt = s.reconnecting_us + s.delay_ms * 1000u;
    delay[i] = s.delay_ms * 1000u;
    pthread_mutex_unlock(&s.mu);
    uint64_t t0 = now_us();
    tproxy_refuse(s.p, 0);
    pthread_mutex_lock(&s.mu);
    if (wait_for(&s, &s.deliveries, del + 1)) {
      bad = 1;
      break;
    }
    total[i] = s.delivery_us - t0;
    wait[i] = next_attempt > t0 ? next_attempt - t0 : 0;
    cost[i] = s.delivery_us - (next_attempt > t0 ? next_attempt : t0);

    /* B: a plain cut, the node never stops accepting: the first attempt
     * comes after exactly min_delay_ms. */
    closed = s.closed;
    del = s.deliveries;
    pthread_mutex_unlock(&s.mu);
    sleep_ms(STABLE_MS + 5);
    uint64_t tc = now_us();
    tproxy_cut(s.p);
    pthread_mutex_lock(&s.mu);
    if (wait_for(&s, &s.closed, closed + 1) ||
        wait_for(&s, &s.deliveries, del + 1)) {
      bad = 1;
      break;
    }
    direct[i] = s.delivery_us - tc;
    done++;
  }
  pthread_mutex_unlock(&s.mu);
  sluice_consumer_stop(s.c);
  pthread_join(th, NULL);
  if (bad) fprintf(stderr, "latency: timed out after %d cuts\n", done);
  if (done == 0) return 1;
  double m_total = median_ms(total, done), m_wait = median_ms(wait, done),
         m_cost = median_ms(cost, done), m_delay = median_ms(delay, done),
         m_direct = median_ms(direct, done);
  double target = 1.5 * min_ms + rtt;
  printf("latency (min_delay_ms %u, %d cuts, one round trip through the "
         "proxy %.2f ms):\n",
         min_ms, done, rtt);
  printf("  A. refused once, then accepting: accept -> first delivery handled"
         "  median %.1f ms (min %.1f, max %.1f)\n",
         m_total, total[0] / 1000.0, total[done - 1] / 1000.0);
  printf("       of which: rest of the backoff delay %.1f ms (the delay drawn "
         "was %.1f ms), reconnect + recovery + first delivery %.1f ms\n",
         m_wait, m_delay, m_cost);
  printf("       target 1.5 x %u + %.2f = %.1f ms: %s\n", min_ms, rtt, target,
         m_total < target ? "met" : "NOT met");
  printf("  B. cut, never refusing: cut -> first delivery handled median "
         "%.1f ms (min_delay_ms %u + reconnect)\n",
         m_direct, min_ms);
  printf("  stale completions of the deferred delivery: %u (SLUICE_ESTALE), "
         "%u otherwise\n",
         s.stale_ok, s.stale_bad);
  sluice_consumer_free(s.c);
  tproxy_free(s.p);
  pthread_mutex_destroy(&s.mu);
  pthread_cond_destroy(&s.cv);
  return bad;
}

static int bench_memory(const char *queue, unsigned cycles) {
  struct state s = {.cut_on_delivery = 1, .target = cycles};
  pthread_mutex_init(&s.mu, NULL);
  pthread_cond_init(&s.cv, NULL);
  if (tproxy_start(5672, &s.p) != 0) return 1;
  s.c = make_consumer(&s, queue, 1);
  double t0 = bu_now();
  struct run_arg ra = {s.c, 0};
  pthread_t th;
  pthread_create(&th, NULL, run_thread, &ra);
  /* progress watchdog: a cycle that takes 30 s means something is wrong
   * (the broker restarted under us and lost the message, say) */
  pthread_mutex_lock(&s.mu);
  int stuck = 0;
  while (s.connected < s.target && !stuck) {
    unsigned seen = s.connected + s.deliveries;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 30;
    while (s.connected + s.deliveries == seen && s.connected < s.target)
      if (pthread_cond_timedwait(&s.cv, &s.mu, &dl) != 0) {
        stuck = 1;
        break;
      }
  }
  pthread_mutex_unlock(&s.mu);
  if (stuck) {
    fprintf(stderr, "memory: no progress for 30 s after %u cycles\n",
            s.connected);
    sluice_consumer_stop(s.c);
  }
  pthread_join(th, NULL);
  int rc = ra.rc;
  double el = bu_now() - t0;
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s.c, &st);
  printf("memory (%u reconnect cycles through the proxy, backoff 1-2 ms, "
         "each with a delivery deferred and completed stale): run() = %d, "
         "%.1f s, %.2f ms per cycle\n",
         s.connected, rc, el, el * 1000.0 / s.connected);
  static const char *names[4] = {"cycle 1", "cycle 100", "cycle 1000",
                                 "last cycle"};
  for (int i = 0; i < 4; i++)
    printf("  %-11s heap in use %8zu B (mallinfo2 uordblks+hblkhd), RSS %6ld "
           "KiB, close listeners %zu\n",
           names[i], s.heap[i], s.rss[i], s.listeners[i]);
  double pct = s.heap[1] ? 100.0 * ((double)s.heap[3] - (double)s.heap[1]) /
                               (double)s.heap[1]
                         : 0;
  printf("  heap: last cycle vs cycle 100: %+lld B (%+.3f%%), target within "
         "1%%: %s\n",
         (long long)s.heap[3] - (long long)s.heap[1], pct,
         !stuck && pct < 1.0 && pct > -1.0 ? "met" : "NOT met");
  printf("  listeners: %zu after cycle 1, %zu after the last; %u "
         "registrations refused; %llu reconnects; %u stale completions "
         "(SLUICE_ESTALE), %u otherwise; %llu stale counted\n",
         s.listeners[0], s.listeners[3], s.refused,
         (unsigned long long)st.reconnects, s.stale_ok, s.stale_bad,
         (unsigned long long)st.stale);
  sluice_consumer_free(s.c);
  tproxy_free(s.p);
  pthread_mutex_destroy(&s.mu);
  pthread_cond_destroy(&s.cv);
  return stuck || rc != 0 || s.stale_bad != 0;
}

/* One persistent message on a durable queue: it survives a broker restart
 * (another suite's stop_app) while it goes round. */
static void fill_one(const char *queue) {
  sluice_publisher_opts po = {.uri = BROKER, .connection_name = "bench fill"};
  sluice_publisher *p = NULL;
  sluice_queue_decl q = {.name = queue, .durable = 1};
  int rc = sluice_publisher_new(&po, &p);
  if (!rc) {
    sluice_publisher_delete_queue(p, queue, NULL);
    rc = sluice_publisher_declare_queue(p, &q);
  }
  if (!rc)
    rc = sluice_publisher_publish(p, "", queue, "0", 1, NULL); /* persistent */
  if (!rc) rc = sluice_publisher_wait(p, NULL);
  sluice_publisher_free(p);
  if (rc) {
    fprintf(stderr, "fill: %s\n", sluice_strerror(rc));
    exit(1);
  }
}

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "all";
  if (!strcmp(what, "crash")) {
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (rounds < 1 || rounds > 32) {
      fprintf(stderr, "usage: %s crash [rounds 1..32]\n", argv[0]);
      return 2;
    }
    return bench_crash(rounds);
  }
  int cuts = argc > 2 ? atoi(argv[2]) : 20;
  unsigned cycles = argc > 3 ? (unsigned)atoi(argv[3]) : 10000;
  unsigned min_ms = argc > 4 ? (unsigned)atoi(argv[4]) : 100;
  if (cuts < 1 || cuts > 64 || cycles < 1000 || min_ms < 1) {
    fprintf(stderr,
            "usage: %s [latency|memory|all] [cuts 1..64] [cycles >= 1000] "
            "[min_delay_ms]\n",
            argv[0]);
    return 2;
  }
  char queue[64];
  snprintf(queue, sizeof(queue), "sluice.bench.reconnect.%ld", (long)getpid());
  fill_one(queue); /* one message goes round and round */
  int rc = 0;
  if (!strcmp(what, "latency") || !strcmp(what, "all"))
    rc |= bench_latency(queue, cuts, min_ms);
  if (!strcmp(what, "memory") || !strcmp(what, "all"))
    rc |= bench_memory(queue, cycles);
  sluice_publisher_opts po = {.uri = BROKER};
  sluice_publisher *p = NULL;
  if (sluice_publisher_new(&po, &p) == 0) {
    sluice_publisher_delete_queue(p, queue, NULL);
    sluice_publisher_free(p);
  }
  return rc;
}
