/* SPDX-License-Identifier: MIT */
/* The background re-check: one profiler thread that runs the due re-checks
 * and re-evaluates the verdicts every poll_ms, so that they stay current
 * when traffic stops (a cache that empties turns `ok`, a grace period ends
 * without a new message).
 *
 * Why a thread and not a timer on the consumer's loop: the profiler serves
 * any program (linked or LD_PRELOADed) and must not depend on the consumer;
 * a program may have several consumers, or none (the scope API). The
 * thread is cheap: it sleeps on a condition variable and wakes a few times
 * a second for a lock and a pass over the groups in use.
 *
 * What makes it safe to live in arbitrary programs:
 * - it starts with the first scope, never when nobody uses scopes (a
 *   preloaded heap profiler gets no thread);
 * - it blocks every signal, so signals for the process go to the program's
 *   own threads;
 * - its own allocations are never recorded (the guard);
 * - fork: the child has no such thread; it starts again at the child's next
 *   scope (never from the atfork handler, where creating threads is not
 *   allowed);
 * - sluice_prof_stop() and exit stop it (joined, with a bound at exit);
 * - poll_ms < 0 turns it off. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <time.h>

#include "prof_resid.h"

#define DEFAULT_POLL_MS 250

static pthread_mutex_t bg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bg_cv;
static int cv_ready;
static pthread_t bg_thread;
static int bg_running, bg_stopping;
static _Atomic long poll_ms = DEFAULT_POLL_MS;
/* Fast-path flag for sluice__bg_ensure (begins test it first). */
_Atomic int sluice__bg_started;
int sluice__bg_live;

/* The thread runs (or not): nurseries are sticky only while it does, since
 * its polls take idle ones back. */
static void live_set(int on) {
  __atomic_store_n(&sluice__bg_live, on, __ATOMIC_RELAXED);
  sluice__nurs_sticky_set(on);
}

static void cv_init(void) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&bg_cv, &a);
  pthread_condattr_destroy(&a);
  cv_ready = 1;
}

static void *bg_main(void *arg) {
  (void)arg;
  sluice__t.guard++; /* never record this thread's allocations */
  pthread_mutex_lock(&bg_mu);
  while (!bg_stopping) {
    long ms = atomic_load(&poll_ms);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    int rc = 0;
    while (!bg_stopping && rc != ETIMEDOUT)
      rc = pthread_cond_timedwait(&bg_cv, &bg_mu, &ts);
    if (bg_stopping) break;
    pthread_mutex_unlock(&bg_mu);
    /* Callbacks run here, on this thread: let them be profiled like any
     * other code of the program's. */
    sluice__t.guard--;
    sluice_prof_poll(); /* idle nurseries too */
    sluice__t.guard++;
    pthread_mutex_lock(&bg_mu);
  }
  pthread_mutex_unlock(&bg_mu);
  /* Nobody takes idle nurseries back from now: they stop being sticky,
   * and those idle now stop counting. */
  live_set(0);
  sluice__nurs_revoke_idle();
  return NULL;
}

void sluice__bg_configure(long ms) {
  if (ms < 0) {
    atomic_store(&poll_ms, -1);
    sluice__bg_stop();
    return;
  }
  atomic_store(&poll_ms, ms ? ms : DEFAULT_POLL_MS);
  pthread_mutex_lock(&bg_mu);
  if (bg_running) pthread_cond_signal(&bg_cv); /* take the new interval */
  pthread_mutex_unlock(&bg_mu);
}

void sluice__bg_ensure(void) {
  if (SLUICE__LIKELY(
          atomic_load_explicit(&sluice__bg_started, memory_order_relaxed)))
    return;
  if (atomic_load(&poll_ms) < 0) return;
  sluice__enter_guard();
  pthread_mutex_lock(&bg_mu);
  if (!cv_ready) cv_init();
  if (!bg_running && !bg_stopping) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pthread_create(&bg_thread, NULL, bg_main, NULL) == 0) {
      bg_running = 1;
      live_set(1); /* its polls take idle nurseries' counts back */
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  /* Once tried: no retry storm on failure. */
  atomic_store(&sluice__bg_started, 1);
  pthread_mutex_unlock(&bg_mu);
  sluice__leave_guard();
}

static void bg_join(int at_exit) {
  pthread_mutex_lock(&bg_mu);
  if (!bg_running || bg_stopping) {
    pthread_mutex_unlock(&bg_mu);
    return;
  }
  pthread_t th = bg_thread;
  if (pthread_equal(th, pthread_self())) {
    /* From a callback on the thread itself: it ends after the callback. */
    bg_stopping = 1;
    bg_running = 0;
    atomic_store(&sluice__bg_started, 0);
    pthread_detach(th);
    pthread_mutex_unlock(&bg_mu);
    return;
  }
  bg_stopping = 1;
  pthread_cond_signal(&bg_cv);
  pthread_mutex_unlock(&bg_mu);
  if (at_exit) {
    /* A bounded wait: exit may come from code holding a profiler lock. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    if (pthread_timedjoin_np(th, NULL, &ts)) return;
  } else {
    pthread_join(th, NULL);
  }
  pthread_mutex_lock(&bg_mu);
  bg_running = 0;
  bg_stopping = 0;
  atomic_store(&sluice__bg_started, 0);
  pthread_mutex_unlock(&bg_mu);
}

void sluice__bg_stop(void) {
  sluice__enter_guard();
  bg_join(0);
  sluice__leave_guard();
}

void sluice__bg_fork_child(void) {
  /* Only the forking thread exists in the child. */
  pthread_mutex_init(&bg_mu, NULL);
  if (cv_ready) cv_init();
  bg_running = 0;
  bg_stopping = 0;
  atomic_store(&sluice__bg_started, 0);
  live_set(0);
}

__attribute__((destructor)) static void bg_fini(void) {
  sluice__enter_guard();
  bg_join(1);
  sluice__leave_guard();
}
