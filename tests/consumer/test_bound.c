/* SPDX-License-Identifier: MIT */
/* The in-flight bound behind autoAck back-pressure: a reader that obeys the
 * pause never holds more than the bound, by count or by bytes, and resumes
 * as soon as a completion takes it back under; and a delivery it admitted
 * is always read to its end (bound.h gives the invariants). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "consumer/bound.h"

static void pauses_at_count(void **state) {
  (void)state;
  sluice__bound b = {.max_count = 4, .max_bytes = 1 << 20};
  for (int i = 0; i < 3; i++) {
    sluice__bound_hold(&b);
    sluice__bound_charge(&b, 100);
    assert_int_equal(sluice__bound_update(&b), SLUICE__BOUND_SAME);
  }
  sluice__bound_hold(&b);
  sluice__bound_charge(&b, 100);
  assert_int_equal(sluice__bound_update(&b), SLUICE__BOUND_PAUSE);
  assert_true(b.full);
  assert_int_equal(sluice__bound_update(&b), SLUICE__BOUND_SAME); /* once */
  sluice__bound_release(&b, 100);
  assert_int_equal(sluice__bound_update(&b), SLUICE__BOUND_RESUME);
  assert_false(b.full);
  assert_int_equal(b.pauses, 1);
  assert_int_equal(b.peak_count, 4);
}

static void pauses_at_bytes(void **state) {
  (void)state;
  sluice__bound b = {.max_count = 1000, .max_bytes = 10000};
  sluice__bound_hold(&b);
  sluice__bound_charge(&b, 9999);
  assert_int_equal(sluice__bound_update(&b), SLUICE__BOUND_SAME);
  sluice__bound_hold(&b);
  sluice__bound_charge(&b, 1);
  assert_int_equal(sluice__bound_update(&b), SLUICE__BOUND_PAUSE);
  sluice__bound_release(&b, 1);
  assert_int_equal(sluice__bound_update(&b), SLUICE__BOUND_RESUME);
  sluice__bound_release(&b, 9999);
  assert_int_equal(sluice__bound_update(&b), SLUICE__BOUND_SAME);
  assert_int_equal(b.count, 0);
  assert_int_equal(b.bytes, 0);
}

/* A deep queue (100,000 messages) read by an obedient reader while random
 * completions come back: what is held never exceeds the bound. */
static void deep_queue_stays_bounded(void **state) {
  (void)state;
  sluice__bound b = {.max_count = 256, .max_bytes = 64 * 1024};
  size_t held[512];
  size_t n = 0;
  unsigned long produced = 0, consumed = 0;
  int reading = 1;
  srand(7);
  while (consumed < 100000) {
    if (reading && produced < 100000) {
      size_t sz = 64 + (size_t)(rand() % 1024);
      sluice__bound_hold(&b);
      sluice__bound_charge(&b, sz);
      held[n++] = sz;
      produced++;
      if (sluice__bound_update(&b) == SLUICE__BOUND_PAUSE) reading = 0;
    }
    if (n && (rand() % 3 == 0 || !reading || produced == 100000)) {
      size_t i = (size_t)rand() % n;
      sluice__bound_release(&b, held[i]);
      held[i] = held[--n];
      consumed++;
      if (sluice__bound_update(&b) == SLUICE__BOUND_RESUME) reading = 1;
    }
    assert_true(b.count <= b.max_count);
    /* bytes may pass the bound by the one message that crossed it */
    assert_true(b.bytes < b.max_bytes + 1088);
  }
  assert_int_equal(b.count, 0);
  assert_true(b.pauses > 0);
  assert_true(b.peak_count <= 256);
}

/* The reader of frames.c, frame by frame: a delivery is admitted by its
 * first frame, charged at its header, and its body comes in frames; it is
 * handed to a "handler" once whole, which defers it for a random while.
 * Sizes go up to max_body, beyond max_bytes. The invariants of bound.h hold
 * at every step, and every delivery completes (0.1 paused mid-delivery: a
 * body larger than what the deferred ones left of max_bytes waited for a
 * release that could only come after it). */
static void admitted_delivery_always_completes(void **state) {
  (void)state;
  enum { N = 20000, FRAME = 4096 };
  const size_t max_body = 256 * 1024, max_bytes = 64 * 1024;
  sluice__bound b = {.max_count = 8, .max_bytes = max_bytes};
  size_t held[16];
  size_t n_held = 0;
  int assembling = 0;
  size_t size = 0, got = 0;
  unsigned long admitted = 0, completed = 0, steps = 0, stuck_rounds = 0;
  srand(11);
  while (completed < N) {
    assert_true(++steps < 50u * N); /* no deadlock */
    int progressed = 0;
    if (sluice__bound_may_read(&b, assembling) &&
        (assembling || admitted < N)) {
      progressed = 1;
      if (!assembling) { /* basic.deliver, then the content header */
        sluice__bound_hold(&b);
        admitted++;
        size = rand() % 4 == 0 ? max_body : (size_t)(rand() % 3000);
        sluice__bound_charge(&b, size + 64);
        assembling = 1;
        got = 0;
      } else { /* a body frame */
        got += size - got < FRAME ? size - got : FRAME;
      }
      if (got == size) { /* whole: to its handler, which defers it */
        assembling = 0;
        held[n_held++] = size + 64;
        sluice__bound_update(&b);
      }
    }
    /* Deferred deliveries complete now and then, never the one being
     * assembled (it is not in `held` yet). */
    if (n_held && (rand() % 5 == 0 || !progressed)) {
      size_t i = (size_t)rand() % n_held;
      sluice__bound_release(&b, held[i]);
      held[i] = held[--n_held];
      completed++;
      sluice__bound_update(&b);
      progressed = 1;
    }
    if (!progressed) stuck_rounds++;
    assert_true(stuck_rounds < 1000);
    assert_true(b.count <= b.max_count);
    assert_true(b.bytes < max_bytes + max_body + 64);
    assert_true(!assembling || sluice__bound_may_read(&b, assembling));
  }
  assert_int_equal(b.count, 0);
  assert_int_equal(b.bytes, 0);
  assert_true(b.pauses > 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(pauses_at_count),
      cmocka_unit_test(pauses_at_bytes),
      cmocka_unit_test(deep_queue_stays_bounded),
      cmocka_unit_test(admitted_delivery_always_completes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
