/* SPDX-License-Identifier: MIT */
/* Shared by the reconnect tests and bench: a consumer of a stream of
 * numbered messages (tb_fill's message_id) that records what it saw, and a
 * "chaos" thread that injects a fault each time the stream reaches a
 * checkpoint, waiting on the consumer's events (never on sleeps). */
#ifndef SLUICE_TEST_RC_UTIL_H
#define SLUICE_TEST_RC_UTIL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <sluice/sluice.h>

#include "common/tally.h"

#define RC_MAXN TB_TALLY_MAXN

struct rc_stream;
/* Inject one fault; runs on the chaos thread. Returns 0, or -1 to abort. */
typedef int (*rc_fault_fn)(struct rc_stream *s, unsigned k);

typedef struct rc_stream {
  sluice_consumer *c;
  const char *queue;
  unsigned n; /* distinct messages expected */

  tb_tally tally;                 /* what the handler saw (tally.n == n) */
  _Atomic unsigned stop_at_calls; /* stop() at this many calls (0: off) */

  /* events */
  _Atomic unsigned events[16];
  _Atomic unsigned closed_406; /* channel closed by PRECONDITION_FAILED */
  _Atomic int last_closed_err;
  _Atomic uint64_t last_closed_ms;

  /* faults */
  rc_fault_fn fault;
  unsigned n_faults;     /* at distinct = n*(k+1)/(n_faults+1), k = 0..:
                            the handler of that message holds every
                            handler until the fault is injected */
  int gate_during_fault; /* hold handlers from the fault until CLOSED, so
                            their completions are stale (needs workers) */
  int wait_timeout_s;    /* for the chaos thread's waits; default 30 */
  int stop_when_drained; /* after the faults, stop once the queue is empty
                            and nothing is held (autoAck loses what was in
                            transit, so distinct may never reach n) */
  unsigned faults_done;
  int chaos_failed;
  uint64_t fault_ms[16], closed_ms[16], connected_ms[16];
  void *fault_user;
  const char *conn_name;

  pthread_mutex_t mu;
  pthread_cond_t cv;
  _Atomic int gate; /* 1: handlers wait */
  int quit;
  pthread_t chaos;
} rc_stream;

uint64_t rc_now_ms(void);

rc_stream *rc_stream_new(const char *queue, unsigned n);
void rc_stream_free(rc_stream *s);
/* Fill `o` (uri left to the caller) with the stream's event callback and a
 * quiet log, create the consumer and subscribe the stream's handler. */
sluice_consumer *rc_stream_consumer(rc_stream *s, sluice_consumer_opts *o);
/* Run the consumer (bounded) with the chaos thread; returns run()'s rc. */
int rc_stream_run(rc_stream *s, int seconds, int *timed_out);
/* Print and check the stream's invariants with cmocka asserts: every
 * message seen, repeats only when redelivered, no channel closed by a stale
 * ack, the queue empty in the end. */
void rc_stream_check(rc_stream *s);
/* Wait until no consumer is left on `queue` (the broker has closed every
 * channel that held its messages, so they are ready again). 0 or -1. */
int rc_wait_no_consumers(const char *queue, int seconds, uint32_t *ready);

/* Wait (bounded) until events[type] >= want. 0 or -1 on timeout. */
int rc_wait_event(rc_stream *s, int type, unsigned want, int seconds);

/* rabbitmqctl: close the connection(s) whose connection_name is `name`.
 * Returns how many were closed, -1 when rabbitmqctl failed. */
int rc_close_named_connection(const char *name);
/* rabbitmqctl stop_app / start_app. 0 or -1. A guardian process started
 * with the first stop_app runs start_app if this process dies (crash,
 * ctest timeout) between the two: other suites share the broker. */
int rc_stop_app(void);
int rc_start_app(void);

#endif
