/* SPDX-License-Identifier: MIT */
/* Internals shared by the files of the allocation profiler (sluice__ names).
 *
 * Map of the module, one file per job (as jemalloc splits src/prof*.c):
 *   prof_interpose.c  malloc & co. replacing glibc's, the fast paths
 *   prof_core.c       global state, start/stop, environment, thread state,
 *                     sampling, recording and untracking blocks, MemStats
 *   prof_mem.c        the profiler's own memory (bypasses the hooks), buffers
 *   prof_table.c      the table of tracked blocks (pointer -> record)
 *   prof_stack.c      unwinding (libunwind) and the interned stack table
 *   prof_scope.c      scopes (slots), credits, residual at end, re-checks,
 *                     sweeps to sinks, the consumer hooks
 *   prof_ledger.c     blocks grown by realloc in another scope: who owns
 *                     which bytes of the block (growth layers)
 *   prof_group.c      groups (queue, outcome, key value), their exact
 *                     retained counters, growth curves and verdict states
 *   prof_verdict.c    verdict callbacks and lines, top sites
 *   prof_bg.c         the background re-check thread
 *   prof_check.c      the leak assertion for users' tests
 *   prof_symbols.c    loaded modules, ELF symbol tables, name cache, and
 *                     the frames (function, file:line, inlined calls) of
 *                     an address that every writer reads
 *   prof_lines.c      DWARF line tables and inlined calls (libdw)
 *   prof_snapshot.c   snapshots and their differences
 *   prof_out.c        output dispatch, files, shared formatting
 *   prof_out_pprof.c  gzipped profile.proto
 *   prof_out_legacy.c gperftools heap text
 *   prof_out_text.c   `top`, folded stacks and the residual report
 */
#ifndef SLUICE_PROF_INTERNAL_H
#define SLUICE_PROF_INTERNAL_H

#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/profiling.h>

#ifndef SLUICE_PROF_INTERPOSE
#define SLUICE_PROF_INTERPOSE 1
#endif
#ifndef SLUICE_PROF_HAVE_LIBDW
#define SLUICE_PROF_HAVE_LIBDW 0
#endif

#define SLUICE__LIKELY(x) __builtin_expect(!!(x), 1)
#define SLUICE__UNLIKELY(x) __builtin_expect(!!(x), 0)
#define SLUICE__NOINLINE __attribute__((noinline))
#define SLUICE__CACHELINE 64
/* On declarations of the profiler's globals: hidden, so that the hot paths
 * address them relative to the code (`testb $1, sluice__flags(%rip)`)
 * instead of loading their address from the GOT first (one instruction
 * more per malloc and per free; -fvisibility=hidden covers definitions
 * only). */
#define SLUICE__HIDDEN __attribute__((visibility("hidden")))

/* Deepest stack recorded (Go records 32 frames for heap profiles). */
#define SLUICE__MAX_DEPTH 64
/* Outcomes aggregated: sluice_outcome values 0 .. SLUICE_OUTCOME_COUNT_-1. */
#define SLUICE__N_OUTCOMES SLUICE_OUTCOME_COUNT_

/* ------------------------------------------------------------------------ */
/* The profiler's own memory: glibc's __libc_* entry points when malloc is
 * replaced (so it never re-enters the hooks), plain malloc otherwise (so
 * ASan sees it). */
void *sluice__malloc(size_t n);
void *sluice__calloc(size_t n, size_t m);
void *sluice__realloc(void *p, size_t n);
void sluice__free(void *p);
/* Zeroed, aligned to `align` (a power of two); sluice__free() frees it. */
void *sluice__aligned_calloc(size_t align, size_t n);
char *sluice__strdup(const char *s);
/* Bytes held by long-lived structures, kept by their owners. */
extern _Atomic uint64_t sluice__overhead SLUICE__HIDDEN;

/* A growable byte buffer; `oom` is sticky. */
typedef struct sluice__buf {
  char *data;
  size_t len, cap;
  int oom;
} sluice__buf;
void sluice__buf_put(sluice__buf *b, const void *d, size_t n);
void sluice__buf_putc(sluice__buf *b, char c);
void sluice__buf_puts(sluice__buf *b, const char *s);
void sluice__buf_printf(sluice__buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sluice__buf_free(sluice__buf *b);

/* ------------------------------------------------------------------------ */
struct sluice__rec;

/* A small test-and-set lock for the hot tables: cheaper than a mutex when
 * uncontended, and it never allocates. */
typedef struct sluice__lock {
  _Atomic int v;
} sluice__lock;

static inline void sluice__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Contended: spin, then yield (out of line, so that the callers' common
 * path keeps its registers). */
void sluice__lock_spin(sluice__lock *l);
/* Wait until *v reads 0 (sequentially consistent loads): spin, then
 * yield. */
void sluice__spin_while_set(_Atomic int *v);

static inline void sluice__lock_acquire(sluice__lock *l) {
  if (SLUICE__UNLIKELY(
          atomic_exchange_explicit(&l->v, 1, memory_order_acquire)))
    sluice__lock_spin(l);
}

static inline void sluice__lock_release(sluice__lock *l) {
  atomic_store_explicit(&l->v, 0, memory_order_release);
}

/* Asymmetric fences. Some handshakes pair a step every message takes (a
 * cached begin marking itself busy, a nursery in use) with a rare one
 * (key-value eviction, taking an idle nursery's activation back). The
 * common side stores, then loads, with only a compiler barrier between
 * (sluice__fence_light); the rare side stores, calls sluice__fence_heavy()
 * (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): when it returns, every
 * thread of the process has run a full memory barrier), then loads. Either
 * the common side's load sees the rare side's store, or the rare side's
 * load sees the common side's store, as with a sequentially consistent
 * exchange on both sides, without a locked instruction per message.
 * sluice__fences is 1 once the process is registered for it (at start,
 * never cleared; SLUICE_PROF_MEMBARRIER=0 keeps it 0); while 0, the
 * common side takes the sequentially consistent operations. */
extern int sluice__fences SLUICE__HIDDEN;
void sluice__fence_init(void);
/* Only when sluice__fences is 1. */
void sluice__fence_heavy(void);
static inline void sluice__fence_light(void) {
  atomic_signal_fence(memory_order_seq_cst);
}

/* Per-thread records that outlive their thread (nurseries, end queues):
 * kept in a list that is never shortened, so that others may walk it at
 * any time, and claimed again by new threads once their owner has exited.
 * A record starts with this header. */
typedef struct sluice__claim {
  _Atomic int owned;          /* by a live thread */
  struct sluice__claim *next; /* every record of the list */
} sluice__claim;

typedef struct sluice__claim_list {
  sluice__claim *_Atomic head;
  sluice__lock lock; /* claiming and giving back */
} sluice__claim_list;

/* An unowned record of the list, or a new one of `size` bytes (zeroed,
 * cache-line aligned, counted in the overhead); NULL when out of memory. */
void *sluice__claim_get(sluice__claim_list *l, size_t size);
/* The owner exits: the record may be claimed again. */
static inline void sluice__unclaim(sluice__claim *c) {
  atomic_store_explicit(&c->owned, 0, memory_order_release);
}
static inline sluice__claim *sluice__claim_first(sluice__claim_list *l) {
  return atomic_load_explicit(&l->head, memory_order_acquire);
}

/* ------------------------------------------------------------------------ */
/* Per-thread state, initial-exec TLS (no allocation, no __tls_get_addr). */
enum { SLUICE__T_NEW = 0, SLUICE__T_LIVE = 1, SLUICE__T_DEAD = 2 };

typedef struct sluice__tls {
  int guard; /* >0: inside the profiler; record nothing */
  int state; /* SLUICE__T_* (registry membership) */
  /* Nonzero while free() must take its slow path on this thread whatever
   * the block: not registered (state != LIVE), or its nursery is active.
   * One test on the hot path for both. */
  int free_gate;
  /* Bytes until the next sample, minus one: an allocation is sampled when
   * it takes the countdown below zero, a test of the sign of the one
   * subtraction (SLUICE__COUNTDOWN). Only the owner writes it. Inside a
   * scope it is set to SLUICE__ARMED (every allocation takes the slow path;
   * allocations only take it further down) and the real countdown is
   * saved_left. -1 in a new thread: its first allocation takes the slow
   * path, which registers the thread. A countdown is run in stretches of
   * at most SLUICE__STRETCH bytes (the rest in cd_rest), so that a rate
   * change reaches every thread within that many of its bytes. */
  _Atomic int64_t sample_left;
  int64_t saved_left;
  int64_t cd_rest;
  /* What sample_left was last set to (sluice__cd_set): the bytes allocated
   * since are cd_mark - sample_left, so that the allocation's subtraction
   * counts its bytes too (alloc_bytes holds those before). cd_seq is odd
   * while the owner changes the three (readers retry). */
  _Atomic int64_t cd_mark;
  _Atomic uint32_t cd_seq;
  uint32_t epoch; /* sampling epoch the countdown belongs to */
  int in_fork;    /* between fork's prepare and parent/child */
  uint64_t scope; /* current scope handle, 0 = none */
  /* Credits to the current scope's slot not yet added to its atomics:
   * blocks allocated and freed by this thread inside its own scope cost no
   * atomic operation. Flushed whenever the thread's scope changes. */
  uint32_t pend_ref;
  int64_t pend_b, pend_n;
  /* The generation word of pend_ref's slot and the value it has while the
   * scope is open (t->scope >> 32): one load says the scope still is. */
  const _Atomic uint32_t *pend_gen;
  /* The pin that pend_ref's slot holds for this thread (its xrefs): see
   * sluice__scope_pend_set(). */
  _Atomic int32_t *pend_pin;
  /* The pin is the slot's `owned` flag (the begin hook's thread), not a
   * reference in its xrefs. */
  uint8_t pend_own;
  /* Blocks of the current scope allocated by this thread and not freed yet
   * (prof_nursery.c); NULL until the first one. */
  struct sluice__nursery *nurs;
  /* The current scope keeps more blocks alive than the nursery holds: its
   * blocks go to the block table until the thread leaves it. */
  uint8_t nurs_off;
  /* Zero only while a scoped malloc may put its block in the nursery as
   * far as these say: a pending slot, a nursery, not nurs_off, no
   * capture, registered (sluice__nurs_gate). One word for the hot path's
   * five tests (the guard, the slot's generation and the countdown are
   * tested apart). Set whenever one of them turns against it; computed
   * again where they may all turn for it. */
  int nurs_shut;
  /* Scopes this thread ended with nothing live, for the scope lock's next
   * holder to account (prof_scope.c); NULL until the first. */
  struct sluice__endq *endq;
  uint64_t rng; /* xorshift state for the sampler */
  /* The current scope captures every stack at weight 1 (adaptive). */
  uint8_t capture;
  /* The deferred-completion warning: this thread entered a delivery with
   * the resume hook once; its live blocks (mallocs - frees) when it first
   * completed a deferred delivery without entering it (+1: 0 = not yet). */
  uint8_t entered;
  int64_t unentered_base;
  /* MemStats counters; written by the owner only, read by others. `frees`
   * carries SLUICE__FREES_UNREG while the thread is not registered; the
   * bytes are alloc_bytes plus the countdown's progress
   * (sluice__alloc_bytes_of). */
  _Atomic uint64_t mallocs, frees, alloc_bytes;
  struct sluice__tls *next, *prev; /* registry of live threads */
} sluice__tls;

/* Add to t's pending credits (owner only): two plain additions. The
 * relaxed store keeps the compiler from pairing them into vector
 * instructions, which cost more on these paths than the two adds. */
static inline void sluice__pend_add(sluice__tls *t, int64_t bytes,
                                    int64_t objects) {
  t->pend_b += bytes;
  __atomic_store_n(&t->pend_n, t->pend_n + objects, __ATOMIC_RELAXED);
}

extern __thread sluice__tls sluice__t SLUICE__HIDDEN
    __attribute__((tls_model("initial-exec")));

/* Global flags: recording new allocations; the block table may hold
 * records (frees must look). Bits from SLUICE__F_LOOSE1 count the table's
 * shards that hold a record at an address without the sample tag (see
 * SLUICE__TAG_ALIGN; 0 to 64); bits from SLUICE__F_NURS1 up count the
 * active nurseries (prof_nursery.c). So free() learns from the one word it
 * loads anyway whether it may skip the table for an untagged block (the
 * word is exactly SLUICE__F_FAST) and whether another thread's nursery may
 * hold its block. SLUICE__F_TRACK is set with SLUICE__F_REC and never
 * cleared. */
enum {
  SLUICE__F_REC = 1u,
  SLUICE__F_TRACK = 2u,
  SLUICE__F_LOOSE1 = 1u << 2,
  SLUICE__F_NURS1 = 1u << 9
};
#define SLUICE__F_FAST (SLUICE__F_REC | SLUICE__F_TRACK)
extern _Atomic unsigned sluice__flags SLUICE__HIDDEN;
extern _Atomic uint32_t sluice__epoch SLUICE__HIDDEN;

static inline unsigned sluice__flags_now(void) {
  return atomic_load_explicit(&sluice__flags, memory_order_relaxed);
}

/* Counter bump: only the owning thread writes, others read. With malloc
 * replaced this is one plain add to thread-local memory (the readers'
 * relaxed loads see a torn value never on x86-64/aarch64); otherwise a
 * relaxed load and store, which race detectors understand. */
static inline void sluice__bump(_Atomic uint64_t *c, uint64_t by) {
#if SLUICE_PROF_INTERPOSE
  *(uint64_t *)c += by;
#else
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + by,
                        memory_order_relaxed);
#endif
}

/* The sign bit of a thread's `frees` while it is not registered (new, or
 * past its exit): free()'s fast path learns it from the sign of the one
 * addition that counts the free (`addq $1, %fs:..; js`). Only the owner
 * sets and clears it; readers mask it (sluice__frees_of). */
#define SLUICE__FREES_UNREG (UINT64_C(1) << 63)
static inline uint64_t sluice__frees_of(const sluice__tls *t) {
  return atomic_load_explicit(&t->frees, memory_order_relaxed) &
         ~SLUICE__FREES_UNREG;
}
/* Count a free on the fast path: negative when the thread is not
 * registered. */
static inline int64_t sluice__count_free(sluice__tls *t) {
#if SLUICE_PROF_INTERPOSE
  return *(int64_t *)&t->frees += 1;
#else
  uint64_t v = atomic_load_explicit(&t->frees, memory_order_relaxed) + 1;
  atomic_store_explicit(&t->frees, v, memory_order_relaxed);
  return (int64_t)v;
#endif
}

void sluice__tls_register(sluice__tls *t);
/* Bytes allocated by t (MemStats' total_alloc_bytes): any thread. */
uint64_t sluice__alloc_bytes_of(const sluice__tls *t);
/* After sluice__alloc_pre() said so. */
void sluice__alloc_slow(sluice__tls *t, void *p, size_t n);
/* The slow path in two halves, so that the caller can take the stack itself
 * (fewer frames of ours to unwind and drop):
 * prepare: -1 nothing to record; 0 record without a stack; 1 record with a
 *          sampled stack; 2 with a stack at weight 1 (adaptive capture).
 *          For 0, 1 and 2 the guard is held until finish.
 * finish:  `k` is what prepare returned; nframes < 0 means no stack. */
int sluice__alloc_prepare(sluice__tls *t, size_t n);
void sluice__alloc_finish(sluice__tls *t, void *p, size_t n, int k,
                          void *const *frames, int nframes);
void sluice__untrack(const void *p);

/* After the real realloc: `q` (NULL on failure) replaced `p`, whose record
 * (if it was tracked) is `old`; `usable` is malloc_usable_size(p) taken
 * before, for an untracked block grown inside a scope (else 0). */
void *sluice__realloc_done(void *p, void *q, size_t n,
                           const struct sluice__rec *old, size_t usable);
void sluice__rec_release(const struct sluice__rec *r);

#define SLUICE__ARMED (INT64_MIN / 4)
#define SLUICE__STRETCH ((int64_t)1 << 20)
/* The stored form of a countdown of `left` bytes (sample_left, saved_left):
 * "left <= 0" is then "stored < 0", the sign of the subtraction itself. */
#define SLUICE__COUNTDOWN(left) ((left)-1)

/* Global flags and the table's shard mask as the allocation functions read
 * them. With malloc replaced, a plain load: the compiler folds it into the
 * test (`testb $1, sluice__flags(%rip)`), where an atomic load takes a
 * register and two instructions more on every malloc and free. An aligned
 * word is read whole on x86-64 and aarch64, and each call reads it once.
 * Otherwise (sanitizers, which see these loads) a relaxed atomic load. */
#if SLUICE_PROF_INTERPOSE
#define SLUICE__HOT_LOAD(type, x) (*(const type *)&(x))
#else
#define SLUICE__HOT_LOAD(type, x) \
  atomic_load_explicit(&(x), memory_order_relaxed)
#endif

/* An allocation of n bytes runs the countdown down (and so counts its
 * bytes): the new value. With malloc replaced, one subtraction in
 * thread-local memory whose sign decides the caller's branch (`sub %rdi,
 * %fs:..; js`): a relaxed atomic load and store are never fused into it;
 * only the owner writes sample_left. */
static inline int64_t sluice__cd_sub(sluice__tls *t, size_t n) {
#if SLUICE_PROF_INTERPOSE
  return *(int64_t *)&t->sample_left -= (int64_t)n;
#else
  int64_t left = atomic_load_explicit(&t->sample_left, memory_order_relaxed) -
                 (int64_t)n;
  atomic_store_explicit(&t->sample_left, left, memory_order_relaxed);
  return left;
#endif
}

/* The owner sets its countdown to v (every write but an allocation's
 * subtraction): the bytes run down since the last set join alloc_bytes. */
static inline void sluice__cd_set(sluice__tls *t, int64_t v) {
  uint32_t q = atomic_load_explicit(&t->cd_seq, memory_order_relaxed);
  atomic_store_explicit(&t->cd_seq, q + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  int64_t ran = atomic_load_explicit(&t->cd_mark, memory_order_relaxed) -
                atomic_load_explicit(&t->sample_left, memory_order_relaxed);
  atomic_store_explicit(&t->alloc_bytes,
                        atomic_load_explicit(&t->alloc_bytes,
                                             memory_order_relaxed) +
                            (uint64_t)ran,
                        memory_order_relaxed);
  atomic_store_explicit(&t->cd_mark, v, memory_order_relaxed);
  atomic_store_explicit(&t->sample_left, v, memory_order_relaxed);
  atomic_store_explicit(&t->cd_seq, q + 2, memory_order_release);
}

/* Before an allocation of n bytes: count it and run the sampling
 * countdown (which counts the bytes). Returns nonzero when the block must
 * go through the slow path (which reads what is left in t->sample_left):
 * sampled, the end of a stretch, inside a scope (the countdown is armed),
 * or a thread not registered yet (its countdown starts at -1). It needs
 * no pointer, so malloc() can do it first and then tail-call glibc. */
static inline int sluice__alloc_pre(size_t n) {
  sluice__tls *t = &sluice__t;
  sluice__bump(&t->mallocs, 1);
  return SLUICE__UNLIKELY(sluice__cd_sub(t, n) < 0);
}

/* The allocation hook, after the fact (calloc, memalign, note_alloc...). */
static inline void sluice__on_alloc(void *p, size_t n) {
  if (sluice__alloc_pre(n)) sluice__alloc_slow(&sluice__t, p, n);
}

/* One bit per shard of the block table: set while the shard holds a
 * record (changed under the shard's lock). free() of an untracked block
 * reads this one hot word, and nothing else, to say so. */
#define SLUICE__N_SHARDS 64
extern _Atomic uint64_t sluice__shard_mask SLUICE__HIDDEN;

static inline uint64_t sluice__hash_ptr(uintptr_t k) {
  return (uint64_t)(k >> 4) * 0x9E3779B97F4A7C15ull;
}

static inline int sluice__maybe_tracked(const void *p) {
  uint64_t m = SLUICE__HOT_LOAD(uint64_t, sluice__shard_mask);
  if (SLUICE__LIKELY(m == 0)) return 0;
  return (int)((m >> (sluice__hash_ptr((uintptr_t)p) >> 58)) & 1);
}

/* A sampled block outside scopes starts at a multiple of SLUICE__TAG_ALIGN,
 * inside a larger glibc block (prof_interpose.c), so that free() of an
 * untagged block, almost every block, skips the table with an alignment
 * test while every record in the table is tagged (flags ==
 * SLUICE__F_FAST). Inside, not at the start: glibc hands a freed block's
 * address out again, and tagged addresses would circulate among unsampled
 * blocks. A block that has the alignment by chance (about 1 in 256 of
 * glibc's small blocks, and aligned allocations) only takes the longer
 * path; records at untagged addresses (scoped blocks, calloc, realloc,
 * sluice_prof_note_alloc) are counted in the flags per shard
 * (prof_table.c) and send every free the longer way while they exist. */
#define SLUICE__TAG_ALIGN 4096u
/* A tagged block costs SLUICE__TAG_ALIGN + 16 bytes more: only at rates
 * where sampled blocks are rare (at most about 1.6% of the live heap; at
 * rate 1 every block would be). Below it sampled blocks are recorded where
 * glibc put them, as any record at an untagged address. */
#define SLUICE__TAG_MIN_RATE (256u << 10)
static inline int sluice__tagged(uintptr_t p) {
  return (p & (SLUICE__TAG_ALIGN - 1)) == 0;
}

uint64_t sluice__now_ns(void);
/* How far behind the clock above may be (its resolution; 0 for an injected
 * clock): added to deadlines. */
uint64_t sluice__clock_slack_ns(void);
size_t sluice__rate(void);
const sluice_prof_opts *sluice__opts(void);
int sluice__inited(void);
static inline void sluice__enter_guard(void) {
  sluice__t.guard++;
}
static inline void sluice__leave_guard(void) {
  sluice__t.guard--;
}

/* ------------------------------------------------------------------------ */
/* Records of tracked blocks. */
typedef struct sluice__rec {
  uint64_t size;  /* requested bytes */
  uint32_t stack; /* stack id when sampled, 0 otherwise; SLUICE__EXACT:
                     captured at weight 1 (adaptive stacks, rate 1) */
  uint32_t scope; /* owner: 0; slot index + 1; SLUICE__SINK | sink index;
                     SLUICE__EXT | ledger index (several owners) */
} sluice__rec;

/* Kinds of owner reference (rec.scope, ledger layers, credits). */
#define SLUICE__SINK 0x80000000u
#define SLUICE__EXT 0x40000000u
#define SLUICE__REF_IDX(r) ((r)&0x3FFFFFFFu)
/* A stack sampled at weight 1 (not to be unbiased). */
#define SLUICE__EXACT 0x80000000u
#define SLUICE__STACK_ID(s) ((s) & ~SLUICE__EXACT)

int sluice__table_init(void);
/* Insert or replace; the replaced record (if any) is copied to `old` and 1
 * returned. -1 when out of memory (the record is dropped). */
int sluice__table_insert(uintptr_t key, const sluice__rec *rec,
                         sluice__rec *old);
/* Remove `key`; 1 with its record in `out`, 0 when not tracked. */
int sluice__table_take(uintptr_t key, sluice__rec *out);
/* Visit every record under its shard's lock; `fn` may change `rec->scope`. */
void sluice__table_foreach(void (*fn)(uintptr_t key, sluice__rec *rec,
                                      void *arg),
                           void *arg);
uint64_t sluice__table_count(void);
void sluice__table_lock_all(void);
void sluice__table_unlock_all(void);

/* ------------------------------------------------------------------------ */
/* Stacks. Id 0 = none; id 1 = "[stack table full]". */
#define SLUICE__STACK_FULL 1u

/* Per stack: Poisson samples (to unbias) and blocks captured at weight 1
 * (x_: exact, never unbiased). */
typedef struct sluice__stack_counts {
  uint64_t alloc_n, alloc_b, free_n, free_b;
  uint64_t x_alloc_n, x_alloc_b, x_free_n, x_free_b;
} sluice__stack_counts;

int sluice__stacks_init(size_t cap);
/* Room for a raw capture: the profiler's own frames are dropped after. */
#define SLUICE__CAPTURE_MAX (SLUICE__MAX_DEPTH + 16)
/* unw_backtrace() into frames[SLUICE__CAPTURE_MAX]; returns the count. */
int sluice__backtrace(void **frames);
/* Intern a raw capture (leading frames of ours and of the unwinder are
 * dropped); returns the stack id. */
uint32_t sluice__stack_intern(void *const *frames, int n);
const uintptr_t *sluice__stack_frames(uint32_t id, uint32_t *n);
/* `s` may carry SLUICE__EXACT. */
void sluice__stack_alloc(uint32_t s, uint64_t size);
void sluice__stack_free(uint32_t s, uint64_t size);
void sluice__stack_counts_get(uint32_t id, sluice__stack_counts *out);
uint32_t sluice__stack_max_id(void); /* ids are 1 .. this */
uint64_t sluice__stack_dropped(void);
void sluice__stacks_lock_all(void);
void sluice__stacks_unlock_all(void);
/* Is this return address inside the profiler or the unwinder? */
int sluice__pc_is_internal(uintptr_t pc);
void sluice__self_range_init(void);

/* ------------------------------------------------------------------------ */
/* The nursery (prof_nursery.c): a small per-thread table of the blocks the
 * thread allocated inside its current scope without a stack. Most are freed
 * by the same thread before the scope ends: they never reach the block
 * table. An entry's key is the block's address (16-aligned) with a state
 * in its low bits: K_LIVE (0) in the nursery; K_TAKEN taken by another
 * thread (freed or realloc'ed there: that thread has the record); K_MOVING
 * being moved to the block table by the owner. Others scan the nurseries
 * only while some nursery other than theirs is active. */
#define SLUICE__NURS_SLOTS 64
#define SLUICE__NURS_REVOKING 2
#define SLUICE__K_TAKEN 1u
#define SLUICE__K_MOVING 2u

typedef struct sluice__nursery {
  sluice__claim hdr; /* owned by a live thread; every nursery */
  _Atomic uintptr_t key[SLUICE__NURS_SLOTS]; /* 0: empty */
  _Atomic uint64_t size[SLUICE__NURS_SLOTS];
  _Atomic uint32_t ref; /* owner reference (slot) of every entry */
  _Atomic uint32_t n;   /* entries (written by the owner) */
  /* 1: counted in the flags' nursery count (SLUICE__F_NURS1); 0: not;
   * SLUICE__NURS_REVOKING: the background thread is taking an idle
   * nursery's count back (sluice__nurs_revoke_idle). */
  _Atomic int active;
  /* The owner is inside a scope with this nursery (owner-written): while
   * set, the count is never taken back. */
  _Atomic int busy;
  /* Live entries pushed out by newer blocks in the current scope (owner
   * only): past SLUICE__NURS_SLOTS the scope keeps more blocks alive than
   * the nursery holds, and its new blocks go to the block table directly
   * (moving each one later would cost more than it saves). */
  uint32_t evicted;
} __attribute__((aligned(SLUICE__CACHELINE))) sluice__nursery;


static inline uint32_t sluice__nurs_idx(uintptr_t p) {
  return (uint32_t)((p >> 4) * 0x9E3779B97F4A7C15ull >> 58) &
         (SLUICE__NURS_SLOTS - 1);
}

/* Frees must look beyond their own nursery (and the block table): some
 * other thread's nursery is active (flags: the global flags word). */
static inline int sluice__nurs_others(const sluice__tls *t, unsigned flags) {
  unsigned a = flags / SLUICE__F_NURS1;
  if (SLUICE__LIKELY(a == 0)) return 0;
  return a > (unsigned)(t->nurs && atomic_load_explicit(&t->nurs->active,
                                                        memory_order_relaxed));
}

/* The owner frees (or reallocs) p: 1, with its record, when p was in its
 * nursery. No other thread frees p at the same time (that would be a
 * double free), so a plain store empties the entry. */
static inline int sluice__nurs_take_own(sluice__tls *t, uintptr_t p,
                                        sluice__rec *out) {
  sluice__nursery *ns = t->nurs;
  uint32_t i = sluice__nurs_idx(p);
  if (atomic_load_explicit(&ns->key[i], memory_order_relaxed) != p) return 0;
  out->size = atomic_load_explicit(&ns->size[i], memory_order_relaxed);
  out->stack = 0;
  out->scope = atomic_load_explicit(&ns->ref, memory_order_relaxed);
  atomic_store_explicit(&ns->key[i], 0, memory_order_relaxed);
  atomic_store_explicit(&ns->n,
                        atomic_load_explicit(&ns->n, memory_order_relaxed) - 1,
                        memory_order_relaxed);
  return 1;
}
/* Make room at slot i (an entry there: evicted to the block table); 0 when
 * it could not (out of memory). */
int sluice__nurs_settle(sluice__tls *t, sluice__nursery *ns, uint32_t i);
/* A block of n bytes just allocated at p inside t's scope (pend_ref),
 * without a stack: 1 when kept in the nursery (credited to the thread's
 * pending credits), 0 when the caller must record it in the block table.
 * Inline for the common case (an active nursery, a free slot). */
int sluice__nurs_put_slow(sluice__tls *t, uintptr_t p, uint64_t n);
static inline int sluice__nurs_put_in(sluice__tls *t, sluice__nursery *ns,
                                      uintptr_t p, uint64_t n) {
  uint32_t i = sluice__nurs_idx(p);
  if (SLUICE__UNLIKELY(
          atomic_load_explicit(&ns->active, memory_order_relaxed) != 1 ||
          atomic_load_explicit(&ns->key[i], memory_order_relaxed)))
    return sluice__nurs_put_slow(t, p, n);
  atomic_store_explicit(&ns->size[i], n, memory_order_relaxed);
  atomic_store_explicit(&ns->key[i], p, memory_order_release);
  atomic_store_explicit(&ns->n,
                        atomic_load_explicit(&ns->n, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  sluice__pend_add(t, (int64_t)n, 1);
  return 1;
}
static inline int sluice__nurs_put(sluice__tls *t, uintptr_t p, uint64_t n) {
  sluice__nursery *ns = t->nurs;
  if (SLUICE__UNLIKELY(!ns)) return sluice__nurs_put_slow(t, p, n);
  return sluice__nurs_put_in(t, ns, p, n);
}
/* Another thread's nursery may hold p: take it (1, with its record). */
int sluice__nurs_take_remote(sluice__tls *t, uintptr_t p,
                             struct sluice__rec *out);
/* Move every entry to the block table (the scope changes or the thread
 * exits). The nursery stays counted as active after while nurseries are
 * sticky (sluice__nurs_sticky), inactive otherwise. */
void sluice__nurs_flush(sluice__tls *t);
/* Nurseries stay counted as active across scopes (no read-modify-write of
 * the shared flags word per scope) while the background thread runs and
 * asymmetric fences work: that thread takes the count of an idle nursery
 * back (sluice__nurs_revoke_idle) every poll interval. */
extern int sluice__nurs_sticky SLUICE__HIDDEN;
/* The background thread runs (it polls every poll_ms). */
extern int sluice__bg_live SLUICE__HIDDEN;
/* sluice__bg_ensure() has nothing to do (prof_bg.c). */
extern _Atomic int sluice__bg_started SLUICE__HIDDEN;
void sluice__nurs_sticky_set(int on);
void sluice__nurs_revoke_idle(void);
/* The common case of sluice__nurs_flush() at the end of a scope, inline:
 * an empty sticky nursery only stops being busy. */
static inline void sluice__nurs_leave(sluice__tls *t) {
  sluice__nursery *ns = t->nurs;
  if (!ns) return;
  if (SLUICE__LIKELY(
          atomic_load_explicit(&ns->active, memory_order_relaxed) == 1 &&
          !atomic_load_explicit(&ns->n, memory_order_relaxed) && !ns->evicted &&
          __atomic_load_n(&sluice__nurs_sticky, __ATOMIC_RELAXED))) {
    /* After the entries left (release): see sluice__nurs_revoke_idle(). */
    atomic_store_explicit(&ns->busy, 0, memory_order_release);
    t->free_gate = t->state != SLUICE__T_LIVE;
    return;
  }
  sluice__nurs_flush(t);
}

/* t enters a scope whose pending credits are for slot reference `ref`: its
 * nursery's entries belong to it from now (the nursery is empty). */
static inline void sluice__nurs_enter(sluice__tls *t, uint32_t ref) {
  sluice__nursery *ns = t->nurs;
  if (!ns) return;
  atomic_store_explicit(&ns->ref, ref, memory_order_relaxed);
  /* Busy, then (at the first put) the activation: see
   * sluice__nurs_revoke_idle(). */
  atomic_store_explicit(&ns->busy, 1, memory_order_relaxed);
  sluice__fence_light();
}
/* The thread exits: give its nursery back (flushed before). */
void sluice__nurs_release(sluice__tls *t);
uint64_t sluice__nurs_count(void);
void sluice__nurs_lock_all(void);
void sluice__nurs_unlock_all(void);
void sluice__nurs_fork_child(sluice__tls *self);

/* Count a free; nonzero when it needs sluice__free_slow() (the block may
 * be tracked, or the thread is not registered yet). */
static inline int sluice__free_pre(const void *p, unsigned flags) {
  int slow = 0;
  if (flags & SLUICE__F_REC) {
    sluice__tls *t = &sluice__t;
    sluice__bump(&t->frees, 1);
    slow = t->state != SLUICE__T_LIVE;
  }
  if (flags & SLUICE__F_TRACK)
    slow |= sluice__maybe_tracked(p) | (sluice__t.nurs != NULL) |
            (flags >= SLUICE__F_NURS1);
  return slow;
}

/* Registers the thread if needed and untracks p if it is tracked. */
void sluice__free_slow(const void *p, unsigned flags);

static inline void sluice__on_free(const void *p, unsigned flags) {
  if (sluice__free_pre(p, flags)) sluice__free_slow(p, flags);
}

/* ------------------------------------------------------------------------ */
/* Scopes. */
int sluice__scopes_init(const sluice_prof_opts *o);
void sluice__scopes_configure(const sluice_prof_opts *o);
uint32_t sluice__scope_ref(uint64_t handle); /* for a new block, or 0 */
/* Credit (or debit, negative) an owner reference: a slot or a sink. */
void sluice__scope_credit(uint32_t ref, int64_t bytes, int64_t objects);
/* Credit from thread t: kept thread-local when ref is t's current slot. */
static inline void sluice__scope_credit_mine(sluice__tls *t, uint32_t ref,
                                             int64_t bytes, int64_t objects) {
  if (ref == t->pend_ref) {
    sluice__pend_add(t, bytes, objects);
    return;
  }
  sluice__scope_credit(ref, bytes, objects);
}
/* Growth layers (prof_ledger.c) referring to a slot or a sink. */
void sluice__scope_xref(uint32_t ref, int delta);
/* t's pending credits (and nursery entries) are for slot reference `ref`
 * of scope generation `gen` from now: the slot is pinned until t flushes
 * (it is not given back while t may still settle against it). 0, and no
 * pending slot, when that scope has ended meanwhile. */
int sluice__scope_pend_set(sluice__tls *t, uint32_t ref, uint32_t gen);
/* Add t's pending credits to its slot and unpin it; t has no current slot
 * after. */
void sluice__scope_flush_slow(sluice__tls *t);
static inline void sluice__scope_flush(sluice__tls *t) {
  if (t->pend_ref) sluice__scope_flush_slow(t);
}
/* In the child of fork(): t is another thread's, gone; drop its pin. */
void sluice__scope_unpin_dead(sluice__tls *t);

/* t->nurs_shut from what it stands for. */
static inline void sluice__nurs_gate(sluice__tls *t) {
  t->nurs_shut = !(t->pend_ref && t->nurs && !t->nurs_off && !t->capture &&
                   t->state == SLUICE__T_LIVE);
}
/* The same just after t took its pending slot (pend_ref set). */
static inline void sluice__nurs_gate_pinned(sluice__tls *t) {
  t->nurs_shut =
      !(t->nurs && !t->nurs_off && !t->capture && t->state == SLUICE__T_LIVE);
}

/* The thread's current scope becomes s: pending credits are flushed, and
 * the countdown is armed on the way in, restored on the way out. */
static inline void sluice__tls_set_scope(sluice__tls *t, uint64_t s) {
  if (t->scope == s) return;
  sluice__scope_flush(t);
  if (!t->scope && s) {
    t->saved_left = atomic_load_explicit(&t->sample_left, memory_order_relaxed);
    sluice__cd_set(t, SLUICE__ARMED);
  } else if (t->scope && !s) {
    sluice__cd_set(t, t->saved_left);
  }
  t->scope = s;
  t->capture = 0; /* sluice_prof_scope_enter() sets it for its scope */
  /* nurs_shut: set by the flush (no pending slot now). */
}
/* The record of p wherever it is: this thread's nursery, another thread's
 * (looked at before the table: see prof_nursery.c), the block table. 1 if
 * p was tracked. */
static inline int sluice__take(uintptr_t p, sluice__rec *out) {
  sluice__tls *t = &sluice__t;
  if (t->nurs && atomic_load_explicit(&t->nurs->n, memory_order_relaxed) &&
      sluice__nurs_take_own(t, p, out))
    return 1;
  if (SLUICE__UNLIKELY(sluice__nurs_others(t, sluice__flags_now())) &&
      sluice__nurs_take_remote(t, p, out))
    return 1;
  return sluice__table_take(p, out);
}
void sluice__scopes_lock_all(void);
void sluice__scopes_unlock_all(void);
void sluice__scopes_fork_child(void);
void sluice__scopes_stats(sluice_prof_memstats *ms);

/* Residual rows collected for a snapshot or a verdict. */
typedef struct sluice__resid_key {
  uint32_t stack; /* may carry SLUICE__EXACT */
  uint16_t queue;
  uint8_t outcome;
  uint8_t pad_;
  uint32_t kind;  /* (queue, key value) + 1; 0: none */
  uint32_t group; /* group index */
  uint64_t seq;   /* 0 when the message is not known any more */
} sluice__resid_key;
/* Visit every sampled block (and growth layer) left by an ended scope,
 * with its key. `group` -1 means all. Holds the scope lock during the
 * pass; `fn` must not call back into the profiler. */
void sluice__residual_collect(int64_t group,
                              void (*fn)(const sluice__resid_key *k,
                                         uint64_t size, void *arg),
                              void *arg);
const char *sluice__queue_name(unsigned idx);
const char *sluice__outcome_name(int outcome);
/* A copy of the key value of kind `k` (index + 1) and its key's name, or
 * NULL; under the scope lock. */
char *sluice__kind_key_dup(uint32_t k, char **key_name);

/* ------------------------------------------------------------------------ */
/* Symbols and mappings, resolved at report time. Every writer names its
 * frames through sluice__sym_frames() (or the stack helpers below that
 * call it), so an address is resolved once per view, lines included. */
typedef struct sluice__mapping {
  uint64_t start, limit, offset;
  const char *path;     /* owned by the symbol cache */
  const char *build_id; /* hex, or "" */
} sluice__mapping;

typedef struct sluice__symtab sluice__symtab; /* one report's view */
/* Open a view of the loaded modules (takes the symbol lock until close). */
sluice__symtab *sluice__sym_open(void);
void sluice__sym_close(sluice__symtab *st);
size_t sluice__sym_mappings(sluice__symtab *st, const sluice__mapping **out);
void sluice__sym_lock_all(void);
void sluice__sym_unlock_all(void);

/* One frame of source: a function and where in it. An address inside
 * inlined code has several, the innermost inlined call first. */
typedef struct sluice__frame {
  const char *func;    /* function name; never NULL from sluice__sym_frames */
  const char *file;    /* source file as the DWARF names it; NULL: unknown */
  uint32_t line;       /* 0: unknown */
  uint32_t start_line; /* where the function is declared; 0: unknown */
  int inlined;         /* an inlined call: no frame of its own */
} sluice__frame;

/* Inlined calls kept per address (innermost first; the outermost, the
 * function that holds the code, is always kept). */
#define SLUICE__MAX_INLINE 16
/* Frames of one stack once inlined calls are expanded (leaf side kept). */
#define SLUICE__MAX_FRAMES 128

/* The frames at `pc` (an address inside a call: return address minus 1),
 * innermost first, at most `max` (>= 1); the last is the function that
 * holds the code (its ELF symbol's name when it has one). Without debug
 * information: one frame, the symbol's name, no file. Resolved once per
 * view (cached until sluice__sym_close); strings borrowed until then.
 * `mapping` (may be NULL) gets the index of the mapping or -1. Returns the
 * count. */
int sluice__sym_frames(sluice__symtab *st, uintptr_t pc, sluice__frame *out,
                       int max, int *mapping);
/* Does mapping i have line information (DWARF read for it so far)? */
int sluice__sym_mapping_has_lines(sluice__symtab *st, size_t i);

/* prof_lines.c: DWARF of one module, opened on demand, at most
 * SLUICE__DWARF_OPEN at once holding about SLUICE__DWARF_BYTES of heap
 * (least recently used closed first; the one in use stays even when it
 * alone is bigger). Called with the symbol lock and the guard held. */
#define SLUICE__DWARF_OPEN 16
#define SLUICE__DWARF_BYTES (32u << 20)
typedef struct sluice__dwarf sluice__dwarf;
/* Frames of `pc` (absolute) in the module at `path` loaded at `base`;
 * strings valid until the next call. `*state`: 0 not tried, 1 has DWARF,
 * -1 none (then 0 is returned without looking again). `*slot` is the
 * module's session, NULL when closed (reopened on demand). */
int sluice__dwarf_frames(sluice__dwarf **slot, int *state, const char *path,
                         uintptr_t base, const char *build_id, uintptr_t pc,
                         sluice__frame *out, int max);
void sluice__dwarf_close(sluice__dwarf **slot);
/* 0 when SLUICE_PROF_LINES=0 asked for function names only, or the
 * library was built without libdw. */
int sluice__lines_enabled(void);

/* ------------------------------------------------------------------------ */
/* Snapshots. Values are raw sampled counts; writers unbias them. */
typedef struct sluice__snap_stack {
  uint32_t stack;
  int64_t alloc_n, alloc_b, inuse_n, inuse_b;         /* samples: unbiased */
  int64_t x_alloc_n, x_alloc_b, x_inuse_n, x_inuse_b; /* weight 1 */
} sluice__snap_stack;

typedef struct sluice__snap_resid {
  sluice__resid_key key;
  int64_t n, b;
} sluice__snap_resid;

struct sluice_prof_snapshot {
  uint64_t time_ns;     /* wall clock of the (later) snapshot */
  uint64_t duration_ns; /* a diff: time between the two */
  uint64_t rate;
  int is_diff;
  sluice__snap_stack *stacks;
  size_t n_stacks;
  sluice__snap_resid *resid;
  size_t n_resid;
  /* Key values and names of the kinds the rows name ([kind - 1]). */
  char **keys, **key_names;
  size_t n_keys;
  sluice_prof_memstats ms;
};

/* The key value and key name of a residual row, NULL when none. */
const char *sluice__snap_key(const sluice_prof_snapshot *s,
                             const sluice__resid_key *k, const char **key_name);
/* Unbiased values of a residual row (rows of weight-1 blocks as they are). */
void sluice__resid_unbias(const sluice_prof_snapshot *s,
                          const sluice__snap_resid *r, int64_t *n, int64_t *b);

/* Go's unbiasing of a bucket of `n` samples totalling `b` bytes. */
void sluice__unbias(int64_t n, int64_t b, uint64_t rate, int64_t *on,
                    int64_t *ob);

/* ------------------------------------------------------------------------ */
/* Output helpers. */
typedef struct sluice__out {
  sluice_prof_write_fn fn;
  void *user;
  int err;
} sluice__out;
int sluice__out_write(sluice__out *o, const void *d, size_t n);

/* Symbolized stacks shared by the writers. */
typedef struct sluice__sstack {
  uint32_t n;           /* frames */
  const char **names;   /* n names, leaf first (borrowed from symtab) */
  const uintptr_t *pcs; /* n return addresses, leaf first */
  int64_t v[4];         /* values: see the writer */
  const sluice__snap_resid *resid; /* residual row, or NULL */
} sluice__sstack;

int sluice__write_pprof(const sluice_prof_snapshot *s,
                        const sluice_prof_output *o, sluice__out *out);
int sluice__write_legacy(const sluice_prof_snapshot *s,
                         const sluice_prof_output *o, sluice__out *out);
int sluice__write_top(const sluice_prof_snapshot *s,
                      const sluice_prof_output *o, sluice__out *out);
int sluice__write_folded(const sluice_prof_snapshot *s,
                         const sluice_prof_output *o, sluice__out *out);
int sluice__write_residual(const sluice_prof_output *o, sluice__out *out);

/* The frames of stack `id` with inlined calls expanded, leaf first, at
 * most `max` (leaf side kept); strings borrowed until sluice__sym_close().
 * The overflow stack has one frame, "[stack table full]". */
uint32_t sluice__stack_sframes(sluice__symtab *st, uint32_t id,
                               sluice__frame *out, uint32_t max);
/* "func (file.c:12)" (the file's base name; "(file.c:12, inlined)" for an
 * inlined call), or "func" without a line. */
void sluice__put_frame(sluice__buf *b, const sluice__frame *f);
/* The first `max` frames of stack `id` with put_frame, joined by " <- ":
 * the sites of the residual report and of the leak verdict. */
void sluice__put_chain(sluice__buf *b, sluice__symtab *st, uint32_t id,
                       uint32_t max);
/* Does a residual row pass the output's queue/outcome filter? */
int sluice__resid_match(const sluice_prof_snapshot *s,
                        const sluice_prof_output *o,
                        const sluice__snap_resid *r);
/* Value `v` of a snapshot row, unbiased. */
int64_t sluice__stack_value(const sluice_prof_snapshot *s,
                            const sluice__snap_stack *st, int value);
int64_t sluice__resid_value(const sluice_prof_snapshot *s,
                            const sluice__snap_resid *r, int value);
int sluice__value_is_bytes(int value);
/* "1.50MB" like pprof. */
void sluice__fmt_value(char *buf, size_t n, int64_t v, int bytes);
/* Strip gcc clone suffixes (".constprop.0", ".isra.0", ".part.0", ...). */
void sluice__clean_name(char *name);

/* Top sites of a group's residual, from its sampled rows: rows of blocks
 * captured at weight 1 when there are any (adaptive stacks), else the
 * unbiased Poisson samples; stacks that read the same over `depth` frames
 * are one site; each site's share of the rows is applied to the group's
 * exact retained bytes and objects. */
typedef struct sluice__site_row {
  uint32_t stack; /* with SLUICE__EXACT when captured at weight 1 */
  int64_t n, b;
} sluice__site_row;
typedef struct sluice__site_rows {
  sluice__site_row *v;
  size_t len, cap;
  int oom;
} sluice__site_rows;
void sluice__site_add(sluice__site_rows *r, uint32_t stack, int64_t n,
                      int64_t b);
void sluice__site_rows_free(sluice__site_rows *r);
/* Fills out[0..cap) biggest first; chains[i] holds out[i].stack (free them
 * with sluice__buf_free); names are borrowed from `st`. */
size_t sluice__sites_top(sluice__site_rows *r, uint64_t rate,
                         sluice__symtab *st, int64_t retained_b,
                         int64_t retained_n, unsigned depth,
                         sluice_prof_site *out, sluice__buf *chains,
                         size_t cap);

#endif /* SLUICE_PROF_INTERNAL_H */
