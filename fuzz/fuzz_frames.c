/* SPDX-License-Identifier: MIT */
/* Fuzz target: frame-by-frame delivery assembly (consumer/frames.c) and
 * what follows it (delivery.c: the in-flight bound, dispatch, completion,
 * acks), fed through a fake socket.
 *
 * The seam: the consumer reads frames from a rabbitmq-c connection,
 * whatever is at the other end of its socket. The harness gives a consumer
 * a connection whose socket is one end of a socketpair (rabbitmq-c's
 * amqp_tcp_socket_set_sockfd) and writes the broker's side into the other
 * end, frame by frame as the input says (fuzz_frames.h); the consumer runs
 * without an event loop (its watches are no-ops then) and the harness fires
 * the watches a loop would: READ when there is something to read, ACK for
 * the ack timer. No broker and no change to the production code: the same
 * sluice__read_frames() a real connection's READ event calls.
 *
 * Handlers complete by the first body byte: 'd' defers (completed on
 * FZ_CTL_COMPLETE and at the end), 'n' nacks, 'r' rejects, 'x' returns an
 * invalid value, anything else acks.
 *
 * Checked on every input, beyond ASan and UBSan:
 *  - every message a handler sees has the body the header announced,
 *    NUL-terminated, and the queue and consumer tag of its subscription;
 *  - the in-flight bound: never more deliveries held than max_inflight,
 *    and reading never paused while a delivery is half read (an admitted
 *    delivery always completes);
 *  - a completed handle is stale: a second sluice_delivery_done() returns
 *    SLUICE_EALREADY and acts on nothing, sluice_delivery_message() is NULL;
 *  - the counters add up, and nothing is held once the connection is gone
 *    and every deferred delivery was completed;
 *  - what the consumer writes is whole frames, one after the other (its
 *    own ack frames, consumer/ackwire.c, unless FZ_OPT_LIB_ACKS).
 * Without FZ_OPT_LIB_ACKS sluice also reads the socket itself, as on a
 * plain TCP connection (frames.c, "sluice's own reads"). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#include "consumer/internal.h"
#include "fuzz_frames.h"
#include "fuzz.h"

#define MAX_DEFERRED 4096

typedef struct harness {
  sluice_consumer *c;
  int peer; /* the broker's end */
  sluice_delivery *deferred[MAX_DEFERRED];
  size_t n_deferred;
  sluice_delivery *completed[MAX_DEFERRED];
  size_t n_completed;
  uint64_t handled;
  uint64_t wire_at, wire_size; /* drain_peer's place in the frame read */
} harness;

static int handler(sluice_delivery *d, const sluice_message *m, void *user) {
  harness *h = user;
  h->handled++;
  if (!m->body || ((const char *)m->body)[m->body_len] != '\0') abort();
  if (strcmp(m->queue, FZ_QUEUE) != 0) abort();
  if (strcmp(m->consumer_tag, FZ_TAG) != 0) abort();
  if (sluice_delivery_message(d) != m) abort();
  char first = m->body_len ? ((const char *)m->body)[0] : 0;
  switch (first) {
    case 'd':
      if (h->n_deferred == MAX_DEFERRED) return SLUICE_ACK;
      h->deferred[h->n_deferred++] = d;
      return SLUICE_DEFER;
    case 'n': return SLUICE_NACK;
    case 'r': return SLUICE_REJECT;
    case 'x': return 42;
    default: return SLUICE_ACK;
  }
}

/* What the broker would do with our acks: read and forget them, after
 * checking they are whole frames one after the other (sluice writes its
 * own ack frames beside rabbitmq-c's: none may be torn or interleaved). */
static void drain_peer(harness *h) {
  uint8_t buf[65536];
  ssize_t n;
  while ((n = read(h->peer, buf, sizeof(buf))) > 0) {
    for (ssize_t i = 0; i < n; i++) {
      uint8_t b = buf[i];
      if (h->wire_at < 7) {
        if (h->wire_at == 0 && (b < 1 || b > 8)) abort(); /* frame type */
        if (h->wire_at >= 3) h->wire_size = h->wire_size << 8 | b;
        h->wire_at++;
      } else if (h->wire_at - 7 < h->wire_size) {
        h->wire_at++;
      } else {
        if (b != AMQP_FRAME_END) abort();
        h->wire_at = 0;
        h->wire_size = 0;
      }
    }
  }
}

static void check_bound(const harness *h) {
  const sluice_consumer *c = h->c;
  if (c->bound.count > c->o.max_inflight) abort();
  if (c->bound.bytes > ((size_t)1 << 40)) abort(); /* wrapped below 0 */
  /* An admitted delivery must complete: never paused halfway. */
  if (c->connected && c->asm_d && !sluice__bound_may_read(&c->bound, 1))
    abort();
}

/* The READ watch fires until nothing more can be read. */
static void pump(harness *h) {
  for (int i = 0; i < 64 && h->c->connected; i++) {
    uint64_t before = h->handled;
    size_t held = h->c->bound.count;
    sluice__on_watch(h->c, SLUICE__W_READ);
    check_bound(h);
    drain_peer(h);
    if (h->handled == before && h->c->bound.count == held) break;
  }
}

static void complete_deferred(harness *h) {
  sluice_consumer_stats before, after;
  for (size_t i = 0; i < h->n_deferred; i++) {
    int rc = sluice_delivery_done(h->deferred[i], SLUICE_ACK);
    if (rc != 0 && rc != SLUICE_ESTALE) abort();
    if (h->n_completed < MAX_DEFERRED)
      h->completed[h->n_completed++] = h->deferred[i];
  }
  h->n_deferred = 0;
  /* Stale handles act on nothing, whichever delivery reuses their slot. */
  sluice_consumer_get_stats(h->c, &before);
  for (size_t i = 0; i < h->n_completed; i++) {
    if (sluice_delivery_done(h->completed[i], SLUICE_REJECT) != SLUICE_EALREADY)
      abort();
    if (sluice_delivery_message(h->completed[i]) != NULL) abort();
    sluice_delivery_enter(h->completed[i]);
    sluice_delivery_leave(h->completed[i]);
  }
  sluice_consumer_get_stats(h->c, &after);
  if (after.rejected != before.rejected || after.in_flight != before.in_flight)
    abort();
  check_bound(h);
}

static void write_all(harness *h, const uint8_t *p, size_t n) {
  int stalls = 0;
  while (n > 0) {
    ssize_t w = write(h->peer, p, n);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      stalls = 0;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno != EAGAIN) return; /* the consumer hung up */
    /* Full: let the consumer read, completing what it holds if that is
     * what it waits for. If it still reads nothing, it never will: an
     * admitted delivery is stuck (or the bound forgot a release). */
    pump(h);
    complete_deferred(h);
    pump(h);
    if (!h->c->connected) return;
    if (++stalls > 3) abort();
  }
}

static void write_frame(harness *h, int type, int chan, const uint8_t *p,
                        size_t len) {
  static const uint8_t types[] = {AMQP_FRAME_METHOD, AMQP_FRAME_HEADER,
                                  AMQP_FRAME_BODY, AMQP_FRAME_HEARTBEAT};
  uint8_t head[7] = {types[type],          (uint8_t)(chan >> 8),
                     (uint8_t)chan,        (uint8_t)(len >> 24),
                     (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                     (uint8_t)len};
  uint8_t end = AMQP_FRAME_END;
  write_all(h, head, sizeof(head));
  write_all(h, p, len);
  write_all(h, &end, 1);
}

/* The application stops (or frees the consumer) now: the graceful close
 * (conn.c) drops what sluice read ahead and reads the rest through
 * rabbitmq-c's synchronous close calls: frames, part of one, or bytes that
 * are not AMQP, after which rabbitmq-c 0.11 must not be read again. The
 * peer never answers: each call ends at a 1 ms timeout. What the
 * connection held then goes as sluice__conn_lost() lets it go. */
static void close_now(harness *h) {
  sluice_consumer *c = h->c;
  if (!c->connected) return;
  struct timeval tv = {0, 1000};
  amqp_set_rpc_timeout(c->conn, &tv);
  atomic_fetch_add(&c->generation, 1);
  sluice__disconnect(c, 1);
  sluice__deliveries_conn_lost(c);
}

static sluice_consumer *make_consumer(uint8_t opts, harness *h) {
  sluice_consumer_opts o;
  memset(&o, 0, sizeof(o));
  o.log_level = -1;
  if (opts & FZ_OPT_AUTO) o.ack_mode = SLUICE_ACK_AUTO;
  if (opts & FZ_OPT_INFLIGHT_1) o.max_inflight = 1;
  if (opts & FZ_OPT_SMALL_BODY) o.max_body = 16;
  if (opts & FZ_OPT_SMALL_BYTES) o.max_inflight_bytes = 32;
  if (opts & FZ_OPT_ACK_EACH) o.ack_batch = 1;
  sluice_consumer *c = NULL;
  if (sluice_consumer_new(&o, &c)) return NULL;
  sluice_subscribe_opts so = {.queue = FZ_QUEUE,
                              .handler = handler,
                              .user = h,
                              .consumer_tag = FZ_TAG};
  if (sluice_consumer_subscribe(c, &so)) {
    sluice_consumer_free(c);
    return NULL;
  }
  return c;
}

/* Hand the consumer a connection on `fd`, as sluice__connect() does after
 * the handshake, and mark it running on this thread with no loop. A new
 * rabbitmq-c connection waits for the start of a handshake: a protocol
 * header takes it to the state between frames, where it can be tuned to
 * sluice's frame_max. */
static int attach(sluice_consumer *c, int fd, int peer, uint8_t opts) {
  amqp_connection_state_t conn = amqp_new_connection();
  if (!conn) return -1;
  amqp_socket_t *sock = amqp_tcp_socket_new(conn);
  if (!sock) {
    amqp_destroy_connection(conn);
    return -1;
  }
  amqp_tcp_socket_set_sockfd(sock, fd); /* the connection owns it now */
  static const uint8_t header[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};
  amqp_frame_t f;
  struct timeval tv = {0, 0};
  int st = AMQP_STATUS_OK;
  if (write(peer, header, sizeof(header)) == sizeof(header))
    for (int i = 0; i < 4 && st == AMQP_STATUS_OK; i++)
      st = amqp_simple_wait_frame_noblock(conn, &f, &tv);
  if (st != AMQP_STATUS_TIMEOUT ||
      amqp_tune_connection(conn, 0, SLUICE__DEFAULT_FRAME_MAX, 0)) {
    amqp_destroy_connection(conn);
    return -1;
  }
  c->conn = conn;
  c->fd = fd;
  c->own_acks = !(opts & FZ_OPT_LIB_ACKS); /* a tcp socket, as adopted */
  /* and, with its own acks, sluice's own reads (frames.c), as adopted */
  if (sluice__reads_begin(c)) {
    c->conn = NULL;
    amqp_destroy_connection(conn);
    return -1;
  }
  c->connected = 1;
  c->started = 1;
  c->loop_thread = pthread_self();
  c->subs[0].active = 1;
  c->last_rx_ms = sluice__now_ms();
  return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  signal(SIGPIPE, SIG_IGN);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int init;
  if (!init++) signal(SIGPIPE, SIG_IGN); /* also without libFuzzer */
  if (size < 1 || size > (1 << 16)) return 0;
  harness *h = calloc(1, sizeof(*h));
  if (!h) return 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    free(h);
    return 0;
  }
  fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
  fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK);
  h->peer = sv[1];
  h->c = make_consumer(data[0], h);
  if (!h->c || attach(h->c, sv[0], sv[1], data[0])) {
    if (h->c) sluice_consumer_free(h->c);
    close(sv[1]); /* sv[0] is closed with its connection */
    free(h);
    return 0;
  }
  sluice_consumer *c = h->c;

  size_t i = 1;
  while (i < size && c->connected) {
    uint8_t op = data[i++];
    if (op >= 0xF0) {
      if (op == FZ_CTL_READ) pump(h);
      if (op == FZ_CTL_COMPLETE) complete_deferred(h), pump(h);
      if (op == FZ_CTL_ACKS) sluice__on_watch(c, SLUICE__W_ACK);
      if (op == FZ_CTL_CLOSE) close_now(h);
      if (op != FZ_CTL_RAW) continue;
    }
    size_t len = 0;
    if (i + 2 <= size) len = (size_t)data[i] << 8 | data[i + 1];
    i += 2;
    if (i > size) break;
    if (len > size - i) len = size - i;
    if (op == FZ_CTL_RAW) write_all(h, data + i, len);
    else write_frame(h, op & 3, (op >> 2) & 3, data + i, len);
    i += len;
  }
  /* Complete what handlers deferred until they defer no more. */
  for (int k = 0; k < 16; k++) {
    pump(h);
    if (!h->n_deferred) break;
    complete_deferred(h);
  }
  sluice__on_watch(c, SLUICE__W_ACK);
  drain_peer(h);

  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  /* every delivery handed to a handler and completed was acknowledged,
   * or is waiting in the ack queue, or went stale */
  uint64_t settled = st.acked + st.nacked + st.rejected + st.stale + c->acks.n;
  if (c->o.ack_mode == SLUICE_ACK_MANUAL &&
      settled < st.delivered - st.in_handler)
    abort();

  if (getenv("FZ_VERBOSE"))
    fprintf(stderr,
            "frames: %llu handled, %llu acked %llu nacked %llu rejected, "
            "%llu too big, %llu stale, %llu pauses, connected %d\n",
            (unsigned long long)h->handled, (unsigned long long)st.acked,
            (unsigned long long)st.nacked, (unsigned long long)st.rejected,
            (unsigned long long)st.too_big, (unsigned long long)st.stale,
            (unsigned long long)st.read_pauses, (int)c->connected);

  /* The broker goes away: once the last deferred delivery is completed
   * (stale now), nothing may stay held. */
  close(h->peer);
  if (c->connected) sluice__conn_lost(c, SLUICE_ECLOSED);
  complete_deferred(h);
  if (c->bound.count != 0 || c->bound.bytes != 0) abort();
  sluice_consumer_free(c);
  free(h);
  return 0;
}
