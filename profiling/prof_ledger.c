/* SPDX-License-Identifier: MIT */
/* Blocks with several owners: growth by realloc.
 *
 * A block normally has one owner (its record's scope). When a scope grows
 * a block that another scope owns, or that no scope owns (a global buffer),
 * the bytes it added are that scope's: the block's record then points to a
 * ledger of layers, like a stack of bytes: the base layer (the first owner,
 * its bytes, its one object) at the bottom, each growth above it (the
 * growing scope, the bytes it added, the realloc's stack when captured at
 * weight 1). A shrink removes bytes from the top down (a scope that grows
 * and then shrinks is credited back; a shrink below the growth of others
 * takes theirs); a free debits every layer. The layers always add up to
 * the block's size, so every byte credited is debited exactly once.
 *
 * A record stays 16 bytes; only a block grown across scopes takes a ledger
 * (104 bytes). Layers are bounded (LAYERS per block): when a block has
 * more growers, layers of scopes that have ended move to their group's sink
 * generation (exact for the group, no longer per message) and adjacent
 * layers of one owner merge; then two neighbouring generations of one group
 * merge into the younger (the oldest layers keep their age); if that is
 * not enough, the growth joins the top layer (counted in ledger_merges).
 *
 * A ledger is only touched by whoever holds its record: the table (under
 * the shard's lock: sweeps), or the thread that took the record out (free,
 * realloc). Allocation of ledgers takes a spinlock. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <string.h>

#include "prof_resid.h"

/* The base, one layer per sink generation of a group, and the grower. */
#define LAYERS (N_GEN + 2)
#define LEDGER_SHIFT 10
#define LEDGER_CHUNK (1u << LEDGER_SHIFT)
#define MAX_LEDGER_CHUNKS 4096

typedef struct layer {
  uint32_t ref;   /* owner: 0 (nobody), slot ref, sink ref */
  uint32_t stack; /* where these bytes were allocated, if known */
  uint64_t bytes;
} layer;

typedef struct ledger {
  uint32_t next_free;
  uint32_t n;
  layer l[LAYERS];
} ledger;

static ledger *_Atomic chunks[MAX_LEDGER_CHUNKS];
static sluice__lock lock;
static uint32_t free_head, n_ledgers;
static _Atomic uint64_t in_use, merges;

static ledger *ledger_at(uint32_t ref) {
  uint32_t i = SLUICE__REF_IDX(ref);
  ledger *c =
      atomic_load_explicit(&chunks[i >> LEDGER_SHIFT], memory_order_acquire);
  return &c[i & (LEDGER_CHUNK - 1)];
}

/* A new ledger's reference, or 0. */
static uint32_t ledger_new(void) {
  uint32_t idx = UINT32_MAX;
  sluice__lock_acquire(&lock);
  if (free_head) {
    idx = free_head - 1;
    free_head = ledger_at(SLUICE__EXT | idx)->next_free;
  } else if (n_ledgers < MAX_LEDGER_CHUNKS * LEDGER_CHUNK) {
    uint32_t c = n_ledgers >> LEDGER_SHIFT;
    if (!atomic_load_explicit(&chunks[c], memory_order_relaxed)) {
      ledger *v = sluice__calloc(LEDGER_CHUNK, sizeof(ledger));
      if (v) {
        atomic_store_explicit(&chunks[c], v, memory_order_release);
        atomic_fetch_add(&sluice__overhead, LEDGER_CHUNK * sizeof(ledger));
      }
    }
    if (atomic_load_explicit(&chunks[c], memory_order_relaxed))
      idx = n_ledgers++;
  }
  sluice__lock_release(&lock);
  if (idx == UINT32_MAX) return 0;
  atomic_fetch_add_explicit(&in_use, 1, memory_order_relaxed);
  uint32_t ref = SLUICE__EXT | idx;
  memset(ledger_at(ref), 0, sizeof(ledger));
  return ref;
}

static void ledger_free(uint32_t ref) {
  ledger *L = ledger_at(ref);
  sluice__lock_acquire(&lock);
  L->next_free = free_head;
  free_head = SLUICE__REF_IDX(ref) + 1;
  sluice__lock_release(&lock);
  atomic_fetch_sub_explicit(&in_use, 1, memory_order_relaxed);
}

static void credit(sluice__tls *t, uint32_t ref, int64_t b, int64_t n) {
  if (!ref) return;
  if (t) sluice__scope_credit_mine(t, ref, b, n);
  else sluice__scope_credit(ref, b, n);
}

/* Move layer i to `to` (an ended slot's sink). */
static void move_layer(ledger *L, uint32_t i, uint32_t to) {
  layer *y = &L->l[i];
  int64_t obj = i == 0;
  sluice__scope_credit(to, (int64_t)y->bytes, obj);
  sluice__scope_credit(y->ref, -(int64_t)y->bytes, -obj);
  if (i) {
    sluice__scope_xref(to, 1);
    sluice__scope_xref(y->ref, -1);
  }
  y->ref = to;
}

/* Adjacent layers of one owner become one. */
static void merge_equal(ledger *L) {
  for (uint32_t i = L->n; i-- > 1;) {
    layer *y = &L->l[i], *x = &L->l[i - 1];
    if (y->ref != x->ref) continue;
    x->bytes += y->bytes;
    if (!x->stack) x->stack = y->stack;
    if (y->ref) sluice__scope_xref(y->ref, -1);
    memmove(y, y + 1, (L->n - i - 1) * sizeof(layer));
    L->n--;
  }
}

/* Two neighbouring layers in sinks of one group: the older moves into the
 * younger's generation (the oldest, at index 1 and below, stay). */
static void merge_generations(ledger *L) {
  for (uint32_t i = L->n - 1; i >= 2; i--) {
    uint32_t a = L->l[i - 1].ref, b = L->l[i].ref;
    if (!(a & SLUICE__SINK) || !(b & SLUICE__SINK) ||
        SLUICE__REF_IDX(a) / N_GEN != SLUICE__REF_IDX(b) / N_GEN)
      continue;
    sink *from = sink_at(a), *to = sink_at(b);
    if (from->first_msg < to->first_msg) {
      to->first_msg = from->first_msg;
      to->first_ns = from->first_ns;
    }
    move_layer(L, i - 1, b);
    merge_equal(L);
    return;
  }
}

/* Room for one more layer: layers of ended scopes go to their sinks. */
static void make_room(ledger *L) {
  sluice__lock_acquire(&R.mu);
  for (uint32_t i = 0; i < L->n; i++) {
    uint32_t from = L->l[i].ref, to = sluice__fold_target(from);
    if (!to) continue;
    sluice__fold_done(from, L->l[i].bytes, i == 0);
    move_layer(L, i, to);
  }
  merge_equal(L);
  if (L->n == LAYERS) merge_generations(L);
  sluice__lock_release(&R.mu);
}

static void grow(sluice__tls *t, ledger *L, uint32_t ref, uint32_t stack,
                 uint64_t d) {
  layer *top = &L->l[L->n - 1];
  if (top->ref == ref) {
    top->bytes += d;
    if (!top->stack) top->stack = stack;
    credit(t, ref, (int64_t)d, 0);
    return;
  }
  if (L->n == LAYERS) make_room(L);
  top = &L->l[L->n - 1];
  if (L->n == LAYERS || top->ref == ref) {
    if (top->ref != ref)
      atomic_fetch_add_explicit(&merges, 1, memory_order_relaxed);
    top->bytes += d; /* the top owner takes it (counts stay exact) */
    credit(t, top->ref, (int64_t)d, 0);
    return;
  }
  L->l[L->n++] = (layer){ref, stack, d};
  credit(t, ref, (int64_t)d, 0);
  if (ref) sluice__scope_xref(ref, 1);
}

static void shrink(sluice__tls *t, ledger *L, uint64_t rem) {
  while (rem && L->n) {
    layer *top = &L->l[L->n - 1];
    uint64_t take = top->bytes < rem ? top->bytes : rem;
    top->bytes -= take;
    rem -= take;
    credit(t, top->ref, -(int64_t)take, 0);
    if (top->bytes || L->n == 1) {
      if (!top->bytes) break;
      continue;
    }
    if (top->ref) sluice__scope_xref(top->ref, -1);
    L->n--;
  }
}

void sluice__ledger_realloc(sluice__tls *t, const sluice__rec *old,
                            uint64_t old_size, uint64_t new_size, uint32_t cur,
                            uint32_t layer_stack, sluice__rec *rec) {
  uint32_t oref = old->scope;
  if (!(oref & SLUICE__EXT)) {
    /* One owner: its own growth or shrink, or a shrink by anyone, or
     * nothing to charge (no owner and no scope). */
    if (oref == cur || new_size <= old_size) {
      credit(t, oref, (int64_t)new_size - (int64_t)old_size, 0);
      rec->scope = oref;
      return;
    }
    uint32_t ref = ledger_new();
    if (!ref) { /* out of memory: the owner takes the growth */
      atomic_fetch_add_explicit(&merges, 1, memory_order_relaxed);
      credit(t, oref, (int64_t)(new_size - old_size), 0);
      rec->scope = oref;
      return;
    }
    ledger *L = ledger_at(ref);
    L->n = 1;
    L->l[0] = (layer){oref, old->stack, old_size};
    grow(t, L, cur, layer_stack, new_size - old_size);
    rec->scope = ref;
    return;
  }
  ledger *L = ledger_at(oref);
  if (new_size > old_size) grow(t, L, cur, layer_stack, new_size - old_size);
  else if (new_size < old_size) shrink(t, L, old_size - new_size);
  if (L->n == 1) { /* one owner again: a plain record */
    rec->scope = L->l[0].ref;
    ledger_free(oref);
    return;
  }
  rec->scope = oref;
}

void sluice__ledger_release(sluice__tls *t, uint32_t ref) {
  ledger *L = ledger_at(ref);
  for (uint32_t i = 0; i < L->n; i++) {
    layer *y = &L->l[i];
    if (!y->ref) continue;
    credit(t, y->ref, -(int64_t)y->bytes, i == 0 ? -1 : 0);
    if (i) sluice__scope_xref(y->ref, -1);
  }
  ledger_free(ref);
}

void sluice__ledger_visit(uint32_t ref,
                          void (*fn)(uint32_t owner, uint32_t stack,
                                     uint64_t bytes, int objects, void *arg),
                          void *arg) {
  const ledger *L = ledger_at(ref);
  for (uint32_t i = 0; i < L->n; i++)
    fn(L->l[i].ref, L->l[i].stack, L->l[i].bytes, i == 0, arg);
}

void sluice__ledger_sweep(uint32_t ref) {
  ledger *L = ledger_at(ref);
  for (uint32_t i = 0; i < L->n; i++) {
    uint32_t r = L->l[i].ref;
    if (!r || (r & SLUICE__SINK)) continue;
    const slot *s = slot_at(r - 1);
    if (s->state != S_RETIRED) continue;
    move_layer(L, i, sink_ref(s->group, sluice__sweep_target(s)));
  }
  merge_equal(L);
}

uint64_t sluice__ledger_count(void) {
  return atomic_load_explicit(&in_use, memory_order_relaxed);
}

uint64_t sluice__ledger_overflows(void) {
  return atomic_load_explicit(&merges, memory_order_relaxed);
}

void sluice__ledger_lock_all(void) {
  sluice__lock_acquire(&lock);
}

void sluice__ledger_unlock_all(void) {
  sluice__lock_release(&lock);
}
