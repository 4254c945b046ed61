/* SPDX-License-Identifier: MIT */
/* The in-flight bound behind autoAck back-pressure: a reader that obeys the
 * pause never holds more than the bound, by count or by bytes, and resumes
 * as soon as a completion takes it back under. */
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(pauses_at_count),
      cmocka_unit_test(pauses_at_bytes),
      cmocka_unit_test(deep_queue_stays_bounded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
