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
 *               [--prof-key type|routing_key|header:NAME|none]
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
 * soak runner and the tests read it.
 *
 * This file is the worker; its command line is cli.c, its stats lines and
 * reports stats.c. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobs.h"
#include "worker.h"

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}


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

size_t pw_inflight_size(pw_worker *w) {
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

static void job_free(pw_job *job) {
  free(job);
}

static PW_NOINLINE pw_auth *auth_new(const char *api_key) {
  size_t kl = strlen(api_key);
  pw_auth *a = malloc(sizeof(*a) + 7 + kl + 1);
  if (!a) return NULL;
  memcpy(a->header, "Bearer ", 7);
  memcpy(a->header + 7, api_key, kl + 1);
  a->len = 7 + kl;
  return a;
}

static void auth_free(pw_auth *a) {
  free(a);
}

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

/* What the gateway's reply (or its absence) means for the job: the outcome,
 * whether it goes to the dead-letter queue and why. Returns 0, or 1 when
 * the job waits for its retry delay first. */
static int decide(pw_job *job, int *outcome, int *dead, char *reason,
                  size_t cap) {
  pw_worker *w = job->w;
  int status = job->status;
  *outcome = SLUICE_ACK;
  *dead = 0;
  if (job->aborted) {
    /* The worker is stopping: give the message back (a NACK; in autoAck
     * mode, where the broker forgot the message when it sent it, a copy
     * republished to the queue). Not a failed attempt. */
    INC(w->n.aborted);
    *outcome = SLUICE_NACK;
    job->attempt = job->attempt > 1 ? job->attempt - 1 : 0;
  } else if (status >= 200 && status < 300) {
    INC(w->n.ok);
  } else if (status == 401 || status == 403) {
    INC(w->n.auth_failed);
    *dead = 1;
    snprintf(reason, cap, "gateway %d: credentials refused", status);
  } else if (status >= 400 && status < 500) {
    INC(w->n.rejected_4xx);
    *dead = 1;
    snprintf(reason, cap, "gateway %d", status);
  } else if (status && status < 500) {
    /* 1xx/3xx: a misconfigured URL; trying again will not help. */
    INC(w->n.rejected_4xx);
    *dead = 1;
    snprintf(reason, cap, "gateway %d: unexpected status", status);
  } else {
    if (!job->delayed) {
      if (status) INC(w->n.failed_5xx);
      else INC(w->n.no_reply);
    }
    if (job->attempt >= w->cfg.max_attempts) {
      *dead = 1;
      if (status)
        snprintf(reason, cap, "gateway %d after %u attempts", status,
                 job->attempt);
      else
        snprintf(reason, cap,
                 "no reply from the gateway (timeout or connection error) "
                 "after %u attempts",
                 job->attempt);
    } else {
      /* Wait a little before the retry; the job (and its delivery) stay
       * held meanwhile, which also slows the intake while the gateway is
       * failing. */
      if (!job->delayed && pw_sender_delay(job->sender, job) == 0) return 1;
      INC(w->n.retried);
      *outcome = SLUICE_NACK;
    }
  }
  return 0;
}

/* Free the job, inside the delivery's scope so that the profiler sees what
 * this message leaves behind; returns the republisher's item when the
 * message goes to the dead-letter queue or (autoAck) back to the queue. */
static pw_repub_item *clean_up(pw_job *job, int outcome, int dead,
                               const char *reason) {
  pw_worker *w = job->w;
  sluice_delivery *d = job->d;
  int status = job->status;
  unsigned attempt = job->attempt;
  sluice_delivery_enter(d);
  if ((status == 401 || status == 403) && !job->aborted &&
      w->cfg.leak == PW_LEAK_ERROR_PATH) {
    /* The field bug: the credentials-refused branch returned early and
     * never released the request's auth context. */
    job->auth = NULL;
  }
  auth_free(job->auth);
  if (w->cfg.leak != PW_LEAK_GLOBAL_MAP) inflight_del(w, job->seq);
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
  return it;
}

void pw_job_complete(pw_job *job) {
  pw_worker *w = job->w;
  sluice_delivery *d = job->d;
  int outcome, dead;
  char reason[192] = "";
  if (decide(job, &outcome, &dead, reason, sizeof(reason))) return;
  pw_repub_item *it = clean_up(job, outcome, dead, reason);
  if (it) {
    pw_republish(w->repub, it);
    return;
  }
  if (dead)
    outcome = SLUICE_NACK; /* out of memory: let the broker
                                      redeliver */
  complete(w, d, outcome);
  if (outcome == SLUICE_ACK) finished(w);
}

/* ---- the handler --------------------------------------------------------- */

static int on_job(sluice_delivery *d, const sluice_message *m, void *user) {
  pw_worker *w = user;
  INC(w->n.received);
  unsigned attempt = attempt_of(m);
  char reason[192];
  pw_job_fields f;
  if (pw_job_parse(m->body, m->body_len, &f, reason, sizeof(reason))) {
    INC(w->n.invalid);
    republish(w, d, 1, 0, attempt, reason);
    return SLUICE_DEFER;
  }
  pw_job *job = job_new(w, d, f.token, f.title, f.body, f.probe, attempt);
  json_decref(f.root);
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
  pw_emit(w,
          json_pack("{s:s, s:s, s:I, s:s, s:I, s:I}", "type", "event", "event",
                    "listener_refused", "generation", (json_int_t)generation,
                    "error", sluice_err_name(rc), "listeners", (json_int_t)n,
                    "refused", (json_int_t)w->listeners_refused));
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
  if (sluice_publisher_publish(w->abandon_pub, "", w->cfg.queue, m->body,
                               m->body_len, &pr) == 0)
    INC(w->n.abandoned);
}

static void on_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  pw_worker *w = user;
  switch (ev->type) {
    case SLUICE_EV_CONNECTED:
      register_close_listener(w, ev->generation);
      pw_emit(w,
              json_pack("{s:s, s:s, s:I, s:I}", "type", "event", "event",
                        "connected", "generation", (json_int_t)ev->generation,
                        "listeners",
                        (json_int_t)sluice_consumer_close_listener_count(c)));
      break;
    case SLUICE_EV_CLOSED:
      if (!w->cfg.quiet)
        fprintf(stderr, "push-worker: connection lost: %s%s%s\n",
                sluice_strerror(ev->err), ev->text ? ": " : "",
                ev->text ? ev->text : "");
      pw_emit(w, json_pack("{s:s, s:s, s:I}", "type", "event", "event",
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
    default: break;
  }
}

/* ------------------------------------------------------------------------ */
/* Timers and signals */

static void on_stats_timer(evutil_socket_t fd, short what, void *arg) {
  pw_worker *w = arg;
  pw_emit(w, pw_sample_json(w, "sample"));
}

static void on_duration(evutil_socket_t fd, short what, void *arg) {
  pw_worker *w = arg;
  sluice_consumer_stop(w->c);
}

static sluice_consumer *volatile g_consumer;

static void on_signal(int sig) {
  (void)sig;
  if (g_consumer) sluice_consumer_stop(g_consumer);
}

/* ------------------------------------------------------------------------ */
/* Setting up, running, shutting down */

static void die(const char *what, int rc) {
  fprintf(stderr, "push-worker: %s: %s (%s)\n", what, sluice_strerror(rc),
          sluice_err_name(rc));
  exit(1);
}

/* The profiler first, so that it sees everything after it. */
static void start_profiler(pw_worker *w) {
  if (!w->cfg.prof_rate) return;
  sluice_prof_opts po = {.sample_rate = w->cfg.prof_rate,
                         .grace_ms = w->cfg.grace_ms,
                         .leak_window = w->cfg.leak_window,
                         .horizon_messages = w->cfg.horizon_msgs,
                         .horizon_ms = w->cfg.horizon_ms,
                         .on_leak = pw_on_leak,
                         .leak_user = w};
  int rc = sluice_prof_start(&po);
  if (rc) die("profiler", rc);
}

/* The consumer, connected now so that a wrong URI or password fails here,
 * with the work queue and its dead-letter queue declared. */
static void start_consumer(pw_worker *w) {
  const pw_config *cfg = &w->cfg;
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
      .reconnect = {.enabled = 1,
                    .min_delay_ms = 100,
                    .max_delay_ms = 5000,
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
  if ((rc = sluice_consumer_declare_queue(w->c, &dd)))
    die("declare dead-letter queue", rc);
  if ((rc = sluice_consumer_declare_queue(w->c, &qd))) die("declare queue", rc);
}

/* The republisher and the HTTP sender, then the subscription. */
static void start_pipeline(pw_worker *w) {
  const pw_config *cfg = &w->cfg;
  int rc = pw_republisher_new(w, cfg->uri, cfg->queue, w->dlq, &w->repub);
  if (rc) die("republisher", rc);
  /* Inline handlers share the consumer's loop; worker threads must not
   * touch it, so the sender then gets a thread and a base of its own. */
  pw_sender_opts so = {.url = cfg->gateway,
                       .conns = cfg->http_conns,
                       .timeout_ms = cfg->http_timeout_ms,
                       .retry_delay_ms = cfg->retry_delay_ms,
                       .base = cfg->workers == 0 ? w->base : NULL};
  if (pw_sender_new(&so, &w->sender)) exit(1);
  /* Residual per job type (the `type` property: ok, probe, bad, ...), so
   * that a leak on one kind of job is named in one line. */
  sluice_subscribe_opts sub = {
      .queue = cfg->queue,
      .handler = on_job,
      .user = w,
      .key = strcmp(cfg->prof_key, "none") ? cfg->prof_key : NULL};
  if ((rc = sluice_consumer_subscribe(w->c, &sub))) die("subscribe", rc);
}

static void start_debug_endpoint(pw_worker *w) {
  if (!w->cfg.debug_addr) return;
#ifdef PW_HAVE_DEBUG
  sluice_debug_opts dopts = {.consumer = w->c, .addr = w->cfg.debug_addr};
  int rc = sluice_debug_server_new(&dopts, &w->debug);
  if (rc) die("debug endpoint", rc);
  int port = sluice_debug_server_port(w->debug);
  if (!w->cfg.quiet)
    fprintf(stderr,
            "push-worker: debug endpoint on port %d (/debug/pprof/heap, "
            "/debug/pprof/residual, /debug/vars, /metrics, /healthz)\n",
            port);
  pw_emit(w, json_pack("{s:s, s:s, s:i}", "type", "event", "event", "debug",
                       "port", port));
#else
  fprintf(stderr,
          "push-worker: built without the debug endpoint (sluice_debug); "
          "--debug-addr ignored\n");
#endif
}

/* Samples on --stats-fd, the --duration limit, SIGTERM/SIGINT. */
static void arm_timers_and_signals(pw_worker *w) {
  const pw_config *cfg = &w->cfg;
  if (cfg->stats_interval_ms) {
    w->stats_ev = event_new(w->base, -1, EV_PERSIST, on_stats_timer, w);
    struct timeval tv = {cfg->stats_interval_ms / 1000,
                         (cfg->stats_interval_ms % 1000) * 1000};
    event_add(w->stats_ev, &tv);
  }
  if (cfg->duration_s > 0) {
    w->duration_ev = evtimer_new(w->base, on_duration, w);
    time_t s = (time_t)cfg->duration_s;
    struct timeval tv = {s, (suseconds_t)((cfg->duration_s - (double)s) * 1e6)};
    evtimer_add(w->duration_ev, &tv);
  }
  g_consumer = w->c;
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

/* Run until stopped; returns the seconds it ran. */
static double run(pw_worker *w) {
  const pw_config *cfg = &w->cfg;
  if (!cfg->quiet)
    fprintf(stderr,
            "push-worker: consuming %s (%s ack, prefetch %u, %d workers, "
            "leak %s) -> %s\n",
            cfg->queue, cfg->ack == SLUICE_ACK_AUTO ? "auto" : "manual",
            cfg->prefetch, cfg->workers, pw_leak_names[cfg->leak],
            cfg->gateway);
  double t_start = pw_now_s();
  int rc = sluice_consumer_start(w->c, w->base);
  if (rc) die("start", rc);
  event_base_dispatch(w->base);
  return pw_now_s() - t_start;
}

/* Stopped. Jobs still at the gateway or waiting are given back, then the
 * republisher finishes what it holds. Residuals are checked again after the
 * grace period: wait for it once if some are pending, so that the verdicts
 * are final. */
static void wind_down(pw_worker *w) {
  if (w->stats_ev) event_free(w->stats_ev);
  if (w->duration_ev) event_free(w->duration_ev);
  pw_sender_free(w->sender);
  pw_republisher_free(w->repub);
  if (!w->cfg.prof_rate) return;
  if (pw_residual_pending() && w->cfg.grace_ms > 0) {
    struct timespec ts = {(w->cfg.grace_ms + 20) / 1000,
                          ((w->cfg.grace_ms + 20) % 1000) * 1000000};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
  }
  sluice_prof_poll();
}

/* The autoAck jobs handed back at the stop, then everything else. */
static int clean_up_worker(pw_worker *w) {
#ifdef PW_HAVE_DEBUG
  sluice_debug_server_free(w->debug);
#endif
  if (w->abandon_pub) {
    sluice_publish_report rep;
    int wrc = sluice_publisher_wait(w->abandon_pub, &rep);
    printf("push-worker: %" PRIu64 " autoAck jobs not handled before the "
           "stop timeout were republished (%" PRIu64 " confirmed%s)\n",
           LOAD(w->n.abandoned), rep.confirmed, wrc ? ", some NOT" : "");
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

int main(int argc, char **argv) {
  static pw_worker worker;
  pw_worker *w = &worker;
  int rc = pw_cli_parse(argc, argv, &w->cfg);
  if (rc) {
    if (rc < 0) pw_cli_usage(stderr, argv[0]);
    return rc < 0 ? 2 : 0;
  }
  pthread_mutex_init(&w->map_mu, NULL);
  pthread_mutex_init(&w->verdict_mu, NULL);
  signal(SIGPIPE, SIG_IGN);
  w->t0 = pw_now_s();

  start_profiler(w);
  w->base = event_base_new();
  if (!w->base) die("event_base_new", SLUICE_ENOMEM);
  start_consumer(w);
  start_pipeline(w);
  start_debug_endpoint(w);
  arm_timers_and_signals(w);

  double elapsed = run(w);

  wind_down(w);
  pw_emit(w, pw_final_json(w, elapsed));
  pw_print_summary(w, elapsed);
  if (w->cfg.report && w->cfg.prof_rate) pw_print_report();
  fflush(stdout);
  return clean_up_worker(w);
}
