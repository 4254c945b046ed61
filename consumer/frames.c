/* SPDX-License-Identifier: MIT */
/* From the socket to an assembled delivery: reading frames without ever
 * blocking (rabbitmq-c with a zero timeout), assembling basic.deliver +
 * header + body frames into a delivery, the broker's methods (closes,
 * cancels, connection.blocked), the in-flight bound that pauses reading,
 * and heartbeats. Hands each delivery to delivery.c (sluice__dispatch).
 * How rabbitmq-c 0.11 is driven from an event loop, and why:
 * docs/rabbitmq-c-event-loop.md. Loop thread only. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <amqp_tcp_socket.h>

#include "internal.h"

#define READ_BUDGET 256 /* frames per wake-up before yielding */
#define RX_BUF 65536    /* sluice's own receive buffer (own_reads) */

/* ---- the in-flight bound and the memory guard ---------------------------- */

/* Whether a delivery already read may be handed out now: below the bound
 * and the memory guard. An AUTO stop's drain hands each delivery off as
 * soon as it is read: what the handlers still hold (deferred ones too)
 * must not stop it, nor the memory guard, or what the broker settled would
 * stay unread until the connection closes. */
static inline int may_take(const sluice_consumer *c) {
  return c->draining ||
         sluice__may_read(&c->bound, sluice__memguard_holds(c), 0);
}

static inline int may_read(const sluice_consumer *c) {
  /* Parked deliveries (sluice__reads_settle) came before everything still
   * unread: nothing more is read until they are handed out. */
  if (c->park_head) return may_take(c);
  return c->draining || sluice__may_read(&c->bound, sluice__memguard_holds(c),
                                         c->asm_d != NULL);
}

/* After every change to what is held, or to the memory guard's state: read
 * or not, as both say (bound.h, memguard.h). A delivery being assembled is
 * read to its end first. */
void sluice__update_pause(sluice_consumer *c) {
  if (sluice__bound_update(&c->bound) == SLUICE__BOUND_PAUSE)
    atomic_store(&c->n_read_pauses, c->bound.pauses);
  if (!may_read(c)) {
    if (c->reading) {
      sluice__loop_disarm(&c->loop, SLUICE__W_READ);
      c->reading = 0;
    }
  } else if (c->connected && !c->reading) {
    sluice__kick_read(c);
  }
}

/* Read again soon without waiting for the socket. A zero timeout rather than
 * an active event: libevent runs events activated from a callback in the
 * same pass, so a busy stream would starve the wake-up and timer events. */
static void schedule_drain(sluice_consumer *c) {
  if (!sluice__loop_armed(&c->loop, SLUICE__W_DRAIN))
    sluice__loop_arm(&c->loop, SLUICE__W_DRAIN, 0);
}

/* Bytes or frames rabbitmq-c read from the socket itself (a synchronous
 * call reads past its reply) and sluice has not taken yet. */
static int rmq_buffered(sluice_consumer *c) {
  return amqp_data_in_buffer(c->conn) || amqp_frames_enqueued(c->conn);
}

/* Whether rabbitmq-c holds what sluice has not taken, asked only after a
 * synchronous call: it reads the socket in no other call sluice makes on
 * an own_reads connection, and each synchronous one on a live connection
 * follows sluice__reads_settle() or sluice__reads_begin(), which set
 * rmq_check. Two calls into rabbitmq-c per frame otherwise. */
static int rmq_pending(sluice_consumer *c) {
  if (!c->rmq_check) return 0;
  if (rmq_buffered(c)) return 1;
  c->rmq_check = 0;
  return 0;
}

/* Bytes sluice read from the socket (own_reads) and has not decoded yet. */
static int own_buffered(const sluice_consumer *c) {
  return c->rx_off < c->rx_len;
}

/* Anything read off the socket and not handled yet: the socket's readable
 * event will not say so. */
static int buffered(sluice_consumer *c) {
  return c->park_head || own_buffered(c) || rmq_buffered(c);
}

int sluice__input_pending(sluice_consumer *c) {
  if (!c->connected) return 0;
  if (buffered(c)) return 1;
  struct pollfd p = {.fd = c->fd, .events = POLLIN};
  return poll(&p, 1, 0) > 0;
}

void sluice__kick_read(sluice_consumer *c) {
  if (!c->connected || !may_read(c) || !c->loop.ev[SLUICE__W_READ]) return;
  if (!c->reading) {
    sluice__loop_arm(&c->loop, SLUICE__W_READ, 0);
    c->reading = 1;
  }
  /* Frames may sit in rabbitmq-c's buffer while the socket is quiet, after
   * a synchronous call read past its reply (docs/rabbitmq-c-event-loop.md,
   * "Synchronous calls"). */
  if (buffered(c)) schedule_drain(c);
}

/* ---- delivery assembly --------------------------------------------------- */

/* A shortstr (at most 255 bytes) as a C string in dst[256]; returns its
 * length, which on_header needs three times. (A NUL inside ends the C
 * string early; the bytes after it are copied along, unread.) */
static size_t copy_shortstr(char *dst, amqp_bytes_t b) {
  size_t n = b.len < 255 ? b.len : 255;
  if (n) memcpy(dst, b.bytes, n);
  dst[n] = '\0';
  return n;
}

static void on_deliver(sluice_consumer *c, amqp_basic_deliver_t *m) {
  sluice_delivery *d = sluice__delivery_new(c);
  if (!d) {
    sluice__log(c, SLUICE_LOG_ERROR, "out of memory for a delivery");
    sluice__conn_lost(c, SLUICE_ENOMEM);
    return;
  }
  c->asm_tag_len = copy_shortstr(c->asm_tag, m->consumer_tag);
  c->asm_exchange_len = copy_shortstr(c->asm_exchange, m->exchange);
  c->asm_rk_len = copy_shortstr(c->asm_rk, m->routing_key);
  d->sub = sluice__sub_by_tag(c, m->consumer_tag);
  d->msg.delivery_tag = m->delivery_tag;
  d->msg.redelivered = m->redelivered;
  d->msg.queue = d->sub ? d->sub->queue : "";
  c->asm_d = d;
  c->win_rx++;
}

/* The content header: size the delivery's block and copy the properties
 * and the three strings into it; the body follows. */
static int on_header(sluice_consumer *c, amqp_frame_t *f) {
  sluice_delivery *d = c->asm_d;
  amqp_basic_properties_t *p = f->payload.properties.decoded;
  uint64_t body = f->payload.properties.body_size;
  size_t strs = c->asm_tag_len + c->asm_exchange_len + c->asm_rk_len + 3;
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
  size_t n = c->asm_tag_len + 1;
  memcpy(w, c->asm_tag, n);
  d->msg.consumer_tag = w;
  w += n;
  n = c->asm_exchange_len + 1;
  memcpy(w, c->asm_exchange, n);
  d->msg.exchange = w;
  w += n;
  n = c->asm_rk_len + 1;
  memcpy(w, c->asm_rk, n);
  d->msg.routing_key = w;
  w += n;
  d->msg.body = w;
  sluice__charge(c, d, need);
  return 0;
}

/* ---- parked deliveries ---------------------------------------------------
 * A synchronous call on the live connection lets rabbitmq-c read the socket
 * itself, so what sluice read ahead of it (own_reads) is decoded first
 * (sluice__reads_settle). The deliveries completed then wait here, in
 * order, until a read pass may hand them out: the call may come from
 * inside a handler, which must not run another one, and the bound may be
 * full. Those begun during the call are outside the bound (`unbound`,
 * delivery.c) until they are handed out, so the bound holds for what
 * handlers see. Nothing after them is read before they are out. */

static void park(sluice_consumer *c, sluice_delivery *d) {
  d->qnext = NULL;
  c->n_parked++;
  if (c->park_tail) c->park_tail->qnext = d;
  else c->park_head = d;
  c->park_tail = d;
}

static sluice_delivery *unpark(sluice_consumer *c) {
  sluice_delivery *d = c->park_head;
  c->park_head = d->qnext;
  if (!c->park_head) c->park_tail = NULL;
  d->qnext = NULL;
  c->n_parked--;
  if (d->unbound) sluice__delivery_bind(c, d);
  return d;
}

static void complete(sluice_consumer *c, sluice_delivery *d);
static int stop_asked(const sluice_consumer *c);

/* Hand out parked deliveries while the bound allows; 1 once none is left.
 * A handler that asks to stop leaves the rest to the broker, as it does
 * the frames not read yet (the stop itself begins on the loop's wake-up,
 * then the rest is let go, sluice__dispatch). */
static int take_parked(sluice_consumer *c) {
  while (c->park_head && c->connected && may_take(c) && !stop_asked(c))
    complete(c, unpark(c));
  return c->park_head == NULL;
}

void sluice__reads_end(sluice_consumer *c) {
  /* In the bound again, still assembling: released with the rest of what
   * the connection held (delivery.c). */
  while (c->park_head) (void)unpark(c);
  if (c->asm_d && c->asm_d->unbound) sluice__delivery_bind(c, c->asm_d);
}

static void delivery_complete(sluice_consumer *c) {
  sluice_delivery *d = c->asm_d;
  c->asm_d = NULL;
  /* One begun during a synchronous call comes after those it parked. */
  if (c->parking || d->unbound) park(c, d);
  else complete(c, d);
}

static void complete(sluice_consumer *c, sluice_delivery *d) {
  if (!d->sub) {
    sluice__log(c, SLUICE_LOG_WARN,
                "delivery for unknown consumer tag '%s': requeued",
                d->msg.consumer_tag);
    sluice__settle_unhandled(c, d, SLUICE__ACKQ_NACK);
    return;
  }
  sluice__dispatch(c, d);
  sluice__memguard_tick(c);
  sluice__update_pause(c);
}

static void on_body(sluice_consumer *c, amqp_frame_t *f) {
  sluice_delivery *d = c->asm_d;
  if (!d || !d->msg.body || f->channel != SLUICE__CH_MAIN) {
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
    memcpy((char *)d->msg.body + d->body_got, f->payload.body_fragment.bytes,
           len);
  d->body_got += len;
  if (d->body_got == d->body_size) {
    if (d->too_big) d->body_got = 0;
    delivery_complete(c);
  }
}

/* ---- the broker's methods ------------------------------------------------ */

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
  c->lost_code = code;
  sluice__bytes_str(c->last_close_text, sizeof(c->last_close_text), text);
  int err = sluice__close_code_to_err(code, c->last_close_text);
  if (channel && err == SLUICE_ECLOSED) err = SLUICE_ECHANNEL;
  sluice__log(c, SLUICE_LOG_WARN, "broker closed the %s: %u %s",
              channel ? "channel" : "connection", code, c->last_close_text);
  /* A closed consuming channel takes its deliveries' tags with it; start
   * over on a fresh connection (a new generation). */
  sluice__conn_lost(c, err);
}

static void on_server_cancel(sluice_consumer *c, amqp_basic_cancel_t *m) {
  struct sluice__sub *s = sluice__sub_by_tag(c, m->consumer_tag);
  if (!m->nowait) {
    amqp_basic_cancel_ok_t ok;
    ok.consumer_tag = m->consumer_tag;
    amqp_send_method(c->conn, SLUICE__CH_MAIN, AMQP_BASIC_CANCEL_OK_METHOD,
                     &ok);
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

static void on_blocked(sluice_consumer *c, amqp_connection_blocked_t *m) {
  char reason[256];
  sluice__bytes_str(reason, sizeof(reason), m->reason);
  c->blocked = 1;
  sluice_event ev = {.type = SLUICE_EV_BLOCKED,
                     .err = SLUICE_EBLOCKED,
                     .text = reason,
                     .generation = atomic_load(&c->generation)};
  sluice__emit(c, &ev);
}

static void on_connection_method(sluice_consumer *c, amqp_frame_t *f) {
  amqp_method_number_t id = f->payload.method.id;
  switch (id) {
    case AMQP_CONNECTION_CLOSE_METHOD: on_broker_close(c, f, 0); return;
    case AMQP_CONNECTION_BLOCKED_METHOD:
      on_blocked(c, f->payload.method.decoded);
      return;
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

static void on_method(sluice_consumer *c, amqp_frame_t *f) {
  amqp_method_number_t id = f->payload.method.id;
  if (f->channel == 0) {
    on_connection_method(c, f);
    return;
  }
  if (f->channel != SLUICE__CH_MAIN) {
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
      struct sluice__sub *s = sluice__sub_by_tag(c, m->consumer_tag);
      if (s) s->active = 0;
      /* Not from inside a synchronous call: the stop's timer checks. */
      if (c->stopping && !c->parking) sluice__check_stop(c);
      return;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: on_broker_close(c, f, 1); return;
    default:
      sluice__log(c, SLUICE_LOG_DEBUG, "ignored method 0x%08x", id);
      return;
  }
}

static void handle_frame(sluice_consumer *c, amqp_frame_t *f) {
  switch (f->frame_type) {
    case AMQP_FRAME_METHOD: on_method(c, f); return;
    case AMQP_FRAME_HEADER:
      if (!c->asm_d || c->asm_d->msg.body || f->channel != SLUICE__CH_MAIN) {
        sluice__log(c, SLUICE_LOG_ERROR, "content header out of place");
        sluice__conn_lost(c, SLUICE_EPROTO);
        return;
      }
      /* rabbitmq-c decodes the properties of whatever class the header
       * names; only basic's are amqp_basic_properties_t (a header of
       * another class was read as one, far past its end: found by
       * fuzz/fuzz_frames.c). */
      if (f->payload.properties.class_id != AMQP_BASIC_CLASS) {
        sluice__log(c, SLUICE_LOG_ERROR,
                    "content header of class %u, not basic",
                    f->payload.properties.class_id);
        sluice__conn_lost(c, SLUICE_EPROTO);
        return;
      }
      if (on_header(c, f) != 0) {
        sluice__conn_lost(c, SLUICE_ENOMEM);
        return;
      }
      if (c->asm_d->body_size == 0) delivery_complete(c);
      return;
    case AMQP_FRAME_BODY: on_body(c, f); return;
    default: return; /* a heartbeat: its arrival is all it says */
  }
}

/* ---- reading ------------------------------------------------------------- */

static int stop_asked(const sluice_consumer *c) {
  return !c->stopping &&
         atomic_load_explicit(&c->stop_requested, memory_order_relaxed);
}

/* 1 if the socket cannot hold a delivery now: when it was last read, the
 * broker had sent every delivery its prefetch window allowed against the
 * acks it could have seen, and all of them have been read; and the acks
 * written since went out in one write, just now. The next delivery needs
 * those acks, a round trip away, so reading the socket again at once
 * finds nothing (a recv(2) that fails with EAGAIN and the poll(2)
 * rabbitmq-c makes after it); the event loop says when it does. At
 * prefetch 1 this is every message. (Acks written earlier in the pass may
 * have been answered already: then the socket is read, as always.) Only
 * where sluice writes the acks itself (plain TCP: no bytes wait in an
 * OpenSSL buffer that the event loop cannot see), in MANUAL mode, between
 * deliveries. A wrong guess costs a wake-up of the event loop, never a
 * frame: the socket's event is level-triggered, and other frames
 * (heartbeats, closes, cancels) wake it as they always did. */
static int window_drained(const sluice_consumer *c) {
  uint64_t window = (uint64_t)c->o.prefetch * (uint64_t)c->n_subs;
  return c->own_acks && c->reading && !c->asm_d &&
         c->o.ack_mode == SLUICE_ACK_MANUAL && window > 0 &&
         c->win_tx_prev <= c->win_tx_at_read &&
         c->win_rx - c->win_tx_at_read >= window;
}

/* rabbitmq-c decodes each frame into the pool of its channel. After a
 * frame of the consuming channel only that pool is recycled
 * (amqp_maybe_release_buffers_on_channel(), about 80 instructions), and all
 * of them every RELEASE_ALL_EVERY times (amqp_maybe_release_buffers()
 * walks rabbitmq-c's whole pool table, about 280): the other channels'
 * pools hold only what synchronous calls (the topology channel) and the
 * broker's rare connection methods left there. A frame of another channel
 * releases them all at once. Either refuses while frames of the channel
 * wait in rabbitmq-c's queue, as before. */
#define RELEASE_ALL_EVERY 64

static void release_pools(sluice_consumer *c, amqp_channel_t ch) {
  if (ch == SLUICE__CH_MAIN && ++c->release_main < RELEASE_ALL_EVERY) {
    amqp_maybe_release_buffers_on_channel(c->conn, ch);
    return;
  }
  c->release_main = 0;
  amqp_maybe_release_buffers(c->conn);
}

/* Before the socket is read again in a pass (by sluice or by rabbitmq-c):
 * the frames read so far are handled, and their acks go out first, since
 * the broker may be waiting for them (prefetch 1 waits for every one).
 * Then, if the socket was read in this pass already, whether to read it
 * again or let the event loop say when. 0 ends the pass. */
static int socket_turn(sluice_consumer *c, int *read) {
  if (c->ackw.n) {
    sluice__acks_write(c);
    if (!c->connected) return 0;
  }
  if (*read && window_drained(c)) return 0;
  *read = 1;
  c->win_tx_at_read = c->win_tx;
  return 1;
}

/* The next frame of what sluice read (own_reads): AMQP_STATUS_OK and a
 * frame (heartbeats included), AMQP_STATUS_TIMEOUT once rx_buf is
 * decoded without completing one (rabbitmq-c keeps the part it has), or
 * rabbitmq-c's error for bytes that are not AMQP. */
static int decode_next(sluice_consumer *c, amqp_frame_t *f) {
  while (own_buffered(c)) {
    amqp_bytes_t in = {c->rx_len - c->rx_off, c->rx_buf + c->rx_off};
    int used = amqp_handle_input(c->conn, in, f);
    if (used < 0) return used;
    c->rx_off += (size_t)used;
    if (f->frame_type) return AMQP_STATUS_OK;
  }
  return AMQP_STATUS_TIMEOUT;
}

/* The next frame, reading the socket into rx_buf when it is all decoded:
 * one recv(2) per pass of the event loop at low rates, one per RX_BUF
 * bytes at high ones, and no clock read (rabbitmq-c's wait call reads it
 * for every frame, even with a zero timeout). */
static int own_next(sluice_consumer *c, amqp_frame_t *f, int *read) {
  for (;;) {
    int st = decode_next(c, f);
    if (st != AMQP_STATUS_TIMEOUT) return st;
    if (!socket_turn(c, read)) return AMQP_STATUS_TIMEOUT;
    ssize_t n = recv(c->fd, c->rx_buf, RX_BUF, 0); /* the fd is O_NONBLOCK */
    if (n > 0) {
      c->rx_off = 0;
      c->rx_len = (size_t)n;
      continue;
    }
    if (n == 0) return AMQP_STATUS_CONNECTION_CLOSED;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return AMQP_STATUS_TIMEOUT;
    return AMQP_STATUS_SOCKET_ERROR;
  }
}

/* The next frame from rabbitmq-c's buffer, or through it from the socket.
 * Where sluice reads the socket itself, only from rabbitmq-c's buffer and
 * queue: its socket is pointed at an empty socketpair for the call, so
 * that a partial frame at the end of its buffer goes into its decoder and
 * the call says AMQP_STATUS_TIMEOUT instead of reading the socket for the
 * rest (which would refill its buffer, and keep rabbitmq-c the reader for
 * as long as the broker stays ahead). */
static int rmq_next(sluice_consumer *c, amqp_frame_t *f, int *read) {
  struct timeval tv = {0, 0};
  if (c->own_reads) {
    amqp_socket_t *s = amqp_get_socket(c->conn);
    amqp_tcp_socket_set_sockfd(s, c->mute[0]);
    int st = amqp_simple_wait_frame_noblock(c->conn, f, &tv);
    amqp_tcp_socket_set_sockfd(s, c->fd);
    return st;
  }
  if (!rmq_buffered(c) && !socket_turn(c, read)) return AMQP_STATUS_TIMEOUT;
  return amqp_simple_wait_frame_noblock(c->conn, f, &tv);
}

static void read_frames(sluice_consumer *c) {
  int budget = READ_BUDGET;
  int got = 0, read = 0;
  if (stop_asked(c) && !c->stopped) sluice__begin_stop(c);
  while (budget-- > 0 && c->connected && may_read(c)) {
    amqp_frame_t f;
    if (c->park_head) {
      /* A handler's synchronous call parked what sluice had read ahead of
       * it: that comes before anything still unread. */
      if (!take_parked(c)) break;
      continue;
    }
    /* What a synchronous call left in rabbitmq-c's buffer comes first: it
     * read it after everything sluice had read (sluice__reads_settle). */
    int from_rmq = !c->own_reads || rmq_pending(c);
    int st = from_rmq ? rmq_next(c, &f, &read) : own_next(c, &f, &read);
    if (st == AMQP_STATUS_TIMEOUT && from_rmq && c->own_reads) {
      c->rmq_check = 0; /* rabbitmq-c's buffer is empty: sluice reads on */
      continue;
    }
    if (st == AMQP_STATUS_TIMEOUT || !c->connected) break;
    if (st != AMQP_STATUS_OK) {
      sluice__log(c, SLUICE_LOG_WARN, "connection lost: %s",
                  amqp_error_string2(st));
      sluice__conn_lost(c, sluice__amqp_status_to_err(st));
      return;
    }
    got = 1;
    handle_frame(c, &f);
    if (stop_asked(c) && !c->asm_d) {
      /* An inline handler asked to stop: finish the delivery being read,
       * leave the rest to the broker. */
      if (c->conn) amqp_maybe_release_buffers(c->conn);
      sluice__begin_stop(c);
      if (!c->connected) return;
      continue;
    }
    /* Every frame was copied out: rabbitmq-c's pools can be recycled
     * (docs/rabbitmq-c-event-loop.md, "The amqp_maybe_release_buffers
     * hazard"). Once per delivery, when its last frame is handled, and
     * after every body frame (up to frame_max each) and every frame
     * outside a delivery: the small method and header frames of a
     * delivery wait for its body. */
    if (c->conn && (!c->asm_d || f.frame_type == AMQP_FRAME_BODY))
      release_pools(c, f.channel);
  }
  if (got) c->last_rx_ms = sluice__now_ms();
  if (budget < 0 && c->connected && may_read(c) && buffered(c))
    schedule_drain(c);
}

void sluice__read_frames(sluice_consumer *c) {
  /* The acks of the deliveries handled inline go out together, once what
   * rabbitmq-c read in one go is handled or a quarter of the prefetch
   * window is settled (delivery.c, "acks"). */
  sluice__acks_hold(c);
  read_frames(c);
  sluice__acks_release(c);
}

/* ---- sluice's own reads ---------------------------------------------------
 * On a plain TCP connection where sluice writes its acks (own_acks) it also
 * reads the socket itself: recv(2) into rx_buf, and rabbitmq-c only decodes
 * (amqp_handle_input(), which keeps a partly received frame in its state
 * whoever feeds it). That skips, per frame, rabbitmq-c's wait loop and its
 * clock reads (docs/rabbitmq-c-event-loop.md, "Reading the socket
 * itself"). Two rules keep the byte stream in one order:
 *  - rabbitmq-c still reads the socket in synchronous calls: before one,
 *    what rx_buf holds is decoded (sluice__reads_settle) or, before a
 *    close, dropped; after one, what it read past its reply is taken from
 *    its buffer before sluice reads the socket again (read_frames);
 *  - rabbitmq-c's heartbeat deadlines only move when it reads the socket
 *    itself, so they would expire under sluice's reads and fail its next
 *    wait: they are off (amqp_tune_connection(), heartbeat 0) and
 *    sluice__heartbeat() sends and checks the negotiated heartbeat. */

static int own_reads_wanted(void) {
  const char *e = getenv("SLUICE_OWN_READS");
  return !(e && strcmp(e, "0") == 0);
}

int sluice__reads_begin(sluice_consumer *c) {
  c->own_reads = 0;
  c->rx_off = c->rx_len = 0;
  /* amqp_tune_connection() aborts unless rabbitmq-c is between frames. */
  if (!c->own_acks || !own_reads_wanted() || !amqp_release_buffers_ok(c->conn))
    return 0;
  if (!c->rx_buf) {
    c->rx_buf = malloc(RX_BUF);
    if (!c->rx_buf) return SLUICE_ENOMEM;
  }
  if (c->mute[0] < 0 &&
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                 c->mute) != 0)
    return 0; /* no fd to spare: rabbitmq-c reads, as over TLS */
  if (amqp_tune_connection(c->conn, amqp_get_channel_max(c->conn),
                           amqp_get_frame_max(c->conn), 0) != AMQP_STATUS_OK)
    return SLUICE_ENOMEM; /* its only failure: the outbound buffer */
  c->own_reads = 1;
  c->rmq_check = 1; /* what the attempt's calls read past their replies */
  return 0;
}

/* Decode what rx_buf holds, handing each frame to handle_frame (parking
 * deliveries) or forgetting it. 0, or -1 if the bytes are not AMQP. */
static int decode_rest(sluice_consumer *c, int handle) {
  int got = 0;
  while (c->connected && own_buffered(c)) {
    amqp_frame_t f;
    int st = decode_next(c, &f);
    if (st == AMQP_STATUS_TIMEOUT) break;
    if (st != AMQP_STATUS_OK) {
      c->rx_off = c->rx_len; /* not AMQP: nothing after it can be read */
      sluice__log(c, SLUICE_LOG_WARN, "connection lost: %s",
                  amqp_error_string2(st));
      if (handle) sluice__conn_lost(c, sluice__amqp_status_to_err(st));
      return -1;
    }
    got = 1;
    if (handle) handle_frame(c, &f);
    if (c->conn && (!handle || !c->asm_d || f.frame_type == AMQP_FRAME_BODY))
      release_pools(c, f.channel);
  }
  if (got) c->last_rx_ms = sluice__now_ms();
  return 0;
}

void sluice__reads_settle(sluice_consumer *c) {
  c->rmq_check = 1; /* the call that follows may read past its reply */
  if (!c->connected || !own_buffered(c)) return;
  size_t before = c->n_parked;
  c->parking = 1;
  decode_rest(c, 1);
  c->parking = 0;
  if (!c->connected) return;
  if (c->n_parked > before)
    sluice__log(c, SLUICE_LOG_DEBUG,
                "synchronous call: %zu deliveries read ahead of it wait "
                "their turn",
                c->n_parked - before);
  sluice__update_pause(c);
  if (c->park_head) schedule_drain(c);
}

int sluice__reads_drop(sluice_consumer *c) {
  if (!c->conn || !own_buffered(c)) return 0;
  sluice__log(c, SLUICE_LOG_DEBUG,
              "close: %zu bytes read ahead are dropped (the broker requeues "
              "what was not acknowledged)",
              c->rx_len - c->rx_off);
  return decode_rest(c, 0);
}

/* ---- heartbeats ---------------------------------------------------------- */

/* Reading is paused for back-pressure, so a close or a reset would wait
 * for the bound to free up: look at the socket without reading it. A
 * reset has thrown the unread bytes away anyway. After an orderly close,
 * MANUAL mode gives up the unread rest too (the broker redelivers all it
 * held), but autoAck keeps it: those messages will never be sent again,
 * and they are read once the handlers free the bound. Returns 1 if the
 * connection was declared lost. */
static int paused_peer_gone(sluice_consumer *c) {
  struct pollfd pf = {c->fd, POLLRDHUP, 0};
  if (poll(&pf, 1, 0) != 1) return 0;
  int reset = (pf.revents & (POLLERR | POLLHUP)) != 0;
  if (!reset &&
      !((pf.revents & POLLRDHUP) && c->o.ack_mode == SLUICE_ACK_MANUAL))
    return 0;
  sluice__log(c, SLUICE_LOG_WARN, "connection %s while reading was paused",
              reset ? "reset" : "closed by the broker");
  sluice__conn_lost(c, reset ? SLUICE_ESOCKET : SLUICE_ECLOSED);
  return 1;
}

void sluice__heartbeat(sluice_consumer *c) {
  if (!c->connected) return;
  if (may_read(c)) {
    /* rabbitmq-c sends and checks heartbeats only inside its wait calls:
     * a quiet socket never wakes the read event, so drive it from here
     * (docs/rabbitmq-c-event-loop.md, "Heartbeats"). Where sluice reads
     * the socket itself, rabbitmq-c's are off: the checks below. */
    sluice__read_frames(c);
    if (!c->own_reads || !c->connected) return;
  } else if (paused_peer_gone(c)) {
    return;
  }
  /* Bytes waiting in the kernel prove the peer alive; otherwise apply the
   * two-interval rule ourselves. */
  int pending = 0;
  uint64_t now = sluice__now_ms();
  if ((ioctl(c->fd, FIONREAD, &pending) == 0 && pending > 0) ||
      amqp_data_in_buffer(c->conn) || own_buffered(c))
    c->last_rx_ms = now;
  else if (now - c->last_rx_ms > 2000u * (uint64_t)c->heartbeat_s) {
    sluice__log(c, SLUICE_LOG_WARN, "no heartbeat for %llu ms: peer is gone",
                (unsigned long long)(now - c->last_rx_ms));
    sluice__conn_lost(c, SLUICE_EHEARTBEAT);
    return;
  }
  if (sluice__fd_writable(c->fd)) {
    amqp_frame_t hb;
    memset(&hb, 0, sizeof(hb));
    hb.frame_type = AMQP_FRAME_HEARTBEAT;
    hb.channel = 0;
    if (amqp_send_frame(c->conn, &hb) != 0)
      sluice__conn_lost(c, SLUICE_ESOCKET);
  }
}
