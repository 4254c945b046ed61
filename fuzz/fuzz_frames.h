/* SPDX-License-Identifier: MIT */
/* The input format of the frames target (fuzz_frames.c), shared with its
 * seed generator (gen_frames.c).
 *
 * Byte 0 holds options (FZ_OPT_*). Then records: one op byte, and for a
 * frame a 16-bit big-endian length and that many payload bytes (fewer if
 * the input ends). An op below 0xF0 is a frame: type in bits 0-1
 * (FZ_METHOD, FZ_HEADER, FZ_BODY, FZ_HEARTBEAT) and channel in bits 2-3;
 * the harness adds the frame's header and end byte. An op from 0xF0 is a
 * control (FZ_CTL_*); FZ_CTL_RAW is followed by a length and bytes as a
 * frame is, written as they are (a frame cut short, bytes that are not
 * AMQP). */
#ifndef SLUICE_FUZZ_FRAMES_H
#define SLUICE_FUZZ_FRAMES_H

#define FZ_QUEUE "fz.q"
#define FZ_TAG "fz.tag"

enum { FZ_METHOD = 0, FZ_HEADER = 1, FZ_BODY = 2, FZ_HEARTBEAT = 3 };

enum { FZ_CH_CONSUME = 1, FZ_CH_TOPOLOGY = 2 };

enum {
  FZ_OPT_AUTO = 0x01,        /* SLUICE_ACK_AUTO */
  FZ_OPT_INFLIGHT_1 = 0x02,  /* max_inflight 1 */
  FZ_OPT_SMALL_BODY = 0x04,  /* max_body 16 */
  FZ_OPT_SMALL_BYTES = 0x08, /* max_inflight_bytes 32 */
  FZ_OPT_ACK_EACH = 0x10,    /* ack_batch 1 */
  FZ_OPT_LIB_ACKS = 0x20     /* acks through rabbitmq-c, as over TLS */
};

enum {
  FZ_CTL_READ = 0xF0,     /* the consumer reads what was written so far */
  FZ_CTL_COMPLETE = 0xF1, /* complete every deferred delivery (ack) */
  FZ_CTL_ACKS = 0xF2,     /* the ack timer fires */
  FZ_CTL_RAW = 0xF3,      /* 16-bit length and bytes, written unframed */
  FZ_CTL_CLOSE = 0xF4     /* a graceful close now, reading what was written */
};

#endif
