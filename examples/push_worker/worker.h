/* SPDX-License-Identifier: MIT */
/* push-worker's own parts, shared by its three files: the command line
 * (cli.c), the stats lines and reports (stats.c), and the worker itself
 * (worker.c). */
#ifndef PW_WORKER_H
#define PW_WORKER_H

#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <time.h>

#include <sluice/profiling.h>
#include <sluice/sluice.h>
#ifdef PW_HAVE_DEBUG
#include <sluice/debug.h>
#endif

#include "pw.h"

/* ---- configuration (cli.c) ----------------------------------------------- */

typedef struct pw_config {
  const char *uri, *queue, *gateway, *api_key, *debug_addr;
  sluice_ack_mode ack;
  unsigned prefetch;
  int workers;
  unsigned http_conns, http_timeout_ms, max_attempts, retry_delay_ms;
  pw_leak leak;
  int report;
  uint64_t count;
  double duration_s;
  int stats_fd;
  unsigned stats_interval_ms;
  size_t prof_rate; /* 0: profiler off */
  unsigned leak_window;
  long grace_ms;
  uint64_t horizon_msgs; /* the profiler's verdict horizon */
  long horizon_ms;
  const char *prof_key; /* the subscription's key; "none": no key */
  unsigned max_listeners;
  unsigned stop_timeout_ms;
  int quiet;
} pw_config;

extern const char *const pw_leak_names[];

/* Fill `c` with the defaults, then the command line. Returns 0; 1 after
 * --help (printed); -1 for a bad command line (said on stderr). */
int pw_cli_parse(int argc, char **argv, pw_config *c);
void pw_cli_usage(FILE *f, const char *argv0);

/* ---- the worker (worker.c) ----------------------------------------------- */

#define MAP_BUCKETS 1024
#define MAX_VERDICTS 16

/* An in-flight map entry: which jobs are at the gateway, since when. */
typedef struct pw_entry {
  struct pw_entry *next;
  uint64_t seq;
  uint64_t started_ns;
  char token[];
} pw_entry;

typedef struct pw_verdict {
  char queue[128];
  char key[128];   /* "type=probe", or "" without a key */
  char kinds[512]; /* "type=probe: 176.0 B/message, type=ok: 0" */
  int outcome;
  double bytes_per_message;
  uint64_t messages;
  char site[128]; /* the function that allocated what is left */
  char stack[512];
} pw_verdict;

typedef struct pw_counters {
  atomic_uint_fast64_t received, invalid, probes, sent, ok, rejected_4xx,
      auth_failed, failed_5xx, no_reply, retried, dead_lettered,
      republish_failed, finished, stale, aborted, abandoned;
} pw_counters;

struct pw_worker {
  pw_config cfg;
  sluice_consumer *c;
  struct event_base *base;
  pw_sender *sender;
  pw_republisher *repub;
  sluice_publisher *abandon_pub; /* autoAck stop hand-off (loop thread) */
  char dlq[256];
  double t0;

  pthread_mutex_t map_mu;
  pw_entry *map[MAP_BUCKETS];
  size_t map_size;

  pw_counters n;
  atomic_uint_fast64_t next_seq;

  /* Close listeners (loop thread only). */
  uint64_t listeners_registered, listeners_refused, closes_seen;
  int first_refusal_logged;

  pthread_mutex_t verdict_mu;
  pw_verdict verdicts[MAX_VERDICTS];
  size_t n_verdicts;

  struct event *stats_ev, *duration_ev;
  int run_result;
#ifdef PW_HAVE_DEBUG
  sluice_debug_server *debug;
#endif
};

static inline double pw_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define LOAD(x) ((uint64_t)atomic_load_explicit(&(x), memory_order_relaxed))
#define INC(x) atomic_fetch_add_explicit(&(x), 1, memory_order_relaxed)

/* Entries in the in-flight map now. */
size_t pw_inflight_size(pw_worker *w);

/* ---- stats lines and reports (stats.c) ----------------------------------- */

/* Write `obj` as one line on --stats-fd (and release it). */
void pw_emit(pw_worker *w, json_t *obj);
/* A {"type": type, ...} sample: memory, residuals, counters. */
json_t *pw_sample_json(pw_worker *w, const char *type);
/* The last line: a sample plus aggregates and verdicts. */
json_t *pw_final_json(pw_worker *w, double elapsed);
/* The profiler's leak verdicts, kept for the final line. */
void pw_on_leak(const sluice_prof_leak *v, void *user);
/* 1 while residuals wait for their re-check after the grace period. */
int pw_residual_pending(void);
/* The one-line summary and, with --report, the residual reports. */
void pw_print_summary(pw_worker *w, double elapsed);
void pw_print_report(void);

#endif
