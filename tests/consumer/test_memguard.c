/* SPDX-License-Identifier: MIT */
/* The memory guard's hysteresis and how it shares the read decision with
 * the in-flight bound (memguard.h), without a broker; and the default
 * figure (sluice_memory_read) moving with what this process allocates, in
 * whichever allocator this build runs on (glibc, ASan, TSan, valgrind). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sluice/consumer.h>

#include "consumer/memguard.h"

static void hysteresis(void **state) {
  (void)state;
  sluice__memguard g = {.high = 1000, .low = 600};
  /* at the high mark is not above it */
  assert_int_equal(sluice__memguard_update(&g, 1000), SLUICE__BOUND_SAME);
  assert_int_equal(sluice__memguard_update(&g, 1001), SLUICE__BOUND_PAUSE);
  assert_true(g.held);
  /* between the marks, and at the low one: still held */
  assert_int_equal(sluice__memguard_update(&g, 5000), SLUICE__BOUND_SAME);
  assert_int_equal(sluice__memguard_update(&g, 800), SLUICE__BOUND_SAME);
  assert_int_equal(sluice__memguard_update(&g, 600), SLUICE__BOUND_SAME);
  assert_true(g.held);
  assert_int_equal(sluice__memguard_update(&g, 599), SLUICE__BOUND_RESUME);
  assert_false(g.held);
  /* between the marks again, from below: reading goes on */
  assert_int_equal(sluice__memguard_update(&g, 999), SLUICE__BOUND_SAME);
  assert_false(g.held);
  assert_int_equal(g.pauses, 1);
  assert_int_equal(g.bytes, 999);
  /* no guard: never holds */
  sluice__memguard off = {0};
  assert_int_equal(sluice__memguard_update(&off, UINT64_MAX),
                   SLUICE__BOUND_SAME);
  assert_false(off.held);
}

/* Between deliveries, either hold stops reading and only the end of both
 * resumes it; a delivery being assembled is read to its end whatever
 * either says. Every combination, then a random walk of both. */
static void both_holds(void **state) {
  (void)state;
  for (int full = 0; full < 2; full++)
    for (int guard = 0; guard < 2; guard++) {
      sluice__bound b = {.full = full};
      assert_int_equal(sluice__may_read(&b, guard, 0), !full && !guard);
      assert_true(sluice__may_read(&b, guard, 1));
    }

  sluice__bound b = {.max_count = 8, .max_bytes = 1 << 20};
  sluice__memguard g = {.high = 100, .low = 50};
  unsigned seed = 11;
  int resumed_by_bound_while_held = 0, resumed_by_guard_while_full = 0;
  for (int i = 0; i < 100000; i++) {
    int before = sluice__may_read(&b, g.held, 0);
    seed = seed * 1103515245u + 12345u;
    unsigned r = (seed >> 16) % 4;
    if (r == 0 && b.count < 16) {
      sluice__bound_hold(&b);
      sluice__bound_charge(&b, 10);
      sluice__bound_update(&b);
    } else if (r == 1 && b.count > 0) {
      sluice__bound_release(&b, 10);
      if (sluice__bound_update(&b) == SLUICE__BOUND_RESUME && g.held) {
        resumed_by_bound_while_held++;
        assert_false(sluice__may_read(&b, g.held, 0));
      }
    } else {
      uint64_t fig = (seed >> 8) % 160;
      if (sluice__memguard_update(&g, fig) == SLUICE__BOUND_RESUME && b.full) {
        resumed_by_guard_while_full++;
        assert_false(sluice__may_read(&b, g.held, 0));
      }
    }
    int after = sluice__may_read(&b, g.held, 0);
    assert_int_equal(after, !b.full && !g.held);
    (void)before;
  }
  /* both cases happened: the walk tested something */
  assert_true(resumed_by_bound_while_held > 0);
  assert_true(resumed_by_guard_while_full > 0);
}

/* The default figure follows an allocation of 32 MiB up and back down, in
 * every build: the test suite's own check that the guard can see this
 * process's heap (glibc, ASan, TSan, valgrind each take another path). */
static void default_figure_follows_the_heap(void **state) {
  (void)state;
  const size_t chunk = 1 << 20, n = 32;
  uint64_t base, up, down;
  const char *src = NULL;
  assert_int_equal(sluice_memory_read(0, &base, &src), 0);
  assert_non_null(src);
  printf("  default figure: %s, %llu bytes\n", src, (unsigned long long)base);
  assert_string_not_equal(src, "rss"); /* the heap is visible */
  char *p[32];
  for (size_t i = 0; i < n; i++) {
    p[i] = malloc(chunk);
    assert_non_null(p[i]);
    memset(p[i], (int)i, chunk);
  }
  assert_int_equal(sluice_memory_read(0, &up, NULL), 0);
  for (size_t i = 0; i < n; i++) free(p[i]);
  assert_int_equal(sluice_memory_read(0, &down, NULL), 0);
  /* what cmocka and printf allocate meanwhile is far below 1 MiB */
  assert_true(up >= base + n * chunk - chunk);
  assert_true(down + (n - 1) * chunk <= up);
  uint64_t rss;
  assert_int_equal(sluice_memory_read(1, &rss, &src), 0);
  assert_string_equal(src, "rss");
  assert_true(rss > 0);
  assert_int_equal(sluice_memory_read(0, NULL, NULL), SLUICE_EINVAL);
}

static void options_checked(void **state) {
  (void)state;
  sluice_consumer *c = NULL;
  sluice_consumer_opts o = {
      .memory_guard = {.high_bytes = 100, .low_bytes = 100}};
  assert_int_equal(sluice_consumer_new(&o, &c), SLUICE_EINVAL);
  o.memory_guard.low_bytes = 101;
  assert_int_equal(sluice_consumer_new(&o, &c), SLUICE_EINVAL);
  o.memory_guard.low_bytes = 0; /* default: 3/4 of the high mark */
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  assert_int_equal(st.memory_high_bytes, 100);
  assert_int_equal(st.memory_low_bytes, 75);
  assert_int_equal(st.memory_checks, 0); /* checked from start/run on */
  assert_string_equal(st.memory_source, "");
  sluice_consumer_free(c);
  /* no guard: everything 0 */
  sluice_consumer_opts none = {0};
  assert_int_equal(sluice_consumer_new(&none, &c), 0);
  sluice_consumer_get_stats(c, &st);
  assert_int_equal(st.memory_high_bytes, 0);
  assert_int_equal(st.memory_paused, 0);
  sluice_consumer_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(hysteresis),
      cmocka_unit_test(both_holds),
      cmocka_unit_test(default_figure_follows_the_heap),
      cmocka_unit_test(options_checked),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
