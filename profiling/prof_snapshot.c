/* SPDX-License-Identifier: MIT */
/* Snapshots: a copy of the per-stack counters, of the residual left by
 * ended scopes (per stack, queue, outcome and message), and of the
 * MemStats; and the difference of two snapshots, which every writer takes
 * like a snapshot. Values stay raw sampled counts; writers unbias them. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prof_internal.h"

typedef struct resid_map {
  sluice__snap_resid *rows;
  size_t len, cap;
  uint32_t *idx; /* open addressing over rows, index + 1 */
  size_t idx_cap;
  int oom;
} resid_map;

static uint64_t key_hash(const sluice__resid_key *k) {
  uint64_t h = k->stack * 0x9E3779B97F4A7C15ull;
  h ^= ((uint64_t)k->queue << 8 | k->outcome) * 0xC2B2AE3D27D4EB4Full;
  h ^= ((uint64_t)k->kind << 32 | k->group) * 0xD6E8FEB86659FD93ull;
  h ^= k->seq * 0x165667B19E3779F9ull;
  return h ^ (h >> 31);
}

static int key_eq(const sluice__resid_key *a, const sluice__resid_key *b) {
  return a->stack == b->stack && a->queue == b->queue &&
         a->outcome == b->outcome && a->kind == b->kind &&
         a->group == b->group && a->seq == b->seq;
}

static int map_grow(resid_map *m) {
  size_t cap = m->idx_cap ? m->idx_cap * 2 : 256;
  uint32_t *idx = sluice__calloc(cap, sizeof(uint32_t));
  if (!idx) return -1;
  for (size_t i = 0; i < m->len; i++) {
    size_t j = key_hash(&m->rows[i].key) & (cap - 1);
    while (idx[j]) j = (j + 1) & (cap - 1);
    idx[j] = (uint32_t)i + 1;
  }
  sluice__free(m->idx);
  m->idx = idx;
  m->idx_cap = cap;
  return 0;
}

static void map_add(resid_map *m, const sluice__resid_key *k, int64_t n,
                    int64_t b) {
  if (m->oom) return;
  if ((m->len + 1) * 2 > m->idx_cap && map_grow(m)) {
    m->oom = 1;
    return;
  }
  size_t j = key_hash(k) & (m->idx_cap - 1);
  while (m->idx[j]) {
    sluice__snap_resid *r = &m->rows[m->idx[j] - 1];
    if (key_eq(&r->key, k)) {
      r->n += n;
      r->b += b;
      return;
    }
    j = (j + 1) & (m->idx_cap - 1);
  }
  if (m->len == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    sluice__snap_resid *rows = sluice__realloc(m->rows, cap * sizeof(*rows));
    if (!rows) {
      m->oom = 1;
      return;
    }
    m->rows = rows;
    m->cap = cap;
  }
  sluice__snap_resid *r = &m->rows[m->len];
  memset(r, 0, sizeof *r);
  r->key = *k;
  r->n = n;
  r->b = b;
  m->idx[j] = (uint32_t)++m->len;
}

static void resid_visit(const sluice__resid_key *k, uint64_t size, void *arg) {
  if (!k->stack) return; /* not sampled: counted in the aggregates only */
  map_add(arg, k, 1, (int64_t)size);
}

static int resid_cmp(const void *x, const void *y) {
  const sluice__resid_key *a = &((const sluice__snap_resid *)x)->key;
  const sluice__resid_key *b = &((const sluice__snap_resid *)y)->key;
  if (a->stack != b->stack) return a->stack < b->stack ? -1 : 1;
  if (a->queue != b->queue) return a->queue < b->queue ? -1 : 1;
  if (a->outcome != b->outcome) return a->outcome < b->outcome ? -1 : 1;
  if (a->kind != b->kind) return a->kind < b->kind ? -1 : 1;
  if (a->group != b->group) return a->group < b->group ? -1 : 1;
  if (a->seq != b->seq) return a->seq < b->seq ? -1 : 1;
  return 0;
}

/* Copies of the key values and names the rows name. */
static int copy_keys(sluice_prof_snapshot *s) {
  uint32_t max = 0;
  for (size_t i = 0; i < s->n_resid; i++)
    if (s->resid[i].key.kind > max) max = s->resid[i].key.kind;
  if (!max) return 0;
  s->keys = sluice__calloc(max, sizeof(char *));
  s->key_names = sluice__calloc(max, sizeof(char *));
  if (!s->keys || !s->key_names) return -1;
  s->n_keys = max;
  sluice__scopes_lock_all();
  for (size_t i = 0; i < s->n_resid; i++) {
    uint32_t k = s->resid[i].key.kind;
    if (!k || s->keys[k - 1]) continue;
    s->keys[k - 1] = sluice__kind_key_dup(k, &s->key_names[k - 1]);
  }
  sluice__scopes_unlock_all();
  return 0;
}

const char *sluice__snap_key(const sluice_prof_snapshot *s,
                             const sluice__resid_key *k,
                             const char **key_name) {
  if (key_name) *key_name = NULL;
  if (!k->kind || k->kind > s->n_keys || !s->keys[k->kind - 1]) return NULL;
  if (key_name) *key_name = s->key_names[k->kind - 1];
  return s->keys[k->kind - 1];
}

void sluice__resid_unbias(const sluice_prof_snapshot *s,
                          const sluice__snap_resid *r, int64_t *n, int64_t *b) {
  if (r->key.stack & SLUICE__EXACT) {
    *n = r->n;
    *b = r->b;
  } else {
    sluice__unbias(r->n, r->b, s->rate, n, b);
  }
}

static uint64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int sluice_prof_snapshot_take(sluice_prof_snapshot **out) {
  if (!out) return SLUICE_EINVAL;
  *out = NULL;
  sluice_prof_poll();
  sluice__enter_guard();
  int rc = SLUICE_ENOMEM;
  resid_map m = {0};
  sluice_prof_snapshot *s = sluice__calloc(1, sizeof *s);
  if (!s) goto out;
  s->time_ns = wall_ns();
  s->rate = sluice__rate();
  if (sluice__inited()) {
    uint32_t max = sluice__stack_max_id();
    s->stacks = sluice__calloc(max ? max : 1, sizeof(sluice__snap_stack));
    if (!s->stacks) goto out;
    for (uint32_t id = SLUICE__STACK_FULL; id <= max; id++) {
      sluice__stack_counts c;
      sluice__stack_counts_get(id, &c);
      if (!c.alloc_n && !c.free_n && !c.x_alloc_n && !c.x_free_n) continue;
      sluice__snap_stack *e = &s->stacks[s->n_stacks++];
      e->stack = id;
      e->alloc_n = (int64_t)c.alloc_n;
      e->alloc_b = (int64_t)c.alloc_b;
      e->inuse_n = (int64_t)(c.alloc_n - c.free_n);
      e->inuse_b = (int64_t)(c.alloc_b - c.free_b);
      e->x_alloc_n = (int64_t)c.x_alloc_n;
      e->x_alloc_b = (int64_t)c.x_alloc_b;
      e->x_inuse_n = (int64_t)(c.x_alloc_n - c.x_free_n);
      e->x_inuse_b = (int64_t)(c.x_alloc_b - c.x_free_b);
    }
    sluice__residual_collect(-1, resid_visit, &m);
    if (m.oom) goto out;
    if (m.len) qsort(m.rows, m.len, sizeof *m.rows, resid_cmp);
    s->resid = m.rows;
    s->n_resid = m.len;
    m.rows = NULL;
    if (copy_keys(s)) goto out;
  }
  sluice__leave_guard();
  sluice_prof_memstats_read(&s->ms);
  sluice__enter_guard();
  *out = s;
  s = NULL;
  rc = 0;
out:
  sluice__free(m.rows);
  sluice__free(m.idx);
  sluice__leave_guard();
  sluice_prof_snapshot_free(s);
  return rc;
}

void sluice_prof_snapshot_free(sluice_prof_snapshot *s) {
  if (!s) return;
  sluice__enter_guard();
  sluice__free(s->stacks);
  sluice__free(s->resid);
  for (size_t i = 0; i < s->n_keys; i++) {
    sluice__free(s->keys[i]);
    sluice__free(s->key_names[i]);
  }
  sluice__free(s->keys);
  sluice__free(s->key_names);
  sluice__free(s);
  sluice__leave_guard();
}

void sluice_prof_snapshot_memstats(const sluice_prof_snapshot *s,
                                   sluice_prof_memstats *out) {
  if (s) *out = s->ms;
  else memset(out, 0, sizeof *out);
}

/* Residual rows of a snapshot summed per (stack, queue, outcome), the
 * message dropped: messages of two snapshots never match. */
static int resid_by_site(const sluice_prof_snapshot *s, int sign,
                         resid_map *m) {
  for (size_t i = 0; i < s->n_resid; i++) {
    sluice__resid_key k = s->resid[i].key;
    k.seq = 0;
    map_add(m, &k, sign * s->resid[i].n, sign * s->resid[i].b);
  }
  return m->oom ? -1 : 0;
}

/* The key names of a difference: cur's, else base's. */
static int dup_keys(sluice_prof_snapshot *d, const sluice_prof_snapshot *cur,
                    const sluice_prof_snapshot *base) {
  size_t n = cur->n_keys > base->n_keys ? cur->n_keys : base->n_keys;
  if (!n) return 0;
  d->keys = sluice__calloc(n, sizeof(char *));
  d->key_names = sluice__calloc(n, sizeof(char *));
  if (!d->keys || !d->key_names) return -1;
  d->n_keys = n;
  for (size_t i = 0; i < n; i++) {
    const sluice_prof_snapshot *f = i < cur->n_keys && cur->keys[i] ? cur
                                                                    : base;
    if (i >= f->n_keys || !f->keys[i]) continue;
    d->keys[i] = sluice__strdup(f->keys[i]);
    d->key_names[i] = sluice__strdup(f->key_names[i] ? f->key_names[i] : "key");
    if (!d->keys[i] || !d->key_names[i]) return -1;
  }
  return 0;
}

#define MS_DIFF(f) d->ms.f = cur->ms.f - base->ms.f

int sluice_prof_snapshot_diff(const sluice_prof_snapshot *base,
                              const sluice_prof_snapshot *cur,
                              sluice_prof_snapshot **out) {
  if (!base || !cur || !out) return SLUICE_EINVAL;
  *out = NULL;
  sluice__enter_guard();
  int rc = SLUICE_ENOMEM;
  resid_map m = {0};
  sluice_prof_snapshot *d = sluice__calloc(1, sizeof *d);
  if (!d) goto out;
  d->is_diff = 1;
  d->time_ns = cur->time_ns;
  d->duration_ns = cur->time_ns > base->time_ns ? cur->time_ns - base->time_ns
                                                : 0;
  d->rate = cur->rate;
  size_t cap = base->n_stacks + cur->n_stacks;
  d->stacks = sluice__calloc(cap ? cap : 1, sizeof(sluice__snap_stack));
  if (!d->stacks) goto out;
  /* Both are sorted by stack id. */
  size_t i = 0, j = 0;
  while (i < base->n_stacks || j < cur->n_stacks) {
    const sluice__snap_stack *a = i < base->n_stacks ? &base->stacks[i] : NULL;
    const sluice__snap_stack *b = j < cur->n_stacks ? &cur->stacks[j] : NULL;
    sluice__snap_stack e = {0};
    if (a && (!b || a->stack < b->stack)) {
      e.stack = a->stack;
      e.alloc_n = -a->alloc_n;
      e.alloc_b = -a->alloc_b;
      e.inuse_n = -a->inuse_n;
      e.inuse_b = -a->inuse_b;
      e.x_alloc_n = -a->x_alloc_n;
      e.x_alloc_b = -a->x_alloc_b;
      e.x_inuse_n = -a->x_inuse_n;
      e.x_inuse_b = -a->x_inuse_b;
      i++;
    } else if (b && (!a || b->stack < a->stack)) {
      e = *b;
      j++;
    } else {
      e.stack = a->stack;
      e.alloc_n = b->alloc_n - a->alloc_n;
      e.alloc_b = b->alloc_b - a->alloc_b;
      e.inuse_n = b->inuse_n - a->inuse_n;
      e.inuse_b = b->inuse_b - a->inuse_b;
      e.x_alloc_n = b->x_alloc_n - a->x_alloc_n;
      e.x_alloc_b = b->x_alloc_b - a->x_alloc_b;
      e.x_inuse_n = b->x_inuse_n - a->x_inuse_n;
      e.x_inuse_b = b->x_inuse_b - a->x_inuse_b;
      i++;
      j++;
    }
    if (e.alloc_n || e.alloc_b || e.inuse_n || e.inuse_b || e.x_alloc_n ||
        e.x_alloc_b || e.x_inuse_n || e.x_inuse_b)
      d->stacks[d->n_stacks++] = e;
  }
  if (resid_by_site(cur, 1, &m) || resid_by_site(base, -1, &m)) goto out;
  size_t k = 0;
  for (size_t r = 0; r < m.len; r++)
    if (m.rows[r].n || m.rows[r].b) m.rows[k++] = m.rows[r];
  if (k) qsort(m.rows, k, sizeof *m.rows, resid_cmp);
  d->resid = m.rows;
  d->n_resid = k;
  m.rows = NULL;
  if (dup_keys(d, cur, base)) goto out;
  d->ms = cur->ms;
  MS_DIFF(heap_live_bytes);
  MS_DIFF(heap_mapped_bytes);
  MS_DIFF(live_objects);
  MS_DIFF(total_alloc_bytes);
  MS_DIFF(mallocs);
  MS_DIFF(frees);
  MS_DIFF(rss_bytes);
  MS_DIFF(sampled_live_bytes);
  MS_DIFF(tracked_blocks);
  *out = d;
  d = NULL;
  rc = 0;
out:
  sluice__free(m.rows);
  sluice__free(m.idx);
  sluice__leave_guard();
  sluice_prof_snapshot_free(d);
  return rc;
}
