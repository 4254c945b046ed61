/* SPDX-License-Identifier: MIT */
/* Scopes and residual memory.
 *
 * A scope is a slot in a fixed pool. While a thread is inside a scope,
 * every block it allocates is recorded with the slot's reference and
 * credited to the slot's live counters (atomics); freeing the block, on any
 * thread, at any time, debits the same counters. So a scope's live bytes
 * and objects are exact whatever the sampling rate.
 *
 * Life of a slot:
 *   FREE -> OPEN (begin) -> end: nothing live -> FREE
 *                               something live (residual) -> CLOSED, and
 *                               into the re-check ring with a deadline
 *   CLOSED -> re-check after the grace period: nothing live -> FREE (it was
 *             a cache); still live -> RETIRED (a leak, or a long-lived cache)
 *   RETIRED -> FREE once its blocks are gone: freed by the program, or moved
 *             by a sweep to the per-queue/outcome sink, which keeps
 *             counting them. The sweep runs when slots run short, so leaked
 *             messages never pin slots and the pool stays bounded.
 * A slot is freed only when its live object count is 0, so no record (in
 * the table, or taken out by a realloc in progress) can point to a reused
 * slot. The generation in the handle changes at begin and at end, so a
 * stale handle never credits a new scope.
 *
 * Residual totals are kept per queue and per outcome, with a rolling window
 * per pair for the leak verdict. Callbacks run after the lock is released. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prof_internal.h"

_Static_assert(sizeof(void *) >= sizeof(sluice_prof_scope),
               "scope handles travel in the hooks' void * token");

enum { S_FREE = 0, S_OPEN, S_CLOSED, S_RETIRED };

typedef struct slot {
  _Atomic int64_t live_b, live_n;
  _Atomic uint32_t gen;
  uint8_t state;
  uint8_t outcome;
  uint16_t queue;
  uint32_t next_free; /* index + 1, 0 = end */
  uint32_t pad_;
  uint64_t seq, tag;
  uint64_t end_b, end_n;
  uint64_t deadline;
} __attribute__((aligned(SLUICE__CACHELINE))) slot;

typedef struct sink {
  _Atomic int64_t live_b, live_n;
} sink;

typedef struct agg {
  uint64_t messages, with_residual, bytes_at_end, objects_at_end;
  uint64_t pending, cached, leaked, bytes_leaked, objects_leaked;
  uint64_t win_msgs, win_b, win_n;
  uint64_t conv_msgs;  /* messages in the consecutive windows above */
  uint64_t conv_bytes; /* their residual after grace */
  unsigned above;     /* consecutive windows above the threshold */
  int leaking;
  double last_bpm, last_opm;
} agg;

/* A callback to run once the lock is released. */
typedef struct note {
  int kind; /* 1 residual, 2 verdict */
  sluice_prof_residual r;
  uint16_t queue;
  uint8_t outcome;
  double bpm, opm;
  uint64_t msgs;
} note;

#define MAX_NOTES 64

typedef struct notes {
  note n[MAX_NOTES];
  int len;
  sluice_prof_residual_fn rfn; /* callbacks, read under the lock */
  void *ruser;
  sluice_prof_leak_fn lfn;
  void *luser;
} notes;

static struct {
  pthread_mutex_t mu;
  slot *slots;
  uint32_t n_slots;
  uint32_t free_head;
  uint32_t n_open, n_closed, n_retired;
  uint64_t refused;
  uint32_t *ring;
  uint32_t ring_cap, ring_head, ring_len;
  char **queues; /* [0] "", [1..max] names, [max+1] "(other)" */
  uint32_t n_queues, max_queues, n_q; /* n_q = max_queues + 2 */
  agg *aggs;   /* [n_q * N_OUTCOMES] */
  sink *sinks; /* [n_q * N_OUTCOMES] */
  /* configuration */
  int64_t grace_ns; /* < 0: re-check at once */
  uint64_t threshold;
  unsigned window, windows;
  sluice_prof_residual_fn on_residual;
  void *residual_user;
  sluice_prof_leak_fn on_leak;
  void *leak_user;
} S = {.mu = PTHREAD_MUTEX_INITIALIZER};

static const char *const outcome_names[SLUICE__N_OUTCOMES] = {
    "ack", "nack", "reject", "defer", "stale", "error"};

const char *sluice__outcome_name(int o) {
  return o >= 0 && o < SLUICE__N_OUTCOMES ? outcome_names[o] : "?";
}

int sluice__scopes_init(size_t max_scopes, size_t max_pending,
                        size_t max_queues) {
  if (S.slots) return 0;
  uint32_t nq = (uint32_t)max_queues + 2;
  slot *sl = sluice__calloc(max_scopes, sizeof(slot));
  uint32_t *ring = sluice__calloc(max_pending, sizeof(uint32_t));
  char **queues = sluice__calloc(nq, sizeof(char *));
  agg *aggs = sluice__calloc((size_t)nq * SLUICE__N_OUTCOMES, sizeof(agg));
  sink *sinks =
      sluice__calloc((size_t)nq * SLUICE__N_OUTCOMES, sizeof(sink));
  if (!sl || !ring || !queues || !aggs || !sinks) goto oom;
  queues[0] = sluice__strdup("");
  queues[nq - 1] = sluice__strdup("(other)");
  if (!queues[0] || !queues[nq - 1]) goto oom;
  for (uint32_t i = 0; i < max_scopes; i++) {
    sl[i].next_free = i + 2 <= max_scopes ? i + 2 : 0;
    atomic_init(&sl[i].gen, 1);
  }
  pthread_mutex_lock(&S.mu);
  S.slots = sl;
  S.n_slots = (uint32_t)max_scopes;
  S.free_head = max_scopes ? 1 : 0;
  S.ring = ring;
  S.ring_cap = (uint32_t)max_pending;
  S.queues = queues;
  S.max_queues = (uint32_t)max_queues;
  S.n_q = nq;
  S.aggs = aggs;
  S.sinks = sinks;
  pthread_mutex_unlock(&S.mu);
  atomic_fetch_add(&sluice__overhead,
                   max_scopes * sizeof(slot) + max_pending * 4 +
                       (uint64_t)nq * SLUICE__N_OUTCOMES *
                           (sizeof(agg) + sizeof(sink)));
  return 0;
oom:
  if (queues) {
    sluice__free(queues[0]);
    sluice__free(queues[nq - 1]);
  }
  sluice__free(sl);
  sluice__free(ring);
  sluice__free(queues);
  sluice__free(aggs);
  sluice__free(sinks);
  return SLUICE_ENOMEM;
}

void sluice__scopes_configure(const sluice_prof_opts *o) {
  pthread_mutex_lock(&S.mu);
  S.grace_ns = o->grace_ms < 0 ? -1 : (int64_t)o->grace_ms * 1000000;
  S.threshold = o->leak_threshold;
  S.window = o->leak_window;
  S.windows = o->leak_windows;
  S.on_residual = o->on_residual;
  S.residual_user = o->residual_user;
  S.on_leak = o->on_leak;
  S.leak_user = o->leak_user;
  pthread_mutex_unlock(&S.mu);
}

void sluice__scopes_lock_all(void) {
  pthread_mutex_lock(&S.mu);
}

void sluice__scopes_unlock_all(void) {
  pthread_mutex_unlock(&S.mu);
}

/* ------------------------------------------------------------------------ */
/* Hot path: credit and debit (any thread, no lock). */

uint32_t sluice__scope_ref(uint64_t handle) {
  uint32_t idx = (uint32_t)handle;
  if (!S.slots || idx >= S.n_slots) return 0;
  if (atomic_load_explicit(&S.slots[idx].gen, memory_order_acquire) !=
      (uint32_t)(handle >> 32))
    return 0;
  return idx + 1;
}

void sluice__scope_credit(uint32_t ref, int64_t bytes, int64_t objects) {
  _Atomic int64_t *b, *n;
  if (ref & SLUICE__SINK) {
    sink *k = &S.sinks[ref & ~SLUICE__SINK];
    b = &k->live_b;
    n = &k->live_n;
  } else {
    slot *s = &S.slots[ref - 1];
    b = &s->live_b;
    n = &s->live_n;
  }
  if (bytes) atomic_fetch_add_explicit(b, bytes, memory_order_relaxed);
  if (objects) atomic_fetch_add_explicit(n, objects, memory_order_relaxed);
}

void sluice__scope_flush(sluice__tls *t) {
  if (!t->pend_ref) return;
  if (t->pend_b || t->pend_n)
    sluice__scope_credit(t->pend_ref, t->pend_b, t->pend_n);
  t->pend_ref = 0;
  t->pend_b = t->pend_n = 0;
}

/* The calling thread's current scope becomes s. */
static void set_scope(sluice_prof_scope s) {
  sluice__tls_set_scope(&sluice__t, s);
}

/* ------------------------------------------------------------------------ */
/* Under S.mu. */

static agg *agg_of(uint32_t q, uint32_t o) {
  return &S.aggs[q * SLUICE__N_OUTCOMES + o];
}

static uint16_t queue_index(const char *name) {
  if (!name || !*name) return 0;
  for (uint32_t i = 1; i <= S.n_queues; i++)
    if (!strcmp(S.queues[i], name)) return (uint16_t)i;
  if (S.n_queues < S.max_queues) {
    char *d = sluice__strdup(name);
    if (d) {
      S.queues[++S.n_queues] = d;
      return (uint16_t)S.n_queues;
    }
  }
  return (uint16_t)(S.n_q - 1);
}

static void slot_free(uint32_t idx) {
  slot *s = &S.slots[idx];
  s->state = S_FREE;
  s->next_free = S.free_head;
  S.free_head = idx + 1;
}

static note *note_add(notes *ns) {
  return ns->len < MAX_NOTES ? &ns->n[ns->len++] : NULL;
}

static void residual_note(notes *ns, const slot *s, int after_grace,
                          uint64_t b, uint64_t n) {
  if (!S.on_residual) return;
  note *x = note_add(ns);
  if (!x) return;
  x->kind = 1;
  x->r.queue = S.queues[s->queue];
  x->r.seq = s->seq;
  x->r.delivery_tag = s->tag;
  x->r.outcome = s->outcome;
  x->r.after_grace = after_grace;
  x->r.bytes = b;
  x->r.objects = n;
  x->r.bytes_at_end = s->end_b;
  x->r.objects_at_end = s->end_n;
}

/* Bytes still live from ended scopes of queue q, outcome o: the sink and
 * the retired slots. O(max_scopes); run once per full window at most. */
static uint64_t retained_bytes(uint16_t q, uint8_t o) {
  int64_t b = atomic_load_explicit(
      &S.sinks[(size_t)q * SLUICE__N_OUTCOMES + o].live_b,
      memory_order_relaxed);
  for (uint32_t i = 0; i < S.n_slots; i++) {
    const slot *s = &S.slots[i];
    if (s->state == S_RETIRED && s->queue == q && s->outcome == o)
      b += atomic_load_explicit(&s->live_b, memory_order_relaxed);
  }
  return b > 0 ? (uint64_t)b : 0;
}

/* One message's final residual enters its queue/outcome window. */
static void window_add(notes *ns, uint16_t q, uint8_t o, uint64_t b,
                       uint64_t n) {
  agg *a = agg_of(q, o);
  a->win_msgs++;
  a->win_b += b;
  a->win_n += n;
  if (a->win_msgs < S.window) return;
  a->last_bpm = (double)a->win_b / (double)a->win_msgs;
  a->last_opm = (double)a->win_n / (double)a->win_msgs;
  if (a->last_bpm >= (double)S.threshold) {
    a->above++;
    a->conv_msgs += a->win_msgs;
    a->conv_bytes += a->win_b;
  } else {
    a->above = 0;
    a->conv_msgs = a->conv_bytes = 0;
    a->leaking = 0;
  }
  a->win_msgs = a->win_b = a->win_n = 0;
  /* Convicted only if what those messages left is mostly still there: a
   * cache that outlives the grace period but is evicted later (an LRU)
   * keeps its retained bytes bounded and is not a leak. */
  if (!a->leaking && a->above >= S.windows &&
      2 * retained_bytes(q, o) >= a->conv_bytes) {
    a->leaking = 1;
    note *x = note_add(ns);
    if (x) {
      x->kind = 2;
      x->queue = q;
      x->outcome = o;
      x->bpm = a->last_bpm;
      x->opm = a->last_opm;
      x->msgs = a->conv_msgs;
    }
  }
}

static void recheck(notes *ns, uint32_t idx) {
  slot *s = &S.slots[idx];
  agg *a = agg_of(s->queue, s->outcome);
  a->pending--;
  S.n_closed--;
  int64_t n = atomic_load_explicit(&s->live_n, memory_order_relaxed);
  int64_t b = atomic_load_explicit(&s->live_b, memory_order_relaxed);
  if (n < 0) n = 0;
  if (b < 0) b = 0;
  residual_note(ns, s, 1, (uint64_t)b, (uint64_t)n);
  if (n == 0) {
    a->cached++;
    window_add(ns, s->queue, s->outcome, 0, 0);
    slot_free(idx);
  } else {
    a->leaked++;
    a->bytes_leaked += (uint64_t)b;
    a->objects_leaked += (uint64_t)n;
    window_add(ns, s->queue, s->outcome, (uint64_t)b, (uint64_t)n);
    s->state = S_RETIRED;
    S.n_retired++;
  }
}

static uint32_t ring_pop(void) {
  uint32_t idx = S.ring[S.ring_head];
  S.ring_head = (S.ring_head + 1) % S.ring_cap;
  S.ring_len--;
  return idx;
}

/* Re-check the scopes whose grace period is over (all when force). */
static size_t process_due(notes *ns, uint64_t now, int force) {
  size_t done = 0;
  while (S.ring_len && ns->len <= MAX_NOTES - 4) {
    slot *s = &S.slots[S.ring[S.ring_head]];
    if (!force && s->deadline > now) break;
    recheck(ns, ring_pop());
    done++;
  }
  return done;
}

static void sweep_visit(uintptr_t key, sluice__rec *r, void *arg) {
  (void)key;
  (void)arg;
  if (!r->scope || (r->scope & SLUICE__SINK)) return;
  slot *s = &S.slots[r->scope - 1];
  if (s->state != S_RETIRED) return;
  uint32_t k = (uint32_t)s->queue * SLUICE__N_OUTCOMES + s->outcome;
  r->scope = SLUICE__SINK | k;
  sluice__scope_credit(r->scope, (int64_t)r->size, 1);
  atomic_fetch_sub_explicit(&s->live_b, (int64_t)r->size,
                            memory_order_relaxed);
  atomic_fetch_sub_explicit(&s->live_n, 1, memory_order_relaxed);
}

/* Give back retired slots: those whose blocks are all gone, and, when
 * `full`, all of them after moving their blocks to the sinks. */
static void reclaim(int full) {
  if (full && S.n_retired) sluice__table_foreach(sweep_visit, NULL);
  for (uint32_t i = 0; i < S.n_slots && S.n_retired; i++) {
    slot *s = &S.slots[i];
    if (s->state == S_RETIRED &&
        atomic_load_explicit(&s->live_n, memory_order_relaxed) == 0) {
      S.n_retired--;
      slot_free(i);
    }
  }
}

/* ------------------------------------------------------------------------ */
/* Callbacks, outside the lock. */

typedef struct site_acc {
  uint32_t stack;
  int64_t n, b;
} site_acc;

typedef struct verdict_acc {
  site_acc *v;
  size_t len, cap;
  uint64_t retained_b, retained_n;
} verdict_acc;

static void verdict_visit(const sluice__resid_key *k, uint64_t size,
                          void *arg) {
  verdict_acc *a = arg;
  a->retained_b += size;
  a->retained_n++;
  if (!k->stack) return;
  for (size_t i = 0; i < a->len; i++) {
    if (a->v[i].stack == k->stack) {
      a->v[i].n++;
      a->v[i].b += (int64_t)size;
      return;
    }
  }
  if (a->len == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 16;
    site_acc *v = sluice__realloc(a->v, cap * sizeof(*v));
    if (!v) return;
    a->v = v;
    a->cap = cap;
  }
  a->v[a->len++] = (site_acc){k->stack, 1, (int64_t)size};
}

static void fire_verdict(const note *x, sluice_prof_leak_fn fn, void *user) {
  sluice__enter_guard();
  verdict_acc acc = {0};
  sluice__residual_collect(x->queue, SLUICE_PROF_OUTCOME_BIT(x->outcome),
                           verdict_visit, &acc);
  uint64_t rate = sluice__rate();
  sluice__symtab *st = acc.len ? sluice__sym_open() : NULL;
  /* Chains of names; stacks that read the same are one site. */
  sluice__buf *chains = acc.len ? sluice__calloc(acc.len, sizeof *chains) : NULL;
  size_t m = 0;
  for (size_t i = 0; chains && i < acc.len; i++) {
    sluice__unbias(acc.v[i].n, acc.v[i].b, rate, &acc.v[i].n, &acc.v[i].b);
    sluice__buf c = {0};
    sluice__put_chain(&c, st, acc.v[i].stack, 4);
    size_t j = 0;
    while (j < m && (!c.data || !chains[j].data ||
                     strcmp(chains[j].data, c.data)))
      j++;
    if (j < m) {
      acc.v[j].n += acc.v[i].n;
      acc.v[j].b += acc.v[i].b;
      sluice__buf_free(&c);
    } else {
      acc.v[m] = acc.v[i];
      chains[m++] = c;
    }
  }
  for (size_t i = 1; i < m; i++) /* biggest first */
    for (size_t j = i; j > 0 && acc.v[j].b > acc.v[j - 1].b; j--) {
      site_acc t = acc.v[j];
      acc.v[j] = acc.v[j - 1];
      acc.v[j - 1] = t;
      sluice__buf c = chains[j];
      chains[j] = chains[j - 1];
      chains[j - 1] = c;
    }
  size_t ns = m < 5 ? m : 5;
  sluice_prof_site sites[5];
  for (size_t i = 0; i < ns; i++) {
    sluice__frame leaf;
    sites[i].stack = chains[i].data ? chains[i].data : "?";
    sites[i].function = sluice__stack_sframes(st, acc.v[i].stack, &leaf, 1)
                            ? leaf.func
                            : "?";
    sites[i].bytes = (uint64_t)acc.v[i].b;
    sites[i].objects = (uint64_t)acc.v[i].n;
  }
  sluice_prof_leak v = {
      .queue = S.queues[x->queue],
      .outcome = x->outcome,
      .bytes_per_message = x->bpm,
      .objects_per_message = x->opm,
      .messages = x->msgs,
      .retained_bytes = acc.retained_b,
      .retained_objects = acc.retained_n,
      .n_sites = ns,
      .sites = sites,
  };
  sluice__leave_guard();
  if (fn) {
    fn(&v, user);
  } else {
    sluice__buf b = {0};
    sluice__enter_guard();
    sluice__buf_printf(&b,
                       "sluice-prof: LEAK queue=%s outcome=%s: %.1f B and "
                       "%.2f objects per message over %llu messages, "
                       "%llu B retained",
                       *v.queue ? v.queue : "-",
                       sluice__outcome_name(v.outcome), v.bytes_per_message,
                       v.objects_per_message,
                       (unsigned long long)v.messages,
                       (unsigned long long)v.retained_bytes);
    for (size_t i = 0; i < ns; i++)
      sluice__buf_printf(&b, "%s%s (%llu B)", i ? ", " : "; top sites: ",
                         sites[i].stack, (unsigned long long)sites[i].bytes);
    sluice__buf_putc(&b, '\n');
    if (!b.oom) {
      ssize_t w = write(2, b.data, b.len);
      (void)w;
    }
    sluice__buf_free(&b);
    sluice__leave_guard();
  }
  sluice__enter_guard();
  if (st) sluice__sym_close(st);
  for (size_t i = 0; i < m; i++) sluice__buf_free(&chains[i]);
  sluice__free(chains);
  sluice__free(acc.v);
  sluice__leave_guard();
}

static void dispatch(notes *ns) {
  for (int i = 0; i < ns->len; i++) {
    note *x = &ns->n[i];
    if (x->kind == 1 && ns->rfn) ns->rfn(&x->r, ns->ruser);
    if (x->kind == 2) fire_verdict(x, ns->lfn, ns->luser);
  }
}

/* Start collecting notes; call with S.mu held. */
static void notes_init(notes *ns) {
  ns->len = 0;
  ns->rfn = S.on_residual;
  ns->ruser = S.residual_user;
  ns->lfn = S.on_leak;
  ns->luser = S.leak_user;
}

/* ------------------------------------------------------------------------ */
/* Public API. */

sluice_prof_scope sluice_prof_scope_begin(const char *queue, uint64_t seq,
                                          uint64_t tag) {
  if (!(sluice__flags_now() & SLUICE__F_REC) || !S.slots) return 0;
  notes ns;
  sluice__enter_guard();
  pthread_mutex_lock(&S.mu);
  notes_init(&ns);
  if (!S.free_head) reclaim(0);
  if (!S.free_head) reclaim(1);
  if (!S.free_head && S.ring_len) {
    /* Every slot is open or pending: re-check the oldest pending now. */
    recheck(&ns, ring_pop());
    if (!S.free_head) reclaim(1);
  }
  sluice_prof_scope h = 0;
  if (S.free_head) {
    uint32_t idx = S.free_head - 1;
    slot *s = &S.slots[idx];
    S.free_head = s->next_free;
    uint32_t gen = atomic_load_explicit(&s->gen, memory_order_relaxed) + 1;
    if (!gen) gen = 1;
    atomic_store_explicit(&s->gen, gen, memory_order_release);
    s->state = S_OPEN;
    s->queue = queue_index(queue);
    s->outcome = 0;
    s->seq = seq;
    s->tag = tag;
    s->end_b = s->end_n = 0;
    S.n_open++;
    h = ((uint64_t)gen << 32) | idx;
  } else {
    S.refused++;
  }
  pthread_mutex_unlock(&S.mu);
  sluice__leave_guard();
  dispatch(&ns);
  return h;
}

sluice_prof_scope sluice_prof_scope_enter(sluice_prof_scope s) {
  sluice_prof_scope prev = sluice__t.scope;
  set_scope(s);
  return prev;
}

sluice_prof_scope sluice_prof_scope_current(void) {
  return sluice__t.scope;
}

/* The slot of a live handle, or NULL. Under S.mu. */
static slot *slot_of(sluice_prof_scope h) {
  uint32_t idx = (uint32_t)h;
  if (!S.slots || idx >= S.n_slots) return NULL;
  slot *s = &S.slots[idx];
  if (atomic_load_explicit(&s->gen, memory_order_relaxed) !=
          (uint32_t)(h >> 32) ||
      s->state != S_OPEN)
    return NULL;
  return s;
}

int sluice_prof_scope_usage(sluice_prof_scope h, uint64_t *bytes,
                            uint64_t *objects) {
  sluice__scope_flush(&sluice__t); /* this thread's pending credits */
  pthread_mutex_lock(&S.mu);
  slot *s = slot_of(h);
  int64_t b = 0, n = 0;
  if (s) {
    b = atomic_load_explicit(&s->live_b, memory_order_relaxed);
    n = atomic_load_explicit(&s->live_n, memory_order_relaxed);
  }
  pthread_mutex_unlock(&S.mu);
  if (bytes) *bytes = b > 0 ? (uint64_t)b : 0;
  if (objects) *objects = n > 0 ? (uint64_t)n : 0;
  return s ? 0 : SLUICE_EINVAL;
}

int sluice_prof_scope_end(sluice_prof_scope h, int outcome,
                          sluice_prof_residual *out) {
  if (sluice__t.scope == h) set_scope(0);
  if (outcome < 0 || outcome >= SLUICE__N_OUTCOMES)
    outcome = SLUICE_OUTCOME_ERROR;
  notes ns;
  sluice__enter_guard();
  uint64_t now = sluice__now_ns();
  pthread_mutex_lock(&S.mu);
  notes_init(&ns);
  slot *s = slot_of(h);
  if (!s) {
    pthread_mutex_unlock(&S.mu);
    sluice__leave_guard();
    return SLUICE_EINVAL;
  }
  uint32_t idx = (uint32_t)h;
  /* New allocations through the old handle no longer count. */
  atomic_store_explicit(&s->gen, (uint32_t)(h >> 32) + 1,
                        memory_order_release);
  S.n_open--;
  s->outcome = (uint8_t)outcome;
  int64_t n = atomic_load_explicit(&s->live_n, memory_order_relaxed);
  int64_t b = atomic_load_explicit(&s->live_b, memory_order_relaxed);
  if (n < 0) n = 0;
  if (b < 0) b = 0;
  s->end_b = (uint64_t)b;
  s->end_n = (uint64_t)n;
  agg *a = agg_of(s->queue, s->outcome);
  a->messages++;
  if (out) {
    memset(out, 0, sizeof *out);
    out->queue = S.queues[s->queue];
    out->seq = s->seq;
    out->delivery_tag = s->tag;
    out->outcome = outcome;
    out->bytes = out->bytes_at_end = (uint64_t)b;
    out->objects = out->objects_at_end = (uint64_t)n;
  }
  residual_note(&ns, s, 0, (uint64_t)b, (uint64_t)n);
  if (n == 0) {
    window_add(&ns, s->queue, s->outcome, 0, 0);
    slot_free(idx);
  } else {
    a->with_residual++;
    a->bytes_at_end += (uint64_t)b;
    a->objects_at_end += (uint64_t)n;
    a->pending++;
    s->state = S_CLOSED;
    S.n_closed++;
    if (S.grace_ns < 0 || !S.ring_cap) {
      recheck(&ns, idx);
    } else {
      if (S.ring_len == S.ring_cap) recheck(&ns, ring_pop()); /* early */
      s->deadline = now + (uint64_t)S.grace_ns;
      S.ring[(S.ring_head + S.ring_len) % S.ring_cap] = idx;
      S.ring_len++;
    }
  }
  process_due(&ns, now, 0);
  if (S.n_retired > S.n_slots / 2) reclaim(1);
  pthread_mutex_unlock(&S.mu);
  sluice__leave_guard();
  dispatch(&ns);
  return 0;
}

size_t sluice_prof_poll(void) {
  if (!S.slots) return 0;
  notes ns;
  size_t done = 0, batch;
  uint64_t now = sluice__now_ns();
  do { /* in batches: the callbacks of one batch fit in `ns` */
    sluice__enter_guard();
    pthread_mutex_lock(&S.mu);
    notes_init(&ns);
    batch = process_due(&ns, now, 0);
    pthread_mutex_unlock(&S.mu);
    sluice__leave_guard();
    dispatch(&ns);
    done += batch;
  } while (batch);
  return done;
}

/* ------------------------------------------------------------------------ */
/* Hooks for the consumer. */

static void *hk_begin(void *user, const sluice_delivery_info *info) {
  (void)user;
  sluice_prof_scope s = sluice_prof_scope_begin(
      info ? info->queue : NULL, info ? info->seq : 0,
      info ? info->delivery_tag : 0);
  if (!s) return NULL;
  sluice_prof_scope_enter(s);
  return (void *)(uintptr_t)s;
}

static void hk_resume(void *user, void *token) {
  (void)user;
  if (token) sluice_prof_scope_enter((sluice_prof_scope)(uintptr_t)token);
}

static void hk_suspend(void *user, void *token) {
  (void)user;
  if (token && sluice__t.scope == (sluice_prof_scope)(uintptr_t)token)
    set_scope(0);
}

static void hk_end(void *user, void *token, const sluice_delivery_info *info,
                   int outcome) {
  (void)user;
  (void)info;
  if (token)
    sluice_prof_scope_end((sluice_prof_scope)(uintptr_t)token, outcome, NULL);
}

static const sluice_delivery_hooks hooks = {hk_begin, hk_resume, hk_suspend,
                                            hk_end, NULL};

const sluice_delivery_hooks *sluice_prof_delivery_hooks(void) {
  return &hooks;
}

/* ------------------------------------------------------------------------ */
/* Reading. */

typedef struct collect_arg {
  int queue;
  unsigned outcomes;
  void (*fn)(const sluice__resid_key *k, uint64_t size, void *arg);
  void *arg;
} collect_arg;

static void collect_visit(uintptr_t key, sluice__rec *r, void *arg) {
  (void)key;
  collect_arg *c = arg;
  if (!r->scope) return;
  sluice__resid_key k = {.stack = r->stack};
  if (r->scope & SLUICE__SINK) {
    uint32_t i = r->scope & ~SLUICE__SINK;
    k.queue = (uint16_t)(i / SLUICE__N_OUTCOMES);
    k.outcome = (uint8_t)(i % SLUICE__N_OUTCOMES);
  } else {
    const slot *s = &S.slots[r->scope - 1];
    if (s->state != S_CLOSED && s->state != S_RETIRED) return;
    k.queue = s->queue;
    k.outcome = s->outcome;
    k.seq = s->seq;
  }
  if (c->queue >= 0 && k.queue != c->queue) return;
  if (c->outcomes && !(c->outcomes & SLUICE_PROF_OUTCOME_BIT(k.outcome)))
    return;
  c->fn(&k, r->size, c->arg);
}

void sluice__residual_collect(int queue, unsigned outcomes,
                              void (*fn)(const sluice__resid_key *k,
                                         uint64_t size, void *arg),
                              void *arg) {
  if (!S.slots) return;
  collect_arg c = {queue, outcomes, fn, arg};
  pthread_mutex_lock(&S.mu);
  sluice__table_foreach(collect_visit, &c);
  pthread_mutex_unlock(&S.mu);
}

const char *sluice__queue_name(unsigned idx) {
  return S.queues && idx < S.n_q && S.queues[idx] ? S.queues[idx] : "?";
}

int sluice__queue_find(const char *name) {
  if (!S.slots) return -1;
  int r = -1;
  pthread_mutex_lock(&S.mu);
  for (uint32_t i = 0; i < S.n_q; i++)
    if (S.queues[i] && !strcmp(S.queues[i], name ? name : "")) {
      r = (int)i;
      break;
    }
  pthread_mutex_unlock(&S.mu);
  return r;
}

void sluice__scopes_stats(sluice_prof_memstats *ms) {
  if (!S.slots) return;
  pthread_mutex_lock(&S.mu);
  ms->scopes_open = S.n_open;
  ms->scopes_pending = S.n_closed;
  /* Retired slots whose blocks are all gone are given back lazily: count
   * only those that still hold memory. */
  uint64_t retained = 0;
  for (uint32_t i = 0; i < S.n_slots && retained < S.n_retired; i++)
    if (S.slots[i].state == S_RETIRED &&
        atomic_load_explicit(&S.slots[i].live_n, memory_order_relaxed) > 0)
      retained++;
  ms->scopes_retained = retained;
  ms->scopes_refused = S.refused;
  pthread_mutex_unlock(&S.mu);
}

static int stats_cmp(const void *x, const void *y) {
  const sluice_prof_residual_stats *a = x, *b = y;
  int c = strcmp(a->queue, b->queue);
  if (c) return c;
  return a->outcome - b->outcome;
}

size_t sluice_prof_residual_stats_get(sluice_prof_residual_stats *out,
                                      size_t cap) {
  if (!S.slots) return 0;
  sluice_prof_poll();
  sluice__enter_guard();
  pthread_mutex_lock(&S.mu);
  size_t n_agg = (size_t)S.n_q * SLUICE__N_OUTCOMES;
  int64_t *ret = sluice__calloc(n_agg * 2, sizeof(int64_t));
  size_t total = 0;
  if (ret) {
    for (size_t i = 0; i < n_agg; i++) {
      ret[2 * i] = atomic_load(&S.sinks[i].live_b);
      ret[2 * i + 1] = atomic_load(&S.sinks[i].live_n);
    }
    for (uint32_t i = 0; i < S.n_slots; i++) {
      const slot *s = &S.slots[i];
      if (s->state != S_RETIRED) continue;
      size_t k = (size_t)s->queue * SLUICE__N_OUTCOMES + s->outcome;
      ret[2 * k] += atomic_load(&s->live_b);
      ret[2 * k + 1] += atomic_load(&s->live_n);
    }
    for (size_t i = 0; i < n_agg; i++) {
      const agg *a = &S.aggs[i];
      if (!a->messages) continue;
      if (total < cap) {
        sluice_prof_residual_stats *o = &out[total];
        memset(o, 0, sizeof *o);
        o->queue = S.queues[i / SLUICE__N_OUTCOMES];
        o->outcome = (int)(i % SLUICE__N_OUTCOMES);
        o->messages = a->messages;
        o->with_residual = a->with_residual;
        o->bytes_at_end = a->bytes_at_end;
        o->objects_at_end = a->objects_at_end;
        o->pending = a->pending;
        o->cached = a->cached;
        o->leaked = a->leaked;
        o->bytes_leaked = a->bytes_leaked;
        o->objects_leaked = a->objects_leaked;
        o->retained_bytes = ret[2 * i] > 0 ? (uint64_t)ret[2 * i] : 0;
        o->retained_objects =
            ret[2 * i + 1] > 0 ? (uint64_t)ret[2 * i + 1] : 0;
        o->window_bytes_per_message = a->last_bpm;
        o->leaking = a->leaking;
      }
      total++;
    }
  }
  pthread_mutex_unlock(&S.mu);
  sluice__free(ret);
  if (out && total && cap)
    qsort(out, total < cap ? total : cap, sizeof *out, stats_cmp);
  sluice__leave_guard();
  return total;
}
