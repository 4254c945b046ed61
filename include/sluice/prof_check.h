/* SPDX-License-Identifier: MIT */
/** \file
 * Leak checks in a program's own tests, with or without a broker: run
 * messages through a handler and fail when the memory they keep grows with
 * their number (docs/profiling.md, "Leak checks in your tests").
 *
 * Header-only, on top of sluice/profiling.h (libsluice_prof). Include it
 * after <cmocka.h> and SLUICE_PROF_ASSERT_NO_LEAK() fails the cmocka test
 * with the report; without cmocka it prints the report on stderr and calls
 * abort(). Include it after <sluice/consumer.h> (or <sluice/sluice.h>) and
 * sluice_prof_check_consume() runs a real consumer on a queue (the program
 * then links libsluice too: libsluice_prof itself never does).
 *
 * \code
 *   static int handle(uint64_t i, void *user) { ... return SLUICE_ACK; }
 *   static void test_no_leak(void **state) {
 *     sluice_prof_check_opts o = {.name = "orders", .messages = 2000};
 *     SLUICE_PROF_ASSERT_NO_LEAK(&o, handle, NULL);
 *   }
 * \endcode
 *
 * \since 0.2 */
#ifndef SLUICE_PROF_CHECK_H
#define SLUICE_PROF_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/profiling.h>

#ifdef fail_msg /* cmocka */
#define SLUICE_PROF_CHECK_FAIL_(report) fail_msg("%s", (report))
#else
#define SLUICE_PROF_CHECK_FAIL_(report) \
  (fputs((report), stderr), fflush(stderr), abort())
#endif

/** Fail (cmocka) or abort when `res` (a sluice_prof_check_result *) says
 *  the messages leaked; free its report either way. */
#define SLUICE_PROF_ASSERT_RESULT(res)                            \
  do {                                                            \
    sluice_prof_check_result *sluice_r_ = (res);                  \
    if (sluice_r_->leaked) {                                      \
      static char sluice_msg_[8192];                              \
      snprintf(sluice_msg_, sizeof sluice_msg_, "%s",             \
               sluice_r_->report ? sluice_r_->report : "leak\n"); \
      sluice_prof_check_free(sluice_r_);                          \
      SLUICE_PROF_CHECK_FAIL_(sluice_msg_);                       \
    }                                                             \
    sluice_prof_check_free(sluice_r_);                            \
  } while (0)

/** Run `fn` (a sluice_prof_check_fn) over `opts` (a
 *  sluice_prof_check_opts *, NULL for the defaults) without a broker, and
 *  fail with the report when its messages leak. */
#define SLUICE_PROF_ASSERT_NO_LEAK(opts, fn, user)                 \
  do {                                                             \
    sluice_prof_check_result sluice_res_;                          \
    int sluice_rc_ =                                               \
        sluice_prof_check_run((opts), (fn), (user), &sluice_res_); \
    if (sluice_rc_) {                                              \
      static char sluice_err_[128];                                \
      snprintf(sluice_err_, sizeof sluice_err_,                    \
               "sluice_prof_check_run: error %d\n", sluice_rc_);   \
      SLUICE_PROF_CHECK_FAIL_(sluice_err_);                        \
    }                                                              \
    SLUICE_PROF_ASSERT_RESULT(&sluice_res_);                       \
  } while (0)

#ifdef SLUICE_CONSUMER_H
/* ---- with a broker: a real consumer ------------------------------------ */
#include <errno.h>
#include <pthread.h>
#include <time.h>

typedef struct sluice_prof_check_consumer_ {
  sluice_consumer *c;
  sluice_handler_fn handler;
  void *user;
  uint64_t n, seen;
  int timeout_s, done;
  pthread_mutex_t mu;
  pthread_cond_t cv;
} sluice_prof_check_consumer_;

/* The time bound: stop the consumer after timeout_s unless it is done. */
static inline void *sluice_prof_check_watch_(void *arg) {
  sluice_prof_check_consumer_ *k = (sluice_prof_check_consumer_ *)arg;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += k->timeout_s;
  pthread_mutex_lock(&k->mu);
  int rc = 0;
  while (!k->done && rc != ETIMEDOUT)
    rc = pthread_cond_timedwait(&k->cv, &k->mu, &ts);
  pthread_mutex_unlock(&k->mu);
  if (rc == ETIMEDOUT) sluice_consumer_stop(k->c);
  return NULL;
}

static inline int sluice_prof_check_handler_(sluice_delivery *d,
                                             const sluice_message *m,
                                             void *user) {
  sluice_prof_check_consumer_ *k = (sluice_prof_check_consumer_ *)user;
  int rc = k->handler(d, m, k->user);
  /* The consumer's thread or a worker: count with an atomic builtin. */
  if (__atomic_add_fetch(&k->seen, 1, __ATOMIC_ACQ_REL) == k->n)
    sluice_consumer_stop(k->c);
  return rc;
}

/** Consume `n` messages from `queue` with `handler` on a consumer made
 *  from `copts` (its `hooks` are set to the profiler's; a zero `copts`
 *  uses the local broker), every delivery in a scope, and measure the
 *  queue's growth per message against `max_bytes_per_message` (<= 0: 1).
 *  The messages must be there or arrive: the run stops after `n` handler
 *  calls (deferred deliveries are completed by the graceful stop), or
 *  after `timeout_s` seconds (then `out->messages` says how many).
 *  Subscribed with `key` (may be NULL) so that the report splits the
 *  queue's residual by key value. Starts the profiler if it is not
 *  running.
 *  \return 0 (the verdict is in `out->leaked`), or the consumer's error. */
static inline int sluice_prof_check_consume(
    const sluice_consumer_opts *copts, const char *queue, const char *key,
    sluice_handler_fn handler, void *user, uint64_t n, int timeout_s,
    double max_bytes_per_message, sluice_prof_check_result *out) {
  sluice_consumer_opts o;
  sluice_prof_check_consumer_ k;
  sluice_prof_check_point p;
  pthread_t watch;
  int rc, watching = 0;
  memset(&k, 0, sizeof k);
  k.handler = handler;
  k.user = user;
  k.n = n;
  k.timeout_s = timeout_s;
  if (copts) o = *copts;
  else {
    sluice_consumer_opts z = {0};
    o = z;
  }
  o.hooks = sluice_prof_delivery_hooks();
  if (!sluice_prof_running() && (rc = sluice_prof_start(NULL))) return rc;
  if ((rc = sluice_prof_check_mark(queue, &p))) return rc;
  if ((rc = sluice_consumer_new(&o, &k.c))) return rc;
  sluice_subscribe_opts so = {0};
  so.queue = queue;
  so.handler = sluice_prof_check_handler_;
  so.user = &k;
  so.key = key;
  pthread_mutex_init(&k.mu, NULL);
  pthread_cond_init(&k.cv, NULL);
  if (!(rc = sluice_consumer_subscribe(k.c, &so)) &&
      !(rc = sluice_consumer_connect(k.c))) {
    if (timeout_s > 0)
      watching = !pthread_create(&watch, NULL, sluice_prof_check_watch_, &k);
    rc = sluice_consumer_run(k.c);
  }
  if (watching) {
    pthread_mutex_lock(&k.mu);
    k.done = 1;
    pthread_cond_signal(&k.cv);
    pthread_mutex_unlock(&k.mu);
    pthread_join(watch, NULL);
  }
  pthread_mutex_destroy(&k.mu);
  pthread_cond_destroy(&k.cv);
  sluice_consumer_free(k.c);
  if (rc) return rc;
  return sluice_prof_check_since(
      &p, max_bytes_per_message > 0 ? max_bytes_per_message : 1, out);
}
#endif /* SLUICE_CONSUMER_H */

#endif /* SLUICE_PROF_CHECK_H */
