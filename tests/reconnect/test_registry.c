/* SPDX-License-Identifier: MIT */
/* The close-listener registry (through the consumer's API, and alone) and
 * the backoff, without a broker. The policy: test_policy.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <sluice/sluice.h>

#include "reconnect/registry.h"

static sluice_consumer *new_consumer(unsigned cap) {
  sluice_consumer_opts o = {.max_close_listeners = cap};
  sluice_consumer *c = NULL;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  return c;
}

static int calls[8];
static sluice_listener handles[8];

static void count_cb(sluice_consumer *c, const sluice_event *ev, void *user) {
  calls[(intptr_t)user]++;
}

/* Register count_cb through the consumer's API. */
static int add(sluice_consumer *c, int scope, sluice_listener *h) {
  return sluice_consumer_on_close(c, count_cb, (void *)(intptr_t)0, scope, h);
}

static void full_registry_refuses(void **state) {
  (void)state;
  sluice_consumer *c = new_consumer(4);
  sluice_listener h[5];
  for (int i = 0; i < 4; i++)
    assert_int_equal(add(c, SLUICE_LISTEN_PERSISTENT, &h[i]), 0);
  assert_int_equal(sluice_consumer_close_listener_count(c), 4);
  assert_int_equal(add(c, SLUICE_LISTEN_PERSISTENT, &h[4]), SLUICE_ELIMIT);
  assert_int_equal(sluice_consumer_close_listener_count(c), 4);
  /* freeing one makes room for exactly one */
  assert_int_equal(sluice_consumer_off_close(c, h[1]), 0);
  assert_int_equal(add(c, SLUICE_LISTEN_PERSISTENT, &h[4]), 0);
  assert_int_equal(add(c, SLUICE_LISTEN_PERSISTENT, &h[1]), SLUICE_ELIMIT);
  sluice_consumer_free(c);
}

static void remove_twice_and_stale(void **state) {
  (void)state;
  sluice_consumer *c = new_consumer(2);
  sluice_listener a, b;
  assert_int_equal(add(c, SLUICE_LISTEN_PERSISTENT, &a), 0);
  assert_int_not_equal(a, 0);
  assert_int_equal(sluice_consumer_off_close(c, a), 0);
  assert_int_equal(sluice_consumer_off_close(c, a), SLUICE_EALREADY);
  /* the slot is reused: the old handle must not remove the new listener */
  assert_int_equal(add(c, SLUICE_LISTEN_PERSISTENT, &b), 0);
  assert_int_equal(sluice_consumer_off_close(c, a), SLUICE_EALREADY);
  assert_int_equal(sluice_consumer_close_listener_count(c), 1);
  assert_int_equal(sluice_consumer_off_close(c, 0), SLUICE_EALREADY);
  assert_int_equal(sluice_consumer_off_close(c, ~(sluice_listener)0),
                   SLUICE_EALREADY);
  assert_int_equal(sluice_consumer_on_close(c, NULL, NULL,
                                            SLUICE_LISTEN_PERSISTENT, &b),
                   SLUICE_EINVAL);
  assert_int_equal(add(c, 9, &b), SLUICE_EINVAL);
  assert_int_equal(add(NULL, SLUICE_LISTEN_PERSISTENT, &b), SLUICE_EINVAL);
  assert_int_equal(sluice_consumer_off_close(NULL, b), SLUICE_EINVAL);
  assert_int_equal(sluice_consumer_close_listener_count(NULL), 0);
  sluice_consumer_free(c);
}

/* The registry alone, without a consumer: listener 0 removes itself,
 * listener 1 removes listener 2, listener 3 registers a new one: each of
 * the rest sees the event once. */
static sluice__registry *g_r;
static void self_remove(sluice_consumer *c, const sluice_event *ev, void *u) {
  calls[0]++;
  assert_int_equal(sluice__registry_remove(g_r, handles[0]), 0);
}
static void remove_other(sluice_consumer *c, const sluice_event *ev, void *u) {
  calls[1]++;
  sluice__registry_remove(g_r, handles[2]);
}
static void registers(sluice_consumer *c, const sluice_event *ev, void *u) {
  calls[3]++;
  sluice__registry_add(g_r, count_cb, (void *)(intptr_t)4,
                       SLUICE_LISTEN_PERSISTENT, 1, &handles[4]);
}

static void unregister_inside_callback(void **state) {
  (void)state;
  memset(calls, 0, sizeof(calls));
  assert_int_equal(sluice__registry_new(8, &g_r), 0);
  sluice__registry_add(g_r, self_remove, NULL, SLUICE_LISTEN_PERSISTENT, 1,
                       &handles[0]);
  sluice__registry_add(g_r, remove_other, NULL, SLUICE_LISTEN_PERSISTENT, 1,
                       &handles[1]);
  sluice__registry_add(g_r, count_cb, (void *)(intptr_t)2,
                       SLUICE_LISTEN_PERSISTENT, 1, &handles[2]);
  sluice__registry_add(g_r, registers, NULL, SLUICE_LISTEN_PERSISTENT, 1,
                       &handles[3]);
  sluice_event ev = {.type = SLUICE_EV_CLOSED, .err = SLUICE_ECLOSED};
  sluice__registry_dispatch(g_r, NULL, &ev);
  assert_int_equal(calls[0], 1);
  assert_int_equal(calls[1], 1);
  assert_int_equal(calls[2], 0); /* removed before its turn */
  assert_int_equal(calls[3], 1);
  assert_int_equal(calls[4], 0); /* registered during dispatch */
  assert_int_equal(sluice__registry_count(g_r), 3);
  sluice__registry_dispatch(g_r, NULL, &ev);
  assert_int_equal(calls[0], 1);
  assert_int_equal(calls[4], 1);
  sluice__registry_free(g_r);
}

static void generation_listeners_go_with_their_connection(void **state) {
  (void)state;
  memset(calls, 0, sizeof(calls));
  sluice__registry *r;
  assert_int_equal(sluice__registry_new(4, &r), 0);
  /* bound to generation 1 (the first connection, or the next one) */
  sluice_listener h;
  assert_int_equal(sluice__registry_add(r, count_cb, (void *)(intptr_t)0,
                                        SLUICE_LISTEN_GENERATION, 1, &h),
                   0);
  assert_int_equal(sluice__registry_add(r, count_cb, (void *)(intptr_t)1,
                                        SLUICE_LISTEN_PERSISTENT, 1,
                                        &handles[1]),
                   0);
  /* a close of another generation does not concern it */
  sluice_event ev0 = {.type = SLUICE_EV_CLOSED, .generation = 0};
  sluice__registry_dispatch(r, NULL, &ev0);
  assert_int_equal(calls[0], 0);
  assert_int_equal(calls[1], 1);
  sluice_event ev = {.type = SLUICE_EV_CLOSED, .generation = 1};
  sluice__registry_dispatch(r, NULL, &ev);
  sluice__registry_generation_died(r, 1);
  assert_int_equal(calls[0], 1);
  assert_int_equal(sluice__registry_count(r), 1);
  assert_int_equal(sluice__registry_remove(r, h), SLUICE_EALREADY);
  /* a generation listener hears GAVE_UP whatever its generation */
  assert_int_equal(sluice__registry_add(r, count_cb, (void *)(intptr_t)3,
                                        SLUICE_LISTEN_GENERATION, 7, &h),
                   0);
  sluice_event gu = {.type = SLUICE_EV_GAVE_UP, .generation = 2};
  sluice__registry_dispatch(r, NULL, &gu);
  assert_int_equal(calls[3], 1);
  assert_int_equal(sluice__registry_remove(r, h), 0);
  /* registering one per "reconnect" never accumulates */
  for (uint64_t g = 2; g < 1000; g++) {
    assert_int_equal(sluice__registry_add(r, count_cb, (void *)(intptr_t)2,
                                          SLUICE_LISTEN_GENERATION, g, &h),
                     0);
    sluice_event e = {.type = SLUICE_EV_CLOSED, .generation = g};
    sluice__registry_dispatch(r, NULL, &e);
    sluice__registry_generation_died(r, g);
    assert_int_equal(sluice__registry_count(r), 1);
  }
  assert_int_equal(calls[2], 998);
  assert_int_equal(sluice__registry_add(r, NULL, NULL, SLUICE_LISTEN_PERSISTENT,
                                        1, &h),
                   SLUICE_EINVAL);
  sluice__registry_free(r);
}

static void backoff_sequence(void **state) {
  (void)state;
  sluice_backoff b = {.min_ms = 100, .max_ms = 1000};
  /* r = max: the top of each window doubles to the cap */
  uint64_t expect_top[] = {100, 200, 400, 800, 1000, 1000, 1000};
  for (size_t i = 0; i < sizeof(expect_top) / sizeof(*expect_top); i++) {
    uint64_t span = expect_top[i] - 100 + 1;
    uint64_t d = sluice_backoff_next(&b, span - 1);
    assert_int_equal(d, expect_top[i]);
  }
  /* r = 0: always the minimum (full jitter includes the floor) */
  sluice_backoff_reset(&b);
  for (int i = 0; i < 10; i++)
    assert_int_equal(sluice_backoff_next(&b, 0), 100);
  /* every value stays inside [min, max] for any random input */
  sluice_backoff_reset(&b);
  uint64_t x = 88172645463325252ULL;
  for (int i = 0; i < 10000; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    uint64_t d = sluice_backoff_next(&b, x);
    assert_true(d >= 100 && d <= 1000);
  }
  /* many attempts do not overflow */
  b.attempt = 4000000000u;
  uint64_t d = sluice_backoff_next(&b, UINT64_MAX);
  assert_true(d >= 100 && d <= 1000);
}


int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(full_registry_refuses),
      cmocka_unit_test(remove_twice_and_stale),
      cmocka_unit_test(unregister_inside_callback),
      cmocka_unit_test(generation_listeners_go_with_their_connection),
      cmocka_unit_test(backoff_sequence),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
