/* SPDX-License-Identifier: MIT */
/* The memory guard against the real broker on 127.0.0.1:5672: handlers that
 * allocate and keep what they allocate (a cache that grows) push the figure
 * over the high mark; the guard stops reading; what was held when it did is
 * handled and nothing else while the figure stays up (counted, never
 * timed); a releaser frees the cache once nothing is held; reading resumes
 * below the low mark; every message is handled once. With an injected
 * reader (the cache's exact size: deterministic) and with the default one
 * (the real heap: this build's allocator, whatever it is), in MANUAL and
 * AUTO modes, inline and with workers. Then a long pause across heartbeats
 * and a reconnect (through the test proxy), and a guard above its mark
 * from the start. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "common/broker_util.h"
#include "common/proxy.h"

#define MAXN 2000
#define MAXHELD 4096

struct g {
  sluice_consumer *c;
  unsigned n;
  size_t chunk; /* what a handler allocates and keeps */
  int injected; /* the reader is the cache's size */
  _Atomic unsigned char seen[MAXN];
  _Atomic unsigned calls, acks, redelivered;

  /* the cache: chunks kept past their message */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  char *held[MAXHELD];
  size_t n_held;
  _Atomic uint64_t held_bytes;
  _Atomic unsigned reads;           /* injected reader calls */
  _Atomic uint64_t figure_override; /* 0: none (injected reader only) */

  /* the pause now, written by the event callback (loop thread) */
  _Atomic int paused;
  _Atomic int drained; /* paused, and nothing was held any more */
  _Atomic unsigned calls_at_pause;
  _Atomic uint64_t budget; /* deliveries held when the pause began */
  _Atomic unsigned pauses, resumes, connects, closes;
  _Atomic unsigned over_budget; /* handled past what was held at the pause */
  _Atomic unsigned after_drain; /* handled once nothing was held */
  _Atomic unsigned bad_events;  /* an event whose figures are wrong */
  uint64_t max_budget;
  unsigned quiet_checks; /* checks seen while paused and drained, summed */
  const char *source;
  int quit;
};

static void nap_ms(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int injected_read(void *user, uint64_t *bytes) {
  struct g *x = user;
  uint64_t o = atomic_load(&x->figure_override);
  *bytes = o ? o : atomic_load(&x->held_bytes);
  pthread_mutex_lock(&x->mu);
  atomic_fetch_add(&x->reads, 1);
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  return 0;
}

static int handler(sluice_delivery *d, const sluice_message *m, void *user) {
  struct g *x = user;
  (void)d;
  assert_non_null(m->props.message_id);
  unsigned id = (unsigned)strtoul(m->props.message_id, NULL, 10);
  assert_true(id < MAXN);
  unsigned call = atomic_fetch_add(&x->calls, 1) + 1;
  if (atomic_load(&x->paused)) {
    /* Only what the consumer held when the guard paused may still come.
     * Signed: with workers, a handler that counted its call before the
     * pause may see `paused` after it, behind calls counted later (an
     * unsigned difference wrapped round and counted it over budget). */
    long past = (long)call - (long)atomic_load(&x->calls_at_pause);
    if (past > (long)atomic_load(&x->budget))
      atomic_fetch_add(&x->over_budget, 1);
    if (atomic_load(&x->drained)) atomic_fetch_add(&x->after_drain, 1);
  }
  if (m->redelivered) atomic_fetch_add(&x->redelivered, 1);
  atomic_fetch_add(&x->seen[id], 1);
  if (x->chunk) {
    char *p = malloc(x->chunk);
    assert_non_null(p);
    memset(p, (int)id, x->chunk); /* touched: real memory */
    pthread_mutex_lock(&x->mu);
    assert_true(x->n_held < MAXHELD);
    x->held[x->n_held++] = p;
    atomic_fetch_add(&x->held_bytes, x->chunk);
    pthread_mutex_unlock(&x->mu);
  }
  if (atomic_fetch_add(&x->acks, 1) + 1 == x->n) sluice_consumer_stop(x->c);
  return SLUICE_ACK;
}

static void on_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  struct g *x = user;
  sluice_consumer_stats st;
  switch (ev->type) {
    case SLUICE_EV_MEMORY_PAUSED:
      sluice_consumer_get_stats(c, &st);
      if (!(ev->bytes > ev->limit && ev->limit == st.memory_high_bytes &&
            st.memory_paused && ev->text && *ev->text))
        atomic_fetch_add(&x->bad_events, 1);
      x->source = ev->text;
      atomic_store(&x->calls_at_pause, atomic_load(&x->calls));
      atomic_store(&x->budget, st.in_flight);
      if (st.in_flight > x->max_budget) x->max_budget = st.in_flight;
      atomic_store(&x->paused, 1);
      pthread_mutex_lock(&x->mu);
      atomic_fetch_add(&x->pauses, 1);
      pthread_cond_broadcast(&x->cv);
      pthread_mutex_unlock(&x->mu);
      break;
    case SLUICE_EV_MEMORY_RESUMED:
      sluice_consumer_get_stats(c, &st);
      if (!(ev->bytes < ev->limit && ev->limit == st.memory_low_bytes &&
            !st.memory_paused))
        atomic_fetch_add(&x->bad_events, 1);
      atomic_store(&x->drained, 0);
      atomic_store(&x->paused, 0);
      atomic_fetch_add(&x->resumes, 1);
      break;
    case SLUICE_EV_CONNECTED:
      pthread_mutex_lock(&x->mu);
      atomic_fetch_add(&x->connects, 1);
      pthread_cond_broadcast(&x->cv);
      pthread_mutex_unlock(&x->mu);
      break;
    case SLUICE_EV_CLOSED: atomic_fetch_add(&x->closes, 1); break;
    default: break;
  }
}

static void free_cache(struct g *x) {
  pthread_mutex_lock(&x->mu);
  for (size_t i = 0; i < x->n_held; i++) free(x->held[i]);
  x->n_held = 0;
  atomic_store(&x->held_bytes, 0);
  pthread_mutex_unlock(&x->mu);
}

/* Poll a consumer counter: the consumer has no event for "nothing is held"
 * or "checked again"; bounded by `ms`. */
static int wait_stats(struct g *x,
                      int (*ok)(const sluice_consumer_stats *, const void *),
                      const void *arg, int ms) {
  uint64_t end = now_ms() + (uint64_t)ms;
  for (;;) {
    sluice_consumer_stats st;
    sluice_consumer_get_stats(x->c, &st);
    if (ok(&st, arg)) return 1;
    if (now_ms() >= end || sluice_consumer_stopped(x->c)) return 0;
    nap_ms(2);
  }
}

static int nothing_held(const sluice_consumer_stats *st, const void *arg) {
  (void)arg;
  return st->in_flight == 0;
}

static int checked_past(const sluice_consumer_stats *st, const void *arg) {
  return st->memory_checks >= *(const uint64_t *)arg;
}

/* The releaser: at each pause, waits until nothing is held (the in-flight
 * work finished), then for three more checks of the guard (the figure is
 * still above the mark: nothing may be read meanwhile), then frees the
 * cache, which lets the figure fall. */
static void *releaser(void *arg) {
  struct g *x = arg;
  unsigned done = 0;
  for (;;) {
    pthread_mutex_lock(&x->mu);
    while (atomic_load(&x->pauses) == done && !x->quit)
      pthread_cond_wait(&x->cv, &x->mu);
    if (x->quit) {
      pthread_mutex_unlock(&x->mu);
      return NULL;
    }
    done = atomic_load(&x->pauses);
    pthread_mutex_unlock(&x->mu);
    if (!wait_stats(x, nothing_held, NULL, 20000)) continue; /* stopping */
    atomic_store(&x->drained, 1);
    sluice_consumer_stats st;
    sluice_consumer_get_stats(x->c, &st);
    uint64_t want = st.memory_checks + 3;
    if (!wait_stats(x, checked_past, &want, 20000)) continue;
    x->quiet_checks += 3;
    free_cache(x);
  }
}

struct guard_case {
  sluice_ack_mode mode;
  int workers;
  int injected;
  unsigned n;
};

static void guard_run(const struct guard_case *k) {
  const char *q = tb_qname("guard");
  sluice_queue_decl d = {.name = q};
  tb_fresh_queue(&d);
  tb_fill(q, k->n, 64);
  struct g *x = calloc(1, sizeof(*x));
  x->n = k->n;
  x->injected = k->injected;
  pthread_mutex_init(&x->mu, NULL);
  pthread_cond_init(&x->cv, NULL);
  sluice_consumer_opts o = {.uri = TEST_URI,
                            .ack_mode = k->mode,
                            .prefetch = 10,
                            .workers = k->workers,
                            .stop_timeout_ms = 2000,
                            .on_event = on_event,
                            .event_user = x};
  o.memory_guard.interval_ms = 10;
  if (k->injected) {
    /* deterministic: the figure is the cache, 20 chunks of 64 KiB up */
    x->chunk = 64 << 10;
    o.memory_guard.high_bytes = 20 * x->chunk;
    o.memory_guard.low_bytes = 5 * x->chunk;
    o.memory_guard.read = injected_read;
    o.memory_guard.read_user = x;
  } else {
    /* the real heap, from where it stands now: 8 MiB up, back to 2 MiB
     * (what the consumer itself allocates meanwhile is a few KiB) */
    uint64_t base;
    assert_int_equal(sluice_memory_read(0, &base, NULL), 0);
    x->chunk = 256 << 10;
    o.memory_guard.high_bytes = base + 32 * x->chunk;
    o.memory_guard.low_bytes = base + 8 * x->chunk;
  }
  sluice_consumer *c = NULL;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  x->c = c;
  sluice_subscribe_opts so = {.queue = q, .handler = handler, .user = x};
  assert_int_equal(sluice_consumer_subscribe(c, &so), 0);
  pthread_t rel;
  pthread_create(&rel, NULL, releaser, x);
  int to = 0;
  assert_int_equal(tb_run_bounded(c, 120, &to), 0);
  assert_false(to);
  pthread_mutex_lock(&x->mu);
  x->quit = 1;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  pthread_join(rel, NULL);

  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  printf("  %s, %d workers, %s reader (%s): %u pauses, %u resumes, at most "
         "%llu held at a pause, %u quiet checks, %llu ms paused, %llu "
         "checks\n",
         k->mode == SLUICE_ACK_AUTO ? "AUTO" : "MANUAL", k->workers,
         k->injected ? "injected" : "default", st.memory_source, x->pauses,
         x->resumes, (unsigned long long)x->max_budget, x->quiet_checks,
         (unsigned long long)st.memory_paused_ms,
         (unsigned long long)st.memory_checks);
  /* The guard paused, and let go each time it had to (the last pause may
   * come after the last message). With the injected reader the figure
   * climbs 20 chunks from 0 after each resume: the run holds far more than
   * what is read between two checks, so it pauses again. With the real
   * heap a slow reading spaces the checks (memguard.c): one pause is what
   * is certain. */
  assert_true(x->pauses >= (k->injected ? 2u : 1u));
  assert_true(x->resumes >= x->pauses - 1);
  assert_int_equal(st.memory_pauses, x->pauses);
  assert_int_equal(x->bad_events, 0);
  /* while paused: only what was held at the pause was handled, and
   * nothing at all once that was done, over every quiet check */
  assert_int_equal(x->over_budget, 0);
  assert_int_equal(x->after_drain, 0);
  assert_true(x->quiet_checks >= 3 * (x->pauses - 1));
  if (k->mode == SLUICE_ACK_MANUAL) assert_true(x->max_budget <= 10);
  assert_string_equal(st.memory_source, k->injected ? "reader"
                                        : x->source ? x->source
                                                    : "?");
  if (!k->injected) assert_string_not_equal(st.memory_source, "rss");
  /* nothing lost, nothing twice */
  for (unsigned i = 0; i < k->n; i++)
    if (x->seen[i] != 1) fail_msg("message %u handled %d times", i, x->seen[i]);
  assert_int_equal(st.delivered, k->n);
  assert_int_equal(st.acked, k->n);
  assert_int_equal(st.dropped, 0);
  assert_int_equal(x->redelivered, 0);
  assert_int_equal(x->closes, 0);
  sluice_consumer_free(c);
  assert_int_equal(tb_depth_eventually(q, 0, 5000), 0);
  tb_delete_queue(q);
  free_cache(x);
  pthread_mutex_destroy(&x->mu);
  pthread_cond_destroy(&x->cv);
  free(x);
}

/* Enough messages for a second pause however fast the consumer goes: the
 * checks come every 10 ms, and a quiet machine consumed 341 messages
 * before the first one (600 messages then left room for one pause). */
static void injected_manual_inline(void **s) {
  struct guard_case k = {SLUICE_ACK_MANUAL, 0, 1, MAXN};
  guard_run(&k);
}
static void injected_manual_workers(void **s) {
  struct guard_case k = {SLUICE_ACK_MANUAL, 3, 1, MAXN};
  guard_run(&k);
}
/* autoAck reads a whole pass (256 frames) between two checks: more
 * messages, for several pauses */
static void injected_auto_workers(void **s) {
  struct guard_case k = {SLUICE_ACK_AUTO, 2, 1, 1500};
  guard_run(&k);
}
static void default_manual_workers(void **s) {
  struct guard_case k = {SLUICE_ACK_MANUAL, 2, 0, 300};
  guard_run(&k);
}
static void default_auto_inline(void **s) {
  struct guard_case k = {SLUICE_ACK_AUTO, 0, 0, 1000};
  guard_run(&k);
}

/* ---- a long pause: heartbeats, a reconnect ------------------------------ */

/* Wait (at most ms) until the counter `n` of x reaches `want`; 1 if so.
 * The counters are bumped under x->mu with a broadcast of x->cv. */
static int count_reaches(struct g *x, _Atomic unsigned *n, unsigned want,
                         int ms) {
  uint64_t end = now_ms() + (uint64_t)ms;
  pthread_mutex_lock(&x->mu);
  while (atomic_load(n) < want && now_ms() < end) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 50 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&x->cv, &x->mu, &ts);
  }
  int ok = atomic_load(n) >= want;
  pthread_mutex_unlock(&x->mu);
  return ok;
}

static int reads_past(struct g *x, unsigned want, int ms) {
  return count_reaches(x, &x->reads, want, ms);
}

static int connects_past(struct g *x, unsigned want, int ms) {
  return count_reaches(x, &x->connects, want, ms);
}

struct long_pause {
  struct g *x;
  tproxy *px;
  int failed_line;
  uint64_t gen_before, gen_after;
};

#define LP_CHECK(cond)            \
  do {                            \
    if (!(cond)) {                \
      lp->failed_line = __LINE__; \
      goto out;                   \
    }                             \
  } while (0)

/* Above the mark from the start: connected, never reading; four heartbeat
 * intervals pass (the broker drops a silent client after about three);
 * the connection is cut and comes back, still not reading; then the
 * figure falls and every message is handled once. */
static void *long_pause_driver(void *arg) {
  struct long_pause *lp = arg;
  struct g *x = lp->x;
  sluice_consumer_stats st;
  /* 50 ms per check: 80 checks are 4 s, four heartbeat intervals */
  LP_CHECK(connects_past(x, 1, 20000));
  unsigned r0 = atomic_load(&x->reads);
  LP_CHECK(reads_past(x, r0 + 80, 30000));
  sluice_consumer_get_stats(x->c, &st);
  LP_CHECK(st.connected && st.memory_paused);
  LP_CHECK(atomic_load(&x->calls) == 0 && atomic_load(&x->closes) == 0);
  lp->gen_before = st.generation;
  LP_CHECK(tproxy_cut(lp->px) >= 1);
  LP_CHECK(connects_past(x, 2, 30000));
  r0 = atomic_load(&x->reads);
  LP_CHECK(reads_past(x, r0 + 10, 30000));
  sluice_consumer_get_stats(x->c, &st);
  lp->gen_after = st.generation;
  LP_CHECK(st.connected && st.memory_paused);
  LP_CHECK(atomic_load(&x->calls) == 0);
out:
  atomic_store(&x->figure_override, 1); /* below the low mark: resume */
  return NULL;
}

static void paused_across_heartbeats_and_reconnect(void **s) {
  const char *q = tb_qname("guard.long");
  sluice_queue_decl d = {.name = q};
  tb_fresh_queue(&d);
  unsigned n = 50;
  tb_fill(q, n, 64);
  tproxy *px = NULL;
  assert_int_equal(tproxy_start(5672, &px), 0);
  char uri[128];
  tproxy_uri(px, uri, sizeof(uri));
  struct g *x = calloc(1, sizeof(*x));
  x->n = n;
  x->injected = 1;
  pthread_mutex_init(&x->mu, NULL);
  pthread_cond_init(&x->cv, NULL);
  atomic_store(&x->figure_override, 1000000); /* far above the mark */
  sluice_consumer_opts o = {.uri = uri,
                            .heartbeat_s = 1,
                            .prefetch = 10,
                            .on_event = on_event,
                            .event_user = x,
                            .log_level = SLUICE_LOG_ERROR};
  o.reconnect.enabled = 1;
  o.reconnect.min_delay_ms = 50;
  o.reconnect.max_delay_ms = 200;
  o.memory_guard.high_bytes = 1000;
  o.memory_guard.interval_ms = 50;
  o.memory_guard.read = injected_read;
  o.memory_guard.read_user = x;
  sluice_consumer *c = NULL;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  x->c = c;
  sluice_subscribe_opts so = {.queue = q, .handler = handler, .user = x};
  assert_int_equal(sluice_consumer_subscribe(c, &so), 0);
  struct long_pause lp = {.x = x, .px = px};
  pthread_t th;
  pthread_create(&th, NULL, long_pause_driver, &lp);
  int to = 0;
  assert_int_equal(tb_run_bounded(c, 120, &to), 0);
  pthread_join(th, NULL);
  if (lp.failed_line)
    fail_msg("long pause: check at line %d failed", lp.failed_line);
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  printf("  paused %llu ms across heartbeats (1 s) and a reconnect "
         "(generation %llu -> %llu); then %u messages\n",
         (unsigned long long)st.memory_paused_ms,
         (unsigned long long)lp.gen_before, (unsigned long long)lp.gen_after,
         n);
  /* one pause, from the start, through the reconnect; one close: the cut */
  assert_int_equal(x->pauses, 1);
  assert_int_equal(x->resumes, 1);
  assert_int_equal(x->closes, 1);
  assert_int_equal(lp.gen_after, lp.gen_before + 1);
  assert_int_equal(x->bad_events, 0);
  for (unsigned i = 0; i < n; i++)
    if (x->seen[i] != 1) fail_msg("message %u handled %d times", i, x->seen[i]);
  assert_int_equal(st.acked, n);
  sluice_consumer_free(c);
  tproxy_free(px);
  assert_int_equal(tb_depth_eventually(q, 0, 5000), 0);
  tb_delete_queue(q);
  pthread_mutex_destroy(&x->mu);
  pthread_cond_destroy(&x->cv);
  free(x);
}

/* ---- an autoAck stop while the guard holds ------------------------------ */

struct auto_stop {
  struct g *x;
  const char *q;
  int failed_line;
  uint32_t depth;
};

/* The broker has pushed (and settled) every message while the guard held
 * reading: they wait in the socket buffers. A stop must read them and hand
 * them to the handlers, not leave them there until the stop timeout. */
static void *auto_stop_driver(void *arg) {
  struct auto_stop *as = arg;
  struct g *x = as->x;
  if (!connects_past(x, 1, 20000)) {
    as->failed_line = __LINE__;
    goto out;
  }
  /* the queue empties as the broker pushes, whether or not we read */
  as->depth = tb_depth_eventually(as->q, 0, 20000);
  if (as->depth != 0 || atomic_load(&x->calls) != 0) {
    as->failed_line = __LINE__;
    goto out;
  }
out:
  sluice_consumer_stop(x->c);
  return NULL;
}

static void auto_stop_while_paused_hands_every_message(void **s) {
  const char *q = tb_qname("guard.autostop");
  sluice_queue_decl d = {.name = q};
  tb_fresh_queue(&d);
  unsigned n = 200;
  tb_fill(q, n, 64);
  struct g *x = calloc(1, sizeof(*x));
  x->n = n + 1; /* the handlers never stop it: the driver does */
  x->injected = 1;
  pthread_mutex_init(&x->mu, NULL);
  pthread_cond_init(&x->cv, NULL);
  atomic_store(&x->figure_override, 1000000); /* above the mark throughout */
  sluice_consumer_opts o = {.uri = TEST_URI,
                            .ack_mode = SLUICE_ACK_AUTO,
                            .workers = 2,
                            .stop_timeout_ms = 20000u * tb_time_scale(),
                            .on_event = on_event,
                            .event_user = x,
                            .log_level = SLUICE_LOG_ERROR};
  o.memory_guard.high_bytes = 1000;
  o.memory_guard.interval_ms = 10;
  o.memory_guard.read = injected_read;
  o.memory_guard.read_user = x;
  sluice_consumer *c = NULL;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  x->c = c;
  sluice_subscribe_opts so = {.queue = q, .handler = handler, .user = x};
  assert_int_equal(sluice_consumer_subscribe(c, &so), 0);
  struct auto_stop as = {.x = x, .q = q};
  pthread_t th;
  pthread_create(&th, NULL, auto_stop_driver, &as);
  int to = 0;
  assert_int_equal(tb_run_bounded(c, 120, &to), 0);
  pthread_join(th, NULL);
  if (as.failed_line)
    fail_msg("autoAck stop: check at line %d failed (depth %u, %u handled)",
             as.failed_line, as.depth, atomic_load(&x->calls));
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  printf("  autoAck stop while paused: %u of %u handled, %llu dropped\n",
         atomic_load(&x->calls), n, (unsigned long long)st.dropped);
  /* paused from the start to the end; every message handled once, none
   * left to on_abandoned */
  assert_int_equal(x->pauses, 1);
  assert_int_equal(x->resumes, 0);
  assert_int_equal(x->bad_events, 0);
  for (unsigned i = 0; i < n; i++)
    if (x->seen[i] != 1) fail_msg("message %u handled %d times", i, x->seen[i]);
  assert_int_equal(st.delivered, n);
  assert_int_equal(st.dropped, 0);
  sluice_consumer_free(c);
  tb_delete_queue(q);
  free_cache(x);
  pthread_mutex_destroy(&x->mu);
  pthread_cond_destroy(&x->cv);
  free(x);
}

/* A reader that fails: the default figure stands in, counted. */
static int failing_read(void *user, uint64_t *bytes) {
  (void)user;
  (void)bytes;
  return SLUICE_EIO;
}

static void failing_reader_falls_back(void **s) {
  const char *q = tb_qname("guard.fail");
  sluice_queue_decl d = {.name = q};
  tb_fresh_queue(&d);
  tb_fill(q, 20, 16);
  struct g *x = calloc(1, sizeof(*x));
  x->n = 20;
  pthread_mutex_init(&x->mu, NULL);
  pthread_cond_init(&x->cv, NULL);
  sluice_consumer_opts o = {.uri = TEST_URI,
                            .on_event = on_event,
                            .event_user = x,
                            .log_level = SLUICE_LOG_ERROR};
  o.memory_guard.high_bytes = UINT64_MAX / 2; /* never reached */
  o.memory_guard.interval_ms = 10;
  o.memory_guard.read = failing_read;
  sluice_consumer *c = NULL;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  x->c = c;
  sluice_subscribe_opts so = {.queue = q, .handler = handler, .user = x};
  assert_int_equal(sluice_consumer_subscribe(c, &so), 0);
  int to = 0;
  assert_int_equal(tb_run_bounded(c, 60, &to), 0);
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  assert_true(st.memory_checks >= 1);
  assert_int_equal(st.memory_read_errors, st.memory_checks);
  assert_string_not_equal(st.memory_source, "reader");
  assert_true(st.memory_bytes > 0);
  assert_int_equal(st.memory_pauses, 0);
  assert_int_equal(st.acked, 20);
  sluice_consumer_free(c);
  tb_delete_queue(q);
  pthread_mutex_destroy(&x->mu);
  pthread_cond_destroy(&x->cv);
  free(x);
}

/* Between two timer checks handlers could allocate as they please: with a
 * reading as cheap as a counter the guard also reads the figure every few
 * deliveries (at most every 4,096), so the overshoot is bounded by
 * deliveries, not by interval_ms. The timer here would fire only after the
 * run: each pause comes from the per-delivery readings. */
struct tick {
  sluice_consumer *c;
  _Atomic uint64_t figure; /* what the handlers "keep", 1,000 per message */
  _Atomic uint64_t at_pause;
  _Atomic unsigned calls, pauses;
};

static int tick_read(void *user, uint64_t *bytes) {
  struct tick *t = user;
  *bytes = atomic_load(&t->figure);
  return 0;
}

static int tick_handler(sluice_delivery *d, const sluice_message *m,
                        void *user) {
  (void)d;
  (void)m;
  struct tick *t = user;
  atomic_fetch_add(&t->figure, 1000);
  atomic_fetch_add(&t->calls, 1);
  return SLUICE_ACK;
}

static void tick_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  struct tick *t = user;
  if (ev->type != SLUICE_EV_MEMORY_PAUSED) return;
  atomic_store(&t->at_pause, ev->bytes);
  atomic_fetch_add(&t->pauses, 1);
  sluice_consumer_stop(c);
}

static void cheap_reading_bounds_overshoot_by_deliveries(void **s) {
  (void)s;
  enum { N = 6000, HIGH = 50 * 1000 };
  const char *q = tb_qname("guard.tick");
  sluice_queue_decl d = {.name = q};
  tb_fresh_queue(&d);
  tb_fill(q, N, 16);
  struct tick *t = calloc(1, sizeof(*t));
  sluice_consumer_opts o = {.uri = TEST_URI,
                            .prefetch = 100,
                            .on_event = tick_event,
                            .event_user = t,
                            .log_level = SLUICE_LOG_ERROR};
  o.memory_guard.high_bytes = HIGH;
  o.memory_guard.interval_ms = 600000; /* only the reading at the start */
  o.memory_guard.read = tick_read;
  o.memory_guard.read_user = t;
  assert_int_equal(sluice_consumer_new(&o, &t->c), 0);
  sluice_subscribe_opts so = {.queue = q, .handler = tick_handler, .user = t};
  assert_int_equal(sluice_consumer_subscribe(t->c, &so), 0);
  int to = 0;
  assert_int_equal(tb_run_bounded(t->c, 60, &to), 0);
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(t->c, &st);
  uint64_t at = atomic_load(&t->at_pause);
  printf("  paused at %llu (high %u: %llu messages past it), %llu "
         "readings for %u messages, the last %llu us\n",
         (unsigned long long)at, (unsigned)HIGH,
         (unsigned long long)(at - HIGH) / 1000,
         (unsigned long long)st.memory_checks, atomic_load(&t->calls),
         (unsigned long long)st.memory_check_us);
  assert_int_equal(atomic_load(&t->pauses), 1);
  assert_true(at > HIGH);
  assert_true(at <= HIGH + 4096 * 1000);
  assert_true(st.memory_checks >= 2);
  sluice_consumer_free(t->c);
  tb_delete_queue(q);
  free(t);
}

int main(void) {
  tb_require_broker("test_memguard_broker");
  if (getenv("SLUICE_TEST_FILTER"))
    cmocka_set_test_filter(getenv("SLUICE_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(injected_manual_inline),
      cmocka_unit_test(injected_manual_workers),
      cmocka_unit_test(injected_auto_workers),
      cmocka_unit_test(default_manual_workers),
      cmocka_unit_test(default_auto_inline),
      cmocka_unit_test(paused_across_heartbeats_and_reconnect),
      cmocka_unit_test(auto_stop_while_paused_hands_every_message),
      cmocka_unit_test(failing_reader_falls_back),
      cmocka_unit_test(cheap_reading_bounds_overshoot_by_deliveries),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
