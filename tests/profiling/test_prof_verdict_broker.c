/* SPDX-License-Identifier: MIT */
/* The verdict through the real consumer and broker, every case twice: at a
 * slow rate (about 1,000 messages per second) and a fast one (about 20,000
 * per second), each published at that pace while the consumer runs. Each
 * pair must reach the same verdict with the same per-message figures
 * (within 5%): messages count when they end and retained includes the
 * pending ones, so nothing depends on the speed. The fast pace is a pace,
 * not "as fast as it goes": a leak is convicted once it has grown for the
 * horizon in messages AND in time, so a run must last a few times
 * horizon_ms to be convicted at all, and a consumer that drained a backlog
 * ever faster (60k msg/s and more here) ended its runs before that and
 * rightly stayed "growing". Cases: a clean handler, an LRU smaller and one
 * larger than the horizon, a TTL cache living longer than the grace
 * period, a leak on the reject path only, a leak on one header value only
 * (the subscription's key), worker threads freeing each other's blocks,
 * deferred completion with and without sluice_delivery_enter(), and a
 * buffer grown by realloc (interposing builds). Label `broker`. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <sluice/sluice.h>

#include <sluice/prof_check.h> /* after cmocka.h and sluice.h */

#include "broker_util.h"
#include "prof_test.h"

#define HORIZON_MSGS 150

static size_t n_verdicts_for(const char *prefix);
#define MAX_N 4000

/* ------------------------------------------------------------------------ */
/* One run of one case. */

typedef struct scase scase;
typedef int (*handler_fn)(sluice_delivery *d, const sluice_message *m,
                          void *user);

struct scase {
  const char *name;
  handler_fn handler;
  unsigned n;
  int workers;
  const char *key;     /* subscription key */
  void (*reset)(void); /* free what the case kept */
  int deferred;        /* completed by the completer thread */
};

static sluice_consumer *g_c;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned handled, target;

static unsigned msg_id(const sluice_message *m) {
  return (unsigned)strtoul(m->props.message_id, NULL, 10);
}

/* A message finished: the last one stops the consumer. */
static void finished(void) {
  pthread_mutex_lock(&mu);
  if (++handled == target) sluice_consumer_stop(g_c);
  pthread_mutex_unlock(&mu);
}

/* Publish message i of a case: its id, a "x-kind" header (one in ten is a
 * probe). */
static void publish_one(sluice_publisher *p, const char *q, unsigned i) {
  char id[32], body[64];
  snprintf(id, sizeof id, "%u", i);
  snprintf(body, sizeof body, "job %u", i);
  sluice_kv h[] = {SLUICE_KV_STR("x-kind", i % 10 == 0 ? "probe" : "push")};
  sluice_publish_props pr = {.message_id = id, .headers = h, .n_headers = 1};
  int rc = sluice_publisher_publish(p, "", q, body, strlen(body), &pr);
  if (rc) fail_msg("publish: %s", sluice_strerror(rc));
}

typedef struct pacer {
  const char *q;
  unsigned n;
  unsigned per_ms; /* messages published each millisecond */
} pacer;

/* Publish at per_ms messages per millisecond (absolute deadlines, so the
 * rate holds whatever each publish costs, or is as high as the publisher
 * goes if that is lower). */
static void *pace(void *arg) {
  pacer *pc = arg;
  sluice_publisher_opts po = {.uri = TEST_URI};
  sluice_publisher *p;
  if (sluice_publisher_new(&po, &p)) return NULL;
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  for (unsigned i = 0; i < pc->n;) {
    t.tv_nsec += 1000000;
    if (t.tv_nsec >= 1000000000L) {
      t.tv_sec++;
      t.tv_nsec -= 1000000000L;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
    for (unsigned j = 0; j < pc->per_ms && i < pc->n; j++, i++)
      publish_one(p, pc->q, i);
  }
  sluice_publisher_wait(p, NULL);
  sluice_publisher_free(p);
  return NULL;
}

/* ---- the deferred completer ---------------------------------------------- */

static sluice_delivery *dq[MAX_N];
static unsigned dq_head, dq_tail;
static int dq_stop, dq_enter;
static pthread_cond_t dq_cv = PTHREAD_COND_INITIALIZER;
static void *replies[MAX_N];
static unsigned n_replies;

T_NOINLINE static void make_reply(unsigned i) {
  char *r = TALLOC(64); /* "kept for the audit trail": never freed */
  memset(r, (int)i, 64);
  replies[n_replies++] = r;
}

static void *completer(void *arg) {
  (void)arg;
  pthread_mutex_lock(&mu);
  for (;;) {
    while (dq_head == dq_tail && !dq_stop) pthread_cond_wait(&dq_cv, &mu);
    if (dq_head == dq_tail) break;
    sluice_delivery *d = dq[dq_head++ % MAX_N];
    pthread_mutex_unlock(&mu);
    unsigned i = msg_id(sluice_delivery_message(d));
    if (dq_enter) sluice_delivery_enter(d);
    make_reply(i); /* the reply callback's work */
    if (dq_enter) sluice_delivery_leave(d);
    sluice_delivery_done(d, SLUICE_ACK);
    finished();
    pthread_mutex_lock(&mu);
  }
  pthread_mutex_unlock(&mu);
  return NULL;
}

/* ---- what a run reports --------------------------------------------------- */

typedef struct result {
  sluice_prof_residual_stats st[4]; /* the groups of the run's queue */
  size_t n;
  double rate;
} result;

static const sluice_prof_residual_stats *group(const result *r, int outcome,
                                               const char *key) {
  for (size_t i = 0; i < r->n; i++)
    if (r->st[i].outcome == outcome && !strcmp(r->st[i].key, key ? key : ""))
      return &r->st[i];
  return NULL;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void run(const scase *k, int slow, result *out) {
  const char *q = tb_qname(k->name);
  sluice_queue_decl qd = {.name = q};
  tb_fresh_queue(&qd);
  pacer pc = {q, k->n, slow ? 1 : 20};
  handled = 0;
  target = k->n;
  dq_head = dq_tail = 0;
  dq_stop = 0;
  sluice_consumer_opts o = {.uri = TEST_URI,
                            .workers = k->workers,
                            .prefetch = 100,
                            .hooks = sluice_prof_delivery_hooks()};
  assert_int_equal(sluice_consumer_new(&o, &g_c), 0);
  sluice_subscribe_opts so = {.queue = q, .handler = k->handler, .key = k->key};
  assert_int_equal(sluice_consumer_subscribe(g_c, &so), 0);
  pthread_t pub, comp;
  assert_int_equal(pthread_create(&pub, NULL, pace, &pc), 0);
  if (k->deferred)
    assert_int_equal(pthread_create(&comp, NULL, completer, NULL), 0);
  int timed_out = 0;
  double t0 = now_s();
  assert_int_equal(tb_run_bounded(g_c, 120, &timed_out), 0);
  double t1 = now_s();
  assert_false(timed_out);
  pthread_join(pub, NULL);
  if (k->deferred) {
    pthread_mutex_lock(&mu);
    dq_stop = 1;
    pthread_cond_broadcast(&dq_cv);
    pthread_mutex_unlock(&mu);
    pthread_join(comp, NULL);
  }
  assert_int_equal(handled, k->n);
  sluice_consumer_free(g_c);
  g_c = NULL;
  out->rate = k->n / (t1 - t0);
  static sluice_prof_residual_stats v[256];
  size_t n = sluice_prof_residual_stats_get(v, 256);
  out->n = 0;
  for (size_t i = 0; i < n && i < 256; i++)
    if (!strcmp(v[i].queue, q) && out->n < 4) out->st[out->n++] = v[i];
  tb_delete_queue(q);
  fprintf(stderr, "%-14s %s %6.0f msg/s:", k->name, slow ? "slow" : "fast",
          out->rate);
  for (size_t i = 0; i < out->n; i++)
    fprintf(stderr, " [%s%s%s %s %.1f B/msg, %llu B retained]",
            out->st[i].key_name ? out->st[i].key : "",
            out->st[i].key_name ? " " : "",
            sluice_outcome_name(out->st[i].outcome),
            sluice_prof_state_name(out->st[i].state),
            out->st[i].bytes_per_message,
            (unsigned long long)out->st[i].retained_bytes);
  fprintf(stderr, "\n");
}

/* Both runs: the same states, and the same per-message figures within 5%
 * (or both under 1 B/message). */
static void same(const result *a, const result *b) {
  assert_int_equal(a->n, b->n);
  for (size_t i = 0; i < a->n; i++) {
    const sluice_prof_residual_stats *x = &a->st[i];
    const sluice_prof_residual_stats *y = group(b, x->outcome, x->key);
    assert_non_null(y);
    assert_int_equal(x->state, y->state);
    double p = x->bytes_per_message, r = y->bytes_per_message;
    if (p > 1 || r > 1) assert_true(p > r * 0.95 && p < r * 1.05);
    assert_int_equal(x->messages, y->messages);
  }
}

static void both(const scase *k, result *slow, result *fast) {
  run(k, 1, slow);
  if (k->reset) k->reset();
  run(k, 0, fast);
  same(slow, fast);
}

/* ------------------------------------------------------------------------ */
/* The cases. */

static pthread_mutex_t kmu = PTHREAD_MUTEX_INITIALIZER;
static void *kept[MAX_N * 2];
static unsigned n_kept;

static void keep(void *p) {
  pthread_mutex_lock(&kmu);
  kept[n_kept++] = p;
  pthread_mutex_unlock(&kmu);
}

static void kept_free(void) {
  for (unsigned i = 0; i < n_kept; i++) TFREE(kept[i]);
  n_kept = 0;
}

/* Clean: a copy of the body, freed. */
T_NOINLINE static int clean(sluice_delivery *d, const sluice_message *m,
                            void *u) {
  (void)d;
  (void)u;
  char *c = TALLOC(m->body_len + 1);
  memcpy(c, m->body, m->body_len + 1);
  TFREE(c);
  finished();
  return SLUICE_ACK;
}

/* An LRU of lru_n entries of 512 B. */
static void *lru[1024];
static unsigned lru_n;

T_NOINLINE static int lru_put(sluice_delivery *d, const sluice_message *m,
                              void *u) {
  (void)d;
  (void)u;
  unsigned slot = msg_id(m) % lru_n;
  TFREE(lru[slot]);
  lru[slot] = TALLOC(512);
  memset(lru[slot], 1, 512);
  finished();
  return SLUICE_ACK;
}

static void lru_clear(void) {
  for (unsigned i = 0; i < 1024; i++) {
    TFREE(lru[i]);
    lru[i] = NULL;
  }
}

/* A TTL cache: entries live 20 ms (the grace period is 10 ms); each
 * message expires what is due. */
static void *ttl_v[MAX_N];
static double ttl_exp[MAX_N];
static unsigned ttl_head, ttl_tail;

T_NOINLINE static int ttl_put(sluice_delivery *d, const sluice_message *m,
                              void *u) {
  (void)d;
  (void)u;
  (void)m;
  double now = now_s();
  while (ttl_head != ttl_tail && ttl_exp[ttl_head % MAX_N] <= now) {
    TFREE(ttl_v[ttl_head % MAX_N]);
    ttl_head++;
  }
  ttl_v[ttl_tail % MAX_N] = TALLOC(256);
  memset(ttl_v[ttl_tail % MAX_N], 1, 256);
  ttl_exp[ttl_tail % MAX_N] = now + 0.020;
  ttl_tail++;
  finished();
  return SLUICE_ACK;
}

static void ttl_clear(void) {
  while (ttl_head != ttl_tail) TFREE(ttl_v[ttl_head++ % MAX_N]);
}

/* One message in five is rejected, and its 40 B context is kept. */
T_NOINLINE static int reject_leaks(sluice_delivery *d, const sluice_message *m,
                                   void *u) {
  (void)d;
  (void)u;
  char *ctx = TALLOC(40);
  memset(ctx, 1, 40);
  int outcome = SLUICE_ACK;
  if (msg_id(m) % 5 == 0) {
    keep(ctx);
    outcome = SLUICE_REJECT;
  } else {
    TFREE(ctx);
  }
  finished();
  return outcome;
}

/* Only the health probes (header x-kind: probe) leak 128 B. */
T_NOINLINE static int probe_leaks(sluice_delivery *d, const sluice_message *m,
                                  void *u) {
  (void)d;
  (void)u;
  char *job = TALLOC(128);
  memset(job, 1, 128);
  const sluice_value *k = sluice_message_header(m, "x-kind");
  if (k && k->kind == SLUICE_VAL_STRING && !strcmp(k->u.s.str, "probe"))
    keep(job); /* the probe path returns before freeing */
  else TFREE(job);
  finished();
  return SLUICE_ACK;
}

/* Four workers; each frees the block the previous message handed over
 * (allocated in another scope, often on another thread) and keeps 32 B
 * for one message in four. */
static void *handed;

T_NOINLINE static int workers_mix(sluice_delivery *d, const sluice_message *m,
                                  void *u) {
  (void)d;
  (void)u;
  char *mine = TALLOC(48), *k = TALLOC(32);
  memset(mine, 1, 48);
  memset(k, 1, 32);
  pthread_mutex_lock(&kmu);
  void *prev = handed;
  handed = mine;
  pthread_mutex_unlock(&kmu);
  TFREE(prev);
  if (msg_id(m) % 4 == 0) keep(k);
  else TFREE(k);
  finished();
  return SLUICE_ACK;
}

static void workers_clear(void) {
  TFREE(handed);
  handed = NULL;
  kept_free();
}

/* Deferred: the handler hands the delivery to the completer thread. */
T_NOINLINE static int defer_reply(sluice_delivery *d, const sluice_message *m,
                                  void *u) {
  (void)m;
  (void)u;
  pthread_mutex_lock(&mu);
  dq[dq_tail++ % MAX_N] = d;
  pthread_cond_signal(&dq_cv);
  pthread_mutex_unlock(&mu);
  return SLUICE_DEFER;
}

static void replies_clear(void) {
  for (unsigned i = 0; i < n_replies; i++) TFREE(replies[i]);
  n_replies = 0;
}

/* A log buffer grown by realloc, 64 B per message. */
static char *log_buf;
static size_t log_len;

T_NOINLINE static int log_append(sluice_delivery *d, const sluice_message *m,
                                 void *u) {
  (void)d;
  (void)u;
  log_buf = realloc(log_buf, log_len + 64);
  memset(log_buf + log_len, (int)(msg_id(m) & 0x7f), 64);
  log_len += 64;
  finished();
  return SLUICE_ACK;
}

static void log_clear(void) {
  free(log_buf);
  log_buf = NULL;
  log_len = 0;
}

/* ------------------------------------------------------------------------ */

static void test_clean(void **state) {
  (void)state;
  scase k = {"v.clean", clean, 1500, 0, NULL, NULL, 0};
  result a, b;
  both(&k, &a, &b);
  assert_int_equal(a.st[0].state, SLUICE_PROF_OK);
  assert_int_equal(a.st[0].retained_bytes, 0);
}

static void test_lru_smaller(void **state) {
  (void)state;
  lru_n = 50; /* < the horizon of 150 messages */
  scase k = {"v.lru.small", lru_put, 1500, 0, NULL, lru_clear, 0};
  result a, b;
  both(&k, &a, &b);
  for (int r = 0; r < 2; r++) {
    const result *x = r ? &b : &a;
    assert_int_equal(x->st[0].state, SLUICE_PROF_BOUNDED);
    assert_int_equal(x->st[0].retained_bytes, 50 * 512);
  }
  lru_clear();
}

static void test_lru_larger(void **state) {
  (void)state;
  lru_n = 1000; /* > the horizon: LEAK allowed while it fills past it */
  scase k = {"v.lru.big", lru_put, 3000, 0, NULL, lru_clear, 0};
  result a, b;
  both(&k, &a, &b);
  for (int r = 0; r < 2; r++) {
    const result *x = r ? &b : &a;
    assert_int_equal(x->st[0].state, SLUICE_PROF_BOUNDED);
    assert_int_equal(x->st[0].retained_bytes, 1000 * 512);
  }
  lru_clear();
}

static void test_ttl_longer_than_grace(void **state) {
  (void)state;
  scase k = {"v.ttl", ttl_put, 2000, 0, NULL, ttl_clear, 0};
  result a, b;
  run(&k, 1, &a);
  ttl_clear();
  run(&k, 0, &b);
  ttl_clear();
  /* The cache's size is its TTL times the rate: that figure differs, and
   * a burst of deliveries at the very end (faster than the TTL) may leave
   * it growing. Never a leak: nothing it holds is older than its TTL. */
  for (int r = 0; r < 2; r++) {
    const sluice_prof_residual_stats *x = r ? &b.st[0] : &a.st[0];
    assert_true(x->state != SLUICE_PROF_LEAK);
    assert_true(x->leaked > 0); /* entries outlived the grace period */
    assert_true(x->oldest_age_seconds < 0.5);
    assert_int_equal(x->retained_bytes == 0 ? 0 : 1,
                     x->state == SLUICE_PROF_OK ? 0 : 1);
  }
  assert_int_equal(n_verdicts_for("v.ttl"), 0);
}

static void test_reject_path(void **state) {
  (void)state;
  scase k = {"v.reject", reject_leaks, 2000, 0, NULL, kept_free, 0};
  result a, b;
  both(&k, &a, &b);
  for (int r = 0; r < 2; r++) {
    const result *x = r ? &b : &a;
    const sluice_prof_residual_stats *ack = group(x, SLUICE_ACK, NULL);
    const sluice_prof_residual_stats *rej = group(x, SLUICE_REJECT, NULL);
    assert_non_null(ack);
    assert_non_null(rej);
    assert_int_equal(ack->state, SLUICE_PROF_OK);
    assert_int_equal(rej->state, SLUICE_PROF_LEAK);
    assert_true(rej->bytes_per_message > 38 && rej->bytes_per_message < 42);
  }
  kept_free();
}

static void test_header_key(void **state) {
  (void)state;
  scase k = {"v.header", probe_leaks, 3000, 2, "header:x-kind", kept_free, 0};
  result a, b;
  both(&k, &a, &b);
  for (int r = 0; r < 2; r++) {
    const result *x = r ? &b : &a;
    const sluice_prof_residual_stats *probe = group(x, SLUICE_ACK, "probe");
    const sluice_prof_residual_stats *push = group(x, SLUICE_ACK, "push");
    assert_non_null(probe);
    assert_non_null(push);
    assert_string_equal(probe->key_name, "header:x-kind");
    assert_int_equal(probe->state, SLUICE_PROF_LEAK);
    assert_true(probe->bytes_per_message > 121 &&
                probe->bytes_per_message < 135);
    assert_int_equal(push->state, SLUICE_PROF_OK);
    assert_int_equal(probe->messages, 300);
  }
  kept_free();
}

static void test_worker_threads(void **state) {
  (void)state;
  scase k = {"v.workers", workers_mix, 2000, 4, NULL, workers_clear, 0};
  result a, b;
  both(&k, &a, &b);
  for (int r = 0; r < 2; r++) {
    const result *x = r ? &b : &a;
    assert_int_equal(x->st[0].state, SLUICE_PROF_LEAK);
    assert_true(x->st[0].bytes_per_message > 7.6 &&
                x->st[0].bytes_per_message < 8.4);
  }
  workers_clear();
}

static void test_deferred(void **state) {
  (void)state;
  sluice_prof_memstats m0, m1;
  sluice_prof_memstats_read(&m0);
  /* Entered: the reply is the message's. */
  dq_enter = 1;
  scase k = {"v.defer.in", defer_reply, 3000, 0, NULL, replies_clear, 1};
  result a, b;
  both(&k, &a, &b);
  for (int r = 0; r < 2; r++) {
    const result *x = r ? &b : &a;
    assert_int_equal(x->st[0].state, SLUICE_PROF_LEAK);
    assert_true(x->st[0].bytes_per_message > 60.8 &&
                x->st[0].bytes_per_message < 67.2);
  }
  replies_clear();
  sluice_prof_memstats_read(&m1);
  assert_int_equal(m1.deferred_unentered, m0.deferred_unentered);
  /* Not entered: the reply is nobody's, and the profiler says so. */
  dq_enter = 0;
  scase k2 = {"v.defer.out", defer_reply, 3000, 0, NULL, replies_clear, 1};
  both(&k2, &a, &b);
  for (int r = 0; r < 2; r++) {
    const result *x = r ? &b : &a;
    assert_int_equal(x->st[0].state, SLUICE_PROF_OK);
    assert_int_equal(x->st[0].retained_bytes, 0);
  }
  replies_clear();
  sluice_prof_memstats_read(&m1);
  assert_true(m1.deferred_unentered > m0.deferred_unentered);
}

static void test_realloc_growth(void **state) {
  (void)state;
  if (!sluice_prof_interposing()) {
    fprintf(stderr, "realloc growth: needs malloc interposition, skipped\n");
    skip();
  }
  scase k = {"v.realloc", log_append, 3000, 0, NULL, log_clear, 0};
  result a, b;
  both(&k, &a, &b);
  for (int r = 0; r < 2; r++) {
    const result *x = r ? &b : &a;
    assert_int_equal(x->st[0].state, SLUICE_PROF_LEAK);
    assert_true(x->st[0].bytes_per_message > 63 &&
                x->st[0].bytes_per_message < 65);
  }
  log_clear();
}

/* The leak check for users' tests, with a broker: a clean handler passes,
 * a leak on one header value fails and names it. */
static void test_leak_check_consume(void **state) {
  (void)state;
  const char *q = tb_qname("v.check");
  sluice_queue_decl qd = {.name = q};
  tb_fresh_queue(&qd);
  sluice_publisher_opts po = {.uri = TEST_URI};
  sluice_publisher *p;
  assert_int_equal(sluice_publisher_new(&po, &p), 0);
  for (unsigned i = 0; i < 2000; i++) publish_one(p, q, i);
  assert_int_equal(sluice_publisher_wait(p, NULL), 0);
  sluice_publisher_free(p);
  sluice_consumer_opts co = {.uri = TEST_URI};
  sluice_prof_check_result r;
  target = UINT32_MAX; /* the handlers' own stop never fires */
  assert_int_equal(
      sluice_prof_check_consume(&co, q, NULL, clean, NULL, 1000, 60, 1, &r), 0);
  assert_int_equal(r.messages, 1000);
  SLUICE_PROF_ASSERT_RESULT(&r);
  assert_int_equal(sluice_prof_check_consume(&co, q, "header:x-kind",
                                             probe_leaks, NULL, 1000, 60, 1,
                                             &r),
                   0);
  assert_true(r.leaked);
  assert_true(r.bytes_per_message > 12 && r.bytes_per_message < 13.6);
  assert_non_null(strstr(r.report, "probe_leaks"));
  sluice_prof_check_free(&r);
  kept_free();
  tb_delete_queue(q);
}

/* A key the consumer cannot read is refused at subscribe, with a message;
 * nothing is subscribed. */
static int refused_logged;
static void count_log(int level, const char *msg, void *user) {
  (void)user;
  if (level == SLUICE_LOG_ERROR && strstr(msg, "header:NAME")) refused_logged++;
}

static void test_bad_key(void **state) {
  (void)state;
  sluice_consumer_opts o = {.uri = TEST_URI, .log = count_log};
  sluice_consumer *c;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  const char *bad[] = {"bogus", "header:", "Type", "message_id", ""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    sluice_subscribe_opts so = {.queue = "q", .handler = clean, .key = bad[i]};
    assert_int_equal(sluice_consumer_subscribe(c, &so), SLUICE_EINVAL);
  }
  assert_int_equal(refused_logged, 5);
  sluice_subscribe_opts ok = {.queue = "q",
                              .handler = clean,
                              .key = "header:x-kind"};
  assert_int_equal(sluice_consumer_subscribe(c, &ok), 0);
  sluice_consumer_free(c);
}

/* Queues that got a LEAK verdict (the callback may run on the profiler's
 * thread). */
static char verdict_queues[64][128];
static size_t n_verdicts;

static void record_leak(const sluice_prof_leak *v, void *user) {
  (void)user;
  pthread_mutex_lock(&kmu);
  if (n_verdicts < 64)
    snprintf(verdict_queues[n_verdicts++], 128, "%s", v->queue);
  pthread_mutex_unlock(&kmu);
}

static size_t n_verdicts_for(const char *prefix) {
  size_t n = 0;
  pthread_mutex_lock(&kmu);
  for (size_t i = 0; i < n_verdicts; i++)
    if (!strncmp(verdict_queues[i], prefix, strlen(prefix))) n++;
  pthread_mutex_unlock(&kmu);
  return n;
}

int main(void) {
  tb_require_broker("test_prof_verdict_broker");
  sluice_prof_opts po = {.grace_ms = 10,
                         .leak_window = 20,
                         .horizon_messages = HORIZON_MSGS,
                         /* A leak is convicted once it has grown for the
                          * horizon in messages and in time: every leaking
                          * case's fast run (2,000-3,000 messages at 20k
                          * msg/s) lasts a few times horizon_ms, or it
                          * would stay "growing". */
                         .horizon_ms = 30,
                         .poll_ms = 50,
                         .on_leak = record_leak};
  if (sluice_prof_start(&po)) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_key),
      cmocka_unit_test(test_leak_check_consume),
      cmocka_unit_test(test_clean),
      cmocka_unit_test(test_lru_smaller),
      cmocka_unit_test(test_lru_larger),
      cmocka_unit_test(test_ttl_longer_than_grace),
      cmocka_unit_test(test_reject_path),
      cmocka_unit_test(test_header_key),
      cmocka_unit_test(test_worker_threads),
      cmocka_unit_test(test_deferred),
      cmocka_unit_test(test_realloc_growth),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
