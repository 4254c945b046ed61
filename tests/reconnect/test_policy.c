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

/* An outage simulated on the injected clock: each failure is answered, time
 * moves on by the decision's delay, until `outage_ms` has passed (the node
 * accepts again: the next try connects) or the policy gives up. The node
 * refuses after `refusal_ms` (refused() when probing is asked for). */
struct outage {
  unsigned tries, probes, attempts, max_delay;
  uint64_t connected_at, gave_up_at;
};

static struct outage simulate(const sluice_reconnect_opts *o, struct fake *f,
                              int refused, uint64_t refusal_ms,
                              uint64_t outage_ms) {
  struct outage r = {0};
  sluice__policy p;
  sluice__policy_init(&p, o, 1, 1);
  f->now = 0;
  sluice__decision d = sluice__policy_failed(&p, SLUICE_ECLOSED); /* loss */
  assert_int_equal(d.action, SLUICE__RETRY);
  r.attempts = 1;
  for (;;) {
    assert_true(d.delay_ms > 0);
    if (d.delay_ms > r.max_delay) r.max_delay = (unsigned)d.delay_ms;
    f->now += d.delay_ms;
    r.tries++;
    if (f->now >= outage_ms) {
      r.connected_at = f->now;
      return r;
    }
    f->now += refusal_ms;
    d = refused ? sluice__policy_refused(&p, SLUICE_ECONNECT, refusal_ms)
                : sluice__policy_failed(&p, SLUICE_ECONNECT);
    if (d.action == SLUICE__GIVE_UP) {
      r.gave_up_at = f->now;
      return r;
    }
    assert_int_equal(d.action, SLUICE__RETRY);
    if (d.probe) r.probes++;
    else r.attempts++;
    assert_int_equal(d.attempt, r.attempts); /* probes are not attempts */
  }
}

/* A node that refuses at once is probed every refused_probe_ms (+-50 %)
 * inside the backoff delays: back within one probe interval of listening
 * again, where the backoff alone waits out its delay; yet the attempts, and
 * the moment the policy gives up, are the backoff's. */
static void refused_nodes_are_probed(void **state) {
  (void)state;
  struct fake f = {.r = 0x9e3779b97f4a7c15ULL};
  sluice_reconnect_opts o = opts(&f);
  o.max_delay_ms = 30000;
  o.max_attempts = 10;
  o.refused_probe_ms = 250;

  /* a 10 s restart */
  struct outage plain = simulate(&o, &f, 0, 0, 10000);
  struct outage probed = simulate(&o, &f, 1, 0, 10000);
  assert_int_equal(plain.probes, 0);
  assert_true(probed.probes > 0);
  assert_true(probed.max_delay <= 375); /* 250 + 50 % */
  assert_true(probed.connected_at - 10000 <= 375);
  assert_true(plain.connected_at >= probed.connected_at);
  assert_int_equal(probed.attempts, plain.attempts);

  /* a node that never comes back: the same attempts, the same time */
  plain = simulate(&o, &f, 0, 0, UINT64_MAX);
  probed = simulate(&o, &f, 1, 0, UINT64_MAX);
  assert_true(plain.gave_up_at > 0);
  assert_int_equal(probed.attempts, 10);
  assert_int_equal(plain.attempts, 10);
  assert_int_equal(probed.gave_up_at, plain.gave_up_at);
  assert_true(probed.probes > plain.attempts);

  /* slow refusals (half the probe interval or more) are not probed, and
   * probing can be turned off */
  struct outage slow = simulate(&o, &f, 1, 125, UINT64_MAX);
  assert_int_equal(slow.probes, 0);
  struct outage slow_plain = simulate(&o, &f, 0, 125, UINT64_MAX);
  assert_int_equal(slow.gave_up_at, slow_plain.gave_up_at);
  o.refused_probe_ms = UINT32_MAX;
  struct outage off = simulate(&o, &f, 1, 0, UINT64_MAX);
  assert_int_equal(off.probes, 0);
  assert_int_equal(off.gave_up_at, plain.gave_up_at);
}

/* A connection made ends the probing: the next refusal after a loss is an
 * attempt again, and probes never follow a fault other than a refusal. */
static void probing_ends_with_a_connection(void **state) {
  (void)state;
  struct fake f = {.now = 0, .r = UINT64_MAX};
  sluice_reconnect_opts o = opts(&f);
  o.max_delay_ms = 30000;
  o.refused_probe_ms = 250;
  o.max_attempts = 10;
  sluice__policy p;
  sluice__policy_init(&p, &o, 1, 1);
  retry(&p, SLUICE_ECLOSED, 100, 1);
  f.now = 100;
  sluice__decision d = sluice__policy_refused(&p, SLUICE_ECONNECT, 0);
  assert_int_equal(d.attempt, 2);
  assert_false(d.probe); /* [100, 200]: shorter than a probe interval */
  f.now += d.delay_ms;
  d = sluice__policy_refused(&p, SLUICE_ECONNECT, 0);
  assert_int_equal(d.attempt, 3); /* [100, 400]: 400, a probe first */
  assert_int_equal(d.delay_ms, 125 + UINT64_MAX % 251);
  f.now += d.delay_ms;
  d = sluice__policy_refused(&p, SLUICE_ECONNECT, 0);
  assert_true(d.probe);
  assert_int_equal(d.attempt, 3);
  /* a timeout inside the delay is an attempt, as it always was */
  d = sluice__policy_failed(&p, SLUICE_ETIMEDOUT);
  assert_false(d.probe);
  assert_int_equal(d.attempt, 4);
  assert_int_equal(sluice__policy_connected(&p), 4);
  f.now += 50;
  d = sluice__policy_refused(&p, SLUICE_ECONNECT, 0);
  assert_false(d.probe);
  assert_int_equal(d.attempt, 1);
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
      cmocka_unit_test(refused_nodes_are_probed),
      cmocka_unit_test(probing_ends_with_a_connection),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
