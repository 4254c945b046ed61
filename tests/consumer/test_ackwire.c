/* SPDX-License-Identifier: MIT */
/* The ack frames sluice writes itself (consumer/ackwire.c): byte for byte
 * what rabbitmq-c writes for the same basic.ack, basic.nack and
 * basic.reject (its frame layout around amqp_encode_method's arguments),
 * and written whole through a socket that takes them only in parts. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include <amqp.h>
#include <amqp_framing.h>

#include "consumer/ackwire.h"

/* A method frame as rabbitmq-c's amqp_send_frame lays it out: type,
 * channel, payload size, then the method id and amqp_encode_method's
 * arguments as the payload, then the frame end. */
static size_t lib_frame(unsigned char *out, uint16_t channel,
                        amqp_method_number_t id, void *args) {
  unsigned char payload[64];
  amqp_bytes_t enc = {sizeof(payload) - 4, payload + 4};
  int n = amqp_encode_method(id, args, enc);
  assert_true(n > 0);
  payload[0] = (unsigned char)(id >> 24);
  payload[1] = (unsigned char)(id >> 16);
  payload[2] = (unsigned char)(id >> 8);
  payload[3] = (unsigned char)id;
  size_t size = (size_t)n + 4;
  out[0] = AMQP_FRAME_METHOD;
  out[1] = (unsigned char)(channel >> 8);
  out[2] = (unsigned char)channel;
  out[3] = (unsigned char)(size >> 24);
  out[4] = (unsigned char)(size >> 16);
  out[5] = (unsigned char)(size >> 8);
  out[6] = (unsigned char)size;
  memcpy(out + 7, payload, size);
  out[7 + size] = AMQP_FRAME_END;
  return size + 8;
}

static const uint64_t tags[] = {
    0,         1, 2, 255, 256, 65535, 0x0102030405060708ull, (uint64_t)1 << 32,
    UINT64_MAX};
static const uint16_t channels[] = {0, 1, 2, 258, 65535};

static void encode_matches_rabbitmq_c(void **s) {
  (void)s;
  for (size_t ci = 0; ci < sizeof(channels) / sizeof(*channels); ci++) {
    for (size_t ti = 0; ti < sizeof(tags) / sizeof(*tags); ti++) {
      uint16_t ch = channels[ci];
      uint64_t tag = tags[ti];
      for (int multiple = 0; multiple <= 1; multiple++) {
        unsigned char want[64], got[SLUICE__ACKWIRE_FRAME];

        amqp_basic_ack_t ack = {tag, (amqp_boolean_t)multiple};
        assert_int_equal(lib_frame(want, ch, AMQP_BASIC_ACK_METHOD, &ack),
                         SLUICE__ACKWIRE_FRAME);
        sluice__ackwire_encode(got, ch, SLUICE__ACKQ_ACK, tag, multiple);
        assert_memory_equal(got, want, SLUICE__ACKWIRE_FRAME);

        /* as the consumer sends them: nack requeues, reject does not */
        amqp_basic_nack_t nack = {tag, (amqp_boolean_t)multiple, 1};
        assert_int_equal(lib_frame(want, ch, AMQP_BASIC_NACK_METHOD, &nack),
                         SLUICE__ACKWIRE_FRAME);
        sluice__ackwire_encode(got, ch, SLUICE__ACKQ_NACK, tag, multiple);
        assert_memory_equal(got, want, SLUICE__ACKWIRE_FRAME);
      }
      unsigned char want[64], got[SLUICE__ACKWIRE_FRAME];
      amqp_basic_reject_t rej = {tag, 0};
      assert_int_equal(lib_frame(want, ch, AMQP_BASIC_REJECT_METHOD, &rej),
                       SLUICE__ACKWIRE_FRAME);
      sluice__ackwire_encode(got, ch, SLUICE__ACKQ_REJECT, tag, 0);
      assert_memory_equal(got, want, SLUICE__ACKWIRE_FRAME);
    }
  }
}

/* The frames as rabbitmq-c decodes them, from a buffer holding several. */
static void decodes_with_rabbitmq_c(void **s) {
  (void)s;
  sluice__ackwire w;
  memset(&w, 0, sizeof(w));
  for (size_t i = 0; i < SLUICE__ACKWIRE_MAX; i++)
    sluice__ackwire_add(&w, 1, (sluice__ackq_kind)(i % 3), 1000 + i, i % 3 == 0,
                        1);
  assert_int_equal(w.n, SLUICE__ACKWIRE_MAX);
  amqp_connection_state_t conn = amqp_new_connection();
  /* from the protocol header's state to between frames, as a client */
  static const uint8_t header[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};
  amqp_frame_t f;
  amqp_bytes_t in = {sizeof(header), (void *)header};
  assert_int_equal(amqp_handle_input(conn, in, &f), (int)sizeof(header));
  size_t off = 0;
  for (size_t i = 0; i < w.n; i++) {
    amqp_bytes_t b = {sizeof(w.buf) - off, w.buf + off};
    memset(&f, 0, sizeof(f));
    int used = amqp_handle_input(conn, b, &f);
    assert_int_equal(used, SLUICE__ACKWIRE_FRAME);
    off += (size_t)used;
    assert_int_equal(f.frame_type, AMQP_FRAME_METHOD);
    assert_int_equal(f.channel, 1);
    switch (i % 3) {
      case SLUICE__ACKQ_ACK: {
        assert_int_equal(f.payload.method.id, AMQP_BASIC_ACK_METHOD);
        amqp_basic_ack_t *m = f.payload.method.decoded;
        assert_int_equal(m->delivery_tag, 1000 + i);
        assert_int_equal(m->multiple, 1);
        break;
      }
      case SLUICE__ACKQ_NACK: {
        assert_int_equal(f.payload.method.id, AMQP_BASIC_NACK_METHOD);
        amqp_basic_nack_t *m = f.payload.method.decoded;
        assert_int_equal(m->delivery_tag, 1000 + i);
        assert_int_equal(m->multiple, 0);
        assert_int_equal(m->requeue, 1);
        break;
      }
      default: {
        assert_int_equal(f.payload.method.id, AMQP_BASIC_REJECT_METHOD);
        amqp_basic_reject_t *m = f.payload.method.decoded;
        assert_int_equal(m->delivery_tag, 1000 + i);
        assert_int_equal(m->requeue, 0);
        break;
      }
    }
    amqp_maybe_release_buffers(conn);
  }
  assert_int_equal(off, SLUICE__ACKWIRE_MAX * SLUICE__ACKWIRE_FRAME);
  amqp_destroy_connection(conn);
}

/* ---- writing ------------------------------------------------------------- */

struct reader {
  int fd;
  size_t want; /* bytes to read in all */
  unsigned char *got;
};

static void *read_all(void *p) {
  struct reader *r = p;
  size_t have = 0;
  while (have < r->want) {
    ssize_t n = read(r->fd, r->got + have, r->want - have);
    if (n > 0) have += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else break;
  }
  r->want = have;
  return NULL;
}

/* Fill the socket until it takes no more; returns the bytes written. */
static size_t fill(int fd) {
  static unsigned char junk[4096];
  size_t total = 0;
  for (;;) {
    ssize_t n = send(fd, junk, sizeof(junk), MSG_DONTWAIT);
    if (n > 0) total += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else break;
  }
  /* then byte by byte, to leave no room at all */
  for (;;) {
    ssize_t n = send(fd, junk, 1, MSG_DONTWAIT);
    if (n != 1) break;
    total++;
  }
  return total;
}

static void pair(int sv[2]) {
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  int small = 4096;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
}

static void some_frames(sluice__ackwire *w) {
  memset(w, 0, sizeof(*w));
  for (uint64_t i = 0; i < SLUICE__ACKWIRE_MAX; i++)
    sluice__ackwire_add(w, 1, SLUICE__ACKQ_ACK, i + 1, 0, 1);
}

/* A socket with no room: the frames still go out whole, each part as the
 * reader makes room. */
static void short_writes_are_completed(void **s) {
  (void)s;
  int sv[2];
  pair(sv);
  size_t junk = fill(sv[0]);
  sluice__ackwire w;
  some_frames(&w);
  size_t len = w.n * SLUICE__ACKWIRE_FRAME;
  struct reader r = {sv[1], junk + len, malloc(junk + len)};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, read_all, &r), 0);
  assert_int_equal(sluice__ackwire_write(&w, sv[0], 60000), w.n);
  close(sv[0]);
  pthread_join(t, NULL);
  assert_int_equal(r.want, junk + len);
  assert_memory_equal(r.got + junk, w.buf, len);
  free(r.got);
  close(sv[1]);
}

/* Nobody reads: the write gives up after its wait and says how many
 * frames went out whole (none: the socket had no room). */
static void a_stuck_socket_gives_up(void **s) {
  (void)s;
  int sv[2];
  pair(sv);
  fill(sv[0]);
  sluice__ackwire w;
  some_frames(&w);
  assert_true(sluice__ackwire_write(&w, sv[0], 20) < w.n);
  close(sv[0]);
  close(sv[1]);
}

/* The peer is gone: an error, not a wait. */
static void a_closed_peer_is_an_error(void **s) {
  (void)s;
  int sv[2];
  pair(sv);
  close(sv[1]);
  sluice__ackwire w;
  some_frames(&w);
  assert_int_equal(sluice__ackwire_write(&w, sv[0], 60000), 0);
  close(sv[0]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(encode_matches_rabbitmq_c),
      cmocka_unit_test(decodes_with_rabbitmq_c),
      cmocka_unit_test(short_writes_are_completed),
      cmocka_unit_test(a_stuck_socket_gives_up),
      cmocka_unit_test(a_closed_peer_is_an_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
