/* SPDX-License-Identifier: MIT */
/* The consumer: options, the libevent loop, frame reading, delivery
 * assembly, dispatch, completion and acknowledgement.
 *
 * Only the loop thread touches the connection. Worker threads and deferred
 * completions hand finished deliveries back through a mutex-protected queue
 * and an eventfd. See docs/architecture.md. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"

#define SLOT_KEEP_BYTES (64 * 1024) /* larger blocks are freed after use */
#define READ_BUDGET 256             /* frames per wake-up before yielding */

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);
static void on_wake(evutil_socket_t fd, short what, void *arg);
static void on_heartbeat(evutil_socket_t fd, short what, void *arg);
static void on_ack_timer(evutil_socket_t fd, short what, void *arg);
static void on_stop_timer(evutil_socket_t fd, short what, void *arg);
static void process_completion(sluice_consumer *c, sluice_delivery *d);
static void flush_acks(sluice_consumer *c);
static void update_pause(sluice_consumer *c);
static void check_stop(sluice_consumer *c);
static void finish_stop(sluice_consumer *c, int result);

/* ---- small helpers ------------------------------------------------------- */

static char *xstrdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static void counter_max(_Atomic uint64_t *m, uint64_t v) {
  uint64_t cur = atomic_load_explicit(m, memory_order_relaxed);
  while (v > cur && !atomic_compare_exchange_weak(m, &cur, v)) {
  }
}

static int on_loop_thread(const sluice_consumer *c) {
  return c->started && pthread_equal(pthread_self(), c->loop_thread);
}

#define OUTCOME_NAME(name, value, text) [value] = text,
static const char *const outcome_names[] = {SLUICE_OUTCOME_MAP(OUTCOME_NAME)};
#undef OUTCOME_NAME
_Static_assert(sizeof(outcome_names) / sizeof(*outcome_names) ==
                   SLUICE_OUTCOME_COUNT_,
               "SLUICE_OUTCOME_MAP values must be dense from 0");

const char *sluice_outcome_name(int outcome) {
  if (outcome < 0 || outcome >= SLUICE_OUTCOME_COUNT_) return "?";
  return outcome_names[outcome];
}

const sluice_value *sluice_message_header(const sluice_message *msg,
                                          const char *key) {
  if (!msg || !key) return NULL;
  for (size_t i = 0; i < msg->props.n_headers; i++)
    if (strcmp(msg->props.headers[i].key, key) == 0)
      return &msg->props.headers[i].value;
  return NULL;
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
  if (o->frame_max == 0) o->frame_max = 131072;
  if (o->frame_max < 4096) return SLUICE_EINVAL;
  if (o->connect_timeout_ms <= 0) o->connect_timeout_ms = 10000;
  if (o->rpc_timeout_ms <= 0) o->rpc_timeout_ms = 10000;
  if (o->ack_mode != SLUICE_ACK_MANUAL && o->ack_mode != SLUICE_ACK_AUTO)
    return SLUICE_EINVAL;
  if (o->prefetch == 0) o->prefetch = 100;
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
  return 0;
}

int sluice_consumer_new(const sluice_consumer_opts *opts,
                        sluice_consumer **out) {
  if (!out) return SLUICE_EINVAL;
  *out = NULL;
  sluice_consumer_opts o;
  if (opts)
    o = *opts;
  else
    memset(&o, 0, sizeof(o));
  int rc = apply_defaults(&o);
  if (rc) return rc;

  const char *def = "amqp://guest:guest@127.0.0.1:5672/";
  const char *const *uris = o.uris;
  size_t n = o.n_uris;
  if (!uris || n == 0) {
    uris = o.uri ? &o.uri : &def;
    n = 1;
  }
  /* Validate every URI now: a typo should fail here, not at 3 a.m. */
  for (size_t i = 0; i < n; i++) {
    char buf[1024];
    sluice_uri u;
    if (!uris[i]) return SLUICE_EINVAL;
    rc = sluice_uri_parse(uris[i], &u, buf, sizeof(buf));
    if (rc == SLUICE_ELIMIT) rc = SLUICE_EURI;
    if (rc) return rc;
    if (u.tls) return SLUICE_ENOTSUP;
  }

  sluice_consumer *c = calloc(1, sizeof(*c));
  if (!c) return SLUICE_ENOMEM;
  c->o = o;
  c->log = (sluice__logger){o.log, o.log_user, o.log_level, c};
  c->o.uri = NULL;
  c->o.uris = NULL;
  c->fd = -1;
  c->wake_fd = -1;
  atomic_init(&c->generation, 1); /* the first connection's */
  c->topo_tail = &c->topo;
  c->bound.max_count = o.max_inflight;
  c->bound.max_bytes = o.max_inflight_bytes;
  c->backoff.min_ms = o.reconnect.min_delay_ms;
  c->backoff.max_ms = o.reconnect.max_delay_ms;
  c->rng_state = (uint64_t)(uintptr_t)c ^ sluice__now_ms() ^
                 ((uint64_t)getpid() << 32);
  pthread_mutex_init(&c->cq_mu, NULL);
  pthread_mutex_init(&c->wq_mu, NULL);
  pthread_cond_init(&c->wq_cv, NULL);
  sluice__ackq_init(&c->acks);
  if (o.hooks) {
    c->hooks = *o.hooks;
    c->has_hooks = 1;
  }
  c->o.hooks = NULL;

  c->uris = calloc(n, sizeof(char *));
  if (!c->uris) goto nomem;
  c->n_uris = n;
  for (size_t i = 0; i < n; i++)
    if (!(c->uris[i] = xstrdup(uris[i]))) goto nomem;
  if (o.connection_name && !(c->conn_name = xstrdup(o.connection_name)))
    goto nomem;
  c->o.connection_name = NULL;
  if (sluice__registry_new(o.max_close_listeners, &c->registry)) goto nomem;
  if (o.reconnect.shuffle && n > 1) {
    for (size_t i = n - 1; i > 0; i--) {
      c->rng_state = c->rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
      size_t j = (size_t)((c->rng_state >> 33) % (i + 1));
      char *t = c->uris[i];
      c->uris[i] = c->uris[j];
      c->uris[j] = t;
    }
  }
  *out = c;
  return 0;
nomem:
  sluice_consumer_free(c);
  return SLUICE_ENOMEM;
}

/* ---- delivery slots ------------------------------------------------------ */

static sluice_delivery *slot_get(sluice_consumer *c) {
  sluice_delivery *d = c->pool;
  if (d) {
    c->pool = d->pool_next;
  } else {
    d = calloc(1, sizeof(*d));
    if (!d) return NULL;
    d->c = c;
    c->pool_size++;
  }
  d->pool_next = NULL;
  d->prev = d->next = d->qnext = NULL;
  d->hook_token = NULL;
  d->outcome = 0;
  d->early_outcome = -1;
  d->too_big = 0;
  d->on_stale = 0;
  d->body_got = d->body_size = d->mem = 0;
  memset(&d->msg, 0, sizeof(d->msg));
  memset(&d->info, 0, sizeof(d->info));
  return d;
}

/* Return a slot to the pool. Slots are never freed before the consumer, so a
 * late second sluice_delivery_done() on a recycled handle finds a valid
 * object (and SLUICE_EALREADY) instead of freed memory. */
static void slot_put(sluice_consumer *c, sluice_delivery *d) {
  if (d->blk_cap > SLOT_KEEP_BYTES) {
    free(d->blk);
    d->blk = NULL;
    d->blk_cap = 0;
  }
  atomic_store(&d->state, DS_FREE);
  /* FIFO would delay reuse further; LIFO keeps the cache warm. A stale
   * handle is a caller bug either way, and never a crash. */
  d->pool_next = c->pool;
  c->pool = d;
}

static void held_link(sluice_consumer *c, sluice_delivery *d) {
  d->on_stale = 0;
  d->next = NULL;
  d->prev = c->held_tail;
  if (c->held_tail)
    c->held_tail->next = d;
  else
    c->held_head = d;
  c->held_tail = d;
}

static void held_unlink(sluice_consumer *c, sluice_delivery *d) {
  if (d->on_stale) {
    if (d->prev)
      d->prev->next = d->next;
    else
      c->stale_head = d->next;
    if (d->next) d->next->prev = d->prev;
  } else {
    if (d->prev)
      d->prev->next = d->next;
    else
      c->held_head = d->next;
    if (d->next)
      d->next->prev = d->prev;
    else
      c->held_tail = d->prev;
  }
  d->prev = d->next = NULL;
}

static void charge(sluice_consumer *c, sluice_delivery *d, size_t bytes) {
  d->mem += bytes;
  sluice__bound_charge(&c->bound, bytes);
  atomic_store_explicit(&c->n_inflight_bytes, c->bound.bytes,
                        memory_order_relaxed);
}

/* Forget a held delivery (loop thread). */
static void release(sluice_consumer *c, sluice_delivery *d) {
  held_unlink(c, d);
  sluice__bound_release(&c->bound, d->mem);
  if (atomic_load(&d->state) == DS_ABANDONED) c->abandoned--;
  atomic_store_explicit(&c->n_inflight, c->bound.count, memory_order_relaxed);
  atomic_store_explicit(&c->n_inflight_bytes, c->bound.bytes,
                        memory_order_relaxed);
  slot_put(c, d);
}

/* ---- public delivery API ------------------------------------------------- */

const sluice_message *sluice_delivery_message(const sluice_delivery *d) {
  return d ? &d->msg : NULL;
}

void sluice_delivery_enter(sluice_delivery *d) {
  if (d && d->c->has_hooks && d->c->hooks.resume)
    d->c->hooks.resume(d->c->hooks.user, d->hook_token);
}

void sluice_delivery_leave(sluice_delivery *d) {
  if (d && d->c->has_hooks && d->c->hooks.suspend)
    d->c->hooks.suspend(d->c->hooks.user, d->hook_token);
}

static int valid_final(int outcome) {
  return outcome == SLUICE_ACK || outcome == SLUICE_NACK ||
         outcome == SLUICE_REJECT;
}

/* A delivery whose connection died: its tag means nothing on the next
 * channel and the broker redelivers the message. Never in autoAck mode: the
 * broker settled the message when it sent it and will not send it again, so
 * what sluice holds must still be handled. Any thread. */
static int is_stale(sluice_consumer *c, const sluice_delivery *d) {
  return c->o.ack_mode == SLUICE_ACK_MANUAL &&
         d->msg.generation != atomic_load(&c->generation);
}

/* Final step of every handled delivery, on the completing thread. */
static void complete_now(sluice_consumer *c, sluice_delivery *d, int outcome) {
  d->outcome = outcome;
  int stale = is_stale(c, d);
  if (c->has_hooks && c->hooks.end && d->hook_token)
    c->hooks.end(c->hooks.user, d->hook_token, &d->info,
                 stale ? SLUICE_OUTCOME_STALE : outcome);
  atomic_fetch_sub_explicit(&c->n_in_handler, 1, memory_order_relaxed);
  if (on_loop_thread(c)) {
    process_completion(c, d);
    return;
  }
  pthread_mutex_lock(&c->cq_mu);
  int was_empty = c->cq_head == NULL;
  d->qnext = NULL;
  if (c->cq_tail)
    c->cq_tail->qnext = d;
  else
    c->cq_head = d;
  c->cq_tail = d;
  pthread_mutex_unlock(&c->cq_mu);
  if (was_empty && c->wake_fd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(c->wake_fd, &one, sizeof(one));
    (void)w; /* EAGAIN: the counter is already non-zero, a wake is due */
  }
}

int sluice_delivery_done(sluice_delivery *d, int outcome) {
  if (!d) return SLUICE_EINVAL;
  if (!valid_final(outcome)) return SLUICE_EINVAL;
  sluice_consumer *c = d->c;
  int st = DS_DEFERRED;
  if (atomic_compare_exchange_strong(&d->state, &st, DS_COMPLETING)) {
    int stale = is_stale(c, d);
    complete_now(c, d, outcome);
    return stale ? SLUICE_ESTALE : 0;
  }
  if (st == DS_HANDLER) {
    /* Completed from another thread before the handler returned DEFER: the
     * handler's return does the rest, so the slot is never recycled while
     * the handler still runs. */
    d->early_outcome = outcome;
    if (atomic_compare_exchange_strong(&d->state, &st, DS_HANDLER_DONE))
      return 0;
  }
  sluice__log(c, SLUICE_LOG_WARN,
              "sluice_delivery_done() on a delivery that is not deferred "
              "(completed twice?)");
  return SLUICE_EALREADY;
}

void sluice__run_handler(sluice_consumer *c, sluice_delivery *d) {
  if (is_stale(c, d)) {
    /* Its connection died while it waited for a worker: the broker will
     * redeliver it; running the handler now would process it twice. */
    atomic_store(&d->state, DS_HANDLER);
    atomic_fetch_add_explicit(&c->n_in_handler, 1, memory_order_relaxed);
    atomic_store(&d->state, DS_COMPLETING);
    complete_now(c, d, SLUICE_NACK);
    return;
  }
  atomic_store(&d->state, DS_HANDLER);
  uint64_t n = atomic_fetch_add_explicit(&c->n_in_handler, 1,
                                         memory_order_relaxed) + 1;
  counter_max(&c->n_max_in_handler, n);
  sluice__cb_frame f;
  sluice__cb_enter(&f, c);
  if (c->has_hooks && c->hooks.begin)
    d->hook_token = c->hooks.begin(c->hooks.user, &d->info);
  int rc = d->sub->handler(d, &d->msg, d->sub->user);
  if (c->has_hooks && c->hooks.suspend)
    c->hooks.suspend(c->hooks.user, d->hook_token);
  sluice__cb_leave(&f);

  if (rc == SLUICE_DEFER) {
    int st = DS_HANDLER;
    if (atomic_compare_exchange_strong(&d->state, &st, DS_DEFERRED)) return;
    /* st == DS_HANDLER_DONE: done() already ran on another thread */
    atomic_store(&d->state, DS_COMPLETING);
    complete_now(c, d, d->early_outcome);
    return;
  }
  int st = atomic_exchange(&d->state, DS_COMPLETING);
  if (st == DS_HANDLER_DONE) {
    sluice__log(c, SLUICE_LOG_WARN,
                "handler returned %d after sluice_delivery_done(); the "
                "first completion wins",
                rc);
    complete_now(c, d, d->early_outcome);
    return;
  }
  if (!valid_final(rc)) {
    atomic_fetch_add(&c->n_errors, 1);
    sluice__log(c, SLUICE_LOG_ERROR,
                "handler for queue '%s' returned invalid value %d; message "
                "requeued (nack)",
                d->msg.queue, rc);
    rc = SLUICE_OUTCOME_ERROR;
  }
  complete_now(c, d, rc);
}

/* ---- acks ---------------------------------------------------------------- */

static int writable(int fd) {
  struct pollfd p = {fd, POLLOUT, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
}

/* Bytes that may be written after poll() said POLLOUT without asking again.
 * POLLOUT on TCP means at least a third of the send buffer is free (4 KiB
 * buffers at the very least), so 1 KiB of 21-byte ack frames cannot block,
 * and one poll(2) serves ~48 acks instead of one. */
#define WRITE_BUDGET 1024
#define ACK_FRAME_BYTES 21

static int emit_ack(void *user, uint64_t tag, ackq_kind kind, int multiple,
                    size_t count) {
  sluice_consumer *c = user;
  if (c->write_budget < ACK_FRAME_BYTES) {
    if (!writable(c->fd)) return 1;
    c->write_budget = WRITE_BUDGET;
  }
  c->write_budget -= ACK_FRAME_BYTES;
  int st;
  switch (kind) {
    case ACKQ_ACK:
      st = amqp_basic_ack(c->conn, SLUICE_CONSUME_CHANNEL, tag, multiple);
      if (st == 0) atomic_fetch_add(&c->n_acked, count);
      break;
    case ACKQ_NACK:
      st = amqp_basic_nack(c->conn, SLUICE_CONSUME_CHANNEL, tag, multiple, 1);
      if (st == 0) atomic_fetch_add(&c->n_nacked, count);
      break;
    default:
      st = amqp_basic_reject(c->conn, SLUICE_CONSUME_CHANNEL, tag, 0);
      if (st == 0) atomic_fetch_add(&c->n_rejected, count);
      break;
  }
  if (st != 0) return -1;
  atomic_fetch_add_explicit(&c->n_ack_frames, 1, memory_order_relaxed);
  return 0;
}

static void flush_acks(sluice_consumer *c) {
  if (!c->connected || c->acks.n == 0) return;
  uint64_t min_out = c->held_head ? c->held_head->msg.delivery_tag : UINT64_MAX;
  int rc = sluice__ackq_flush(&c->acks, min_out, emit_ack, c);
  if (rc < 0 && c->acks.n > 0) {
    if (!writable(c->fd) && c->connected) {
      if (!c->want_write) {
        event_add(c->ev_write, NULL);
        c->want_write = 1;
      }
      return;
    }
    sluice__conn_lost(c, SLUICE_ESOCKET);
    return;
  }
  if (c->ack_timer_on) {
    event_del(c->ev_ack);
    c->ack_timer_on = 0;
  }
}

static void queue_ack(sluice_consumer *c, uint64_t tag, ackq_kind kind) {
  if (sluice__ackq_push(&c->acks, tag, kind) != 0) {
    /* Out of memory for one entry: send now rather than lose it. */
    flush_acks(c);
    if (sluice__ackq_push(&c->acks, tag, kind) != 0) return;
  }
  if (c->acks.n >= c->o.ack_batch) {
    flush_acks(c);
  } else if (!c->ack_timer_on) {
    struct timeval tv = {c->o.ack_flush_ms / 1000,
                         (c->o.ack_flush_ms % 1000) * 1000};
    event_add(c->ev_ack, &tv);
    c->ack_timer_on = 1;
  }
}

static void on_ack_timer(evutil_socket_t fd, short what, void *arg) {
  sluice_consumer *c = arg;
  c->ack_timer_on = 0;
  flush_acks(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg) {
  sluice_consumer *c = arg;
  event_del(c->ev_write);
  c->want_write = 0;
  flush_acks(c);
}

/* ---- completion (loop thread) -------------------------------------------- */

static void process_completion(sluice_consumer *c, sluice_delivery *d) {
  int outcome = d->outcome;
  int stale = c->o.ack_mode == SLUICE_ACK_MANUAL &&
              (!c->connected || d->on_stale ||
               d->msg.generation != atomic_load(&c->generation));
  uint64_t tag = d->msg.delivery_tag;
  if (outcome == SLUICE_OUTCOME_ERROR) {
    sluice_event ev = {.type = SLUICE_EV_HANDLER_ERROR,
                       .err = SLUICE_EHANDLER,
                       .queue = d->msg.queue,
                       .generation = d->msg.generation};
    sluice__emit(c, &ev);
  }
  release(c, d);
  if (stale) {
    atomic_fetch_add(&c->n_stale, 1);
  } else if (c->o.ack_mode == SLUICE_ACK_MANUAL) {
    queue_ack(c, tag,
              outcome == SLUICE_ACK      ? ACKQ_ACK
              : outcome == SLUICE_REJECT ? ACKQ_REJECT
                                         : ACKQ_NACK);
  } else {
    /* autoAck: the broker settled it on delivery; count the outcome. */
    switch (outcome) {
      case SLUICE_ACK:
        atomic_fetch_add(&c->n_acked, 1);
        break;
      case SLUICE_REJECT:
        atomic_fetch_add(&c->n_rejected, 1);
        break;
      default:
        atomic_fetch_add(&c->n_nacked, 1);
        break;
    }
  }
  update_pause(c);
  if (c->stopping) check_stop(c);
}

static void drain_completions(sluice_consumer *c) {
  pthread_mutex_lock(&c->cq_mu);
  sluice_delivery *d = c->cq_head;
  c->cq_head = c->cq_tail = NULL;
  pthread_mutex_unlock(&c->cq_mu);
  while (d) {
    sluice_delivery *next = d->qnext;
    process_completion(c, d);
    d = next;
  }
}

/* Take back the deliveries still waiting for a worker: they stay held,
 * unacknowledged, until released (the broker requeues them). */
static void abandon_queued(sluice_consumer *c) {
  sluice_delivery *q = sluice__workers_take_all(c);
  while (q) {
    sluice_delivery *next = q->qnext;
    atomic_store(&q->state, DS_ABANDONED);
    c->abandoned++;
    q = next;
  }
}

static void begin_stop(sluice_consumer *c) {
  c->stopping = 1;
  c->stop_deadline_ms = sluice__now_ms() + c->o.stop_timeout_ms;
  sluice__log(c, SLUICE_LOG_INFO, "stopping: %zu deliveries held",
              c->bound.count);
  if (c->ev_retry) event_del(c->ev_retry);
  if (c->connected) {
    for (int i = 0; i < SLUICE_MAX_SUBS; i++) {
      struct sub *s = &c->subs[i];
      if (!s->used || !s->active) continue;
      amqp_basic_cancel_t m;
      memset(&m, 0, sizeof(m));
      m.consumer_tag = amqp_cstring_bytes(s->tag);
      if (amqp_send_method(c->conn, SLUICE_CONSUME_CHANNEL,
                           AMQP_BASIC_CANCEL_METHOD, &m) != 0) {
        sluice__conn_lost(c, SLUICE_ESOCKET);
        return;
      }
    }
  }
  /* Not started yet: leave them unacked; the broker requeues them when
   * the channel closes. */
  if (c->o.ack_mode == SLUICE_ACK_MANUAL) abandon_queued(c);
  struct timeval tv = {0, 50 * 1000};
  event_add(c->ev_stop, &tv);
  check_stop(c);
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {
  sluice_consumer *c = arg;
  uint64_t v;
  ssize_t r = read(c->wake_fd, &v, sizeof(v));
  (void)r;
  drain_completions(c);
  if (atomic_load(&c->stop_requested) && !c->stopping && !c->stopped)
    begin_stop(c);
}

/* ---- reading ------------------------------------------------------------- */

static void update_pause(sluice_consumer *c) {
  switch (sluice__bound_update(&c->bound)) {
    case BOUND_PAUSE:
      atomic_store(&c->n_read_pauses, c->bound.pauses);
      if (c->reading) {
        event_del(c->ev_read);
        c->reading = 0;
      }
      break;
    case BOUND_RESUME:
      if (c->connected) sluice__kick_read(c);
      break;
  }
}

/* Read again soon without waiting for the socket. A zero timeout rather than
 * event_active(): libevent runs events activated from a callback in the same
 * pass, so a busy stream would starve the wake-up and timer events. */
static void schedule_drain(sluice_consumer *c) {
  static const struct timeval zero = {0, 0};
  if (c->ev_drain && !evtimer_pending(c->ev_drain, NULL))
    evtimer_add(c->ev_drain, &zero);
}

void sluice__kick_read(sluice_consumer *c) {
  if (!c->connected || c->bound.full || !c->ev_read) return;
  if (!c->reading) {
    event_add(c->ev_read, NULL);
    c->reading = 1;
  }
  /* Frames may sit in rabbitmq-c's buffer while the socket is quiet
   * (FACTS.md, "Driving rabbitmq-c" 2 and 3). */
  if (amqp_data_in_buffer(c->conn) || amqp_frames_enqueued(c->conn))
    schedule_drain(c);
}

static struct sub *sub_by_tag(sluice_consumer *c, amqp_bytes_t tag) {
  for (int i = 0; i < SLUICE_MAX_SUBS; i++) {
    struct sub *s = &c->subs[i];
    if (s->used && s->tag && strlen(s->tag) == tag.len &&
        memcmp(s->tag, tag.bytes, tag.len) == 0)
      return s;
  }
  return NULL;
}

static void copy_shortstr(char *dst, amqp_bytes_t b) {
  size_t n = b.len < 255 ? b.len : 255;
  if (n) memcpy(dst, b.bytes, n);
  dst[n] = '\0';
}

/* Settle a delivery that never reaches a handler (too big, unknown tag). */
static void settle_unhandled(sluice_consumer *c, sluice_delivery *d,
                             ackq_kind kind) {
  uint64_t tag = d->msg.delivery_tag;
  release(c, d);
  if (c->o.ack_mode == SLUICE_ACK_MANUAL) queue_ack(c, tag, kind);
  update_pause(c);
}

/* AUTO mode, stop past its deadline: a delivery the broker settled that no
 * handler will take goes to the application (or is counted and logged). */
static void hand_off(sluice_consumer *c, sluice_delivery *d) {
  atomic_fetch_add(&c->n_dropped, 1);
  if (c->o.on_abandoned) {
    sluice__cb_frame f;
    sluice__cb_enter(&f, c);
    c->o.on_abandoned(c, &d->msg, c->o.abandoned_user);
    sluice__cb_leave(&f);
  }
  release(c, d);
}

static void dispatch(sluice_consumer *c, sluice_delivery *d) {
  d->msg.body_len = d->body_got;
  if (d->msg.body) ((char *)d->msg.body)[d->body_got] = '\0';
  if (d->too_big) {
    atomic_fetch_add(&c->n_too_big, 1);
    sluice__log(c, SLUICE_LOG_ERROR,
                "message of %zu bytes on queue '%s' exceeds max_body %zu: "
                "rejected (dead-lettered if the queue has a DLX)",
                d->body_size, d->msg.queue, c->o.max_body);
    sluice_event ev = {.type = SLUICE_EV_REJECTED_BIG,
                       .err = SLUICE_ETOOBIG,
                       .queue = d->msg.queue,
                       .generation = d->msg.generation};
    sluice__emit(c, &ev);
    settle_unhandled(c, d, ACKQ_REJECT);
    return;
  }
  atomic_fetch_add_explicit(&c->n_delivered, 1, memory_order_relaxed);
  if (d->msg.redelivered) atomic_fetch_add(&c->n_redelivered, 1);
  if (c->stopping && c->o.ack_mode == SLUICE_ACK_MANUAL) {
    atomic_store(&d->state, DS_ABANDONED);
    c->abandoned++;
    return;
  }
  if (c->draining) {
    hand_off(c, d);
    return;
  }
  d->info.queue = d->msg.queue;
  d->info.delivery_tag = d->msg.delivery_tag;
  d->info.generation = d->msg.generation;
  d->info.seq = atomic_fetch_add(&c->seq, 1) + 1;
  d->info.body_len = d->msg.body_len;
  if (c->n_threads > 0) {
    atomic_store(&d->state, DS_QUEUED);
    sluice__workers_push(c, d);
  } else {
    sluice__run_handler(c, d);
  }
}

static void on_deliver(sluice_consumer *c, amqp_basic_deliver_t *m) {
  sluice_delivery *d = slot_get(c);
  if (!d) {
    sluice__log(c, SLUICE_LOG_ERROR, "out of memory for a delivery");
    sluice__conn_lost(c, SLUICE_ENOMEM);
    return;
  }
  atomic_store(&d->state, DS_ASSEMBLING);
  copy_shortstr(c->asm_tag, m->consumer_tag);
  copy_shortstr(c->asm_exchange, m->exchange);
  copy_shortstr(c->asm_rk, m->routing_key);
  d->sub = sub_by_tag(c, m->consumer_tag);
  d->msg.delivery_tag = m->delivery_tag;
  d->msg.redelivered = m->redelivered;
  d->msg.generation = atomic_load(&c->generation);
  d->msg.queue = d->sub ? d->sub->queue : "";
  held_link(c, d);
  sluice__bound_hold(&c->bound);
  atomic_store_explicit(&c->n_inflight, c->bound.count, memory_order_relaxed);
  atomic_store_explicit(&c->n_max_inflight, c->bound.peak_count,
                        memory_order_relaxed);
  c->asm_d = d;
}

static int on_header(sluice_consumer *c, amqp_frame_t *f) {
  sluice_delivery *d = c->asm_d;
  amqp_basic_properties_t *p = f->payload.properties.decoded;
  uint64_t body = f->payload.properties.body_size;
  size_t strs = strlen(c->asm_tag) + strlen(c->asm_exchange) +
                strlen(c->asm_rk) + 3;
  size_t props = sluice__props_size(p);
  d->body_size = (size_t)body;
  d->too_big = body > c->o.max_body;
  size_t need = props + strs + (d->too_big ? 0 : (size_t)body) + 1;
  if (need > d->blk_cap) {
    free(d->blk);
    d->blk = malloc(need);
    d->blk_cap = d->blk ? need : 0;
    if (!d->blk) return SLUICE_ENOMEM;
  }
  /* props first (8-aligned), then the three strings, then the body */
  sluice__props_copy(p, &d->msg.props, d->blk);
  char *w = d->blk + props;
  size_t n = strlen(c->asm_tag) + 1;
  memcpy(w, c->asm_tag, n);
  d->msg.consumer_tag = w;
  w += n;
  n = strlen(c->asm_exchange) + 1;
  memcpy(w, c->asm_exchange, n);
  d->msg.exchange = w;
  w += n;
  n = strlen(c->asm_rk) + 1;
  memcpy(w, c->asm_rk, n);
  d->msg.routing_key = w;
  w += n;
  d->msg.body = w;
  charge(c, d, need);
  return 0;
}

static void delivery_complete(sluice_consumer *c) {
  sluice_delivery *d = c->asm_d;
  c->asm_d = NULL;
  if (!d->sub) {
    sluice__log(c, SLUICE_LOG_WARN,
                "delivery for unknown consumer tag '%s': requeued",
                d->msg.consumer_tag);
    settle_unhandled(c, d, ACKQ_NACK);
    return;
  }
  dispatch(c, d);
  update_pause(c);
}

static void on_broker_close(sluice_consumer *c, amqp_frame_t *f, int channel) {
  uint16_t code;
  amqp_bytes_t text;
  if (channel) {
    amqp_channel_close_t *m = f->payload.method.decoded;
    code = m->reply_code;
    text = m->reply_text;
  } else {
    amqp_connection_close_t *m = f->payload.method.decoded;
    code = m->reply_code;
    text = m->reply_text;
    amqp_connection_close_ok_t ok;
    memset(&ok, 0, sizeof(ok));
    amqp_send_method(c->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
  }
  c->last_close_code = code;
  snprintf(c->last_close_text, sizeof(c->last_close_text), "%.*s",
           (int)text.len, (const char *)text.bytes);
  int err = sluice__close_code_to_err(code, c->last_close_text);
  if (channel && err == SLUICE_ECLOSED) err = SLUICE_ECHANNEL;
  sluice__log(c, SLUICE_LOG_WARN, "broker closed the %s: %u %s",
              channel ? "channel" : "connection", code, c->last_close_text);
  /* A closed consuming channel takes its deliveries' tags with it; start
   * over on a fresh connection (a new generation). */
  sluice__conn_lost(c, err);
}

static void on_server_cancel(sluice_consumer *c, amqp_basic_cancel_t *m) {
  struct sub *s = sub_by_tag(c, m->consumer_tag);
  if (!m->nowait) {
    amqp_basic_cancel_ok_t ok;
    ok.consumer_tag = m->consumer_tag;
    amqp_send_method(c->conn, SLUICE_CONSUME_CHANNEL,
                     AMQP_BASIC_CANCEL_OK_METHOD, &ok);
  }
  if (!s) return;
  s->active = 0;
  s->cancelled = 1;
  sluice__log(c, SLUICE_LOG_WARN,
              "the broker cancelled the subscription to '%s' (queue deleted?)",
              s->queue);
  sluice_event ev = {.type = SLUICE_EV_CANCELLED,
                     .err = SLUICE_ENOTFOUND,
                     .queue = s->queue,
                     .generation = atomic_load(&c->generation)};
  sluice__emit(c, &ev);
}

static void on_method(sluice_consumer *c, amqp_frame_t *f) {
  amqp_method_number_t id = f->payload.method.id;
  if (f->channel == 0) {
    switch (id) {
      case AMQP_CONNECTION_CLOSE_METHOD:
        on_broker_close(c, f, 0);
        return;
      case AMQP_CONNECTION_BLOCKED_METHOD: {
        amqp_connection_blocked_t *m = f->payload.method.decoded;
        char reason[256];
        snprintf(reason, sizeof(reason), "%.*s", (int)m->reason.len,
                 (const char *)m->reason.bytes);
        c->blocked = 1;
        sluice_event ev = {.type = SLUICE_EV_BLOCKED,
                           .err = SLUICE_EBLOCKED,
                           .text = reason,
                           .generation = atomic_load(&c->generation)};
        sluice__emit(c, &ev);
        return;
      }
      case AMQP_CONNECTION_UNBLOCKED_METHOD: {
        c->blocked = 0;
        sluice_event ev = {.type = SLUICE_EV_UNBLOCKED,
                           .generation = atomic_load(&c->generation)};
        sluice__emit(c, &ev);
        return;
      }
      default:
        sluice__log(c, SLUICE_LOG_DEBUG, "ignored method 0x%08x on channel 0",
                    id);
        return;
    }
  }
  if (f->channel != SLUICE_CONSUME_CHANNEL) {
    if (id == AMQP_CHANNEL_CLOSE_METHOD) {
      /* The topology channel closed outside a call: reopen at next use. */
      on_broker_close(c, f, 1);
    }
    return;
  }
  switch (id) {
    case AMQP_BASIC_DELIVER_METHOD:
      if (c->asm_d) {
        sluice__log(c, SLUICE_LOG_ERROR, "basic.deliver inside a delivery");
        sluice__conn_lost(c, SLUICE_EPROTO);
        return;
      }
      on_deliver(c, f->payload.method.decoded);
      return;
    case AMQP_BASIC_CANCEL_METHOD:
      on_server_cancel(c, f->payload.method.decoded);
      return;
    case AMQP_BASIC_CANCEL_OK_METHOD: {
      amqp_basic_cancel_ok_t *m = f->payload.method.decoded;
      struct sub *s = sub_by_tag(c, m->consumer_tag);
      if (s) s->active = 0;
      if (c->stopping) check_stop(c);
      return;
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
      on_broker_close(c, f, 1);
      return;
    default:
      sluice__log(c, SLUICE_LOG_DEBUG, "ignored method 0x%08x", id);
      return;
  }
}

static void handle_frame(sluice_consumer *c, amqp_frame_t *f) {
  switch (f->frame_type) {
    case AMQP_FRAME_METHOD:
      on_method(c, f);
      return;
    case AMQP_FRAME_HEADER:
      if (!c->asm_d || c->asm_d->msg.body ||
          f->channel != SLUICE_CONSUME_CHANNEL) {
        sluice__log(c, SLUICE_LOG_ERROR, "content header out of place");
        sluice__conn_lost(c, SLUICE_EPROTO);
        return;
      }
      if (on_header(c, f) != 0) {
        sluice__conn_lost(c, SLUICE_ENOMEM);
        return;
      }
      if (c->asm_d->body_size == 0) delivery_complete(c);
      return;
    case AMQP_FRAME_BODY: {
      sluice_delivery *d = c->asm_d;
      if (!d || !d->msg.body || f->channel != SLUICE_CONSUME_CHANNEL) {
        sluice__log(c, SLUICE_LOG_ERROR, "content body out of place");
        sluice__conn_lost(c, SLUICE_EPROTO);
        return;
      }
      size_t len = f->payload.body_fragment.len;
      if (len > d->body_size - d->body_got) {
        sluice__log(c, SLUICE_LOG_ERROR, "body longer than announced");
        sluice__conn_lost(c, SLUICE_EPROTO);
        return;
      }
      if (!d->too_big)
        memcpy((char *)d->msg.body + d->body_got,
               f->payload.body_fragment.bytes, len);
      d->body_got += len;
      if (d->body_got == d->body_size) {
        if (d->too_big) d->body_got = 0;
        delivery_complete(c);
      }
      return;
    }
    default:
      return; /* heartbeats are consumed by rabbitmq-c */
  }
}

static void begin_stop(sluice_consumer *c);

static void read_frames(sluice_consumer *c) {
  int budget = READ_BUDGET;
  int got = 0;
  if (atomic_load_explicit(&c->stop_requested, memory_order_relaxed) &&
      !c->stopping && !c->stopped)
    begin_stop(c);
  while (budget-- > 0 && c->connected && !c->bound.full) {
    amqp_frame_t f;
    struct timeval tv = {0, 0};
    int st = amqp_simple_wait_frame_noblock(c->conn, &f, &tv);
    if (st == AMQP_STATUS_TIMEOUT) break;
    if (st != AMQP_STATUS_OK) {
      sluice__log(c, SLUICE_LOG_WARN, "connection lost: %s",
                  amqp_error_string2(st));
      sluice__conn_lost(c, sluice__amqp_status_to_err(st));
      return;
    }
    got = 1;
    handle_frame(c, &f);
    if (!c->stopping &&
        atomic_load_explicit(&c->stop_requested, memory_order_relaxed)) {
      /* An inline handler asked to stop: finish the delivery being read,
       * leave the rest to the broker. */
      if (!c->asm_d) {
        if (c->conn) amqp_maybe_release_buffers(c->conn);
        begin_stop(c);
        if (!c->connected) return;
        continue;
      }
    }
    /* Every frame was copied out: rabbitmq-c's pools can be recycled. */
    if (c->conn) amqp_maybe_release_buffers(c->conn);
  }
  if (got) c->last_rx_ms = sluice__now_ms();
  if (budget < 0 && c->connected && !c->bound.full &&
      (amqp_data_in_buffer(c->conn) || amqp_frames_enqueued(c->conn)))
    schedule_drain(c);
}

static void on_drain(evutil_socket_t fd, short what, void *arg) {
  read_frames(arg);
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
  read_frames(arg);
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg) {
  sluice_consumer *c = arg;
  if (!c->connected) return;
  if (!c->bound.full) {
    /* rabbitmq-c sends and checks heartbeats only inside its wait calls:
     * a quiet socket never wakes the read event, so drive it from here. */
    read_frames(c);
    return;
  }
  /* Reading is paused for back-pressure, so a close or a reset would wait
   * for the bound to free up: look at the socket without reading it. A
   * reset has thrown the unread bytes away anyway. After an orderly close,
   * MANUAL mode gives up the unread rest too (the broker redelivers all it
   * held), but autoAck keeps it: those messages will never be sent again,
   * and they are read once the handlers free the bound. */
  struct pollfd pf = {c->fd, POLLRDHUP, 0};
  if (poll(&pf, 1, 0) == 1) {
    int reset = (pf.revents & (POLLERR | POLLHUP)) != 0;
    if (reset || ((pf.revents & POLLRDHUP) &&
                  c->o.ack_mode == SLUICE_ACK_MANUAL)) {
      sluice__log(c, SLUICE_LOG_WARN,
                  "connection %s while reading was paused",
                  reset ? "reset" : "closed by the broker");
      sluice__conn_lost(c, reset ? SLUICE_ESOCKET : SLUICE_ECLOSED);
      return;
    }
  }
  /* Bytes waiting in the kernel prove the peer alive; otherwise apply the
   * two-interval rule ourselves. */
  int pending = 0;
  uint64_t now = sluice__now_ms();
  if ((ioctl(c->fd, FIONREAD, &pending) == 0 && pending > 0) ||
      amqp_data_in_buffer(c->conn))
    c->last_rx_ms = now;
  else if (now - c->last_rx_ms > 2000u * (uint64_t)c->heartbeat_s) {
    sluice__log(c, SLUICE_LOG_WARN, "no heartbeat for %llu ms: peer is gone",
                (unsigned long long)(now - c->last_rx_ms));
    sluice__conn_lost(c, SLUICE_EHEARTBEAT);
    return;
  }
  if (writable(c->fd)) {
    amqp_frame_t hb;
    memset(&hb, 0, sizeof(hb));
    hb.frame_type = AMQP_FRAME_HEARTBEAT;
    hb.channel = 0;
    if (amqp_send_frame(c->conn, &hb) != 0)
      sluice__conn_lost(c, SLUICE_ESOCKET);
  }
}

/* ---- connection lifecycle -------------------------------------------------*/

static int arm_connection(sluice_consumer *c) {
  if (!c->base) return 0;
  if (c->ev_read) event_free(c->ev_read);
  if (c->ev_write) event_free(c->ev_write);
  c->ev_read = event_new(c->base, c->fd, EV_READ | EV_PERSIST, on_read, c);
  c->ev_write = event_new(c->base, c->fd, EV_WRITE, on_write, c);
  if (!c->ev_read || !c->ev_write) return SLUICE_ENOMEM;
  c->reading = 0;
  c->want_write = 0;
  c->write_budget = 0;
  if (c->heartbeat_s > 0) {
    int ms = c->heartbeat_s * 500;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(c->ev_hb, &tv);
  }
  /* Held deliveries of a dead connection (deferred, in handlers) still
   * count: stay paused until they are done. */
  update_pause(c);
  sluice__kick_read(c);
  return 0;
}

/* Connect, set up the channel, declare the topology, subscribe. */
static int establish(sluice_consumer *c) {
  int rc = sluice__connect(c);
  if (rc) return rc;
  rc = sluice__setup_channel(c);
  for (struct topo *t = c->topo; !rc && t; t = t->next)
    rc = sluice__apply_topology(c, t);
  for (int i = 0; !rc && i < SLUICE_MAX_SUBS; i++)
    if (c->subs[i].used && !c->subs[i].cancelled)
      rc = sluice__consume(c, &c->subs[i]);
  if (rc) {
    sluice__disconnect(c, 0);
    return rc;
  }
  c->connected_at_ms = sluice__reconnect_now(c);
  return 0;
}

static void ev_del(struct event *ev) {
  if (ev) event_del(ev);
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
  uint16_t code = c->last_close_code;
  if (err != SLUICE_ECHANNEL && err != SLUICE_ECLOSED &&
      err != SLUICE_EAUTH && err != SLUICE_ENOTFOUND &&
      err != SLUICE_EBROKER && err != SLUICE_ECONFLICT &&
      err != SLUICE_EVHOST)
    code = 0; /* not a broker close */
  sluice__disconnect(c, 0);
  ev_del(c->ev_read);
  ev_del(c->ev_write);
  c->reading = c->want_write = 0;
  ev_del(c->ev_hb);
  ev_del(c->ev_ack);
  ev_del(c->ev_drain);
  c->ack_timer_on = 0;
  if (c->acks.n)
    sluice__log(c, SLUICE_LOG_INFO,
                "%zu completions not acknowledged before the connection "
                "closed: the broker redelivers them",
                c->acks.n);
  atomic_fetch_add(&c->n_stale, c->acks.n);
  sluice__ackq_reset(&c->acks);
  for (int i = 0; i < SLUICE_MAX_SUBS; i++) c->subs[i].active = 0;

  /* Deliveries of the dead generation. */
  if (c->asm_d) {
    c->asm_d = NULL; /* still on the held list; released below */
  }
  /* Manual mode: deliveries still waiting for a worker go back to the
   * broker (it redelivers them). AutoAck: the broker will never send them
   * again, so the workers still handle them (they land on the stale list
   * below, which only means "of a dead connection"). */
  if (c->o.ack_mode == SLUICE_ACK_MANUAL) abandon_queued(c);
  sluice_delivery *d = c->held_head;
  while (d) {
    sluice_delivery *next = d->next;
    int st = atomic_load(&d->state);
    if (st == DS_ASSEMBLING || st == DS_ABANDONED) {
      if (st == DS_ABANDONED) atomic_fetch_add(&c->n_stale, 1);
      release(c, d);
    } else {
      /* in a handler, deferred, or completing: finishes later as stale */
      held_unlink(c, d);
      d->on_stale = 1;
      d->prev = NULL;
      d->next = c->stale_head;
      if (c->stale_head) c->stale_head->prev = d;
      c->stale_head = d;
    }
    d = next;
  }
  update_pause(c);
  /* connection.blocked belonged to the dead connection; the next one says
   * again if the broker still has an alarm. */
  c->blocked = 0;

  sluice_event ev = {.type = SLUICE_EV_CLOSED,
                     .err = err,
                     .reply_code = code,
                     .text = code ? c->last_close_text : NULL,
                     .generation = gen};
  sluice__emit(c, &ev);
  sluice__registry_generation_died(c->registry, gen);

  if (c->stopping) {
    finish_stop(c, 0);
    return;
  }
  sluice__reconnect_schedule(c, err);
}

/* ---- topology and subscriptions ------------------------------------------ */

static int topo_add(sluice_consumer *c, struct topo *t) {
  if (c->connected) {
    int rc = sluice__apply_topology(c, t);
    sluice__kick_read(c);
    if (rc) {
      empty_amqp_pool(&t->pool);
      free(t);
      if (rc != SLUICE_ENOTFOUND && rc != SLUICE_ECONFLICT &&
          rc != SLUICE_ECHANNEL && c->started)
        sluice__conn_lost(c, rc);
      return rc;
    }
  }
  *c->topo_tail = t;
  c->topo_tail = &t->next;
  return 0;
}

static char *pool_str(amqp_pool_t *p, const char *s) {
  if (!s) s = "";
  size_t n = strlen(s) + 1;
  char *d = amqp_pool_alloc(p, n);
  if (d) memcpy(d, s, n);
  return d;
}

static struct topo *topo_new(enum topo_kind kind) {
  struct topo *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  t->kind = kind;
  init_amqp_pool(&t->pool, 1024);
  return t;
}

static void topo_free(struct topo *t) {
  empty_amqp_pool(&t->pool);
  free(t);
}

int sluice_consumer_declare_exchange(sluice_consumer *c,
                                     const sluice_exchange_decl *d) {
  if (!c || !d || !d->name || !d->name[0]) return SLUICE_EINVAL;
  struct topo *t = topo_new(TOPO_EXCHANGE);
  if (!t) return SLUICE_ENOMEM;
  t->name = pool_str(&t->pool, d->name);
  t->type = pool_str(&t->pool, d->type ? d->type : "direct");
  t->durable = d->durable;
  t->auto_delete = d->auto_delete;
  t->internal = d->internal;
  t->passive = d->passive;
  int rc = sluice__kv_to_table(&t->pool, d->args, d->n_args, &t->args);
  if (!rc && (!t->name || !t->type)) rc = SLUICE_ENOMEM;
  if (rc) {
    topo_free(t);
    return rc;
  }
  return topo_add(c, t);
}

int sluice_consumer_declare_queue(sluice_consumer *c,
                                  const sluice_queue_decl *d) {
  if (!c || !d || !d->name || !d->name[0]) return SLUICE_EINVAL;
  struct topo *t = topo_new(TOPO_QUEUE);
  if (!t) return SLUICE_ENOMEM;
  t->name = pool_str(&t->pool, d->name);
  t->durable = d->durable || d->quorum; /* quorum queues must be durable */
  t->exclusive = d->exclusive;
  t->auto_delete = d->auto_delete;
  t->passive = d->passive;
  int rc = sluice__queue_args(&t->pool, d, &t->args);
  if (!rc && !t->name) rc = SLUICE_ENOMEM;
  if (rc) {
    topo_free(t);
    return rc;
  }
  return topo_add(c, t);
}

int sluice_consumer_bind_queue(sluice_consumer *c, const char *queue,
                               const char *exchange, const char *routing_key,
                               const sluice_kv *args, size_t n_args) {
  if (!c || !queue || !queue[0] || !exchange) return SLUICE_EINVAL;
  struct topo *t = topo_new(TOPO_BIND);
  if (!t) return SLUICE_ENOMEM;
  t->name = pool_str(&t->pool, queue);
  t->exchange = pool_str(&t->pool, exchange);
  t->routing_key = pool_str(&t->pool, routing_key);
  int rc = sluice__kv_to_table(&t->pool, args, n_args, &t->args);
  if (!rc && (!t->name || !t->exchange || !t->routing_key)) rc = SLUICE_ENOMEM;
  if (rc) {
    topo_free(t);
    return rc;
  }
  return topo_add(c, t);
}

int sluice_consumer_purge_queue(sluice_consumer *c, const char *queue,
                                uint32_t *purged) {
  if (!c || !queue) return SLUICE_EINVAL;
  if (!c->connected) return SLUICE_ECLOSED;
  amqp_queue_purge_ok_t *ok =
      amqp_queue_purge(c->conn, SLUICE_TOPOLOGY_CHANNEL,
                       amqp_cstring_bytes(queue));
  int rc = sluice__rpc_result(c->conn, SLUICE_TOPOLOGY_CHANNEL, NULL, NULL, 0);
  if (rc == 0 && purged && ok) *purged = ok->message_count;
  sluice__kick_read(c);
  return rc;
}

int sluice_consumer_subscribe(sluice_consumer *c,
                              const sluice_subscribe_opts *o) {
  if (!c || !o || !o->queue || !o->queue[0] || !o->handler)
    return SLUICE_EINVAL;
  if (c->stopping || c->stopped) return SLUICE_ESTATE;
  struct sub *s = NULL;
  for (int i = 0; i < SLUICE_MAX_SUBS; i++) {
    if (!c->subs[i].used) {
      s = &c->subs[i];
      break;
    }
  }
  if (!s) return SLUICE_ELIMIT;
  char tag[256];
  if (o->consumer_tag) {
    if (strlen(o->consumer_tag) > 255) return SLUICE_EINVAL;
    snprintf(tag, sizeof(tag), "%s", o->consumer_tag);
  } else {
    snprintf(tag, sizeof(tag), "sluice.%ld.%u", (long)getpid(),
             ++c->tag_counter);
  }
  memset(s, 0, sizeof(*s));
  s->queue = xstrdup(o->queue);
  s->tag = xstrdup(o->consumer_tag ? o->consumer_tag : tag);
  if (!s->queue || !s->tag) {
    free(s->queue);
    free(s->tag);
    memset(s, 0, sizeof(*s));
    return SLUICE_ENOMEM;
  }
  s->handler = o->handler;
  s->user = o->user;
  s->exclusive = o->exclusive;
  s->priority = o->priority;
  s->used = 1;
  if (c->connected) {
    int rc = sluice__consume(c, s);
    sluice__kick_read(c);
    if (rc) {
      free(s->queue);
      free(s->tag);
      memset(s, 0, sizeof(*s));
      return rc;
    }
  }
  return 0;
}

/* ---- run / start / stop -------------------------------------------------- */

int sluice_consumer_connect(sluice_consumer *c) {
  if (!c) return SLUICE_EINVAL;
  if (c->connected) return SLUICE_ESTATE;
  if (c->stopped) return SLUICE_ESTATE;
  int rc = establish(c);
  if (rc == 0 && c->base) rc = arm_connection(c);
  return rc;
}

static void on_retry(evutil_socket_t fd, short what, void *arg);

/* Undo what start() set up on the event_base (not the connection). */
static void loop_teardown(sluice_consumer *c) {
  struct event **evs[] = {&c->ev_read,  &c->ev_write, &c->ev_wake,
                          &c->ev_hb,    &c->ev_ack,   &c->ev_stop,
                          &c->ev_retry, &c->ev_drain};
  for (size_t i = 0; i < sizeof(evs) / sizeof(*evs); i++) {
    if (*evs[i]) event_free(*evs[i]);
    *evs[i] = NULL;
  }
  if (c->wake_fd >= 0) close(c->wake_fd);
  c->wake_fd = -1;
  c->reading = c->want_write = c->ack_timer_on = 0;
}

int sluice_consumer_start(sluice_consumer *c, struct event_base *base) {
  if (!c || !base) return SLUICE_EINVAL;
  if (c->started || c->stopped) return SLUICE_ESTATE;
  c->base = base;
  c->loop_thread = pthread_self();
  int rc = SLUICE_ENOMEM;
  c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (c->wake_fd < 0) {
    rc = SLUICE_ESOCKET;
    goto fail;
  }
  c->ev_wake = event_new(base, c->wake_fd, EV_READ | EV_PERSIST, on_wake, c);
  c->ev_hb = event_new(base, -1, EV_PERSIST, on_heartbeat, c);
  c->ev_ack = evtimer_new(base, on_ack_timer, c);
  c->ev_stop = event_new(base, -1, EV_PERSIST, on_stop_timer, c);
  c->ev_retry = evtimer_new(base, on_retry, c);
  c->ev_drain = evtimer_new(base, on_drain, c);
  if (!c->ev_wake || !c->ev_hb || !c->ev_ack || !c->ev_stop || !c->ev_retry ||
      !c->ev_drain)
    goto fail;
  event_add(c->ev_wake, NULL);
  if ((rc = sluice__workers_start(c))) goto fail;
  c->started = 1;
  if (!c->connected) {
    rc = establish(c);
    if (rc) {
      if (!c->o.reconnect.enabled || !sluice__retryable(rc)) {
        c->started = 0;
        sluice__workers_stop(c);
        goto fail;
      }
      sluice__reconnect_schedule(c, rc);
      return 0;
    }
  }
  if ((rc = arm_connection(c))) {
    c->started = 0;
    sluice__workers_stop(c);
    goto fail;
  }
  sluice_event ev = {.type = SLUICE_EV_CONNECTED,
                     .generation = atomic_load(&c->generation)};
  sluice__emit(c, &ev);
  /* If stop() came before start(), honour it now. */
  if (atomic_load(&c->stop_requested)) sluice_consumer_stop(c);
  return 0;
fail:
  loop_teardown(c);
  c->base = NULL;
  return rc;
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
  sluice_consumer *c = arg;
  if (c->stopping || c->stopped) return;
  int rc = establish(c);
  if (rc) {
    sluice__reconnect_schedule(c, rc);
    return;
  }
  if (arm_connection(c) != 0) {
    sluice__conn_lost(c, SLUICE_ENOMEM);
    return;
  }
  sluice__reconnect_connected(c);
}

int sluice_consumer_run(sluice_consumer *c) {
  if (!c) return SLUICE_EINVAL;
  if (c->started || c->stopped) return SLUICE_ESTATE;
  struct event_base *base = event_base_new();
  if (!base) return SLUICE_ENOMEM;
  c->own_base = 1;
  int rc = sluice_consumer_start(c, base);
  if (rc) {
    c->base = NULL;
    c->own_base = 0;
    event_base_free(base);
    return rc;
  }
  while (!c->stopped) {
    if (event_base_dispatch(base) < 0) {
      finish_stop(c, SLUICE_EIO);
      break;
    }
    if (!c->stopped && event_base_got_break(base) == 0 &&
        event_base_got_exit(base) == 0) {
      /* No events left (cannot happen while wake_fd is armed). */
      finish_stop(c, SLUICE_ESTATE);
    }
  }
  return c->run_result;
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

static size_t busy_count(const sluice_consumer *c) {
  return c->bound.count - c->abandoned - (c->asm_d ? 1 : 0);
}

static void check_stop(sluice_consumer *c) {
  if (!c->stopping || c->stopped) return;
  int subs_open = 0;
  for (int i = 0; i < SLUICE_MAX_SUBS; i++)
    if (c->subs[i].used && c->subs[i].active) subs_open = 1;
  int idle = busy_count(c) == 0 && !subs_open;
  if (!idle && c->connected && !c->draining &&
      c->o.ack_mode == SLUICE_ACK_AUTO &&
      sluice__now_ms() >= c->stop_deadline_ms) {
    /* The broker settled everything it sent: what the handlers could not
     * take in time is read off the socket until the cancel-ok and handed to
     * on_abandoned, with as long again as a budget. */
    c->draining = 1;
    c->stop_deadline_ms = sluice__now_ms() + c->o.stop_timeout_ms;
    sluice_delivery *q = sluice__workers_take_all(c);
    while (q) {
      sluice_delivery *next = q->qnext;
      hand_off(c, q);
      q = next;
    }
    update_pause(c);
    sluice__kick_read(c);
    idle = busy_count(c) == 0 && !subs_open;
  }
  if (idle || !c->connected || sluice__now_ms() >= c->stop_deadline_ms) {
    if (!idle)
      sluice__log(c, SLUICE_LOG_WARN,
                  "stop timeout: %zu deliveries still in handlers; the "
                  "broker requeues them",
                  busy_count(c));
    finish_stop(c, 0);
  }
}

static void on_stop_timer(evutil_socket_t fd, short what, void *arg) {
  check_stop(arg);
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
  if (c->connected) {
    /* Last acks: wait for the socket within what is left of the budget. */
    uint64_t now = sluice__now_ms();
    int left = c->stop_deadline_ms > now ? (int)(c->stop_deadline_ms - now)
                                         : 100;
    while (c->acks.n > 0 && c->connected) {
      struct pollfd p = {c->fd, POLLOUT, 0};
      if (poll(&p, 1, left) != 1) break;
      uint64_t min_out =
          c->held_head ? c->held_head->msg.delivery_tag : UINT64_MAX;
      if (sluice__ackq_flush(&c->acks, min_out, emit_ack, c) < 0 &&
          writable(c->fd))
        break; /* a send failed */
    }
    if (c->acks.n)
      sluice__log(c, SLUICE_LOG_WARN, "%zu acks could not be sent at stop",
                  c->acks.n);
    struct timeval tv = {left / 1000 + 1, 0};
    amqp_set_rpc_timeout(c->conn, &tv);
    sluice__disconnect(c, 1);
  }
  if (c->ev_read) event_del(c->ev_read);
  if (c->ev_write) event_del(c->ev_write);
  c->reading = c->want_write = 0;
  if (c->ev_hb) event_del(c->ev_hb);
  if (c->ev_ack) event_del(c->ev_ack);
  if (c->ev_stop) event_del(c->ev_stop);
  if (c->ev_retry) event_del(c->ev_retry);
  if (c->ev_drain) event_del(c->ev_drain);
  c->ack_timer_on = 0;
  atomic_fetch_add(&c->generation, 1); /* late completions are stale */
  sluice__workers_stop(c);
  drain_completions(c);
  /* Abandoned and unfinished deliveries are the broker's again. */
  sluice_delivery *d = c->held_head;
  while (d) {
    sluice_delivery *next = d->next;
    if (atomic_load(&d->state) == DS_ABANDONED ||
        atomic_load(&d->state) == DS_ASSEMBLING)
      release(c, d);
    d = next;
  }
  c->asm_d = NULL;
  atomic_store(&c->stopped, 1);
  sluice_event ev = {.type = SLUICE_EV_STOPPED,
                     .err = result,
                     .generation = atomic_load(&c->generation)};
  sluice__emit(c, &ev);
  if (c->own_base && c->base) event_base_loopbreak(c->base);
}

void sluice__finish(sluice_consumer *c, int result) { finish_stop(c, result); }

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
}

int sluice_consumer_last_close(const sluice_consumer *c, char *buf,
                               size_t buflen) {
  if (!c) return 0;
  if (buf && buflen) snprintf(buf, buflen, "%s", c->last_close_text);
  return c->last_close_code;
}

struct event_base *sluice_consumer_base(sluice_consumer *c) {
  return c ? c->base : NULL;
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
  if (c->started && !c->stopped) finish_stop(c, 0);
  if (c->connected) sluice__disconnect(c, 1);
  sluice__workers_stop(c);
  drain_completions(c);
  while (c->held_head) release(c, c->held_head);
  while (c->stale_head) release(c, c->stale_head);
  while (c->pool) {
    sluice_delivery *d = c->pool;
    c->pool = d->pool_next;
    free(d->blk);
    free(d);
  }
  loop_teardown(c);
  if (c->own_base && c->base) event_base_free(c->base);
  while (c->topo) {
    struct topo *t = c->topo;
    c->topo = t->next;
    topo_free(t);
  }
  for (int i = 0; i < SLUICE_MAX_SUBS; i++) {
    free(c->subs[i].queue);
    free(c->subs[i].tag);
  }
  for (size_t i = 0; i < c->n_uris; i++) free(c->uris ? c->uris[i] : NULL);
  free(c->uris);
  free(c->conn_name);
  sluice__registry_free(c->registry);
  sluice__ackq_free(&c->acks);
  pthread_mutex_destroy(&c->cq_mu);
  pthread_mutex_destroy(&c->wq_mu);
  pthread_cond_destroy(&c->wq_cv);
  free(c);
}
