/* SPDX-License-Identifier: MIT */
/* The reconnect policy alone: a plain struct, an injected clock and random
 * source, no consumer, no event loop, no broker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <sluice/sluice.h>

#include "reconnect/policy.h"

struct fake {
  uint64_t now, r;
  unsigned randoms; /* calls to the random source */
};

static uint64_t fake_now(void *u) {
  return ((struct fake *)u)->now;
}
static uint64_t fake_random(void *u) {
  struct fake *f = u;
  f->randoms++;
  return f->r;
}

static sluice_reconnect_opts opts(struct fake *f) {
  sluice_reconnect_opts o = {.enabled = 1,
                             .min_delay_ms = 100,
                             .max_delay_ms = 1000,
                             .max_attempts = 3,
                             .reset_after_ms = 5000,
                             .now_ms = fake_now,
                             .random = fake_random,
                             .clock_user = f};
  return o;
}

static uint64_t window(uint64_t min, uint64_t cap, uint64_t r) {
  return min + r % (cap - min + 1);
}

static void retry(sluice__policy *p, int err, uint64_t delay,
                  unsigned attempt) {
  sluice__decision d = sluice__policy_failed(p, err);
  assert_int_equal(d.action, SLUICE__RETRY);
  assert_int_equal(d.delay_ms, delay);
  assert_int_equal(d.attempt, attempt);
}

/* The delay windows double up to the cap; a connection that stays up
 * reset_after_ms starts them over, a shorter one does not; max_attempts
 * counts failures in a row. */
static void backoff_reset_with_injected_clock(void **state) {
  (void)state;
  struct fake f = {.now = 1000, .r = 1000000007ULL};
  sluice_reconnect_opts o = opts(&f);
  sluice__policy p;
  sluice__policy_init(&p, &o, 1, 42);

  /* three failures in a row: windows [100,100], [100,200], [100,400] */
  retry(&p, SLUICE_ECONNECT, 100, 1);
  retry(&p, SLUICE_ECONNECT, window(100, 200, f.r), 2);
  retry(&p, SLUICE_ECONNECT, window(100, 400, f.r), 3);
  assert_int_equal(f.randoms, 3);

  /* connected at t=1000, lost at t=5999: up less than reset_after_ms, so
   * the delay keeps growing, but the failure count starts over */
  assert_int_equal(sluice__policy_connected(&p), 3);
  f.now = 5999;
  retry(&p, SLUICE_ECLOSED, window(100, 800, f.r), 1);

  /* connected at t=7000 and up for exactly reset_after_ms: back to min */
  f.now = 7000;
  assert_int_equal(sluice__policy_connected(&p), 1);
  f.now = 12000;
  f.r = UINT64_MAX;
  retry(&p, SLUICE_ECLOSED, 100, 1);
  retry(&p, SLUICE_ECONNECT, window(100, 200, f.r), 2);
  retry(&p, SLUICE_ECONNECT, window(100, 400, f.r), 3);

  /* the fourth failure in a row is one too many */
  sluice__decision d = sluice__policy_failed(&p, SLUICE_ECONNECT);
  assert_int_equal(d.action, SLUICE__GIVE_UP);
  assert_int_equal(d.attempt, 3);
}

/* policy_up (a connection made, its topology recovered) arms the reset
 * clock without ending the run of failures. */
static void up_without_connected_keeps_the_count(void **state) {
  (void)state;
  struct fake f = {.now = 0, .r = 0};
  sluice_reconnect_opts o = opts(&f);
  sluice__policy p;
  sluice__policy_init(&p, &o, 1, 1);
  retry(&p, SLUICE_ECONNECT, 100, 1);
  sluice__policy_up(&p);
  f.now = 10;
  retry(&p, SLUICE_ESOCKET, 100, 2);
  sluice__policy_up(&p);
  f.now = 10 + o.reset_after_ms;
  retry(&p, SLUICE_ESOCKET, 100, 1); /* stayed up long enough */
}

static void fatal_and_disabled(void **state) {
  (void)state;
  struct fake f = {.now = 1, .r = 5};
  sluice_reconnect_opts o = opts(&f);
  sluice__policy p;
  sluice__policy_init(&p, &o, 1, 1);
  const int fatal[] = {SLUICE_EAUTH,     SLUICE_EVHOST,     SLUICE_ENOTFOUND,
                       SLUICE_ECONFLICT, SLUICE_EURI,       SLUICE_EINVAL,
                       SLUICE_ENOTSUP,   SLUICE_ENOTALLOWED};
  for (size_t i = 0; i < sizeof(fatal) / sizeof(*fatal); i++) {
    sluice__decision d = sluice__policy_failed(&p, fatal[i]);
    assert_int_equal(d.action, SLUICE__FATAL);
    assert_false(sluice__retryable(fatal[i]));
  }
  assert_int_equal(f.randoms, 0); /* no attempt was even planned */
  const int transient[] = {SLUICE_ECONNECT, SLUICE_ETIMEDOUT,  SLUICE_ECLOSED,
                           SLUICE_ECHANNEL, SLUICE_EHEARTBEAT, SLUICE_ESOCKET,
                           SLUICE_EPROTO,   SLUICE_EBROKER,    SLUICE_ENOMEM};
  for (size_t i = 0; i < sizeof(transient) / sizeof(*transient); i++)
    assert_true(sluice__retryable(transient[i]));

  o.enabled = 0;
  sluice__policy_init(&p, &o, 1, 1);
  assert_int_equal(sluice__policy_failed(&p, SLUICE_ECONNECT).action,
                   SLUICE__FATAL);
}

/* The classes the consumer relies on, in one table. */
static void error_classes(void **state) {
  (void)state;
  assert_true(sluice__err_class(SLUICE_EAUTH) & SLUICE__ERR_EVERY_NODE);
  assert_true(sluice__err_class(SLUICE_EVHOST) & SLUICE__ERR_EVERY_NODE);
  assert_true(sluice__err_class(SLUICE_EURI) & SLUICE__ERR_EVERY_NODE);
  assert_false(sluice__err_class(SLUICE_ECONNECT) & SLUICE__ERR_EVERY_NODE);
  assert_false(sluice__err_class(SLUICE_ENOTFOUND) & SLUICE__ERR_EVERY_NODE);
  const int broker[] = {SLUICE_ECHANNEL,  SLUICE_ECLOSED,    SLUICE_EAUTH,
                        SLUICE_ENOTFOUND, SLUICE_EBROKER,    SLUICE_ECONFLICT,
                        SLUICE_EVHOST,    SLUICE_ENOTALLOWED};
  for (size_t i = 0; i < sizeof(broker) / sizeof(*broker); i++)
    assert_true(sluice__err_class(broker[i]) & SLUICE__ERR_BROKER);
  assert_false(sluice__err_class(SLUICE_ESOCKET) & SLUICE__ERR_BROKER);
  assert_false(sluice__err_class(SLUICE_EHEARTBEAT) & SLUICE__ERR_BROKER);
  const int channel[] = {SLUICE_ENOTFOUND, SLUICE_ECONFLICT, SLUICE_ECHANNEL};
  for (size_t i = 0; i < sizeof(channel) / sizeof(*channel); i++)
    assert_true(sluice__err_class(channel[i]) & SLUICE__ERR_CHANNEL_ONLY);
  assert_false(sluice__err_class(SLUICE_EAUTH) & SLUICE__ERR_CHANNEL_ONLY);
  assert_false(sluice__err_class(SLUICE_ECLOSED) & SLUICE__ERR_CHANNEL_ONLY);
  for (int e = SLUICE_ERR_MIN_; e <= 0; e++)
    assert_true(sluice__err_class(e) >= 0 && sluice__err_class(e) < 16);
}

static void unbounded_attempts_never_give_up(void **state) {
  (void)state;
  struct fake f = {.now = 1, .r = UINT64_MAX};
  sluice_reconnect_opts o = opts(&f);
  o.max_attempts = UINT32_MAX;
  sluice__policy p;
  sluice__policy_init(&p, &o, 1, 1);
  for (unsigned i = 1; i <= 10000; i++) {
    sluice__decision d = sluice__policy_failed(&p, SLUICE_ECONNECT);
    assert_int_equal(d.action, SLUICE__RETRY);
    assert_int_equal(d.attempt, i);
    assert_true(d.delay_ms >= 100 && d.delay_ms <= 1000);
  }
}

/* Which node next: stay on the one that works, move on when none did. */
static void nodes_rotate(void **state) {
  (void)state;
  struct fake f = {0};
  sluice_reconnect_opts o = opts(&f);
  sluice__policy p;
  sluice__policy_init(&p, &o, 3, 1);
  assert_int_equal(sluice__policy_node(&p, 0), 0);
  assert_int_equal(sluice__policy_node(&p, 1), 1);
  assert_int_equal(sluice__policy_node(&p, 2), 2);
  sluice__policy_node_up(&p, 2);
  assert_int_equal(sluice__policy_node(&p, 0), 2);
  assert_int_equal(sluice__policy_node(&p, 1), 0);
  sluice__policy_nodes_failed(&p);
  assert_int_equal(sluice__policy_node(&p, 0), 0);
  sluice__policy_nodes_failed(&p);
  assert_int_equal(sluice__policy_node(&p, 0), 1);
}

/* One random source: the URI shuffle draws from the injected one too, and
 * the built-in one is deterministic for a seed. */
static void shuffle_uses_the_policy_random(void **state) {
  (void)state;
  struct fake f = {.r = 0};
  sluice_reconnect_opts o = opts(&f);
  sluice__policy p;
  sluice__policy_init(&p, &o, 4, 1);
  const char *items[4] = {"a", "b", "c", "d"};
  sluice__policy_shuffle(&p, (void **)items, 4);
  assert_int_equal(f.randoms, 3);
  /* r = 0 swaps each last element with the first */
  assert_string_equal(items[0], "b");
  assert_string_equal(items[1], "c");
  assert_string_equal(items[2], "d");
  assert_string_equal(items[3], "a");

  o.random = NULL;
  sluice__policy a, b;
  sluice__policy_init(&a, &o, 1, 1234);
  sluice__policy_init(&b, &o, 1, 1234);
  for (int i = 0; i < 100; i++)
    assert_int_equal(sluice__policy_random(&a), sluice__policy_random(&b));
  int seen[8] = {0};
  for (int i = 0; i < 1000; i++) {
    const char *v[8] = {"0", "1", "2", "3", "4", "5", "6", "7"};
    sluice__policy_shuffle(&a, (void **)v, 8);
    for (int k = 0; k < 8; k++) {
      int found = 0;
      for (int m = 0; m < 8; m++) found += v[m][0] == '0' + k;
      assert_int_equal(found, 1); /* a permutation */
    }
    seen[v[0][0] - '0']++;
  }
  for (int k = 0; k < 8; k++) assert_true(seen[k] > 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(backoff_reset_with_injected_clock),
      cmocka_unit_test(up_without_connected_keeps_the_count),
      cmocka_unit_test(fatal_and_disabled),
      cmocka_unit_test(error_classes),
      cmocka_unit_test(unbounded_attempts_never_give_up),
      cmocka_unit_test(nodes_rotate),
      cmocka_unit_test(shuffle_uses_the_policy_random),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
