/* SPDX-License-Identifier: MIT */
/* Seeds of the frames target (fuzz_frames.c, which describes the record
 * format): deliveries as a broker sends them, and the broker's other
 * methods in between. */
#include <stdio.h>
#include <string.h>

#include <amqp.h>
#include <amqp_framing.h>

#include "fuzz_frames.h"
#include "gen_corpus.h"

typedef struct seed {
  uint8_t buf[1 << 16];
  size_t n;
} seed;

static void rec(seed *s, int type, int chan, const void *p, size_t len) {
  s->buf[s->n++] = (uint8_t)(type | (chan << 2));
  s->buf[s->n++] = (uint8_t)(len >> 8);
  s->buf[s->n++] = (uint8_t)len;
  memcpy(s->buf + s->n, p, len);
  s->n += len;
}

static void ctl(seed *s, int op) {
  s->buf[s->n++] = (uint8_t)op;
}

/* Bytes written as they are, unframed (FZ_CTL_RAW). */
static void raw(seed *s, const void *p, size_t len) {
  rec(s, FZ_CTL_RAW, 0, p, len);
}

static void method(seed *s, int chan, amqp_method_number_t id, void *m) {
  uint8_t b[4096];
  b[0] = (uint8_t)(id >> 24);
  b[1] = (uint8_t)(id >> 16);
  b[2] = (uint8_t)(id >> 8);
  b[3] = (uint8_t)id;
  amqp_bytes_t out = {sizeof(b) - 4, b + 4};
  int n = amqp_encode_method(id, m, out);
  if (n < 0) {
    fprintf(stderr, "encode method: %s\n", amqp_error_string2(n));
    return;
  }
  rec(s, FZ_METHOD, chan, b, 4 + (size_t)n);
}

static void deliver(seed *s, const char *tag, uint64_t dtag) {
  amqp_basic_deliver_t d;
  memset(&d, 0, sizeof(d));
  d.consumer_tag = amqp_cstring_bytes(tag);
  d.delivery_tag = dtag;
  d.redelivered = dtag % 3 == 0;
  d.exchange = amqp_cstring_bytes("");
  d.routing_key = amqp_cstring_bytes(FZ_QUEUE);
  method(s, FZ_CH_CONSUME, AMQP_BASIC_DELIVER_METHOD, &d);
}

static void header(seed *s, uint64_t body_size, int with_headers) {
  uint8_t b[4096];
  b[0] = 0;
  b[1] = 60; /* basic */
  b[2] = b[3] = 0;
  for (int i = 0; i < 8; i++) b[4 + i] = (uint8_t)(body_size >> (56 - 8 * i));
  amqp_basic_properties_t p;
  memset(&p, 0, sizeof(p));
  p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
             AMQP_BASIC_DELIVERY_MODE_FLAG;
  p.content_type = amqp_cstring_bytes("text/plain");
  p.message_id = amqp_cstring_bytes("m");
  p.delivery_mode = 2;
  amqp_table_entry_t h[2];
  if (with_headers) {
    h[0].key = amqp_cstring_bytes("x-n");
    h[0].value.kind = AMQP_FIELD_KIND_U64;
    h[0].value.value.u64 = UINT64_MAX;
    h[1].key = amqp_cstring_bytes("x-s");
    h[1].value.kind = AMQP_FIELD_KIND_UTF8;
    h[1].value.value.bytes = amqp_cstring_bytes("v");
    p._flags |= AMQP_BASIC_HEADERS_FLAG;
    p.headers.num_entries = 2;
    p.headers.entries = h;
  }
  size_t n = gen_props(&p, b + 12, sizeof(b) - 12);
  rec(s, FZ_HEADER, FZ_CH_CONSUME, b, 12 + n);
}

static void body(seed *s, const char *text, size_t len) {
  rec(s, FZ_BODY, FZ_CH_CONSUME, text, len);
}

/* One whole delivery: its body's first byte picks the handler's outcome
 * (fuzz_frames.c). */
static void message(seed *s, uint64_t dtag, const char *b) {
  deliver(s, FZ_TAG, dtag);
  header(s, strlen(b), dtag % 2);
  if (*b) body(s, b, strlen(b));
}

static void done(seed *s, const char *name) {
  gen_write("frames", name, s->buf, s->n);
  s->n = 0;
}

void gen_frames_seeds(void) {
  static seed s;

  ctl(&s, 0); /* options: MANUAL, defaults */
  message(&s, 1, "ack me");
  done(&s, "one_ack");

  ctl(&s, FZ_OPT_AUTO);
  message(&s, 1, "a");
  message(&s, 2, "nack");
  message(&s, 3, "reject");
  done(&s, "auto_three");

  ctl(&s, 0);
  deliver(&s, FZ_TAG, 1);
  header(&s, 10, 1);
  body(&s, "01234", 5);
  ctl(&s, FZ_CTL_READ); /* a delivery split across reads */
  body(&s, "56789", 5);
  message(&s, 2, "");
  done(&s, "split_body_and_empty");

  ctl(&s, FZ_OPT_INFLIGHT_1);
  message(&s, 1, "defer");
  message(&s, 2, "defer");
  ctl(&s, FZ_CTL_READ);
  ctl(&s, FZ_CTL_COMPLETE);
  message(&s, 3, "ack");
  done(&s, "deferred_pause");

  ctl(&s, FZ_OPT_SMALL_BODY);
  message(&s, 1, "this body is longer than the sixteen bytes allowed");
  message(&s, 2, "small");
  done(&s, "too_big");

  ctl(&s, FZ_OPT_SMALL_BYTES | FZ_OPT_INFLIGHT_1);
  message(&s, 1, "defer: a body over the byte bound, one held already");
  message(&s, 2, "a second body over the byte bound must still complete");
  done(&s, "over_byte_bound");

  ctl(&s, 0);
  deliver(&s, "nobody", 1);
  header(&s, 2, 0);
  body(&s, "xy", 2);
  done(&s, "unknown_tag");

  ctl(&s, 0);
  {
    amqp_basic_cancel_t c;
    memset(&c, 0, sizeof(c));
    c.consumer_tag = amqp_cstring_bytes(FZ_TAG);
    method(&s, FZ_CH_CONSUME, AMQP_BASIC_CANCEL_METHOD, &c);
    amqp_connection_blocked_t b;
    b.reason = amqp_cstring_bytes("low on memory");
    method(&s, 0, AMQP_CONNECTION_BLOCKED_METHOD, &b);
    amqp_connection_unblocked_t u;
    memset(&u, 0, sizeof(u));
    method(&s, 0, AMQP_CONNECTION_UNBLOCKED_METHOD, &u);
  }
  message(&s, 1, "after cancel");
  done(&s, "cancel_blocked");

  ctl(&s, 0);
  deliver(&s, FZ_TAG, 1);
  header(&s, 100, 0);
  body(&s, "part", 4);
  {
    amqp_channel_close_t c;
    memset(&c, 0, sizeof(c));
    c.reply_code = 406;
    c.reply_text = amqp_cstring_bytes("PRECONDITION_FAILED - unknown tag");
    method(&s, FZ_CH_CONSUME, AMQP_CHANNEL_CLOSE_METHOD, &c);
  }
  done(&s, "channel_close_mid_delivery");

  ctl(&s, 0);
  message(&s, 1, "defer");
  {
    amqp_connection_close_t c;
    memset(&c, 0, sizeof(c));
    c.reply_code = 320;
    c.reply_text = amqp_cstring_bytes("CONNECTION_FORCED - shutdown");
    method(&s, 0, AMQP_CONNECTION_CLOSE_METHOD, &c);
  }
  ctl(&s, FZ_CTL_COMPLETE);
  done(&s, "connection_close_with_deferred");

  ctl(&s, 0);
  body(&s, "stray", 5);
  done(&s, "body_out_of_place");

  ctl(&s, 0);
  header(&s, 3, 0);
  done(&s, "header_out_of_place");

  ctl(&s, 0);
  deliver(&s, FZ_TAG, 1);
  deliver(&s, FZ_TAG, 2);
  done(&s, "deliver_inside_delivery");

  ctl(&s, 0);
  deliver(&s, FZ_TAG, 1);
  header(&s, 2, 0);
  body(&s, "toolong", 7);
  done(&s, "body_longer_than_announced");

  ctl(&s, 0);
  rec(&s, FZ_HEARTBEAT, 0, "", 0);
  {
    amqp_basic_cancel_ok_t ok;
    ok.consumer_tag = amqp_cstring_bytes(FZ_TAG);
    method(&s, FZ_CH_CONSUME, AMQP_BASIC_CANCEL_OK_METHOD, &ok);
    amqp_channel_close_t c;
    memset(&c, 0, sizeof(c));
    c.reply_code = 404;
    c.reply_text = amqp_cstring_bytes("NOT_FOUND");
    method(&s, FZ_CH_TOPOLOGY, AMQP_CHANNEL_CLOSE_METHOD, &c);
  }
  done(&s, "topology_close_heartbeat");

  /* Per-message acks of more deliveries than one write of ack frames
   * holds (48), some deferred and completed later, out of order. */
  ctl(&s, FZ_OPT_ACK_EACH);
  for (uint64_t t = 1; t <= 60; t++)
    message(&s, t, t % 7 == 0 ? "defer" : t % 11 == 0 ? "nack" : "ack");
  ctl(&s, FZ_CTL_READ);
  ctl(&s, FZ_CTL_COMPLETE);
  done(&s, "ack_each_sixty");

  /* The same through rabbitmq-c's writes, as on a TLS connection. */
  ctl(&s, FZ_OPT_ACK_EACH | FZ_OPT_LIB_ACKS);
  for (uint64_t t = 1; t <= 8; t++)
    message(&s, t, t % 3 == 0 ? "defer" : t % 4 == 0 ? "reject" : "ack");
  ctl(&s, FZ_CTL_READ);
  ctl(&s, FZ_CTL_COMPLETE);
  done(&s, "lib_acks");

  /* A graceful close while sluice holds bytes it read ahead (the bound is
   * 1 and the first delivery deferred), then a frame cut short. */
  ctl(&s, FZ_OPT_INFLIGHT_1);
  message(&s, 1, "defer");
  message(&s, 2, "ack");
  ctl(&s, FZ_CTL_READ);
  deliver(&s, FZ_TAG, 3);
  raw(&s, "\x01\x00\x01\x00\x00", 5); /* a method frame's first bytes */
  ctl(&s, FZ_CTL_CLOSE);
  done(&s, "close_read_ahead");

  /* Bytes that are not AMQP where the close reads its reply (a frame size
   * above frame_max): rabbitmq-c 0.11 must not be read again after that
   * (conn.c, close_rpcs). The same with sluice's reads and with
   * rabbitmq-c's. */
  uint8_t junk[1031]; /* past the connection state, were it copied there */
  memset(junk, 0xab, sizeof(junk));
  memcpy(junk, "\x01\x00\x02\x7f\xff\xff\xff", 7);
  for (int lib = 0; lib < 2; lib++) {
    ctl(&s, FZ_OPT_INFLIGHT_1 | (lib ? FZ_OPT_LIB_ACKS : 0));
    message(&s, 1, "defer");
    message(&s, 2, "ack");
    ctl(&s, FZ_CTL_READ);
    raw(&s, junk, sizeof(junk));
    ctl(&s, FZ_CTL_CLOSE);
    done(&s, lib ? "close_on_junk_lib" : "close_on_junk");
  }
}
