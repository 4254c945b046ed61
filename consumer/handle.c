/* SPDX-License-Identifier: MIT */
/* The process-wide table of delivery handles (handle.h): entries in chunks
 * that are allocated on first use and never freed, so that an entry found
 * by a handle always exists, and reading one needs no lock. Claiming and
 * releasing entries (when a consumer creates or frees a slot: rare, slots
 * are pooled) take a mutex. */
#include "handle.h"

#include <pthread.h>
#include <stdlib.h>

#include <sluice/error.h>

#define CHUNK 1024u
#if UINTPTR_MAX > 0xffffffffu
#define IDX_BITS 20u /* a million slots in the process */
#else
#define IDX_BITS 12u
#endif
#define USE_BITS (sizeof(uintptr_t) * 8u - IDX_BITS)
#define MAX_ENTRIES ((1u << IDX_BITS) - 1u) /* index + 1 must fit */
#define N_CHUNKS ((MAX_ENTRIES + CHUNK - 1) / CHUNK)

static sluice__hentry *_Atomic chunks[N_CHUNKS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint32_t n_used; /* entries ever made: 0 .. n_used - 1 */
static uint32_t *free_list;     /* released indices, reused first */
static uint32_t n_free, cap_free;

sluice__hentry *sluice__handle_entry(uint32_t idx) {
  sluice__hentry *c = atomic_load(&chunks[idx / CHUNK]);
  return &c[idx % CHUNK];
}

int sluice__handle_claim(struct sluice_delivery *slot, uint32_t *idx) {
  pthread_mutex_lock(&mu);
  uint32_t i;
  if (n_free) {
    i = free_list[--n_free];
  } else {
    if (atomic_load(&n_used) >= MAX_ENTRIES) {
      pthread_mutex_unlock(&mu);
      return SLUICE_ELIMIT;
    }
    i = atomic_load(&n_used);
    if (!atomic_load(&chunks[i / CHUNK])) {
      sluice__hentry *c = calloc(CHUNK, sizeof(*c));
      if (!c) {
        pthread_mutex_unlock(&mu);
        return SLUICE_ENOMEM;
      }
      atomic_store(&chunks[i / CHUNK], c);
    }
    /* after the chunk: a reader that sees the index sees the chunk */
    atomic_fetch_add(&n_used, 1);
  }
  /* Room in the free list for every entry in use, so that releasing never
   * needs memory. */
  uint32_t in_use = atomic_load(&n_used);
  if (in_use > cap_free) {
    uint32_t cap = cap_free ? cap_free : 64;
    while (cap < in_use) cap *= 2;
    uint32_t *bigger = realloc(free_list, cap * sizeof(*bigger));
    if (!bigger) {
      /* give i back if there is room; else it stays unused for good */
      if (n_free < cap_free) free_list[n_free++] = i;
      pthread_mutex_unlock(&mu);
      return SLUICE_ENOMEM;
    }
    free_list = bigger;
    cap_free = cap;
  }
  pthread_mutex_unlock(&mu);
  atomic_store(&sluice__handle_entry(i)->slot, slot);
  *idx = i;
  return 0;
}

void sluice__handle_release(uint32_t idx) {
  sluice__hentry *e = sluice__handle_entry(idx);
  atomic_store(&e->slot, NULL);
  /* One more use, in the free state: every handle made so far is stale. */
  uint64_t w = atomic_load(&e->word);
  atomic_store(&e->word, sluice__word(sluice__word_use(w) + 1, 0));
  pthread_mutex_lock(&mu);
  free_list[n_free++] = idx; /* claim made room for it */
  pthread_mutex_unlock(&mu);
}

uint64_t sluice__handle_use_bits(uint64_t use) {
  return use & (((uint64_t)1 << USE_BITS) - 1);
}

struct sluice_delivery *sluice__handle_make(uint32_t idx, uint64_t use) {
  uintptr_t v = ((uintptr_t)idx + 1) << USE_BITS |
                (uintptr_t)sluice__handle_use_bits(use);
  return (struct sluice_delivery *)v;
}

sluice__hentry *sluice__handle_decode(const struct sluice_delivery *h,
                                      uint64_t *use) {
  uintptr_t v = (uintptr_t)h;
  uintptr_t idx1 = v >> USE_BITS;
  if (idx1 == 0) return NULL;
  uint32_t idx = (uint32_t)(idx1 - 1);
  if (idx >= atomic_load(&n_used)) return NULL;
  *use = sluice__handle_use_bits(v);
  return sluice__handle_entry(idx);
}
