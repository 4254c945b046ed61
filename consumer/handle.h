/* SPDX-License-Identifier: MIT */
/* Delivery handles (handle.c). The sluice_delivery * an application gets is
 * not a pointer: it is the index of an entry in a process-wide table and
 * the entry's use count when the handle was made. An entry belongs to one
 * delivery slot for the slot's life, and the slot serves one delivery after
 * another; each new delivery counts one more use. The state of the delivery
 * lives in the entry, next to the use count, in one atomic word, so that
 * every completion is a compare-and-swap on (use, state): a handle kept past
 * its delivery's completion finds another use count and acts on nothing
 * (SLUICE_EALREADY), whatever delivery the slot serves now, and whichever
 * thread it comes from. The table is never freed, so a handle outliving its
 * consumer is still answered. Not installed. */
#ifndef SLUICE_CONSUMER_HANDLE_H
#define SLUICE_CONSUMER_HANDLE_H

#include <stdatomic.h>
#include <stdint.h>

/* One C type, two meanings: inside the consumer a struct sluice_delivery *
 * is a slot (internal.h); the value an application holds is a handle made
 * here, never dereferenced. Public functions decode it first. */
struct sluice_delivery;

/* word = use << SLUICE__USE_SHIFT | early outcome << 4 | state (4 bits) */
#define SLUICE__USE_SHIFT 8
#define SLUICE__STATE_MASK 0x0fu
#define SLUICE__EARLY_SHIFT 4

typedef struct sluice__hentry {
  _Atomic uint64_t word;
  struct sluice_delivery *_Atomic slot; /* NULL while the entry is free */
} sluice__hentry;

/* Give `slot` an entry: its index in *idx. The entry's use count goes on
 * from its previous owner's. 0, or SLUICE_ENOMEM / SLUICE_ELIMIT (table
 * full). Any thread. */
int sluice__handle_claim(struct sluice_delivery *slot, uint32_t *idx);
/* The slot is freed: every handle to the entry goes stale and the index
 * can serve another slot. */
void sluice__handle_release(uint32_t idx);
/* The entry of a claimed index. */
sluice__hentry *sluice__handle_entry(uint32_t idx);

/* The handle of use `use` of entry `idx`. */
struct sluice_delivery *sluice__handle_make(uint32_t idx, uint64_t use);
/* The entry a handle names and the use it was made for; NULL for a value
 * that was never a handle. */
sluice__hentry *sluice__handle_decode(const struct sluice_delivery *h,
                                      uint64_t *use);
/* The use counts a handle can carry (the rest of the word's are cut). */
uint64_t sluice__handle_use_bits(uint64_t use);

static inline uint64_t sluice__word(uint64_t use, unsigned state) {
  return use << SLUICE__USE_SHIFT | state;
}
static inline unsigned sluice__word_state(uint64_t w) {
  return (unsigned)(w & SLUICE__STATE_MASK);
}
static inline unsigned sluice__word_early(uint64_t w) {
  return (unsigned)(w >> SLUICE__EARLY_SHIFT) & 0x0fu;
}
static inline uint64_t sluice__word_use(uint64_t w) {
  return w >> SLUICE__USE_SHIFT;
}

#endif
