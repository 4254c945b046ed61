/* SPDX-License-Identifier: MIT */
/* A delivery from its slot to its ack: the slot pool and the held list,
 * dispatch to a handler (inline or a worker), completion from any thread,
 * and the acks written back to the broker. frames.c hands over each
 * delivery once assembled (sluice__dispatch).
 *
 * Only the loop thread touches the connection. Worker threads and deferred
 * completions hand finished deliveries back through a mutex-protected queue
 * and an eventfd. See docs/architecture.md. */
#include <poll.h>
#include <stdio.h>
#include <unistd.h>

#include "internal.h"

#define SLOT_KEEP_BYTES (64 * 1024) /* larger blocks are freed after use */

static void process_completion(sluice_consumer *c, sluice_delivery *d);
static void queue_ack(sluice_consumer *c, uint64_t tag, sluice__ackq_kind kind);

static void counter_max(_Atomic uint64_t *m, uint64_t v) {
  uint64_t cur = atomic_load_explicit(m, memory_order_relaxed);
  while (v > cur && !atomic_compare_exchange_weak(m, &cur, v)) {
  }
}

static int on_loop_thread(const sluice_consumer *c) {
  return c->started && pthread_equal(pthread_self(), c->loop_thread);
}

/* ---- slots and the held list --------------------------------------------- */

/* A new slot takes an entry of the handle table for its life; the entry's
 * use count goes on from its previous owner's, so no handle of that owner
 * matches it. */
static sluice_delivery *slot_new(sluice_consumer *c) {
  sluice_delivery *d = calloc(1, sizeof(*d));
  if (!d) return NULL;
  if (sluice__handle_claim(d, &d->hidx)) {
    free(d);
    return NULL;
  }
  d->c = c;
  d->he = sluice__handle_entry(d->hidx);
  d->use = sluice__word_use(atomic_load(&d->he->word));
  return d;
}

static void slot_free(sluice_delivery *d) {
  sluice__handle_release(d->hidx); /* every handle to it goes stale */
  free(d->blk);
  free(d);
}

static sluice_delivery *slot_get(sluice_consumer *c) {
  sluice_delivery *d = c->pool;
  if (d) {
    c->pool = d->pool_next;
  } else if (!(d = slot_new(c))) {
    return NULL;
  }
  d->pool_next = NULL;
  d->prev = d->next = d->qnext = NULL;
  d->hook_token = NULL;
  d->outcome = 0;
  d->too_big = 0;
  d->on_stale = 0;
  d->body_got = d->body_size = d->mem = 0;
  memset(&d->msg, 0, sizeof(d->msg));
  memset(&d->info, 0, sizeof(d->info));
  return d;
}

/* Return a slot to the pool. Its next delivery is one more use: from here
 * on, a handle to the delivery it served (a second sluice_delivery_done(),
 * a late sluice_delivery_message()) matches no delivery and acts on
 * nothing, whichever delivery the slot serves next (handle.h). */
static void slot_put(sluice_consumer *c, sluice_delivery *d) {
  if (d->blk_cap > SLOT_KEEP_BYTES) {
    free(d->blk);
    d->blk = NULL;
    d->blk_cap = 0;
  }
  d->use++;
  sluice__ds_set(d, SLUICE__DS_FREE);
  /* LIFO keeps the cache warm; reuse cannot be confused with the old
   * delivery, whatever the order. */
  d->pool_next = c->pool;
  c->pool = d;
}

static void held_link(sluice_consumer *c, sluice_delivery *d) {
  d->on_stale = 0;
  d->next = NULL;
  d->prev = c->held_tail;
  if (c->held_tail) c->held_tail->next = d;
  else c->held_head = d;
  c->held_tail = d;
}

static void held_unlink(sluice_consumer *c, sluice_delivery *d) {
  if (d->on_stale) {
    if (d->prev) d->prev->next = d->next;
    else c->stale_head = d->next;
    if (d->next) d->next->prev = d->prev;
  } else {
    if (d->prev) d->prev->next = d->next;
    else c->held_head = d->next;
    if (d->next) d->next->prev = d->prev;
    else c->held_tail = d->prev;
  }
  d->prev = d->next = NULL;
}

/* Move a held delivery to the stale list: its connection died while it was
 * in a handler, deferred or completing; it finishes later as stale. */
static void held_to_stale(sluice_consumer *c, sluice_delivery *d) {
  held_unlink(c, d);
  d->on_stale = 1;
  d->prev = NULL;
  d->next = c->stale_head;
  if (c->stale_head) c->stale_head->prev = d;
  c->stale_head = d;
}

sluice_delivery *sluice__delivery_new(sluice_consumer *c) {
  sluice_delivery *d = slot_get(c);
  if (!d) return NULL;
  sluice__ds_set(d, SLUICE__DS_ASSEMBLING);
  d->msg.generation = atomic_load(&c->generation);
  held_link(c, d);
  /* Read during a synchronous call: parked outside the bound until it is
   * handed out (frames.c, "parked deliveries"). */
  d->unbound = c->parking;
  if (d->unbound) {
    c->n_unbound++;
    return d;
  }
  sluice__bound_hold(&c->bound);
  atomic_store_explicit(&c->n_inflight, c->bound.count, memory_order_relaxed);
  atomic_store_explicit(&c->n_max_inflight, c->bound.peak_count,
                        memory_order_relaxed);
  return d;
}

void sluice__delivery_bind(sluice_consumer *c, sluice_delivery *d) {
  d->unbound = 0;
  c->n_unbound--;
  sluice__bound_hold(&c->bound);
  sluice__bound_charge(&c->bound, d->mem);
  atomic_store_explicit(&c->n_inflight, c->bound.count, memory_order_relaxed);
  atomic_store_explicit(&c->n_max_inflight, c->bound.peak_count,
                        memory_order_relaxed);
  atomic_store_explicit(&c->n_inflight_bytes, c->bound.bytes,
                        memory_order_relaxed);
}

void sluice__charge(sluice_consumer *c, sluice_delivery *d, size_t bytes) {
  d->mem += bytes;
  if (d->unbound) return; /* charged when bound */
  sluice__bound_charge(&c->bound, bytes);
  atomic_store_explicit(&c->n_inflight_bytes, c->bound.bytes,
                        memory_order_relaxed);
}

/* Forget a held delivery (loop thread). */
static void release(sluice_consumer *c, sluice_delivery *d) {
  if (d->unbound) sluice__delivery_bind(c, d); /* counted once, released */
  held_unlink(c, d);
  sluice__bound_release(&c->bound, d->mem);
  if (sluice__ds_get(d) == SLUICE__DS_ABANDONED) c->abandoned--;
  atomic_store_explicit(&c->n_inflight, c->bound.count, memory_order_relaxed);
  atomic_store_explicit(&c->n_inflight_bytes, c->bound.bytes,
                        memory_order_relaxed);
  slot_put(c, d);
}

/* ---- dispatch ------------------------------------------------------------ */

void sluice__settle_unhandled(sluice_consumer *c, sluice_delivery *d,
                              sluice__ackq_kind kind) {
  uint64_t tag = d->msg.delivery_tag;
  release(c, d);
  if (c->o.ack_mode == SLUICE_ACK_MANUAL) queue_ack(c, tag, kind);
  sluice__update_pause(c);
}

/* AUTO mode, stop past its deadline: a delivery the broker settled that no
 * handler will take goes to the application (or is counted and logged).
 * Each one read off the socket restarts the drain's budget: the drain ends
 * at the cancel-ok, however slowly the machine or on_abandoned goes, and
 * only a broker silent for stop_timeout_ms cuts it short. */
static void hand_off(sluice_consumer *c, sluice_delivery *d) {
  atomic_fetch_add(&c->n_dropped, 1);
  if (c->o.on_abandoned) {
    sluice__cb_frame f;
    sluice__cb_enter(&f, c);
    c->o.on_abandoned(c, &d->msg, c->o.abandoned_user);
    sluice__cb_leave(&f);
  }
  release(c, d);
  if (c->draining)
    c->stop_deadline_ms = sluice__now_ms() + c->o.stop_timeout_ms;
}

static void reject_too_big(sluice_consumer *c, sluice_delivery *d) {
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
  sluice__settle_unhandled(c, d, SLUICE__ACKQ_REJECT);
}

/* The delivery's value of its subscription's key, for the hooks. */
static const char *key_value(sluice_delivery *d) {
  const sluice_message *m = &d->msg;
  const char *v = NULL;
  switch (d->sub->key_from) {
    case SLUICE__KEY_ROUTING: v = m->routing_key; break;
    case SLUICE__KEY_EXCHANGE: v = m->exchange; break;
    case SLUICE__KEY_TYPE: v = m->props.type; break;
    case SLUICE__KEY_APP_ID: v = m->props.app_id; break;
    case SLUICE__KEY_CONTENT_TYPE: v = m->props.content_type; break;
    case SLUICE__KEY_USER_ID: v = m->props.user_id; break;
    case SLUICE__KEY_HEADER: {
      const sluice_value *h = sluice_message_header(m, d->sub->key_spec + 7);
      char *b = d->key_buf;
      size_t n = sizeof(d->key_buf);
      if (!h) break;
      switch (h->kind) {
        case SLUICE_VAL_STRING: v = h->u.s.str; break;
        case SLUICE_VAL_BOOL: v = h->u.b ? "true" : "false"; break;
        case SLUICE_VAL_INT:
          snprintf(b, n, "%lld", (long long)h->u.i);
          v = b;
          break;
        case SLUICE_VAL_UINT:
          snprintf(b, n, "%llu", (unsigned long long)h->u.u);
          v = b;
          break;
        case SLUICE_VAL_DOUBLE:
          snprintf(b, n, "%g", h->u.d);
          v = b;
          break;
        case SLUICE_VAL_TIMESTAMP:
          snprintf(b, n, "%llu", (unsigned long long)h->u.ts);
          v = b;
          break;
        default: break;
      }
      break;
    }
    default: return NULL;
  }
  return v ? v : "(none)";
}

void sluice__dispatch(sluice_consumer *c, sluice_delivery *d) {
  d->msg.body_len = d->body_got;
  if (d->msg.body) ((char *)d->msg.body)[d->body_got] = '\0';
  if (d->too_big) {
    reject_too_big(c, d);
    return;
  }
  sluice__count(&c->n_delivered, 1);
  if (d->msg.redelivered) sluice__count(&c->n_redelivered, 1);
  if (c->stopping && c->o.ack_mode == SLUICE_ACK_MANUAL) {
    /* Read after basic.cancel, on the way to its cancel-ok: never handled,
     * never acknowledged (the broker requeues it at the close), and no
     * handle to it exists. Let go at once: held, these would fill the
     * bound whenever the prefetch window is larger than max_inflight, and
     * the stop would wait stop_timeout_ms for a cancel-ok it no longer
     * reads. Its tag is above every one handled, so no multiple ack covers
     * it. */
    release(c, d);
    return;
  }
  if (c->draining) {
    hand_off(c, d);
    return;
  }
  d->info.queue = d->msg.queue;
  d->info.delivery_tag = d->msg.delivery_tag;
  d->info.generation = d->msg.generation;
  d->info.seq = sluice__count(&c->seq, 1);
  d->info.body_len = d->msg.body_len;
  if (d->sub && d->sub->key_from) {
    d->info.key_name = d->sub->key_spec;
    d->info.key = key_value(d);
  }
  if (c->n_threads > 0) {
    sluice__ds_set(d, SLUICE__DS_QUEUED);
    sluice__workers_push(c, d);
  } else {
    sluice__run_handler(c, d);
  }
}

/* ---- the handler and completion ------------------------------------------ */

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
  if (c->cq_tail) c->cq_tail->qnext = d;
  else c->cq_head = d;
  c->cq_tail = d;
  pthread_mutex_unlock(&c->cq_mu);
  if (was_empty && c->wake_fd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(c->wake_fd, &one, sizeof(one));
    (void)w; /* EAGAIN: the counter is already non-zero, a wake is due */
  }
}

/* The handle an application gets for the delivery `d` serves now. */
static sluice_delivery *handle_of(const sluice_delivery *d) {
  return sluice__handle_make(d->hidx, d->use);
}

void sluice__run_handler(sluice_consumer *c, sluice_delivery *d) {
  if (is_stale(c, d)) {
    /* Its connection died while it waited for a worker: the broker will
     * redeliver it; running the handler now would process it twice. */
    atomic_fetch_add_explicit(&c->n_in_handler, 1, memory_order_relaxed);
    sluice__ds_set(d, SLUICE__DS_COMPLETING);
    complete_now(c, d, SLUICE_NACK);
    return;
  }
  sluice__ds_set(d, SLUICE__DS_HANDLER);
  uint64_t n =
      atomic_fetch_add_explicit(&c->n_in_handler, 1, memory_order_relaxed) + 1;
  counter_max(&c->n_max_in_handler, n);
  sluice__cb_frame f;
  sluice__cb_enter(&f, c);
  if (c->has_hooks && c->hooks.begin)
    d->hook_token = c->hooks.begin(c->hooks.user, &d->info);
  int rc = d->sub->handler(handle_of(d), &d->msg, d->sub->user);
  if (c->has_hooks && c->hooks.suspend)
    c->hooks.suspend(c->hooks.user, d->hook_token);
  sluice__cb_leave(&f);

  uint64_t seen;
  if (rc == SLUICE_DEFER &&
      sluice__ds_cas(d, SLUICE__DS_HANDLER, SLUICE__DS_DEFERRED, &seen))
    return;
  /* The handler is done with it: nobody else completes it now. If
   * sluice_delivery_done() came first (from another thread, or from the
   * handler itself), its outcome is in the state word and wins. */
  uint64_t w = atomic_exchange(&d->he->word,
                               sluice__word(d->use, SLUICE__DS_COMPLETING));
  if (sluice__word_state(w) == SLUICE__DS_HANDLER_DONE) {
    if (rc != SLUICE_DEFER)
      sluice__log(c, SLUICE_LOG_WARN,
                  "handler returned %d after sluice_delivery_done(); the "
                  "first completion wins",
                  rc);
    complete_now(c, d, (int)sluice__word_early(w));
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

/* ---- public delivery API ------------------------------------------------- */

/* The slot a handle names if the handle is current: made for the delivery
 * the slot serves now, and that delivery not completed. The state word it
 * was read from is in *word. NULL for a stale handle: its delivery was
 * completed, the slot may serve another one already. */
static sluice_delivery *current(const sluice_delivery *h, uint64_t *word) {
  uint64_t use;
  sluice__hentry *e = sluice__handle_decode(h, &use);
  if (!e) return NULL;
  uint64_t w = atomic_load(&e->word);
  if (sluice__handle_use_bits(sluice__word_use(w)) != use) return NULL;
  switch (sluice__word_state(w)) {
    case SLUICE__DS_QUEUED:
    case SLUICE__DS_HANDLER:
    case SLUICE__DS_DEFERRED:
      if (word) *word = w;
      return atomic_load(&e->slot);
    default: return NULL; /* free, assembling, done, completing, abandoned */
  }
}

int sluice_delivery_done(sluice_delivery *h, int outcome) {
  if (!h) return SLUICE_EINVAL;
  if (!valid_final(outcome)) return SLUICE_EINVAL;
  uint64_t use;
  sluice__hentry *e = sluice__handle_decode(h, &use);
  if (!e) return SLUICE_EINVAL; /* never a delivery handle */
  uint64_t w = atomic_load(&e->word);
  for (;;) {
    /* Every step is a compare-and-swap on (use, state): a handle whose
     * delivery was completed meets another use and acts on nothing, even
     * when the slot serves a deferred delivery again. Said quietly: the
     * slot may be another consumer's by now. */
    uint64_t full_use = sluice__word_use(w);
    if (sluice__handle_use_bits(full_use) != use) return SLUICE_EALREADY;
    unsigned st = sluice__word_state(w);
    if (st == SLUICE__DS_DEFERRED) {
      if (!atomic_compare_exchange_strong(
              &e->word, &w, sluice__word(full_use, SLUICE__DS_COMPLETING)))
        continue;
      sluice_delivery *d = atomic_load(&e->slot);
      sluice_consumer *c = d->c;
      int stale = is_stale(c, d);
      complete_now(c, d, outcome);
      return stale ? SLUICE_ESTALE : 0;
    }
    if (st == SLUICE__DS_HANDLER) {
      /* Before its handler returned (from another thread, or the handler
       * itself): the handler's return completes it with this outcome, so
       * the slot is never recycled while the handler still runs. */
      unsigned done = SLUICE__DS_HANDLER_DONE | (unsigned)outcome
                                                    << SLUICE__EARLY_SHIFT;
      if (atomic_compare_exchange_strong(&e->word, &w,
                                         sluice__word(full_use, done)))
        return 0;
      continue;
    }
    break;
  }
  /* The same delivery, completed already (and on its way to the loop
   * thread): its consumer is there to log to. */
  sluice_delivery *d = atomic_load(&e->slot);
  if (d)
    sluice__log(d->c, SLUICE_LOG_WARN,
                "sluice_delivery_done() on a delivery already completed: "
                "nothing done");
  return SLUICE_EALREADY;
}

const sluice_message *sluice_delivery_message(const sluice_delivery *h) {
  sluice_delivery *d = current(h, NULL);
  return d ? &d->msg : NULL;
}

void sluice_delivery_enter(sluice_delivery *h) {
  sluice_delivery *d = current(h, NULL);
  if (d && d->c->has_hooks && d->c->hooks.resume)
    d->c->hooks.resume(d->c->hooks.user, d->hook_token);
}

void sluice_delivery_leave(sluice_delivery *h) {
  sluice_delivery *d = current(h, NULL);
  if (d && d->c->has_hooks && d->c->hooks.suspend)
    d->c->hooks.suspend(d->c->hooks.user, d->hook_token);
}

/* ---- back on the loop thread --------------------------------------------- */

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
              outcome == SLUICE_ACK      ? SLUICE__ACKQ_ACK
              : outcome == SLUICE_REJECT ? SLUICE__ACKQ_REJECT
                                         : SLUICE__ACKQ_NACK);
  } else {
    /* autoAck: the broker settled it on delivery; count the outcome. */
    switch (outcome) {
      case SLUICE_ACK: sluice__count(&c->n_acked, 1); break;
      case SLUICE_REJECT: sluice__count(&c->n_rejected, 1); break;
      default: sluice__count(&c->n_nacked, 1); break;
    }
  }
  sluice__update_pause(c);
  if (c->stopping) sluice__check_stop(c);
}

void sluice__drain_completions(sluice_consumer *c) {
  pthread_mutex_lock(&c->cq_mu);
  sluice_delivery *d = c->cq_head;
  c->cq_head = c->cq_tail = NULL;
  pthread_mutex_unlock(&c->cq_mu);
  sluice__acks_hold(c); /* the acks of all of them with one write */
  while (d) {
    sluice_delivery *next = d->qnext;
    process_completion(c, d);
    d = next;
  }
  sluice__acks_release(c);
}

/* ---- acks ---------------------------------------------------------------- */

/* Acks are written only when the socket takes them: rabbitmq-c's send
 * waits for the socket without a limit (docs/rabbitmq-c-event-loop.md,
 * "Sends can block the loop"); what it does not take waits for WRITE.
 *
 * Bytes that may be written after poll() said POLLOUT without asking again.
 * POLLOUT on TCP means at least a third of the send buffer is free (4 KiB
 * buffers at the very least), so 1 KiB of 21-byte ack frames cannot block,
 * and one poll(2) serves ~48 acks instead of one. */
#define WRITE_BUDGET 1024
#define ACK_FRAME_BYTES SLUICE__ACKWIRE_FRAME
_Static_assert(WRITE_BUDGET / ACK_FRAME_BYTES <= SLUICE__ACKWIRE_MAX,
               "ackw holds what one POLLOUT allows");

/* On a plain TCP connection (own_acks) sluice writes its ack frames itself
 * (ackwire.h): emit_ack encodes each into c->ackw, and they go out with one
 * send(2) when the flush ends or, inside a pass of the loop bracketed by
 * sluice__acks_hold/release, when the pass ends: a drain of completions,
 * or a read of frames, where they go out before each read of the socket
 * (frames.c: the broker may be waiting for them), and at the latest once
 * they settle a quarter of the prefetch window (so that the broker keeps
 * sending while the rest is handled). Per-message acks of a busy stream
 * then cost one send per prefetch/4 messages instead of one per message,
 * with the same frames (each its own basic.ack, multiple only where the
 * ack queue says so). Why this is safe:
 *  - Every write to the connection is on the loop thread (an attempt uses
 *    its own connection until it is adopted), so nothing else writes while
 *    ackw is written.
 *  - ackw is written whole before control goes back to the event loop, and
 *    a short write is completed at once (sluice__ackwire_write): nothing,
 *    rabbitmq-c included, ever writes into the middle of one of its frames.
 *    If the socket will not take the rest, the connection is given up.
 *  - Between collecting a frame and writing it, rabbitmq-c may write whole
 *    frames of its own: a heartbeat (from its wait call), a basic.cancel or
 *    a cancel-ok, whose order against acks does not matter. A close is
 *    preceded by sluice__flush_acks_blocking(), which writes ackw.
 *  - ackw never holds more than one poll(POLLOUT) allows: the budget is
 *    charged as each frame is collected, and ackw is written before poll is
 *    asked again.
 *  - The counters (acked, nacked, rejected, ack_frames) count frames the
 *    socket took, as they always did; frames collected and never written
 *    (the connection died first) count as stale, like completions still in
 *    the ack queue: the broker redelivers those messages.
 *  - rabbitmq-c does not see these writes, so they do not move its
 *    send-side heartbeat deadline: on a busy connection it writes a
 *    heartbeat frame once per interval from inside its wait call. 8 bytes
 *    every 30 s by default, and the broker counts any frame as life. */

/* Deliveries whose acks are worth a send of their own (emit_ack). */
#define ACKW_SETTLES(c) ((c)->o.prefetch / 4 ? (size_t)(c)->o.prefetch / 4 : 1)

static void count_settled(sluice_consumer *c, sluice__ackq_kind kind,
                          size_t count) {
  switch (kind) {
    case SLUICE__ACKQ_ACK: sluice__count(&c->n_acked, count); break;
    case SLUICE__ACKQ_NACK: sluice__count(&c->n_nacked, count); break;
    default: sluice__count(&c->n_rejected, count); break;
  }
}

/* Forget the frames collected and not written: their deliveries are the
 * broker's again. Returns how many deliveries they settled. */
static size_t ackw_drop(sluice_consumer *c) {
  size_t n = c->ackw.settles;
  atomic_fetch_add(&c->n_stale, n);
  c->ackw.n = c->ackw.settles = 0;
  return n;
}

/* Write what ackw holds. Returns 0, or -1 once a write failed: then the
 * connection is to be given up (ackw_failed; part of a frame may be on the
 * wire) and what was not written counts as stale. emit_ack only reports
 * it: the connection cannot be declared lost in the middle of a flush of
 * the ack queue, its callers do that. */
static int ackw_write(sluice_consumer *c) {
  sluice__ackwire *w = &c->ackw;
  if (c->ackw_failed) return -1;
  if (w->n == 0) return 0;
  size_t done = sluice__ackwire_write(w, c->fd, c->o.rpc_timeout_ms);
  c->win_tx_prev = c->win_tx;
  for (size_t i = 0; i < w->n; i++) {
    if (i < done) {
      count_settled(c, w->meta[i].kind, w->meta[i].count);
      c->win_tx += w->meta[i].count;
    } else {
      atomic_fetch_add(&c->n_stale, w->meta[i].count);
    }
  }
  sluice__count(&c->n_ack_frames, done);
  if (done < w->n) c->ackw_failed = 1;
  w->n = w->settles = 0;
  return c->ackw_failed ? -1 : 0;
}

static int emit_ack(void *user, uint64_t tag, sluice__ackq_kind kind,
                    int multiple, size_t count) {
  sluice_consumer *c = user;
  if (c->write_budget < ACK_FRAME_BYTES) {
    /* What ackw holds was allowed by the last poll: out with it first. */
    if (ackw_write(c) != 0) return -1;
    if (!sluice__fd_writable(c->fd)) return 1;
    c->write_budget = WRITE_BUDGET;
  }
  c->write_budget -= ACK_FRAME_BYTES;
  if (c->own_acks) {
    sluice__ackwire_add(&c->ackw, SLUICE__CH_MAIN, kind, tag, multiple, count);
    /* Out as soon as they settle a quarter of the prefetch window, as
     * sluice's default coalescing does: the broker refills the window
     * while the rest is handled, rather than once all of it is. */
    if (c->ackw.settles >= ACKW_SETTLES(c) && ackw_write(c) != 0) return -1;
    return 0;
  }
  int st;
  switch (kind) {
    case SLUICE__ACKQ_ACK:
      st = amqp_basic_ack(c->conn, SLUICE__CH_MAIN, tag, multiple);
      break;
    case SLUICE__ACKQ_NACK:
      st = amqp_basic_nack(c->conn, SLUICE__CH_MAIN, tag, multiple, 1);
      break;
    default: st = amqp_basic_reject(c->conn, SLUICE__CH_MAIN, tag, 0); break;
  }
  if (st != 0) return -1;
  count_settled(c, kind, count);
  c->win_tx_prev = c->win_tx;
  c->win_tx += count;
  sluice__count(&c->n_ack_frames, 1);
  return 0;
}

static uint64_t min_outstanding(const sluice_consumer *c) {
  return c->held_head ? c->held_head->msg.delivery_tag : UINT64_MAX;
}

void sluice__flush_acks(sluice_consumer *c) {
  if (!c->connected || (c->acks.n == 0 && c->ackw.n == 0)) return;
  int rc = sluice__ackq_flush(&c->acks, min_outstanding(c), emit_ack, c);
  if (!c->ack_hold) ackw_write(c);
  if (c->ackw_failed) {
    sluice__conn_lost(c, SLUICE_ESOCKET);
    return;
  }
  if (rc < 0 && c->acks.n > 0) {
    if (!sluice__fd_writable(c->fd) && c->connected) {
      if (!c->want_write) {
        sluice__loop_arm(&c->loop, SLUICE__W_WRITE, 0);
        c->want_write = 1;
      }
      return;
    }
    sluice__conn_lost(c, SLUICE_ESOCKET);
    return;
  }
  if (c->ack_timer_on) {
    sluice__loop_disarm(&c->loop, SLUICE__W_ACK);
    c->ack_timer_on = 0;
  }
}

void sluice__acks_hold(sluice_consumer *c) {
  c->ack_hold++;
}

void sluice__acks_write(sluice_consumer *c) {
  if (c->connected && ackw_write(c) != 0) sluice__conn_lost(c, SLUICE_ESOCKET);
}

void sluice__acks_release(sluice_consumer *c) {
  if (--c->ack_hold == 0) sluice__acks_write(c);
}

void sluice__flush_acks_blocking(sluice_consumer *c, int wait_ms) {
  while ((c->acks.n > 0 || c->ackw.n > 0) && c->connected) {
    struct pollfd p = {c->fd, POLLOUT, 0};
    if (poll(&p, 1, wait_ms) != 1) break;
    int rc = sluice__ackq_flush(&c->acks, min_outstanding(c), emit_ack, c);
    if (ackw_write(c) != 0) break;
    if (rc < 0 && sluice__fd_writable(c->fd)) break; /* a send failed */
  }
  size_t lost = ackw_drop(c);
  if (lost)
    sluice__log(c, SLUICE_LOG_WARN,
                "%zu completions could not be acknowledged at stop: the "
                "broker redelivers them",
                lost);
}

static void queue_ack(sluice_consumer *c, uint64_t tag,
                      sluice__ackq_kind kind) {
  if (sluice__ackq_push(&c->acks, tag, kind) != 0) {
    /* Out of memory for one entry: send now rather than lose it. */
    sluice__flush_acks(c);
    if (sluice__ackq_push(&c->acks, tag, kind) != 0) return;
  }
  if (c->acks.n >= c->o.ack_batch) {
    sluice__flush_acks(c);
  } else if (!c->ack_timer_on) {
    sluice__loop_arm(&c->loop, SLUICE__W_ACK, c->o.ack_flush_ms);
    c->ack_timer_on = 1;
  }
}

/* ---- connection loss and stop -------------------------------------------- */

void sluice__abandon_queued(sluice_consumer *c) {
  sluice_delivery *q = sluice__workers_take_all(c);
  while (q) {
    sluice_delivery *next = q->qnext;
    sluice__ds_set(q, SLUICE__DS_ABANDONED);
    c->abandoned++;
    q = next;
  }
}

void sluice__hand_off_queued(sluice_consumer *c) {
  sluice_delivery *q = sluice__workers_take_all(c);
  while (q) {
    sluice_delivery *next = q->qnext;
    hand_off(c, q);
    q = next;
  }
}

void sluice__deliveries_conn_lost(sluice_consumer *c) {
  sluice__reads_end(c);
  size_t unwritten = ackw_drop(c); /* collected, not yet written */
  if (c->acks.n + unwritten)
    sluice__log(c, SLUICE_LOG_INFO,
                "%zu completions not acknowledged before the connection "
                "closed: the broker redelivers them",
                c->acks.n + unwritten);
  atomic_fetch_add(&c->n_stale, c->acks.n);
  sluice__ackq_reset(&c->acks);
  c->asm_d = NULL; /* still on the held list; released below */
  /* Manual mode: deliveries still waiting for a worker go back to the
   * broker (it redelivers them). AutoAck: the broker will never send them
   * again, so the workers still handle them (they land on the stale list
   * below, which only means "of a dead connection"). */
  if (c->o.ack_mode == SLUICE_ACK_MANUAL) sluice__abandon_queued(c);
  sluice_delivery *d = c->held_head;
  while (d) {
    sluice_delivery *next = d->next;
    unsigned st = sluice__ds_get(d);
    if (st == SLUICE__DS_ASSEMBLING || st == SLUICE__DS_ABANDONED) {
      if (st == SLUICE__DS_ABANDONED) atomic_fetch_add(&c->n_stale, 1);
      release(c, d);
    } else {
      held_to_stale(c, d);
    }
    d = next;
  }
  sluice__update_pause(c);
}

size_t sluice__busy_count(const sluice_consumer *c) {
  /* Parked deliveries may be outside the bound until handed out (frames.c),
   * the one being assembled is in either. */
  return c->bound.count + c->n_unbound - c->abandoned - (c->asm_d ? 1 : 0);
}

void sluice__deliveries_stopped(sluice_consumer *c) {
  sluice__reads_end(c);
  sluice__drain_completions(c);
  /* Abandoned and unfinished deliveries are the broker's again. */
  sluice_delivery *d = c->held_head;
  while (d) {
    sluice_delivery *next = d->next;
    unsigned st = sluice__ds_get(d);
    if (st == SLUICE__DS_ABANDONED || st == SLUICE__DS_ASSEMBLING)
      release(c, d);
    d = next;
  }
  c->asm_d = NULL;
}

void sluice__deliveries_free(sluice_consumer *c) {
  sluice__drain_completions(c);
  while (c->held_head) release(c, c->held_head);
  while (c->stale_head) release(c, c->stale_head);
  while (c->pool) {
    sluice_delivery *d = c->pool;
    c->pool = d->pool_next;
    slot_free(d);
  }
}
