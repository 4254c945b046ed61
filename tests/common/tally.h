/* SPDX-License-Identifier: MIT */
/* What a handler saw of a stream of numbered messages (tb_fill's and
 * cl_fill's: message_id "i", a body that starts with "i"), shared by the
 * reconnect and cluster harnesses (rc_util.c, cl_stream.c): which ids came,
 * how often, and whether every repeat carried the redelivered flag. Any
 * thread. */
#ifndef SLUICE_TEST_TALLY_H
#define SLUICE_TEST_TALLY_H

#include <pthread.h>
#include <stdatomic.h>

#include <sluice/sluice.h>

#define TB_TALLY_MAXN 20000

typedef struct tb_tally {
  unsigned n; /* ids are 0..n-1 */
  _Atomic unsigned char seen[TB_TALLY_MAXN];
  _Atomic unsigned distinct, calls, redelivered_calls;
  _Atomic unsigned dup_fresh; /* a repeat without the redelivered flag */
  _Atomic unsigned bad_body;  /* no id, one past n, or a body without it */
} tb_tally;

/* Count one handler call of `m`; `*call` (may be NULL) gets its number.
 * Returns the number of distinct ids seen once `m` is counted when its id
 * came for the first time, else 0. */
unsigned tb_tally_record(tb_tally *t, const sluice_message *m, unsigned *call);
/* Ids 0..n-1 not seen yet. */
unsigned tb_tally_missing(tb_tally *t);

/* A condition variable timed on CLOCK_MONOTONIC (deadlines that a clock
 * step cannot stretch). */
void tb_cond_init_monotonic(pthread_cond_t *cv);
/* A sluice log sink that drops everything. */
void tb_log_quiet(int level, const char *msg, void *user);

#endif
