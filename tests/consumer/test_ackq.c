/* SPDX-License-Identifier: MIT */
/* Ack coalescing: a model of the broker's view of unacknowledged tags checks
 * that no tag is settled twice, that a multiple ack never covers a delivery
 * still outstanding, and that every completion is eventually settled with
 * its own outcome. Random completion orders, bounded and seeded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "consumer/ackq.h"

#define N 2000

enum { UNACKED = 0, SETTLED_ACK, SETTLED_NACK, SETTLED_REJECT };

struct model {
  int broker[N + 1];    /* broker's view per tag */
  int completed[N + 1]; /* -1 outstanding, else sluice__ackq_kind */
  int frames;
  int multiples;
  int refuse_after; /* emit fails after this many frames (-1 never) */
};

static int emit(void *user, uint64_t tag, sluice__ackq_kind kind, int multiple,
                size_t count) {
  struct model *m = user;
  if (m->refuse_after >= 0 && m->frames >= m->refuse_after) return 1;
  assert_true(tag >= 1 && tag <= N);
  size_t settled = 0;
  if (multiple) {
    assert_int_equal(kind, SLUICE__ACKQ_ACK);
    m->multiples++;
    for (uint64_t t = 1; t <= tag; t++) {
      if (m->broker[t] != UNACKED) continue;
      /* covering an outstanding delivery would ack unprocessed work */
      assert_int_equal(m->completed[t], SLUICE__ACKQ_ACK);
      m->broker[t] = SETTLED_ACK;
      settled++;
    }
  } else {
    assert_int_equal(m->broker[tag], UNACKED); /* never twice */
    assert_int_equal(m->completed[tag], (int)kind);
    m->broker[tag] = kind == SLUICE__ACKQ_ACK    ? SETTLED_ACK
                     : kind == SLUICE__ACKQ_NACK ? SETTLED_NACK
                                                 : SETTLED_REJECT;
    settled = 1;
  }
  assert_int_equal(settled, count);
  m->frames++;
  return 0;
}

static uint64_t min_outstanding(struct model *m) {
  for (uint64_t t = 1; t <= N; t++)
    if (m->completed[t] < 0) return t;
  return UINT64_MAX;
}

static void run(unsigned seed, int nack_every, int flush_every, int window) {
  struct model m;
  memset(&m, 0, sizeof(m));
  m.refuse_after = -1;
  for (int t = 0; t <= N; t++) m.completed[t] = -1;
  sluice__ackq q;
  sluice__ackq_init(&q);
  srand(seed);
  /* complete tags in a random order within a sliding window, like workers
   * and deferred handlers do */
  int next = 1, done = 0;
  int pending[N];
  int np = 0;
  while (done < N) {
    while (np < window && next <= N) pending[np++] = next++;
    int i = rand() % np;
    int tag = pending[i];
    pending[i] = pending[--np];
    sluice__ackq_kind k = SLUICE__ACKQ_ACK;
    if (nack_every && tag % nack_every == 0) k = SLUICE__ACKQ_NACK;
    if (nack_every && tag % (nack_every * 3) == 0) k = SLUICE__ACKQ_REJECT;
    m.completed[tag] = (int)k;
    assert_int_equal(sluice__ackq_push(&q, (uint64_t)tag, k), 0);
    done++;
    if (done % flush_every == 0) {
      /* sometimes the socket refuses part of a flush */
      m.refuse_after = (rand() % 4 == 0) ? m.frames + rand() % 3 : -1;
      sluice__ackq_flush(&q, min_outstanding(&m), emit, &m);
      m.refuse_after = -1;
    }
  }
  assert_true(sluice__ackq_flush(&q, min_outstanding(&m), emit, &m) >= 0);
  assert_int_equal(q.n, 0);
  for (int t = 1; t <= N; t++) {
    assert_int_not_equal(m.broker[t], UNACKED);
    int want = m.completed[t] == SLUICE__ACKQ_ACK    ? SETTLED_ACK
               : m.completed[t] == SLUICE__ACKQ_NACK ? SETTLED_NACK
                                                     : SETTLED_REJECT;
    assert_int_equal(m.broker[t], want);
  }
  sluice__ackq_free(&q);
}

static void in_order_coalesces_to_one_frame(void **state) {
  (void)state;
  struct model m;
  memset(&m, 0, sizeof(m));
  m.refuse_after = -1;
  sluice__ackq q;
  sluice__ackq_init(&q);
  for (int t = 1; t <= 100; t++) {
    m.completed[t] = SLUICE__ACKQ_ACK;
    sluice__ackq_push(&q, (uint64_t)t, SLUICE__ACKQ_ACK);
  }
  for (int t = 101; t <= N; t++) m.completed[t] = -1;
  assert_int_equal(sluice__ackq_flush(&q, 101, emit, &m), 1);
  assert_int_equal(m.multiples, 1);
  sluice__ackq_free(&q);
}

static void outstanding_below_blocks_multiple(void **state) {
  (void)state;
  struct model m;
  memset(&m, 0, sizeof(m));
  m.refuse_after = -1;
  for (int t = 0; t <= N; t++) m.completed[t] = -1;
  sluice__ackq q;
  sluice__ackq_init(&q);
  /* tag 1 is deferred; 2..10 done: no multiple ack may cover tag 1 */
  for (int t = 2; t <= 10; t++) {
    m.completed[t] = SLUICE__ACKQ_ACK;
    sluice__ackq_push(&q, (uint64_t)t, SLUICE__ACKQ_ACK);
  }
  assert_int_equal(sluice__ackq_flush(&q, 1, emit, &m), 9);
  assert_int_equal(m.multiples, 0);
  assert_int_equal(m.broker[1], UNACKED);
  sluice__ackq_free(&q);
}

static void nack_goes_before_covering_ack(void **state) {
  (void)state;
  struct model m;
  memset(&m, 0, sizeof(m));
  m.refuse_after = -1;
  for (int t = 0; t <= N; t++) m.completed[t] = -1;
  sluice__ackq q;
  sluice__ackq_init(&q);
  m.completed[3] = SLUICE__ACKQ_ACK;
  sluice__ackq_push(&q, 3, SLUICE__ACKQ_ACK);
  m.completed[1] = SLUICE__ACKQ_ACK;
  sluice__ackq_push(&q, 1, SLUICE__ACKQ_ACK);
  m.completed[2] = SLUICE__ACKQ_NACK;
  sluice__ackq_push(&q, 2, SLUICE__ACKQ_NACK);
  assert_int_equal(sluice__ackq_flush(&q, UINT64_MAX, emit, &m), 2);
  assert_int_equal(m.broker[2], SETTLED_NACK);
  assert_int_equal(m.broker[1], SETTLED_ACK);
  assert_int_equal(m.broker[3], SETTLED_ACK);
  sluice__ackq_free(&q);
}

/* A flush of one completion (per-message acks) sends it alone with its own
 * outcome, and keeps it when the socket refuses. */
static void one_completion_goes_alone(void **state) {
  (void)state;
  static const sluice__ackq_kind kinds[] = {SLUICE__ACKQ_ACK, SLUICE__ACKQ_NACK,
                                            SLUICE__ACKQ_REJECT};
  struct model m;
  memset(&m, 0, sizeof(m));
  for (int t = 0; t <= N; t++) m.completed[t] = -1;
  sluice__ackq q;
  sluice__ackq_init(&q);
  for (int t = 1; t <= 9; t++) {
    sluice__ackq_kind k = kinds[t % 3];
    m.completed[t] = (int)k;
    assert_int_equal(sluice__ackq_push(&q, (uint64_t)t, k), 0);
    m.refuse_after = m.frames; /* refused: kept */
    assert_true(sluice__ackq_flush(&q, UINT64_MAX, emit, &m) < 0);
    assert_int_equal(q.n, 1);
    m.refuse_after = -1;
    /* below every outstanding tag, or not: either way one plain frame */
    assert_int_equal(
        sluice__ackq_flush(&q, t % 2 ? UINT64_MAX : (uint64_t)t, emit, &m), 1);
    assert_int_equal(q.n, 0);
    assert_int_equal(q.n_acks, 0);
    assert_int_not_equal(m.broker[t], UNACKED);
  }
  assert_int_equal(m.frames, 9);
  assert_int_equal(m.multiples, 0);
  sluice__ackq_free(&q);
}

static void random_orders(void **state) {
  (void)state;
  for (unsigned seed = 1; seed <= 20; seed++) {
    run(seed, 0, 7, 50);
    run(seed, 5, 13, 100);
    run(seed, 2, 1, 3);
    run(seed, 11, 64, 500);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(in_order_coalesces_to_one_frame),
      cmocka_unit_test(outstanding_below_blocks_multiple),
      cmocka_unit_test(nack_goes_before_covering_ack),
      cmocka_unit_test(one_completion_goes_alone),
      cmocka_unit_test(random_orders),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
