/* SPDX-License-Identifier: MIT */
/* The in-flight bound: how many deliveries, and how many bytes, sluice holds
 * (assembling, queued for a worker, in a handler, deferred). Crossing the
 * bound stops reading the socket; dropping back under it resumes. Pure
 * bookkeeping, loop thread only; the consumer turns the transitions into
 * libevent calls. */
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
