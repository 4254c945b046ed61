/* SPDX-License-Identifier: MIT */
/* The nursery: the blocks a thread allocates inside its current scope, kept
 * in a small table of the thread's own until they are freed or the scope
 * changes.
 *
 * Why: inside a scope every block is recorded (the scope's counts are
 * exact), and almost all of them are freed by the same thread before the
 * handler returns. Recording them in the shared block table cost a shard
 * spinlock on malloc and a lookup, a spinlock and a deletion on free (about
 * 480 instructions per malloc/free pair). Here the owner writes and clears
 * an entry of a direct-mapped table with plain stores; its credits stay in
 * the thread's pending credits. What is still live when the thread leaves
 * the scope (the message's residual) moves to the block table then.
 *
 * Other threads: a block may be handed to another thread and freed (or
 * realloc'ed) there while it is still in its owner's nursery. While any
 * nursery other than its own is active (holds entries), a thread's free()
 * of a block it cannot place scans the nurseries (one load per nursery):
 *   key == p           CAS to p|K_TAKEN: the entry is this thread's now (it
 *                      debits the owner's reference); the owner clears it
 *                      when it next needs the slot or flushes;
 *   key == p|K_MOVING  the owner is moving p to the block table: wait until
 *                      it is done, then look in the table.
 * The owner moves an entry by CAS p -> p|K_MOVING (failing only when
 * another thread took it), inserts it in the block table, then clears the
 * key: a thread that saw K_MOVING finds it in the table afterwards, and one
 * that scanned after the clear does too. The owner's own free needs no
 * atomic operation: no other thread may free the same block at the same
 * time.
 *
 * Nurseries are allocated once per thread (bypassing the hooks), linked in
 * a list that is never shortened (a scan may run at any time), and reused by
 * new threads after their owner exits. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <string.h>

#include "prof_internal.h"

static sluice__claim_list nurseries;

static sluice__nursery *nurs_first(void) {
  return (sluice__nursery *)sluice__claim_first(&nurseries);
}
static sluice__nursery *nurs_next(const sluice__nursery *ns) {
  return (sluice__nursery *)ns->hdr.next;
}

static void set_n(sluice__nursery *ns, uint32_t n) {
  atomic_store_explicit(&ns->n, n, memory_order_relaxed);
}

/* The entry at i leaves the nursery: moved to the block table (live), or
 * cleared (taken by another thread). 0 when the table is out of memory
 * (the record is dropped and its credit given back, as the table does). */
static int evict(sluice__tls *t, sluice__nursery *ns, uint32_t i) {
  uintptr_t k = atomic_load_explicit(&ns->key[i], memory_order_acquire);
  int ok = 1;
  if (!k) return 1;
  if (!(k & SLUICE__K_TAKEN) &&
      atomic_compare_exchange_strong_explicit(
          &ns->key[i], &k, k | SLUICE__K_MOVING, memory_order_acq_rel,
          memory_order_acquire)) {
    sluice__rec r = {atomic_load_explicit(&ns->size[i], memory_order_relaxed),
                     0, atomic_load_explicit(&ns->ref, memory_order_relaxed)},
                old;
    t->guard++;
    int rc = sluice__table_insert(k, &r, &old);
    t->guard--;
    if (rc == 1) sluice__rec_release(&old);
    if (rc < 0) {
      sluice__rec_release(&r);
      ok = 0;
    }
  }
  /* Moved, or taken by another thread (which has the record). */
  atomic_store_explicit(&ns->key[i], 0, memory_order_release);
  set_n(ns, atomic_load_explicit(&ns->n, memory_order_relaxed) - 1);
  return ok;
}

int sluice__nurs_settle(sluice__tls *t, sluice__nursery *ns, uint32_t i) {
  return evict(t, ns, i);
}

int sluice__nurs_sticky;

void sluice__nurs_sticky_set(int on) {
  __atomic_store_n(&sluice__nurs_sticky, on && sluice__fences,
                   __ATOMIC_RELAXED);
}

/* The owner's view of `active` once the background thread is done with
 * it (it never waits for the owner: a membarrier and a few loads). */
static int active_settled(sluice__nursery *ns) {
  unsigned spins = 0;
  int a;
  while ((a = atomic_load_explicit(&ns->active, memory_order_acquire)) ==
         SLUICE__NURS_REVOKING) {
    if (++spins < 64) sluice__cpu_relax();
    else {
      spins = 0;
      sched_yield();
    }
  }
  return a;
}

static void activate(sluice__tls *t, sluice__nursery *ns) {
  atomic_store_explicit(&ns->ref, t->pend_ref, memory_order_relaxed);
  atomic_store_explicit(&ns->busy, 1, memory_order_relaxed);
  sluice__fence_light();               /* see sluice__nurs_revoke_idle() */
  if (active_settled(ns) == 1) return; /* still counted (sticky) */
  if (!(sluice__flags_now() & SLUICE__F_TRACK)) /* frees must look */
    atomic_fetch_or(&sluice__flags, SLUICE__F_TRACK);
  atomic_store_explicit(&ns->active, 1, memory_order_relaxed);
  t->free_gate = 1; /* this thread's frees look in its nursery */
  /* Before the first entry is published: a thread that gets one of its
   * blocks from this one sees the count. */
  atomic_fetch_add_explicit(&sluice__flags, SLUICE__F_NURS1,
                            memory_order_seq_cst);
}

/* The nursery (empty) stops counting as active. */
static void deactivate(sluice__tls *t, sluice__nursery *ns) {
  atomic_store_explicit(&ns->busy, 0, memory_order_release);
  for (;;) {
    int one = active_settled(ns);
    if (one != 1) return; /* taken back meanwhile */
    /* A compare-and-swap: a poll may mark it REVOKING after the load above
     * (and would take the count too). */
    if (atomic_compare_exchange_strong_explicit(
            &ns->active, &one, 0, memory_order_relaxed, memory_order_relaxed))
      break;
  }
  t->free_gate = t->state != SLUICE__T_LIVE;
  /* After the entries reached the table: a thread that sees the count
   * fall looks there. */
  atomic_fetch_sub_explicit(&sluice__flags, SLUICE__F_NURS1,
                            memory_order_seq_cst);
}

static inline void put_at(sluice__tls *t, sluice__nursery *ns, uint32_t i,
                          uintptr_t p, uint64_t n) {
  atomic_store_explicit(&ns->size[i], n, memory_order_relaxed);
  atomic_store_explicit(&ns->key[i], p, memory_order_release);
  set_n(ns, atomic_load_explicit(&ns->n, memory_order_relaxed) + 1);
  t->pend_b += (int64_t)n;
  t->pend_n += 1;
}

/* No nursery yet, or its slot for p is taken. */
SLUICE__NOINLINE static int put_slower(sluice__tls *t, uintptr_t p,
                                       uint64_t n) {
  sluice__nursery *ns = t->nurs;
  if (SLUICE__UNLIKELY(!ns)) {
    if (t->state != SLUICE__T_LIVE) return 0; /* exiting: no new nursery */
    t->guard++;
    ns = t->nurs = sluice__claim_get(&nurseries, sizeof *ns);
    t->guard--;
    if (!ns) return 0;
    sluice__nurs_gate(t);
  }
  if (SLUICE__UNLIKELY(
          atomic_load_explicit(&ns->active, memory_order_relaxed) != 1))
    activate(t, ns);
  uint32_t i = sluice__nurs_idx(p);
  uintptr_t k = atomic_load_explicit(&ns->key[i], memory_order_relaxed);
  if (k) {
    /* Live and pushed out: count it; a scope that keeps many blocks
     * alive stops using the nursery until it ends. */
    if (!(k & SLUICE__K_TAKEN) && ns->evicted++ >= SLUICE__NURS_SLOTS) {
      sluice__nurs_flush(t); /* all to the table; frees look there */
      t->nurs_off = 1;
      t->nurs_shut = 1;
      return 0;
    }
    if (!evict(t, ns, i)) return 0;
  }
  put_at(t, ns, i, p, n);
  return 1;
}

int sluice__nurs_put_slow(sluice__tls *t, uintptr_t p, uint64_t n) {
  sluice__nursery *ns = t->nurs;
  /* The first block of a scope: the nursery is activated, its slot free. */
  if (SLUICE__LIKELY(ns != NULL) &&
      atomic_load_explicit(&ns->active, memory_order_relaxed) != 1) {
    activate(t, ns);
    uint32_t i = sluice__nurs_idx(p);
    if (SLUICE__LIKELY(
            !atomic_load_explicit(&ns->key[i], memory_order_relaxed))) {
      put_at(t, ns, i, p, n);
      return 1;
    }
  }
  return put_slower(t, p, n);
}

int sluice__nurs_take_remote(sluice__tls *t, uintptr_t p, sluice__rec *out) {
  uint32_t i = sluice__nurs_idx(p);
  for (sluice__nursery *ns = nurs_first(); ns; ns = nurs_next(ns)) {
    if (ns == t->nurs) continue;
    unsigned spins = 0;
    for (;;) {
      uintptr_t k = atomic_load_explicit(&ns->key[i], memory_order_acquire);
      if (k == (p | SLUICE__K_MOVING)) { /* the owner is moving it */
        if (++spins < 64) sluice__cpu_relax();
        else {
          spins = 0;
          sched_yield();
        }
        continue;
      }
      if (k != p) break;
      uint64_t size = atomic_load_explicit(&ns->size[i], memory_order_relaxed);
      uint32_t ref = atomic_load_explicit(&ns->ref, memory_order_relaxed);
      if (atomic_compare_exchange_strong_explicit(
              &ns->key[i], &k, p | SLUICE__K_TAKEN, memory_order_acq_rel,
              memory_order_acquire)) {
        out->size = size;
        out->stack = 0;
        out->scope = ref;
        return 1;
      }
    }
  }
  return 0;
}

/* Every entry still there to the block table. */
SLUICE__NOINLINE static void evict_all(sluice__tls *t, sluice__nursery *ns) {
  for (uint32_t i = 0; i < SLUICE__NURS_SLOTS &&
                       atomic_load_explicit(&ns->n, memory_order_relaxed);
       i++)
    if (atomic_load_explicit(&ns->key[i], memory_order_relaxed))
      evict(t, ns, i);
}

void sluice__nurs_flush(sluice__tls *t) {
  sluice__nursery *ns = t->nurs;
  if (!ns || !atomic_load_explicit(&ns->active, memory_order_relaxed)) return;
  /* Usually empty: the handler freed what it allocated. */
  if (atomic_load_explicit(&ns->n, memory_order_relaxed)) evict_all(t, ns);
  /* Entries taken by others were counted in n until cleared above. */
  ns->evicted = 0;
  if (SLUICE__LIKELY(__atomic_load_n(&sluice__nurs_sticky, __ATOMIC_RELAXED))) {
    /* Still counted: the next scope's first block needs no activation.
     * After the entries reached the table (release): the background
     * thread that sees the nursery idle may take its count back. */
    atomic_store_explicit(&ns->busy, 0, memory_order_release);
    /* Empty: this thread's frees need not look in it (while it counts, a
     * block of its next scope is found through the count: free_nurs). */
    t->free_gate = t->state != SLUICE__T_LIVE;
    return;
  }
  deactivate(t, ns);
}

void sluice__nurs_release(sluice__tls *t) {
  sluice__nursery *ns = t->nurs;
  if (!ns) return;
  sluice__nurs_flush(t);
  deactivate(t, ns);
  t->nurs = NULL;
  t->nurs_shut = 1;
  sluice__unclaim(&ns->hdr);
}

/* The background thread, every poll interval: the nurseries counted as
 * active whose owner is outside any scope (busy 0, so empty) stop counting,
 * so that frees elsewhere take the short path again while their owners
 * idle. Against the owner's next activation, which reads `active` after
 * setting busy with only a compiler barrier (sluice__nurs_enter): `active`
 * becomes REVOKING, the membarrier runs, then busy is read. Either the owner
 * set busy before the membarrier (read here: the count stays), or it reads
 * REVOKING or 0 afterwards (its first put takes the slow path, which waits
 * until the count is settled and activates again if it was taken). Under
 * the list's lock: a fork sees no nursery REVOKING. Without sticky
 * nurseries (stopped), every idle one is taken back. */
void sluice__nurs_revoke_idle(void) {
  if (!sluice__fences) return;
  sluice__lock_acquire(&nurseries.lock);
  int any = 0;
  for (sluice__nursery *ns = nurs_first(); ns; ns = nurs_next(ns)) {
    int one = 1;
    if (atomic_load_explicit(&ns->busy, memory_order_relaxed) ||
        atomic_load_explicit(&ns->active, memory_order_relaxed) != 1)
      continue;
    any |= atomic_compare_exchange_strong_explicit(&ns->active, &one,
                                                   SLUICE__NURS_REVOKING,
                                                   memory_order_seq_cst,
                                                   memory_order_relaxed);
  }
  if (any) {
    sluice__fence_heavy();
    for (sluice__nursery *ns = nurs_first(); ns; ns = nurs_next(ns)) {
      if (atomic_load_explicit(&ns->active, memory_order_relaxed) !=
          SLUICE__NURS_REVOKING)
        continue;
      if (atomic_load_explicit(&ns->busy, memory_order_acquire) ||
          atomic_load_explicit(&ns->n, memory_order_relaxed)) {
        atomic_store_explicit(&ns->active, 1, memory_order_release);
        continue;
      }
      /* Inactive first, then the count (as the owner's deactivation):
       * the owner's free, which counts its own nursery out of the count
       * while it is active (sluice__nurs_others), never undercounts the
       * others in between. */
      atomic_store_explicit(&ns->active, 0, memory_order_release);
      atomic_fetch_sub_explicit(&sluice__flags, SLUICE__F_NURS1,
                                memory_order_seq_cst);
    }
  }
  sluice__lock_release(&nurseries.lock);
}

uint64_t sluice__nurs_count(void) {
  uint64_t c = 0;
  for (sluice__nursery *ns = nurs_first(); ns; ns = nurs_next(ns))
    c += atomic_load_explicit(&ns->n, memory_order_relaxed);
  return c;
}

void sluice__nurs_lock_all(void) {
  sluice__lock_acquire(&nurseries.lock);
}

void sluice__nurs_unlock_all(void) {
  sluice__lock_release(&nurseries.lock);
}

/* In the child of fork(), only `self` exists: the other threads' nurseries
 * are dropped with their pending credits (neither reached the scopes'
 * counters: as if those blocks had been allocated outside any scope). */
void sluice__nurs_fork_child(sluice__tls *self) {
  uint32_t active = 0;
  for (sluice__nursery *ns = nurs_first(); ns; ns = nurs_next(ns)) {
    if (ns == self->nurs) {
      if (!atomic_load_explicit(&ns->active, memory_order_relaxed)) continue;
      if (!atomic_load_explicit(&ns->busy, memory_order_relaxed) &&
          !atomic_load_explicit(&ns->n, memory_order_relaxed)) {
        /* Sticky and idle: no background thread here to take its count
         * back (the child starts one at its next scope). */
        atomic_store_explicit(&ns->active, 0, memory_order_relaxed);
        self->free_gate = self->state != SLUICE__T_LIVE;
        continue;
      }
      active++;
      continue;
    }
    for (uint32_t i = 0; i < SLUICE__NURS_SLOTS; i++)
      atomic_store_explicit(&ns->key[i], 0, memory_order_relaxed);
    set_n(ns, 0);
    atomic_store_explicit(&ns->active, 0, memory_order_relaxed);
    atomic_store_explicit(&ns->hdr.owned, 0, memory_order_relaxed);
  }
  sluice__nurs_sticky_set(0); /* no background thread here (yet) */
  unsigned f = atomic_load_explicit(&sluice__flags, memory_order_relaxed);
  atomic_store_explicit(&sluice__flags,
                        (f & (SLUICE__F_NURS1 - 1)) + active * SLUICE__F_NURS1,
                        memory_order_relaxed);
  sluice__lock_release(&nurseries.lock);
}
