/* SPDX-License-Identifier: MIT */
/* Scopes and residual memory, driven through the consumer's delivery hooks
 * exactly as the consumer calls them (begin -> handler -> suspend -> end),
 * at sampling rate 1 so that everything is deterministic. Grace periods run
 * on a test clock. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "prof_test.h"

/* ------------------------------------------------------------------------ */
/* What the callbacks saw. */

#define MAX_SEEN 4096

static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static sluice_prof_residual seen[MAX_SEEN];
static size_t n_seen;

typedef struct verdict {
  char queue[64];
  int outcome;
  double bpm;
  char site[128];
  char stack[256];
  uint64_t retained;
} verdict;
static verdict verdicts[32];
static size_t n_verdicts;

static void on_residual(const sluice_prof_residual *r, void *user) {
  (void)user;
  pthread_mutex_lock(&seen_mu);
  if (n_seen < MAX_SEEN) seen[n_seen++] = *r;
  pthread_mutex_unlock(&seen_mu);
}

static void on_leak(const sluice_prof_leak *v, void *user) {
  (void)user;
  pthread_mutex_lock(&seen_mu);
  if (n_verdicts < 32) {
    verdict *x = &verdicts[n_verdicts++];
    snprintf(x->queue, sizeof x->queue, "%s", v->queue);
    x->outcome = v->outcome;
    x->bpm = v->bytes_per_message;
    x->retained = v->retained_bytes;
    snprintf(x->site, sizeof x->site, "%s",
             v->n_sites ? v->sites[0].function : "");
    snprintf(x->stack, sizeof x->stack, "%s",
             v->n_sites ? v->sites[0].stack : "");
  }
  pthread_mutex_unlock(&seen_mu);
}

/* A copy of the verdict for queue/outcome; NULL when none fired. */
static verdict found;
static const verdict *find_verdict(const char *queue, int outcome) {
  for (size_t i = 0; i < n_verdicts; i++)
    if (!strcmp(verdicts[i].queue, queue) && verdicts[i].outcome == outcome) {
      memcpy(&found, &verdicts[i], sizeof found);
      return &found;
    }
  return NULL;
}

/* Residual callbacks for one queue and stage. */
static size_t count_seen(const char *queue, int after_grace, uint64_t bytes,
                         uint64_t objects) {
  size_t n = 0;
  for (size_t i = 0; i < n_seen; i++)
    if (!strcmp(seen[i].queue, queue) && seen[i].after_grace == after_grace &&
        seen[i].bytes == bytes && seen[i].objects == objects)
      n++;
  return n;
}

static int get_stats(const char *queue, int outcome,
                     sluice_prof_residual_stats *out) {
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    if (!strcmp(v[i].queue, queue) && v[i].outcome == outcome) {
      *out = v[i];
      return 0;
    }
  memset(out, 0, sizeof *out);
  return -1;
}

/* Each delivery moves the test clock 10 ms: verdicts need 20 messages
 * and 200 ms of growth (a small horizon), grace is 1 s. */
#define MSG_NS 10000000ull

static void start(size_t rate) {
  sluice_prof_opts o = {
      .sample_rate = rate,
      .grace_ms = 1000,
      .leak_threshold = 1,
      .leak_window = 5,
      .horizon_messages = 20,
      .horizon_ms = 200,
      .poll_ms = -1,
      .on_residual = on_residual,
      .on_leak = on_leak,
      .now_ns = t_clock,
  };
  assert_int_equal(sluice_prof_start(&o), 0);
}

static int setup(void **state) {
  (void)state;
  start(1);
  return 0;
}

static void pass_grace(void) {
  t_clock_ns += 2000000000ull;
  sluice_prof_poll();
}

/* ------------------------------------------------------------------------ */
/* The consumer, simulated through its hooks. */

typedef int (*handler_fn)(int i);

T_NOINLINE static int deliver(const char *queue, uint64_t seq, handler_fn h,
                              int i) {
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  sluice_delivery_info info = {queue, seq, 1, seq, 0, NULL, NULL};
  void *tok = hk->begin(hk->user, &info);
  int outcome = h(i);
  hk->suspend(hk->user, tok);
  t_clock_ns += MSG_NS;
  hk->end(hk->user, tok, &info, outcome);
  return outcome;
}

static uint64_t next_seq = 1;

/* ------------------------------------------------------------------------ */
/* A handler that stores 100 bytes per message in a global map. */

#define MAP_CAP 4096
static void *g_map[MAP_CAP];
static size_t g_map_len;

static int store_line; /* the line of store_in_map's allocation */

T_NOINLINE static int store_in_map(int i) {
  store_line = __LINE__ + 1;
  char *p = TALLOC(100);
  memset(p, i, 100);
  g_map[g_map_len++] = p;
  return SLUICE_ACK;
}

static void clear_map(void) {
  for (size_t i = 0; i < g_map_len; i++) TFREE(g_map[i]);
  g_map_len = 0;
}

static void test_leak_per_message(void **state) {
  (void)state;
  const char *q = "t.leak";
  for (int i = 0; i < 30; i++) deliver(q, next_seq++, store_in_map, i);
  assert_int_equal(count_seen(q, 0, 100, 1), 30);

  sluice_prof_residual_stats st;
  assert_int_equal(get_stats(q, SLUICE_ACK, &st), 0);
  assert_int_equal(st.messages, 30);
  assert_int_equal(st.with_residual, 30);
  assert_int_equal(st.bytes_at_end, 3000);
  assert_int_equal(st.objects_at_end, 30);
  assert_int_equal(st.pending, 30);
  assert_int_equal(st.leaked, 0);
  /* Retained counts the pending messages too. */
  assert_int_equal(st.retained_bytes, 3000);
  assert_int_equal(st.retained_objects, 30);
  assert_int_equal(st.state, SLUICE_PROF_LEAK);

  pass_grace();
  assert_int_equal(count_seen(q, 1, 100, 1), 30);
  assert_int_equal(get_stats(q, SLUICE_ACK, &st), 0);
  assert_int_equal(st.pending, 0);
  assert_int_equal(st.leaked, 30);
  assert_int_equal(st.bytes_leaked, 3000);
  assert_int_equal(st.retained_bytes, 3000);
  assert_int_equal(st.retained_objects, 30);
  assert_true(st.leaking);
  assert_true(st.bytes_per_message > 99.9 && st.bytes_per_message < 100.1);
  assert_true(st.objects_per_message > 0.99 && st.objects_per_message < 1.01);

  const verdict *v = find_verdict(q, SLUICE_ACK);
  assert_non_null(v);
  assert_string_equal(v->site, "store_in_map");
  if (SLUICE_TEST_LINES) { /* "store_in_map (test_prof_scope.c:N) <- ..." */
    char want[128];
    snprintf(want, sizeof want,
             "store_in_map (test_prof_scope.c:%d) <- "
             "deliver (test_prof_scope.c:",
             store_line);
    assert_true(strstr(v->stack, want) != NULL);
  } else {
    assert_true(strstr(v->stack, "store_in_map <- deliver") != NULL);
  }
  assert_true(v->bpm > 99.9 && v->bpm < 100.1);

  /* The top residual site is the handler. */
  tbuf out = {0};
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_TOP, SLUICE_PROF_RESIDUAL_SPACE, NULL), 0);
  const char *hdr = strstr(tbuf_str(&out), "cum%\n");
  assert_non_null(hdr);
  const char *nl = strchr(hdr + 5, '\n');
  assert_non_null(nl);
  assert_true(memmem(hdr, (size_t)(nl - hdr), "store_in_map", 12) != NULL);

  /* The residual report names the queue, the verdict and the site. */
  assert_int_equal(t_report(&out, SLUICE_PROF_FMT_RESIDUAL, 0, NULL), 0);
  assert_non_null(strstr(tbuf_str(&out), "t.leak"));
  assert_non_null(strstr(tbuf_str(&out), "LEAK"));
  assert_non_null(strstr(tbuf_str(&out), "store_in_map"));
  if (SLUICE_TEST_LINES) { /* the site's line, the verdict's */
    char want[64];
    snprintf(want, sizeof want, "  store_in_map (test_prof_scope.c:%d) <- ",
             store_line);
    assert_non_null(strstr(tbuf_str(&out), want));
  }

  /* pprof: residual samples carry the queue and outcome labels. */
  assert_int_equal(t_report(&out, SLUICE_PROF_FMT_PPROF,
                            SLUICE_PROF_RESIDUAL_SPACE, NULL),
                   0);
  tprofile p;
  assert_int_equal(tprofile_parse(out.data, out.len, &p), 0);
  assert_string_equal(tprofile_top_leaf(&p, "residual_space"), "store_in_map");
  assert_int_equal(tprofile_sum(&p, "residual_space", "store_in_map"), 3000);
  int labelled = 0;
  for (size_t i = 0; i < p.n_samples; i++) {
    const tlabel *lq = tsample_label(&p.samples[i], "queue");
    const tlabel *lo = tsample_label(&p.samples[i], "outcome");
    const tlabel *lm = tsample_label(&p.samples[i], "message");
    if (lq && !strcmp(lq->str, q)) {
      assert_non_null(lo);
      assert_string_equal(lo->str, "ack");
      assert_non_null(lm);
      labelled++;
    }
  }
  assert_int_equal(labelled, 30); /* one per message */
  tprofile_free(&p);
  tbuf_free(&out);

  clear_map();
  assert_int_equal(get_stats(q, SLUICE_ACK, &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.retained_objects, 0);
  /* Not sticky: nothing retained is ok, whatever happened before. */
  assert_int_equal(st.state, SLUICE_PROF_OK);
  assert_false(st.leaking);
}

/* ------------------------------------------------------------------------ */

T_NOINLINE static int tidy_handler(int i) {
  char *a = TALLOC(64), *b = TALLOC(200);
  memset(a, i, 64);
  memset(b, i, 200);
  TFREE(a);
  TFREE(b);
  return SLUICE_ACK;
}

static void test_clean_handler(void **state) {
  (void)state;
  const char *q = "t.clean";
  for (int i = 0; i < 40; i++) deliver(q, next_seq++, tidy_handler, i);
  assert_int_equal(count_seen(q, 0, 0, 0), 40);
  pass_grace();
  assert_int_equal(count_seen(q, 1, 0, 0), 0); /* nothing to re-check */
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats(q, SLUICE_ACK, &st), 0);
  assert_int_equal(st.messages, 40);
  assert_int_equal(st.with_residual, 0);
  assert_int_equal(st.leaked, 0);
  assert_false(st.leaking);
  assert_null(find_verdict(q, SLUICE_ACK));
}

/* ------------------------------------------------------------------------ */
/* A cache: the handler keeps its result; something evicts it shortly
 * after, within the grace period. */

static void *g_cache[64];

T_NOINLINE static int cache_handler(int i) {
  g_cache[i] = TALLOC(256);
  memset(g_cache[i], i, 256);
  return SLUICE_ACK;
}

static void test_cache_within_grace(void **state) {
  (void)state;
  const char *q = "t.cache";
  for (int i = 0; i < 20; i++) deliver(q, next_seq++, cache_handler, i);
  assert_int_equal(count_seen(q, 0, 256, 1), 20);
  t_clock_ns += 500000000ull; /* half the grace period */
  sluice_prof_poll();
  for (int i = 0; i < 20; i++) TFREE(g_cache[i]);
  pass_grace();
  assert_int_equal(count_seen(q, 1, 0, 0), 20);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats(q, SLUICE_ACK, &st), 0);
  assert_int_equal(st.with_residual, 20);
  assert_int_equal(st.cached, 20);
  assert_int_equal(st.leaked, 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_false(st.leaking);
  assert_null(find_verdict(q, SLUICE_ACK));
}

/* ------------------------------------------------------------------------ */
/* The error path forgets to free; the normal path is clean. */

static void *g_errors[4096];
static size_t g_n_errors;

T_NOINLINE static int leak_on_nack(int i) {
  char *ctx = TALLOC(64);
  memset(ctx, i, 64);
  if (i % 2) {
    g_errors[g_n_errors++] = ctx; /* "logged for later", never cleared */
    return SLUICE_NACK;
  }
  TFREE(ctx);
  return SLUICE_ACK;
}

static void test_nack_only_leak(void **state) {
  (void)state;
  const char *q = "t.nack";
  for (int i = 0; i < 60; i++) deliver(q, next_seq++, leak_on_nack, i);
  pass_grace();
  sluice_prof_residual_stats ack, nack;
  assert_int_equal(get_stats(q, SLUICE_ACK, &ack), 0);
  assert_int_equal(get_stats(q, SLUICE_NACK, &nack), 0);
  assert_int_equal(ack.messages, 30);
  assert_int_equal(ack.with_residual, 0);
  assert_false(ack.leaking);
  assert_int_equal(nack.messages, 30);
  assert_int_equal(nack.leaked, 30);
  assert_int_equal(nack.bytes_leaked, 30 * 64);
  assert_true(nack.leaking);
  assert_null(find_verdict(q, SLUICE_ACK));
  const verdict *v = find_verdict(q, SLUICE_NACK);
  assert_non_null(v);
  assert_string_equal(v->site, "leak_on_nack");

  /* Filtered reports: under NACK only. */
  tbuf out = {0};
  sluice_prof_output o = {.format = SLUICE_PROF_FMT_TOP,
                          .value = SLUICE_PROF_RESIDUAL_SPACE,
                          .queue = q,
                          .outcomes = SLUICE_PROF_OUTCOME_BIT(SLUICE_ACK)};
  assert_int_equal(sluice_prof_write(NULL, &o, tbuf_write, &out), 0);
  assert_null(strstr(tbuf_str(&out), "leak_on_nack"));
  out.len = 0;
  o.outcomes = SLUICE_PROF_OUTCOME_BIT(SLUICE_NACK);
  assert_int_equal(sluice_prof_write(NULL, &o, tbuf_write, &out), 0);
  assert_non_null(strstr(tbuf_str(&out), "leak_on_nack"));
  tbuf_free(&out);

  for (size_t i = 0; i < g_n_errors; i++) TFREE(g_errors[i]);
  g_n_errors = 0;
}

/* ------------------------------------------------------------------------ */
/* Worker threads: handlers on several threads, blocks handed to another
 * thread and freed there after the delivery ended, and a deferred delivery
 * finished on another thread. */

#define N_WORKERS 4
#define PER_WORKER 25

static pthread_mutex_t hand_mu = PTHREAD_MUTEX_INITIALIZER;
static void *g_handed[N_WORKERS * PER_WORKER];
static size_t g_n_handed;
static void *g_kept[N_WORKERS * PER_WORKER];
static size_t g_n_kept;

T_NOINLINE static int worker_handler(int i) {
  char *keep = TALLOC(32), *hand = TALLOC(48);
  memset(keep, i, 32);
  memset(hand, i, 48);
  pthread_mutex_lock(&hand_mu);
  g_kept[g_n_kept++] = keep;
  g_handed[g_n_handed++] = hand;
  pthread_mutex_unlock(&hand_mu);
  return SLUICE_ACK;
}

static void *worker_main(void *arg) {
  int w = (int)(intptr_t)arg;
  for (int i = 0; i < PER_WORKER; i++)
    deliver("t.workers", 100000 + (uint64_t)(w * PER_WORKER + i),
            worker_handler, i);
  return NULL;
}

static void test_worker_threads(void **state) {
  (void)state;
  pthread_t th[N_WORKERS];
  for (int i = 0; i < N_WORKERS; i++)
    assert_int_equal(
        pthread_create(&th[i], NULL, worker_main, (void *)(intptr_t)i), 0);
  for (int i = 0; i < N_WORKERS; i++) pthread_join(th[i], NULL);
  const char *q = "t.workers";
  assert_int_equal(count_seen(q, 0, 80, 2), N_WORKERS * PER_WORKER);
  /* Another thread (this one) frees the handed blocks after the end. */
  for (size_t i = 0; i < g_n_handed; i++) TFREE(g_handed[i]);
  g_n_handed = 0;
  pass_grace();
  assert_int_equal(count_seen(q, 1, 32, 1), N_WORKERS * PER_WORKER);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats(q, SLUICE_ACK, &st), 0);
  assert_int_equal(st.messages, N_WORKERS * PER_WORKER);
  assert_int_equal(st.bytes_at_end, N_WORKERS * PER_WORKER * 80);
  assert_int_equal(st.bytes_leaked, N_WORKERS * PER_WORKER * 32);
  assert_int_equal(st.retained_bytes, N_WORKERS * PER_WORKER * 32);
  for (size_t i = 0; i < g_n_kept; i++) TFREE(g_kept[i]);
  g_n_kept = 0;
  assert_int_equal(get_stats(q, SLUICE_ACK, &st), 0);
  assert_int_equal(st.retained_bytes, 0);
}

/* Deferred: begin/handler/suspend on this thread, resume/work/suspend/end
 * on another. */
static void *g_deferred_keep[2];
static void *g_deferred_token;
static sluice_delivery_info g_deferred_info;

T_NOINLINE static void deferred_reply(void) {
  g_deferred_keep[1] = TALLOC(24);
  memset(g_deferred_keep[1], 2, 24);
}

static void *completer(void *arg) {
  (void)arg;
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  hk->resume(hk->user, g_deferred_token);
  deferred_reply();
  hk->suspend(hk->user, g_deferred_token);
  hk->end(hk->user, g_deferred_token, &g_deferred_info, SLUICE_ACK);
  return NULL;
}

T_NOINLINE static int deferring_handler(int i) {
  (void)i;
  g_deferred_keep[0] = TALLOC(40);
  memset(g_deferred_keep[0], 1, 40);
  return SLUICE_DEFER;
}

static void test_deferred_other_thread(void **state) {
  (void)state;
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  g_deferred_info =
      (sluice_delivery_info){"t.deferred", 7, 1, next_seq++, 0, NULL, NULL};
  g_deferred_token = hk->begin(hk->user, &g_deferred_info);
  assert_non_null(g_deferred_token);
  assert_int_equal(deferring_handler(0), SLUICE_DEFER);
  hk->suspend(hk->user, g_deferred_token);
  /* Outside the delivery: not counted. */
  void *unrelated = TALLOC(1000);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, completer, NULL), 0);
  pthread_join(th, NULL);
  TFREE(unrelated);
  assert_int_equal(count_seen("t.deferred", 0, 64, 2), 1);
  TFREE(g_deferred_keep[0]);
  TFREE(g_deferred_keep[1]);
  pass_grace();
  assert_int_equal(count_seen("t.deferred", 1, 0, 0), 1);
}

/* ------------------------------------------------------------------------ */
/* Scope counts are exact whatever the sampling rate. */

T_NOINLINE static int leak_ten_small(int i) {
  for (int k = 0; k < 10; k++) {
    char *p = TALLOC(10);
    p[0] = (char)i;
    g_map[g_map_len++] = p;
  }
  return SLUICE_ACK;
}

static void test_exact_at_default_rate(void **state) {
  (void)state;
  start(524288);
  for (int i = 0; i < 100; i++)
    deliver("t.exact", next_seq++, leak_ten_small, i);
  assert_int_equal(count_seen("t.exact", 0, 100, 10), 100);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.exact", SLUICE_ACK, &st), 0);
  assert_int_equal(st.bytes_at_end, 10000);
  assert_int_equal(st.objects_at_end, 1000);
  clear_map();
  pass_grace();
  assert_int_equal(get_stats("t.exact", SLUICE_ACK, &st), 0);
  assert_int_equal(st.cached, 100);
  start(1);
}

/* ------------------------------------------------------------------------ */
/* The scope API itself. */

static void test_scope_api(void **state) {
  (void)state;
  sluice_prof_scope s = sluice_prof_scope_begin("t.api", 42, 9);
  assert_true(s != 0);
  assert_int_equal(sluice_prof_scope_current(), 0);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  assert_int_equal(prev, 0);
  assert_int_equal(sluice_prof_scope_current(), s);
  char *a = TALLOC(123);
  a[0] = 1;
  sluice_prof_scope_enter(prev);
  char *b = TALLOC(77); /* outside */
  b[0] = 1;
  uint64_t bytes = 0, objects = 0;
  assert_int_equal(sluice_prof_scope_usage(s, &bytes, &objects), 0);
  assert_int_equal(bytes, 123);
  assert_int_equal(objects, 1);
  sluice_prof_residual r;
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_REJECT, &r), 0);
  assert_int_equal(r.bytes, 123);
  assert_int_equal(r.seq, 42);
  assert_int_equal(r.delivery_tag, 9);
  assert_int_equal(r.outcome, SLUICE_REJECT);
  assert_string_equal(r.queue, "t.api");
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, NULL), SLUICE_EINVAL);
  assert_int_equal(sluice_prof_scope_usage(s, &bytes, &objects), SLUICE_EINVAL);
  TFREE(a);
  TFREE(b);
  pass_grace();
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.api", SLUICE_REJECT, &st), 0);
  assert_int_equal(st.cached, 1);

  /* Stopped: the hooks do nothing and report nothing. */
  sluice_prof_stop();
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  sluice_delivery_info info = {"t.stopped", 1, 1, 1, 0, NULL, NULL};
  void *tok = hk->begin(hk->user, &info);
  assert_null(tok);
  hk->suspend(hk->user, tok);
  hk->end(hk->user, tok, &info, SLUICE_ACK);
  assert_int_equal(get_stats("t.stopped", SLUICE_ACK, &st), -1);
  start(1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_leak_per_message, setup),
      cmocka_unit_test_setup(test_clean_handler, setup),
      cmocka_unit_test_setup(test_cache_within_grace, setup),
      cmocka_unit_test_setup(test_nack_only_leak, setup),
      cmocka_unit_test_setup(test_worker_threads, setup),
      cmocka_unit_test_setup(test_deferred_other_thread, setup),
      cmocka_unit_test_setup(test_exact_at_default_rate, setup),
      cmocka_unit_test_setup(test_scope_api, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
