/* SPDX-License-Identifier: MIT */
/* Global state of the profiler: start and stop, the environment, per-thread
 * state and its registry, the sampler, recording and untracking blocks,
 * MemStats, fork safety. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>

#include "prof_resid.h"

/* The countdown of a new thread is "run out" (see sample_left); it is not
 * registered (free_gate, frees). */
#define INITIAL_TLS                                                       \
  {                                                                       \
    .sample_left = SLUICE__COUNTDOWN(0), .cd_mark = SLUICE__COUNTDOWN(0), \
    .free_gate = 1, .nurs_shut = 1, .frees = SLUICE__FREES_UNREG          \
  }
__thread sluice__tls sluice__t
    __attribute__((tls_model("initial-exec"))) = INITIAL_TLS;
_Atomic unsigned sluice__flags;
_Atomic uint32_t sluice__epoch = 1;

#define DEFAULT_RATE 524288

static _Atomic uint64_t g_rate = DEFAULT_RATE;
static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static int inited;
static sluice_prof_opts g_opts;

/* Registry of threads that counted something, for MemStats. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static sluice__tls *reg_head;
static pthread_key_t reg_key;
static _Atomic uint64_t dead_mallocs, dead_frees, dead_bytes;

/* SLUICE_PROF_OUT, kept for the exit-time dump. */
static char out_path[PATH_MAX];


size_t sluice__rate(void) {
  return (size_t)atomic_load_explicit(&g_rate, memory_order_relaxed);
}

const sluice_prof_opts *sluice__opts(void) {
  return &g_opts;
}

/* The scopes' clock: the coarse monotonic clock (a few ns without a
 * hardware read; its resolution, a few ms, is the slack every deadline
 * adds so that no grace period is ever shortened by it). */
static uint64_t coarse_res_ns;

uint64_t sluice__now_ns(void) {
  if (g_opts.now_ns) return g_opts.now_ns(g_opts.clock_user);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Asymmetric fences (prof_internal.h). */

int sluice__fences;

static long membarrier_call(int cmd) {
  return syscall(__NR_membarrier, cmd, 0, 0);
}

void sluice__fence_init(void) {
  if (sluice__fences) return;
  const char *e = getenv("SLUICE_PROF_MEMBARRIER");
  if (e && !strcmp(e, "0")) return;
  long q = membarrier_call(MEMBARRIER_CMD_QUERY);
  if (q < 0 || !(q & MEMBARRIER_CMD_PRIVATE_EXPEDITED) ||
      membarrier_call(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED))
    return;
  /* Before any thread reads it set: the threads that read 0 took the
   * sequentially consistent operations, which the heavy side pairs with
   * too. */
  __atomic_store_n(&sluice__fences, 1, __ATOMIC_SEQ_CST);
}

void sluice__fence_heavy(void) {
  /* Registered: it fails only on kernels without it, which refused the
   * registration. A fork child inherits the registration. */
  (void)membarrier_call(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
}

uint64_t sluice__clock_slack_ns(void) {
  return g_opts.now_ns ? 0 : coarse_res_ns;
}

/* ------------------------------------------------------------------------ */
/* Thread registry. */

uint64_t sluice__alloc_bytes_of(const sluice__tls *t) {
  for (;;) {
    uint32_t q = atomic_load_explicit(&t->cd_seq, memory_order_acquire);
    uint64_t b = atomic_load_explicit(&t->alloc_bytes, memory_order_relaxed);
    int64_t mark = atomic_load_explicit(&t->cd_mark, memory_order_relaxed);
    int64_t left = atomic_load_explicit(&t->sample_left, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if (!(q & 1) && atomic_load_explicit(&t->cd_seq, memory_order_relaxed) == q)
      return b + (uint64_t)(mark - left);
    sluice__cpu_relax();
  }
}

/* t is not registered (any more): its counts join the dead threads'. Its
 * owner, or t is gone (the child of fork). */
static void fold_dead(sluice__tls *t) {
  atomic_fetch_add(&dead_mallocs, atomic_load(&t->mallocs));
  atomic_fetch_add(&dead_frees, sluice__frees_of(t));
  sluice__cd_set(t,
                 atomic_load_explicit(&t->sample_left, memory_order_relaxed));
  atomic_fetch_add(&dead_bytes, atomic_load(&t->alloc_bytes));
  atomic_store(&t->mallocs, 0);
  atomic_store(&t->frees, SLUICE__FREES_UNREG);
  atomic_store(&t->alloc_bytes, 0);
}

static void unlink_locked(sluice__tls *t) {
  if (t->prev) t->prev->next = t->next;
  else reg_head = t->next;
  if (t->next) t->next->prev = t->prev;
  t->next = t->prev = NULL;
}

static void tls_dtor(void *arg) {
  sluice__tls *t = arg;
  t->guard++;
  sluice__scope_flush(t);
  sluice__nurs_release(t);
  sluice__endq_release(t);
  t->guard--;
  pthread_mutex_lock(&reg_mu);
  if (t->state == SLUICE__T_LIVE) unlink_locked(t);
  fold_dead(t);
  t->state = SLUICE__T_DEAD;
  t->free_gate = 1;
  t->nurs_shut = 1;
  pthread_mutex_unlock(&reg_mu);
}

void sluice__tls_register(sluice__tls *t) {
  if (t->state == SLUICE__T_DEAD) {
    /* Allocations during thread teardown, after our key destructor. */
    fold_dead(t);
    return;
  }
  if (!inited) return;
  t->guard++;
  if (!t->rng) {
    t->rng = (uint64_t)(uintptr_t)t ^ sluice__now_ns() ^
             ((uint64_t)getpid() << 32);
    if (!t->rng) t->rng = 1;
  }
  pthread_mutex_lock(&reg_mu);
  if (t->state == SLUICE__T_NEW) {
    t->prev = NULL;
    t->next = reg_head;
    if (reg_head) reg_head->prev = t;
    reg_head = t;
    t->state = SLUICE__T_LIVE;
    /* Only this thread writes its counters. */
    atomic_store_explicit(&t->frees, sluice__frees_of(t), memory_order_relaxed);
    t->free_gate = t->nurs &&
                   atomic_load_explicit(&t->nurs->active, memory_order_relaxed);
    sluice__nurs_gate(t);
  }
  pthread_mutex_unlock(&reg_mu);
  pthread_setspecific(reg_key, t);
  t->guard--;
}

/* ------------------------------------------------------------------------ */
/* Sampling, like Go's MemProfileRate: the bytes between two samples are
 * exponentially distributed with mean `rate`, so an allocation of size s is
 * sampled with probability 1 - exp(-s/rate), whatever came before it. */

static uint64_t rng_next(sluice__tls *t) {
  uint64_t x = t->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  t->rng = x;
  return x * 0x2545F4914F6CDD1Dull;
}

static int64_t draw(sluice__tls *t, uint64_t rate) {
  if (rate <= 1) return 0;
  if (rate == (uint64_t)SLUICE_PROF_RATE_NONE) return INT64_MAX;
  double u = (double)(rng_next(t) >> 11) * 0x1.0p-53; /* [0, 1) */
  double v = -log1p(-u) * (double)rate;
  if (v > 0x1.0p62) return INT64_MAX;
  return (int64_t)v + 1;
}

/* ------------------------------------------------------------------------ */
/* Recording. */

void sluice__rec_release(const sluice__rec *r) {
  if (r->stack) sluice__stack_free(r->stack, r->size);
  if (r->scope & SLUICE__EXT) sluice__ledger_release(&sluice__t, r->scope);
  else if (r->scope)
    sluice__scope_credit_mine(&sluice__t, r->scope, -(int64_t)r->size, -1);
}

static void ensure_track_flag(void) {
  if (!(sluice__flags_now() & SLUICE__F_TRACK))
    atomic_fetch_or(&sluice__flags, SLUICE__F_TRACK);
}

/* The countdown in use (sample_left outside scopes, saved_left inside)
 * becomes `left` bytes, run in stretches of at most SLUICE__STRETCH. */
static void set_countdown(sluice__tls *t, int64_t left) {
  int64_t part = left > SLUICE__STRETCH ? SLUICE__STRETCH : left;
  t->cd_rest = left - part;
  if (t->scope) t->saved_left = SLUICE__COUNTDOWN(part);
  else sluice__cd_set(t, SLUICE__COUNTDOWN(part));
}

/* Run the countdown for n bytes inside a scope (outside, the fast path has
 * done it): 1 when it ran out. */
static int scoped_countdown(sluice__tls *t, size_t n) {
  t->saved_left -= (int64_t)n;
  return t->saved_left < 0;
}

/* Sampling decision for a block of n bytes, after the countdown said
 * `sampled` (it ran out); refreshes the countdown. */
static int decide(sluice__tls *t, size_t n, int sampled) {
  uint32_t epoch = atomic_load_explicit(&sluice__epoch, memory_order_relaxed);
  uint64_t rate = atomic_load_explicit(&g_rate, memory_order_relaxed);
  if (sampled && t->cd_rest > 0 && t->epoch == epoch) {
    /* The end of a stretch: the sample is due only if the rest is run out
     * too. The stored form is one less (SLUICE__COUNTDOWN). */
    int64_t now =
        t->scope ? t->saved_left
                 : atomic_load_explicit(&t->sample_left, memory_order_relaxed);
    int64_t left = now + 1 + t->cd_rest;
    if (left > 0) {
      set_countdown(t, left);
      return 0;
    }
    t->cd_rest = 0;
  }
  if (t->epoch != epoch) {
    /* First sample decision under this rate: draw a fresh countdown. */
    t->epoch = epoch;
    int64_t left = draw(t, rate) - (int64_t)n;
    set_countdown(t, left);
    sampled = left <= 0;
  }
  if (rate == (uint64_t)SLUICE_PROF_RATE_NONE) sampled = 0;
  if (sampled) set_countdown(t, draw(t, rate));
  return sampled;
}

int sluice__alloc_prepare(sluice__tls *t, size_t n) {
  if (t->state != SLUICE__T_LIVE) sluice__tls_register(t);
  /* The profiler's own allocation: it must not take the sample the
   * countdown would give to the next allocation of the program's. */
  if (t->guard) return -1;
  if (t->scope && t->capture) { /* adaptive stacks: every block, weight 1 */
    t->guard++;
    return 2;
  }
  int sampled = t->scope ? scoped_countdown(t, n)
                         : atomic_load_explicit(&t->sample_left,
                                                memory_order_relaxed) < 0;
  if (!sampled && !t->scope) return -1;
  t->guard++;
  return decide(t, n, sampled);
}

/* The stack id of a capture: weight 1 when captured by the adaptive mode
 * (a sample at rate 1 unbiases to itself anyway). */
static uint32_t capture_stack(int k, void *const *frames, int nframes,
                              size_t n) {
  uint32_t id = sluice__stack_intern(frames, nframes);
  if (k == 2) id |= SLUICE__EXACT;
  sluice__stack_alloc(id, n);
  return id;
}

void sluice__alloc_finish(sluice__tls *t, void *p, size_t n, int k,
                          void *const *frames, int nframes) {
  /* Plain locals, not the record's fields: testing two 32-bit fields that
   * were just stored as one 64-bit word stalls store forwarding. */
  uint32_t scope = 0, stack = 0;
  if (t->scope) {
    scope = sluice__scope_ref(t->scope);
    if (!scope) { /* the scope ended: stop looking it up */
      sluice__tls_set_scope(t, 0);
    } else if (t->pend_ref != scope) {
      sluice__scope_flush(t);
      if (!sluice__scope_pend_set(t, scope, (uint32_t)(t->scope >> 32))) {
        sluice__tls_set_scope(t, 0); /* ended meanwhile */
        scope = 0;
      }
    }
  }
  if (nframes >= 0) stack = capture_stack(k, frames, nframes, n);
  if (scope && !stack && !t->nurs_off && sluice__nurs_put(t, (uintptr_t)p, n)) {
    t->guard--;
    return;
  }
  if (stack | scope) {
    if (scope) sluice__scope_credit_mine(t, scope, (int64_t)n, 1);
    ensure_track_flag();
    sluice__rec r = {n, stack, scope}, old;
    int rc = sluice__table_insert((uintptr_t)p, &r, &old);
    if (rc == 1) sluice__rec_release(&old);
    if (rc < 0) sluice__rec_release(&r); /* out of memory: forget it */
  }
  t->guard--;
}

void sluice__alloc_slow(sluice__tls *t, void *p, size_t n) {
  int k = sluice__alloc_prepare(t, n);
  if (k < 0) return;
  void *frames[SLUICE__CAPTURE_MAX];
  int nf = k ? sluice__backtrace(frames) : -1;
  sluice__alloc_finish(t, p, n, k, frames, nf);
}

void sluice__free_slow(const void *p, unsigned flags) {
  sluice__tls *t = &sluice__t;
  if ((flags & SLUICE__F_REC) && t->state != SLUICE__T_LIVE)
    sluice__tls_register(t);
  if (flags & SLUICE__F_TRACK) sluice__untrack(p);
}

/* free() must leave errno alone: nothing here can set it (the one system
 * call, sched_yield() in a contended spinlock, never fails on Linux). */
void sluice__untrack(const void *p) {
  sluice__tls *t = &sluice__t;
  if (SLUICE__UNLIKELY(t->in_fork)) return; /* our locks are held */
  sluice__rec r;
  if (sluice__take((uintptr_t)p, &r)) sluice__rec_release(&r);
}


/* Heap-profile side of a realloc to n bytes: count it, and take a sample
 * (or a capture at weight 1) like an allocation. Returns the new stack id
 * or 0. */
static uint32_t realloc_sample(sluice__tls *t, size_t n) {
  if (t->state != SLUICE__T_LIVE) sluice__tls_register(t);
  sluice__bump(&t->frees, 1);
  sluice__bump(&t->mallocs, 1);
  /* The bytes: counted by the countdown's subtraction outside a scope,
   * here otherwise. */
  if (t->guard != 1 || t->scope) sluice__bump(&t->alloc_bytes, n);
  if (t->guard != 1) return 0;
  int k;
  if (t->scope && t->capture) {
    k = 2;
  } else {
    int sampled = t->scope ? scoped_countdown(t, n)
                           : sluice__cd_sub(t, n) < 0; /* see COUNTDOWN */
    k = decide(t, n, sampled);
  }
  if (!k) return 0;
  void *frames[SLUICE__CAPTURE_MAX];
  return capture_stack(k, frames, sluice__backtrace(frames), n);
}

void *sluice__realloc_done(void *p, void *q, size_t n, const sluice__rec *old,
                           size_t usable) {
  sluice__tls *t = &sluice__t;
  unsigned flags = sluice__flags_now();
  if (!q) {
    if (n == 0) { /* glibc freed p */
      if (flags & SLUICE__F_REC) sluice__on_free(p, SLUICE__F_REC);
      if (old) sluice__rec_release(old);
    } else if (old) { /* failed: p is unchanged */
      sluice__rec dup;
      int rc = sluice__table_insert((uintptr_t)p, old, &dup);
      if (rc == 1) sluice__rec_release(&dup);
      if (rc < 0) sluice__rec_release(old);
    }
    return q;
  }
  uint32_t cur = 0;
  if (t->scope && (flags & SLUICE__F_REC)) cur = sluice__scope_ref(t->scope);
  if (!old && !(cur && n > usable)) {
    /* Not tracked, and no growth to charge: a free and a new allocation
     * (sampled like any other; inside a scope it is a new block of the
     * scope's only if the block was never seen: see below). */
    if (flags & SLUICE__F_REC) {
      sluice__on_free(p, SLUICE__F_REC);
      if (!cur) sluice__on_alloc(q, n);
      else {
        /* Shrunk or same size in a scope: nobody's growth; sample it for
         * the heap profile only. */
        t->guard++;
        uint32_t st = realloc_sample(t, n);
        if (st) {
          sluice__rec r = {n, st, 0}, dup;
          ensure_track_flag();
          int rc = sluice__table_insert((uintptr_t)q, &r, &dup);
          if (rc == 1) sluice__rec_release(&dup);
          if (rc < 0) sluice__rec_release(&r);
        }
        t->guard--;
      }
    }
    return q;
  }
  /* Tracked, or grown inside a scope: the bytes added are the growing
   * scope's (prof_ledger.c); the stack sample is redrawn. */
  t->guard++;
  sluice__rec base = {0, 0, 0};
  uint64_t old_size = usable;
  if (old) {
    base = *old;
    old_size = old->size;
    if (old->stack) sluice__stack_free(old->stack, old->size);
  }
  sluice__rec r = {n, 0, 0};
  if (flags & SLUICE__F_REC) r.stack = realloc_sample(t, n);
  /* Growth layers keep a stack only when it is exact: captured at weight
   * 1, or at rate 1 (a Poisson sample of the whole block says nothing
   * unbiased about the bytes added). */
  uint32_t layer_stack =
      (r.stack & SLUICE__EXACT) || sluice__rate() <= 1 ? r.stack : 0;
  sluice__ledger_realloc(t, &base, old_size, n, cur, layer_stack, &r);
  if (r.stack || r.scope) {
    ensure_track_flag();
    sluice__rec dup;
    int rc = sluice__table_insert((uintptr_t)q, &r, &dup);
    if (rc == 1) sluice__rec_release(&dup);
    if (rc < 0) sluice__rec_release(&r);
  }
  t->guard--;
  return q;
}

/* ------------------------------------------------------------------------ */
/* Fork: hold every lock across fork() so that the child never inherits one
 * held by a thread that does not exist there. Between prepare and
 * parent/child, this thread's frees skip the table (a stale record is
 * replaced when its address comes back). */

static void fork_prepare(void) {
  sluice__t.guard++;
  sluice__t.in_fork = 1;
  pthread_mutex_lock(&reg_mu);
  sluice__sym_lock_all();
  sluice__scopes_lock_all();
  sluice__stacks_lock_all();
  sluice__table_lock_all();
  sluice__nurs_lock_all();
}

static void fork_parent(void) {
  sluice__nurs_unlock_all();
  sluice__table_unlock_all();
  sluice__stacks_unlock_all();
  sluice__scopes_unlock_all();
  sluice__sym_unlock_all();
  pthread_mutex_unlock(&reg_mu);
  sluice__t.in_fork = 0;
  sluice__t.guard--;
}

static void fork_child(void) {
  sluice__nurs_fork_child(&sluice__t);
  sluice__table_unlock_all();
  sluice__stacks_unlock_all();
  sluice__scopes_fork_child();
  sluice__sym_unlock_all();
  /* Only this thread survives: fold the others' counters. */
  sluice__tls *self = &sluice__t;
  for (sluice__tls *t = reg_head, *next; t; t = next) {
    next = t->next;
    if (t == self) continue;
    sluice__scope_unpin_dead(t); /* its pending credits were dropped */
    fold_dead(t);
    unlink_locked(t);
  }
  pthread_mutex_unlock(&reg_mu);
  sluice__t.in_fork = 0;
  sluice__t.guard--;
}

/* ------------------------------------------------------------------------ */
/* Start and stop. */

static int init_locked(const sluice_prof_opts *o) {
  if (inited) return 0;
  int rc;
  struct timespec res;
  if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0)
    coarse_res_ns = (uint64_t)res.tv_sec * 1000000000ull +
                    (uint64_t)res.tv_nsec;
  sluice__self_range_init();
  sluice__fence_init();
  if ((rc = sluice__table_init())) return rc;
  if ((rc = sluice__stacks_init(o->max_stacks))) return rc;
  if ((rc = sluice__scopes_init(o))) return rc;
  if (pthread_key_create(&reg_key, tls_dtor)) return SLUICE_ENOMEM;
  pthread_atfork(fork_prepare, fork_parent, fork_child);
  inited = 1;
  return 0;
}

int sluice__inited(void) {
  return inited;
}

int sluice_prof_start(const sluice_prof_opts *opts) {
  sluice_prof_opts o;
  if (opts) o = *opts;
  else memset(&o, 0, sizeof o);
  if (!o.sample_rate) o.sample_rate = DEFAULT_RATE;
  if (!o.max_stacks) o.max_stacks = 65536;
  if (!o.max_scopes) o.max_scopes = 65536;
  if (!o.max_pending) o.max_pending = o.max_scopes / 2 ? o.max_scopes / 2 : 1;
  if (!o.max_queues) o.max_queues = 64;
  if (!o.max_groups) o.max_groups = 1024;
  if (!o.max_keys) o.max_keys = 32;
  if (!o.grace_ms) o.grace_ms = 1000;
  if (!o.leak_threshold) o.leak_threshold = 1;
  if (!o.leak_window) o.leak_window = 100;
  if (!o.horizon_messages) o.horizon_messages = 50000;
  if (!o.horizon_ms) o.horizon_ms = 120000;
  if (!o.adaptive_messages) o.adaptive_messages = 1000;
  if (o.max_scopes > (1u << 24) || o.max_queues > 4096 ||
      o.max_pending > (1u << 24) || o.max_groups < 16 ||
      o.max_groups > (1u << 20) || o.max_keys > 4096 || o.horizon_ms < 0)
    return SLUICE_EINVAL;

  sluice__t.guard++;
  pthread_mutex_lock(&start_mu);
  int rc = init_locked(&o);
  if (rc == 0) {
    g_opts = o;
    sluice__scopes_configure(&g_opts);
    atomic_store(&g_rate, (uint64_t)o.sample_rate);
    atomic_fetch_add(&sluice__epoch, 1);
    /* This thread leaves its countdown at its next allocation; the others
     * at the end of their current stretch (only its owner writes a
     * countdown). */
    set_countdown(&sluice__t, 0);
    /* TRACK with REC: the word is SLUICE__F_FAST from the start. */
    atomic_fetch_or(&sluice__flags, SLUICE__F_REC | SLUICE__F_TRACK);
  }
  pthread_mutex_unlock(&start_mu);
  sluice__t.guard--;
  return rc;
}

void sluice_prof_stop(void) {
  atomic_fetch_and(&sluice__flags, ~SLUICE__F_REC);
  sluice__bg_stop();
}

int sluice_prof_running(void) {
  return (sluice__flags_now() & SLUICE__F_REC) != 0;
}

int sluice_prof_interposing(void) {
  return SLUICE_PROF_INTERPOSE;
}

size_t sluice_prof_sample_rate(void) {
  return sluice__rate();
}

void sluice_prof_note_alloc(const void *p, size_t size) {
  if (!p || !(sluice__flags_now() & SLUICE__F_REC)) return;
  sluice__on_alloc((void *)(uintptr_t)p, size);
}

void sluice_prof_note_free(const void *p) {
  unsigned f = sluice__flags_now();
  if (!p || !f) return;
  sluice__on_free(p, f);
}

/* ------------------------------------------------------------------------ */
/* MemStats. */

static uint64_t read_rss(void) {
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  unsigned long long size = 0, res = 0;
  char *e;
  size = strtoull(buf, &e, 10);
  res = strtoull(e, NULL, 10);
  (void)size;
  return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* glibc sets up its malloc state in the first call of any of its malloc
 * functions, and that setup is not thread-safe: a second thread may see the
 * state marked ready before the main arena is. In a process where glibc's
 * malloc is otherwise never called (ASan and TSan own malloc), two threads
 * reading the memstats at once (a debug endpoint and a stats thread) crashed
 * in mallinfo2(). The first call is made once, alone. */
static pthread_once_t mallinfo_once = PTHREAD_ONCE_INIT;
static void mallinfo_first(void) {
  (void)mallinfo2();
}

/* The sanitizers' own count (quarantine excluded): under ASan and TSan
 * malloc is theirs and mallinfo2() sees nothing. Weak: NULL unless a
 * sanitizer runtime is loaded. */
extern size_t __sanitizer_get_current_allocated_bytes(void)
    __attribute__((weak));

/* Heap bytes in use, from whichever allocator serves malloc: a sanitizer's,
 * glibc's (mallinfo2), or one that replaced glibc's and answers only
 * mallinfo() (valgrind; its int fields are exact below 2 GiB). The same
 * order as libsluice's sluice_memory_read(), so the guard and the MemStats
 * agree. */
static uint64_t heap_live(void) {
  if (__sanitizer_get_current_allocated_bytes)
    return __sanitizer_get_current_allocated_bytes();
  pthread_once(&mallinfo_once, mallinfo_first);
  struct mallinfo2 m2 = mallinfo2();
  uint64_t live = (uint64_t)m2.uordblks + (uint64_t)m2.hblkhd;
  if (live) return live;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  struct mallinfo m = mallinfo();
#pragma GCC diagnostic pop
  return (uint64_t)(unsigned)m.uordblks + (uint64_t)(unsigned)m.hblkhd;
}

int sluice_prof_heap_read(void *user, uint64_t *bytes) {
  (void)user;
  if (!bytes) return SLUICE_EINVAL;
  if (!sluice_prof_running()) return SLUICE_ESTATE;
  sluice__t.guard++;
  *bytes = heap_live();
  sluice__t.guard--;
  return 0;
}

void sluice_prof_memstats_read(sluice_prof_memstats *ms) {
  memset(ms, 0, sizeof *ms);
  sluice__t.guard++;
  ms->mallocs = atomic_load(&dead_mallocs);
  ms->frees = atomic_load(&dead_frees);
  ms->total_alloc_bytes = atomic_load(&dead_bytes);
  pthread_mutex_lock(&reg_mu);
  for (sluice__tls *t = reg_head; t; t = t->next) {
    ms->mallocs += atomic_load_explicit(&t->mallocs, memory_order_relaxed);
    ms->frees += sluice__frees_of(t);
    ms->total_alloc_bytes += sluice__alloc_bytes_of(t);
  }
  pthread_mutex_unlock(&reg_mu);
  ms->live_objects = ms->mallocs > ms->frees ? ms->mallocs - ms->frees : 0;
  pthread_once(&mallinfo_once, mallinfo_first);
  struct mallinfo2 mi = mallinfo2();
  ms->heap_live_bytes = heap_live();
  ms->heap_mapped_bytes = mi.arena + mi.hblkhd;
  ms->rss_bytes = read_rss();
  ms->sample_rate = sluice__rate();
  if (inited) {
    uint32_t max = sluice__stack_max_id();
    int64_t live = 0;
    for (uint32_t id = SLUICE__STACK_FULL; id <= max; id++) {
      sluice__stack_counts c;
      sluice__stack_counts_get(id, &c);
      int64_t n, b;
      sluice__unbias((int64_t)(c.alloc_n - c.free_n),
                     (int64_t)(c.alloc_b - c.free_b), ms->sample_rate, &n, &b);
      live += b + (int64_t)(c.x_alloc_b - c.x_free_b);
    }
    ms->sampled_live_bytes = live > 0 ? (uint64_t)live : 0;
    ms->tracked_blocks = sluice__table_count() + sluice__nurs_count();
    ms->stacks = max > SLUICE__STACK_FULL ? max - SLUICE__STACK_FULL : 0;
    ms->stacks_dropped = sluice__stack_dropped();
    sluice__scopes_stats(ms);
  }
  ms->overhead_bytes = atomic_load(&sluice__overhead);
  sluice__t.guard--;
}

void sluice__unbias(int64_t n, int64_t b, uint64_t rate, int64_t *on,
                    int64_t *ob) {
  if (n == 0 || b == 0 || rate <= 1 ||
      rate == (uint64_t)SLUICE_PROF_RATE_NONE) {
    *on = n;
    *ob = b;
    return;
  }
  double avg = (double)b / (double)n;
  if (avg <= 0) { /* a difference with mixed signs: leave it */
    *on = n;
    *ob = b;
    return;
  }
  double scale = 1.0 / (1.0 - exp(-avg / (double)rate));
  *on = (int64_t)((double)n * scale);
  *ob = (int64_t)((double)b * scale);
}

/* ------------------------------------------------------------------------ */
/* The environment: SLUICE_PROF=1 starts at load time, SLUICE_PROF_RATE sets
 * the rate (0: no stacks), SLUICE_PROF_OUT names the profile written at
 * exit. */

__attribute__((constructor)) static void prof_env_start(void) {
  const char *on = getenv("SLUICE_PROF");
  if (!on || !*on || !strcmp(on, "0")) return;
  sluice_prof_opts o;
  memset(&o, 0, sizeof o);
  const char *r = getenv("SLUICE_PROF_RATE");
  if (r && *r) {
    char *end;
    unsigned long long v = strtoull(r, &end, 10);
    o.sample_rate = v == 0 ? SLUICE_PROF_RATE_NONE : (size_t)v;
  }
  const char *out = getenv("SLUICE_PROF_OUT");
  if (out && *out && strlen(out) < sizeof out_path) strcpy(out_path, out);
  sluice_prof_start(&o);
}

__attribute__((destructor)) static void prof_env_dump(void) {
  if (!out_path[0] || !inited) return;
  sluice_prof_stop();
  int e = errno;
  sluice_prof_write_file(NULL, NULL, out_path);
  errno = e;
}
