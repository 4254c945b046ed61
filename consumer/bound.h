/* SPDX-License-Identifier: MIT */
/* The in-flight bound: how many deliveries, and how many bytes, sluice holds
 * (assembling, queued for a worker, in a handler, deferred). Pure
 * bookkeeping, loop thread only; frames.c turns it into reading or not.
 *
 * The bound admits deliveries, it never stops one halfway: a delivery is
 * admitted by its first frame (basic.deliver) and charged its size at its
 * content header, and reading goes on while one is being assembled
 * (sluice__bound_may_read), or its body frames would wait for a release
 * that may only come after it (a 64 MiB body, with max_inflight_bytes 64
 * MiB and a small deferred delivery outstanding, stalled for good in 0.1).
 * Between deliveries reading stops while the bound is reached. Hence:
 *  - count <= max_count: a delivery is admitted only below it;
 *  - bytes < max_bytes + the largest delivery (at most max_body plus its
 *    properties): admitted below max_bytes, it adds its own size;
 *  - every admitted delivery is read to its end, whatever the bound says,
 *    so releasing what the handlers hold always lets reading resume. */
#ifndef SLUICE_BOUND_H
#define SLUICE_BOUND_H

#include <stddef.h>
#include <stdint.h>

typedef struct sluice__bound {
  size_t count, bytes;         /* held now */
  size_t max_count, max_bytes; /* the bound */
  size_t peak_count;           /* high-water mark of count */
  uint64_t pauses;             /* times the bound was reached */
  int full;                    /* reading is stopped */
} sluice__bound;

enum {
  SLUICE__BOUND_SAME = 0,
  SLUICE__BOUND_PAUSE = 1,
  SLUICE__BOUND_RESUME = 2
};

static inline int sluice__bound_update(sluice__bound *b) {
  int full = b->count >= b->max_count || b->bytes >= b->max_bytes;
  if (full == b->full) return SLUICE__BOUND_SAME;
  b->full = full;
  if (full) b->pauses++;
  return full ? SLUICE__BOUND_PAUSE : SLUICE__BOUND_RESUME;
}

/* 1 if the socket may be read now: while a delivery is being assembled
 * (`assembling`), always; between deliveries, below the bound. */
static inline int sluice__bound_may_read(const sluice__bound *b,
                                         int assembling) {
  return assembling || !b->full;
}

/* A delivery starts being held (its first frame arrived). */
static inline void sluice__bound_hold(sluice__bound *b) {
  b->count++;
  if (b->count > b->peak_count) b->peak_count = b->count;
}

static inline void sluice__bound_charge(sluice__bound *b, size_t bytes) {
  b->bytes += bytes;
}

/* A delivery is released with the bytes it was charged. */
static inline void sluice__bound_release(sluice__bound *b, size_t bytes) {
  b->count--;
  b->bytes -= bytes;
}

#endif
