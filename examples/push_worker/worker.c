/* SPDX-License-Identifier: MIT */
/* push-worker: takes push jobs from RabbitMQ and POSTs them to a push
 * gateway, with sluice's consumer and allocation profiler.
 *
 *   push-worker [--uri URI] [--queue NAME] [--gateway URL] [--api-key KEY]
 *               [--ack auto|manual] [--prefetch N] [--workers N]
 *               [--http-conns N] [--http-timeout-ms MS] [--max-attempts N]
 *               [--retry-delay-ms MS] [--debug-addr HOST:PORT] [--report]
 *               [--leak none|global-map|probe-path|error-path|listener]
 *               [--count N] [--duration S] [--stats-fd FD]
 *               [--stats-interval-ms MS] [--prof-rate BYTES|none]
 *               [--leak-window N] [--horizon N,MS] [--grace-ms MS]
 *               [--max-listeners N]
 *               [--stop-timeout-ms MS] [--quiet]
 *
 * A job is a JSON object {"token": ..., "title": ..., "body": ...} with an
 * optional "probe": true for health probes (acknowledged without calling
 * the gateway). What happens to a message:
 *   invalid JSON, a missing or mistyped field   -> dead-letter queue
 *   gateway 2xx                                 -> ACK
 *   gateway 4xx (401/403: credentials refused)  -> dead-letter queue
 *   gateway 1xx/3xx (a misconfigured URL)       -> dead-letter queue
 *   gateway 5xx, timeout, connection refused    -> NACK (requeue), until
 *       --max-attempts deliveries, then the dead-letter queue
 * Dead letters are republished to "<queue>.dead" with the headers
 * x-reject-reason, x-reject-status, x-attempts and x-original-queue, and
 * the original is completed only once the broker confirmed the copy.
 * Attempts come from the quorum queue's x-delivery-count header (the broker
 * counts them; nothing is kept in the worker), or, in autoAck mode where a
 * NACK cannot requeue, from the x-attempts header of the worker's own
 * republished retry.
 *
 * The --leak modes reproduce leaks seen in the field; each is a plain bug
 * in the code below, switched on by the flag, so that the profiler's
 * report can be compared with a clean run:
 *   global-map  the in-flight map entry of each job is never removed;
 *   probe-path  the health-probe path returns before job_free();
 *   error-path  a 401/403 reply skips auth_free() for that request;
 *   listener    a persistent close listener is registered on every
 *               (re)connect and never removed: sluice's bounded registry
 *               refuses it once full (SLUICE_ELIMIT), and the worker says so.
 *
 * --stats-fd FD writes one JSON object per line to FD: events
 * ({"type":"event",...}), samples every --stats-interval-ms
 * ({"type":"sample",...}) and a last {"type":"final",...} with the counters,
 * the residual aggregates and the leak verdicts with their top sites. The
 * soak runner and the tests read it. */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/profiling.h>
#include <sluice/sluice.h>
#ifdef PW_HAVE_DEBUG
#include <sluice/debug.h>
#endif

#include "jobs.h"
#include "pw.h"

/* ------------------------------------------------------------------------ */
/* Configuration */

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
  unsigned max_listeners;
  unsigned stop_timeout_ms;
  int quiet;
} pw_config;

static const char *const leak_names[] = {"none", "global-map", "probe-path",
                                         "error-path", "listener"};

/* ------------------------------------------------------------------------ */
/* The worker */

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
  int outcome;
  double bytes_per_message;
  uint64_t messages;
  char site[128];  /* the function that allocated what is left */
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

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define LOAD(x) ((uint64_t)atomic_load_explicit(&(x), memory_order_relaxed))
#define INC(x) atomic_fetch_add_explicit(&(x), 1, memory_order_relaxed)

/* ---- the in-flight map --------------------------------------------------- */

static PW_NOINLINE void inflight_put(pw_worker *w, const pw_job *job) {
  size_t tl = strlen(job->token);
  pw_entry *e = malloc(sizeof(*e) + tl + 1);
  if (!e) return;
  e->seq = job->seq;
  e->started_ns = now_ns();
  memcpy(e->token, job->token, tl + 1);
  pthread_mutex_lock(&w->map_mu);
  pw_entry **b = &w->map[job->seq % MAP_BUCKETS];
  e->next = *b;
  *b = e;
  w->map_size++;
  pthread_mutex_unlock(&w->map_mu);
}

static void inflight_del(pw_worker *w, uint64_t seq) {
  pthread_mutex_lock(&w->map_mu);
  pw_entry **p = &w->map[seq % MAP_BUCKETS];
  while (*p && (*p)->seq != seq) p = &(*p)->next;
  pw_entry *e = *p;
  if (e) {
    *p = e->next;
    w->map_size--;
  }
  pthread_mutex_unlock(&w->map_mu);
  free(e);
}

static size_t inflight_size(pw_worker *w) {
  pthread_mutex_lock(&w->map_mu);
  size_t n = w->map_size;
  pthread_mutex_unlock(&w->map_mu);
  return n;
}

static void inflight_clear(pw_worker *w) {
  for (size_t i = 0; i < MAP_BUCKETS; i++)
    while (w->map[i]) {
      pw_entry *e = w->map[i];
      w->map[i] = e->next;
      free(e);
    }
  w->map_size = 0;
}

/* ---- jobs ---------------------------------------------------------------- */

/* Build the job and its HTTP body ({"to": token, "notification": {"title":
 * ..., "body": ...}}) in one allocation. */
static PW_NOINLINE pw_job *job_new(pw_worker *w, sluice_delivery *d,
                                   const char *token, const char *title,
                                   const char *text, int probe,
                                   unsigned attempt) {
  json_t *p = json_pack("{s:s, s:{s:s, s:s}}", "to", token, "notification",
                        "title", title, "body", text);
  if (!p) return NULL;
  size_t plen = json_dumpb(p, NULL, 0, JSON_COMPACT);
  size_t tlen = strlen(token);
  pw_job *job = malloc(sizeof(*job) + plen + 1 + tlen + 1);
  if (job) {
    memset(job, 0, sizeof(*job));
    job->w = w;
    job->d = d;
    job->seq = atomic_fetch_add(&w->next_seq, 1) + 1;
    job->attempt = attempt;
    job->probe = probe;
    job->conn = -1;
    json_dumpb(p, job->data, plen, JSON_COMPACT);
    job->data[plen] = 0;
    job->payload = job->data;
    job->payload_len = plen;
    memcpy(job->data + plen + 1, token, tlen + 1);
    job->token = job->data + plen + 1;
  }
  json_decref(p);
  return job;
}

static void job_free(pw_job *job) { free(job); }

static PW_NOINLINE pw_auth *auth_new(const char *api_key) {
  size_t kl = strlen(api_key);
  pw_auth *a = malloc(sizeof(*a) + 7 + kl + 1);
  if (!a) return NULL;
  memcpy(a->header, "Bearer ", 7);
  memcpy(a->header + 7, api_key, kl + 1);
  a->len = 7 + kl;
  return a;
}

static void auth_free(pw_auth *a) { free(a); }

/* Deliveries so far of a message: the quorum queue's count of failed
 * deliveries, or the worker's own count on a republished retry. */
static unsigned attempt_of(const sluice_message *m) {
  int64_t n = 0;
  const sluice_value *v = sluice_message_header(m, "x-delivery-count");
  if (v && v->kind == SLUICE_VAL_INT && v->u.i > n) n = v->u.i;
  v = sluice_message_header(m, "x-attempts");
  if (v && v->kind == SLUICE_VAL_INT && v->u.i > n) n = v->u.i;
  if (n < 0 || n > 1000000) n = 1000000;
  return (unsigned)n + 1;
}

/* ---- completion ---------------------------------------------------------- */

static void finished(pw_worker *w) {
  uint64_t n = (uint64_t)atomic_fetch_add(&w->n.finished, 1) + 1;
  if (w->cfg.count && n == w->cfg.count) sluice_consumer_stop(w->c);
}

static void complete(pw_worker *w, sluice_delivery *d, int outcome) {
  if (sluice_delivery_done(d, outcome) == SLUICE_ESTALE) INC(w->n.stale);
}

/* Hand a delivery to the republisher: dead letter (dead = 1) or, in
 * autoAck mode, a retry. */
static void republish(pw_worker *w, sluice_delivery *d, int dead, int status,
                      unsigned attempts, const char *reason) {
  pw_repub_item *it = calloc(1, sizeof(*it));
  if (!it) {
    complete(w, d, SLUICE_NACK);
    return;
  }
  it->d = d;
  it->dead = dead;
  it->outcome = dead ? SLUICE_REJECT : SLUICE_NACK;
  it->status = status;
  it->attempts = attempts;
  snprintf(it->reason, sizeof(it->reason), "%s", reason);
  pw_republish(w->repub, it);
}

void pw_republished(pw_worker *w, sluice_delivery *d, int dead, int outcome,
                    int ok) {
  if (!ok) INC(w->n.republish_failed);
  else if (dead) INC(w->n.dead_lettered);
  complete(w, d, outcome);
  if (ok && dead) finished(w);
}

int pw_job_prepare(pw_job *job) {
  job->auth = auth_new(job->w->cfg.api_key);
  if (job->auth) INC(job->w->n.sent);
  return job->auth ? 0 : -1;
}

void pw_job_complete(pw_job *job) {
  pw_worker *w = job->w;
  sluice_delivery *d = job->d;
  int status = job->status;
  unsigned attempt = job->attempt;
  int outcome = SLUICE_ACK, dead = 0, auth_refused = 0;
  char reason[192] = "";

  if (job->aborted) {
    /* The worker is stopping: give the message back (a NACK; in autoAck
     * mode, where the broker forgot the message when it sent it, a copy
     * republished to the queue). Not a failed attempt. */
    INC(w->n.aborted);
    outcome = SLUICE_NACK;
    attempt = attempt > 1 ? attempt - 1 : 0;
  } else if (status >= 200 && status < 300) {
    INC(w->n.ok);
  } else if (status == 401 || status == 403) {
    INC(w->n.auth_failed);
    auth_refused = 1;
    dead = 1;
    snprintf(reason, sizeof(reason),
             "gateway %d: credentials refused", status);
  } else if (status >= 400 && status < 500) {
    INC(w->n.rejected_4xx);
    dead = 1;
    snprintf(reason, sizeof(reason), "gateway %d", status);
  } else if (status && status < 500) {
    /* 1xx/3xx: a misconfigured URL; trying again will not help. */
    INC(w->n.rejected_4xx);
    dead = 1;
    snprintf(reason, sizeof(reason), "gateway %d: unexpected status", status);
  } else {
    if (!job->delayed) {
      if (status) INC(w->n.failed_5xx);
      else INC(w->n.no_reply);
    }
    if (attempt >= w->cfg.max_attempts) {
      dead = 1;
      if (status)
        snprintf(reason, sizeof(reason), "gateway %d after %u attempts",
                 status, attempt);
      else
        snprintf(reason, sizeof(reason),
                 "no reply from the gateway (timeout or connection error) "
                 "after %u attempts",
                 attempt);
    } else {
      /* Wait a little before the retry; the job (and its delivery) stay
       * held meanwhile, which also slows the intake while the gateway is
       * failing. */
      if (!job->delayed && pw_sender_delay(job->sender, job) == 0) return;
      INC(w->n.retried);
      outcome = SLUICE_NACK;
    }
  }

  /* Clean-up, inside the delivery's scope so that the profiler sees what
   * this message leaves behind. */
  sluice_delivery_enter(d);
  if (auth_refused && w->cfg.leak == PW_LEAK_ERROR_PATH) {
    /* The field bug: the credentials-refused branch returned early and
     * never released the request's auth context. */
    job->auth = NULL;
  }
  auth_free(job->auth);
  if (w->cfg.leak != PW_LEAK_GLOBAL_MAP)
    inflight_del(w, job->seq);
  /* else the field bug: the entry stays in the global map forever. */
  job_free(job);
  pw_repub_item *it = NULL;
  if (dead || (outcome == SLUICE_NACK && w->cfg.ack == SLUICE_ACK_AUTO)) {
    /* Allocated here, freed by the republisher before the delivery
     * completes. */
    it = calloc(1, sizeof(*it));
    if (it) {
      it->d = d;
      it->dead = dead;
      it->outcome = dead ? SLUICE_REJECT : SLUICE_NACK;
      it->status = status;
      it->attempts = attempt;
      snprintf(it->reason, sizeof(it->reason), "%s", reason);
    }
  }
  sluice_delivery_leave(d);

  if (it) {
    pw_republish(w->repub, it);
    return;
  }
  if (dead) outcome = SLUICE_NACK; /* out of memory: let the broker
                                      redeliver */
  complete(w, d, outcome);
  if (outcome == SLUICE_ACK) finished(w);
}

/* ---- the handler --------------------------------------------------------- */

/* Check the job's fields; on failure write why into `reason`. */
static int validate(json_t *root, const char **token, const char **title,
                    const char **text, int *probe, char *reason,
                    size_t cap) {
  static const struct {
    const char *name;
    size_t min, max;
  } fields[] = {{"token", 1, 4096}, {"title", 0, 1024}, {"body", 0, 4096}};
  const char **out[] = {token, title, text};
  if (!json_is_object(root)) {
    snprintf(reason, cap, "not a JSON object");
    return -1;
  }
  for (size_t i = 0; i < 3; i++) {
    json_t *v = json_object_get(root, fields[i].name);
    if (!v) {
      snprintf(reason, cap, "missing field \"%s\"", fields[i].name);
      return -1;
    }
    if (!json_is_string(v)) {
      snprintf(reason, cap, "field \"%s\" is not a string", fields[i].name);
      return -1;
    }
    size_t len = json_string_length(v);
    if (len < fields[i].min || len > fields[i].max) {
      snprintf(reason, cap, "field \"%s\" is %s", fields[i].name,
               len < fields[i].min ? "empty" : "too long");
      return -1;
    }
    if (strlen(json_string_value(v)) != len) {
      snprintf(reason, cap, "field \"%s\" contains a NUL character",
               fields[i].name);
      return -1;
    }
    *out[i] = json_string_value(v);
  }
  json_t *p = json_object_get(root, "probe");
  if (p && !json_is_boolean(p)) {
    snprintf(reason, cap, "field \"probe\" is not a boolean");
    return -1;
  }
  *probe = p && json_is_true(p);
  return 0;
}

static int on_job(sluice_delivery *d, const sluice_message *m, void *user) {
  pw_worker *w = user;
  INC(w->n.received);
  unsigned attempt = attempt_of(m);
  char reason[192];
  json_error_t jerr;
  json_t *root = json_loadb(m->body, m->body_len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    INC(w->n.invalid);
    snprintf(reason, sizeof(reason), "invalid JSON: %s (line %d, column %d)",
             jerr.text, jerr.line, jerr.column);
    republish(w, d, 1, 0, attempt, reason);
    return SLUICE_DEFER;
  }
  const char *token = NULL, *title = NULL, *text = NULL;
  int probe = 0;
  if (validate(root, &token, &title, &text, &probe, reason, sizeof(reason))) {
    json_decref(root);
    INC(w->n.invalid);
    republish(w, d, 1, 0, attempt, reason);
    return SLUICE_DEFER;
  }
  pw_job *job = job_new(w, d, token, title, text, probe, attempt);
  json_decref(root);
  if (!job) return SLUICE_NACK;

  if (job->probe) {
    /* A health probe from the monitoring: it proves the pipeline works up
     * to here and is not sent to the gateway. */
    INC(w->n.probes);
    finished(w);
    if (w->cfg.leak == PW_LEAK_PROBE_PATH)
      return SLUICE_ACK; /* the field bug: returns before job_free() */
    job_free(job);
    return SLUICE_ACK;
  }
  inflight_put(w, job);
  pw_sender_submit(w->sender, job);
  return SLUICE_DEFER;
}

/* ------------------------------------------------------------------------ */
/* Stats lines */

static void emit(pw_worker *w, json_t *obj) {
  if (w->cfg.stats_fd < 0 || !obj) {
    json_decref(obj);
    return;
  }
  char *s = json_dumps(obj, JSON_COMPACT);
  json_decref(obj);
  if (!s) return;
  size_t len = strlen(s);
  s[len] = '\n'; /* replaces the NUL; written with its length */
  const char *p = s;
  size_t left = len + 1;
  while (left) {
    ssize_t n = write(w->cfg.stats_fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    p += n;
    left -= (size_t)n;
  }
  free(s);
}

typedef struct residual_sum {
  uint64_t messages, with_residual, bytes_at_end, leaked, bytes_leaked,
      retained_bytes, retained_objects, pending;
  int leaking;
} residual_sum;

static void residual_totals(residual_sum *t) {
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  memset(t, 0, sizeof(*t));
  for (size_t i = 0; i < n && i < 64; i++) {
    t->messages += v[i].messages;
    t->with_residual += v[i].with_residual;
    t->bytes_at_end += v[i].bytes_at_end;
    t->leaked += v[i].leaked;
    t->bytes_leaked += v[i].bytes_leaked;
    t->retained_bytes += v[i].retained_bytes;
    t->retained_objects += v[i].retained_objects;
    t->pending += v[i].pending;
    t->leaking |= v[i].leaking;
  }
}

static json_t *counters_json(pw_worker *w) {
  sluice_consumer_stats cs;
  sluice_consumer_get_stats(w->c, &cs);
  return json_pack(
      "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
      "s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
      "s:I}}",
      "received", (json_int_t)LOAD(w->n.received),
      "finished", (json_int_t)LOAD(w->n.finished),
      "invalid", (json_int_t)LOAD(w->n.invalid),
      "probes", (json_int_t)LOAD(w->n.probes),
      "sent", (json_int_t)LOAD(w->n.sent),
      "ok", (json_int_t)LOAD(w->n.ok),
      "rejected_4xx", (json_int_t)LOAD(w->n.rejected_4xx),
      "auth_failed", (json_int_t)LOAD(w->n.auth_failed),
      "failed_5xx", (json_int_t)LOAD(w->n.failed_5xx),
      "no_reply", (json_int_t)LOAD(w->n.no_reply),
      "retried", (json_int_t)LOAD(w->n.retried),
      "dead_lettered", (json_int_t)LOAD(w->n.dead_lettered),
      "republish_failed", (json_int_t)LOAD(w->n.republish_failed),
      "stale", (json_int_t)LOAD(w->n.stale),
      "aborted", (json_int_t)LOAD(w->n.aborted),
      "abandoned", (json_int_t)LOAD(w->n.abandoned),
      "inflight_map", (json_int_t)inflight_size(w),
      "consumer",
      "delivered", (json_int_t)cs.delivered,
      "acked", (json_int_t)cs.acked,
      "nacked", (json_int_t)cs.nacked,
      "rejected", (json_int_t)cs.rejected,
      "stale", (json_int_t)cs.stale,
      "redelivered", (json_int_t)cs.redelivered,
      "too_big", (json_int_t)cs.too_big,
      "in_flight", (json_int_t)cs.in_flight,
      "max_in_flight", (json_int_t)cs.max_in_flight,
      "reconnects", (json_int_t)cs.reconnects,
      "close_listeners", (json_int_t)cs.close_listeners);
}

static json_t *sample_json(pw_worker *w, const char *type) {
  sluice_prof_memstats ms;
  residual_sum r;
  sluice_prof_memstats_read(&ms);
  residual_totals(&r);
  json_t *o = json_pack(
      "{s:s, s:f, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
      "s:b}, s:I, s:I}",
      "type", type, "t", now_s() - w->t0,
      "rss_bytes", (json_int_t)ms.rss_bytes,
      "heap_live_bytes", (json_int_t)ms.heap_live_bytes,
      "live_objects", (json_int_t)ms.live_objects,
      "residual",
      "messages", (json_int_t)r.messages,
      "with_residual", (json_int_t)r.with_residual,
      "bytes_at_end", (json_int_t)r.bytes_at_end,
      "leaked", (json_int_t)r.leaked,
      "bytes_leaked", (json_int_t)r.bytes_leaked,
      "retained_bytes", (json_int_t)r.retained_bytes,
      "retained_objects", (json_int_t)r.retained_objects,
      "pending", (json_int_t)r.pending,
      "leaking", r.leaking,
      "listeners_registered", (json_int_t)w->listeners_registered,
      "listeners_refused", (json_int_t)w->listeners_refused);
  if (o) json_object_set_new(o, "counters", counters_json(w));
  return o;
}

static void on_stats_timer(evutil_socket_t fd, short what, void *arg) {
  pw_worker *w = arg;
  emit(w, sample_json(w, "sample"));
}

static void on_duration(evutil_socket_t fd, short what, void *arg) {
  pw_worker *w = arg;
  sluice_consumer_stop(w->c);
}

/* ------------------------------------------------------------------------ */
/* Profiler verdicts */

static void on_leak(const sluice_prof_leak *v, void *user) {
  pw_worker *w = user;
  /* Keep this callback's own work out of any message's scope. */
  sluice_prof_scope prev = sluice_prof_scope_enter(0);
  pthread_mutex_lock(&w->verdict_mu);
  if (w->n_verdicts < MAX_VERDICTS) {
    pw_verdict *r = &w->verdicts[w->n_verdicts++];
    snprintf(r->queue, sizeof(r->queue), "%s", v->queue ? v->queue : "");
    r->outcome = v->outcome;
    r->bytes_per_message = v->bytes_per_message;
    r->messages = v->messages;
    snprintf(r->site, sizeof(r->site), "%s",
             v->n_sites ? v->sites[0].function : "(no stacks sampled)");
    snprintf(r->stack, sizeof(r->stack), "%s",
             v->n_sites ? v->sites[0].stack : "");
  }
  pthread_mutex_unlock(&w->verdict_mu);
  fprintf(stderr,
          "push-worker: LEAK: queue %s, outcome %s: %.1f B/message left "
          "behind over %" PRIu64 " messages; top site %s (%s)\n",
          v->queue, sluice_outcome_name(v->outcome), v->bytes_per_message,
          v->messages, v->n_sites ? v->sites[0].function : "?",
          v->n_sites ? v->sites[0].stack : "no stacks sampled");
  sluice_prof_scope_enter(prev);
}

/* ------------------------------------------------------------------------ */
/* Consumer events and close listeners */

static void on_close(struct sluice_consumer *c, const struct sluice_event *ev,
                     void *user) {
  pw_worker *w = user;
  w->closes_seen++;
}

static void register_close_listener(pw_worker *w, uint64_t generation) {
  /* The correct code ties the listener to this connection; the field bug
   * made it persistent and never removed it. */
  sluice_listen_scope scope = w->cfg.leak == PW_LEAK_LISTENER
                                  ? SLUICE_LISTEN_PERSISTENT
                                  : SLUICE_LISTEN_GENERATION;
  sluice_listener h;
  int rc = sluice_consumer_on_close(w->c, on_close, w, scope, &h);
  if (rc == 0) {
    w->listeners_registered++;
    return;
  }
  w->listeners_refused++;
  size_t n = sluice_consumer_close_listener_count(w->c);
  fprintf(stderr,
          "push-worker: close listener refused on connection %" PRIu64
          ": %s (%s); %zu listeners registered, none removed: a listener is "
          "registered on every reconnect and never released\n",
          generation, sluice_err_name(rc), sluice_strerror(rc), n);
  emit(w, json_pack("{s:s, s:s, s:I, s:s, s:I, s:I}", "type", "event",
                    "event", "listener_refused", "generation",
                    (json_int_t)generation, "error", sluice_err_name(rc),
                    "listeners", (json_int_t)n, "refused",
                    (json_int_t)w->listeners_refused));
}

/* autoAck mode, graceful stop: jobs the broker already handed over (and
 * forgot) that no handler could take in time go back to the queue as
 * copies. Loop thread, during the stop; a blocking publisher is fine here. */
static void on_abandoned(sluice_consumer *c, const sluice_message *m,
                         void *user) {
  pw_worker *w = user;
  if (!w->abandon_pub) {
    sluice_publisher_opts po = {.uri = w->cfg.uri,
                                .connection_name = "push-worker hand-off"};
    int rc = sluice_publisher_new(&po, &w->abandon_pub);
    if (rc) {
      fprintf(stderr, "push-worker: cannot republish abandoned jobs: %s\n",
              sluice_strerror(rc));
      return;
    }
  }
  sluice_kv headers[32];
  size_t nh = 0;
  for (size_t i = 0; i < m->props.n_headers && nh < 32; i++)
    if (m->props.headers[i].value.kind != SLUICE_VAL_VOID)
      headers[nh++] = m->props.headers[i];
  sluice_publish_props pr = {.content_type = m->props.content_type,
                             .message_id = m->props.message_id,
                             .headers = headers,
                             .n_headers = nh};
  if (sluice_publisher_publish(w->abandon_pub, "", w->cfg.queue, m->body, m->body_len,
                     &pr) == 0)
    INC(w->n.abandoned);
}

static void on_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  pw_worker *w = user;
  switch (ev->type) {
    case SLUICE_EV_CONNECTED:
      register_close_listener(w, ev->generation);
      emit(w, json_pack("{s:s, s:s, s:I, s:I}", "type", "event", "event",
                        "connected", "generation",
                        (json_int_t)ev->generation, "listeners",
                        (json_int_t)sluice_consumer_close_listener_count(c)));
      break;
    case SLUICE_EV_CLOSED:
      if (!w->cfg.quiet)
        fprintf(stderr, "push-worker: connection lost: %s%s%s\n",
                sluice_strerror(ev->err), ev->text ? ": " : "",
                ev->text ? ev->text : "");
      emit(w, json_pack("{s:s, s:s, s:I}", "type", "event", "event",
                        "closed", "generation", (json_int_t)ev->generation));
      break;
    case SLUICE_EV_GAVE_UP:
      fprintf(stderr, "push-worker: gave up reconnecting\n");
      break;
    case SLUICE_EV_REJECTED_BIG:
      fprintf(stderr,
              "push-worker: a message over the size limit was rejected "
              "unread (queue %s)\n",
              ev->queue ? ev->queue : "?");
      break;
    case SLUICE_EV_STOPPED:
      w->run_result = ev->err;
      event_base_loopexit(w->base, NULL);
      break;
    default:
      break;
  }
}

/* ------------------------------------------------------------------------ */
/* Options */

static void usage(FILE *f, const char *argv0) {
  fprintf(f,
          "usage: %s [options]\n"
          "  --uri URI               broker (amqp://guest:guest@127.0.0.1:5672/)\n"
          "  --queue NAME            work queue (push.jobs); dead letters go to "
          "NAME.dead\n"
          "  --gateway URL           push gateway "
          "(http://127.0.0.1:8080/push)\n"
          "  --api-key KEY           sent as Authorization: Bearer KEY "
          "(sluice-demo)\n"
          "  --ack auto|manual       acknowledgement mode (manual)\n"
          "  --prefetch N            unacknowledged deliveries (100)\n"
          "  --workers N             handler threads; 0 runs handlers on the "
          "loop (0)\n"
          "  --http-conns N          keep-alive connections to the gateway "
          "(8)\n"
          "  --http-timeout-ms MS    per request (5000)\n"
          "  --max-attempts N        deliveries before a failing job is "
          "dead-lettered (5)\n"
          "  --retry-delay-ms MS     pause before a failed job is nacked "
          "(100)\n"
          "  --leak MODE             none|global-map|probe-path|error-path|"
          "listener\n"
          "  --debug-addr HOST:PORT  serve /debug/pprof, /debug/vars, "
          "/metrics\n"
          "  --report                print the residual report at exit\n"
          "  --count N               stop after N jobs finished\n"
          "  --duration S            stop after S seconds\n"
          "  --stats-fd FD           JSON lines (events, samples, final) to "
          "FD\n"
          "  --stats-interval-ms MS  sample period on --stats-fd (1000)\n"
          "  --prof-rate BYTES|none  profiler sampling rate; 1 = every "
          "allocation (1);\n"
          "                          0 turns the profiler off\n"
          "  --leak-window N         messages between growth-curve points "
          "(100)\n"
          "  --horizon N,MS          verdict horizon: messages and ms "
          "(50000,120000)\n"
          "  --grace-ms MS           residual re-check delay (1000)\n"
          "  --max-listeners N       close-listener registry capacity (16)\n"
          "  --stop-timeout-ms MS    graceful stop budget (10000)\n"
          "  --quiet                 fewer messages on stderr\n",
          argv0);
}

static int parse_uint(const char *s, unsigned long long max,
                      unsigned long long *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || v > max || s[0] == '-') return -1;
  *out = v;
  return 0;
}

static int parse_args(int argc, char **argv, pw_config *c) {
  enum {
    O_URI = 256, O_QUEUE, O_GATEWAY, O_API_KEY, O_ACK, O_PREFETCH, O_WORKERS,
    O_CONNS, O_TIMEOUT, O_ATTEMPTS, O_RETRY_DELAY, O_LEAK, O_DEBUG, O_REPORT,
    O_COUNT, O_DURATION, O_STATS_FD, O_STATS_INT, O_PROF_RATE, O_WINDOW, O_HORIZON,
    O_GRACE, O_LISTENERS, O_STOP_TIMEOUT, O_QUIET, O_HELP
  };
  static const struct option lo[] = {
      {"uri", required_argument, 0, O_URI},
      {"queue", required_argument, 0, O_QUEUE},
      {"gateway", required_argument, 0, O_GATEWAY},
      {"api-key", required_argument, 0, O_API_KEY},
      {"ack", required_argument, 0, O_ACK},
      {"prefetch", required_argument, 0, O_PREFETCH},
      {"workers", required_argument, 0, O_WORKERS},
      {"http-conns", required_argument, 0, O_CONNS},
      {"http-timeout-ms", required_argument, 0, O_TIMEOUT},
      {"max-attempts", required_argument, 0, O_ATTEMPTS},
      {"retry-delay-ms", required_argument, 0, O_RETRY_DELAY},
      {"leak", required_argument, 0, O_LEAK},
      {"debug-addr", required_argument, 0, O_DEBUG},
      {"report", no_argument, 0, O_REPORT},
      {"count", required_argument, 0, O_COUNT},
      {"duration", required_argument, 0, O_DURATION},
      {"stats-fd", required_argument, 0, O_STATS_FD},
      {"stats-interval-ms", required_argument, 0, O_STATS_INT},
      {"prof-rate", required_argument, 0, O_PROF_RATE},
      {"leak-window", required_argument, 0, O_WINDOW},
      {"grace-ms", required_argument, 0, O_GRACE},
      {"horizon", required_argument, 0, O_HORIZON},
      {"max-listeners", required_argument, 0, O_LISTENERS},
      {"stop-timeout-ms", required_argument, 0, O_STOP_TIMEOUT},
      {"quiet", no_argument, 0, O_QUIET},
      {"help", no_argument, 0, O_HELP},
      {0, 0, 0, 0}};
  int ch;
  unsigned long long v;
  while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    int bad = 0;
    switch (ch) {
      case O_URI: c->uri = optarg; break;
      case O_QUEUE: c->queue = optarg; break;
      case O_GATEWAY: c->gateway = optarg; break;
      case O_API_KEY: c->api_key = optarg; break;
      case O_ACK:
        if (strcmp(optarg, "auto") == 0) c->ack = SLUICE_ACK_AUTO;
        else if (strcmp(optarg, "manual") == 0) c->ack = SLUICE_ACK_MANUAL;
        else bad = 1;
        break;
      case O_PREFETCH:
        bad = parse_uint(optarg, 65535, &v) || v == 0;
        c->prefetch = (unsigned)v;
        break;
      case O_WORKERS:
        bad = parse_uint(optarg, 256, &v);
        c->workers = (int)v;
        break;
      case O_CONNS:
        bad = parse_uint(optarg, 1024, &v) || v == 0;
        c->http_conns = (unsigned)v;
        break;
      case O_TIMEOUT:
        bad = parse_uint(optarg, 3600000, &v) || v == 0;
        c->http_timeout_ms = (unsigned)v;
        break;
      case O_ATTEMPTS:
        bad = parse_uint(optarg, 1000, &v) || v == 0;
        c->max_attempts = (unsigned)v;
        break;
      case O_RETRY_DELAY:
        bad = parse_uint(optarg, 3600000, &v);
        c->retry_delay_ms = (unsigned)v;
        break;
      case O_LEAK:
        bad = 1;
        for (int i = 0; i < (int)(sizeof(leak_names) / sizeof(*leak_names));
             i++)
          if (strcmp(optarg, leak_names[i]) == 0) {
            c->leak = (pw_leak)i;
            bad = 0;
          }
        break;
      case O_DEBUG: c->debug_addr = optarg; break;
      case O_REPORT: c->report = 1; break;
      case O_COUNT:
        bad = parse_uint(optarg, UINT64_MAX, &v);
        c->count = v;
        break;
      case O_DURATION: {
        char *end;
        c->duration_s = strtod(optarg, &end);
        bad = *end || c->duration_s <= 0;
        break;
      }
      case O_STATS_FD:
        bad = parse_uint(optarg, 65535, &v);
        c->stats_fd = (int)v;
        break;
      case O_STATS_INT:
        bad = parse_uint(optarg, 3600000, &v) || v == 0;
        c->stats_interval_ms = (unsigned)v;
        break;
      case O_PROF_RATE:
        if (strcmp(optarg, "none") == 0) c->prof_rate = SLUICE_PROF_RATE_NONE;
        else {
          bad = parse_uint(optarg, SIZE_MAX, &v);
          c->prof_rate = (size_t)v;
        }
        break;
      case O_WINDOW:
        bad = parse_uint(optarg, 1000000, &v) || v == 0;
        c->leak_window = (unsigned)v;
        break;
      case O_GRACE:
        bad = parse_uint(optarg, 3600000, &v);
        c->grace_ms = (long)v;
        break;
      case O_HORIZON: {
        char *comma = strchr(optarg, ',');
        unsigned long long ms = 0;
        if (!comma) {
          bad = 1;
          break;
        }
        *comma = 0;
        bad = parse_uint(optarg, UINT32_MAX, &v) || v == 0 ||
              parse_uint(comma + 1, 86400000, &ms) || ms == 0;
        c->horizon_msgs = v;
        c->horizon_ms = (long)ms;
        break;
      }
      case O_LISTENERS:
        bad = parse_uint(optarg, 4096, &v) || v == 0;
        c->max_listeners = (unsigned)v;
        break;
      case O_STOP_TIMEOUT:
        bad = parse_uint(optarg, 3600000, &v) || v == 0;
        c->stop_timeout_ms = (unsigned)v;
        break;
      case O_QUIET: c->quiet = 1; break;
      case O_HELP: usage(stdout, argv[0]); exit(0);
      default: return -1;
    }
    if (bad) {
      fprintf(stderr, "push-worker: bad value for --%s: \"%s\"\n",
              lo[ch - O_URI].name, optarg);
      return -1;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "push-worker: unexpected argument \"%s\"\n", argv[optind]);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* main */

static sluice_consumer *volatile g_consumer;

static void on_signal(int sig) {
  (void)sig;
  if (g_consumer) sluice_consumer_stop(g_consumer);
}

static int write_stdout(const void *data, size_t len, void *user) {
  return fwrite(data, 1, len, stdout) == len ? 0 : -1;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "push-worker: %s: %s (%s)\n", what, sluice_strerror(rc),
          sluice_err_name(rc));
  exit(1);
}

static json_t *final_json(pw_worker *w, double elapsed) {
  json_t *o = sample_json(w, "final");
  if (!o) return NULL;
  json_object_set_new(o, "elapsed_s", json_real(elapsed));
  json_object_set_new(o, "leak_mode", json_string(leak_names[w->cfg.leak]));
  json_object_set_new(o, "interposing",
                      json_boolean(sluice_prof_interposing()));
  json_object_set_new(o, "profiling", json_boolean(w->cfg.prof_rate != 0));
  json_object_set_new(o, "run_result", json_string(sluice_err_name(w->run_result)));
  json_t *aggs = json_array();
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    json_array_append_new(
        aggs,
        json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, "
                  "s:s, s:b}",
                  "queue", v[i].queue, "key", v[i].key, "outcome",
                  sluice_outcome_name(v[i].outcome), "messages",
                  (json_int_t)v[i].messages, "with_residual",
                  (json_int_t)v[i].with_residual, "bytes_at_end",
                  (json_int_t)v[i].bytes_at_end, "cached",
                  (json_int_t)v[i].cached, "leaked", (json_int_t)v[i].leaked,
                  "bytes_leaked", (json_int_t)v[i].bytes_leaked,
                  "retained_bytes", (json_int_t)v[i].retained_bytes,
                  "bytes_per_message", v[i].bytes_per_message, "state",
                  sluice_prof_state_name(v[i].state), "leaking",
                  v[i].leaking));
  json_object_set_new(o, "aggregates", aggs);
  json_t *verdicts = json_array();
  pthread_mutex_lock(&w->verdict_mu);
  for (size_t i = 0; i < w->n_verdicts; i++) {
    const pw_verdict *r = &w->verdicts[i];
    json_array_append_new(
        verdicts, json_pack("{s:s, s:s, s:f, s:I, s:s, s:s}", "queue",
                            r->queue, "outcome",
                            sluice_outcome_name(r->outcome),
                            "bytes_per_message", r->bytes_per_message,
                            "messages", (json_int_t)r->messages, "top_site",
                            r->site, "stack", r->stack));
  }
  pthread_mutex_unlock(&w->verdict_mu);
  json_object_set_new(o, "verdicts", verdicts);
  return o;
}

int main(int argc, char **argv) {
  static pw_worker worker;
  pw_worker *w = &worker;
  pw_config *cfg = &w->cfg;
  *cfg = (pw_config){
      .uri = "amqp://guest:guest@127.0.0.1:5672/",
      .queue = "push.jobs",
      .gateway = "http://127.0.0.1:8080/push",
      .api_key = "sluice-demo",
      .ack = SLUICE_ACK_MANUAL,
      .prefetch = 100,
      .http_conns = 8,
      .http_timeout_ms = 5000,
      .max_attempts = 5,
      .retry_delay_ms = 100,
      .stats_fd = -1,
      .prof_rate = 1,
      .leak_window = 100,
      .grace_ms = 1000,
      .stop_timeout_ms = 10000,
  };
  if (parse_args(argc, argv, cfg)) {
    usage(stderr, argv[0]);
    return 2;
  }
  if (cfg->stats_fd >= 0 && !cfg->stats_interval_ms)
    cfg->stats_interval_ms = 1000;
  pthread_mutex_init(&w->map_mu, NULL);
  pthread_mutex_init(&w->verdict_mu, NULL);
  signal(SIGPIPE, SIG_IGN);
  w->t0 = now_s();

  /* The profiler first, so that it sees everything after it. */
  if (cfg->prof_rate) {
    sluice_prof_opts po = {.sample_rate = cfg->prof_rate,
                           .grace_ms = cfg->grace_ms,
                           .leak_window = cfg->leak_window,
                           .horizon_messages = cfg->horizon_msgs,
                           .horizon_ms = cfg->horizon_ms,
                           .on_leak = on_leak,
                           .leak_user = w};
    int rc = sluice_prof_start(&po);
    if (rc) die("profiler", rc);
  }

  w->base = event_base_new();
  if (!w->base) die("event_base_new", SLUICE_ENOMEM);
  char conn_name[300];
  snprintf(conn_name, sizeof(conn_name), "push-worker %s", cfg->queue);
  sluice_consumer_opts co = {
      .uri = cfg->uri,
      .connection_name = conn_name,
      .ack_mode = cfg->ack,
      .prefetch = (uint16_t)cfg->prefetch,
      .workers = cfg->workers,
      .max_body = 1024 * 1024,
      .stop_timeout_ms = cfg->stop_timeout_ms,
      .reconnect = {.enabled = 1, .min_delay_ms = 100, .max_delay_ms = 5000,
                    .max_attempts = 20},
      .max_close_listeners = cfg->max_listeners,
      .on_event = on_event,
      .event_user = w,
      .on_abandoned = on_abandoned,
      .abandoned_user = w,
      .log_level = cfg->quiet ? SLUICE_LOG_ERROR : SLUICE_LOG_WARN,
      .hooks = cfg->prof_rate ? sluice_prof_delivery_hooks() : NULL,
  };
  int rc = sluice_consumer_new(&co, &w->c);
  if (rc) die("consumer", rc);
  if ((rc = sluice_consumer_connect(w->c))) die("connect", rc);

  sluice_queue_decl qd, dd;
  pw_dlq_name(cfg->queue, w->dlq, sizeof(w->dlq));
  pw_dlq_decl(w->dlq, &dd);
  pw_queue_decl(cfg->queue, &qd);
  if ((rc = sluice_consumer_declare_queue(w->c, &dd))) die("declare dead-letter queue", rc);
  if ((rc = sluice_consumer_declare_queue(w->c, &qd))) die("declare queue", rc);

  if ((rc = pw_republisher_new(w, cfg->uri, cfg->queue, w->dlq, &w->repub)))
    die("republisher", rc);
  /* Inline handlers share the consumer's loop; worker threads must not
   * touch it, so the sender then gets a thread and a base of its own. */
  pw_sender_opts so = {.url = cfg->gateway,
                       .conns = cfg->http_conns,
                       .timeout_ms = cfg->http_timeout_ms,
                       .retry_delay_ms = cfg->retry_delay_ms,
                       .base = cfg->workers == 0 ? w->base : NULL};
  if (pw_sender_new(&so, &w->sender)) return 1;

  sluice_subscribe_opts sub = {.queue = cfg->queue, .handler = on_job,
                               .user = w};
  if ((rc = sluice_consumer_subscribe(w->c, &sub))) die("subscribe", rc);

  if (cfg->debug_addr) {
#ifdef PW_HAVE_DEBUG
    sluice_debug_opts dopts = {.consumer = w->c, .addr = cfg->debug_addr};
    if ((rc = sluice_debug_server_new(&dopts, &w->debug)))
      die("debug endpoint", rc);
    int port = sluice_debug_server_port(w->debug);
    if (!cfg->quiet)
      fprintf(stderr,
              "push-worker: debug endpoint on port %d (/debug/pprof/heap, "
              "/debug/pprof/residual, /debug/vars, /metrics, /healthz)\n",
              port);
    emit(w, json_pack("{s:s, s:s, s:i}", "type", "event", "event", "debug",
                      "port", port));
#else
    fprintf(stderr,
            "push-worker: built without the debug endpoint (sluice_debug); "
            "--debug-addr ignored\n");
#endif
  }

  if (cfg->stats_interval_ms) {
    w->stats_ev = event_new(w->base, -1, EV_PERSIST, on_stats_timer, w);
    struct timeval tv = {cfg->stats_interval_ms / 1000,
                         (cfg->stats_interval_ms % 1000) * 1000};
    event_add(w->stats_ev, &tv);
  }
  if (cfg->duration_s > 0) {
    w->duration_ev = evtimer_new(w->base, on_duration, w);
    struct timeval tv = {(time_t)cfg->duration_s,
                         (suseconds_t)((cfg->duration_s -
                                        (double)(time_t)cfg->duration_s) *
                                       1e6)};
    evtimer_add(w->duration_ev, &tv);
  }

  g_consumer = w->c;
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  if (!cfg->quiet)
    fprintf(stderr,
            "push-worker: consuming %s (%s ack, prefetch %u, %d workers, "
            "leak %s) -> %s\n",
            cfg->queue, cfg->ack == SLUICE_ACK_AUTO ? "auto" : "manual",
            cfg->prefetch, cfg->workers, leak_names[cfg->leak], cfg->gateway);
  double t_start = now_s();
  if ((rc = sluice_consumer_start(w->c, w->base))) die("start", rc);
  event_base_dispatch(w->base);
  double elapsed = now_s() - t_start;

  /* Stopped. Jobs still at the gateway or waiting are given back, then the
   * republisher finishes what it holds. */
  if (w->stats_ev) event_free(w->stats_ev);
  if (w->duration_ev) event_free(w->duration_ev);
  pw_sender_free(w->sender);
  pw_republisher_free(w->repub);

  /* Residuals are checked again after the grace period: wait for it once
   * if some are pending, so that the verdicts are final. */
  if (cfg->prof_rate) {
    residual_sum r;
    residual_totals(&r);
    if (r.pending && cfg->grace_ms > 0) {
      struct timespec ts = {(cfg->grace_ms + 20) / 1000,
                            ((cfg->grace_ms + 20) % 1000) * 1000000};
      while (nanosleep(&ts, &ts) && errno == EINTR) {
      }
    }
    sluice_prof_poll();
  }

  emit(w, final_json(w, elapsed));

  sluice_consumer_stats cs;
  sluice_consumer_get_stats(w->c, &cs);
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  residual_sum r;
  residual_totals(&r);
  uint64_t fin = LOAD(w->n.finished);
  printf("push-worker: %" PRIu64 " jobs in %.2f s (%.0f/s), %s ack, "
         "prefetch %u, %d workers, leak %s: %" PRIu64 " sent, %" PRIu64
         " ok, %" PRIu64 " probes, %" PRIu64 " dead-lettered (%" PRIu64
         " invalid, %" PRIu64 " 4xx, %" PRIu64 " auth), %" PRIu64
         " retried; acked %" PRIu64 ", nacked %" PRIu64 ", rejected %" PRIu64
         "; rss %.1f MiB, heap %.1f MiB; residual %.1f B/message (%" PRIu64
         " B retained)%s%s\n",
         fin, elapsed, elapsed > 0 ? (double)fin / elapsed : 0.0,
         cfg->ack == SLUICE_ACK_AUTO ? "auto" : "manual", cfg->prefetch,
         cfg->workers, leak_names[cfg->leak], LOAD(w->n.sent),
         LOAD(w->n.ok), LOAD(w->n.probes), LOAD(w->n.dead_lettered),
         LOAD(w->n.invalid), LOAD(w->n.rejected_4xx),
         LOAD(w->n.auth_failed), LOAD(w->n.retried), cs.acked, cs.nacked,
         cs.rejected, (double)ms.rss_bytes / 1048576.0,
         (double)ms.heap_live_bytes / 1048576.0,
         r.messages ? (double)r.retained_bytes / (double)r.messages : 0.0,
         r.retained_bytes, r.leaking ? ", LEAK" : "",
         w->listeners_refused ? ", close listeners REFUSED (registry full)"
                              : "");
  if (cfg->prof_rate && !sluice_prof_interposing())
    printf("push-worker: this build cannot interpose malloc (sanitizer): "
           "residuals count only announced blocks\n");
  if (cfg->report && cfg->prof_rate) {
    sluice_prof_output ro = {.format = SLUICE_PROF_FMT_RESIDUAL};
    printf("\n");
    sluice_prof_write(NULL, &ro, write_stdout, NULL);
    sluice_prof_output to = {.format = SLUICE_PROF_FMT_TOP,
                             .value = SLUICE_PROF_RESIDUAL_SPACE,
                             .max_rows = 10};
    printf("\n");
    sluice_prof_write(NULL, &to, write_stdout, NULL);
  }
  fflush(stdout);

#ifdef PW_HAVE_DEBUG
  sluice_debug_server_free(w->debug);
#endif
  if (w->abandon_pub) {
    sluice_publish_report rep;
    int wrc = sluice_publisher_wait(w->abandon_pub, &rep);
    printf("push-worker: %" PRIu64 " autoAck jobs not handled before the "
           "stop timeout were republished (%" PRIu64 " confirmed%s)\n",
           LOAD(w->n.abandoned), rep.confirmed,
           wrc ? ", some NOT" : "");
    sluice_publisher_free(w->abandon_pub);
  }
  g_consumer = NULL;
  sluice_consumer_free(w->c);
  event_base_free(w->base);
  inflight_clear(w);
  pthread_mutex_destroy(&w->map_mu);
  pthread_mutex_destroy(&w->verdict_mu);
  return w->run_result ? 1 : 0;
}
