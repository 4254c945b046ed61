/* SPDX-License-Identifier: MIT */
/* Bounded bookkeeping: a tiny scope pool, re-check ring, stack table and
 * queue table, pushed far past their capacities. Leaked messages must not
 * pin scopes, counts must stay exact, and a clean stream must not grow the
 * profiler at all. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "prof_test.h"

#define N_LEAK 2000

static void *leaked[N_LEAK];
static size_t n_leaked;

static int setup(void **state) {
  (void)state;
  sluice_prof_opts o = {
      .sample_rate = 1,
      .max_scopes = 32,
      .max_pending = 8,
      .max_stacks = 64,
      .max_queues = 4,
      .grace_ms = 1000,
      .leak_window = 10,
      .horizon_messages = 20,
      .horizon_ms = 1000,
      .poll_ms = -1,
      .now_ns = t_clock,
      .on_leak = NULL,
  };
  assert_int_equal(sluice_prof_start(&o), 0);
  return 0;
}

/* A quiet leak callback (the default prints to stderr). */
static void quiet_leak(const sluice_prof_leak *v, void *user) {
  (void)v;
  ++*(int *)user;
}

T_NOINLINE static int leak16(int i) {
  char *p = TALLOC(16);
  memset(p, i, 16);
  leaked[n_leaked++] = p;
  return SLUICE_ACK;
}

T_NOINLINE static int clean(int i) {
  char *p = TALLOC(100);
  memset(p, i, 100);
  TFREE(p);
  return SLUICE_ACK;
}

static void deliver(const char *queue, uint64_t seq, int (*h)(int), int i) {
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  sluice_delivery_info info = {queue, seq, 1, seq, 0, NULL, NULL};
  void *tok = hk->begin(hk->user, &info);
  assert_non_null(tok);
  int outcome = h(i);
  hk->suspend(hk->user, tok);
  hk->end(hk->user, tok, &info, outcome);
}

static void test_pool_never_pinned(void **state) {
  (void)state;
  int verdicts = 0;
  sluice_prof_opts o = {.sample_rate = 1,
                        .grace_ms = 1000,
                        .leak_window = 10,
                        .horizon_messages = 20,
                        .horizon_ms = 1000,
                        .poll_ms = -1,
                        .now_ns = t_clock,
                        .on_leak = quiet_leak,
                        .leak_user = &verdicts};
  assert_int_equal(sluice_prof_start(&o), 0);
  char q[16];
  for (int i = 0; i < N_LEAK; i++) {
    snprintf(q, sizeof q, "b.q%d", i % 6);
    deliver(q, (uint64_t)i + 1, leak16, i);
    if (i % 10 == 9) t_clock_ns += 200000000ull;
  }
  t_clock_ns += 2000000000ull;
  sluice_prof_poll();

  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.scopes_refused, 0);
  assert_true(ms.scopes_retained <= 32);
  assert_int_equal(ms.scopes_open, 0);
  assert_int_equal(ms.scopes_pending, 0);

  sluice_prof_residual_stats st[16];
  size_t n = sluice_prof_residual_stats_get(st, 16);
  assert_int_equal(n, 5); /* 4 queues + "(other)" */
  uint64_t msgs = 0, objs = 0, bytes = 0, leaked_msgs = 0, skipped = 0;
  int other = 0;
  for (size_t i = 0; i < n; i++) {
    msgs += st[i].messages;
    objs += st[i].retained_objects;
    bytes += st[i].retained_bytes;
    leaked_msgs += st[i].leaked;
    skipped += st[i].skipped;
    assert_true(st[i].leaking);
    if (!strcmp(st[i].queue, "(other)")) other = 1;
  }
  assert_true(other);
  assert_int_equal(msgs, N_LEAK);
  /* 50 messages per grace period, 8 re-checks pending at most: the rest
   * are counted as skipped, never re-checked early. */
  assert_int_equal(leaked_msgs + skipped, N_LEAK);
  assert_true(skipped > N_LEAK / 2);
  assert_int_equal(ms.rechecks_skipped, skipped);
  assert_int_equal(objs, N_LEAK);
  assert_int_equal(bytes, N_LEAK * 16);
  assert_int_equal(verdicts, 5);

  /* Freeing the leaked blocks debits wherever they went (slots or sinks). */
  for (size_t i = 0; i < n_leaked; i++) TFREE(leaked[i]);
  n_leaked = 0;
  n = sluice_prof_residual_stats_get(st, 16);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(st[i].retained_objects, 0);
    assert_int_equal(st[i].retained_bytes, 0);
  }
}

/* Volatile so that the compiler cannot unroll the rounds into two call
 * sites (two stacks). */
static volatile int n_rounds = 2;
static volatile int round_len[2] = {1000, 20000};

static void test_clean_stream_does_not_grow(void **state) {
  (void)state;
  sluice_prof_memstats ms[2];
  for (int round = 0; round < n_rounds; round++) {
    for (int i = 0; i < round_len[round]; i++)
      deliver("b.clean", (uint64_t)i, clean, i);
    sluice_prof_memstats_read(&ms[round]);
  }
  assert_int_equal(ms[1].overhead_bytes, ms[0].overhead_bytes);
  assert_int_equal(ms[1].stacks, ms[0].stacks);
  assert_int_equal(ms[1].tracked_blocks, ms[0].tracked_blocks);
  assert_int_equal(
      ms[1].scopes_open + ms[1].scopes_pending + ms[1].scopes_retained, 0);
}

/* Many distinct stacks: recursion of every depth. */
T_NOINLINE static void *deep(int d) {
  if (d == 0) return TALLOC(8);
  void *p = deep(d - 1);
  __asm__ __volatile__("" ::: "memory"); /* keep the frame */
  return p;
}

static void test_stack_table_full(void **state) {
  (void)state;
  void *v[120];
  for (int d = 0; d < 120; d++) v[d] = deep(d);
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  assert_true(ms.stacks <= 64);
  assert_true(ms.stacks_dropped > 0);
  tbuf out = {0};
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_TOP, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  assert_non_null(strstr(tbuf_str(&out), "[stack table full]"));
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  tprofile p;
  assert_int_equal(tprofile_parse(out.data, out.len, &p), 0);
  assert_true(tprofile_sum(&p, "inuse_objects", "[stack table full]") > 0);
  tprofile_free(&p);
  tbuf_free(&out);
  for (int d = 0; d < 120; d++) TFREE(v[d]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_pool_never_pinned, setup),
      cmocka_unit_test_setup(test_clean_stream_does_not_grow, setup),
      cmocka_unit_test_setup(test_stack_table_full, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
