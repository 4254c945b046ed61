/* SPDX-License-Identifier: MIT */
/* The profiler behind the real consumer and broker: every delivery in a
 * scope through sluice_prof_delivery_hooks(), handlers on worker threads,
 * a leak only on the reject path. Label `broker`: skipped (exit 77) when
 * the broker is down, failed in CI (SLUICE_REQUIRE_BROKER=1). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <sluice/sluice.h>

#include "broker_util.h"
#include "prof_test.h"

#define N_MSG 200

static sluice_consumer *g_c;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned handled;
static void *kept[N_MSG];
static unsigned n_kept;

/* Poison messages (every 4th) are "kept for a later report" and never
 * freed: the classic error-path leak. The rest is tidy. */
T_NOINLINE static int reject_leaks(sluice_delivery *d, const sluice_message *m,
                                   void *user) {
  (void)d;
  (void)user;
  char *copy = TALLOC(128);
  memset(copy, 0, 128);
  memcpy(copy, m->body, m->body_len < 127 ? m->body_len : 127);
  unsigned id = (unsigned)strtoul(m->props.message_id, NULL, 10);
  int outcome = SLUICE_ACK;
  pthread_mutex_lock(&mu);
  if (id % 4 == 0) {
    kept[n_kept++] = copy;
    outcome = SLUICE_REJECT;
  } else {
    TFREE(copy);
  }
  if (++handled == N_MSG) sluice_consumer_stop(g_c);
  pthread_mutex_unlock(&mu);
  return outcome;
}

/* The profiler's clock here: the monotonic clock plus 100 us per reading.
 * A leak is convicted once its growth has lasted horizon_ms as well as
 * horizon_messages; with the system's coarse clock (a 4 ms tick) a fast
 * consumer could handle every message within one tick, and the group
 * would rightly stay "growing" (seen once in CI). Each reading moving the
 * clock on makes the time condition hold whatever the speed. */
static _Atomic uint64_t readings;

static uint64_t stepping_clock(void *user) {
  (void)user;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec +
         atomic_fetch_add(&readings, 1) * 100000u;
}

static void test_consumer_residual(void **state) {
  (void)state;
  const char *q = tb_qname("prof");
  sluice_queue_decl qd = {.name = q};
  tb_fresh_queue(&qd);
  tb_fill(q, N_MSG, 64);

  sluice_prof_opts po = {.sample_rate = 1,
                         .grace_ms = -1,
                         .leak_window = 10,
                         .horizon_messages = 20,
                         .horizon_ms = 1,
                         .now_ns = stepping_clock};
  assert_int_equal(sluice_prof_start(&po), 0);

  sluice_consumer_opts o = {.uri = TEST_URI,
                            .workers = 2,
                            .prefetch = 50,
                            .hooks = sluice_prof_delivery_hooks()};
  assert_int_equal(sluice_consumer_new(&o, &g_c), 0);
  sluice_subscribe_opts so = {.queue = q, .handler = reject_leaks};
  assert_int_equal(sluice_consumer_subscribe(g_c, &so), 0);
  int timed_out = 0;
  assert_int_equal(tb_run_bounded(g_c, 60, &timed_out), 0);
  assert_false(timed_out);
  assert_int_equal(handled, N_MSG);

  sluice_prof_residual_stats st[16];
  size_t n = sluice_prof_residual_stats_get(st, 16);
  const sluice_prof_residual_stats *ack = NULL, *rej = NULL;
  for (size_t i = 0; i < n && i < 16; i++) {
    if (strcmp(st[i].queue, q)) continue;
    if (st[i].outcome == SLUICE_ACK) ack = &st[i];
    if (st[i].outcome == SLUICE_REJECT) rej = &st[i];
  }
  assert_non_null(ack);
  assert_non_null(rej);
  assert_int_equal(ack->messages, N_MSG * 3 / 4);
  assert_int_equal(ack->with_residual, 0);
  assert_false(ack->leaking);
  assert_int_equal(rej->messages, N_MSG / 4);
  assert_int_equal(rej->leaked, N_MSG / 4);
  assert_int_equal(rej->bytes_leaked, N_MSG / 4 * 128);
  assert_int_equal(rej->retained_bytes, N_MSG / 4 * 128);
  assert_true(rej->leaking);

  tbuf out = {0};
  sluice_prof_output ro = {.format = SLUICE_PROF_FMT_PPROF,
                           .value = SLUICE_PROF_RESIDUAL_SPACE,
                           .queue = q};
  assert_int_equal(sluice_prof_write(NULL, &ro, tbuf_write, &out), 0);
  tprofile p;
  assert_int_equal(tprofile_parse(out.data, out.len, &p), 0);
  assert_string_equal(tprofile_top_leaf(&p, "residual_space"), "reject_leaks");
  assert_int_equal(tprofile_sum(&p, "residual_space", "reject_leaks"),
                   N_MSG / 4 * 128);
  tprofile_free(&p);
  tbuf_free(&out);

  sluice_consumer_free(g_c);
  for (unsigned i = 0; i < n_kept; i++) TFREE(kept[i]);
  tb_delete_queue(q);
}

int main(void) {
  tb_require_broker("test_prof_consumer");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_consumer_residual),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
