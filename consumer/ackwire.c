/* SPDX-License-Identifier: MIT */
#include "ackwire.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "util.h"

#define CLASS_BASIC 60
#define METHOD_ACK 80
#define METHOD_REJECT 90
#define METHOD_NACK 120
#define FRAME_METHOD 1
#define FRAME_END 0xCE

static unsigned char *put16(unsigned char *p, uint16_t v) {
  p[0] = (unsigned char)(v >> 8);
  p[1] = (unsigned char)v;
  return p + 2;
}

static unsigned char *put32(unsigned char *p, uint32_t v) {
  p = put16(p, (uint16_t)(v >> 16));
  return put16(p, (uint16_t)v);
}

static unsigned char *put64(unsigned char *p, uint64_t v) {
  p = put32(p, (uint32_t)(v >> 32));
  return put32(p, (uint32_t)v);
}

void sluice__ackwire_encode(unsigned char *out, uint16_t channel,
                            sluice__ackq_kind kind, uint64_t tag,
                            int multiple) {
  uint16_t method;
  unsigned char bits;
  switch (kind) {
    case SLUICE__ACKQ_ACK:
      method = METHOD_ACK;
      bits = multiple ? 1 : 0;
      break;
    case SLUICE__ACKQ_NACK:
      method = METHOD_NACK;
      bits = (multiple ? 1 : 0) | 2; /* requeue */
      break;
    default:
      method = METHOD_REJECT;
      bits = 0; /* requeue=false */
      break;
  }
  unsigned char *p = out;
  *p++ = FRAME_METHOD;
  p = put16(p, channel);
  p = put32(p, SLUICE__ACKWIRE_FRAME - 8); /* the payload: 13 bytes */
  p = put16(p, CLASS_BASIC);
  p = put16(p, method);
  p = put64(p, tag);
  *p++ = bits;
  *p = FRAME_END;
}

void sluice__ackwire_add(sluice__ackwire *w, uint16_t channel,
                         sluice__ackq_kind kind, uint64_t tag, int multiple,
                         size_t count) {
  sluice__ackwire_encode(w->buf + w->n * SLUICE__ACKWIRE_FRAME, channel, kind,
                         tag, multiple);
  w->meta[w->n].kind = kind;
  w->meta[w->n].count = (uint32_t)count;
  w->n++;
  w->settles += count;
}

size_t sluice__ackwire_write(const sluice__ackwire *w, int fd, int wait_ms) {
  size_t len = w->n * SLUICE__ACKWIRE_FRAME, off = 0;
  uint64_t deadline = 0; /* read the clock only if the socket is full */
  while (off < len) {
    ssize_t r = send(fd, w->buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      off += (size_t)r;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      /* Not expected within the POLLOUT budget, but a frame must be
       * finished before anything else is written to the socket. */
      uint64_t now = sluice__now_ms();
      if (!deadline) deadline = now + (uint64_t)wait_ms;
      else if (now >= deadline) break;
      struct pollfd p = {fd, POLLOUT, 0};
      int left = (int)(deadline - now);
      if (poll(&p, 1, left) < 0 && errno != EINTR) break;
      continue;
    }
    break; /* the connection is gone */
  }
  return off / SLUICE__ACKWIRE_FRAME;
}
