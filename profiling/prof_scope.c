/* SPDX-License-Identifier: MIT */
/* Scopes and residual memory.
 *
 * A scope is a slot in a pool that grows in chunks up to max_scopes. While
 * a thread is inside a scope, every block it allocates is recorded with the
 * slot's reference and credited to the slot's counters; freeing the block,
 * on any thread, at any time, debits them. So a scope's live bytes and
 * objects are exact whatever the sampling rate.
 *
 * Life of a slot:
 *   FREE -> OPEN (begin) -> end: nothing live -> FREE
 *                               something live -> CLOSED, waiting for its
 *                               after-grace re-check, or RETIRED at once
 *                               when the pending queue is full (skipped:
 *                               the grace period is never shortened)
 *   CLOSED -> re-check after the grace period: nothing live -> FREE
 *             (cached); still live -> RETIRED (leaked, for the callback)
 *   RETIRED -> FREE once nothing refers to it: its blocks freed by the
 *             program, or moved by a sweep to its group's sink, which
 *             keeps counting them. Sweeps run when the pool is full, so the
 *             pool stays bounded whatever leaks.
 * A slot is freed only when no record and no growth layer refers to it, so
 * no record can point to a reused slot. The generation in the handle
 * changes at begin and at end, so a stale handle never credits a new scope.
 *
 * When a scope ends, its group is known (queue, outcome, key value): the
 * slot's live counters join the group's (prof_resid.h), the group counts
 * the message and samples its growth curve (prof_group.c). Callbacks run
 * after the lock is released. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prof_resid.h"

_Static_assert(sizeof(void *) >= sizeof(sluice_prof_scope),
               "scope handles travel in the hooks' void * token");

resid_state sluice__R;

static const char *const outcome_names[] = SLUICE_OUTCOME_NAMES;
_Static_assert(sizeof(outcome_names) / sizeof(*outcome_names) == N_OUT,
               "one name per outcome");

const char *sluice__outcome_name(int o) {
  return o >= 0 && o < N_OUT ? outcome_names[o] : "?";
}

int sluice__scopes_init(const sluice_prof_opts *o) {
  if (R.chunks) return 0;
  uint32_t max = (uint32_t)o->max_scopes;
  uint32_t n_chunks = (max + SLOT_CHUNK - 1) / SLOT_CHUNK;
  uint32_t ring_max = (uint32_t)o->max_pending;
  uint32_t ring_cap = ring_max < 1024 ? ring_max : 1024;
  slot *_Atomic *chunks = sluice__calloc(n_chunks, sizeof(*chunks));
  uint32_t *ring = sluice__calloc(ring_cap ? ring_cap : 1, sizeof(uint32_t));
  if (!chunks || !ring) goto oom;
  sluice__lock_acquire(&R.mu);
  int rc = sluice__groups_init(o);
  if (rc == 0) {
    R.max_slots = max;
    R.ring = ring;
    R.ring_cap = ring_cap;
    R.ring_max = ring_max;
    R.chunks = chunks;
  }
  sluice__lock_release(&R.mu);
  if (rc) goto oom;
  atomic_fetch_add(&sluice__overhead,
                   n_chunks * sizeof(*chunks) + ring_cap * sizeof(uint32_t));
  return 0;
oom:
  sluice__free((void *)chunks);
  sluice__free(ring);
  return SLUICE_ENOMEM;
}

void sluice__scopes_configure(const sluice_prof_opts *o) {
  sluice__lock_acquire(&R.mu);
  R.grace_ns = o->grace_ms < 0 ? -1 : (int64_t)o->grace_ms * 1000000;
  R.threshold = (double)o->leak_threshold;
  R.window = o->leak_window;
  R.horizon_msgs = o->horizon_messages;
  R.horizon_ns = (uint64_t)o->horizon_ms * 1000000u;
  R.adaptive = o->adaptive_messages < 0 ? 0 : (uint64_t)o->adaptive_messages;
  R.max_keys = (uint32_t)o->max_keys;
  R.on_residual = o->on_residual;
  R.residual_user = o->residual_user;
  R.on_leak = o->on_leak;
  R.leak_user = o->leak_user;
  R.slack_ns = sluice__clock_slack_ns();
  atomic_store(&R.fast_end, !o->on_residual && !o->on_leak);
  sluice__lock_release(&R.mu);
  sluice__bg_configure(o->poll_ms);
}

void sluice__scopes_lock_all(void) {
  sluice__lock_acquire(&R.mu);
  sluice__ledger_lock_all();
}

void sluice__scopes_unlock_all(void) {
  sluice__ledger_unlock_all();
  sluice__lock_release(&R.mu);
}

static void endq_fork_child(void);
static int ends_pending(void);

void sluice__scopes_fork_child(void) {
  endq_fork_child();
  sluice__scopes_unlock_all();
  sluice__bg_fork_child();
}

/* ------------------------------------------------------------------------ */
/* Hot path: credit and debit (any thread, no lock). */

uint32_t sluice__scope_ref(uint64_t handle) {
  uint32_t idx = (uint32_t)handle;
  if (!R.chunks || idx >= R.max_slots) return 0;
  slot *c =
      atomic_load_explicit(&R.chunks[idx >> SLOT_SHIFT], memory_order_acquire);
  if (!c) return 0;
  if (atomic_load_explicit(&c[idx & (SLOT_CHUNK - 1)].gen,
                           memory_order_acquire) != (uint32_t)(handle >> 32))
    return 0;
  return idx + 1;
}

/* A slot's counter moves by d; once the slot has ended, its group's
 * counter moves with it (the ENDED bit is in the same atomic word, so each
 * change is counted on exactly one side of the end). */
static inline void slot_add(slot *s, int bytes, int64_t d) {
  _Atomic int64_t *c = bytes ? &s->live_b : &s->live_n;
  int64_t old = atomic_load_explicit(c, memory_order_acquire);
  /* Not ended: add unless the end comes first. Ended: the group is read
   * before the change, while what it changes (this object, or the pin of
   * the thread crediting) still holds the slot: once the change is made
   * the slot may be given back, reused and its group field rewritten. */
  while (!(old & LIVE_ENDED))
    if (atomic_compare_exchange_weak_explicit(
            c, &old, old + d, memory_order_acq_rel, memory_order_acquire))
      return;
  grp *g = group_at(s->group);
  atomic_fetch_add_explicit(c, d, memory_order_acq_rel);
  atomic_fetch_add_explicit(bytes ? &g->ret_b : &g->ret_n, d,
                            memory_order_relaxed);
}

void sluice__scope_credit(uint32_t ref, int64_t bytes, int64_t objects) {
  if (ref & SLUICE__SINK) {
    sink *k = sink_at(ref);
    if (bytes) atomic_fetch_add_explicit(&k->b, bytes, memory_order_relaxed);
    if (objects)
      atomic_fetch_add_explicit(&k->n, objects, memory_order_relaxed);
    return;
  }
  slot *s = slot_at(ref - 1);
  if (bytes) slot_add(s, 1, bytes);
  if (objects) slot_add(s, 0, objects);
}

void sluice__scope_xref(uint32_t ref, int delta) {
  _Atomic int32_t *x = (ref & SLUICE__SINK) ? &sink_at(ref)->xrefs
                                            : &slot_at(ref - 1)->xrefs;
  atomic_fetch_add_explicit(x, delta, memory_order_relaxed);
}

/* A thread's pending credits and nursery entries refer to its slot until
 * the thread leaves the scope, which may be after another thread ended it
 * (a deferred delivery completed while a worker is still inside). So the
 * thread pins the slot (a reference in xrefs) while it holds them: an
 * ended slot is not given back, nor reused, while pinned, and what the
 * thread settles late reaches the ended scope's slot and, through its
 * ENDED bit, its group. Pin, then check the generation (seq_cst both); an
 * end bumps the generation, then reads xrefs (seq_cst both): either the
 * end sees the pin, or the pinning thread sees the end and does not take
 * the slot. */
static inline void pend_pinned(sluice__tls *t, slot *s, uint32_t ref,
                               uint8_t own) {
  t->pend_ref = ref;
  t->pend_gen = &s->gen;
  t->pend_pin = &s->xrefs;
  t->pend_own = own;
  sluice__nurs_enter(t, ref);
  sluice__nurs_gate_pinned(t);
}

static inline int pend_set(sluice__tls *t, slot *s, uint32_t ref,
                           uint32_t gen) {
  atomic_fetch_add_explicit(&s->xrefs, 1, memory_order_seq_cst);
  if (SLUICE__UNLIKELY(atomic_load_explicit(&s->gen, memory_order_seq_cst) !=
                       gen)) {
    atomic_fetch_sub_explicit(&s->xrefs, 1, memory_order_release);
    return 0;
  }
  pend_pinned(t, s, ref, 0);
  return 1;
}

int sluice__scope_pend_set(sluice__tls *t, uint32_t ref, uint32_t gen) {
  return pend_set(t, slot_at(ref - 1), ref, gen);
}

/* t's pending credits and nursery entries to their slot; t has no pending
 * slot after, but still pins it: the pin is returned. */
static inline _Atomic int32_t *flush_keep_pin(sluice__tls *t) {
  uint32_t ref = t->pend_ref;
  sluice__nurs_leave(t); /* its credits are pending ones */
  t->nurs_off = 0;
  if (t->pend_b || t->pend_n) sluice__scope_credit(ref, t->pend_b, t->pend_n);
  t->pend_ref = 0;
  t->nurs_shut = 1;
  t->pend_b = t->pend_n = 0;
  return t->pend_pin;
}

static inline slot *slot_of_pin(_Atomic int32_t *pin) {
  return (slot *)(void *)((char *)pin - offsetof(slot, xrefs));
}

static inline void unpin(_Atomic int32_t *pin, uint8_t own) {
  /* After the credits: whoever reads xrefs == 0 (or owned == 0, acquire)
   * sees them. */
  if (own)
    atomic_store_explicit(&slot_of_pin(pin)->owned, 0, memory_order_release);
  else atomic_fetch_sub_explicit(pin, 1, memory_order_release);
}

void sluice__scope_flush_slow(sluice__tls *t) {
  uint8_t own = t->pend_own;
  unpin(flush_keep_pin(t), own);
}

void sluice__scope_unpin_dead(sluice__tls *t) {
  if (!t->pend_ref) return;
  unpin(t->pend_pin, t->pend_own);
  t->pend_ref = 0;
  t->nurs_shut = 1;
  t->pend_b = t->pend_n = 0;
}

/* ------------------------------------------------------------------------ */
/* Notes: callbacks collected under the lock. */

void sluice__notes_init(notes *ns) {
  ns->len = 0;
  ns->arena_len = 0;
  ns->rfn = R.on_residual;
  ns->ruser = R.residual_user;
}

note *sluice__note_add(notes *ns) {
  return ns->len < MAX_NOTES ? &ns->n[ns->len++] : NULL;
}

const char *sluice__notes_str(notes *ns, const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  if (ns->arena_len + n > NOTE_ARENA) return "(...)";
  char *d = ns->arena + ns->arena_len;
  memcpy(d, s, n);
  ns->arena_len += n;
  return d;
}

void sluice__notes_dispatch(notes *ns) {
  for (int i = 0; i < ns->len; i++) {
    note *x = &ns->n[i];
    if (x->kind == NOTE_RESIDUAL && ns->rfn) ns->rfn(&x->r, ns->ruser);
    if (x->kind == NOTE_VERDICT) sluice__fire_verdict(x->group);
    if (x->kind == NOTE_WARN) sluice__warn_unentered(x->n);
  }
}

/* Room for the notes one more step may add. */
static int notes_room(const notes *ns) {
  return ns->len <= MAX_NOTES - 4 && ns->arena_len <= NOTE_ARENA - 512;
}

static void residual_note(notes *ns, const slot *s, int after_grace, int64_t b,
                          int64_t n) {
  if (!R.on_residual) return;
  note *x = sluice__note_add(ns);
  if (!x) return;
  const kind *k = &R.kinds[s->kind];
  x->kind = NOTE_RESIDUAL;
  x->r.queue = R.queues[k->queue].name;
  x->r.key = sluice__notes_str(ns, k->key);
  x->r.seq = s->seq;
  x->r.delivery_tag = s->tag;
  x->r.outcome = s->outcome;
  x->r.after_grace = after_grace;
  x->r.bytes = b > 0 ? (uint64_t)b : 0;
  x->r.objects = n > 0 ? (uint64_t)n : 0;
  x->r.bytes_at_end = s->end_b;
  x->r.objects_at_end = s->end_n;
}

/* ------------------------------------------------------------------------ */
/* The slot pool, the re-check ring, sweeps. Under R.mu. */

void sluice__slot_free(uint32_t idx) {
  slot *s = slot_at(idx);
  if (s->linked) sluice__group_unlink(s->group, idx);
  if (s->state == S_RETIRED) R.n_retired--;
  s->state = S_FREE;
  s->next_free = R.free_head;
  R.free_head = idx + 1;
}

/* Add a chunk of slots to the pool; -1 at max_scopes or out of memory. */
static int pool_grow(void) {
  if (R.n_slots >= R.max_slots) return -1;
  uint32_t n = R.max_slots - R.n_slots;
  if (n > SLOT_CHUNK) n = SLOT_CHUNK;
  slot *c =
      sluice__aligned_calloc(SLUICE__CACHELINE, SLOT_CHUNK * sizeof(slot));
  if (!c) return -1;
  for (uint32_t i = 0; i < n; i++) {
    atomic_init(&c[i].gen, 1);
    atomic_init(&c[i].live_b, LIVE_BIAS);
    atomic_init(&c[i].live_n, LIVE_BIAS);
    c[i].next_free = i + 1 < n ? R.n_slots + i + 2 : R.free_head;
  }
  atomic_store_explicit(&R.chunks[R.n_slots >> SLOT_SHIFT], c,
                        memory_order_release);
  R.free_head = R.n_slots + 1;
  R.n_slots += n;
  atomic_fetch_add(&sluice__overhead, SLOT_CHUNK * sizeof(slot));
  return 0;
}

static void sweep_visit(uintptr_t key, sluice__rec *r, void *arg) {
  (void)key;
  (void)arg;
  if (!r->scope || (r->scope & SLUICE__SINK)) return;
  if (r->scope & SLUICE__EXT) {
    sluice__ledger_sweep(r->scope);
    return;
  }
  slot *s = slot_at(r->scope - 1);
  if (s->state != S_RETIRED) return;
  uint32_t to = sink_ref(s->group, sluice__sweep_target(s));
  sluice__scope_credit(to, (int64_t)r->size, 1);
  sluice__scope_credit(r->scope, -(int64_t)r->size, -1);
  r->scope = to;
}

void sluice__reclaim(int full) {
  if (full && R.n_retired) {
    sluice__sweep_prepare();
    sluice__table_foreach(sweep_visit, NULL);
    R.sweeps++;
  }
  for (uint32_t i = 0; i < R.n_slots && R.n_retired; i++) {
    slot *s = slot_at(i);
    if (s->state == S_RETIRED && slot_empty(s)) sluice__slot_free(i);
  }
  R.scan_retired = R.n_retired;
}

static void recheck(notes *ns, uint32_t idx) {
  slot *s = slot_at(idx);
  grp *g = group_at(s->group);
  g->pending--;
  R.n_closed--;
  int64_t n = slot_live_n(s) + (int64_t)s->folded_n;
  int64_t b = slot_live_b(s) + (int64_t)s->folded_b;
  residual_note(ns, s, 1, b, n);
  if (slot_empty(s) && !s->folded_b && !s->folded_n) {
    g->cached++;
    sluice__slot_free(idx);
  } else {
    g->leaked++;
    g->bytes_leaked += b > 0 ? (uint64_t)b : 0;
    g->objects_leaked += n > 0 ? (uint64_t)n : 0;
    s->state = S_RETIRED;
    R.n_retired++;
  }
}

static uint32_t ring_pop(void) {
  uint32_t idx = R.ring[R.ring_head];
  R.ring_head = (R.ring_head + 1) % R.ring_cap;
  R.ring_len--;
  return idx;
}

/* Queue a re-check; -1 when the ring is at its cap (or cannot grow). */
static int ring_push(uint32_t idx) {
  if (R.ring_len == R.ring_cap) {
    if (R.ring_cap >= R.ring_max) return -1;
    uint32_t cap = R.ring_cap * 2 < R.ring_max ? R.ring_cap * 2 : R.ring_max;
    uint32_t *v = sluice__calloc(cap, sizeof(uint32_t));
    if (!v) return -1;
    for (uint32_t i = 0; i < R.ring_len; i++)
      v[i] = R.ring[(R.ring_head + i) % R.ring_cap];
    sluice__free(R.ring);
    atomic_fetch_add(&sluice__overhead, (cap - R.ring_cap) * sizeof(uint32_t));
    R.ring = v;
    R.ring_cap = cap;
    R.ring_head = 0;
  }
  R.ring[(R.ring_head + R.ring_len) % R.ring_cap] = idx;
  R.ring_len++;
  return 0;
}

size_t sluice__process_due(notes *ns, uint64_t now, int force) {
  size_t done = 0;
  while (R.ring_len && notes_room(ns)) {
    slot *s = slot_at(R.ring[R.ring_head]);
    if (!force && s->end_ns + (uint64_t)R.grace_ns + R.slack_ns > now) break;
    recheck(ns, ring_pop());
    done++;
  }
  return done;
}

/* Retired at once, without a re-check (counted). */
static void retire_unchecked(slot *s) {
  grp *g = group_at(s->group);
  g->skipped++;
  R.skipped++;
  s->state = S_RETIRED;
  R.n_retired++;
}

/* Every slot is open or pending and the pool is at its cap: give up the
 * re-checks of the oldest quarter of the pending scopes (never re-check
 * early: that would shorten the grace period), then sweep. */
static void drop_pending(void) {
  uint32_t n = R.ring_len / 4 + 1;
  while (n-- && R.ring_len) {
    slot *s = slot_at(ring_pop());
    group_at(s->group)->pending--;
    R.n_closed--;
    retire_unchecked(s);
  }
  sluice__reclaim(1);
}

/* A free slot for a new scope, or UINT32_MAX. */
static uint32_t slot_get(void) {
  if (!R.free_head && R.n_retired >= R.scan_retired + R.n_slots / 8 + 1)
    sluice__reclaim(0);
  if (!R.free_head) pool_grow();
  if (!R.free_head && R.n_retired) sluice__reclaim(1);
  if (!R.free_head && R.ring_len) drop_pending();
  if (!R.free_head) return UINT32_MAX;
  uint32_t idx = R.free_head - 1;
  R.free_head = slot_at(idx)->next_free;
  return idx;
}

/* Under R.mu: the slot of an open scope's handle, or NULL. */
static slot *slot_of(sluice_prof_scope h) {
  uint32_t idx = (uint32_t)h;
  if (!R.chunks || idx >= R.n_slots) return NULL;
  slot *s = slot_at(idx);
  if (atomic_load_explicit(&s->gen, memory_order_relaxed) !=
          (uint32_t)(h >> 32) ||
      s->state != S_OPEN)
    return NULL;
  return s;
}

/* ------------------------------------------------------------------------ */
/* The thread's scope record: clean ends and begins without the lock.
 *
 * Most scopes end with nothing live (the handler freed what it allocated).
 * Such an end needs no re-check and no callback: only the accounting that
 * the end of any message gets (its kind's open count, its group's message
 * count and growth curve). The ending thread bumps the handle's generation
 * (a CAS: one end per handle) and appends (kind, outcome, time) to a queue
 * of its own, single producer; whoever next holds the scope lock applies
 * every queue in order (sluice__ends_apply): the next slow end,
 * sluice_prof_poll() (the background thread, and every reader of figures
 * before it reads), a begin that finds no free slot. So the figures read
 * are the same as if each end had taken the lock; a LEAK verdict is
 * announced when the message that crossed the horizon is applied, at most
 * ENDQ_CAP ends of that thread or one poll interval later. Used only when
 * no per-scope callback is set (on_residual, on_leak): those run on the
 * ending thread at its end, as before.
 *
 * The slot of such an end is kept by the thread (`cslot`) for its next
 * begin, and a begin whose kind is in the thread's kind cache takes no
 * lock either (begin_cached): it fills the kept slot's fields and
 * publishes the new generation. The cache maps (queue, key value) to a
 * kind, KCACHE entries looked at from the last one used, each with a hint
 * (the queue name's address, the key's first two bytes) compared before
 * its strings. An entry is set only under the lock
 * by its owner; the open and begin counts of scopes begun through it stay
 * in the entry (owner-written atomics) until the entry is dropped, when
 * they move to the kind. Key-value eviction (prof_group.c) first drops
 * every entry of the queue's kinds on every thread: it clears the entry,
 * then waits until the owner is not inside a cached begin (`busy`; both
 * sequentially consistent: either the owner sees the cleared entry and
 * takes the lock, or eviction sees it busy and waits for its counts), and
 * then moves the counts. So the kinds' open counts are exact whenever
 * eviction reads them, and an evicted value is never begun through a
 * stale entry. Kinds under adaptive capture (capture_left) and "(other)"
 * kinds always take the lock. */
#define ENDQ_CAP 32
#define KCACHE 8
#define QNAME_MAX 95
#define NO_KEY UINT32_MAX

typedef struct ended {
  uint32_t kind;
  uint32_t slot; /* index + 1 of a slot to give back; 0: the thread kept it */
  uint32_t outcome;
  uint32_t pad_;
  uint64_t now;
} ended;

typedef struct kcache {
  _Atomic uint32_t kind; /* kind + 1; 0: empty */
  uint32_t klen;         /* key length (<= KEY_MAX), NO_KEY: no key */
  const char *qhint;     /* the queue name's address when it was set */
  uint32_t tag;          /* kc_tag() of its key */
  /* Scopes begun through this entry, not yet counted in the kind. */
  _Atomic int64_t open, begins;
  char queue[QNAME_MAX + 1];
  char key[KEY_MAX + 1];
} kcache;

typedef struct sluice__endq {
  sluice__claim hdr;
  _Atomic uint32_t head; /* written by the owner */
  _Atomic uint32_t tail; /* written under R.mu */
  _Atomic int busy;      /* the owner is inside a cached begin */
  /* An idle slot the thread ended clean, kept for its next begin (index +
   * 1; 0: none): owner only (and under R.mu once the owner is gone). Its
   * state stays S_OPEN, its counters at zero, its generation past every
   * handle given out. */
  uint32_t cslot;
  uint32_t kc_last; /* the entry used last */
  uint64_t now;     /* the clock at the current batch's first end (owner) */
  uint32_t kc_next; /* the entry a miss replaces next */
  kcache kc[KCACHE];
  ended e[ENDQ_CAP];
} sluice__endq;

static sluice__claim_list endqs;

static sluice__endq *endq_first(void) {
  return (sluice__endq *)sluice__claim_first(&endqs);
}
static sluice__endq *endq_next(const sluice__endq *q) {
  return (sluice__endq *)q->hdr.next;
}

/* The calling thread's record, claimed on first use; NULL for a thread
 * that is not registered (its record would never be given back). */
static sluice__endq *endq_mine(sluice__tls *t) {
  if (SLUICE__LIKELY(t->endq != NULL)) return t->endq;
  if (t->state != SLUICE__T_LIVE) return NULL;
  t->guard++;
  t->endq = sluice__claim_get(&endqs, sizeof(sluice__endq));
  t->guard--;
  return t->endq;
}

static inline void owner_add(_Atomic int64_t *c, int64_t d) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d,
                        memory_order_relaxed);
}

/* Under R.mu, entry e cleared already and its owner not inside a cached
 * begin: its counts move to its kind. */
static void kc_settle(kcache *e, uint32_t k1) {
  kind *kd = &R.kinds[k1 - 1];
  int64_t o = atomic_load_explicit(&e->open, memory_order_acquire);
  int64_t b = atomic_load_explicit(&e->begins, memory_order_acquire);
  kd->open += o;
  kd->begins += (uint64_t)b;
  R.n_open += o;
  atomic_store_explicit(&e->open, 0, memory_order_relaxed);
  atomic_store_explicit(&e->begins, 0, memory_order_relaxed);
}

/* Under R.mu, by the owner (or for a thread that is gone). */
static void kc_clear(kcache *e) {
  uint32_t k1 = atomic_load_explicit(&e->kind, memory_order_relaxed);
  if (!k1) return;
  atomic_store_explicit(&e->kind, 0, memory_order_relaxed);
  kc_settle(e, k1);
}

/* The first two bytes of a key (and whether there is one): a filter. */
static inline uint32_t kc_tag(const char *key) {
  if (!key) return 0;
  uint32_t c0 = (unsigned char)key[0];
  return 0x10000u | c0 | (c0 ? (uint32_t)(unsigned char)key[1] << 8 : 0);
}

/* Does entry e hold (queue, key)? */
static inline int kc_match(const kcache *e, const char *queue,
                           const char *key) {
  uint32_t kl = e->klen;
  /* The key as the kinds keep it: its first KEY_MAX bytes (strncmp stops
   * at the end of a shorter key, which then differs). */
  if (key ? kl == NO_KEY || strncmp(e->key, key, kl) ||
                (kl < KEY_MAX && key[kl])
          : kl != NO_KEY)
    return 0;
  return !strcmp(e->queue, queue ? queue : "");
}

/* Under R.mu, by the owner: (queue, key) is kind k from now. */
static void kc_set(sluice__endq *q, const char *queue, const char *key,
                   uint32_t k) {
  if (!q || R.kinds[k].other) return;
  const char *qn = queue ? queue : "";
  size_t ql = strlen(qn);
  if (ql > QNAME_MAX) return;
  size_t klen = key ? strnlen(key, KEY_MAX) : 0;
  uint32_t tag = kc_tag(key);
  for (int i = 0; i < KCACHE; i++) {
    kcache *x = &q->kc[i];
    if (atomic_load_explicit(&x->kind, memory_order_relaxed) == k + 1 &&
        x->qhint == queue && x->tag == tag && kc_match(x, queue, key)) {
      q->kc_last = (uint32_t)i;
      return;
    }
  }
  uint32_t i = q->kc_next;
  q->kc_next = (i + 1) % KCACHE;
  q->kc_last = i;
  kcache *e = &q->kc[i];
  kc_clear(e);
  memcpy(e->queue, qn, ql + 1);
  e->qhint = queue;
  e->tag = tag;
  e->klen = key ? (uint32_t)klen : NO_KEY;
  if (key) memcpy(e->key, key, klen);
  atomic_store_explicit(&e->kind, k + 1, memory_order_relaxed);
}

void sluice__kind_caches_drop(uint16_t qi) {
  for (sluice__endq *q = endq_first(); q; q = endq_next(q)) {
    uint32_t dropped[KCACHE];
    int any = 0;
    for (int i = 0; i < KCACHE; i++) {
      uint32_t k1 = atomic_load_explicit(&q->kc[i].kind, memory_order_relaxed);
      dropped[i] = k1 && R.kinds[k1 - 1].queue == qi ? k1 : 0;
      if (!dropped[i]) continue;
      atomic_store_explicit(&q->kc[i].kind, 0, memory_order_seq_cst);
      any = 1;
    }
    if (!any) continue;
    /* Cleared before the owners' fences: a cached begin that marked itself
     * busy after them sees the cleared entry. */
    if (sluice__fences) sluice__fence_heavy();
    /* A cached begin that read the entry before it was cleared has its
     * counts in the entry once it is not busy any more. */
    sluice__spin_while_set(&q->busy);
    for (int i = 0; i < KCACHE; i++)
      if (dropped[i]) kc_settle(&q->kc[i], dropped[i]);
  }
}

uint64_t sluice__kind_begins(uint32_t k) {
  uint64_t b = R.kinds[k].begins;
  for (sluice__endq *q = endq_first(); q; q = endq_next(q))
    for (int i = 0; i < KCACHE; i++)
      if (atomic_load_explicit(&q->kc[i].kind, memory_order_relaxed) == k + 1)
        b += (uint64_t)atomic_load_explicit(&q->kc[i].begins,
                                            memory_order_relaxed);
  return b;
}

/* Under R.mu: the record's owner is gone (or going): its cached slot goes
 * back to the pool, its cache entries' counts to their kinds. */
static void endq_unclaim_locked(sluice__endq *q) {
  for (int i = 0; i < KCACHE; i++) kc_clear(&q->kc[i]);
  if (q->cslot) sluice__slot_free(q->cslot - 1);
  q->cslot = 0;
  atomic_store_explicit(&q->busy, 0, memory_order_relaxed);
}

void sluice__endq_release(sluice__tls *t) {
  sluice__endq *q = t->endq;
  if (!q) return;
  sluice__lock_acquire(&R.mu);
  endq_unclaim_locked(q);
  sluice__lock_release(&R.mu);
  t->endq = NULL;
  sluice__unclaim(&q->hdr);
}

/* Only the forking thread exists in the child, and it holds R.mu: the
 * others' records are free to reuse (their queued ends are applied like
 * any other; a scope one of them was beginning counts as open). */
static void endq_fork_child(void) {
  sluice__lock_release(&endqs.lock);
  for (sluice__endq *q = endq_first(); q; q = endq_next(q))
    if (q != sluice__t.endq) {
      endq_unclaim_locked(q);
      atomic_store_explicit(&q->hdr.owned, 0, memory_order_relaxed);
    }
}

static int ends_pending(void) {
  for (sluice__endq *q = endq_first(); q; q = endq_next(q))
    if (atomic_load_explicit(&q->head, memory_order_acquire) !=
        atomic_load_explicit(&q->tail, memory_order_relaxed))
      return 1;
  return 0;
}

/* Open scopes counted in threads' caches (for MemStats). */
static int64_t cached_open(void) {
  int64_t n = 0;
  for (sluice__endq *q = endq_first(); q; q = endq_next(q))
    for (int i = 0; i < KCACHE; i++)
      n += atomic_load_explicit(&q->kc[i].open, memory_order_relaxed);
  return n;
}

/* Under R.mu: what end_locked() does for scopes that left nothing, for the
 * ends of queue q from `tl` up to `hd`, while `ns` has room. A run of ends
 * of one kind and outcome is applied at once: the same counts, and the
 * group's curve gets its points at the same messages with the same times
 * (each message is offered to it), since nothing it reads depends on the
 * open counts. Returns where it stopped. */
/* The message count at which group g's next curve point is due (what
 * sluice__group_message() tests: none yet, or `interval` messages after
 * the last point). */
static inline uint64_t curve_due(const grp *g) {
  return g->n_pts ? g->pts[g->n_pts - 1].m + g->interval : 0;
}

static uint32_t apply_ends(notes *ns, sluice__endq *q, uint32_t tl, uint32_t hd,
                           uint64_t *last) {
  uint32_t k = UINT32_MAX, o = 0, gi = 0;
  grp *g = NULL;
  int64_t n = 0;    /* ends of kind k not yet taken from its open count */
  uint64_t due = 0; /* g's message count at which its next point is due */
  uint64_t now = *last;
  /* Only a curve point adds notes: the room is looked at after each. */
  if (!notes_room(ns)) return tl;
  while (tl != hd) {
    const ended *x = &q->e[tl % ENDQ_CAP];
    if (x->kind != k || x->outcome != o) {
      if (n) {
        R.kinds[k].open -= n;
        R.kinds[k].last_ns = now;
        R.n_open -= n;
        n = 0;
      }
      k = x->kind;
      o = x->outcome;
      gi = sluice__group_of_fast(k, (int)o);
      g = group_at(gi);
      due = curve_due(g);
    }
    now = x->now;
    if (x->slot) sluice__slot_free(x->slot - 1);
    n++;
    tl++;
    if (++g->messages >= due) {
      sluice__group_message(ns, gi, now);
      due = curve_due(g);
      if (!notes_room(ns)) break;
    }
  }
  if (n) {
    R.kinds[k].open -= n;
    R.kinds[k].last_ns = now;
    R.n_open -= n;
  }
  *last = now;
  return tl;
}

size_t sluice__ends_apply(notes *ns) {
  size_t done = 0;
  uint64_t last = 0;
  for (sluice__endq *q = endq_first(); q; q = endq_next(q)) {
    uint32_t tl = atomic_load_explicit(&q->tail, memory_order_relaxed);
    uint32_t hd = atomic_load_explicit(&q->head, memory_order_acquire);
    if (tl == hd) continue;
    uint32_t to = apply_ends(ns, q, tl, hd, &last);
    done += to - tl;
    atomic_store_explicit(&q->tail, to, memory_order_release);
  }
  if (done) {
    sluice__process_due(ns, last, 0);
    if (R.n_slots >= R.max_slots && R.n_retired > R.max_slots / 2)
      sluice__reclaim(1);
  }
  return done;
}

/* ------------------------------------------------------------------------ */
/* Public API. */

/* A scope of (queue, key) begun without the lock, in the slot the thread
 * kept, when its kind is in the thread's cache; 0 otherwise. */
static inline sluice_prof_scope begin_cached(sluice__tls *t, const char *queue,
                                             const char *key, uint64_t seq,
                                             uint64_t tag, slot **out,
                                             uint8_t own) {
  sluice__endq *q = t->endq;
  if (!q || !q->cslot) return 0;
  uint32_t ktag = kc_tag(key);
  /* Against eviction (sluice__kind_caches_drop): busy, then the entry;
   * the eviction's membarrier stands for the fence between (prof_internal.h:
   * asymmetric fences), or a sequentially consistent store without it. */
  if (SLUICE__LIKELY(sluice__fences)) {
    atomic_store_explicit(&q->busy, 1, memory_order_relaxed);
    sluice__fence_light();
  } else {
    atomic_store_explicit(&q->busy, 1, memory_order_seq_cst);
  }
  uint32_t i = q->kc_last, k1 = 0;
  kcache *e;
  for (int n = 0; n < KCACHE; n++, i = (i + 1) % KCACHE) {
    e = &q->kc[i];
    if (e->qhint != queue || e->tag != ktag) continue;
    k1 = atomic_load_explicit(&e->kind, memory_order_seq_cst);
    if (k1 && kc_match(e, queue, key)) break;
    k1 = 0;
  }
  if (!k1 || atomic_load_explicit(&R.kinds[k1 - 1].capture_left,
                                  memory_order_relaxed)) {
    atomic_store_explicit(&q->busy, 0, memory_order_release);
    return 0;
  }
  q->kc_last = i;
  uint32_t idx = q->cslot - 1;
  q->cslot = 0;
  slot *s = slot_at(idx);
  uint32_t gen = atomic_load_explicit(&s->gen, memory_order_relaxed) + 1;
  if (!gen) gen = 1;
  /* As its clean end left it: open, counters at zero, not linked, nothing
   * folded, no residual at end. */
  atomic_store_explicit(&s->resumed, 0, memory_order_relaxed);
  atomic_store_explicit(&s->capture, 0, memory_order_relaxed);
  s->kind = k1 - 1;
  s->seq = seq;
  s->tag = tag;
  s->begin_thread = t;
  atomic_store_explicit(&s->owned, own, memory_order_relaxed);
  owner_add(&e->open, 1);
  owner_add(&e->begins, 1);
  atomic_store_explicit(&q->busy, 0, memory_order_release);
  atomic_store_explicit(&s->gen, gen, memory_order_release);
  *out = s;
  return ((uint64_t)gen << 32) | idx;
}

static sluice_prof_scope begin_locked(sluice__tls *t, const char *queue,
                                      const char *key_name, const char *key,
                                      uint64_t seq, uint64_t tag, slot **out,
                                      uint8_t own) {
  sluice__enter_guard();
  sluice__endq *q = endq_mine(t);
  sluice__lock_acquire(&R.mu);
  sluice_prof_scope h = 0;
  uint32_t idx;
  if (q && q->cslot) { /* kept, but its kind is not cached or captured */
    idx = q->cslot - 1;
    q->cslot = 0;
  } else {
    if (!R.free_head && ends_pending()) {
      /* Ended slots wait in the queues: account them (and free them). */
      sluice__lock_release(&R.mu);
      sluice_prof_poll();
      sluice__lock_acquire(&R.mu);
    }
    idx = slot_get();
  }
  if (idx != UINT32_MAX) {
    slot *s = slot_at(idx);
    uint32_t k = sluice__kind_of(queue, key_name, key, 0);
    kind *kd = &R.kinds[k];
    kc_set(q, queue, key, k);
    uint32_t gen = atomic_load_explicit(&s->gen, memory_order_relaxed) + 1;
    if (!gen) gen = 1;
    atomic_store_explicit(&s->live_b, LIVE_BIAS, memory_order_relaxed);
    atomic_store_explicit(&s->live_n, LIVE_BIAS, memory_order_relaxed);
    atomic_store_explicit(&s->resumed, 0, memory_order_relaxed);
    s->state = S_OPEN;
    s->kind = k;
    s->outcome = 0;
    s->linked = 0;
    s->seq = seq;
    s->tag = tag;
    s->end_b = s->end_n = 0;
    s->folded_b = s->folded_n = 0;
    s->begin_thread = t;
    atomic_store_explicit(&s->owned, own, memory_order_relaxed);
    uint64_t cl = atomic_load_explicit(&kd->capture_left, memory_order_relaxed);
    atomic_store_explicit(&s->capture, cl ? 1 : 0, memory_order_relaxed);
    if (cl)
      atomic_store_explicit(&kd->capture_left, cl - 1, memory_order_relaxed);
    kd->open++;
    kd->begins++;
    R.n_open++;
    atomic_store_explicit(&s->gen, gen, memory_order_release);
    h = ((uint64_t)gen << 32) | idx;
    *out = s;
  } else {
    R.refused++;
  }
  sluice__lock_release(&R.mu);
  sluice__leave_guard();
  return h;
}

static inline sluice_prof_scope begin_key(sluice__tls *t, const char *queue,
                                          const char *key_name, const char *key,
                                          uint64_t seq, uint64_t tag,
                                          slot **out, uint8_t own) {
  if (!(sluice__flags_now() & SLUICE__F_REC) || !R.chunks) return 0;
  sluice_prof_scope h = begin_cached(t, queue, key, seq, tag, out, own);
  if (!h) h = begin_locked(t, queue, key_name, key, seq, tag, out, own);
  if (SLUICE__UNLIKELY(!__atomic_load_n(&sluice__bg_started, __ATOMIC_RELAXED)))
    sluice__bg_ensure();
  return h;
}

sluice_prof_scope sluice_prof_scope_begin_key(const char *queue,
                                              const char *key_name,
                                              const char *key, uint64_t seq,
                                              uint64_t tag) {
  slot *s;
  return begin_key(&sluice__t, queue, key_name, key, seq, tag, &s, 0);
}

sluice_prof_scope sluice_prof_scope_begin(const char *queue, uint64_t seq,
                                          uint64_t tag) {
  return sluice_prof_scope_begin_key(queue, NULL, NULL, seq, tag);
}

sluice_prof_scope sluice_prof_scope_enter(sluice_prof_scope s) {
  sluice__tls *t = &sluice__t;
  sluice_prof_scope prev = t->scope;
  sluice__tls_set_scope(t, s);
  if (s) {
    uint32_t ref = sluice__scope_ref(s);
    if (ref) {
      t->capture = atomic_load_explicit(&slot_at(ref - 1)->capture,
                                        memory_order_relaxed);
      sluice__nurs_gate(t);
      if (t->scope == s && !t->pend_ref)
        pend_set(t, slot_at(ref - 1), ref, (uint32_t)(s >> 32));
    }
  }
  return prev;
}

sluice_prof_scope sluice_prof_scope_current(void) {
  return sluice__t.scope;
}

int sluice_prof_scope_usage(sluice_prof_scope h, uint64_t *bytes,
                            uint64_t *objects) {
  sluice__scope_flush(&sluice__t); /* this thread's pending credits */
  sluice__lock_acquire(&R.mu);
  slot *s = slot_of(h);
  int64_t b = 0, n = 0;
  if (s) {
    b = slot_live_b(s);
    n = slot_live_n(s);
  }
  sluice__lock_release(&R.mu);
  if (bytes) *bytes = b > 0 ? (uint64_t)b : 0;
  if (objects) *objects = n > 0 ? (uint64_t)n : 0;
  return s ? 0 : SLUICE_EINVAL;
}

/* The scope's live memory joins its group: the ENDED bit makes every later
 * change of the slot's counters change the group's too. */
static void join_group(slot *s, uint32_t g, int64_t *b, int64_t *n) {
  s->group = g;
  /* Nothing live and nothing referring to the slot (no thread inside it
   * any more): no debit can come any more, the slot is freed at once.
   * xrefs first: a thread unpins after its last credit. */
  if (atomic_load_explicit(&s->xrefs, memory_order_seq_cst) == 0 &&
      !atomic_load_explicit(&s->owned, memory_order_seq_cst) &&
      atomic_load_explicit(&s->live_n, memory_order_acquire) == LIVE_BIAS &&
      atomic_load_explicit(&s->live_b, memory_order_acquire) == LIVE_BIAS) {
    *b = *n = 0;
    return;
  }
  int64_t ob =
      atomic_fetch_or_explicit(&s->live_b, LIVE_ENDED, memory_order_acq_rel);
  int64_t on =
      atomic_fetch_or_explicit(&s->live_n, LIVE_ENDED, memory_order_acq_rel);
  *b = live_value(ob);
  *n = live_value(on);
  grp *gr = group_at(g);
  atomic_fetch_add_explicit(&gr->ret_b, *b, memory_order_relaxed);
  atomic_fetch_add_explicit(&gr->ret_n, *n, memory_order_relaxed);
}

/* What an end reports before its figures: whose scope, how it ended. */
static void result_init(sluice_prof_residual *out, const kind *kd,
                        const slot *s, int outcome) {
  memset(out, 0, sizeof *out);
  out->queue = R.queues[kd->queue].name;
  out->key = kd->key;
  out->seq = s->seq;
  out->delivery_tag = s->tag;
  out->outcome = outcome;
}

/* Under R.mu: the end of the scope in slot idx. */
static void end_locked(notes *ns, uint32_t idx, int outcome, uint64_t now,
                       sluice_prof_residual *out, sluice__endq *keep) {
  slot *s = slot_at(idx);
  kind *kd = &R.kinds[s->kind];
  kd->open--;
  kd->last_ns = now;
  R.n_open--;
  s->outcome = (uint8_t)outcome;
  uint32_t gi = sluice__group_of_fast(s->kind, outcome);
  int64_t b, n;
  join_group(s, gi, &b, &n);
  grp *g = group_at(gi);
  s->end_b = b > 0 ? (uint64_t)b : 0;
  s->end_n = n > 0 ? (uint64_t)n : 0;
  s->end_ns = now;
  g->messages++;
  s->end_msg = g->messages;
  if (out) {
    result_init(out, kd, s, outcome);
    out->bytes = out->bytes_at_end = s->end_b;
    out->objects = out->objects_at_end = s->end_n;
  }
  residual_note(ns, s, 0, b, n);
  /* Due re-checks first: they make room in the queue. */
  sluice__process_due(ns, now, 0);
  if (slot_empty(s) && b == 0) {
    if (keep && !keep->cslot &&
        atomic_load_explicit(&s->live_b, memory_order_relaxed) == LIVE_BIAS &&
        atomic_load_explicit(&s->live_n, memory_order_relaxed) == LIVE_BIAS) {
      /* Idle as a clean fast end leaves it: the ending thread keeps it for
       * its next begin (the fields a begin through the cache does not set
       * are as it expects). */
      s->outcome = 0;
      keep->cslot = idx + 1;
    } else {
      sluice__slot_free(idx);
    }
  } else {
    g->with_residual++;
    g->bytes_at_end += s->end_b;
    g->objects_at_end += s->end_n;
    sluice__group_link(gi, idx);
    if (R.grace_ns < 0) {
      s->state = S_CLOSED;
      R.n_closed++;
      g->pending++;
      recheck(ns, idx);
    } else if (ring_push(idx) == 0) {
      s->state = S_CLOSED;
      R.n_closed++;
      g->pending++;
    } else {
      retire_unchecked(s);
    }
  }
  sluice__group_message_fast(ns, gi, now);
  if (R.n_slots >= R.max_slots && R.n_retired > R.max_slots / 2)
    sluice__reclaim(1);
}

/* One batch under the lock: every thread's queued clean ends and, with
 * `due`, the scopes due by `now` (and the groups' tick with `tick`); the
 * callbacks run after the lock. What it applied. */
static size_t apply_batch(int due, uint64_t now, int tick) {
  notes ns;
  sluice__enter_guard();
  sluice__lock_acquire(&R.mu);
  sluice__notes_init(&ns);
  size_t n = sluice__ends_apply(&ns);
  if (due) n += sluice__process_due(&ns, now, 0);
  if (tick) sluice__groups_tick(&ns, now);
  sluice__lock_release(&R.mu);
  sluice__leave_guard();
  sluice__notes_dispatch(&ns);
  return n;
}

/* The thread's queue of clean ends is full: every queue applied (as the
 * next slow end would). The new tail. */
SLUICE__NOINLINE static uint32_t ends_drain(sluice__endq *q) {
  apply_batch(0, 0, 0);
  return atomic_load_explicit(&q->tail, memory_order_acquire);
}

/* The ending thread pins the slot (its pin the only one, xrefs 1) and the
 * generation is still `gen`: one compare-and-swap of the two (adjacent, one
 * aligned 64-bit word) drops the pin and ends the scope, where the unpin and
 * the end's own compare-and-swap were two read-modify-writes. Otherwise 0:
 * nothing changed. */
_Static_assert(offsetof(slot, gen) == offsetof(slot, xrefs) + 4 &&
                   offsetof(slot, xrefs) % 8 == 0,
               "xrefs and gen form one aligned 64-bit word");
static inline int end_unpin(slot *s, uint32_t gen) {
  uint64_t *w = (uint64_t *)(void *)&s->xrefs;
  uint64_t pinned = (uint64_t)gen << 32 | 1u;
  uint64_t next = (uint64_t)(uint32_t)(gen + 1) << 32;
  return __atomic_compare_exchange_n(w, &pinned, next, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_RELAXED);
}

/* The end of scope h when it is clean: 0 when done here (or -EINVAL),
 * 1 when the caller must take the lock. *pin: the ending thread's pin of
 * the slot when it held one (see end_unpin); NULL after when dropped. */
static inline int fast_end_in(sluice__tls *t, sluice_prof_scope h, int outcome,
                              sluice_prof_residual *out, int from_hook,
                              _Atomic int32_t **pin, uint8_t own) {
  uint32_t idx = (uint32_t)h;
  if (!atomic_load_explicit(&R.fast_end, memory_order_relaxed)) return 1;
  slot *s;
  if (*pin) { /* the thread's own pending slot, h's: no lookup */
    s = slot_of_pin(*pin);
  } else {
    if (!R.chunks || idx >= R.max_slots) return 1;
    slot *c = atomic_load_explicit(&R.chunks[idx >> SLOT_SHIFT],
                                   memory_order_acquire);
    if (!c) return 1;
    s = &c[idx & (SLOT_CHUNK - 1)];
  }
  uint32_t gen = (uint32_t)(h >> 32);
  /* Begun on this thread (or not from a hook: the deferred-completion
   * warning is not concerned). Whether it left anything is seen after the
   * CAS below: then the end, already ours, takes the lock. */
  if (atomic_load_explicit(&s->gen, memory_order_acquire) != gen ||
      (from_hook && s->begin_thread != t))
    return 1;
  sluice__endq *q = endq_mine(t);
  if (SLUICE__UNLIKELY(!q)) return 1;
  uint32_t hd = atomic_load_explicit(&q->head, memory_order_relaxed);
  uint32_t tl = atomic_load_explicit(&q->tail, memory_order_acquire);
  if (SLUICE__UNLIKELY(hd - tl == ENDQ_CAP)) {
    /* Full: applied under the lock here, then this end is queued. */
    tl = ends_drain(q);
    if (hd - tl == ENDQ_CAP) return 1; /* still full: the slow end */
  }
  int solo = 0; /* 1: the pin was the only one; 2: it was the owner's */
  if (*pin && !own && end_unpin(s, gen)) {
    *pin = NULL; /* dropped with the generation's bump */
    solo = 1;    /* and no other pin, no growth layer, was there */
  } else if (!atomic_compare_exchange_strong_explicit(&s->gen, &gen, gen + 1,
                                                      memory_order_seq_cst,
                                                      memory_order_relaxed)) {
    return SLUICE_EINVAL; /* ended by another thread meanwhile */
  } else if (*pin) {      /* the owner's flag: dropped once the end is ours */
    atomic_store_explicit(&s->owned, 0, memory_order_release);
    *pin = NULL;
    solo = 2; /* no other owner flag: only xrefs to look at */
  }
  /* Ended. A thread that entered the scope meanwhile has pinned it (see
   * sluice__scope_pend_set): then the end takes the lock. */
  if (SLUICE__UNLIKELY(
          (solo != 1 &&
           atomic_load_explicit(&s->xrefs, memory_order_seq_cst)) ||
          (!solo && atomic_load_explicit(&s->owned, memory_order_seq_cst)) ||
          atomic_load_explicit(&s->live_n, memory_order_acquire) != LIVE_BIAS ||
          atomic_load_explicit(&s->live_b, memory_order_acquire) != LIVE_BIAS))
    return 2;
  /* the kind cannot go while the scope counts as open */
  if (out) result_init(out, &R.kinds[s->kind], s, outcome);
  ended *x = &q->e[hd % ENDQ_CAP];
  x->kind = s->kind;
  x->outcome = (uint32_t)outcome;
  /* The clock once per batch: the first end queued since the queue was
   * last applied reads it, the others of the batch take its time, while
   * the background thread runs (it applies every queue each poll_ms: a
   * time is at most one poll interval old, about what the coarse clock's
   * resolution is at high rates, where 32 ends fill a batch in a few ms).
   * Without it, every end reads the clock. */
  if (hd == tl || !__atomic_load_n(&sluice__bg_live, __ATOMIC_RELAXED))
    q->now = sluice__now_ns();
  x->now = q->now;
  /* The slot is idle now: kept for this thread's next begin, or given back
   * when the queue is applied. */
  if (!q->cslot) {
    q->cslot = idx + 1;
    x->slot = 0;
  } else {
    x->slot = idx + 1;
  }
  atomic_store_explicit(&q->head, hd + 1, memory_order_release);
  return 0;
}

/* Deferred work done on a thread that never entered the delivery. Such a
 * thread (an HTTP client's, a publisher's) allocates for other reasons too,
 * transiently; what matters is memory it keeps: when the blocks it has
 * allocated and not freed grow by UNENTERED_BLOCKS across such completions,
 * warn once and count it. */
#define UNENTERED_BLOCKS 64

static void check_unentered(notes *ns, const slot *s, sluice__tls *t) {
  if (s->begin_thread == t ||
      atomic_load_explicit(&s->resumed, memory_order_relaxed) || t->entered)
    return;
  int64_t net =
      (int64_t)(atomic_load_explicit(&t->mallocs, memory_order_relaxed) -
                atomic_load_explicit(&t->frees, memory_order_relaxed));
  if (!t->unentered_base) {
    t->unentered_base = net + 1;
    return;
  }
  int64_t grown = net - (t->unentered_base - 1);
  if (grown < UNENTERED_BLOCKS) return;
  t->unentered_base = net + 1;
  R.unentered++;
  if (R.warned) return;
  R.warned = 1;
  note *x = sluice__note_add(ns);
  if (x) {
    x->kind = NOTE_WARN;
    x->n = (uint64_t)grown;
  }
}

/* The end under the lock (rc: what fast_end() said). Apart, so that the
 * lock-free end does not set up its large frame. */
SLUICE__NOINLINE static int scope_end_locked(sluice__tls *t,
                                             sluice_prof_scope h, int outcome,
                                             sluice_prof_residual *out,
                                             int from_hook, int rc) {
  notes ns;
  sluice__enter_guard();
  uint64_t now = sluice__now_ns();
  sluice__lock_acquire(&R.mu);
  sluice__notes_init(&ns);
  /* This thread's earlier ends first (in order with this one). */
  sluice__ends_apply(&ns);
  slot *s;
  uint32_t gen = (uint32_t)(h >> 32);
  if (rc == 2) {
    /* fast_end() bumped the generation: the end is ours; the slot is still
     * open (its state changes under the lock only). */
    s = slot_at((uint32_t)h);
  } else if (!(s = slot_of(h)) ||
             !atomic_compare_exchange_strong_explicit(&s->gen, &gen, gen + 1,
                                                      memory_order_seq_cst,
                                                      memory_order_relaxed)) {
    /* New allocations through the old handle no longer count; a fast end
     * of the same handle on another thread cannot win too. */
    sluice__lock_release(&R.mu);
    sluice__leave_guard();
    sluice__notes_dispatch(&ns);
    return SLUICE_EINVAL;
  }
  if (from_hook) check_unentered(&ns, s, t);
  end_locked(&ns, (uint32_t)h, outcome, now, out, t->endq);
  sluice__lock_release(&R.mu);
  sluice__leave_guard();
  sluice__notes_dispatch(&ns);
  return 0;
}

static inline int fast_end(sluice__tls *t, sluice_prof_scope h, int outcome,
                           sluice_prof_residual *out, int from_hook,
                           _Atomic int32_t *pin, uint8_t own) {
  int rc = fast_end_in(t, h, outcome, out, from_hook, &pin, own);
  if (pin) unpin(pin, own); /* not dropped by the end: before the lock's */
  return rc;
}

static int scope_end(sluice_prof_scope h, int outcome,
                     sluice_prof_residual *out, int from_hook) {
  sluice__tls *t = &sluice__t;
  _Atomic int32_t *pin = NULL;
  uint8_t own = 0;
  if (t->scope == h) {
    /* Its pending credits are for this scope: settled, and the pin kept
     * for the end to drop. */
    if (t->pend_ref == (uint32_t)h + 1) {
      own = t->pend_own;
      pin = flush_keep_pin(t);
    }
    sluice__tls_set_scope(t, 0);
  }
  if (outcome < 0 || outcome >= N_OUT) outcome = SLUICE_OUTCOME_ERROR;
  int rc = fast_end(t, h, outcome, out, from_hook, pin, own);
  if (rc <= 0) return rc;
  return scope_end_locked(t, h, outcome, out, from_hook, rc);
}

int sluice_prof_scope_end(sluice_prof_scope h, int outcome,
                          sluice_prof_residual *out) {
  return scope_end(h, outcome, out, 0);
}

size_t sluice_prof_poll(void) {
  if (!R.chunks) return 0;
  size_t done = 0, batch;
  uint64_t now = sluice__now_ns();
  int first = 1;
  do { /* in batches: the callbacks of one batch fit in its notes */
    batch = apply_batch(1, now, first);
    first = 0;
    done += batch;
  } while (batch);
  sluice__nurs_revoke_idle();
  return done;
}

/* ------------------------------------------------------------------------ */
/* Hooks for the consumer. */

static void *hk_begin(void *user, const sluice_delivery_info *info) {
  (void)user;
  sluice__tls *t = &sluice__t;
  slot *sl;
  sluice_prof_scope s = begin_key(t, info ? info->queue : NULL,
                                  info ? info->key_name : NULL,
                                  info ? info->key : NULL, info ? info->seq : 0,
                                  info ? info->delivery_tag : 0, &sl, 1);
  if (!s) return NULL;
  sluice__tls_set_scope(t, s);
  t->capture = atomic_load_explicit(&sl->capture, memory_order_relaxed);
  /* The handler's blocks go straight to the nursery. The slot is pinned
   * already: its `owned` flag, set before the scope existed for anyone
   * else (no increment, and no generation to check: nobody else has the
   * handle yet). */
  pend_pinned(t, sl, (uint32_t)s + 1, 1);
  return (void *)(uintptr_t)s;
}

static void hk_resume(void *user, void *token) {
  (void)user;
  if (!token) return;
  sluice_prof_scope s = (sluice_prof_scope)(uintptr_t)token;
  sluice__t.entered = 1;
  uint32_t ref = sluice__scope_ref(s);
  if (ref)
    atomic_store_explicit(&slot_at(ref - 1)->resumed, 1, memory_order_relaxed);
  sluice_prof_scope_enter(s);
}

static void hk_suspend(void *user, void *token) {
  (void)user;
  if (token && sluice__t.scope == (sluice_prof_scope)(uintptr_t)token)
    sluice__tls_set_scope(&sluice__t, 0);
}

static void hk_end(void *user, void *token, const sluice_delivery_info *info,
                   int outcome) {
  (void)user;
  (void)info;
  if (token) scope_end((sluice_prof_scope)(uintptr_t)token, outcome, NULL, 1);
}

static const sluice_delivery_hooks hooks = {.begin = hk_begin,
                                            .resume = hk_resume,
                                            .suspend = hk_suspend,
                                            .end = hk_end,
                                            .heap_read = sluice_prof_heap_read};

const sluice_delivery_hooks *sluice_prof_delivery_hooks(void) {
  return &hooks;
}

/* ------------------------------------------------------------------------ */
/* Reading. */

typedef struct collect_arg {
  int64_t group;
  void (*fn)(const sluice__resid_key *k, uint64_t size, void *arg);
  void *arg;
} collect_arg;

/* One sampled piece of residual: `size` bytes at `stack`, owned by `ref`. */
static void collect_one(collect_arg *c, uint32_t ref, uint32_t stack,
                        uint64_t size) {
  if (!stack || !ref) return; /* not sampled: in the exact counts only */
  sluice__resid_key k = {.stack = stack};
  uint32_t gi;
  if (ref & SLUICE__SINK) {
    gi = SLUICE__REF_IDX(ref) / N_GEN;
  } else {
    const slot *s = slot_at(ref - 1);
    if (s->state != S_CLOSED && s->state != S_RETIRED) return;
    gi = s->group;
    k.seq = s->seq;
  }
  const grp *g = group_at(gi);
  if (c->group >= 0 && gi != (uint32_t)c->group) return;
  k.group = gi;
  k.kind = g->kind + 1;
  k.queue = R.kinds[g->kind].queue;
  k.outcome = g->outcome;
  c->fn(&k, size, c->arg);
}

static void layer_visit(uint32_t owner, uint32_t stack, uint64_t bytes,
                        int objects, void *arg) {
  (void)objects;
  collect_one(arg, owner, stack, bytes);
}

static void collect_visit(uintptr_t key, sluice__rec *r, void *arg) {
  (void)key;
  if (!r->scope) return;
  if (r->scope & SLUICE__EXT) sluice__ledger_visit(r->scope, layer_visit, arg);
  else collect_one(arg, r->scope, r->stack, r->size);
}

void sluice__residual_collect(int64_t group,
                              void (*fn)(const sluice__resid_key *k,
                                         uint64_t size, void *arg),
                              void *arg) {
  if (!R.chunks) return;
  collect_arg c = {group, fn, arg};
  sluice__lock_acquire(&R.mu);
  sluice__table_foreach(collect_visit, &c);
  sluice__lock_release(&R.mu);
}

const char *sluice__queue_name(unsigned idx) {
  return R.queues && idx < R.n_q && R.queues[idx].name ? R.queues[idx].name
                                                       : "?";
}

char *sluice__kind_key_dup(uint32_t k, char **key_name) {
  *key_name = NULL;
  if (!k || k > R.max_kinds || !R.kinds[k - 1].key) return NULL;
  const kind *kd = &R.kinds[k - 1];
  const char *kn = R.queues[kd->queue].key_name;
  *key_name = sluice__strdup(kn ? kn : "key");
  return sluice__strdup(kd->key);
}

void sluice__scopes_stats(sluice_prof_memstats *ms) {
  if (!R.chunks) return;
  sluice_prof_poll(); /* scopes ended without the lock counted */
  sluice__lock_acquire(&R.mu);
  int64_t open = R.n_open + cached_open();
  ms->scopes_open = open > 0 ? (uint64_t)open : 0;
  ms->scopes_pending = R.n_closed;
  /* Retired slots whose blocks are all gone are given back lazily: count
   * only those that still hold memory. */
  uint64_t retained = 0;
  for (uint32_t i = 0; i < R.n_slots && retained < R.n_retired; i++)
    if (slot_at(i)->state == S_RETIRED && !slot_empty(slot_at(i))) retained++;
  ms->scopes_retained = retained;
  ms->scopes_refused = R.refused;
  ms->rechecks_skipped = R.skipped;
  ms->groups = R.n_groups;
  ms->groups_overflow = R.groups_overflow;
  ms->keys_overflow = R.keys_overflow;
  ms->deferred_unentered = R.unentered;
  sluice__lock_release(&R.mu);
  ms->ledgers = sluice__ledger_count();
  ms->ledger_merges = sluice__ledger_overflows();
}

void sluice__fold_done(uint32_t ref, uint64_t bytes, int objects) {
  slot *s = slot_at(ref - 1);
  if (s->state != S_CLOSED) return;
  s->folded_b += bytes;
  s->folded_n += (uint64_t)objects;
}

uint32_t sluice__fold_target(uint32_t ref) {
  if (!ref || (ref & (SLUICE__SINK | SLUICE__EXT))) return 0;
  slot *s = slot_at(ref - 1);
  if (s->state != S_CLOSED && s->state != S_RETIRED) return 0;
  return sink_ref(s->group, sluice__sweep_target(s));
}
