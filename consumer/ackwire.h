/* SPDX-License-Identifier: MIT */
/* Ack frames written by sluice itself, several with one send(2).
 *
 * rabbitmq-c writes each basic.ack with a send(2) of its own, and 0.11
 * exports no way to write several frames at once. On a plain TCP
 * connection the consumer encodes its basic.ack, basic.nack and
 * basic.reject frames here instead and writes the ones of one pass of the
 * loop together (delivery.c, "acks"): the same frames on the wire, fewer
 * system calls. A TLS connection keeps rabbitmq-c's path (its bytes go
 * through OpenSSL). Loop thread only, like every write to the connection.
 *
 * Each frame is 21 bytes (AMQP 0-9-1, 4.2.3 and the basic class): type 1
 * (method), channel (u16), payload size 13 (u32), class 60 and method id
 * (u16 each), delivery-tag (u64), one octet of bits, frame-end 0xCE;
 * integers big-endian. The bits: ack multiple (bit 0); nack multiple
 * (bit 0) and requeue (bit 1); reject requeue (bit 0). */
#ifndef SLUICE_ACKWIRE_H
#define SLUICE_ACKWIRE_H

#include <stddef.h>
#include <stdint.h>

#include "ackq.h"

#define SLUICE__ACKWIRE_FRAME 21
/* What one poll(POLLOUT) lets sluice write without asking again
 * (delivery.c, WRITE_BUDGET): 48 frames. */
#define SLUICE__ACKWIRE_MAX 48

/* Encode one frame into out[SLUICE__ACKWIRE_FRAME]. NACK always requeues
 * and REJECT never does, as the consumer sends them. */
void sluice__ackwire_encode(unsigned char *out, uint16_t channel,
                            sluice__ackq_kind kind, uint64_t tag, int multiple);

/* Frames encoded and not yet written, with what each settles (for the
 * counters, which count what reached the socket). */
typedef struct sluice__ackwire {
  unsigned char buf[SLUICE__ACKWIRE_MAX * SLUICE__ACKWIRE_FRAME];
  struct {
    sluice__ackq_kind kind;
    uint32_t count; /* deliveries settled (> 1 for a multiple ack) */
  } meta[SLUICE__ACKWIRE_MAX];
  size_t n;
  size_t settles; /* the sum of meta[].count */
} sluice__ackwire;

/* Append one frame; the caller keeps n below SLUICE__ACKWIRE_MAX and sets
 * n and settles to 0 once the frames are written or dropped. */
void sluice__ackwire_add(sluice__ackwire *w, uint16_t channel,
                         sluice__ackq_kind kind, uint64_t tag, int multiple,
                         size_t count);

/* Write every buffered frame to `fd` with as few send(2) as the socket
 * allows (one, when it takes them all). A frame is never left half
 * written while the socket can still take bytes: a short write waits for
 * POLLOUT, up to `wait_ms` in all, and goes on. Returns how many frames
 * were written whole; on an error or when the wait runs out it is fewer
 * than w->n, and the connection must be given up (the broker has part of
 * a frame). The caller empties `w`. */
size_t sluice__ackwire_write(const sluice__ackwire *w, int fd, int wait_ms);

#endif
