/* SPDX-License-Identifier: MIT */
/* The broker restarts (rabbitmqctl stop_app / start_app) in the middle of a
 * stream of persistent messages on a durable queue: the consumer backs off
 * while the node is down and finishes the stream once it is back.
 *
 * This disrupts every client of the broker for a few seconds, so ctest runs
 * it alone (RUN_SERIAL). SLUICE_SKIP_BROKER_RESTART=1 skips it (exit 77). A
 * guardian process starts the app again if this test dies in between. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/broker_util.h"
#include "rc_util.h"

static int fault_restart(rc_stream *s, unsigned k) {
  unsigned closed = atomic_load(&s->events[SLUICE_EV_CLOSED]);
  unsigned attempts = atomic_load(&s->events[SLUICE_EV_RECONNECTING]);
  if (rc_stop_app() != 0) {
    rc_start_app();
    return -1;
  }
  /* Start the app again only once the consumer has seen the close and an
   * attempt has failed against the stopped node. */
  int ok = rc_wait_event(s, SLUICE_EV_CLOSED, closed + 1, 30) == 0 &&
           rc_wait_event(s, SLUICE_EV_RECONNECTING, attempts + 2, 30) == 0;
  s->closed_ms[k] = rc_now_ms();
  if (rc_start_app() != 0) return -1;
  printf("  broker app stopped and started in %llu ms\n",
         (unsigned long long)(rc_now_ms() - s->fault_ms[k]));
  return ok ? 0 : -1;
}

static void broker_restart(void **state) {
  unsigned n = 5000;
  const char *q = tb_qname("restart");
  sluice_queue_decl d = {.name = q, .durable = 1};
  tb_fresh_queue(&d);
  tb_fill(q, n, 64); /* persistent */
  rc_stream *s = rc_stream_new(q, n);
  s->fault = fault_restart;
  s->n_faults = 1;
  s->gate_during_fault = 1;
  s->wait_timeout_s = 60;
  sluice_consumer_opts o = {
      .uri = TEST_URI,
      .workers = 2,
      .prefetch = 100,
      .reconnect = {.enabled = 1,
                    .min_delay_ms = 100,
                    .max_delay_ms = 1000,
                    .max_attempts = UINT32_MAX},
  };
  rc_stream_consumer(s, &o);
  /* the queue is re-declared on every connection, as an application does */
  assert_int_equal(sluice_consumer_declare_queue(s->c, &d), 0);
  int to = 0;
  assert_int_equal(rc_stream_run(s, 120, &to), 0);
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  assert_int_equal(st.reconnects, 1);
  assert_true(atomic_load(&s->events[SLUICE_EV_RECONNECTING]) >= 2);
  printf("  %u reconnect attempts; last broker close %d\n",
         atomic_load(&s->events[SLUICE_EV_RECONNECTING]),
         sluice_consumer_last_close(s->c, NULL, 0));
  rc_stream_check(s);
  rc_stream_free(s);
  tb_delete_queue(q);
}

int main(void) {
  const char *skip = getenv("SLUICE_SKIP_BROKER_RESTART");
  if (skip && strcmp(skip, "1") == 0) {
    fprintf(stderr, "test_reconnect_restart: SKIPPED "
                    "(SLUICE_SKIP_BROKER_RESTART=1)\n");
    return 77;
  }
  tb_require_broker("test_reconnect_restart");
  setvbuf(stdout, NULL, _IONBF, 0);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(broker_restart),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
