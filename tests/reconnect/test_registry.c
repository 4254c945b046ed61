/* SPDX-License-Identifier: MIT */
/* The close-listener registry and the backoff, without a broker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <event2/event.h>

#include "consumer/internal.h"

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

static void full_registry_refuses(void **state) {
  (void)state;
  sluice_consumer *c = new_consumer(4);
  sluice_listener h[5];
  for (int i = 0; i < 4; i++)
    assert_int_equal(sluice_consumer_on_close(c, count_cb, (void *)(intptr_t)0,
                                     SLUICE_LISTEN_PERSISTENT, &h[i]),
                     0);
  assert_int_equal(sluice_consumer_close_listener_count(c), 4);
  assert_int_equal(sluice_consumer_on_close(c, count_cb, NULL, SLUICE_LISTEN_PERSISTENT,
                                   &h[4]),
                   SLUICE_ELIMIT);
  assert_int_equal(sluice_consumer_close_listener_count(c), 4);
  /* freeing one makes room for exactly one */
  assert_int_equal(sluice_consumer_off_close(c, h[1]), 0);
  assert_int_equal(sluice_consumer_on_close(c, count_cb, NULL, SLUICE_LISTEN_PERSISTENT,
                                   &h[4]),
                   0);
  assert_int_equal(sluice_consumer_on_close(c, count_cb, NULL, SLUICE_LISTEN_PERSISTENT,
                                   &h[1]),
                   SLUICE_ELIMIT);
  sluice_consumer_free(c);
}

static void remove_twice_and_stale(void **state) {
  (void)state;
  sluice_consumer *c = new_consumer(2);
  sluice_listener a, b;
  assert_int_equal(sluice_consumer_on_close(c, count_cb, NULL, SLUICE_LISTEN_PERSISTENT,
                                   &a), 0);
  assert_int_not_equal(a, 0);
  assert_int_equal(sluice_consumer_off_close(c, a), 0);
  assert_int_equal(sluice_consumer_off_close(c, a), SLUICE_EALREADY);
  /* the slot is reused: the old handle must not remove the new listener */
  assert_int_equal(sluice_consumer_on_close(c, count_cb, NULL, SLUICE_LISTEN_PERSISTENT,
                                   &b), 0);
  assert_int_equal(sluice_consumer_off_close(c, a), SLUICE_EALREADY);
  assert_int_equal(sluice_consumer_close_listener_count(c), 1);
  assert_int_equal(sluice_consumer_off_close(c, 0), SLUICE_EALREADY);
  assert_int_equal(sluice_consumer_off_close(c, ~(sluice_listener)0), SLUICE_EALREADY);
  assert_int_equal(sluice_consumer_on_close(c, NULL, NULL, SLUICE_LISTEN_PERSISTENT, &b),
                   SLUICE_EINVAL);
  assert_int_equal(sluice_consumer_on_close(c, count_cb, NULL, 9, &b), SLUICE_EINVAL);
  sluice_consumer_free(c);
}

/* listener 0 removes itself, listener 1 removes listener 2, listener 3
 * registers a new one: each of the rest sees the event once. */
static sluice_consumer *g_c;
static void self_remove(sluice_consumer *c, const sluice_event *ev, void *u) {
  calls[0]++;
  assert_int_equal(sluice_consumer_off_close(c, handles[0]), 0);
}
static void remove_other(sluice_consumer *c, const sluice_event *ev, void *u) {
  calls[1]++;
  sluice_consumer_off_close(c, handles[2]);
}
static void registers(sluice_consumer *c, const sluice_event *ev, void *u) {
  calls[3]++;
  sluice_consumer_on_close(c, count_cb, (void *)(intptr_t)4, SLUICE_LISTEN_PERSISTENT,
                  &handles[4]);
}

static void unregister_inside_callback(void **state) {
  (void)state;
  memset(calls, 0, sizeof(calls));
  g_c = new_consumer(8);
  sluice_consumer_on_close(g_c, self_remove, NULL, SLUICE_LISTEN_PERSISTENT, &handles[0]);
  sluice_consumer_on_close(g_c, remove_other, NULL, SLUICE_LISTEN_PERSISTENT,
                  &handles[1]);
  sluice_consumer_on_close(g_c, count_cb, (void *)(intptr_t)2, SLUICE_LISTEN_PERSISTENT,
                  &handles[2]);
  sluice_consumer_on_close(g_c, registers, NULL, SLUICE_LISTEN_PERSISTENT, &handles[3]);
  sluice_event ev = {.type = SLUICE_EV_CLOSED, .err = SLUICE_ECLOSED};
  sluice__registry_dispatch(g_c->registry, g_c, &ev);
  assert_int_equal(calls[0], 1);
  assert_int_equal(calls[1], 1);
  assert_int_equal(calls[2], 0); /* removed before its turn */
  assert_int_equal(calls[3], 1);
  assert_int_equal(calls[4], 0); /* registered during dispatch */
  assert_int_equal(sluice_consumer_close_listener_count(g_c), 3);
  sluice__registry_dispatch(g_c->registry, g_c, &ev);
  assert_int_equal(calls[0], 1);
  assert_int_equal(calls[4], 1);
  sluice_consumer_free(g_c);
}

static void generation_listeners_go_with_their_connection(void **state) {
  (void)state;
  memset(calls, 0, sizeof(calls));
  sluice_consumer *c = new_consumer(4);
  /* not connected yet: binds to the next connection, generation 1 */
  sluice_listener h;
  assert_int_equal(sluice_consumer_on_close(c, count_cb, (void *)(intptr_t)0,
                                   SLUICE_LISTEN_GENERATION, &h), 0);
  assert_int_equal(sluice_consumer_on_close(c, count_cb, (void *)(intptr_t)1,
                                   SLUICE_LISTEN_PERSISTENT, &handles[1]), 0);
  /* a close of another generation does not concern it */
  sluice_event ev0 = {.type = SLUICE_EV_CLOSED, .generation = 0};
  sluice__registry_dispatch(c->registry, c, &ev0);
  assert_int_equal(calls[0], 0);
  assert_int_equal(calls[1], 1);
  sluice_event ev = {.type = SLUICE_EV_CLOSED, .generation = 1};
  sluice__registry_dispatch(c->registry, c, &ev);
  sluice__registry_generation_died(c->registry, 1);
  assert_int_equal(calls[0], 1);
  assert_int_equal(sluice_consumer_close_listener_count(c), 1);
  assert_int_equal(sluice_consumer_off_close(c, h), SLUICE_EALREADY);
  /* registering one per "reconnect" never accumulates */
  for (uint64_t g = 2; g < 1000; g++) {
    atomic_store(&c->generation, g); /* the next connection's */
    assert_int_equal(sluice_consumer_on_close(c, count_cb, (void *)(intptr_t)2,
                                     SLUICE_LISTEN_GENERATION, &h), 0);
    sluice_event e = {.type = SLUICE_EV_CLOSED, .generation = g};
    sluice__registry_dispatch(c->registry, c, &e);
    sluice__registry_generation_died(c->registry, g);
    assert_int_equal(sluice_consumer_close_listener_count(c), 1);
  }
  assert_int_equal(calls[2], 998);
  sluice_consumer_free(c);
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
  for (int i = 0; i < 10; i++) assert_int_equal(sluice_backoff_next(&b, 0), 100);
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


/* The reconnect policy with an injected clock and random source: the delay
 * windows double up to the cap, a connection that stays up reset_after_ms
 * starts them over, a shorter one does not; max_attempts counts failures
 * in a row; errors that retrying cannot fix stop at once. */
struct fake {
  uint64_t now, r;
  unsigned reconnecting, gave_up;
  uint64_t delay[16];
  unsigned attempt[16];
};

static uint64_t fake_now(void *u) { return ((struct fake *)u)->now; }
static uint64_t fake_random(void *u) { return ((struct fake *)u)->r; }

static void fake_event(sluice_consumer *c, const sluice_event *ev, void *u) {
  struct fake *f = u;
  if (ev->type == SLUICE_EV_RECONNECTING && f->reconnecting < 16) {
    f->delay[f->reconnecting] = ev->delay_ms;
    f->attempt[f->reconnecting] = ev->attempt;
    f->reconnecting++;
  }
  if (ev->type == SLUICE_EV_GAVE_UP) f->gave_up++;
}

static uint64_t expect_delay(uint64_t min, uint64_t cap, uint64_t r) {
  return min + r % (cap - min + 1);
}

static void backoff_reset_with_injected_clock(void **state) {
  (void)state;
  struct fake f = {.now = 1000, .r = 1000000007ULL};
  sluice_consumer_opts o = {
      .on_event = fake_event,
      .event_user = &f,
      .log_level = -1,
      .reconnect = {.enabled = 1,
                    .min_delay_ms = 100,
                    .max_delay_ms = 1000,
                    .max_attempts = 3,
                    .reset_after_ms = 5000,
                    .now_ms = fake_now,
                    .random = fake_random,
                    .clock_user = &f},
  };
  sluice_consumer *c;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);

  /* three failures in a row: windows [100,100], [100,200], [100,400] */
  sluice__reconnect_schedule(c, SLUICE_ECONNECT);
  sluice__reconnect_schedule(c, SLUICE_ECONNECT);
  sluice__reconnect_schedule(c, SLUICE_ECONNECT);
  assert_int_equal(f.reconnecting, 3);
  assert_int_equal(f.delay[0], 100);
  assert_int_equal(f.delay[1], expect_delay(100, 200, f.r));
  assert_int_equal(f.delay[2], expect_delay(100, 400, f.r));
  assert_int_equal(f.attempt[2], 3);

  /* connected at t=1000, lost at t=5999: up less than reset_after_ms, so
   * the delay keeps growing, but the failure count starts over */
  sluice__reconnect_connected(c);
  f.now = 5999;
  sluice__reconnect_schedule(c, SLUICE_ECLOSED);
  assert_int_equal(f.delay[3], expect_delay(100, 800, f.r));
  assert_int_equal(f.attempt[3], 1);

  /* connected at t=7000 and up for exactly reset_after_ms: back to min */
  f.now = 7000;
  sluice__reconnect_connected(c);
  f.now = 12000;
  f.r = UINT64_MAX;
  sluice__reconnect_schedule(c, SLUICE_ECLOSED);
  assert_int_equal(f.delay[4], 100);
  assert_int_equal(f.attempt[4], 1);
  sluice__reconnect_schedule(c, SLUICE_ECONNECT);
  assert_int_equal(f.delay[5], expect_delay(100, 200, f.r));
  sluice__reconnect_schedule(c, SLUICE_ECONNECT);
  assert_int_equal(f.reconnecting, 7);
  assert_int_equal(f.gave_up, 0);

  /* the fourth failure in a row is one too many: gave up */
  sluice__reconnect_schedule(c, SLUICE_ECONNECT);
  assert_int_equal(f.reconnecting, 7);
  assert_int_equal(f.gave_up, 1);
  assert_true(sluice_consumer_stopped(c));
  sluice_consumer_free(c);

  /* refused credentials: no attempt is even scheduled */
  memset(&f, 0, sizeof(f));
  f.now = 1000;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  sluice__reconnect_schedule(c, SLUICE_EAUTH);
  assert_int_equal(f.reconnecting, 0);
  assert_int_equal(f.gave_up, 0);
  assert_true(sluice_consumer_stopped(c));
  sluice_consumer_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(full_registry_refuses),
      cmocka_unit_test(remove_twice_and_stale),
      cmocka_unit_test(unregister_inside_callback),
      cmocka_unit_test(generation_listeners_go_with_their_connection),
      cmocka_unit_test(backoff_sequence),
      cmocka_unit_test(backoff_reset_with_injected_clock),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
