/* SPDX-License-Identifier: MIT */
/* Text outputs: `top` (the columns of `go tool pprof -top -lines`), folded
 * stacks for flamegraph.pl (functions, inlined calls included), and the
 * residual report (sites with file:line). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prof_internal.h"

/* ------------------------------------------------------------------------ */
/* Per-line accumulation for `top`: a node is a function and a source line
 * (what `go tool pprof -top -lines` shows), or a function alone where
 * there is no line information. Inlined calls are nodes of their own. */

typedef struct fnacc {
  const char *name, *file; /* borrowed from the symbol view */
  uint32_t line;
  int inlined;
  int64_t flat, cum;
  size_t last_row;
} fnacc;

typedef struct fnmap {
  fnacc *v;
  size_t n, cap;
  uint32_t *idx;
  size_t icap;
  int oom;
} fnmap;

static uint64_t name_hash(const char *s, uint64_t h) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static uint64_t node_hash(const char *name, const char *file, uint32_t line) {
  uint64_t h = name_hash(name, 1469598103934665603ull);
  if (file) h = name_hash(file, h ^ 0x2f);
  return (h ^ line) * 0x9E3779B97F4A7C15ull;
}

static int same_node(const fnacc *a, const sluice__frame *f) {
  if (a->line != f->line || !a->file != !f->file || a->inlined != f->inlined)
    return 0;
  if (strcmp(a->name, f->func)) return 0;
  return !a->file || !strcmp(a->file, f->file);
}

static fnacc *fn_get(fnmap *m, const sluice__frame *f) {
  if (m->oom) return NULL;
  if ((m->n + 1) * 2 > m->icap) {
    size_t cap = m->icap ? m->icap * 2 : 256;
    uint32_t *idx = sluice__calloc(cap, sizeof(uint32_t));
    if (!idx) {
      m->oom = 1;
      return NULL;
    }
    for (size_t i = 0; i < m->n; i++) {
      size_t j = node_hash(m->v[i].name, m->v[i].file, m->v[i].line) &
                 (cap - 1);
      while (idx[j]) j = (j + 1) & (cap - 1);
      idx[j] = (uint32_t)i + 1;
    }
    sluice__free(m->idx);
    m->idx = idx;
    m->icap = cap;
  }
  size_t j = node_hash(f->func, f->file, f->line) & (m->icap - 1);
  while (m->idx[j]) {
    fnacc *a = &m->v[m->idx[j] - 1];
    if (same_node(a, f)) return a;
    j = (j + 1) & (m->icap - 1);
  }
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    fnacc *v = sluice__realloc(m->v, cap * sizeof(*v));
    if (!v) {
      m->oom = 1;
      return NULL;
    }
    m->v = v;
    m->cap = cap;
  }
  fnacc *a = &m->v[m->n];
  a->name = f->func;
  a->file = f->file;
  a->line = f->line;
  a->inlined = f->inlined;
  a->flat = a->cum = 0;
  a->last_row = (size_t)-1;
  m->idx[j] = (uint32_t)++m->n;
  return a;
}

static int64_t abs64(int64_t v) {
  return v < 0 ? -v : v;
}

static int fn_cmp(const void *x, const void *y) {
  const fnacc *a = x, *b = y;
  if (abs64(a->flat) != abs64(b->flat))
    return abs64(a->flat) < abs64(b->flat) ? 1 : -1;
  if (abs64(a->cum) != abs64(b->cum))
    return abs64(a->cum) < abs64(b->cum) ? 1 : -1;
  int c = strcmp(a->name, b->name);
  if (c) return c;
  c = strcmp(a->file ? a->file : "", b->file ? b->file : "");
  if (c) return c;
  if (a->line != b->line) return a->line < b->line ? -1 : 1;
  return a->inlined - b->inlined;
}

static void fmt_pct(char *buf, size_t n, int64_t v, int64_t total) {
  double r = total ? fabs((double)v / (double)total) * 100 : 0;
  if (v < 0) r = -r;
  if (fabs(r) >= 99.95 && fabs(r) <= 100.05) snprintf(buf, n, "100%%");
  else if (fabs(r) >= 1.0) snprintf(buf, n, "%.2f%%", r);
  else snprintf(buf, n, "%.2g%%", r);
}

static int is_residual(int value) {
  return value == SLUICE_PROF_RESIDUAL_SPACE ||
         value == SLUICE_PROF_RESIDUAL_OBJECTS;
}

/* Calls fn for every row of the snapshot that the output covers. */
typedef void (*row_fn)(uint32_t stack, int64_t v, const sluice__snap_resid *r,
                       void *arg);

static void for_rows(const sluice_prof_snapshot *s, const sluice_prof_output *o,
                     row_fn fn, void *arg) {
  if (is_residual(o->value)) {
    for (size_t i = 0; i < s->n_resid; i++) {
      const sluice__snap_resid *r = &s->resid[i];
      if (!sluice__resid_match(s, o, r)) continue;
      int64_t v = sluice__resid_value(s, r, o->value);
      if (v) fn(r->key.stack, v, r, arg);
    }
  } else {
    for (size_t i = 0; i < s->n_stacks; i++) {
      int64_t v = sluice__stack_value(s, &s->stacks[i], o->value);
      if (v) fn(s->stacks[i].stack, v, NULL, arg);
    }
  }
}

typedef struct top_arg {
  fnmap m;
  sluice__symtab *st;
  int64_t total;
  size_t row;
} top_arg;

static void top_row(uint32_t stack, int64_t v, const sluice__snap_resid *r,
                    void *arg) {
  (void)r;
  top_arg *a = arg;
  sluice__frame f[SLUICE__MAX_FRAMES];
  uint32_t n = sluice__stack_sframes(a->st, stack, f, SLUICE__MAX_FRAMES);
  a->total += v;
  a->row++;
  for (uint32_t i = 0; i < n; i++) {
    fnacc *e = fn_get(&a->m, &f[i]);
    if (!e) return;
    if (i == 0) e->flat += v;
    if (e->last_row != a->row) { /* recursion counts once */
      e->cum += v;
      e->last_row = a->row;
    }
  }
}

static void time_line(sluice__buf *b, const sluice_prof_snapshot *s) {
  time_t t = (time_t)(s->time_ns / 1000000000ull);
  struct tm tm;
  char when[64];
  if (gmtime_r(&t, &tm) &&
      strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm))
    sluice__buf_printf(b, "Time: %s\n", when);
  if (s->is_diff)
    sluice__buf_printf(b, "Duration: %.3fs (difference of two snapshots)\n",
                       (double)s->duration_ns / 1e9);
}

int sluice__write_top(const sluice_prof_snapshot *s,
                      const sluice_prof_output *o, sluice__out *out) {
  top_arg a;
  memset(&a, 0, sizeof a);
  a.st = sluice__sym_open();
  if (!a.st) return SLUICE_ENOMEM;
  for_rows(s, o, top_row, &a);
  int bytes = sluice__value_is_bytes(o->value);
  if (a.m.n) qsort(a.m.v, a.m.n, sizeof(fnacc), fn_cmp);
  size_t shown = a.m.n < o->max_rows ? a.m.n : o->max_rows;
  int64_t shown_flat = 0;
  for (size_t i = 0; i < shown; i++) shown_flat += a.m.v[i].flat;

  sluice__buf b = {0};
  char v1[32], v2[32], p1[16], p2[16], p3[16];
  sluice__buf_printf(&b, "Type: %s\n", sluice_prof_value_name(o->value));
  time_line(&b, s);
  if (is_residual(o->value) && (o->queue || o->outcomes || o->key)) {
    sluice__buf_printf(&b, "Filter: queue=%s ", o->queue ? o->queue : "*");
    if (o->key) sluice__buf_printf(&b, "key=%s ", o->key);
    sluice__buf_puts(&b, "outcomes=");
    for (int k = 0, first = 1; k < SLUICE__N_OUTCOMES; k++)
      if (!o->outcomes || (o->outcomes & SLUICE_PROF_OUTCOME_BIT(k))) {
        sluice__buf_printf(&b, "%s%s", first ? "" : ",",
                           sluice__outcome_name(k));
        first = 0;
      }
    sluice__buf_putc(&b, '\n');
  }
  sluice__fmt_value(v1, sizeof v1, shown_flat, bytes);
  sluice__fmt_value(v2, sizeof v2, a.total, bytes);
  fmt_pct(p1, sizeof p1, shown_flat, a.total);
  sluice__buf_printf(&b, "Showing nodes accounting for %s, %s of %s total\n",
                     v1, p1, v2);
  if (shown < a.m.n)
    sluice__buf_printf(&b, "Showing top %zu nodes out of %zu\n", shown, a.m.n);
  sluice__buf_printf(&b, "%10s %6s %6s %10s %6s\n", "flat", "flat%", "sum%",
                     "cum", "cum%");
  int64_t sum = 0;
  for (size_t i = 0; i < shown; i++) {
    const fnacc *f = &a.m.v[i];
    sum += f->flat;
    sluice__fmt_value(v1, sizeof v1, f->flat, bytes);
    sluice__fmt_value(v2, sizeof v2, f->cum, bytes);
    fmt_pct(p1, sizeof p1, f->flat, a.total);
    fmt_pct(p2, sizeof p2, sum, a.total);
    fmt_pct(p3, sizeof p3, f->cum, a.total);
    sluice__buf_printf(&b, "%10s %6s %6s %10s %6s  %s", v1, p1, p2, v2, p3,
                       f->name);
    if (f->file) sluice__buf_printf(&b, " %s:%u", f->file, f->line);
    sluice__buf_puts(&b, f->inlined ? " (inline)\n" : "\n");
  }
  int rc = (b.oom || a.m.oom) ? SLUICE_ENOMEM
                              : sluice__out_write(out, b.data, b.len);
  sluice__buf_free(&b);
  sluice__free(a.m.v);
  sluice__free(a.m.idx);
  sluice__sym_close(a.st);
  return rc;
}

/* ------------------------------------------------------------------------ */

typedef struct fold_arg {
  const sluice_prof_snapshot *s;
  sluice__symtab *st;
  sluice__buf b;
  sluice__out *out;
  int rc;
} fold_arg;

static void fold_row(uint32_t stack, int64_t v, const sluice__snap_resid *r,
                     void *arg) {
  fold_arg *a = arg;
  if (a->rc) return;
  sluice__frame f[SLUICE__MAX_FRAMES];
  uint32_t n = sluice__stack_sframes(a->st, stack, f, SLUICE__MAX_FRAMES);
  int first = 1;
  if (r) { /* residual: the queue, key value and outcome as root frames */
    const char *q = sluice__queue_name(r->key.queue), *kn;
    const char *k = sluice__snap_key(a->s, &r->key, &kn);
    sluice__buf_printf(&a->b, "[queue %s];", *q ? q : "-");
    if (k) sluice__buf_printf(&a->b, "[%s=%s];", kn ? kn : "key", k);
    sluice__buf_printf(&a->b, "[%s]", sluice__outcome_name(r->key.outcome));
    first = 0;
  }
  for (uint32_t i = n; i-- > 0;) {
    if (!first) sluice__buf_putc(&a->b, ';');
    sluice__buf_puts(&a->b, f[i].func);
    first = 0;
  }
  sluice__buf_printf(&a->b, " %lld\n", (long long)v);
  if (a->b.len >= 16384) {
    a->rc = a->b.oom ? SLUICE_ENOMEM
                     : sluice__out_write(a->out, a->b.data, a->b.len);
    a->b.len = 0;
  }
}

int sluice__write_folded(const sluice_prof_snapshot *s,
                         const sluice_prof_output *o, sluice__out *out) {
  fold_arg a;
  memset(&a, 0, sizeof a);
  a.s = s;
  a.out = out;
  a.st = sluice__sym_open();
  if (!a.st) return SLUICE_ENOMEM;
  for_rows(s, o, fold_row, &a);
  if (!a.rc)
    a.rc = a.b.oom ? SLUICE_ENOMEM : sluice__out_write(out, a.b.data, a.b.len);
  sluice__buf_free(&a.b);
  sluice__sym_close(a.st);
  return a.rc;
}

/* ------------------------------------------------------------------------ */
/* The residual report. */

/* Top sites of one group from the snapshot's residual rows. Stacks that
 * read the same (they differ below the frames shown, or two lines of a
 * function without line information) are merged. */
static void report_sites(sluice__buf *b, const sluice_prof_snapshot *s,
                         sluice__symtab *st,
                         const sluice_prof_residual_stats *g) {
  sluice__site_rows rows = {0};
  for (size_t i = 0; i < s->n_resid; i++) {
    const sluice__snap_resid *r = &s->resid[i];
    const char *k = sluice__snap_key(s, &r->key, NULL);
    if (r->key.outcome != g->outcome ||
        strcmp(sluice__queue_name(r->key.queue), g->queue) ||
        strcmp(k ? k : "", g->key))
      continue;
    sluice__site_add(&rows, r->key.stack, r->n, r->b);
  }
  sluice_prof_site sites[5];
  sluice__buf chains[5];
  memset(chains, 0, sizeof chains);
  size_t n = sluice__sites_top(&rows, s->rate, st, (int64_t)g->retained_bytes,
                               (int64_t)g->retained_objects, 6, sites, chains,
                               5);
  if (rows.oom) b->oom = 1;
  sluice__site_rows_free(&rows);
  if (!n) return;
  sluice__buf_printf(b, "\ntop residual sites, queue %s, ",
                     *g->queue ? g->queue : "-");
  if (g->key_name) sluice__buf_printf(b, "%s=%s, ", g->key_name, g->key);
  sluice__buf_printf(b, "outcome %s:\n", sluice__outcome_name(g->outcome));
  sluice__buf_printf(b, "%10s %6s %8s  %s\n", "bytes", "%", "objects",
                     "stack (leaf first)");
  for (size_t i = 0; i < n; i++) {
    char v[32], p[16];
    sluice__fmt_value(v, sizeof v, (int64_t)sites[i].bytes, 1);
    snprintf(p, sizeof p, "%.0f%%", 100 * sites[i].share);
    sluice__buf_printf(b, "%10s %6s %8llu  %s\n", v, p,
                       (unsigned long long)sites[i].objects, sites[i].stack);
    sluice__buf_free(&chains[i]);
  }
}

/* The verdict column: the state and its evidence. */
static void verdict_text(sluice__buf *b, const sluice_prof_residual_stats *r) {
  char v[32];
  switch (r->state) {
    case SLUICE_PROF_LEAK:
      sluice__buf_printf(b,
                         "LEAK: growth over %llu msgs / %.0f s; oldest "
                         "%llu msgs / %.0f s old",
                         (unsigned long long)r->slope_messages,
                         r->slope_seconds,
                         (unsigned long long)r->oldest_age_messages,
                         r->oldest_age_seconds);
      break;
    case SLUICE_PROF_GROWING:
      sluice__buf_printf(b,
                         "growing for %llu msgs / %.0f s: a leak unless it "
                         "levels off within %llu msgs and %.0f s",
                         (unsigned long long)r->slope_messages,
                         r->slope_seconds,
                         (unsigned long long)r->level_off_messages,
                         r->level_off_seconds);
      break;
    case SLUICE_PROF_BOUNDED:
      sluice__fmt_value(v, sizeof v, (int64_t)r->retained_bytes, 1);
      sluice__buf_printf(b, "bounded at %s; oldest %llu msgs / %.0f s old", v,
                         (unsigned long long)r->oldest_age_messages,
                         r->oldest_age_seconds);
      break;
    default: sluice__buf_puts(b, "ok");
  }
}

static int resid_row_match(const sluice_prof_output *o,
                           const sluice_prof_residual_stats *r) {
  if (o->queue && strcmp(o->queue, r->queue)) return 0;
  if (o->outcomes && !(o->outcomes & SLUICE_PROF_OUTCOME_BIT(r->outcome)))
    return 0;
  if (o->key && strcmp(o->key, r->key)) return 0;
  return 1;
}

static void report_header(sluice__buf *b, const sluice_prof_snapshot *s) {
  const sluice_prof_opts *opts = sluice__opts();
  sluice__buf_puts(b, "sluice residual report\n");
  if (opts->grace_ms < 0) sluice__buf_puts(b, "grace: none");
  else sluice__buf_printf(b, "grace: %ld ms", opts->grace_ms);
  sluice__buf_printf(b,
                     "; verdict: growth >= %zu B/message lasting %llu "
                     "messages and %.0f s; sample rate: ",
                     opts->leak_threshold,
                     (unsigned long long)opts->horizon_messages,
                     (double)opts->horizon_ms / 1000);
  if (s->rate == (uint64_t)SLUICE_PROF_RATE_NONE)
    sluice__buf_puts(b, "none (no stacks)");
  else sluice__buf_printf(b, "%llu B", (unsigned long long)s->rate);
  if (opts->adaptive_messages > 0)
    sluice__buf_printf(b, "; adaptive stacks: %ld messages",
                       opts->adaptive_messages);
  sluice__buf_puts(b, "\n");
  if (s->ms.rechecks_skipped)
    sluice__buf_printf(b,
                       "re-checks skipped (pending queue full): %llu; the "
                       "grace period is never shortened\n",
                       (unsigned long long)s->ms.rechecks_skipped);
  sluice__buf_printf(b,
                     "\n%-20s %-14s %-7s %9s %9s %10s %7s %7s %8s %7s "
                     "%10s %9s  %s\n",
                     "queue", "key", "outcome", "messages", "residual",
                     "B/msg@end", "pending", "cached", "leaked", "skipped",
                     "retained", "B/msg", "verdict");
}

int sluice__write_residual(const sluice_prof_output *o, sluice__out *out) {
  size_t n = sluice_prof_residual_stats_get(NULL, 0);
  sluice_prof_residual_stats *v = sluice__calloc(n ? n : 1, sizeof(*v));
  if (!v) return SLUICE_ENOMEM;
  n = sluice_prof_residual_stats_get(v, n);
  sluice_prof_snapshot *s = NULL;
  int rc = sluice_prof_snapshot_take(&s);
  if (rc) {
    sluice__free(v);
    return rc;
  }
  sluice__buf b = {0};
  report_header(&b, s);
  for (size_t i = 0; i < n; i++) {
    const sluice_prof_residual_stats *r = &v[i];
    if (!resid_row_match(o, r)) continue;
    char ret[32], key[160];
    sluice__fmt_value(ret, sizeof ret, (int64_t)r->retained_bytes, 1);
    if (r->key_name) snprintf(key, sizeof key, "%s=%s", r->key_name, r->key);
    else snprintf(key, sizeof key, "-");
    sluice__buf_printf(
        &b,
        "%-20s %-14s %-7s %9llu %9llu %10.1f %7llu %7llu %8llu %7llu %10s "
        "%9.1f  ",
        *r->queue ? r->queue : "-", key, sluice__outcome_name(r->outcome),
        (unsigned long long)r->messages, (unsigned long long)r->with_residual,
        r->messages ? (double)r->bytes_at_end / (double)r->messages : 0.0,
        (unsigned long long)r->pending, (unsigned long long)r->cached,
        (unsigned long long)r->leaked, (unsigned long long)r->skipped, ret,
        r->bytes_per_message);
    verdict_text(&b, r);
    sluice__buf_putc(&b, '\n');
  }
  sluice__symtab *st = sluice__sym_open();
  for (size_t i = 0; st && i < n; i++) {
    const sluice_prof_residual_stats *r = &v[i];
    if (resid_row_match(o, r) &&
        (r->retained_bytes || r->pending || r->state != SLUICE_PROF_OK))
      report_sites(&b, s, st, r);
  }
  rc = (b.oom || !st) ? SLUICE_ENOMEM : sluice__out_write(out, b.data, b.len);
  if (st) sluice__sym_close(st);
  sluice__buf_free(&b);
  sluice__free(v);
  sluice_prof_snapshot_free(s);
  return rc;
}
