/* SPDX-License-Identifier: MIT */
/* Groups and the verdict.
 *
 * A group is (queue, outcome, key value). Its messages are counted when
 * their scopes end, all the same way whatever they left, and its retained
 * memory (every ended scope's live blocks, pending ones included, plus its
 * sinks) is exact at all times. Every `interval` messages of the group a
 * point (messages, retained, time) is added to its growth curve; the curve
 * is thinned (every other point dropped, the interval doubled) so that a
 * bounded number of points spans the horizon. Because points are taken at
 * message counts and retained includes pending scopes, the curve is the
 * same at any consume speed.
 *
 * The state follows from the curve (evaluate()):
 * - ok: nothing retained;
 * - growing: the slope over the recent part of the curve (a quarter of the
 *   horizon in messages) is at least the threshold; the growth run started
 *   where that recent part began;
 * - LEAK: a growth run that has lasted the horizon in messages AND in time,
 *   with memory from messages older than the horizon still live (the age of
 *   the survivors: a cache evicts its old entries, a leak keeps them);
 *   B/message is the slope over the horizon;
 * - bounded: retained memory and no growth (a plateau: its size).
 * A group leaves LEAK as soon as the recent slope falls under the
 * threshold: nothing is sticky.
 *
 * Kinds are (queue, key value): at most max_keys values per queue have
 * groups of their own; the others go to the queue's "(other)" kind. A value
 * whose groups retain nothing may be evicted to make room for a new one
 * (its counts move to "(other)"), so the values that hold memory keep their
 * rows. Everything here runs under R.mu. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prof_resid.h"

static const char *const state_names[] = {"ok", "growing", "bounded", "LEAK"};

const char *sluice__state_name(int s) {
  return s >= 0 && s <= SLUICE_PROF_LEAK ? state_names[s] : "?";
}

const char *sluice_prof_state_name(int state) {
  return sluice__state_name(state);
}

/* ------------------------------------------------------------------------ */
/* Allocation. */

static int group_chunk_add(void) {
  if (R.n_groups >= R.max_groups) return -1;
  grp *c = sluice__aligned_calloc(SLUICE__CACHELINE, GROUP_CHUNK * sizeof(grp));
  if (!c) return -1;
  atomic_store_explicit(&R.gchunks[R.n_groups >> GROUP_SHIFT], c,
                        memory_order_release);
  atomic_fetch_add(&sluice__overhead, GROUP_CHUNK * sizeof(grp));
  return 0;
}

/* A fresh group for (kind, outcome), or UINT32_MAX. */
static uint32_t group_new(uint32_t k, int outcome) {
  uint32_t gi;
  if (R.groups_free) {
    gi = R.groups_free - 1;
    R.groups_free = group_at(gi)->next_free;
  } else {
    if (R.n_groups >= R.max_groups) return UINT32_MAX;
    if ((R.n_groups & (GROUP_CHUNK - 1)) == 0 && group_chunk_add())
      return UINT32_MAX;
    gi = R.n_groups++;
  }
  grp *g = group_at(gi);
  /* Only the counters of a recycled group hold values (all zero). */
  size_t off = offsetof(grp, kind);
  memset((char *)g + off, 0, sizeof *g - off);
  g->used = 1;
  g->kind = k;
  g->outcome = (uint8_t)outcome;
  g->interval = R.window ? R.window : 100;
  g->state = SLUICE_PROF_OK;
  for (int i = 0; i < N_GEN; i++) {
    g->gens[i].first_msg = UINT64_MAX;
    g->gens[i].last_msg = 0;
  }
  R.groups_used++;
  return gi;
}

static void group_release(uint32_t gi) {
  grp *g = group_at(gi);
  g->used = 0;
  g->next_free = R.groups_free;
  R.groups_free = gi + 1;
  R.groups_used--;
}

static uint32_t kind_new(uint16_t q, const char *key, int other) {
  if (R.n_kinds >= R.max_kinds) return UINT32_MAX;
  char *d = NULL;
  if (key) {
    size_t n = strnlen(key, KEY_MAX);
    d = sluice__malloc(n + 1);
    if (!d) return UINT32_MAX;
    memcpy(d, key, n);
    d[n] = 0;
  }
  uint32_t k = R.n_kinds++;
  kind *kd = &R.kinds[k];
  memset(kd, 0, sizeof *kd);
  kd->used = 1;
  kd->other = (uint8_t)other;
  kd->queue = q;
  kd->key = d;
  return k;
}

int sluice__groups_init(const sluice_prof_opts *o) {
  uint32_t nq = (uint32_t)o->max_queues + 2;
  uint32_t max_groups = (uint32_t)o->max_groups;
  uint32_t n_chunks = (max_groups + GROUP_CHUNK - 1) / GROUP_CHUNK;
  qrow *queues = sluice__calloc(nq, sizeof(qrow));
  kind *kinds = sluice__calloc(max_groups, sizeof(kind));
  grp *_Atomic *gchunks = sluice__calloc(n_chunks, sizeof(*gchunks));
  char *q0 = sluice__strdup(""), *qo = sluice__strdup("(other)");
  if (!queues || !kinds || !gchunks || !q0 || !qo) goto oom;
  queues[0].name = q0;
  queues[nq - 1].name = qo;
  R.queues = queues;
  R.n_q = nq;
  R.max_queues = (uint32_t)o->max_queues;
  R.kinds = kinds;
  R.max_kinds = max_groups;
  R.gchunks = gchunks;
  R.max_groups = max_groups;
  R.window = o->leak_window;
  /* Kind 0 and groups 0..N_OUT-1: the overflow rows, queue "(other)", so
   * that a scope always has a group. */
  if (kind_new((uint16_t)(nq - 1), NULL, 1) != 0) goto oom;
  for (int i = 0; i < N_OUT; i++) {
    if (group_new(0, i) != (uint32_t)i) goto oom;
    kinds[0].groups[i] = (uint32_t)i + 1;
  }
  atomic_fetch_add(&sluice__overhead, nq * sizeof(qrow) +
                                          max_groups * sizeof(kind) +
                                          n_chunks * sizeof(*gchunks));
  return 0;
oom:
  sluice__free(queues);
  sluice__free(kinds);
  sluice__free((void *)gchunks);
  sluice__free(q0);
  sluice__free(qo);
  R.queues = NULL;
  R.kinds = NULL;
  R.gchunks = NULL;
  return SLUICE_ENOMEM;
}

/* ------------------------------------------------------------------------ */
/* Queues and kinds. */

static uint16_t queue_index(const char *name) {
  if (!name || !*name) return 0;
  for (uint32_t i = 1; i <= R.n_queues; i++)
    if (!strcmp(R.queues[i].name, name)) return (uint16_t)i;
  if (R.n_queues < R.max_queues) {
    char *d = sluice__strdup(name);
    if (d) {
      R.queues[++R.n_queues].name = d;
      return (uint16_t)R.n_queues;
    }
  }
  return (uint16_t)(R.n_q - 1);
}

/* Can kind k's rows go (they retain and wait for nothing)? */
static int kind_evictable(const kind *kd) {
  if (kd->open) return 0;
  for (int o = 0; o < N_OUT; o++) {
    if (!kd->groups[o]) continue;
    const grp *g = group_at(kd->groups[o] - 1);
    if (g->pending || g->head ||
        atomic_load_explicit(&g->ret_n, memory_order_relaxed) ||
        atomic_load_explicit(&g->ret_b, memory_order_relaxed))
      return 0;
    for (int i = 0; i < N_GEN; i++)
      if (!sink_empty(&g->gens[i])) return 0;
  }
  return 1;
}

static uint32_t other_kind(qrow *qu, uint16_t q) {
  if (!qu->other) {
    uint32_t k = kind_new(q, "(other)", 1);
    if (k == UINT32_MAX) return 0;
    qu->other = k + 1;
  }
  return qu->other - 1;
}

/* Move the counts of kind `from`'s groups to kind `to`'s, free them. */
static void kind_merge(kind *from, uint32_t to) {
  for (int o = 0; o < N_OUT; o++) {
    if (!from->groups[o]) continue;
    uint32_t gi = from->groups[o] - 1;
    grp *g = group_at(gi);
    uint32_t ti = sluice__group_of(to, o);
    grp *t = group_at(ti);
    t->messages += g->messages;
    t->with_residual += g->with_residual;
    t->bytes_at_end += g->bytes_at_end;
    t->objects_at_end += g->objects_at_end;
    t->cached += g->cached;
    t->leaked += g->leaked;
    t->bytes_leaked += g->bytes_leaked;
    t->objects_leaked += g->objects_leaked;
    t->skipped += g->skipped;
    group_release(gi);
    from->groups[o] = 0;
  }
}

/* Evict the least recently seen key value of queue q whose rows retain
 * nothing; its counts move to "(other)". Returns the freed kind or
 * UINT32_MAX. */
static uint32_t evict_key(qrow *qu, uint16_t q) {
  uint32_t best = UINT32_MAX;
  uint64_t best_ns = UINT64_MAX;
  /* Threads' caches may begin scopes of this queue's kinds without the
   * lock: drop their entries first, so that the open counts are exact and
   * no cached entry names an evicted value. */
  sluice__kind_caches_drop(q);
  for (uint32_t i = 0; i < qu->n_keys; i++) {
    const kind *kd = &R.kinds[qu->keys[i]];
    if (kd->last_ns < best_ns && kind_evictable(kd)) {
      best = i;
      best_ns = kd->last_ns;
    }
  }
  if (best == UINT32_MAX) return UINT32_MAX;
  uint32_t k = qu->keys[best];
  uint32_t ok = other_kind(qu, q);
  if (!ok) return UINT32_MAX;
  kind_merge(&R.kinds[k], ok);
  R.keys_evicted++;
  return k;
}

static uint32_t key_kind(uint16_t q, const char *key_name, const char *key,
                         uint64_t now) {
  qrow *qu = &R.queues[q];
  if (key_name && !qu->key_name) qu->key_name = sluice__strdup(key_name);
  size_t n = strnlen(key, KEY_MAX);
  for (uint32_t i = 0; i < qu->n_keys; i++) {
    kind *kd = &R.kinds[qu->keys[i]];
    if (!strncmp(kd->key, key, n) && !kd->key[n]) return qu->keys[i];
  }
  uint32_t max = R.max_keys;
  if (!qu->keys && max) {
    qu->keys = sluice__calloc(max, sizeof(uint32_t));
    if (qu->keys) atomic_fetch_add(&sluice__overhead, max * sizeof(uint32_t));
  }
  uint32_t k = UINT32_MAX;
  if (qu->keys && qu->n_keys < max) {
    k = kind_new(q, key, 0);
    if (k != UINT32_MAX) qu->keys[qu->n_keys++] = k;
  } else if (qu->keys && ++qu->misses >= 16) {
    qu->misses = 0;
    k = evict_key(qu, q);
    if (k != UINT32_MAX) {
      kind *kd = &R.kinds[k];
      char *d = sluice__malloc(n + 1);
      if (d) {
        memcpy(d, key, n);
        d[n] = 0;
        sluice__free(kd->key);
        kd->key = d;
        atomic_store_explicit(&kd->capture_left, 0, memory_order_relaxed);
        kd->capture_next = kd->begins = 0;
      } else {
        k = UINT32_MAX; /* the kind stays with its old value */
      }
    }
  }
  if (k != UINT32_MAX) {
    if (now) R.kinds[k].last_ns = now;
    return k;
  }
  R.keys_overflow++;
  return other_kind(qu, q);
}

uint32_t sluice__kind_of(const char *queue_name, const char *key_name,
                         const char *key, uint64_t now) {
  uint16_t q = queue_index(queue_name);
  if (key) return key_kind(q, key_name ? key_name : "key", key, now);
  qrow *qu = &R.queues[q];
  if (!qu->nokey) {
    uint32_t k = kind_new(q, NULL, 0);
    if (k == UINT32_MAX) return 0;
    qu->nokey = k + 1;
  }
  return qu->nokey - 1;
}

uint32_t sluice__group_of(uint32_t k, int outcome) {
  kind *kd = &R.kinds[k];
  if (kd->groups[outcome]) return kd->groups[outcome] - 1;
  uint32_t gi = group_new(k, outcome);
  if (gi != UINT32_MAX) {
    kd->groups[outcome] = gi + 1;
    return gi;
  }
  R.groups_overflow++;
  qrow *qu = &R.queues[kd->queue];
  if (!kd->other && qu->other && R.kinds[qu->other - 1].groups[outcome])
    return R.kinds[qu->other - 1].groups[outcome] - 1;
  return (uint32_t)outcome; /* kind 0's */
}

/* ------------------------------------------------------------------------ */
/* Survivors: ended slots that still hold memory, oldest first. */

void sluice__group_link(uint32_t gi, uint32_t idx) {
  grp *g = group_at(gi);
  slot *s = slot_at(idx);
  s->linked = 1;
  s->next = 0;
  s->prev = g->tail;
  if (g->tail) slot_at(g->tail - 1)->next = idx + 1;
  else g->head = idx + 1;
  g->tail = idx + 1;
}

void sluice__group_unlink(uint32_t gi, uint32_t idx) {
  grp *g = group_at(gi);
  slot *s = slot_at(idx);
  if (!s->linked) return;
  if (s->prev) slot_at(s->prev - 1)->next = s->next;
  else g->head = s->next;
  if (s->next) slot_at(s->next - 1)->prev = s->prev;
  else g->tail = s->prev;
  s->linked = 0;
  s->prev = s->next = 0;
}

void sluice__group_retained(uint32_t gi, int64_t *b, int64_t *n) {
  grp *g = group_at(gi);
  int64_t xb = atomic_load_explicit(&g->ret_b, memory_order_relaxed);
  int64_t xn = atomic_load_explicit(&g->ret_n, memory_order_relaxed);
  for (int i = 0; i < N_GEN; i++) {
    xb += atomic_load_explicit(&g->gens[i].b, memory_order_relaxed);
    xn += atomic_load_explicit(&g->gens[i].n, memory_order_relaxed);
  }
  *b = xb;
  *n = xn;
}

/* The end (message count, time) of the oldest message of the group whose
 * memory is still live, at least as old as that (a sink generation gives
 * the newest message it holds). 0 when nothing is live. */
static int oldest_survivor(grp *g, uint64_t *msg, uint64_t *ns) {
  int found = 0;
  for (int i = 0; i < N_GEN; i++) {
    const sink *k = &g->gens[i];
    if (sink_empty(k) || k->last_msg == 0) continue;
    if (!found || k->last_msg < *msg) {
      *msg = k->last_msg;
      *ns = k->last_ns;
      found = 1;
    }
  }
  if (found) return 1;
  while (g->head) {
    uint32_t idx = g->head - 1;
    slot *s = slot_at(idx);
    if (!slot_empty(s) || slot_live_b(s)) {
      *msg = s->end_msg;
      *ns = s->end_ns;
      return 1;
    }
    sluice__group_unlink(s->group, idx);
    if (s->state == S_RETIRED) sluice__slot_free(idx);
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Sink generations and sweeps. */

static uint32_t youngest_gen(const grp *g) {
  uint32_t y = 0;
  for (uint32_t i = 1; i < N_GEN; i++)
    if (g->gens[i].last_msg > g->gens[y].last_msg) y = i;
  return y;
}

void sluice__sweep_prepare(void) {
  for (uint32_t gi = 0; gi < R.n_groups; gi++) {
    grp *g = group_at(gi);
    if (!g->used) continue;
    g->sweep_nb = 0;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint32_t i = g->head; i; i = slot_at(i - 1)->next) {
      const slot *s = slot_at(i - 1);
      if (s->state != S_RETIRED) continue;
      if (s->end_msg < lo) lo = s->end_msg;
      if (s->end_msg > hi) hi = s->end_msg;
    }
    if (lo > hi) continue;
    /* Empty generations share the range, oldest messages first; without
     * one, everything joins the youngest. */
    uint8_t nb = 0;
    for (uint32_t i = 0; i < N_GEN; i++) {
      sink *k = &g->gens[i];
      if (!sink_empty(k)) continue;
      k->first_msg = UINT64_MAX;
      k->last_msg = 0;
      g->sweep_gen[nb++] = (uint8_t)i;
    }
    if (!nb) g->sweep_gen[nb++] = (uint8_t)youngest_gen(g);
    g->sweep_nb = nb;
    g->sweep_lo = lo;
    g->sweep_step = (hi - lo) / nb + 1;
  }
}

uint32_t sluice__sweep_target(const slot *s) {
  grp *g = group_at(s->group);
  uint32_t gen;
  if (g->sweep_nb) {
    uint64_t b = s->end_msg >= g->sweep_lo
                     ? (s->end_msg - g->sweep_lo) / g->sweep_step
                     : 0;
    gen = g->sweep_gen[b < g->sweep_nb ? b : g->sweep_nb - 1u];
  } else {
    /* Outside a sweep (a growth layer folded): fill the current generation
     * until it spans a quarter of the horizon, then an empty one, so that
     * the oldest survivors keep a close age. */
    gen = g->cur_gen;
    sink *k = &g->gens[gen];
    uint64_t width = R.horizon_msgs / 4 > R.window ? R.horizon_msgs / 4
                                                   : R.window;
    if (sink_empty(k)) {
      k->first_msg = UINT64_MAX;
      k->last_msg = 0;
    } else if (k->first_msg != UINT64_MAX &&
               s->end_msg >= k->first_msg + width) {
      for (uint32_t i = 0; i < N_GEN; i++)
        if (sink_empty(&g->gens[i])) {
          gen = g->cur_gen = i;
          g->gens[i].first_msg = UINT64_MAX;
          g->gens[i].last_msg = 0;
          break;
        }
    }
  }
  sink *k = &g->gens[gen];
  if (s->end_msg < k->first_msg) {
    k->first_msg = s->end_msg;
    k->first_ns = s->end_ns;
  }
  if (s->end_msg >= k->last_msg) {
    k->last_msg = s->end_msg;
    k->last_ns = s->end_ns;
  }
  return gen;
}

/* ------------------------------------------------------------------------ */
/* The growth curve and the state. */

/* The recent part of the curve the growth is judged on: a quarter of the
 * horizon, and at least four points. */
static uint64_t recent_span(void) {
  uint64_t w = R.horizon_msgs / 4, min = 4 * (R.window ? R.window : 100);
  return w > min ? w : min;
}

static void curve_add(grp *g, const curve_pt *p) {
  /* Points older than needed: the second-oldest already spans the
   * horizon (messages and time) back from p. */
  while (g->n_pts >= 3 && p->m - g->pts[1].m >= R.horizon_msgs &&
         p->t - g->pts[1].t >= R.horizon_ns) {
    memmove(&g->pts[0], &g->pts[1], (g->n_pts - 1) * sizeof(curve_pt));
    g->n_pts--;
  }
  if (g->n_pts == CURVE_CAP) { /* thin: keep every other point */
    uint32_t k = 0;
    for (uint32_t i = 0; i < g->n_pts; i += 2) g->pts[k++] = g->pts[i];
    g->n_pts = k;
    g->interval *= 2;
  } else if (g->n_pts < CURVE_CAP / 4 && g->interval > R.window && R.window) {
    g->interval /= 2; /* traffic slowed: finer points again */
  }
  g->pts[g->n_pts++] = *p;
}

/* The latest point at least `m` messages (and `t` ns) before p, or NULL. */
static const curve_pt *point_before(const grp *g, const curve_pt *p, uint64_t m,
                                    uint64_t t) {
  for (uint32_t i = g->n_pts; i-- > 0;)
    if (p->m - g->pts[i].m >= m && p->t - g->pts[i].t >= t) return &g->pts[i];
  return NULL;
}

/* Is the curve rising from point a to p, beyond its jitter? The last point
 * is a new high (above every point up to a), and the lower envelope of the
 * window's second half is above the upper envelope of its first half: a
 * plateau that jitters (a TTL cache, a pool) fails one or the other. */
static int rising(const grp *g, const curve_pt *a, const curve_pt *p) {
  uint64_t mid = a->m + (p->m - a->m) / 2;
  int64_t before = INT64_MIN, first = INT64_MIN, second = p->b;
  for (uint32_t i = 0; i < g->n_pts; i++) {
    const curve_pt *x = &g->pts[i];
    if (x->m > p->m) break;
    if (x->m <= a->m && x->b > before) before = x->b;
    if (x->m >= a->m && x->m <= mid && x->b > first) first = x->b;
    if (x->m > mid && x->m < p->m && x->b < second) second = x->b;
  }
  if (a->b > first) first = a->b;
  return p->b > before && second > first;
}

static double per_msg(int64_t d, uint64_t m) {
  return m ? (double)d / (double)m : 0.0;
}

/* A group turned growing: capture its kind's stacks at weight 1 for a
 * while (not again before ten times as many of its messages began). */
static void arm_capture(grp *g) {
  kind *kd = &R.kinds[g->kind];
  if (!R.adaptive ||
      atomic_load_explicit(&kd->capture_left, memory_order_relaxed))
    return;
  uint64_t begins = sluice__kind_begins(g->kind);
  if (begins < kd->capture_next) return;
  atomic_store_explicit(&kd->capture_left, R.adaptive, memory_order_relaxed);
  kd->capture_next = begins + 10 * R.adaptive;
}

static void set_ok(grp *g) {
  g->state = SLUICE_PROF_OK;
  g->run = 0;
  g->fired = 0;
  g->bpm = g->opm = 0;
  g->slope_msgs = g->slope_ns = 0;
  g->level_msgs = g->level_ns = 0;
  g->age_msgs = g->age_ns = 0;
  g->plateau_b = 0;
}

/* The state of group gi at point p (the newest point, or the live one). */
static void evaluate(notes *ns, uint32_t gi, const curve_pt *p, uint64_t now) {
  grp *g = group_at(gi);
  if (p->b <= 0 && p->n <= 0) {
    set_ok(g);
    return;
  }
  uint64_t om = 0, ot = 0;
  if (oldest_survivor(g, &om, &ot)) {
    g->age_msgs = p->m >= om ? p->m - om : 0;
    g->age_ns = now >= ot ? now - ot : 0;
  } else {
    g->age_msgs = g->age_ns = 0;
  }
  const curve_pt *a = point_before(g, p, recent_span(), 0);
  if (!a && g->n_pts) a = &g->pts[0];
  if (!a || a->m >= p->m) return; /* no progress since: nothing new */
  uint64_t dm = p->m - a->m;
  double slope = per_msg(p->b - a->b, dm);
  int prev = g->state;
  if (slope >= R.threshold && rising(g, a, p)) {
    if (!g->run) {
      g->run = 1;
      g->fired = 0;
      g->run_start = *a;
    }
  } else {
    g->run = 0;
  }
  if (!g->run) {
    g->state = SLUICE_PROF_BOUNDED;
    g->plateau_b = p->b;
    g->bpm = slope;
    g->opm = per_msg(p->n - a->n, dm);
    g->slope_msgs = dm;
    g->slope_ns = p->t - a->t;
    g->level_msgs = g->level_ns = 0;
    return;
  }
  uint64_t span_m = p->m - g->run_start.m, span_t = p->t - g->run_start.t;
  uint64_t age_t = p->t >= ot ? p->t - ot : 0; /* at the point's time */
  if (span_m >= R.horizon_msgs && span_t >= R.horizon_ns &&
      g->age_msgs >= R.horizon_msgs && age_t >= R.horizon_ns) {
    const curve_pt *h = point_before(g, p, R.horizon_msgs, R.horizon_ns);
    if (!h || h->m < g->run_start.m) h = &g->run_start;
    g->state = SLUICE_PROF_LEAK;
    g->bpm = per_msg(p->b - h->b, p->m - h->m);
    g->opm = per_msg(p->n - h->n, p->m - h->m);
    g->slope_msgs = p->m - h->m;
    g->slope_ns = p->t - h->t;
    g->level_msgs = g->level_ns = 0;
    /* Announced once per run, and a flapping group not more than once
     * per horizon. */
    if (!g->fired &&
        (!g->fired_msgs || p->m >= g->fired_msgs + R.horizon_msgs)) {
      g->fired = 1;
      g->fired_msgs = p->m;
      note *x = sluice__note_add(ns);
      if (x) {
        x->kind = NOTE_VERDICT;
        x->group = gi;
      }
    }
    return;
  }
  g->state = SLUICE_PROF_GROWING;
  g->bpm = per_msg(p->b - g->run_start.b, span_m);
  g->opm = per_msg(p->n - g->run_start.n, span_m);
  g->slope_msgs = span_m;
  g->slope_ns = span_t;
  /* Growth still allowed before the horizon (the older of the run and the
   * survivors must reach it). */
  uint64_t done_m = span_m < g->age_msgs ? span_m : g->age_msgs;
  uint64_t done_t = span_t < age_t ? span_t : age_t;
  g->level_msgs = R.horizon_msgs > done_m ? R.horizon_msgs - done_m : 0;
  g->level_ns = R.horizon_ns > done_t ? R.horizon_ns - done_t : 0;
  if (prev != SLUICE_PROF_GROWING && prev != SLUICE_PROF_LEAK) arm_capture(g);
}

static void live_point(const grp *g, uint32_t gi, uint64_t now, curve_pt *p) {
  p->m = g->messages;
  sluice__group_retained(gi, &p->b, &p->n);
  /* Time moves for the verdict only with messages: an idle queue's growth
   * does not last longer by waiting. */
  p->t = g->n_pts && g->pts[g->n_pts - 1].m == g->messages
             ? g->pts[g->n_pts - 1].t
             : now;
}

void sluice__group_message(notes *ns, uint32_t gi, uint64_t now) {
  grp *g = group_at(gi);
  if (!g->n_pts) {
    g->first_ns = now;
    curve_pt o = {0, 0, 0, now};
    g->pts[g->n_pts++] = o; /* the origin: nothing before the first */
  }
  if (g->messages - g->pts[g->n_pts - 1].m < g->interval) return;
  curve_pt p;
  p.m = g->messages;
  sluice__group_retained(gi, &p.b, &p.n);
  p.t = now;
  curve_add(g, &p);
  evaluate(ns, gi, &p, now);
}

void sluice__groups_tick(notes *ns, uint64_t now) {
  for (uint32_t gi = 0; gi < R.n_groups; gi++) {
    grp *g = group_at(gi);
    if (!g->used || !g->messages) continue;
    curve_pt p;
    live_point(g, gi, now, &p);
    evaluate(ns, gi, &p, now);
  }
}

/* ------------------------------------------------------------------------ */
/* Reading. */

static int stats_cmp(const void *x, const void *y) {
  const sluice_prof_residual_stats *a = x, *b = y;
  int c = strcmp(a->queue, b->queue);
  if (c) return c;
  if ((c = strcmp(a->key, b->key))) return c;
  return a->outcome - b->outcome;
}

static void fill_stats(sluice_prof_residual_stats *o, uint32_t gi) {
  const grp *g = group_at(gi);
  const kind *kd = &R.kinds[g->kind];
  memset(o, 0, sizeof *o);
  o->queue = R.queues[kd->queue].name;
  o->outcome = g->outcome;
  if (kd->key) {
    o->key_name = R.queues[kd->queue].key_name;
    snprintf(o->key, sizeof o->key, "%s", kd->key);
  }
  o->messages = g->messages;
  o->with_residual = g->with_residual;
  o->bytes_at_end = g->bytes_at_end;
  o->objects_at_end = g->objects_at_end;
  o->pending = g->pending;
  o->cached = g->cached;
  o->leaked = g->leaked;
  o->bytes_leaked = g->bytes_leaked;
  o->objects_leaked = g->objects_leaked;
  o->skipped = g->skipped;
  int64_t b, n;
  sluice__group_retained(gi, &b, &n);
  o->retained_bytes = b > 0 ? (uint64_t)b : 0;
  o->retained_objects = n > 0 ? (uint64_t)n : 0;
  o->state = g->state;
  o->bytes_per_message = g->bpm;
  o->objects_per_message = g->opm;
  o->slope_messages = g->slope_msgs;
  o->slope_seconds = (double)g->slope_ns / 1e9;
  o->level_off_messages = g->level_msgs;
  o->level_off_seconds = (double)g->level_ns / 1e9;
  o->oldest_age_messages = g->age_msgs;
  o->oldest_age_seconds = (double)g->age_ns / 1e9;
  o->leaking = g->state == SLUICE_PROF_LEAK;
}

size_t sluice_prof_residual_stats_get(sluice_prof_residual_stats *out,
                                      size_t cap) {
  if (!R.chunks) return 0;
  sluice_prof_poll();
  sluice__enter_guard();
  sluice__lock_acquire(&R.mu);
  size_t total = 0;
  for (uint32_t gi = 0; gi < R.n_groups; gi++) {
    const grp *g = group_at(gi);
    if (!g->used || !g->messages) continue;
    if (total < cap) fill_stats(&out[total], gi);
    total++;
  }
  sluice__lock_release(&R.mu);
  if (out && total && cap)
    qsort(out, total < cap ? total : cap, sizeof *out, stats_cmp);
  sluice__leave_guard();
  return total;
}

/* Under R.mu: the rows of the kinds of group gi's queue and outcome, for a
 * verdict line; biggest per-message figure first. */
size_t sluice__kind_summaries(uint32_t gi, sluice_prof_kind_summary *out,
                              char (*keys)[KEY_MAX + 1], size_t cap) {
  const grp *g0 = group_at(gi);
  uint16_t q = R.kinds[g0->kind].queue;
  size_t n = 0;
  for (uint32_t k = 0; k < R.n_kinds && n < cap; k++) {
    const kind *kd = &R.kinds[k];
    if (!kd->used || kd->queue != q || !kd->groups[g0->outcome]) continue;
    const grp *g = group_at(kd->groups[g0->outcome] - 1);
    if (!g->messages) continue;
    if (kd->key) {
      snprintf(keys[n], KEY_MAX + 1, "%s", kd->key);
      out[n].key = keys[n];
    } else {
      out[n].key = NULL;
    }
    out[n].state = g->state;
    out[n].bytes_per_message =
        g->state == SLUICE_PROF_BOUNDED || g->state == SLUICE_PROF_OK ? 0.0
                                                                      : g->bpm;
    out[n].messages = g->messages;
    n++;
  }
  for (size_t i = 1; i < n; i++)
    for (size_t j = i;
         j > 0 && out[j].bytes_per_message > out[j - 1].bytes_per_message;
         j--) {
      sluice_prof_kind_summary t = out[j];
      out[j] = out[j - 1];
      out[j - 1] = t;
    }
  return n;
}
