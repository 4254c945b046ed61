/* SPDX-License-Identifier: MIT */
/* Unwinding and the stack table.
 *
 * A sampled allocation's stack is taken with libunwind's unw_backtrace (the
 * fast path: return addresses only, no unw_get_proc_name, no allocation),
 * the profiler's own frames are dropped, and the rest is interned: every
 * distinct stack is stored once, with its sampled allocation and free
 * counts. Stacks are never removed, and their number is capped
 * (max_stacks); samples past the cap are counted under one
 * "[stack table full]" stack, so the table is bounded.
 * Lookups are lock-free (an open-addressing index of ids published with
 * release stores); insertions take a spinlock. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <link.h>
#include <string.h>

#define UNW_LOCAL_ONLY
#include <libunwind.h>

#include "prof_internal.h"

typedef struct stk {
  uint64_t hash;
  const uintptr_t *frames;
  uint32_t n;
  _Atomic uint64_t alloc_n, alloc_b, free_n, free_b;
  /* Blocks captured at weight 1 (adaptive stacks, rate 1). */
  _Atomic uint64_t x_alloc_n, x_alloc_b, x_free_n, x_free_b;
} stk;

#define CHUNK_WORDS 65536

typedef struct chunk {
  struct chunk *next;
  size_t used;
  uintptr_t w[CHUNK_WORDS];
} chunk;

static stk *entries;          /* [0] unused, [1] "table full" */
static _Atomic uint32_t *idx; /* open addressing, 0 = empty */
static uint32_t idx_mask;
static uint32_t cap;
static _Atomic uint32_t last_id;
static _Atomic uint64_t dropped;
static sluice__lock lock;
static chunk *chunks;

/* Text ranges of this library and of libunwind: frames to drop. */
static uintptr_t self_lo[4], self_hi[4];
static int n_self;

int sluice__stacks_init(size_t max_stacks) {
  if (entries) return 0;
#if defined(__SANITIZE_THREAD__)
  /* libunwind's per-thread caches are freed by TSD destructors that crash
   * inside ThreadSanitizer at thread exit (see sluice__backtrace). */
  unw_set_caching_policy(unw_local_addr_space, UNW_CACHE_NONE);
#endif
  if (max_stacks < 16) max_stacks = 16;
  if (max_stacks > (1u << 30)) max_stacks = 1u << 30;
  uint32_t isz = 1;
  while (isz < 2 * max_stacks) isz <<= 1;
  stk *e = sluice__calloc(max_stacks + 2, sizeof(stk));
  _Atomic uint32_t *ix = sluice__calloc(isz, sizeof(*ix));
  if (!e || !ix) {
    sluice__free(e);
    sluice__free(ix);
    return SLUICE_ENOMEM;
  }
  idx = ix;
  idx_mask = isz - 1;
  cap = (uint32_t)max_stacks;
  atomic_store(&last_id, SLUICE__STACK_FULL);
  entries = e;
  atomic_fetch_add_explicit(&sluice__overhead, (uint64_t)isz * sizeof(*ix),
                            memory_order_relaxed);
  return 0;
}

struct range_arg {
  uintptr_t addr;
};

static int range_cb(struct dl_phdr_info *info, size_t size, void *data) {
  struct range_arg *a = data;
  (void)size;
  int hit = 0;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD) continue;
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (a->addr >= lo && a->addr < lo + ph->p_memsz) hit = 1;
  }
  if (!hit) return 0;
  for (int i = 0; i < info->dlpi_phnum && n_self < 4; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
    self_lo[n_self] = info->dlpi_addr + ph->p_vaddr;
    self_hi[n_self] = self_lo[n_self] + ph->p_memsz;
    n_self++;
  }
  return 1;
}

void sluice__self_range_init(void) {
  if (n_self) return;
  struct range_arg a = {(uintptr_t)&sluice__stacks_init};
  dl_iterate_phdr(range_cb, &a);
  a.addr = (uintptr_t)&unw_backtrace;
  dl_iterate_phdr(range_cb, &a);
}

int sluice__pc_is_internal(uintptr_t pc) {
  for (int i = 0; i < n_self; i++)
    if (pc >= self_lo[i] && pc < self_hi[i]) return 1;
  return 0;
}

/* Two independent lanes halve the multiply chain (this runs for every
 * sampled allocation). */
static inline uint64_t hash_frames(const uintptr_t *f, uint32_t n) {
  uint64_t a = 0x243F6A8885A308D3ull ^ n, b = 0x13198A2E03707344ull;
  uint32_t i = 0;
  for (; i + 1 < n; i += 2) {
    a = (a ^ f[i]) * 0x9E3779B97F4A7C15ull;
    b = (b ^ f[i + 1]) * 0xC2B2AE3D27D4EB4Full;
  }
  if (i < n) a = (a ^ f[i]) * 0x9E3779B97F4A7C15ull;
  uint64_t h = a ^ (b >> 29) ^ (a >> 32);
  return h ? h : 1;
}

static inline int same_frames(const uintptr_t *x, const uintptr_t *y,
                              uint32_t n) {
  for (uint32_t i = 0; i < n; i++)
    if (x[i] != y[i]) return 0;
  return 1;
}

static const uintptr_t *store_frames(const uintptr_t *f, uint32_t n) {
  if (!chunks || chunks->used + n > CHUNK_WORDS) {
    chunk *c = sluice__malloc(sizeof(chunk));
    if (!c) return NULL;
    atomic_fetch_add_explicit(&sluice__overhead, sizeof(chunk),
                              memory_order_relaxed);
    c->next = chunks;
    c->used = 0;
    chunks = c;
  }
  uintptr_t *d = chunks->w + chunks->used;
  if (n) memcpy(d, f, n * sizeof(*f));
  chunks->used += n;
  return d;
}

static uint32_t find(const uintptr_t *f, uint32_t n, uint64_t h,
                     uint32_t *slot) {
  uint32_t i = (uint32_t)h & idx_mask;
  for (;;) {
    uint32_t id = atomic_load_explicit(&idx[i], memory_order_acquire);
    if (!id) break;
    const stk *e = &entries[id];
    if (e->hash == h && e->n == n && same_frames(e->frames, f, n)) return id;
    i = (i + 1) & idx_mask;
  }
  *slot = i;
  return 0;
}

static uint32_t intern(const uintptr_t *f, uint32_t n) {
  uint64_t h = hash_frames(f, n);
  uint32_t slot;
  uint32_t id = find(f, n, h, &slot);
  if (id) return id;
  sluice__lock_acquire(&lock);
  id = find(f, n, h, &slot);
  if (!id) {
    uint32_t next = atomic_load_explicit(&last_id, memory_order_relaxed) + 1;
    const uintptr_t *copy = next <= cap + 1 ? store_frames(f, n) : NULL;
    if (!copy) {
      atomic_fetch_add_explicit(&dropped, 1, memory_order_relaxed);
      id = SLUICE__STACK_FULL;
    } else {
      stk *e = &entries[next];
      e->hash = h;
      e->n = n;
      e->frames = copy;
      atomic_store_explicit(&last_id, next, memory_order_release);
      atomic_store_explicit(&idx[slot], next, memory_order_release);
      id = next;
    }
  }
  sluice__lock_release(&lock);
  return id;
}

int sluice__backtrace(void **frames) {
#if defined(__SANITIZE_THREAD__)
  /* unw_backtrace's fast path keeps a per-thread cache whose destructor
   * crashes under TSan: step a cursor instead (no cache). */
  unw_context_t ctx;
  unw_cursor_t cur;
  int n = 0;
  if (unw_getcontext(&ctx) || unw_init_local(&cur, &ctx)) return 0;
  while (n < SLUICE__CAPTURE_MAX && unw_step(&cur) > 0) {
    unw_word_t ip;
    if (unw_get_reg(&cur, UNW_REG_IP, &ip)) break;
    frames[n++] = (void *)(uintptr_t)ip;
  }
  return n;
#else
  int n = unw_backtrace(frames, SLUICE__CAPTURE_MAX);
  return n < 0 ? 0 : n;
#endif
}

uint32_t sluice__stack_intern(void *const *frames, int n) {
  int skip = 0;
  while (skip < n && sluice__pc_is_internal((uintptr_t)frames[skip])) skip++;
  uint32_t m = (uint32_t)(n - skip);
  if (m > SLUICE__MAX_DEPTH) m = SLUICE__MAX_DEPTH;
  return intern((const uintptr_t *)(frames + skip), m);
}

const uintptr_t *sluice__stack_frames(uint32_t id, uint32_t *n) {
  id = SLUICE__STACK_ID(id);
  if (!entries || id <= SLUICE__STACK_FULL ||
      id > atomic_load_explicit(&last_id, memory_order_acquire)) {
    *n = 0;
    return NULL;
  }
  *n = entries[id].n;
  return entries[id].frames;
}

void sluice__stack_alloc(uint32_t s, uint64_t size) {
  stk *e = &entries[SLUICE__STACK_ID(s)];
  int x = (s & SLUICE__EXACT) != 0;
  atomic_fetch_add_explicit(x ? &e->x_alloc_n : &e->alloc_n, 1,
                            memory_order_relaxed);
  atomic_fetch_add_explicit(x ? &e->x_alloc_b : &e->alloc_b, size,
                            memory_order_relaxed);
}

void sluice__stack_free(uint32_t s, uint64_t size) {
  stk *e = &entries[SLUICE__STACK_ID(s)];
  int x = (s & SLUICE__EXACT) != 0;
  atomic_fetch_add_explicit(x ? &e->x_free_n : &e->free_n, 1,
                            memory_order_relaxed);
  atomic_fetch_add_explicit(x ? &e->x_free_b : &e->free_b, size,
                            memory_order_relaxed);
}

void sluice__stack_counts_get(uint32_t id, sluice__stack_counts *out) {
  stk *e = &entries[id];
  /* Frees after allocs: a block freed in between is never negative. */
  out->free_n = atomic_load_explicit(&e->free_n, memory_order_relaxed);
  out->free_b = atomic_load_explicit(&e->free_b, memory_order_relaxed);
  out->alloc_n = atomic_load_explicit(&e->alloc_n, memory_order_relaxed);
  out->alloc_b = atomic_load_explicit(&e->alloc_b, memory_order_relaxed);
  out->x_free_n = atomic_load_explicit(&e->x_free_n, memory_order_relaxed);
  out->x_free_b = atomic_load_explicit(&e->x_free_b, memory_order_relaxed);
  out->x_alloc_n = atomic_load_explicit(&e->x_alloc_n, memory_order_relaxed);
  out->x_alloc_b = atomic_load_explicit(&e->x_alloc_b, memory_order_relaxed);
}

uint32_t sluice__stack_max_id(void) {
  return entries ? atomic_load_explicit(&last_id, memory_order_acquire) : 0;
}

uint64_t sluice__stack_dropped(void) {
  return atomic_load_explicit(&dropped, memory_order_relaxed);
}

void sluice__stacks_lock_all(void) {
  sluice__lock_acquire(&lock);
}

void sluice__stacks_unlock_all(void) {
  sluice__lock_release(&lock);
}
