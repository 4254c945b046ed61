/* SPDX-License-Identifier: MIT */
/* The consumer's lifecycle: options and creation, connecting and arming the
 * loop, losing a connection, start/run/stop, statistics and free. The
 * path of one delivery is elsewhere and reads in one direction: frames.c
 * (socket to assembled delivery), delivery.c (dispatch, handler,
 * completion, ack); declarations and their recovery are in topology.c,
 * the connection attempt in conn.c, the event loop behind loop.h.
 *
 * Only the loop thread touches the connection. See docs/architecture.md. */
#include <stdio.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "uri.h"

#define STOP_CHECK_MS 50 /* stop progress is checked this often */

static void finish_stop(sluice_consumer *c, int result);

const sluice_value *sluice_message_header(const sluice_message *msg,
                                          const char *key) {
  if (!msg || !key) return NULL;
  for (size_t i = 0; i < msg->props.n_headers; i++)
    if (strcmp(msg->props.headers[i].key, key) == 0)
      return &msg->props.headers[i].value;
  return NULL;
}

static const char *const outcome_names[] = SLUICE_OUTCOME_NAMES;
_Static_assert(sizeof(outcome_names) / sizeof(*outcome_names) ==
                   SLUICE_OUTCOME_COUNT_,
               "SLUICE_OUTCOME_MAP values must be dense from 0");

const char *sluice_outcome_name(int outcome) {
  if (outcome < 0 || outcome >= SLUICE_OUTCOME_COUNT_) return "?";
  return outcome_names[outcome];
}

/* ---- events -------------------------------------------------------------- */

void sluice__emit(sluice_consumer *c, const sluice_event *ev) {
  sluice__cb_frame f;
  sluice__cb_enter(&f, c);
  if (c->o.on_event) c->o.on_event(c, ev, c->o.event_user);
  if (ev->type == SLUICE_EV_CLOSED || ev->type == SLUICE_EV_CANCELLED ||
      ev->type == SLUICE_EV_GAVE_UP)
    sluice__registry_dispatch(c->registry, c, ev);
  sluice__cb_leave(&f);
}

/* ---- options ------------------------------------------------------------- */

static int apply_defaults(sluice_consumer_opts *o) {
  if (o->heartbeat_s == 0) o->heartbeat_s = 30;
  if (o->frame_max == 0) o->frame_max = SLUICE__DEFAULT_FRAME_MAX;
  if (o->frame_max < SLUICE__MIN_FRAME_MAX) return SLUICE_EINVAL;
  if (o->connect_timeout_ms <= 0)
    o->connect_timeout_ms = SLUICE__DEFAULT_CONNECT_TIMEOUT_MS;
  if (o->rpc_timeout_ms <= 0) o->rpc_timeout_ms = 10000;
  if (o->ack_mode != SLUICE_ACK_MANUAL && o->ack_mode != SLUICE_ACK_AUTO)
    return SLUICE_EINVAL;
  if (o->prefetch == 0) o->prefetch = 250;
  if (o->workers < 0 || o->workers > 1024) return SLUICE_EINVAL;
  if (o->max_inflight == 0) o->max_inflight = 256;
  if (o->max_inflight_bytes == 0) o->max_inflight_bytes = 64u << 20;
  if (o->max_body == 0) o->max_body = 64u << 20;
  if (o->ack_batch == 0) o->ack_batch = o->prefetch / 4 ? o->prefetch / 4 : 1;
  if (o->ack_flush_ms == 0) o->ack_flush_ms = 5;
  if (o->stop_timeout_ms == 0) o->stop_timeout_ms = 5000;
  if (o->max_close_listeners == 0) o->max_close_listeners = 16;
  if (o->max_close_listeners > 4096) return SLUICE_EINVAL;
  if (o->log_level == 0) o->log_level = SLUICE_LOG_WARN;
  sluice_reconnect_opts *r = &o->reconnect;
  if (r->min_delay_ms == 0) r->min_delay_ms = 100;
  if (r->max_delay_ms == 0) r->max_delay_ms = 30000;
  if (r->max_delay_ms < r->min_delay_ms) return SLUICE_EINVAL;
  if (r->max_attempts == 0) r->max_attempts = 10;
  if (r->reset_after_ms == 0) r->reset_after_ms = 10000;
  if (r->refused_probe_ms == 0) r->refused_probe_ms = 250;
  sluice_memory_guard_opts *m = &o->memory_guard;
  if (m->high_bytes) {
    if (m->low_bytes == 0) m->low_bytes = m->high_bytes - m->high_bytes / 4;
    if (m->low_bytes >= m->high_bytes) return SLUICE_EINVAL;
    if (m->interval_ms == 0) m->interval_ms = 100;
  }
  return 0;
}

/* Validate every URI now: a typo should fail here, not at 3 a.m. The log
 * says what is wrong and where, without quoting the URI (a password). Sets
 * `*tls` when one of them is amqps://. */
static int check_uris(const sluice_consumer_opts *o, const char *const *uris,
                      size_t n, int *any_tls) {
  sluice__logger lg = {o->log, o->log_user, o->log_level, NULL};
  *any_tls = 0;
  for (size_t i = 0; i < n; i++) {
    sluice_uri u;
    sluice__uri_err e;
    char *buf, why[160];
    if (!uris[i]) return SLUICE_EINVAL;
    int rc = sluice__uri_parse_alloc(uris[i], &u, &buf, &e);
    int tls = !rc && u.tls;
    free(buf);
    if (rc) {
      sluice__logf(&lg, SLUICE_LOG_ERROR, "URI %zu of %zu: %s: %s", i + 1, n,
                   sluice_strerror(rc),
                   sluice__uri_err_text(rc, &e, why, sizeof(why)));
      return rc;
    }
    if (tls) *any_tls = 1;
  }
  return 0;
}

static int copy_uris(sluice_consumer *c, const char *const *uris, size_t n) {
  c->uris = calloc(n, sizeof(char *));
  c->tls_asked = calloc(n, 1);
  if (!c->uris || !c->tls_asked) return SLUICE_ENOMEM;
  c->n_uris = n;
  for (size_t i = 0; i < n; i++)
    if (!(c->uris[i] = sluice__strdup(uris[i]))) return SLUICE_ENOMEM;
  if (c->o.reconnect.shuffle && n > 1)
    sluice__policy_shuffle(&c->policy, (void **)c->uris, n);
  return 0;
}

int sluice_consumer_new(const sluice_consumer_opts *opts,
                        sluice_consumer **out) {
  if (!out) return SLUICE_EINVAL;
  *out = NULL;
  sluice_consumer_opts o;
  if (opts) o = *opts;
  else memset(&o, 0, sizeof(o));
  int rc = apply_defaults(&o);
  if (rc) return rc;

  const char *def = SLUICE__DEFAULT_URI;
  const char *const *uris = o.uris;
  size_t n = o.n_uris;
  if (!uris || n == 0) {
    uris = o.uri ? &o.uri : &def;
    n = 1;
  }
  int any_tls;
  if ((rc = check_uris(&o, uris, n, &any_tls))) return rc;

  sluice_consumer *c = calloc(1, sizeof(*c));
  if (!c) return SLUICE_ENOMEM;
  c->o = o;
  c->log = (sluice__logger){o.log, o.log_user, o.log_level, c};
  c->o.uri = NULL;
  c->o.uris = NULL;
  c->fd = -1;
  c->wake_fd = -1;
  c->mute[0] = c->mute[1] = -1;
  atomic_init(&c->generation, 1); /* the first connection's */
  c->topo_tail = &c->topo;
  c->bound.max_count = o.max_inflight;
  c->bound.max_bytes = o.max_inflight_bytes;
  c->mem.high = o.memory_guard.high_bytes;
  c->mem.low = o.memory_guard.low_bytes;
  sluice__policy_init(&c->policy, &o.reconnect, n,
                      (uint64_t)(uintptr_t)c ^ sluice__now_ms() ^
                          ((uint64_t)getpid() << 32));
  c->refused_ms = UINT64_MAX;
  pthread_mutex_init(&c->cq_mu, NULL);
  pthread_mutex_init(&c->wq_mu, NULL);
  pthread_cond_init(&c->wq_cv, NULL);
  sluice__ackq_init(&c->acks);
  if (o.hooks) {
    c->hooks = *o.hooks;
    c->has_hooks = 1;
  }
  c->o.hooks = NULL;

  if (copy_uris(c, uris, n)) goto nomem;
  if (o.connection_name && !(c->conn_name = sluice__strdup(o.connection_name)))
    goto nomem;
  c->o.connection_name = NULL;
  if (sluice__registry_new(o.max_close_listeners, &c->registry)) goto nomem;
  if (any_tls) {
    char text[512];
    c->has_tls = 1;
    rc = sluice__tls_config_init(&c->tls, &o.tls, text, sizeof(text));
    if (rc) {
      sluice__log(c, SLUICE_LOG_ERROR, "%s", text);
      sluice_consumer_free(c);
      return rc;
    }
  }
  memset(&c->o.tls, 0, sizeof(c->o.tls)); /* the copies are in c->tls */
  *out = c;
  return 0;
nomem:
  sluice_consumer_free(c);
  return SLUICE_ENOMEM;
}

/* ---- connecting ---------------------------------------------------------- */

/* A new connection on the loop: watch its socket, start the heartbeat, and
 * read unless the in-flight bound says not yet. */
static int arm_connection(sluice_consumer *c) {
  if (!c->loop.base) return 0;
  if (sluice__loop_set_socket(&c->loop, c, c->fd)) return SLUICE_ENOMEM;
  c->reading = 0;
  c->want_write = 0;
  c->write_budget = 0;
  if (c->heartbeat_s > 0)
    sluice__loop_arm(&c->loop, SLUICE__W_HEARTBEAT,
                     (uint64_t)c->heartbeat_s * 500);
  /* Held deliveries of a dead connection (deferred, in handlers) still
   * count: stay paused until they are done. */
  sluice__update_pause(c);
  sluice__kick_read(c);
  return 0;
}

int sluice_consumer_connect(sluice_consumer *c) {
  if (!c) return SLUICE_EINVAL;
  if (c->connected || c->stopped || c->attempt) return SLUICE_ESTATE;
  /* The one blocking connect: the caller asked for it (documented). */
  int rc = sluice__attempt_now(c);
  if (rc == 0 && c->loop.base) rc = arm_connection(c);
  return rc;
}

/* ---- reconnecting -------------------------------------------------------- */

/* The connection is gone or an attempt failed: ask the policy, then arm
 * the retry timer, or end the run. */
static void schedule_retry(sluice_consumer *c, int err) {
  sluice__decision d =
      c->refused_ms != UINT64_MAX
          ? sluice__policy_refused(&c->policy, err, c->refused_ms)
          : sluice__policy_failed(&c->policy, err);
  c->refused_ms = UINT64_MAX;
  c->probing = d.action == SLUICE__RETRY && d.probe;
  /* Why the last attempt failed (OpenSSL's reason for TLS), or nothing
   * after a lost connection (its CLOSED event said why). */
  const char *why = c->last_error[0] ? c->last_error : NULL;
  switch (d.action) {
    case SLUICE__FATAL:
      if (c->o.reconnect.enabled)
        sluice__log(c, SLUICE_LOG_ERROR, "not reconnecting: %s",
                    sluice_strerror(err));
      finish_stop(c, err);
      return;
    case SLUICE__GIVE_UP: {
      sluice__log(c, SLUICE_LOG_ERROR, "gave up after %u attempts: %s",
                  d.attempt, sluice_strerror(err));
      sluice_event ev = {.type = SLUICE_EV_GAVE_UP,
                         .err = err,
                         .text = why,
                         .attempt = d.attempt,
                         .generation = atomic_load(&c->generation)};
      sluice__emit(c, &ev);
      finish_stop(c, SLUICE_EGAVEUP);
      return;
    }
    case SLUICE__RETRY: {
      if (d.probe) { /* not an attempt: no event */
        sluice__log(c, SLUICE_LOG_DEBUG,
                    "refused at once: probing again in %llu ms",
                    (unsigned long long)d.delay_ms);
        sluice__loop_arm(&c->loop, SLUICE__W_RETRY, d.delay_ms);
        return;
      }
      sluice_event ev = {.type = SLUICE_EV_RECONNECTING,
                         .err = err,
                         .text = why,
                         .delay_ms = d.delay_ms,
                         .attempt = d.attempt,
                         .generation = atomic_load(&c->generation)};
      sluice__emit(c, &ev);
      sluice__log(c, SLUICE_LOG_INFO, "reconnecting in %llu ms (attempt %u)",
                  (unsigned long long)d.delay_ms, d.attempt);
      sluice__loop_arm(&c->loop, SLUICE__W_RETRY, d.delay_ms);
      return;
    }
  }
}

/* The backoff is over: try again, off the loop thread. */
static void retry(sluice_consumer *c) {
  if (c->stopping || c->stopped || c->attempt) return;
  int rc = sluice__attempt_start(c);
  if (rc) {
    snprintf(c->last_error, sizeof(c->last_error), "%s", sluice_strerror(rc));
    schedule_retry(c, rc);
  }
}

/* An attempt has finished (it woke the loop): take its connection, or
 * decide what comes next. */
static void attempt_finished(sluice_consumer *c) {
  int rc = sluice__attempt_adopt(c);
  if (rc) {
    schedule_retry(c, rc);
    return;
  }
  if (arm_connection(c) != 0) {
    sluice__conn_lost(c, SLUICE_ENOMEM);
    return;
  }
  /* Generation 1 is the first connection (made after failed attempts at
   * start): not a reconnect. */
  if (atomic_load(&c->generation) > 1) atomic_fetch_add(&c->n_reconnects, 1);
  sluice_event ev = {.type = SLUICE_EV_CONNECTED,
                     .attempt = sluice__policy_connected(&c->policy),
                     .generation = atomic_load(&c->generation)};
  sluice__emit(c, &ev);
}

/* ---- losing a connection ------------------------------------------------- */

/* The reply code to report with a close: a broker's close only. */
static uint16_t broker_close_code(sluice_consumer *c, int err) {
  uint16_t code = c->lost_code;
  c->lost_code = 0;
  if (code) return code; /* 503, 505... whatever error they map to */
  return (sluice__err_class(err) & SLUICE__ERR_BROKER) ? c->last_close_code : 0;
}

/* Everything that belonged to the dead connection's loop: its socket
 * watches, its heartbeat, its pending ack flush, its subscriptions. */
static void quiesce(sluice_consumer *c) {
  sluice__loop_disarm(&c->loop, SLUICE__W_READ);
  sluice__loop_disarm(&c->loop, SLUICE__W_WRITE);
  c->reading = c->want_write = 0;
  sluice__loop_disarm(&c->loop, SLUICE__W_HEARTBEAT);
  sluice__loop_disarm(&c->loop, SLUICE__W_ACK);
  sluice__loop_disarm(&c->loop, SLUICE__W_DRAIN);
  c->ack_timer_on = 0;
  for (int i = 0; i < SLUICE__MAX_SUBS; i++) c->subs[i].active = 0;
  /* connection.blocked belonged to the dead connection; the next one says
   * again if the broker still has an alarm. */
  c->blocked = 0;
}

static void announce_close(sluice_consumer *c, int err, uint16_t code,
                           uint64_t gen) {
  sluice_event ev = {.type = SLUICE_EV_CLOSED,
                     .err = err,
                     .reply_code = code,
                     .text = code ? c->last_close_text : NULL,
                     .generation = gen};
  sluice__emit(c, &ev);
  sluice__registry_generation_died(c->registry, gen);
}

void sluice__conn_lost(sluice_consumer *c, int err) {
  if (!c->connected) return;
  if (!c->started) {
    /* Not running yet (a failure inside sluice_consumer_connect() or a
     * declaration before run): the caller gets the error. */
    sluice__disconnect(c, 0);
    return;
  }
  /* From here on every delivery of the dead connection is stale: a
   * sluice_delivery_done() from another thread returns SLUICE_ESTALE even
   * before the next connection exists, and queued ones skip their handler. */
  uint64_t gen = atomic_fetch_add(&c->generation, 1);
  uint16_t code = broker_close_code(c, err);
  c->last_error[0] = '\0';
  sluice__disconnect(c, 0);
  quiesce(c);
  sluice__deliveries_conn_lost(c);
  announce_close(c, err, code, gen);
  if (c->stopping) {
    finish_stop(c, 0);
    return;
  }
  schedule_retry(c, err);
}

/* ---- the loop ------------------------------------------------------------ */

static void on_wake(sluice_consumer *c) {
  uint64_t v;
  ssize_t r = read(c->wake_fd, &v, sizeof(v));
  (void)r;
  sluice__drain_completions(c);
  if (c->attempt && !c->stopped && sluice__attempt_done(c)) attempt_finished(c);
  if (atomic_load(&c->stop_requested) && !c->stopping && !c->stopped)
    sluice__begin_stop(c);
}

void sluice__on_watch(sluice_consumer *c, sluice__watch w) {
  switch (w) {
    case SLUICE__W_READ:
    case SLUICE__W_DRAIN: sluice__read_frames(c); return;
    case SLUICE__W_WRITE:
      c->want_write = 0;
      sluice__flush_acks(c);
      return;
    case SLUICE__W_WAKE: on_wake(c); return;
    case SLUICE__W_HEARTBEAT: sluice__heartbeat(c); return;
    case SLUICE__W_ACK:
      c->ack_timer_on = 0;
      sluice__flush_acks(c);
      return;
    case SLUICE__W_STOP: sluice__check_stop(c); return;
    case SLUICE__W_RETRY: retry(c); return;
    case SLUICE__W_MEMORY: sluice__memguard_check(c); return;
    default: return;
  }
}

/* Undo what start() set up on the event_base (not the connection). */
static void loop_teardown(sluice_consumer *c) {
  sluice__loop_detach(&c->loop);
  if (c->wake_fd >= 0) close(c->wake_fd);
  c->wake_fd = -1;
  c->reading = c->want_write = c->ack_timer_on = 0;
}

/* ---- start / run / stop -------------------------------------------------- */

int sluice_consumer_start(sluice_consumer *c, struct event_base *base) {
  if (!c || !base) return SLUICE_EINVAL;
  if (c->started || c->stopped) return SLUICE_ESTATE;
  c->loop_thread = pthread_self();
  int rc = SLUICE_ESOCKET;
  c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (c->wake_fd < 0) goto fail;
  if ((rc = sluice__loop_attach(&c->loop, base, c, c->wake_fd))) goto fail;
  if ((rc = sluice__workers_start(c))) goto fail;
  c->started = 1;
  /* Above the mark already: do not start reading. */
  sluice__memguard_start(c);
  if (c->connected) {
    /* sluice_consumer_connect() came first. */
    if ((rc = arm_connection(c))) goto fail_started;
    sluice_event ev = {.type = SLUICE_EV_CONNECTED,
                       .generation = atomic_load(&c->generation)};
    sluice__emit(c, &ev);
  } else if ((rc = sluice__attempt_start(c))) {
    /* The caller's loop never waits for a connection: the attempt runs on
     * a thread of its own and wakes the loop when it is done. */
    goto fail_started;
  }
  /* If stop() came before start(), honour it now. */
  if (atomic_load(&c->stop_requested)) sluice_consumer_stop(c);
  return 0;
fail_started:
  c->started = 0;
  sluice__workers_stop(c);
fail:
  loop_teardown(c);
  c->loop.base = NULL;
  return rc;
}

static int run_loop(sluice_consumer *c) {
  if (sluice__loop_new_base(&c->loop)) return SLUICE_ENOMEM;
  struct event_base *base = c->loop.base;
  int rc = sluice_consumer_start(c, base);
  if (rc) {
    c->loop.base = base;
    sluice__loop_free_base(&c->loop);
    return rc;
  }
  while (!c->stopped) {
    rc = sluice__loop_run(&c->loop);
    if (rc == SLUICE_EIO) {
      finish_stop(c, SLUICE_EIO);
      break;
    }
    /* No events left (cannot happen while the wake-up is armed). */
    if (rc && !c->stopped) finish_stop(c, SLUICE_ESTATE);
  }
  return c->run_result;
}

int sluice_consumer_run(sluice_consumer *c) {
  if (!c) return SLUICE_EINVAL;
  if (c->started || c->stopped) return SLUICE_ESTATE;
  c->run_thread = pthread_self();
  atomic_store_explicit(&c->in_run, 1, memory_order_release);
  int rc = run_loop(c);
  /* The last access to the consumer: a sluice_consumer_free() waiting on
   * another thread frees it as soon as it sees this. */
  atomic_store_explicit(&c->in_run, 0, memory_order_release);
  return rc;
}

void sluice_consumer_stop(sluice_consumer *c) {
  if (!c) return;
  /* Async-signal-safe: an atomic store and a write(2). */
  atomic_store(&c->stop_requested, 1);
  if (c->wake_fd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(c->wake_fd, &one, sizeof(one));
    (void)w;
  }
}

int sluice_consumer_stopped(const sluice_consumer *c) {
  return c ? atomic_load(&c->stopped) : 1;
}

/* Cancel every active subscription; 0, or -1 if the connection died. */
static int cancel_subscriptions(sluice_consumer *c) {
  for (int i = 0; i < SLUICE__MAX_SUBS; i++) {
    struct sluice__sub *s = &c->subs[i];
    if (!s->used || !s->active) continue;
    amqp_basic_cancel_t m;
    memset(&m, 0, sizeof(m));
    m.consumer_tag = amqp_cstring_bytes(s->tag);
    if (amqp_send_method(c->conn, SLUICE__CH_MAIN, AMQP_BASIC_CANCEL_METHOD,
                         &m) != 0) {
      sluice__conn_lost(c, SLUICE_ESOCKET);
      return -1;
    }
  }
  return 0;
}

void sluice__begin_stop(sluice_consumer *c) {
  c->stopping = 1;
  c->stop_deadline_ms = sluice__now_ms() + c->o.stop_timeout_ms;
  sluice__log(c, SLUICE_LOG_INFO, "stopping: %zu deliveries held",
              c->bound.count);
  sluice__loop_disarm(&c->loop, SLUICE__W_RETRY);
  if (c->connected && cancel_subscriptions(c)) return;
  /* A stop reads on to the cancel-ok even while the memory guard holds
   * (sluice__memguard_holds). */
  sluice__update_pause(c);
  /* Not started yet: leave them unacked; the broker requeues them when
   * the channel closes. */
  if (c->o.ack_mode == SLUICE_ACK_MANUAL) sluice__abandon_queued(c);
  sluice__loop_arm(&c->loop, SLUICE__W_STOP, STOP_CHECK_MS);
  sluice__check_stop(c);
}

static int subs_open(const sluice_consumer *c) {
  for (int i = 0; i < SLUICE__MAX_SUBS; i++)
    if (c->subs[i].used && c->subs[i].active) return 1;
  return 0;
}

/* What a stop that ran out of time leaves behind, as it is in each mode. */
static void stop_timeout_warn(sluice_consumer *c, int open) {
  size_t busy = sluice__busy_count(c);
  if (c->o.ack_mode == SLUICE_ACK_MANUAL) {
    sluice__log(c, SLUICE_LOG_WARN,
                "stop timeout: %zu deliveries still in handlers; the broker "
                "requeues them",
                busy);
    return;
  }
  if (busy)
    sluice__log(c, SLUICE_LOG_WARN,
                "stop timeout: %zu autoAck deliveries still queued, in "
                "handlers or deferred; they are still handled",
                busy);
  if (open && c->connected)
    sluice__log(c, SLUICE_LOG_ERROR,
                "stop: no cancel-ok after %u ms without a delivery; what the "
                "broker settled and still had in flight is lost (not counted "
                "in dropped)",
                c->o.stop_timeout_ms);
}

void sluice__check_stop(sluice_consumer *c) {
  if (!c->stopping || c->stopped) return;
  int open = subs_open(c);
  int idle = sluice__busy_count(c) == 0 && !open;
  if (!idle && c->connected && !c->draining &&
      c->o.ack_mode == SLUICE_ACK_AUTO &&
      sluice__now_ms() >= c->stop_deadline_ms) {
    /* The broker settled everything it sent: what the handlers could not
     * take in time is read off the socket until the cancel-ok and handed to
     * on_abandoned. The budget restarts with each delivery read (hand_off):
     * after basic.cancel the broker sends only what it had in flight, so
     * the drain is bounded by that, not by the machine's speed. */
    c->draining = 1;
    c->stop_deadline_ms = sluice__now_ms() + c->o.stop_timeout_ms;
    sluice__hand_off_queued(c);
    sluice__update_pause(c);
    sluice__kick_read(c);
    idle = sluice__busy_count(c) == 0 && !open;
  }
  if (!idle && c->draining && open && c->connected &&
      sluice__now_ms() >= c->stop_deadline_ms && sluice__input_pending(c)) {
    /* Not a silent broker: a loop thread kept off the CPU (a loaded machine,
     * valgrind) finds the rest still waiting. Read it. */
    c->stop_deadline_ms = sluice__now_ms() + c->o.stop_timeout_ms;
    sluice__kick_read(c);
    return;
  }
  if (idle || !c->connected || sluice__now_ms() >= c->stop_deadline_ms) {
    if (!idle) stop_timeout_warn(c, open);
    finish_stop(c, 0);
  }
}

/* Last acks, then close, waiting for the socket within what is left of the
 * stop budget. */
static void close_gracefully(sluice_consumer *c) {
  uint64_t now = sluice__now_ms();
  int left = c->stop_deadline_ms > now ? (int)(c->stop_deadline_ms - now) : 100;
  sluice__flush_acks_blocking(c, left);
  if (c->acks.n)
    sluice__log(c, SLUICE_LOG_WARN, "%zu acks could not be sent at stop",
                c->acks.n);
  struct timeval tv = {left / 1000 + 1, 0};
  amqp_set_rpc_timeout(c->conn, &tv);
  /* Part of an ack frame on the wire: no close can follow it. */
  sluice__disconnect(c, !c->ackw_failed);
}

static void finish_stop(sluice_consumer *c, int result) {
  if (c->stopped) return;
  if (c->draining || c->o.ack_mode == SLUICE_ACK_AUTO) {
    uint64_t n = atomic_load(&c->n_dropped);
    if (n && !c->o.on_abandoned)
      sluice__log(c, SLUICE_LOG_ERROR,
                  "%llu autoAck deliveries were not handled before the stop "
                  "timeout; the broker had settled them (set on_abandoned "
                  "to republish them)",
                  (unsigned long long)n);
  }
  c->stopping = 1;
  c->run_result = result;
  sluice__attempt_cancel(c); /* its result, when it comes, is dropped */
  if (c->connected) close_gracefully(c);
  /* Nothing of sluice's stays on the event_base, so that the caller's
   * event_base_dispatch() returns by itself once its own events are done
   * (the wake-up eventfd stays open, unwatched, for a late stop()). */
  sluice__loop_detach(&c->loop);
  c->reading = c->want_write = 0;
  c->ack_timer_on = 0;
  atomic_fetch_add(&c->generation, 1); /* late completions are stale */
  sluice__workers_stop(c);
  sluice__deliveries_stopped(c);
  atomic_store(&c->stopped, 1);
  sluice_event ev = {.type = SLUICE_EV_STOPPED,
                     .err = result,
                     .text = result && c->last_error[0] ? c->last_error : NULL,
                     .generation = atomic_load(&c->generation)};
  sluice__emit(c, &ev);
  sluice__loop_break(&c->loop);
}

/* ---- close listeners ----------------------------------------------------- */

int sluice_consumer_on_close(sluice_consumer *c, sluice_close_fn fn, void *user,
                             sluice_listen_scope scope, sluice_listener *out) {
  if (!c) return SLUICE_EINVAL;
  /* c->generation names the live connection, or the next one while down
   * (it moves on when a connection dies). */
  int rc = sluice__registry_add(c->registry, fn, user, scope,
                                atomic_load(&c->generation), out);
  if (rc == SLUICE_ELIMIT)
    sluice__log(c, SLUICE_LOG_ERROR,
                "close-listener registry full (%u): registration refused; "
                "remove listeners with sluice_consumer_off_close() or use "
                "SLUICE_LISTEN_GENERATION",
                sluice__registry_capacity(c->registry));
  return rc;
}

int sluice_consumer_off_close(sluice_consumer *c, sluice_listener h) {
  if (!c) return SLUICE_EINVAL;
  return sluice__registry_remove(c->registry, h);
}

size_t sluice_consumer_close_listener_count(const sluice_consumer *c) {
  return c ? sluice__registry_count(c->registry) : 0;
}

/* ---- stats --------------------------------------------------------------- */

#define LD(x) atomic_load_explicit(&c->x, memory_order_relaxed)

void sluice_consumer_get_stats(const sluice_consumer *cc,
                               sluice_consumer_stats *out) {
  if (!out) return;
  memset(out, 0, sizeof(*out));
  if (!cc) return;
  sluice_consumer *c = (sluice_consumer *)cc;
  out->delivered = LD(n_delivered);
  out->acked = LD(n_acked);
  out->nacked = LD(n_nacked);
  out->rejected = LD(n_rejected);
  out->handler_errors = LD(n_errors);
  out->stale = LD(n_stale);
  out->redelivered = LD(n_redelivered);
  out->too_big = LD(n_too_big);
  out->dropped = LD(n_dropped);
  out->ack_frames = LD(n_ack_frames);
  out->in_flight = LD(n_inflight);
  out->in_flight_bytes = LD(n_inflight_bytes);
  out->max_in_flight = LD(n_max_inflight);
  out->in_handler = LD(n_in_handler);
  out->max_in_handler = LD(n_max_in_handler);
  out->read_pauses = LD(n_read_pauses);
  out->reconnects = LD(n_reconnects);
  out->generation = LD(generation);
  out->close_listeners = sluice__registry_count(c->registry);
  out->connected = c->connected;
  out->blocked = c->blocked;
  out->memory_source = sluice__memguard_source_name(LD(mem_source));
  if (!c->mem.high) return;
  out->memory_bytes = LD(n_mem_bytes);
  out->memory_high_bytes = c->mem.high;
  out->memory_low_bytes = c->mem.low;
  out->memory_pauses = LD(n_mem_pauses);
  out->memory_checks = LD(n_mem_checks);
  out->memory_read_errors = LD(n_mem_read_errors);
  out->memory_check_us = LD(n_mem_check_us);
  out->memory_paused = LD(mem_paused);
  out->memory_paused_ms = LD(n_mem_paused_ms);
  if (out->memory_paused) {
    uint64_t since = LD(mem_since_ms), now = sluice__now_ms();
    if (now > since) out->memory_paused_ms += now - since;
  }
}

int sluice_consumer_last_close(const sluice_consumer *c, char *buf,
                               size_t buflen) {
  if (!c) return 0;
  if (buf && buflen) snprintf(buf, buflen, "%s", c->last_close_text);
  return c->last_close_code;
}

struct event_base *sluice_consumer_base(sluice_consumer *c) {
  return c ? c->loop.base : NULL;
}

/* ---- free ---------------------------------------------------------------- */

void sluice_consumer_free(sluice_consumer *c) {
  if (!c) return;
  if (sluice__cb_inside(c)) {
    /* The code that called the callback still uses the consumer. */
    sluice__log(c, SLUICE_LOG_ERROR,
                "sluice_consumer_free() from inside a callback of the same "
                "consumer: refused (call sluice_consumer_stop() there and "
                "free it after run() returns)");
    return;
  }
  if (atomic_load_explicit(&c->in_run, memory_order_acquire) &&
      !pthread_equal(pthread_self(), c->run_thread)) {
    /* run() on another thread: stop it as sluice_consumer_stop() does, and
     * free once run() has returned (its last access to the consumer). */
    sluice_consumer_stop(c);
    struct timespec ms = {0, 1000000};
    while (atomic_load_explicit(&c->in_run, memory_order_acquire))
      nanosleep(&ms, NULL);
  } else if (c->started && !atomic_load(&c->stopped) &&
             !pthread_equal(pthread_self(), c->loop_thread)) {
    /* sluice_consumer_start() on the caller's event_base, which another
     * thread may be running: stopping needs that loop, which the consumer
     * cannot drive from here, nor know whether it still runs. */
    sluice__log(c, SLUICE_LOG_ERROR,
                "sluice_consumer_free() from another thread than the "
                "event_base of sluice_consumer_start() before "
                "SLUICE_EV_STOPPED: refused (call sluice_consumer_stop() and "
                "free it once stopped)");
    return;
  }
  if (c->started && !c->stopped) finish_stop(c, 0);
  sluice__attempt_release(c);
  if (c->connected) sluice__disconnect(c, 1);
  sluice__workers_stop(c);
  sluice__deliveries_free(c);
  loop_teardown(c);
  sluice__loop_free_base(&c->loop);
  sluice__topology_free(c);
  for (size_t i = 0; i < c->n_uris; i++) free(c->uris ? c->uris[i] : NULL);
  free(c->uris);
  free(c->tls_asked);
  free(c->conn_name);
  sluice__tls_config_free(&c->tls);
  sluice__registry_free(c->registry);
  sluice__ackq_free(&c->acks);
  free(c->rx_buf);
  for (int i = 0; i < 2; i++)
    if (c->mute[i] >= 0) close(c->mute[i]);
  pthread_mutex_destroy(&c->cq_mu);
  pthread_mutex_destroy(&c->wq_mu);
  pthread_cond_destroy(&c->wq_cv);
  free(c);
}
