/* SPDX-License-Identifier: MIT */
/* The profiler's own memory. When malloc is replaced, the profiler takes
 * its memory from glibc's __libc_* entry points, so it never re-enters its
 * own hooks and never shows up in the profiles; otherwise (ASan/TSan builds)
 * from plain malloc so that the sanitizers see it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prof_internal.h"

_Atomic uint64_t sluice__overhead;

#if SLUICE_PROF_INTERPOSE
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
#define REAL_MALLOC __libc_malloc
#define REAL_CALLOC __libc_calloc
#define REAL_REALLOC __libc_realloc
#define REAL_FREE __libc_free
#else
#define REAL_MALLOC malloc
#define REAL_CALLOC calloc
#define REAL_REALLOC realloc
#define REAL_FREE free
#endif

void *sluice__malloc(size_t n) {
  return REAL_MALLOC(n ? n : 1);
}

void *sluice__calloc(size_t n, size_t m) {
  return REAL_CALLOC(n ? n : 1, m ? m : 1);
}

void *sluice__realloc(void *p, size_t n) {
  return REAL_REALLOC(p, n ? n : 1);
}

void sluice__free(void *p) {
  REAL_FREE(p);
}

void *sluice__claim_get(sluice__claim_list *l, size_t size) {
  sluice__claim *c;
  sluice__lock_acquire(&l->lock);
  for (c = atomic_load_explicit(&l->head, memory_order_relaxed); c; c = c->next)
    if (!atomic_load_explicit(&c->owned, memory_order_acquire)) break;
  if (!c) {
    c = sluice__aligned_calloc(SLUICE__CACHELINE, size);
    if (c) {
      atomic_fetch_add_explicit(&sluice__overhead, size, memory_order_relaxed);
      c->next = atomic_load_explicit(&l->head, memory_order_relaxed);
      atomic_store_explicit(&l->head, c, memory_order_release);
    }
  }
  if (c) atomic_store_explicit(&c->owned, 1, memory_order_relaxed);
  sluice__lock_release(&l->lock);
  return c;
}

void *sluice__aligned_calloc(size_t align, size_t n) {
#if SLUICE_PROF_INTERPOSE
  void *p = __libc_memalign(align, n ? n : 1);
#else
  void *p = NULL;
  if (posix_memalign(&p, align, n ? n : 1)) p = NULL;
#endif
  if (p) memset(p, 0, n);
  return p;
}

char *sluice__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = sluice__malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static int buf_reserve(sluice__buf *b, size_t extra) {
  if (b->oom) return -1;
  if (b->len + extra + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  char *d = sluice__realloc(b->data, cap);
  if (!d) {
    b->oom = 1;
    return -1;
  }
  b->data = d;
  b->cap = cap;
  return 0;
}

void sluice__buf_put(sluice__buf *b, const void *d, size_t n) {
  if (buf_reserve(b, n)) return;
  memcpy(b->data + b->len, d, n);
  b->len += n;
  b->data[b->len] = 0;
}

void sluice__buf_putc(sluice__buf *b, char c) {
  sluice__buf_put(b, &c, 1);
}

void sluice__buf_puts(sluice__buf *b, const char *s) {
  sluice__buf_put(b, s, strlen(s));
}

void sluice__buf_printf(sluice__buf *b, const char *fmt, ...) {
  char small[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof small) {
    sluice__buf_put(b, small, (size_t)n);
    return;
  }
  if (buf_reserve(b, (size_t)n)) return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void sluice__buf_free(sluice__buf *b) {
  sluice__free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
  b->oom = 0;
}

void sluice__spin_while_set(_Atomic int *v) {
  unsigned spins = 0;
  while (atomic_load_explicit(v, memory_order_seq_cst)) {
    if (++spins < 64) {
      sluice__cpu_relax();
    } else {
      spins = 0;
      sched_yield();
    }
  }
}

void sluice__lock_spin(sluice__lock *l) {
  do {
    sluice__spin_while_set(&l->v);
  } while (atomic_exchange_explicit(&l->v, 1, memory_order_acquire));
}
