/* SPDX-License-Identifier: MIT */
/* The verdict model, message by message on a test clock: bounded caches
 * (smaller and larger than the horizon), a TTL cache under rising traffic,
 * the same leak at a slow and a fast rate, key values, the grace period
 * under a full re-check queue, adaptive stacks at the default rate, the
 * deferred-completion warning, and the background thread (real clock).
 * The pools are small (max_scopes 256, max_pending 64) so that sweeps to
 * sinks and skipped re-checks happen all along. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <sluice/prof_check.h> /* after cmocka.h: its assertion fails tests */

#include "prof_test.h"

#define MS 1000000ull

/* ------------------------------------------------------------------------ */
/* Callbacks. */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

typedef struct verdict {
  char queue[64], key[64];
  int outcome;
  double bpm;
  uint64_t messages, retained;
  char site[64];
  double share;
  char kinds[256]; /* "probe=128.0 push=0.0" */
} verdict;
static verdict verdicts[64];
static size_t n_verdicts;

static void on_leak(const sluice_prof_leak *v, void *user) {
  (void)user;
  pthread_mutex_lock(&mu);
  if (n_verdicts < 64) {
    verdict *x = &verdicts[n_verdicts++];
    memset(x, 0, sizeof *x);
    snprintf(x->queue, sizeof x->queue, "%s", v->queue);
    snprintf(x->key, sizeof x->key, "%s", v->key ? v->key : "");
    x->outcome = v->outcome;
    x->bpm = v->bytes_per_message;
    x->messages = v->messages;
    x->retained = v->retained_bytes;
    if (v->n_sites) {
      snprintf(x->site, sizeof x->site, "%s", v->sites[0].function);
      x->share = v->sites[0].share;
    }
    size_t len = 0;
    for (size_t i = 0; i < v->n_kinds; i++)
      len += (size_t)snprintf(x->kinds + len, sizeof x->kinds - len,
                              "%s%s=%.1f", i ? " " : "",
                              v->kinds[i].key ? v->kinds[i].key : "-",
                              v->kinds[i].bytes_per_message);
  }
  pthread_mutex_unlock(&mu);
}

static size_t count_verdicts(const char *queue) {
  size_t n = 0;
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < n_verdicts; i++)
    if (!strcmp(verdicts[i].queue, queue)) n++;
  pthread_mutex_unlock(&mu);
  return n;
}

static const verdict *find_verdict(const char *queue, const char *key) {
  for (size_t i = 0; i < n_verdicts; i++)
    if (!strcmp(verdicts[i].queue, queue) &&
        (!key || !strcmp(verdicts[i].key, key)))
      return &verdicts[i];
  return NULL;
}

/* Residual callbacks: when each message ended and when it was re-checked,
 * on the test clock, and on which thread. */
#define MAX_SEQ 4096
static uint64_t end_at[MAX_SEQ], recheck_at[MAX_SEQ];
static _Atomic int n_rechecks;
static pthread_t recheck_thread;
static const char *watch_queue = "";

static void on_residual(const sluice_prof_residual *r, void *user) {
  (void)user;
  if (strcmp(r->queue, watch_queue) || r->seq >= MAX_SEQ) return;
  pthread_mutex_lock(&mu);
  if (r->after_grace) {
    recheck_at[r->seq] = t_clock_ns;
    recheck_thread = pthread_self();
    n_rechecks++;
    pthread_cond_broadcast(&cv);
  } else {
    end_at[r->seq] = t_clock_ns;
  }
  pthread_mutex_unlock(&mu);
}

static sluice_prof_opts base_opts(size_t rate) {
  sluice_prof_opts o = {
      .sample_rate = rate,
      .max_scopes = 256,
      .max_pending = 64,
      .max_keys = 8,
      .grace_ms = 100,
      .leak_threshold = 1,
      .leak_window = 10,
      .horizon_messages = 200,
      .horizon_ms = 100,
      .adaptive_messages = 100,
      .poll_ms = -1,
      .on_residual = on_residual,
      .on_leak = on_leak,
      .now_ns = t_clock,
  };
  return o;
}

static int setup(void **state) {
  (void)state;
  sluice_prof_opts o = base_opts(1);
  assert_int_equal(sluice_prof_start(&o), 0);
  return 0;
}

static int get_stats(const char *queue, const char *key, int outcome,
                     sluice_prof_residual_stats *out) {
  static sluice_prof_residual_stats v[256];
  size_t n = sluice_prof_residual_stats_get(v, 256);
  for (size_t i = 0; i < n && i < 256; i++)
    if (!strcmp(v[i].queue, queue) && v[i].outcome == outcome &&
        !strcmp(v[i].key, key ? key : "")) {
      *out = v[i];
      return 0;
    }
  memset(out, 0, sizeof *out);
  return -1;
}

/* One message: a scope around h(i), the clock moved by dt first. */
typedef int (*handler_fn)(int i);

T_NOINLINE static int deliver(const char *queue, const char *key, uint64_t seq,
                              handler_fn h, int i, uint64_t dt) {
  t_clock_ns += dt;
  sluice_prof_scope s =
      sluice_prof_scope_begin_key(queue, key ? "type" : NULL, key, seq, seq);
  assert_true(s != 0);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  int outcome = h(i);
  sluice_prof_scope_enter(prev);
  assert_int_equal(sluice_prof_scope_end(s, outcome, NULL), 0);
  return outcome;
}

/* ------------------------------------------------------------------------ */
/* An LRU of N entries of 512 B, one entry per message. */

#define LRU_MAX 1024
static void *lru[LRU_MAX];
static int lru_n = 50;

T_NOINLINE static int lru_handler(int i) {
  int slot = i % lru_n;
  TFREE(lru[slot]);
  lru[slot] = TALLOC(512);
  memset(lru[slot], i, 512);
  return SLUICE_ACK;
}

static void lru_clear(void) {
  for (int i = 0; i < LRU_MAX; i++) {
    TFREE(lru[i]);
    lru[i] = NULL;
  }
}

/* Bound (50 messages) smaller than the horizon (200 messages): growing
 * while it fills, then bounded, at both rates; never a verdict. */
static void test_lru_smaller_than_horizon(void **state) {
  (void)state;
  const char *qs[2] = {"v.lru.slow", "v.lru.fast"};
  uint64_t dts[2] = {1 * MS, MS / 20};
  sluice_prof_residual_stats st[2];
  lru_n = 50;
  for (int r = 0; r < 2; r++) {
    for (int i = 0; i < 30; i++)
      deliver(qs[r], NULL, (uint64_t)i, lru_handler, i, dts[r]);
    sluice_prof_residual_stats g;
    assert_int_equal(get_stats(qs[r], NULL, SLUICE_ACK, &g), 0);
    assert_int_equal(g.state, SLUICE_PROF_GROWING);
    assert_true(g.level_off_messages > 0);
    for (int i = 30; i < 1000; i++)
      deliver(qs[r], NULL, (uint64_t)i, lru_handler, i, dts[r]);
    assert_int_equal(get_stats(qs[r], NULL, SLUICE_ACK, &st[r]), 0);
    lru_clear();
  }
  for (int r = 0; r < 2; r++) {
    assert_int_equal(st[r].state, SLUICE_PROF_BOUNDED);
    assert_int_equal(st[r].retained_bytes, 50 * 512);
    assert_true(st[r].bytes_per_message > -1 && st[r].bytes_per_message < 1);
    assert_true(st[r].oldest_age_messages <= 60);
    assert_int_equal(count_verdicts(qs[r]), 0);
  }
}

/* Bound (400 messages) larger than the horizon (200 messages, 100 ms): at
 * 1 ms per message the growth outlasts the horizon (a LEAK is allowed
 * there: that is what the horizon means), then levels off: bounded. At
 * 0.1 ms per message the horizon in time has not passed when it levels
 * off: never a LEAK. Cleared, both are ok: nothing is sticky. */
static void test_lru_larger_than_horizon(void **state) {
  (void)state;
  const char *qs[2] = {"v.big.slow", "v.big.fast"};
  uint64_t dts[2] = {1 * MS, MS / 10};
  lru_n = 400;
  sluice_prof_residual_stats st;
  for (int r = 0; r < 2; r++) {
    for (int i = 0; i < 1500; i++)
      deliver(qs[r], NULL, (uint64_t)i, lru_handler, i, dts[r]);
    assert_int_equal(get_stats(qs[r], NULL, SLUICE_ACK, &st), 0);
    assert_int_equal(st.state, SLUICE_PROF_BOUNDED);
    assert_int_equal(st.retained_bytes, 400 * 512);
    lru_clear();
    assert_int_equal(get_stats(qs[r], NULL, SLUICE_ACK, &st), 0);
    assert_int_equal(st.state, SLUICE_PROF_OK);
  }
  const verdict *v = find_verdict(qs[0], NULL);
  assert_non_null(v);
  assert_true(v->bpm > 500 && v->bpm < 520);
  assert_int_equal(count_verdicts(qs[0]), 1);
  assert_int_equal(count_verdicts(qs[1]), 0);
}

/* ------------------------------------------------------------------------ */
/* A TTL cache: entries live 30 ms (longer than the 10 ms grace below);
 * each message expires what is due. Traffic rises from 1 to 20 messages
 * per ms, so the cache grows all along: but nothing it holds is older than
 * 30 ms, so it is never a leak. */

#define TTL_MAX 4096
static void *ttl_v[TTL_MAX];
static uint64_t ttl_exp[TTL_MAX];
static int ttl_head, ttl_tail;

static void ttl_expire(uint64_t now) {
  while (ttl_head != ttl_tail && ttl_exp[ttl_head] <= now) {
    TFREE(ttl_v[ttl_head]);
    ttl_v[ttl_head] = NULL;
    ttl_head = (ttl_head + 1) % TTL_MAX;
  }
}

T_NOINLINE static int ttl_handler(int i) {
  ttl_expire(t_clock_ns);
  ttl_v[ttl_tail] = TALLOC(256);
  memset(ttl_v[ttl_tail], i, 256);
  ttl_exp[ttl_tail] = t_clock_ns + 30 * MS;
  ttl_tail = (ttl_tail + 1) % TTL_MAX;
  return SLUICE_ACK;
}

static void test_ttl_cache_rising_traffic(void **state) {
  (void)state;
  sluice_prof_opts o = base_opts(1);
  o.grace_ms = 10;
  assert_int_equal(sluice_prof_start(&o), 0);
  const char *q = "v.ttl";
  watch_queue = q;
  n_rechecks = 0;
  uint64_t dt = 1 * MS;
  for (int i = 0; i < 3000; i++) {
    deliver(q, NULL, (uint64_t)i, ttl_handler, i, dt);
    if (i % 100 == 99 && dt > MS / 20) dt = dt * 9 / 10;
  }
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats(q, NULL, SLUICE_ACK, &st), 0);
  assert_true(st.state == SLUICE_PROF_GROWING ||
              st.state == SLUICE_PROF_BOUNDED);
  assert_true(st.oldest_age_seconds <= 0.031);
  assert_int_equal(count_verdicts(q), 0);
  /* Every entry outlived the grace period: "leaked" for the callback,
   * re-checked no earlier than 10 ms after its message ended. */
  assert_true(st.leaked > 0);
  for (int i = 0; i < MAX_SEQ; i++)
    if (recheck_at[i]) assert_true(recheck_at[i] >= end_at[i] + 10 * MS);
  /* Traffic stops; the entries expire: ok, without a new message. */
  t_clock_ns += 100 * MS;
  ttl_expire(t_clock_ns);
  assert_int_equal(get_stats(q, NULL, SLUICE_ACK, &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.state, SLUICE_PROF_OK);
  watch_queue = "";
  memset(end_at, 0, sizeof end_at);
  memset(recheck_at, 0, sizeof recheck_at);
}

/* ------------------------------------------------------------------------ */
/* One message in ten leaks 128 B: 12.8 B per message, the same figures at
 * 1 ms and at 0.05 ms per message (every message counts when it ends;
 * retained includes the messages still in their grace period). */

#define KEEP_MAX 16384
static void *keep[KEEP_MAX];
static size_t n_keep;

T_NOINLINE static int one_in_ten(int i) {
  char *p = TALLOC(128);
  memset(p, i, 128);
  if (i % 10 == 3) keep[n_keep++] = p;
  else TFREE(p);
  return SLUICE_ACK;
}

static void keep_clear(void) {
  for (size_t i = 0; i < n_keep; i++) TFREE(keep[i]);
  n_keep = 0;
}

static void test_speed_independence(void **state) {
  (void)state;
  const char *qs[2] = {"v.speed.slow", "v.speed.fast"};
  uint64_t dts[2] = {1 * MS, MS / 20};
  sluice_prof_residual_stats st[2];
  for (int r = 0; r < 2; r++) {
    for (int i = 0; i < 4000; i++)
      deliver(qs[r], NULL, (uint64_t)i, one_in_ten, i, dts[r]);
    assert_int_equal(get_stats(qs[r], NULL, SLUICE_ACK, &st[r]), 0);
    const verdict *v = find_verdict(qs[r], NULL);
    assert_non_null(v);
    assert_true(v->bpm > 12.8 * 0.95 && v->bpm < 12.8 * 1.05);
  }
  for (int r = 0; r < 2; r++) {
    assert_int_equal(st[r].state, SLUICE_PROF_LEAK);
    assert_int_equal(st[r].retained_bytes, 400 * 128);
    assert_true(st[r].bytes_per_message > 12.8 * 0.95 &&
                st[r].bytes_per_message < 12.8 * 1.05);
    assert_true(st[r].objects_per_message > 0.095 &&
                st[r].objects_per_message < 0.105);
  }
  double ratio = st[0].bytes_per_message / st[1].bytes_per_message;
  assert_true(ratio > 0.95 && ratio < 1.05);
  keep_clear();
}

/* ------------------------------------------------------------------------ */
/* Key values: only the health probes leak. */

T_NOINLINE static int probe_leaks(int i) {
  char *p = TALLOC(128);
  memset(p, i, 128);
  if (i % 10 == 0) keep[n_keep++] = p; /* a probe: returns early */
  else TFREE(p);
  return SLUICE_ACK;
}

static int capture_stderr(char *path, size_t cap) {
  snprintf(path, cap, "%s/sluice-verdict-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  int saved = dup(2);
  dup2(fd, 2);
  close(fd);
  return saved;
}

static char *restore_stderr(int saved, const char *path) {
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  static char text[8192];
  size_t n = fread(text, 1, sizeof text - 1, f);
  text[n] = 0;
  fclose(f);
  unlink(path);
  return text;
}

static void test_key_values(void **state) {
  (void)state;
  const char *q = "v.keys";
  char path[256];
  sluice_prof_opts o = base_opts(1);
  o.on_leak = NULL; /* the line on stderr */
  assert_int_equal(sluice_prof_start(&o), 0);
  int saved = capture_stderr(path, sizeof path);
  for (int i = 0; i < 3000; i++)
    deliver(q, i % 10 == 0 ? "probe" : "push", (uint64_t)i, probe_leaks, i,
            1 * MS);
  char *line = restore_stderr(saved, path);
  assert_non_null(strstr(line, "LEAK queue=v.keys outcome=ack type=probe: "
                               "128.0 B and 1.00 objects per message"));
  assert_non_null(strstr(line, "[type=probe: 128.0 B/message LEAK, "
                               "type=push: 0]"));
  assert_non_null(strstr(line, "probe_leaks"));
  sluice_prof_residual_stats probe, push;
  assert_int_equal(get_stats(q, "probe", SLUICE_ACK, &probe), 0);
  assert_int_equal(get_stats(q, "push", SLUICE_ACK, &push), 0);
  assert_string_equal(probe.key_name, "type");
  assert_int_equal(probe.state, SLUICE_PROF_LEAK);
  assert_true(probe.bytes_per_message > 127.9 &&
              probe.bytes_per_message < 128.1);
  assert_int_equal(push.state, SLUICE_PROF_OK);
  assert_int_equal(push.retained_bytes, 0);

  /* pprof: a "key" label, so that -tagfocus key=probe works. */
  tbuf out = {0};
  sluice_prof_output po = {.format = SLUICE_PROF_FMT_PPROF,
                           .value = SLUICE_PROF_RESIDUAL_SPACE,
                           .queue = q};
  assert_int_equal(sluice_prof_write(NULL, &po, tbuf_write, &out), 0);
  tprofile p;
  assert_int_equal(tprofile_parse(out.data, out.len, &p), 0);
  int64_t probe_b = 0;
  int t = tprofile_type_index(&p, "residual_space");
  for (size_t i = 0; i < p.n_samples; i++) {
    const tlabel *k = tsample_label(&p.samples[i], "key");
    assert_non_null(k);
    assert_string_equal(k->str, "probe");
    probe_b += p.samples[i].values[t];
  }
  assert_int_equal(probe_b, 300 * 128);
  tprofile_free(&p);
  /* The report has a row per key value; the key filter keeps one. */
  out.len = 0;
  sluice_prof_output ro = {.format = SLUICE_PROF_FMT_RESIDUAL, .queue = q};
  assert_int_equal(sluice_prof_write(NULL, &ro, tbuf_write, &out), 0);
  assert_non_null(strstr(tbuf_str(&out), "type=probe"));
  assert_non_null(strstr(tbuf_str(&out), "type=push"));
  out.len = 0;
  ro.key = "push";
  assert_int_equal(sluice_prof_write(NULL, &ro, tbuf_write, &out), 0);
  assert_null(strstr(tbuf_str(&out), "type=probe"));
  tbuf_free(&out);
  keep_clear();
  o = base_opts(1);
  assert_int_equal(sluice_prof_start(&o), 0);
}

/* Many key values: at most max_keys (8) rows of their own per queue, the
 * rest under "(other)"; a value that holds memory keeps its row. */
static char key_buf[32];
static const char *many_key(int i) {
  snprintf(key_buf, sizeof key_buf, "v%d", i % 100);
  return key_buf;
}

T_NOINLINE static int v3_leaks(int i) {
  char *p = TALLOC(64);
  memset(p, i, 64);
  if (i % 100 == 3) keep[n_keep++] = p;
  else TFREE(p);
  return SLUICE_ACK;
}

static void test_key_cardinality(void **state) {
  (void)state;
  const char *q = "v.many";
  for (int i = 0; i < 3000; i++)
    deliver(q, many_key(i), (uint64_t)i, v3_leaks, i, 1 * MS);
  static sluice_prof_residual_stats v[256];
  size_t n = sluice_prof_residual_stats_get(v, 256);
  size_t rows = 0;
  uint64_t msgs = 0;
  int other = 0, v3 = 0;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(v[i].queue, q)) continue;
    rows++;
    msgs += v[i].messages;
    if (!strcmp(v[i].key, "(other)")) other = 1;
    if (!strcmp(v[i].key, "v3")) {
      v3 = 1;
      assert_int_equal(v[i].retained_bytes, 30 * 64);
    }
  }
  assert_true(rows <= 9);
  assert_true(other);
  assert_true(v3);
  assert_int_equal(msgs, 3000); /* every message counted somewhere */
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  assert_true(ms.keys_overflow > 0);
  keep_clear();
}

/* ------------------------------------------------------------------------ */
/* The grace period is never shortened: with 64 re-checks pending at most
 * and 100 messages per grace period, the others are skipped (counted),
 * and every re-check comes at least the grace period after its message. */

T_NOINLINE static int keep_all(int i) {
  char *p = TALLOC(32);
  memset(p, i, 32);
  keep[n_keep++] = p;
  return SLUICE_ACK;
}

static void test_grace_never_shortened(void **state) {
  (void)state;
  const char *q = "v.grace";
  watch_queue = q;
  memset(end_at, 0, sizeof end_at);
  memset(recheck_at, 0, sizeof recheck_at);
  for (int i = 0; i < 1000; i++)
    deliver(q, NULL, (uint64_t)i, keep_all, i, 1 * MS);
  t_clock_ns += 200 * MS;
  sluice_prof_poll();
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats(q, NULL, SLUICE_ACK, &st), 0);
  assert_true(st.skipped > 0);
  assert_int_equal(st.leaked + st.cached + st.skipped, st.with_residual);
  assert_int_equal(st.retained_bytes, 1000 * 32);
  int checked = 0;
  for (int i = 0; i < 1000; i++)
    if (recheck_at[i]) {
      assert_true(recheck_at[i] >= end_at[i] + 100 * MS);
      checked++;
    }
  assert_int_equal(checked, st.leaked);
  assert_true(checked >= 64); /* sampled, spread over the run */
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  assert_true(ms.rechecks_skipped >= st.skipped);
  tbuf out = {0};
  sluice_prof_output ro = {.format = SLUICE_PROF_FMT_RESIDUAL, .queue = q};
  assert_int_equal(sluice_prof_write(NULL, &ro, tbuf_write, &out), 0);
  assert_non_null(strstr(tbuf_str(&out), "re-checks skipped"));
  tbuf_free(&out);
  watch_queue = "";
  keep_clear();
}

/* ------------------------------------------------------------------------ */
/* Adaptive stacks at the default rate: 96 B at one site and 32 B at
 * another per message. Once the group turns growing, the next 100
 * messages are captured at weight 1: the verdict's sites are then within
 * 10% of the truth (75% / 25% of the exact retained). */

T_NOINLINE static void *site_big(void) {
  return TALLOC(96);
}
T_NOINLINE static void *site_small(void) {
  return TALLOC(32);
}
T_NOINLINE static int two_sites(int i) {
  (void)i;
  keep[n_keep++] = site_big();
  keep[n_keep++] = site_small();
  return SLUICE_ACK;
}

static void test_adaptive_stacks(void **state) {
  (void)state;
  sluice_prof_opts o = base_opts(524288);
  assert_int_equal(sluice_prof_start(&o), 0);
  const char *q = "v.adaptive";
  for (int i = 0; i < 1000; i++)
    deliver(q, NULL, (uint64_t)i, two_sites, i, 1 * MS);
  const verdict *v = find_verdict(q, NULL);
  assert_non_null(v);
  assert_string_equal(v->site, "site_big");
  assert_true(v->share > 0.75 * 0.9 && v->share < 0.75 * 1.1);
  /* The residual report's sites, from the same captures. */
  tbuf out = {0};
  sluice_prof_output ro = {.format = SLUICE_PROF_FMT_RESIDUAL, .queue = q};
  assert_int_equal(sluice_prof_write(NULL, &ro, tbuf_write, &out), 0);
  const char *big = strstr(tbuf_str(&out), "site_big");
  const char *small = strstr(tbuf_str(&out), "site_small");
  assert_non_null(big);
  assert_non_null(small);
  tbuf_free(&out);
  keep_clear();
  o = base_opts(1);
  assert_int_equal(sluice_prof_start(&o), 0);
}

/* ------------------------------------------------------------------------ */
/* Deferred completion on a thread that never entered the delivery. */

#define N_DEFER 80
static sluice_delivery_info g_info;
static void *g_tok[N_DEFER];
static void *g_kept[N_DEFER];

static void *completer(void *arg) {
  int entered = (int)(intptr_t)arg;
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  for (int i = 0; i < N_DEFER; i++) {
    if (entered) hk->resume(hk->user, g_tok[i]);
    g_kept[i] = TALLOC(48); /* the reply callback's work */
    memset(g_kept[i], i, 48);
    if (entered) hk->suspend(hk->user, g_tok[i]);
    hk->end(hk->user, g_tok[i], &g_info, SLUICE_ACK);
  }
  return NULL;
}

static uint64_t run_deferred(int entered) {
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  g_info = (sluice_delivery_info){"v.deferred", 1, 1, 1, 0, NULL, NULL};
  for (int i = 0; i < N_DEFER; i++) {
    g_tok[i] = hk->begin(hk->user, &g_info);
    assert_non_null(g_tok[i]);
    hk->suspend(hk->user, g_tok[i]); /* the handler returned DEFER */
  }
  pthread_t th;
  assert_int_equal(
      pthread_create(&th, NULL, completer, (void *)(intptr_t)entered), 0);
  pthread_join(th, NULL);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("v.deferred", NULL, SLUICE_ACK, &st), 0);
  for (int i = 0; i < N_DEFER; i++) TFREE(g_kept[i]);
  return st.bytes_at_end;
}

static void test_deferred_warning(void **state) {
  (void)state;
  char path[256];
  sluice_prof_memstats a, b;
  sluice_prof_memstats_read(&a);
  int saved = capture_stderr(path, sizeof path);
  uint64_t bytes = run_deferred(1); /* entered: counted, no warning */
  char *text = restore_stderr(saved, path);
  assert_int_equal(bytes, N_DEFER * 48);
  assert_null(strstr(text, "sluice_delivery_enter"));
  sluice_prof_memstats_read(&b);
  assert_int_equal(b.deferred_unentered, a.deferred_unentered);

  saved = capture_stderr(path, sizeof path);
  bytes = run_deferred(0); /* not entered: not counted, but warned */
  text = restore_stderr(saved, path);
  assert_int_equal(bytes, N_DEFER * 48); /* only the first run's */
  assert_non_null(strstr(text, "sluice_delivery_enter"));
  sluice_prof_memstats_read(&b);
  assert_true(b.deferred_unentered > a.deferred_unentered);
}

/* ------------------------------------------------------------------------ */
/* The background thread runs the re-checks when nobody calls anything
 * (real clock, 20 ms poll, 30 ms grace). */

static void test_background_recheck(void **state) {
  (void)state;
  sluice_prof_opts o = base_opts(1);
  o.now_ns = NULL;
  o.poll_ms = 20;
  o.grace_ms = 30;
  assert_int_equal(sluice_prof_start(&o), 0);
  const char *q = "v.bg";
  watch_queue = q;
  n_rechecks = 0;
  for (int i = 0; i < 10; i++) {
    sluice_prof_scope s = sluice_prof_scope_begin(q, (uint64_t)i, 0);
    sluice_prof_scope prev = sluice_prof_scope_enter(s);
    keep_all(i);
    sluice_prof_scope_enter(prev);
    assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, NULL), 0);
  }
  /* Wait for the re-checks (bounded: 10 s). */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 10;
  pthread_mutex_lock(&mu);
  int rc = 0;
  while (n_rechecks < 10 && rc == 0) rc = pthread_cond_timedwait(&cv, &mu, &ts);
  pthread_t who = recheck_thread;
  pthread_mutex_unlock(&mu);
  if (n_rechecks != 10) {
    sluice_prof_residual_stats st;
    get_stats(q, NULL, SLUICE_ACK, &st);
    fprintf(
        stderr,
        "msgs %lu resid %lu leaked %lu cached %lu skipped %lu pending %lu\n",
        (unsigned long)st.messages, (unsigned long)st.with_residual,
        (unsigned long)st.leaked, (unsigned long)st.cached,
        (unsigned long)st.skipped, (unsigned long)st.pending);
  }
  assert_int_equal(n_rechecks, 10);
  assert_false(pthread_equal(who, pthread_self()));
  /* Stop and start again: the thread comes back with the next scope. */
  sluice_prof_stop();
  sluice_prof_opts o2 = base_opts(1);
  assert_int_equal(sluice_prof_start(&o2), 0);
  watch_queue = "";
  keep_clear();
}

/* ------------------------------------------------------------------------ */
/* The leak check for users' tests, without a broker. */

static int check_clean(uint64_t i, void *user) {
  (void)user;
  char *p = TALLOC(200);
  memset(p, (int)i, 200);
  TFREE(p);
  return SLUICE_ACK;
}

/* An LRU of 100 entries: bounded, filled during the warm-up. */
static int check_lru(uint64_t i, void *user) {
  (void)user;
  static void *cache[100];
  TFREE(cache[i % 100]);
  cache[i % 100] = TALLOC(300);
  memset(cache[i % 100], 1, 300);
  return SLUICE_ACK;
}

T_NOINLINE static void *check_leak_site(void) {
  return TALLOC(64);
}

static int check_leaky(uint64_t i, void *user) {
  (void)i;
  (void)user;
  keep[n_keep++] = check_leak_site();
  return SLUICE_ACK;
}

static void test_leak_check(void **state) {
  (void)state;
  sluice_prof_check_opts o = {.name = "check.clean", .messages = 500};
  SLUICE_PROF_ASSERT_NO_LEAK(&o, check_clean, NULL);
  o.name = "check.lru";
  SLUICE_PROF_ASSERT_NO_LEAK(&o, check_lru, NULL);
  /* A leak fails, with the figure and the site. */
  o.name = "check.leaky";
  sluice_prof_check_result r;
  assert_int_equal(sluice_prof_check_run(&o, check_leaky, NULL, &r), 0);
  assert_true(r.leaked);
  assert_true(r.bytes_per_message > 63.9 && r.bytes_per_message < 64.1);
  assert_int_equal(r.messages, 500);
  assert_non_null(r.report);
  assert_non_null(strstr(r.report, "LEAK"));
  assert_non_null(strstr(r.report, "check_leak_site"));
  sluice_prof_check_free(&r);
  keep_clear();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_leak_check, setup),
      cmocka_unit_test_setup(test_lru_smaller_than_horizon, setup),
      cmocka_unit_test_setup(test_lru_larger_than_horizon, setup),
      cmocka_unit_test_setup(test_ttl_cache_rising_traffic, setup),
      cmocka_unit_test_setup(test_speed_independence, setup),
      cmocka_unit_test_setup(test_key_values, setup),
      cmocka_unit_test_setup(test_key_cardinality, setup),
      cmocka_unit_test_setup(test_grace_never_shortened, setup),
      cmocka_unit_test_setup(test_adaptive_stacks, setup),
      cmocka_unit_test_setup(test_deferred_warning, setup),
      cmocka_unit_test_setup(test_background_recheck, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
