/* SPDX-License-Identifier: MIT */
/* A consumer of numbered messages (message_id "i", body starting with "i")
 * running on its own thread, recording what it handled and when, for the
 * cluster tests and bench/reconnect's crash mode. Waits are on its events,
 * each bounded. */
#ifndef SLUICE_TEST_CL_STREAM_H
#define SLUICE_TEST_CL_STREAM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/sluice.h>

#include "tally.h"

#define CL_MAXN TB_TALLY_MAXN

typedef struct cl_stream {
  sluice_consumer *c;
  const char *queue;

  tb_tally tally; /* what the handler saw (tally.n: ids are 0..n-1) */
  _Atomic unsigned stop_at_distinct; /* stop() when reached (0: never) */
  _Atomic unsigned stop_at_calls;    /* stop() when reached (0: never) */
  /* deliveries on a connection generation above `after_gen` (one made after
   * a fault): the first one's time */
  _Atomic uint64_t after_gen;
  _Atomic uint64_t first_after_ms;

  /* events */
  _Atomic unsigned events[16];
  _Atomic uint64_t event_ms[16]; /* time of the latest of each type */
  _Atomic unsigned closed_406;   /* a stale ack reached a new channel */

  pthread_mutex_t mu;
  pthread_cond_t cv;
  _Atomic unsigned want_distinct;
  int finished, run_rc;
  pthread_t thread;
} cl_stream;

cl_stream *cl_stream_new(const char *queue, unsigned n);
/* Frees the consumer too. */
void cl_stream_free(cl_stream *s);
/* Complete `o` (URIs are the caller's) with the stream's event callback and
 * a quiet log, create the consumer and subscribe the stream's handler. */
sluice_consumer *cl_stream_consumer(cl_stream *s, sluice_consumer_opts *o);
/* Run the consumer on a thread. */
void cl_stream_start(cl_stream *s);
/* Wait for run() to return, stop()ping it after `seconds` (the watchdog).
 * Returns run()'s result; *timed_out says whether the watchdog fired. */
int cl_stream_join(cl_stream *s, int seconds, int *timed_out);

/* Bounded waits on the stream's events. 0, or -1 at the deadline. */
int cl_wait_distinct(cl_stream *s, unsigned want, int seconds);
int cl_wait_event(cl_stream *s, int type, unsigned want, int seconds);
int cl_wait_first_after(cl_stream *s, int seconds);

/* Ids 0..n-1 not handled yet. */
unsigned cl_stream_missing(cl_stream *s);

/* Publish ids [first, first + n) to `queue` through `uri` (persistent,
 * body padded to `size`) and wait for every confirm. 0 or the error. */
int cl_fill(const char *uri, const char *queue, unsigned first, unsigned n,
            size_t size);
/* Publish one numbered message (no wait for its confirm). */
int cl_publish_id(sluice_publisher *p, const char *queue, unsigned id,
                  size_t size);

/* Wait until `queue` has no consumer left (the broker closed every channel
 * that held its messages); `*ready` gets its ready messages. 0 or -1. */
int cl_wait_no_consumers(const char *uri, const char *queue, int seconds,
                         uint32_t *ready);

#endif
