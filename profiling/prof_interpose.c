/* SPDX-License-Identifier: MIT */
/* Replacements for glibc's allocation functions.
 *
 * Every function allocates with glibc's own `__libc_*` entry points, so
 * blocks are glibc's, unchanged: a pointer the profiler never saw (allocated
 * before it started, or by code calling glibc directly) is freed as is, and
 * malloc_usable_size() simply forwards. No dlsym() is needed on the
 * allocation path, so there is no bootstrap problem (dlsym allocating before
 * the real malloc is known); the one dlsym, for malloc_usable_size, runs
 * outside the allocation functions.
 *
 * Off (the profiler never started), malloc costs a test of the flags word
 * and a branch, free two (see free()). Compiled out under ASan/TSan, whose
 * runtimes own malloc. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prof_internal.h"

#if SLUICE_PROF_INTERPOSE

#define UNW_LOCAL_ONLY
#include <libunwind.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

#define EXPORT __attribute__((visibility("default")))

/* Sampled blocks outside scopes (see SLUICE__TAG_ALIGN): the block handed
 * out starts at the first multiple of SLUICE__TAG_ALIGN at least 16 bytes
 * into a glibc block of n + SLUICE__TAG_ALIGN + 16 bytes (4 KiB more per
 * sampled block: at the default rate about 0.8% of the live heap). The two
 * words before it name the glibc block, the second one xor'ed with
 * TAG_MAGIC. Any glibc block is preceded by its chunk header, so reading
 * them is safe for every tagged pointer; for a block of glibc's own the
 * first word is its chunk size, never an address just below it. */
#define TAG_MAGIC ((uintptr_t)0x5a1ce7a65a1ce7a6ull)
#define TAG_EXTRA ((size_t)SLUICE__TAG_ALIGN + 16)

static void *tag_alloc(size_t n) {
  size_t m;
  if (__builtin_add_overflow(n, TAG_EXTRA, &m)) {
    errno = ENOMEM;
    return NULL;
  }
  uintptr_t q = (uintptr_t)__libc_malloc(m);
  if (!q) return NULL;
  uintptr_t p = (q + 16 + SLUICE__TAG_ALIGN - 1) &
                ~(uintptr_t)(SLUICE__TAG_ALIGN - 1);
  ((uintptr_t *)p)[-1] = q;
  ((uintptr_t *)p)[-2] = q ^ TAG_MAGIC;
  return (void *)p;
}

/* The glibc block of p: p itself, or the block a tagged p lives in. */
static inline void *glibc_block(void *p) {
  uintptr_t u = (uintptr_t)p;
  if (SLUICE__LIKELY(!sluice__tagged(u)) || !u) return p;
  const uintptr_t *h = (const uintptr_t *)p;
  uintptr_t q = h[-1];
  if (u - q - 16 <= SLUICE__TAG_ALIGN && h[-2] == (q ^ TAG_MAGIC))
    return (void *)q;
  return p;
}

static inline void *after_alloc(void *p, size_t n) {
  if (SLUICE__UNLIKELY(sluice__flags_now() & SLUICE__F_REC) && p)
    sluice__on_alloc(p, n);
  return p;
}

/* malloc and free test the flags first so that, off, they are a load, a
 * branch and a tail call into glibc. */
/* Sampled or scoped, and not taken by the nursery: the stack is taken
 * here, so that only this one frame of ours is unwound (malloc and
 * malloc_slow tail-jumped here: the next frame is the caller's). p: the
 * block already allocated inside a scope, or NULL outside scopes. */
SLUICE__NOINLINE static void *malloc_record(sluice__tls *t, void *p, size_t n) {
  void *frames[SLUICE__CAPTURE_MAX];
  if (!p) {
    /* Outside scopes only a sample is recorded: decide first, so that a
     * sampled block is allocated with the tag free() looks for
     * (SLUICE__TAG_ALIGN) at the rates that tag. prepare returns 0 or 1
     * here. */
    int k = sluice__alloc_prepare(t, n);
    if (k < 0) return __libc_malloc(n);
    if (k == 0) { /* not sampled after all: nothing to record */
      t->guard--;
      return __libc_malloc(n);
    }
    p = sluice__rate() >= SLUICE__TAG_MIN_RATE ? tag_alloc(n)
                                               : __libc_malloc(n);
    if (SLUICE__UNLIKELY(p == NULL)) {
      t->guard--;
      return p;
    }
    int nf = unw_backtrace(frames, SLUICE__CAPTURE_MAX);
    sluice__alloc_finish(t, p, n, k, frames, nf < 0 ? 0 : nf);
    return p;
  }
  int k = sluice__alloc_prepare(t, n);
  if (k < 0) return p;
  int nf = k ? unw_backtrace(frames, SLUICE__CAPTURE_MAX) : -1;
  sluice__alloc_finish(t, p, n, k, frames, nf < 0 && k ? 0 : nf);
  return p;
}

/* Sampled or scoped. Inside a scope the common case (the block goes to
 * the nursery) runs here without the stack buffer's frame; the rest
 * tail-calls malloc_record(). */
SLUICE__NOINLINE static void *malloc_slow(size_t n) {
  sluice__tls *t = &sluice__t;
  if (!t->scope) return malloc_record(t, NULL, n);
  void *p = __libc_malloc(n);
  if (SLUICE__UNLIKELY(p == NULL)) return p;
  /* The nursery may take it (nurs_shut: a pending slot, a nursery, no
   * capture, registered), the scope is still open, not sampled: the
   * countdown tested before the nursery put and written after it (no
   * register kept across the put). */
  if (SLUICE__LIKELY(!(t->nurs_shut | t->guard) &&
                     atomic_load_explicit(t->pend_gen, memory_order_relaxed) ==
                         (uint32_t)(t->scope >> 32) &&
                     t->saved_left >= (int64_t)n) &&
      SLUICE__LIKELY(sluice__nurs_put_in(t, t->nurs, (uintptr_t)p, n))) {
    t->saved_left -= (int64_t)n; /* sample_left stays armed */
    return p;
  }
  return malloc_record(t, p, n);
}

/* The hottest path of all: counted and not sampled, malloc only bumps
 * thread-local counters and tail-calls glibc, without a frame of its own. */
EXPORT void *malloc(size_t n) {
  if (SLUICE__LIKELY(
          !(SLUICE__HOT_LOAD(unsigned, sluice__flags) & SLUICE__F_REC)) ||
      SLUICE__LIKELY(!sluice__alloc_pre(n)))
    return __libc_malloc(n);
  return malloc_slow(n);
}

EXPORT void *calloc(size_t n, size_t m) {
  /* glibc rejects n * m overflowing; a non-NULL result means it fits. */
  return after_alloc(__libc_calloc(n, m), n * m);
}

SLUICE__NOINLINE static void free_slow(void *p, unsigned f) {
  sluice__tls *t = &sluice__t;
  /* A block of this thread's scope, freed before the scope ends: the
   * common case inside a handler (prof_nursery.c). */
  if (t->nurs && atomic_load_explicit(&t->nurs->n, memory_order_relaxed) &&
      t->state == SLUICE__T_LIVE) {
    sluice__rec r;
    if (sluice__nurs_take_own(t, (uintptr_t)p, &r)) {
      sluice__scope_credit_mine(t, r.scope, -(int64_t)r.size, -1);
      __libc_free(glibc_block(p));
      return;
    }
  }
  sluice__free_slow(p, f);
  __libc_free(glibc_block(p));
}

/* Every other case of free() but off: NULL, a block with the sample tag,
 * records at untagged addresses, nurseries, stopped. f: the flags, read
 * again after free()'s first look (any value read at any point is as good
 * as the first), nonzero. */
SLUICE__NOINLINE static void free_other(void *p, unsigned f) {
  if (SLUICE__UNLIKELY(!p)) return __libc_free(p);
  if (f & SLUICE__F_REC) {
    sluice__tls *t = &sluice__t;
    sluice__bump(&t->frees, 1);
    /* Not registered yet, or this thread's nursery is active. */
    if (SLUICE__UNLIKELY(t->free_gate)) return free_slow(p, f);
  }
  /* Tracked in the table, or another thread's nursery is active. */
  if (SLUICE__UNLIKELY(sluice__maybe_tracked(p) || f >= SLUICE__F_NURS1))
    return free_slow(p, f | SLUICE__F_TRACK);
  __libc_free(glibc_block(p));
}

/* free_nurs() of a block whose scope is not the thread's pending one. */
SLUICE__NOINLINE static void free_credit(void *p, uint32_t ref, uint64_t size) {
  sluice__scope_credit(ref, -(int64_t)size, -1);
  __libc_free(p);
}

/* Some nursery is active (f >= SLUICE__F_NURS1). The common case inside a
 * handler: a block of this thread's scope, freed before the scope ends,
 * taken from its nursery here, one call from free(). A nursery block is
 * glibc's own (scoped blocks carry no sample tag), so it goes back to
 * glibc as is. Anything else goes on to free_other(). p is tested before
 * the nursery: an empty entry's key is 0. */
SLUICE__NOINLINE static void free_nurs(void *p, unsigned f) {
  sluice__tls *t = &sluice__t;
  sluice__rec r;
  if (SLUICE__LIKELY(t->nurs != NULL) && SLUICE__LIKELY(f & SLUICE__F_REC) &&
      SLUICE__LIKELY(p != NULL) && SLUICE__LIKELY(t->state == SLUICE__T_LIVE) &&
      sluice__nurs_take_own(t, (uintptr_t)p, &r)) {
    sluice__bump(&t->frees, 1);
    if (SLUICE__UNLIKELY(r.scope != t->pend_ref))
      return free_credit(p, r.scope, r.size);
    sluice__pend_add(t, -(int64_t)r.size, -1);
    return __libc_free(p);
  }
  return free_other(p, f);
}

/* errno: nothing on our side can set it (see sluice__untrack), and glibc's
 * free preserves it too.
 *
 * Sampling, free() runs for every block and almost none was sampled, so
 * this is the path that costs. While the flags word is exactly
 * SLUICE__F_FAST (recording, every record in the table tagged, no nursery
 * active anywhere, this thread's included), a block without the sample tag
 * cannot be tracked: count the free, whose sign says whether the thread is
 * registered, and hand the block to glibc. Five instructions and a tail
 * jump; everything else (off included) goes to free_other(). */
EXPORT void free(void *p) {
  if (SLUICE__LIKELY(SLUICE__HOT_LOAD(unsigned, sluice__flags) ==
                     SLUICE__F_FAST) &&
      SLUICE__LIKELY(!sluice__tagged((uintptr_t)p))) {
    /* Not registered yet (or exiting): register; p has no record. */
    if (SLUICE__UNLIKELY(sluice__count_free(&sluice__t) < 0))
      return free_slow(p, SLUICE__F_REC);
    return __libc_free(p);
  }
  /* Off, never started (the flags stay nonzero after: no block is
   * tagged): glibc's, which takes NULL. A second read, volatile so that
   * the one above stays a compare with memory instead of a load into a
   * register first. */
  unsigned f = *(volatile const unsigned *)&sluice__flags;
  if (SLUICE__UNLIKELY(f != 0)) {
    if (f >= SLUICE__F_NURS1) return free_nurs(p, f);
    return free_other(p, f);
  }
  /* Kept apart from the tail jump above (an empty asm is not merged), so
   * that off, free() takes one branch, not two. */
  __asm__ __volatile__("");
  __libc_free(p);
}

static size_t (*find_usable(void))(void *);

/* glibc's realloc, a tagged block included: that one moves to a block of
 * glibc's own (as glibc's realloc(p, 0) does, 0 bytes frees it). */
static void *glibc_realloc(void *p, size_t n) {
  void *b = glibc_block(p);
  if (SLUICE__LIKELY(b == p)) return __libc_realloc(p, n);
  if (n == 0) {
    __libc_free(b);
    return NULL;
  }
  void *q = __libc_malloc(n);
  if (!q) return NULL;
  size_t (*usable)(void *) = find_usable();
  size_t have = usable ? usable(b) - (size_t)((uintptr_t)p - (uintptr_t)b) : 0;
  memcpy(q, p, have < n ? have : n);
  __libc_free(b);
  return q;
}

EXPORT void *realloc(void *p, size_t n) {
  if (!p) return malloc(n);
  unsigned f = sluice__flags_now();
  if (SLUICE__LIKELY(!f)) return __libc_realloc(p, n);
  /* Take the record before glibc may release p: once released, another
   * thread may get the same address and record it. */
  sluice__rec old;
  sluice__tls *t = &sluice__t;
  int had = (f & SLUICE__F_TRACK) && !t->in_fork &&
            sluice__take((uintptr_t)p, &old);
  /* An untracked block grown inside a scope: its size before, for the
   * bytes the scope adds. */
  size_t usable = !had && t->scope && (f & SLUICE__F_REC) && !t->guard
                      ? malloc_usable_size(p)
                      : 0;
  void *q = glibc_realloc(p, n);
  int e = errno;
  sluice__realloc_done(p, q, n, had ? &old : NULL, usable);
  errno = e;
  return q;
}

EXPORT void *reallocarray(void *p, size_t n, size_t m) {
  size_t bytes;
  if (__builtin_mul_overflow(n, m, &bytes)) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc(p, bytes);
}

EXPORT void *memalign(size_t align, size_t n) {
  return after_alloc(__libc_memalign(align, n), n);
}

EXPORT void *aligned_alloc(size_t align, size_t n) {
  return after_alloc(__libc_memalign(align, n), n);
}

EXPORT int posix_memalign(void **out, size_t align, size_t n) {
  if (align == 0 || (align & (align - 1)) || align % sizeof(void *))
    return EINVAL;
  int e = errno;
  void *p = __libc_memalign(align, n);
  if (!p) {
    errno = e;
    return ENOMEM;
  }
  *out = after_alloc(p, n);
  errno = e;
  return 0;
}

EXPORT void *valloc(size_t n) {
  return after_alloc(__libc_valloc(n), n);
}

static size_t page_round(size_t n) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  return n ? (n + ps - 1) & ~(ps - 1) : ps;
}

EXPORT void *pvalloc(size_t n) {
  void *p = __libc_pvalloc(n);
  return p ? after_alloc(p, page_round(n)) : p;
}

/* glibc's malloc_usable_size, found once. */
static size_t (*_Atomic real_usable)(void *);

static size_t (*find_usable(void))(void *) {
  size_t (*f)(void *) = atomic_load(&real_usable);
  if (f) return f;
  sluice__t.guard++;
  union {
    void *obj;
    size_t (*fn)(void *);
  } u;
  u.obj = dlsym(RTLD_NEXT, "malloc_usable_size");
  sluice__t.guard--;
  f = u.fn;
  if (f) atomic_store(&real_usable, f);
  return f;
}

__attribute__((constructor)) static void usable_init(void) {
  find_usable();
}

EXPORT size_t malloc_usable_size(void *p) {
  if (!p) return 0;
  size_t (*f)(void *) = find_usable();
  if (!f) return 0;
  void *b = glibc_block(p);
  return f(b) - (size_t)((uintptr_t)p - (uintptr_t)b);
}

#endif /* SLUICE_PROF_INTERPOSE */
