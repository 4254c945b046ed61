/* SPDX-License-Identifier: MIT */
/* What the residual files share (prof_scope.c, prof_group.c,
 * prof_ledger.c, prof_verdict.c, prof_bg.c, prof_check.c): scopes (slots),
 * groups, sinks, kinds, and the one lock that guards their cold fields.
 *
 * Counting, in one paragraph. Every tracked block inside a scope is owned
 * by a reference: a slot (the scope of one message) while that message's
 * memory is followed individually, or a sink (a generation of one group)
 * once a sweep has moved it there. A block grown by realloc in other scopes
 * has several owners, one per growth layer (prof_ledger.c). A slot's
 * counters are exact; when its scope ends, the slot's live bytes join its
 * group's `ret` counters, and from then on every debit of the slot also
 * debits the group (the ENDED bit in the same atomic word decides, so a
 * free racing with the end is counted exactly once). A group's retained
 * memory is therefore `ret + sum(sinks)`, exact at all times, in O(1). */
#ifndef SLUICE_PROF_RESID_H
#define SLUICE_PROF_RESID_H

#include "prof_internal.h"

#define N_OUT SLUICE__N_OUTCOMES
/* Sink generations per group (survivor age; see sweep). */
#define N_GEN 4
/* Points kept on a group's growth curve (decimated to span the horizon). */
#define CURVE_CAP 32
/* Slots are allocated in chunks, lazily, up to max_scopes. */
#define SLOT_SHIFT 10
#define SLOT_CHUNK (1u << SLOT_SHIFT)
#define GROUP_SHIFT 6
#define GROUP_CHUNK (1u << GROUP_SHIFT)
/* Longest key value kept (longer ones are cut). */
#define KEY_MAX 127
/* Callbacks collected under the lock, run after it. */
#define MAX_NOTES 48
#define NOTE_ARENA 4096

/* live_b / live_n: BIAS + value, and ENDED once the scope has ended. */
#define LIVE_BIAS ((int64_t)1 << 61)
#define LIVE_ENDED ((int64_t)1 << 62)

static inline int64_t live_value(int64_t raw) {
  return (raw & ~LIVE_ENDED) - LIVE_BIAS;
}

enum { S_FREE = 0, S_OPEN, S_CLOSED, S_RETIRED };

typedef struct slot {
  _Atomic int64_t live_b, live_n;
  _Atomic int32_t xrefs;   /* growth layers charged to this slot */
  _Atomic uint32_t gen;    /* handle generation */
  _Atomic uint8_t resumed; /* resume hook seen (deferred work entered) */
  _Atomic uint8_t capture; /* adaptive stacks: every block at weight 1 */
  uint8_t state, outcome;
  /* The thread of the begin hook pins the slot with this flag instead of
   * a reference in xrefs: set before the generation is published, cleared
   * by that thread after its last credit (see hk_begin). */
  _Atomic uint8_t owned;
  uint32_t group;           /* set when the scope ends */
  uint32_t kind;            /* (queue, key value), set at begin */
  uint32_t next_free;       /* free list, index + 1 */
  uint32_t prev, next;      /* the group's survivors, index + 1 */
  uint32_t linked;          /* in the group's survivors list */
  const void *begin_thread; /* sluice__tls of the begin hook */
  uint64_t seq, tag;
  uint64_t end_b, end_n; /* residual at end */
  uint64_t end_msg;      /* the group's message count at the end */
  uint64_t end_ns;
  /* Growth layers moved to the group's sink while the slot waited for its
   * re-check (prof_ledger.c): still live then, counted by the re-check. */
  uint64_t folded_b, folded_n;
} __attribute__((aligned(SLUICE__CACHELINE))) slot;

/* A sink generation: blocks of retired messages of one group, swept out of
 * their slots, with the range of messages they came from. */
typedef struct sink {
  _Atomic int64_t b, n;
  _Atomic int32_t xrefs;
  uint32_t pad_;
  uint64_t first_msg, last_msg, first_ns, last_ns;
} __attribute__((aligned(SLUICE__CACHELINE))) sink;

typedef struct curve_pt {
  uint64_t m; /* messages of the grp */
  int64_t b, n;
  uint64_t t; /* ns */
} curve_pt;

typedef struct grp {
  _Atomic int64_t ret_b, ret_n; /* ended slots' live memory */
  char pad_[SLUICE__CACHELINE - 16];
  sink gens[N_GEN];
  uint32_t kind;
  uint8_t used, outcome, state, run;
  uint8_t fired; /* the LEAK verdict was announced for this run */
  uint8_t pad2_[3];
  uint32_t head, tail; /* survivors: ended slots with memory, by end */
  uint32_t cur_gen;    /* sink generation folds fill now (0..N_GEN-1) */
  uint32_t n_pts;
  uint32_t next_free; /* free list of groups, index + 1 */
  /* The current sweep's plan: retired slots with end_msg in
   * [sweep_lo + i * sweep_step, ...) go to generation sweep_gen[i]. */
  uint8_t sweep_nb;
  uint8_t sweep_gen[N_GEN];
  uint64_t sweep_lo, sweep_step;
  uint64_t messages, with_residual, bytes_at_end, objects_at_end;
  uint64_t pending, cached, leaked, bytes_leaked, objects_leaked;
  uint64_t skipped;  /* ended without an after-grace re-check */
  uint64_t interval; /* messages between curve points */
  uint64_t first_ns;
  uint64_t fired_msgs; /* messages when on_leak last ran (0: never) */
  curve_pt pts[CURVE_CAP];
  curve_pt run_start; /* where the current growth run began */
  /* The evaluated state (see prof_group.c). */
  double bpm, opm; /* per message: slope over the horizon or run */
  uint64_t slope_msgs, slope_ns; /* span of that slope */
  uint64_t level_msgs, level_ns; /* GROWING: left before the horizon */
  uint64_t age_msgs, age_ns;     /* oldest survivors (at least) */
  int64_t plateau_b;             /* BOUNDED: the level */
} __attribute__((aligned(SLUICE__CACHELINE))) grp;

/* A kind of message: (queue, key value). Key values are bounded per
 * queue; the rest share the queue's "(other)" kind. */
typedef struct kind {
  uint8_t used, other;
  uint16_t queue;
  uint32_t groups[N_OUT]; /* group index + 1 per outcome, 0 = none yet */
  /* Open scopes and begins of this kind. Begins through a thread's kind
   * cache are counted in its entry until the entry is dropped (prof_scope.c,
   * sluice__kind_caches_drop): `open` may then be below zero here, and the
   * sum is exact. */
  int64_t open;
  uint64_t begins;
  char *key; /* NULL: no key */
  /* Messages still captured at weight 1: written under R.mu, read without
   * it by begins through a thread's cache (nonzero: they take the lock). */
  _Atomic uint64_t capture_left;
  uint64_t capture_next; /* begins of this kind before re-arming */
  uint64_t last_ns;      /* last end (eviction picks the oldest) */
} kind;

typedef struct qrow {
  char *name;
  char *key_name;  /* the key's name ("type", "header:x-kind"), or NULL */
  uint32_t *keys;  /* kinds of this queue's key values [max_keys] */
  uint32_t nokey;  /* kind of messages without a key, index + 1 */
  uint32_t other;  /* kind "(other)" key values, index + 1 */
  uint32_t n_keys; /* key values with a kind of their own */
  uint32_t misses; /* lookups that fell to "(other)" since an eviction */
} qrow;

/* A callback to run once the lock is released. */
enum { NOTE_RESIDUAL = 1, NOTE_VERDICT, NOTE_WARN };

typedef struct note {
  int kind;
  sluice_prof_residual r; /* NOTE_RESIDUAL */
  uint32_t group;         /* NOTE_VERDICT */
  uint64_t n;             /* NOTE_WARN: allocations seen */
} note;

typedef struct notes {
  note n[MAX_NOTES];
  int len;
  char arena[NOTE_ARENA]; /* copies of key strings for the callbacks */
  size_t arena_len;
  sluice_prof_residual_fn rfn;
  void *ruser;
} notes;

typedef struct resid_state {
  sluice__lock mu; /* a spinlock: held briefly, never across a callback */
  /* slots */
  slot *_Atomic *chunks; /* [max_chunks] */
  uint32_t max_slots, n_slots, free_head;
  uint32_t n_closed, n_retired;
  int64_t n_open; /* plus what threads' kind caches hold (see kind.open) */
  uint64_t refused;
  /* re-check ring (grows up to max_pending) */
  uint32_t *ring;
  uint32_t ring_cap, ring_max, ring_head, ring_len;
  uint64_t skipped, dropped;
  /* queues, kinds, groups, sinks */
  qrow *queues; /* [0] "", [1..max_queues], [max_queues+1] "(other)" */
  uint32_t n_queues, max_queues, n_q;
  kind *kinds;
  uint32_t max_kinds, n_kinds;
  grp *_Atomic *gchunks; /* groups in chunks of GROUP_CHUNK */
  uint32_t max_groups, n_groups, groups_free, groups_used;
  uint64_t groups_overflow, keys_overflow, keys_evicted;
  uint64_t sweeps;
  uint32_t scan_retired; /* n_retired after the last cheap reclaim */
  /* configuration */
  int64_t grace_ns;  /* < 0: re-check at once */
  uint64_t slack_ns; /* the clock's resolution, added to deadlines */
  double threshold;
  uint64_t window;
  uint64_t horizon_msgs, horizon_ns;
  uint64_t adaptive;
  uint32_t max_keys;
  sluice_prof_residual_fn on_residual;
  void *residual_user;
  sluice_prof_leak_fn on_leak;
  void *leak_user;
  /* the deferred-completion warning */
  uint64_t unentered;
  int warned;
  /* Clean ends may be handed over (no per-scope callback to run at the
   * end: no on_residual, no on_leak). */
  _Atomic int fast_end;
} resid_state;

extern resid_state sluice__R SLUICE__HIDDEN;
#define R sluice__R

static inline slot *slot_at(uint32_t idx) {
  slot *c =
      atomic_load_explicit(&R.chunks[idx >> SLOT_SHIFT], memory_order_acquire);
  return &c[idx & (SLOT_CHUNK - 1)];
}

static inline int64_t slot_live_n(const slot *s) {
  return live_value(atomic_load_explicit(&s->live_n, memory_order_relaxed));
}
static inline int64_t slot_live_b(const slot *s) {
  return live_value(atomic_load_explicit(&s->live_b, memory_order_relaxed));
}
/* Nothing refers to the slot any more: it may be reused. */
static inline int slot_empty(const slot *s) {
  /* xrefs first: a thread inside the scope unpins it after its last credit
   * (sluice__scope_flush). */
  return atomic_load_explicit(&s->xrefs, memory_order_acquire) == 0 &&
         !atomic_load_explicit(&s->owned, memory_order_acquire) &&
         slot_live_n(s) == 0;
}

static inline int sink_empty(const sink *k) {
  return atomic_load_explicit(&k->n, memory_order_relaxed) == 0 &&
         atomic_load_explicit(&k->b, memory_order_relaxed) == 0 &&
         atomic_load_explicit(&k->xrefs, memory_order_relaxed) == 0;
}

static inline grp *group_at(uint32_t g) {
  grp *c =
      atomic_load_explicit(&R.gchunks[g >> GROUP_SHIFT], memory_order_acquire);
  return &c[g & (GROUP_CHUNK - 1)];
}
static inline sink *sink_of(uint32_t g, uint32_t gen) {
  return &group_at(g)->gens[gen];
}
/* The sink of a SLUICE__SINK reference. */
static inline sink *sink_at(uint32_t ref) {
  uint32_t i = SLUICE__REF_IDX(ref);
  return sink_of(i / N_GEN, i % N_GEN);
}
static inline uint32_t sink_ref(uint32_t g, uint32_t gen) {
  return SLUICE__SINK | (g * N_GEN + gen);
}

/* ---- prof_scope.c (under R.mu unless said) ------------------------------ */
void sluice__notes_init(notes *ns);
note *sluice__note_add(notes *ns);
const char *sluice__notes_str(notes *ns, const char *s);
void sluice__notes_dispatch(notes *ns);
/* Re-checks due; `force` runs them all. Returns how many ran. */
size_t sluice__process_due(notes *ns, uint64_t now, int force);
/* Free the slot (its survivors-list link included). */
void sluice__slot_free(uint32_t idx);
/* Sweep retired slots to their groups' sinks and give back empty ones. */
void sluice__reclaim(int full);
/* Ledger folding: the sink a growth layer charged to `ref` may move to
 * (`ref` an ended slot), or 0; sluice__fold_done() records the move on
 * the slot. Called with R.mu held. */
uint32_t sluice__fold_target(uint32_t ref);
void sluice__fold_done(uint32_t ref, uint64_t bytes, int objects);

/* Account the scopes ended without the lock (every thread's), oldest
 * first, while `ns` has room; returns how many. */
size_t sluice__ends_apply(notes *ns);
/* A thread exits: its queue of ended scopes is left for others to apply
 * and to reuse; its cached slot and kinds are given back. */
void sluice__endq_release(sluice__tls *t);
/* Every thread's kind-cache entries for kinds of queue q are dropped and
 * their counts moved to the kinds: their `open` and `begins` are exact
 * after, and no begin uses those entries any more. */
void sluice__kind_caches_drop(uint16_t q);
/* Begins of kind k, those counted in threads' caches included. */
uint64_t sluice__kind_begins(uint32_t k);

/* ---- prof_group.c (under R.mu) ------------------------------------------ */
int sluice__groups_init(const sluice_prof_opts *o);
/* The kind of a new scope; never fails (overflow kinds exist). */
uint32_t sluice__kind_of(const char *queue, const char *key_name,
                         const char *key, uint64_t now);
/* The group of (kind, outcome); never fails. */
uint32_t sluice__group_of(uint32_t kind, int outcome);
/* A message of group g ended at `now`; samples and evaluates the curve. */
void sluice__group_message(notes *ns, uint32_t g, uint64_t now);
/* The same, for the ends of scopes: most messages fall between two points
 * of the curve and need nothing more than the test. */
static inline uint32_t sluice__group_of_fast(uint32_t k, int outcome) {
  uint32_t g = R.kinds[k].groups[outcome];
  return g ? g - 1 : sluice__group_of(k, outcome);
}
static inline void sluice__group_message_fast(notes *ns, uint32_t gi,
                                              uint64_t now) {
  const grp *g = group_at(gi);
  if (g->n_pts && g->messages - g->pts[g->n_pts - 1].m < g->interval) return;
  sluice__group_message(ns, gi, now);
}
/* Re-evaluate every group with the live retained (no new message). */
void sluice__groups_tick(notes *ns, uint64_t now);
void sluice__group_link(uint32_t g, uint32_t idx);
void sluice__group_unlink(uint32_t g, uint32_t idx);
/* Retained now (ended slots + sinks), exact. */
void sluice__group_retained(uint32_t g, int64_t *b, int64_t *n);
/* Before a sweep: pick each group's sink generations. */
void sluice__sweep_prepare(void);
/* The sink generation a block of slot `s` (retired) is swept into. */
uint32_t sluice__sweep_target(const slot *s);
const char *sluice__state_name(int state);
/* The key values of group gi's queue and outcome, for a verdict line. */
size_t sluice__kind_summaries(uint32_t gi, sluice_prof_kind_summary *out,
                              char (*keys)[KEY_MAX + 1], size_t cap);

/* ---- prof_ledger.c --------------------------------------------------------- */
/* A realloc from `old` (size old_size; `old->scope` any kind, 0 for a
 * block the profiler did not own) to new_size, by the thread's scope `cur`
 * (slot ref or 0). Updates the owners' counters and fills `rec->scope`
 * (and the ledger). `layer_stack`: the realloc's stack for the growth
 * layer when captured at weight 1, else 0. */
void sluice__ledger_realloc(sluice__tls *t, const sluice__rec *old,
                            uint64_t old_size, uint64_t new_size, uint32_t cur,
                            uint32_t layer_stack, sluice__rec *rec);
/* The block of ledger `ref` is gone: debit every layer, free the ledger. */
void sluice__ledger_release(sluice__tls *t, uint32_t ref);
/* Visit the layers: owner ref, stack, bytes, objects (1 for the base). */
void sluice__ledger_visit(uint32_t ref,
                          void (*fn)(uint32_t owner, uint32_t stack,
                                     uint64_t bytes, int objects, void *arg),
                          void *arg);
/* Sweep: layers owned by retired slots move to sinks (R.mu held). */
void sluice__ledger_sweep(uint32_t ref);
uint64_t sluice__ledger_count(void);
uint64_t sluice__ledger_overflows(void);
void sluice__ledger_lock_all(void);
void sluice__ledger_unlock_all(void);

/* ---- prof_verdict.c (outside the lock) ----------------------------------- */
void sluice__fire_verdict(uint32_t g);
void sluice__warn_unentered(uint64_t allocations);

/* ---- prof_bg.c ------------------------------------------------------------- */
void sluice__bg_configure(long poll_ms);
void sluice__bg_ensure(void);
void sluice__bg_stop(void);
void sluice__bg_fork_child(void);

#endif /* SLUICE_PROF_RESID_H */
