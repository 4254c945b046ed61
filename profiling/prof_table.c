/* SPDX-License-Identifier: MIT */
/* The table of tracked blocks: block address -> record.
 *
 * free() must learn whether a pointer is tracked, and almost never is when
 * sampling, so the "not tracked" answer has to be cheap and lock-free:
 * - 64 shards, each an open-addressing table with linear probing and
 *   backward-shift deletion (no tombstones), guarded by a spinlock for
 *   writers;
 * - an empty shard answers from one bit of a global mask (one hot word);
 * - otherwise readers probe without the lock, under a sequence counter
 *   (seqlock) that writers bump around every change that moves entries
 *   (deletion, growth); a reader that saw the sequence move takes the lock.
 * A grown-out array may still be read by a late reader, so arrays are never
 * given back to the allocator: they go to per-size free lists and are
 * reused (type-stable memory; the sequence check rejects what such a reader
 * saw). Memory stays proportional to the peak number of tracked blocks. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <string.h>

#include "prof_internal.h"

#define N_SHARDS SLUICE__N_SHARDS
#define MIN_CAP 64

typedef struct entry {
  _Atomic uintptr_t key; /* 0 = empty */
  uint64_t size;
  uint32_t stack;
  uint32_t scope;
} entry;

typedef struct array {
  struct array *next_free;
  _Atomic uint32_t mask; /* read by lock-free readers */
  uint32_t log2;
  entry e[];
} array;

typedef struct shard {
  sluice__lock lock;
  _Atomic uint32_t seq;
  _Atomic uint32_t count;
  /* Records whose key lacks the sample tag (under the lock): while nonzero
   * the shard is counted in the flags (SLUICE__F_LOOSE1), and free() of an
   * untagged block cannot skip the table. */
  uint32_t loose;
  _Atomic(array *) arr;
} __attribute__((aligned(SLUICE__CACHELINE))) shard;

static shard shards[N_SHARDS];
_Atomic uint64_t sluice__shard_mask;

static inline _Atomic uint32_t *count_of(shard *s) {
  return &s->count;
}

/* Keep the shard's bit in sluice__shard_mask in step with its count
 * (caller holds the shard's lock). */
static inline void set_count(shard *s, uint32_t n) {
  uint32_t was = atomic_load_explicit(&s->count, memory_order_relaxed);
  atomic_store_explicit(&s->count, n, memory_order_relaxed);
  uint64_t bit = 1ull << (s - shards);
  if (!was && n) atomic_fetch_or(&sluice__shard_mask, bit);
  else if (was && !n) atomic_fetch_and(&sluice__shard_mask, ~bit);
}
/* A record at `key` joins (loose_add) or leaves (loose_sub) shard s, under
 * its lock. Each shard moves its own unit in the flags, so the count there
 * is exact without a lock of its own. A new record is counted before it is
 * published: its block reaches another thread's free() only after malloc
 * returned. */
static inline void loose_add(shard *s, uintptr_t key) {
  if (!sluice__tagged(key) && !s->loose++)
    atomic_fetch_add(&sluice__flags, SLUICE__F_LOOSE1);
}

static inline void loose_sub(shard *s, uintptr_t key) {
  if (!sluice__tagged(key) && !--s->loose)
    atomic_fetch_sub(&sluice__flags, SLUICE__F_LOOSE1);
}

static sluice__lock free_lock;
static array *free_arrays[40];

#define hash_ptr sluice__hash_ptr

static inline uint32_t home_of(uint64_t h, uint32_t mask) {
  return (uint32_t)(h >> 24) & mask;
}

static inline shard *shard_of(uint64_t h) {
  return &shards[h >> 58];
}

int sluice__table_init(void) {
  return 0;
}

static array *array_get(uint32_t log2) {
  array *a = NULL;
  sluice__lock_acquire(&free_lock);
  if (free_arrays[log2]) {
    a = free_arrays[log2];
    free_arrays[log2] = a->next_free;
  }
  sluice__lock_release(&free_lock);
  size_t cap = (size_t)1 << log2;
  if (a) {
    /* A late reader may still look at it: clear keys atomically. */
    for (size_t i = 0; i < cap; i++)
      atomic_store_explicit(&a->e[i].key, 0, memory_order_relaxed);
  } else {
    a = sluice__calloc(1, sizeof(array) + cap * sizeof(entry));
    if (!a) return NULL;
    atomic_fetch_add_explicit(&sluice__overhead,
                              sizeof(array) + cap * sizeof(entry),
                              memory_order_relaxed);
  }
  atomic_store_explicit(&a->mask, (uint32_t)(cap - 1), memory_order_relaxed);
  a->log2 = log2;
  a->next_free = NULL;
  return a;
}

static void array_put(array *a) {
  sluice__lock_acquire(&free_lock);
  a->next_free = free_arrays[a->log2];
  free_arrays[a->log2] = a;
  sluice__lock_release(&free_lock);
}

static inline void seq_begin(shard *s) {
  uint32_t q = atomic_load_explicit(&s->seq, memory_order_relaxed);
  atomic_store_explicit(&s->seq, q + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
}

static inline void seq_end(shard *s) {
  uint32_t q = atomic_load_explicit(&s->seq, memory_order_relaxed);
  atomic_store_explicit(&s->seq, q + 1, memory_order_release);
}

/* Index of `key` in `a`, or -1. Bounded so that a recycled array read by a
 * late reader cannot loop forever. */
static inline long probe(array *a, uintptr_t key, uint64_t h) {
  uint32_t mask = atomic_load_explicit(&a->mask, memory_order_relaxed);
  uint32_t i = home_of(h, mask);
  for (uint32_t n = 0; n <= mask; n++, i = (i + 1) & mask) {
    uintptr_t k = atomic_load_explicit(&a->e[i].key, memory_order_relaxed);
    if (k == key) return (long)i;
    if (k == 0) return -1;
  }
  return -1;
}

static void put_entry(array *a, uintptr_t key, uint64_t h,
                      const sluice__rec *r) {
  uint32_t mask = atomic_load_explicit(&a->mask, memory_order_relaxed);
  uint32_t i = home_of(h, mask);
  while (atomic_load_explicit(&a->e[i].key, memory_order_relaxed))
    i = (i + 1) & mask;
  a->e[i].size = r->size;
  a->e[i].stack = r->stack;
  a->e[i].scope = r->scope;
  atomic_store_explicit(&a->e[i].key, key, memory_order_release);
}

static int grow(shard *s, array *old) {
  uint32_t log2 = old ? old->log2 + 1 : 6;
  if (log2 >= 32) return -1;
  array *a = array_get(log2);
  if (!a) return -1;
  if (old) {
    uint32_t omask = atomic_load_explicit(&old->mask, memory_order_relaxed);
    for (uint32_t i = 0; i <= omask; i++) {
      uintptr_t k = atomic_load_explicit(&old->e[i].key, memory_order_relaxed);
      if (!k) continue;
      sluice__rec r = {old->e[i].size, old->e[i].stack, old->e[i].scope};
      put_entry(a, k, hash_ptr(k), &r);
    }
  }
  seq_begin(s);
  atomic_store_explicit(&s->arr, a, memory_order_release);
  seq_end(s);
  if (old) array_put(old);
  return 0;
}

int sluice__table_insert(uintptr_t key, const sluice__rec *rec,
                         sluice__rec *old) {
  uint64_t h = hash_ptr(key);
  shard *s = shard_of(h);
  int ret = 0;
  sluice__lock_acquire(&s->lock);
  array *a = atomic_load_explicit(&s->arr, memory_order_relaxed);
  long i = a ? probe(a, key, h) : -1;
  if (i >= 0) {
    /* The address was tracked already: its block was released behind our
     * back (by code that called glibc directly). Replace the record. */
    entry *e = &a->e[i];
    old->size = e->size;
    old->stack = e->stack;
    old->scope = e->scope;
    e->size = rec->size;
    e->stack = rec->stack;
    e->scope = rec->scope;
    ret = 1;
    goto out;
  }
  uint32_t count = atomic_load_explicit(count_of(s), memory_order_relaxed);
  if (!a ||
      (uint64_t)(count + 1) * 8 >
          (uint64_t)(atomic_load_explicit(&a->mask, memory_order_relaxed) + 1) *
              5) {
    if (grow(s, a)) {
      ret = -1;
      goto out;
    }
    a = atomic_load_explicit(&s->arr, memory_order_relaxed);
  }
  loose_add(s, key);
  put_entry(a, key, h, rec);
  set_count(s, count + 1);
out:
  sluice__lock_release(&s->lock);
  return ret;
}

/* Backward-shift deletion of slot i (caller holds the lock, seq is odd). */
static void delete_at(array *a, uint32_t i) {
  uint32_t mask = atomic_load_explicit(&a->mask, memory_order_relaxed);
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    uintptr_t k = atomic_load_explicit(&a->e[j].key, memory_order_relaxed);
    if (!k) break;
    uint32_t home = home_of(hash_ptr(k), mask);
    /* Leave e[j] where it is if its home lies cyclically in (i, j]. */
    int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
    if (stays) continue;
    a->e[i].size = a->e[j].size;
    a->e[i].stack = a->e[j].stack;
    a->e[i].scope = a->e[j].scope;
    atomic_store_explicit(&a->e[i].key, k, memory_order_relaxed);
    i = j;
  }
  atomic_store_explicit(&a->e[i].key, 0, memory_order_relaxed);
}

int sluice__table_take(uintptr_t key, sluice__rec *out) {
  uint64_t h = hash_ptr(key);
  shard *s = shard_of(h);
  if (atomic_load_explicit(count_of(s), memory_order_relaxed) == 0) return 0;
  uint32_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
  long seen = -1;
  if (!(s1 & 1)) {
    array *a = atomic_load_explicit(&s->arr, memory_order_acquire);
    long i = a ? probe(a, key, h) : -1;
    atomic_thread_fence(memory_order_acquire);
    uint32_t s2 = atomic_load_explicit(&s->seq, memory_order_relaxed);
    if (s1 == s2) {
      if (i < 0) return 0;
      seen = i;
    }
  }
  int found = 0;
  sluice__lock_acquire(&s->lock);
  array *a = atomic_load_explicit(&s->arr, memory_order_relaxed);
  long i;
  /* Nothing moved since the lock-free probe: its answer still holds. */
  if (seen >= 0 && atomic_load_explicit(&s->seq, memory_order_relaxed) == s1)
    i = seen;
  else i = a ? probe(a, key, h) : -1;
  if (i >= 0) {
    entry *e = &a->e[i];
    out->size = e->size;
    out->stack = e->stack;
    out->scope = e->scope;
    seq_begin(s);
    delete_at(a, (uint32_t)i);
    seq_end(s);
    set_count(s, atomic_load_explicit(count_of(s), memory_order_relaxed) - 1);
    loose_sub(s, key);
    found = 1;
  }
  sluice__lock_release(&s->lock);
  return found;
}

void sluice__table_foreach(void (*fn)(uintptr_t key, sluice__rec *rec,
                                      void *arg),
                           void *arg) {
  for (int k = 0; k < N_SHARDS; k++) {
    shard *s = &shards[k];
    if (atomic_load_explicit(count_of(s), memory_order_relaxed) == 0) continue;
    sluice__lock_acquire(&s->lock);
    array *a = atomic_load_explicit(&s->arr, memory_order_relaxed);
    uint32_t mask = a ? atomic_load_explicit(&a->mask, memory_order_relaxed)
                      : 0;
    for (uint32_t i = 0; a && i <= mask; i++) {
      uintptr_t key = atomic_load_explicit(&a->e[i].key, memory_order_relaxed);
      if (!key) continue;
      sluice__rec r = {a->e[i].size, a->e[i].stack, a->e[i].scope};
      fn(key, &r, arg);
      a->e[i].scope = r.scope; /* the only field a visitor may change */
    }
    sluice__lock_release(&s->lock);
  }
}

uint64_t sluice__table_count(void) {
  uint64_t n = 0;
  for (int k = 0; k < N_SHARDS; k++)
    n += atomic_load_explicit(&shards[k].count, memory_order_relaxed);
  return n;
}

void sluice__table_lock_all(void) {
  for (int k = 0; k < N_SHARDS; k++) sluice__lock_acquire(&shards[k].lock);
  sluice__lock_acquire(&free_lock);
}

void sluice__table_unlock_all(void) {
  sluice__lock_release(&free_lock);
  for (int k = 0; k < N_SHARDS; k++) sluice__lock_release(&shards[k].lock);
}
