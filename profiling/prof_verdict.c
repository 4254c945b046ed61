/* SPDX-License-Identifier: MIT */
/* Verdicts: the on_leak callback or the line on stderr, with the top sites
 * and the comparison of the queue's key values; the deferred-completion
 * warning; the site estimate shared with the residual report. All of it
 * runs outside the scope lock (it takes it to read). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prof_resid.h"

#define MAX_SITES 5
#define MAX_KINDS 8

/* ------------------------------------------------------------------------ */
/* Sites. */

void sluice__site_add(sluice__site_rows *r, uint32_t stack, int64_t n,
                      int64_t b) {
  for (size_t i = r->len; i-- > 0;)
    if (r->v[i].stack == stack) {
      r->v[i].n += n;
      r->v[i].b += b;
      return;
    }
  if (r->len == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 16;
    sluice__site_row *v = sluice__realloc(r->v, cap * sizeof(*v));
    if (!v) {
      r->oom = 1;
      return;
    }
    r->v = v;
    r->cap = cap;
  }
  r->v[r->len++] = (sluice__site_row){stack, n, b};
}

void sluice__site_rows_free(sluice__site_rows *r) {
  sluice__free(r->v);
  memset(r, 0, sizeof *r);
}

static void chain_of(sluice__buf *c, sluice__symtab *st, uint32_t stack,
                     unsigned depth) {
  sluice__put_chain(c, st, SLUICE__STACK_ID(stack), depth);
}

size_t sluice__sites_top(sluice__site_rows *r, uint64_t rate,
                         sluice__symtab *st, int64_t retained_b,
                         int64_t retained_n, unsigned depth,
                         sluice_prof_site *out, sluice__buf *chains,
                         size_t cap) {
  int exact = 0;
  for (size_t i = 0; i < r->len; i++)
    if (r->v[i].stack & SLUICE__EXACT) exact = 1;
  /* Keep one kind of rows, unbiased; merge stacks that read the same. */
  size_t m = 0;
  sluice__buf *ch = r->len ? sluice__calloc(r->len, sizeof *ch) : NULL;
  if (r->len && !ch) return 0;
  for (size_t i = 0; i < r->len; i++) {
    sluice__site_row x = r->v[i];
    if (exact != !!(x.stack & SLUICE__EXACT) || x.b <= 0) continue;
    if (!exact) sluice__unbias(x.n, x.b, rate, &x.n, &x.b);
    sluice__buf c = {0};
    chain_of(&c, st, x.stack, depth);
    size_t j = 0;
    while (j < m && (!c.data || !ch[j].data || strcmp(ch[j].data, c.data))) j++;
    if (j < m) {
      r->v[j].n += x.n;
      r->v[j].b += x.b;
      sluice__buf_free(&c);
    } else {
      r->v[m] = x;
      ch[m++] = c;
    }
  }
  int64_t tb = 0, tn = 0;
  for (size_t i = 0; i < m; i++) {
    tb += r->v[i].b;
    tn += r->v[i].n;
  }
  for (size_t i = 1; i < m; i++) /* biggest first */
    for (size_t j = i; j > 0 && r->v[j].b > r->v[j - 1].b; j--) {
      sluice__site_row t = r->v[j];
      r->v[j] = r->v[j - 1];
      r->v[j - 1] = t;
      sluice__buf c = ch[j];
      ch[j] = ch[j - 1];
      ch[j - 1] = c;
    }
  size_t n = m < cap ? m : cap;
  for (size_t i = 0; i < n; i++) {
    const sluice__site_row *x = &r->v[i];
    double share = tb > 0 ? (double)x->b / (double)tb : 0;
    double nshare = tn > 0 ? (double)x->n / (double)tn : 0;
    sluice__frame leaf;
    out[i].function =
        sluice__stack_sframes(st, SLUICE__STACK_ID(x->stack), &leaf, 1)
            ? leaf.func
            : "?";
    chains[i] = ch[i];
    ch[i] = (sluice__buf){0};
    out[i].stack = chains[i].data ? chains[i].data : "?";
    out[i].share = share;
    out[i].bytes =
        (uint64_t)(retained_b > 0 ? share * (double)retained_b : (double)x->b);
    out[i].objects =
        (uint64_t)(retained_n > 0 ? nshare * (double)retained_n : (double)x->n);
  }
  for (size_t i = 0; i < m; i++) sluice__buf_free(&ch[i]);
  sluice__free(ch);
  return n;
}

/* ------------------------------------------------------------------------ */
/* The verdict. */

static void site_visit(const sluice__resid_key *k, uint64_t size, void *arg) {
  sluice__site_add(arg, k->stack, 1, (int64_t)size);
}

typedef struct verdict_copy {
  sluice_prof_leak v;
  char queue[256], key_name[KEY_MAX + 1], key[KEY_MAX + 1];
  sluice_prof_kind_summary kinds[MAX_KINDS];
  char kind_keys[MAX_KINDS][KEY_MAX + 1];
  sluice_prof_leak_fn fn;
  void *user;
} verdict_copy;

/* Under R.mu: copy what the verdict says. 0 when the group is not LEAK
 * any more. */
static int copy_verdict(uint32_t gi, verdict_copy *c) {
  const grp *g = group_at(gi);
  if (!g->used || g->state != SLUICE_PROF_LEAK) return 0;
  const kind *kd = &R.kinds[g->kind];
  const qrow *qu = &R.queues[kd->queue];
  snprintf(c->queue, sizeof c->queue, "%s", qu->name);
  c->v.queue = c->queue;
  c->v.outcome = g->outcome;
  if (kd->key) {
    snprintf(c->key_name, sizeof c->key_name, "%s",
             qu->key_name ? qu->key_name : "key");
    snprintf(c->key, sizeof c->key, "%s", kd->key);
    c->v.key_name = c->key_name;
    c->v.key = c->key;
    c->v.n_kinds =
        sluice__kind_summaries(gi, c->kinds, c->kind_keys, MAX_KINDS);
    c->v.kinds = c->kinds;
  }
  c->v.state = g->state;
  c->v.bytes_per_message = g->bpm;
  c->v.objects_per_message = g->opm;
  c->v.messages = g->slope_msgs;
  c->v.seconds = (double)g->slope_ns / 1e9;
  int64_t b, n;
  sluice__group_retained(gi, &b, &n);
  c->v.retained_bytes = b > 0 ? (uint64_t)b : 0;
  c->v.retained_objects = n > 0 ? (uint64_t)n : 0;
  c->v.oldest_age_messages = g->age_msgs;
  c->v.oldest_age_seconds = (double)g->age_ns / 1e9;
  c->fn = R.on_leak;
  c->user = R.leak_user;
  return 1;
}

/* "type=probe: 128.0 B/message, type=push: 0" */
static void kinds_line(sluice__buf *b, const sluice_prof_leak *v) {
  if (v->n_kinds < 2) return;
  sluice__buf_puts(b, " [");
  for (size_t i = 0; i < v->n_kinds; i++) {
    const sluice_prof_kind_summary *k = &v->kinds[i];
    sluice__buf_printf(b, "%s%s=%s: ", i ? ", " : "", v->key_name,
                       k->key ? k->key : "-");
    if (k->bytes_per_message > 0)
      sluice__buf_printf(b, "%.1f B/message", k->bytes_per_message);
    else sluice__buf_puts(b, "0");
    if (k->state != SLUICE_PROF_OK && k->state != SLUICE_PROF_BOUNDED)
      sluice__buf_printf(b, " %s", sluice__state_name(k->state));
  }
  sluice__buf_putc(b, ']');
}

static void print_verdict(const sluice_prof_leak *v) {
  sluice__buf b = {0};
  char ret[32];
  sluice__fmt_value(ret, sizeof ret, (int64_t)v->retained_bytes, 1);
  sluice__buf_printf(&b, "sluice-prof: LEAK queue=%s outcome=%s",
                     *v->queue ? v->queue : "-",
                     sluice__outcome_name(v->outcome));
  if (v->key) sluice__buf_printf(&b, " %s=%s", v->key_name, v->key);
  sluice__buf_printf(&b,
                     ": %.1f B and %.2f objects per message over %llu "
                     "messages (%.1f s), %s retained, oldest %llu messages "
                     "/ %.1f s old",
                     v->bytes_per_message, v->objects_per_message,
                     (unsigned long long)v->messages, v->seconds, ret,
                     (unsigned long long)v->oldest_age_messages,
                     v->oldest_age_seconds);
  kinds_line(&b, v);
  for (size_t i = 0; i < v->n_sites; i++) {
    sluice__fmt_value(ret, sizeof ret, (int64_t)v->sites[i].bytes, 1);
    sluice__buf_printf(&b, "%s%s (%.0f%%, %s)",
                       i ? ", " : "; top sites: ", v->sites[i].stack,
                       100 * v->sites[i].share, ret);
  }
  sluice__buf_putc(&b, '\n');
  if (!b.oom) {
    ssize_t w = write(2, b.data, b.len);
    (void)w;
  }
  sluice__buf_free(&b);
}

void sluice__fire_verdict(uint32_t gi) {
  sluice__enter_guard();
  verdict_copy *c = sluice__calloc(1, sizeof *c);
  if (!c) {
    sluice__leave_guard();
    return;
  }
  sluice__lock_acquire(&R.mu);
  int live = copy_verdict(gi, c);
  sluice__lock_release(&R.mu);
  if (!live) {
    sluice__free(c);
    sluice__leave_guard();
    return;
  }
  sluice__site_rows rows = {0};
  sluice__residual_collect(gi, site_visit, &rows);
  sluice__symtab *st = rows.len ? sluice__sym_open() : NULL;
  sluice_prof_site sites[MAX_SITES];
  sluice__buf chains[MAX_SITES];
  memset(chains, 0, sizeof chains);
  if (st)
    c->v.n_sites = sluice__sites_top(&rows, sluice__rate(), st,
                                     (int64_t)c->v.retained_bytes,
                                     (int64_t)c->v.retained_objects, 4, sites,
                                     chains, MAX_SITES);
  c->v.sites = sites;
  sluice__leave_guard();
  if (c->fn) {
    c->fn(&c->v, c->user);
  } else {
    sluice__enter_guard();
    print_verdict(&c->v);
    sluice__leave_guard();
  }
  sluice__enter_guard();
  if (st) sluice__sym_close(st);
  for (size_t i = 0; i < MAX_SITES; i++) sluice__buf_free(&chains[i]);
  sluice__site_rows_free(&rows);
  sluice__free(c);
  sluice__leave_guard();
}

void sluice__warn_unentered(uint64_t allocations) {
  char line[512];
  int n = snprintf(
      line, sizeof line,
      "sluice-prof: warning: deferred deliveries are completed on a thread "
      "that never entered one (sluice_delivery_enter), and that thread "
      "kept %llu more blocks alive across those completions: what it "
      "allocates for a delivery is not in the delivery's residual. Wrap "
      "that work in sluice_delivery_enter()/sluice_delivery_leave() "
      "(docs/profiling.md, \"Deferred deliveries\"). Shown once; counted "
      "in MemStats deferred_unentered.\n",
      (unsigned long long)allocations);
  if (n > 0) {
    ssize_t w =
        write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    (void)w;
  }
}
