/* SPDX-License-Identifier: MIT */
/* Leak checks for users' tests: the growth of a queue's retained memory
 * between two points (mark, since), and a driver that runs messages
 * through a handler without a broker (run). The figure is the verdict's:
 * bytes retained per message, from the exact group counters; the sites are
 * from blocks recorded at weight 1 (every allocation of a check's messages
 * is captured). The consumer-side helper is header-only
 * (sluice/prof_check.h): this library knows nothing of the consumer. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prof_resid.h"

#define MAX_SITES 5

/* Under R.mu: queue index of `name`, or -1. */
static int queue_find(const char *name) {
  if (!*name) return 0;
  for (uint32_t i = 1; i <= R.n_queues; i++)
    if (!strcmp(R.queues[i].name, name)) return (int)i;
  return -1;
}

/* Under R.mu: messages and retained memory of every group of queue q. */
static void queue_totals(int q, uint64_t *msgs, int64_t *b, int64_t *n) {
  *msgs = 0;
  *b = *n = 0;
  if (q < 0) return;
  for (uint32_t k = 0; k < R.n_kinds; k++) {
    const kind *kd = &R.kinds[k];
    if (!kd->used || kd->queue != (uint16_t)q) continue;
    for (int o = 0; o < N_OUT; o++) {
      if (!kd->groups[o]) continue;
      int64_t gb, gn;
      sluice__group_retained(kd->groups[o] - 1, &gb, &gn);
      *b += gb;
      *n += gn;
      *msgs += group_at(kd->groups[o] - 1)->messages;
    }
  }
}

int sluice_prof_check_mark(const char *queue, sluice_prof_check_point *p) {
  if (!queue || !p || strlen(queue) >= sizeof p->queue) return SLUICE_EINVAL;
  if (!R.chunks) return SLUICE_ESTATE;
  memset(p, 0, sizeof *p);
  snprintf(p->queue, sizeof p->queue, "%s", queue);
  sluice_prof_poll();
  sluice__enter_guard();
  sluice__lock_acquire(&R.mu);
  queue_totals(queue_find(queue), &p->messages, &p->bytes, &p->objects);
  sluice__lock_release(&R.mu);
  sluice__leave_guard();
  return 0;
}

typedef struct site_arg {
  int queue;
  sluice__site_rows rows;
} site_arg;

static void site_visit(const sluice__resid_key *k, uint64_t size, void *arg) {
  site_arg *a = arg;
  if (k->queue == a->queue)
    sluice__site_add(&a->rows, k->stack, 1, (int64_t)size);
}

/* The report: one line, then the top sites. */
static char *report(const sluice_prof_check_point *p,
                    const sluice_prof_check_result *r, double max_bpm, int q) {
  sluice__buf b = {0};
  sluice__buf_printf(&b,
                     "sluice leak check '%s': %.1f B and %.2f objects per "
                     "message over %llu messages (threshold %.1f B): %s; "
                     "the queue retains %llu B in %llu blocks\n",
                     p->queue, r->bytes_per_message, r->objects_per_message,
                     (unsigned long long)r->messages, max_bpm,
                     r->leaked ? "LEAK" : "ok",
                     (unsigned long long)r->retained_bytes,
                     (unsigned long long)r->retained_objects);
  site_arg a = {.queue = q};
  if (q >= 0) sluice__residual_collect(-1, site_visit, &a);
  sluice__symtab *st = a.rows.len ? sluice__sym_open() : NULL;
  sluice_prof_site sites[MAX_SITES];
  sluice__buf chains[MAX_SITES];
  memset(chains, 0, sizeof chains);
  size_t n = st ? sluice__sites_top(&a.rows, sluice__rate(), st,
                                    (int64_t)r->retained_bytes,
                                    (int64_t)r->retained_objects, 6, sites,
                                    chains, MAX_SITES)
                : 0;
  for (size_t i = 0; i < n; i++) {
    char v[32];
    sluice__fmt_value(v, sizeof v, (int64_t)sites[i].bytes, 1);
    sluice__buf_printf(&b, "  %5.1f%% %10s %8llu  %s\n", 100 * sites[i].share,
                       v, (unsigned long long)sites[i].objects, sites[i].stack);
    sluice__buf_free(&chains[i]);
  }
  if (st) sluice__sym_close(st);
  sluice__site_rows_free(&a.rows);
  if (b.oom) {
    sluice__buf_free(&b);
    return NULL;
  }
  return b.data;
}

int sluice_prof_check_since(const sluice_prof_check_point *p, double max_bpm,
                            sluice_prof_check_result *out) {
  if (!p || !out) return SLUICE_EINVAL;
  memset(out, 0, sizeof *out);
  if (!R.chunks) return SLUICE_ESTATE;
  sluice_prof_poll();
  sluice__enter_guard();
  uint64_t msgs;
  int64_t b, n;
  sluice__lock_acquire(&R.mu);
  int q = queue_find(p->queue);
  queue_totals(q, &msgs, &b, &n);
  sluice__lock_release(&R.mu);
  out->messages = msgs > p->messages ? msgs - p->messages : 0;
  if (out->messages) {
    out->bytes_per_message = (double)(b - p->bytes) / (double)out->messages;
    out->objects_per_message = (double)(n - p->objects) / (double)out->messages;
  }
  out->retained_bytes = b > 0 ? (uint64_t)b : 0;
  out->retained_objects = n > 0 ? (uint64_t)n : 0;
  out->leaked = out->bytes_per_message > max_bpm;
  char *text = report(p, out, max_bpm, q);
  if (text) {
    /* The caller frees it with free(): hand over a copy from malloc. */
    sluice__leave_guard();
    out->report = strdup(text);
    sluice__enter_guard();
    sluice__free(text);
  }
  sluice__leave_guard();
  return out->report ? 0 : SLUICE_ENOMEM;
}

void sluice_prof_check_free(sluice_prof_check_result *r) {
  if (!r) return;
  free(r->report);
  r->report = NULL;
}

/* Under R.mu: capture every stack of the queue's messages (or stop). */
static void capture_all(const char *queue, int on) {
  uint32_t k = sluice__kind_of(queue, NULL, NULL, sluice__now_ns());
  atomic_store_explicit(&R.kinds[k].capture_left, on ? UINT64_MAX : 0,
                        memory_order_relaxed);
}

static void one(const char *queue, uint64_t i, sluice_prof_check_fn fn,
                void *user) {
  sluice_prof_scope s = sluice_prof_scope_begin(queue, i, 0);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  int outcome = fn(i, user);
  sluice_prof_scope_enter(prev);
  if (s) sluice_prof_scope_end(s, outcome, NULL);
}

int sluice_prof_check_run(const sluice_prof_check_opts *opts,
                          sluice_prof_check_fn fn, void *user,
                          sluice_prof_check_result *out) {
  sluice_prof_check_opts o = {0};
  if (opts) o = *opts;
  if (!fn || !out) return SLUICE_EINVAL;
  memset(out, 0, sizeof *out);
  if (!o.name || !*o.name) o.name = "check";
  if (!o.messages) o.messages = 1000;
  if (!o.warmup) o.warmup = o.messages / 2;
  if (o.max_bytes_per_message <= 0) o.max_bytes_per_message = 1;
  if (strlen(o.name) >= sizeof(((sluice_prof_check_point *)0)->queue))
    return SLUICE_EINVAL;
  if (!sluice_prof_running()) {
    int rc = sluice_prof_start(NULL);
    if (rc) return rc;
  }
  sluice__enter_guard();
  sluice__lock_acquire(&R.mu);
  capture_all(o.name, 1);
  sluice__lock_release(&R.mu);
  sluice__leave_guard();
  /* One loop, so that warm-up and measured messages share their stacks. */
  sluice_prof_check_point p;
  int rc = 0;
  for (uint64_t i = 0; !rc && i < o.warmup + o.messages; i++) {
    if (i == o.warmup) rc = sluice_prof_check_mark(o.name, &p);
    if (!rc) one(o.name, i, fn, user);
  }
  if (!rc) rc = sluice_prof_check_since(&p, o.max_bytes_per_message, out);
  sluice__enter_guard();
  sluice__lock_acquire(&R.mu);
  capture_all(o.name, 0);
  sluice__lock_release(&R.mu);
  sluice__leave_guard();
  return rc;
}
