/* SPDX-License-Identifier: MIT */
/* push-worker internals shared by its files: the job, the worker, the HTTP
 * sender and the republisher (dead letters and autoAck retries). */
#ifndef PW_PW_H
#define PW_PW_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/sluice.h>

/* Allocation sites must keep their own frames so that the profiler names
 * them (no inlining, no .constprop/.isra clones). */
#if defined(__clang__)
#define PW_NOINLINE __attribute__((noinline))
#else
#define PW_NOINLINE __attribute__((noinline, noclone))
#endif

typedef enum pw_leak {
  PW_LEAK_NONE = 0,
  PW_LEAK_GLOBAL_MAP, /* in-flight entries are never removed from the map */
  PW_LEAK_PROBE_PATH, /* the health-probe path returns before job_free() */
  PW_LEAK_ERROR_PATH, /* a 401/403 reply skips auth_free() */
  PW_LEAK_LISTENER    /* a persistent close listener per (re)connect */
} pw_leak;

typedef struct pw_worker pw_worker;
typedef struct pw_sender pw_sender;
typedef struct pw_republisher pw_republisher;

/* Per-request credentials (the `Authorization` header), made just before
 * the request is sent. */
typedef struct pw_auth {
  size_t len;
  char header[]; /* "Bearer <api key>" */
} pw_auth;

/* One push job, from a valid message to its completion. One allocation:
 * the HTTP body and the token live in `data`. */
typedef struct pw_job {
  struct pw_job *next; /* sender lists */
  pw_worker *w;
  pw_sender *sender; /* set by pw_sender_submit() */
  sluice_delivery *d;
  uint64_t seq;     /* the worker's own job number */
  uint64_t due_ns;  /* delayed retry: when to nack */
  unsigned attempt; /* 1 for a first delivery */
  int probe;
  int status;  /* HTTP status; 0: no reply (timeout, refused) */
  int aborted; /* the worker stopped before it finished */
  int delayed; /* its retry delay has passed */
  int conn;    /* sender connection index, -1 when none */
  pw_auth *auth;
  size_t payload_len;
  const char *payload; /* JSON body of the POST, into data */
  const char *token;   /* into data */
  char data[];
} pw_job;

/* ---- worker (worker.c) ---- */

/* Run on the sender's thread, inside the delivery's scope, just before the
 * request is made: builds job->auth. Returns 0 or -1. */
int pw_job_prepare(pw_job *job);
/* Run on the sender's thread when the reply (or its absence) is known and
 * libevent has freed the request: decides the outcome, cleans up,
 * completes or hands the delivery to the republisher. */
void pw_job_complete(pw_job *job);

/* A republished message was confirmed (ok = 1) or could not be (0). */
void pw_republished(pw_worker *w, sluice_delivery *d, int dead, int outcome,
                    int ok);

/* ---- HTTP sender (sender.c) ---- */

typedef struct pw_sender_opts {
  const char *url;         /* http://host:port/path */
  unsigned conns;          /* parallel keep-alive connections; default 8 */
  unsigned timeout_ms;     /* per request; default 5000 */
  unsigned retry_delay_ms; /* pause before a retry is nacked */
  struct event_base *base; /* run on this base (its thread); NULL: own
                              thread and base */
} pw_sender_opts;

int pw_sender_new(const pw_sender_opts *o, pw_sender **out);
/* Queue a job for sending. Any thread. */
void pw_sender_submit(pw_sender *s, pw_job *job);
/* Hold `job` for the retry delay, then call pw_job_complete() again with
 * job->delayed set. Sender thread only. Returns 0, or -1 when there is no
 * delay to wait. */
int pw_sender_delay(pw_sender *s, pw_job *job);
/* Stop: jobs not finished are completed with job->aborted set; joins the
 * thread. For a sender on a caller's base, call after that loop ended. */
void pw_sender_free(pw_sender *s);

/* ---- republisher (republish.c) ---- */

typedef struct pw_repub_item {
  struct pw_repub_item *next;
  sluice_delivery *d;
  int dead;          /* 1: to the dead-letter queue; 0: back to the queue */
  int outcome;       /* completion once the broker confirmed */
  int status;        /* HTTP status (x-reject-status), 0 if none */
  unsigned attempts; /* x-attempts */
  char reason[192];  /* x-reject-reason */
} pw_repub_item;

int pw_republisher_new(pw_worker *w, const char *uri, const char *queue,
                       const char *dlq, pw_republisher **out);
/* Hand an item over (ownership too). Any thread. */
void pw_republish(pw_republisher *r, pw_repub_item *it);
/* Publish what is queued, complete it, join. NULL: no-op. */
void pw_republisher_free(pw_republisher *r);

#endif
