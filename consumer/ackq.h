/* SPDX-License-Identifier: MIT */
/* Ack coalescing for one channel of one connection generation.
 *
 * Completed ACKs wait here until flushed. A flush acknowledges every pending
 * tag below the lowest tag still outstanding (delivered, not completed) with
 * one basic.ack multiple=true, and the others one by one: a multiple ack must
 * never cover a delivery that is still being handled, and no tag is ever
 * acknowledged twice. NACK and REJECT are never coalesced; they go out before
 * any ack of the same flush (a multiple ack sent first would cover them). */
#ifndef SLUICE_ACKQ_H
#define SLUICE_ACKQ_H

#include <stddef.h>
#include <stdint.h>

typedef enum sluice__ackq_kind {
  SLUICE__ACKQ_ACK,
  SLUICE__ACKQ_NACK,
  SLUICE__ACKQ_REJECT
} sluice__ackq_kind;

typedef struct sluice__ackq_item {
  uint64_t tag;
  sluice__ackq_kind kind;
} sluice__ackq_item;

typedef struct sluice__ackq {
  sluice__ackq_item *items; /* pending completions, in completion order */
  size_t n, cap;
  size_t n_acks; /* how many of items are SLUICE__ACKQ_ACK */
} sluice__ackq;

/* Emit one frame: (tag, kind, multiple) settling `count` deliveries. Returns
 * 0 if written; nonzero stops the flush with the rest kept pending (the
 * socket is not writable). */
typedef int (*sluice__ackq_emit_fn)(void *user, uint64_t tag,
                                    sluice__ackq_kind kind, int multiple,
                                    size_t count);

void sluice__ackq_init(sluice__ackq *q);
void sluice__ackq_free(sluice__ackq *q);
/* Forget everything pending (the channel died). */
void sluice__ackq_reset(sluice__ackq *q);
/* Record a completion. Returns 0 or SLUICE_ENOMEM. */
int sluice__ackq_push(sluice__ackq *q, uint64_t tag, sluice__ackq_kind kind);
/* Flush. `min_outstanding` is the lowest tag delivered and not completed
 * (UINT64_MAX when none). Returns the number of frames written, or a
 * negative value if emit stopped early (what remains stays pending). */
int sluice__ackq_flush(sluice__ackq *q, uint64_t min_outstanding,
                       sluice__ackq_emit_fn emit, void *user);

#endif
