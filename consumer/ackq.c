/* SPDX-License-Identifier: MIT */
#include "ackq.h"

#include <stdlib.h>
#include <string.h>

#include <sluice/error.h>

void sluice__ackq_init(sluice__ackq *q) {
  memset(q, 0, sizeof(*q));
}

void sluice__ackq_free(sluice__ackq *q) {
  free(q->items);
  memset(q, 0, sizeof(*q));
}

void sluice__ackq_reset(sluice__ackq *q) {
  q->n = q->n_acks = 0;
}

int sluice__ackq_push(sluice__ackq *q, uint64_t tag, sluice__ackq_kind kind) {
  if (q->n == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 64;
    sluice__ackq_item *p = realloc(q->items, cap * sizeof(*p));
    if (!p) return SLUICE_ENOMEM;
    q->items = p;
    q->cap = cap;
  }
  q->items[q->n].tag = tag;
  q->items[q->n].kind = kind;
  q->n++;
  if (kind == SLUICE__ACKQ_ACK) q->n_acks++;
  return 0;
}

/* Remove item i by moving the last one into its place (order among the
 * remaining acks does not matter; nacks are removed in pass 1, in order). */
static void drop(sluice__ackq *q, size_t i) {
  if (q->items[i].kind == SLUICE__ACKQ_ACK) q->n_acks--;
  q->items[i] = q->items[--q->n];
}

int sluice__ackq_flush(sluice__ackq *q, uint64_t min_outstanding,
                       sluice__ackq_emit_fn emit, void *user) {
  if (q->n == 1) {
    /* One completion (every flush of per-message acks): whichever pass
     * would take it, it goes out alone, never as a multiple ack. */
    sluice__ackq_item it = q->items[0];
    if (emit(user, it.tag, it.kind, 0, 1) != 0) return -1;
    drop(q, 0);
    return 1;
  }
  int written = 0;

  /* Pass 1: nacks and rejects, in completion order. */
  size_t w = 0;
  for (size_t i = 0; i < q->n; i++) {
    sluice__ackq_item it = q->items[i];
    if (it.kind != SLUICE__ACKQ_ACK) {
      if (emit(user, it.tag, it.kind, 0, 1) != 0) {
        /* keep this and everything after it */
        memmove(q->items + w, q->items + i, (q->n - i) * sizeof(*q->items));
        q->n = w + (q->n - i);
        return -1;
      }
      written++;
      continue;
    }
    q->items[w++] = it;
  }
  q->n = w;

  /* Pass 2: one multiple ack for the contiguous part below every delivery
   * still outstanding. */
  uint64_t k = 0;
  size_t below = 0;
  for (size_t i = 0; i < q->n; i++) {
    if (q->items[i].tag < min_outstanding) {
      below++;
      if (q->items[i].tag > k) k = q->items[i].tag;
    }
  }
  if (below > 0) {
    int multiple = below > 1;
    if (emit(user, k, SLUICE__ACKQ_ACK, multiple, below) != 0) return -1;
    written++;
    for (size_t i = 0; i < q->n;) {
      if (q->items[i].tag < min_outstanding) drop(q, i);
      else i++;
    }
  }

  /* Pass 3: the rest one by one. */
  while (q->n > 0) {
    if (emit(user, q->items[q->n - 1].tag, SLUICE__ACKQ_ACK, 0, 1) != 0)
      return -1;
    written++;
    drop(q, q->n - 1);
  }
  return written;
}
