/* SPDX-License-Identifier: MIT */
/* push-worker's stats: one JSON object per line on --stats-fd (events,
 * samples, the final line with the residual aggregates and the leak
 * verdicts), the summary line on stdout and the --report reports. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "worker.h"

void pw_emit(pw_worker *w, json_t *obj) {
  if (w->cfg.stats_fd < 0 || !obj) {
    json_decref(obj);
    return;
  }
  char *s = json_dumps(obj, JSON_COMPACT);
  json_decref(obj);
  if (!s) return;
  size_t len = strlen(s);
  s[len] = '\n'; /* replaces the NUL; written with its length */
  const char *p = s;
  size_t left = len + 1;
  while (left) {
    ssize_t n = write(w->cfg.stats_fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    p += n;
    left -= (size_t)n;
  }
  free(s);
}

typedef struct residual_sum {
  uint64_t messages, with_residual, bytes_at_end, leaked, bytes_leaked,
      retained_bytes, retained_objects, pending;
  int leaking;
} residual_sum;

static void residual_totals(residual_sum *t) {
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  memset(t, 0, sizeof(*t));
  for (size_t i = 0; i < n && i < 64; i++) {
    t->messages += v[i].messages;
    t->with_residual += v[i].with_residual;
    t->bytes_at_end += v[i].bytes_at_end;
    t->leaked += v[i].leaked;
    t->bytes_leaked += v[i].bytes_leaked;
    t->retained_bytes += v[i].retained_bytes;
    t->retained_objects += v[i].retained_objects;
    t->pending += v[i].pending;
    t->leaking |= v[i].leaking;
  }
}

static json_t *counters_json(pw_worker *w) {
  sluice_consumer_stats cs;
  sluice_consumer_get_stats(w->c, &cs);
  return json_pack(
      "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
      "s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
      "s:I}}",
      "received", (json_int_t)LOAD(w->n.received), "finished",
      (json_int_t)LOAD(w->n.finished), "invalid",
      (json_int_t)LOAD(w->n.invalid), "probes", (json_int_t)LOAD(w->n.probes),
      "sent", (json_int_t)LOAD(w->n.sent), "ok", (json_int_t)LOAD(w->n.ok),
      "rejected_4xx", (json_int_t)LOAD(w->n.rejected_4xx), "auth_failed",
      (json_int_t)LOAD(w->n.auth_failed), "failed_5xx",
      (json_int_t)LOAD(w->n.failed_5xx), "no_reply",
      (json_int_t)LOAD(w->n.no_reply), "retried",
      (json_int_t)LOAD(w->n.retried), "dead_lettered",
      (json_int_t)LOAD(w->n.dead_lettered), "republish_failed",
      (json_int_t)LOAD(w->n.republish_failed), "stale",
      (json_int_t)LOAD(w->n.stale), "aborted", (json_int_t)LOAD(w->n.aborted),
      "abandoned", (json_int_t)LOAD(w->n.abandoned), "inflight_map",
      (json_int_t)pw_inflight_size(w), "consumer", "delivered",
      (json_int_t)cs.delivered, "acked", (json_int_t)cs.acked, "nacked",
      (json_int_t)cs.nacked, "rejected", (json_int_t)cs.rejected, "stale",
      (json_int_t)cs.stale, "redelivered", (json_int_t)cs.redelivered,
      "too_big", (json_int_t)cs.too_big, "in_flight", (json_int_t)cs.in_flight,
      "max_in_flight", (json_int_t)cs.max_in_flight, "reconnects",
      (json_int_t)cs.reconnects, "close_listeners",
      (json_int_t)cs.close_listeners);
}

json_t *pw_sample_json(pw_worker *w, const char *type) {
  sluice_prof_memstats ms;
  residual_sum r;
  sluice_prof_memstats_read(&ms);
  residual_totals(&r);
  json_t *o = json_pack(
      "{s:s, s:f, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
      "s:b}, s:I, s:I}",
      "type", type, "t", pw_now_s() - w->t0, "rss_bytes",
      (json_int_t)ms.rss_bytes, "heap_live_bytes",
      (json_int_t)ms.heap_live_bytes, "live_objects",
      (json_int_t)ms.live_objects, "residual", "messages",
      (json_int_t)r.messages, "with_residual", (json_int_t)r.with_residual,
      "bytes_at_end", (json_int_t)r.bytes_at_end, "leaked",
      (json_int_t)r.leaked, "bytes_leaked", (json_int_t)r.bytes_leaked,
      "retained_bytes", (json_int_t)r.retained_bytes, "retained_objects",
      (json_int_t)r.retained_objects, "pending", (json_int_t)r.pending,
      "leaking", r.leaking, "listeners_registered",
      (json_int_t)w->listeners_registered, "listeners_refused",
      (json_int_t)w->listeners_refused);
  if (o) json_object_set_new(o, "counters", counters_json(w));
  return o;
}

int pw_residual_pending(void) {
  residual_sum r;
  residual_totals(&r);
  return r.pending != 0;
}

/* ---- the profiler's verdicts --------------------------------------------- */

/* "type=probe: 176.0 B/message, type=ok: 0": every job type of the
 * verdict's queue and outcome. */
static void kinds_line(char *buf, size_t cap, const sluice_prof_leak *v) {
  size_t len = 0;
  buf[0] = 0;
  for (size_t i = 0; i < v->n_kinds && len < cap; i++) {
    const sluice_prof_kind_summary *k = &v->kinds[i];
    char per[32];
    if (k->bytes_per_message > 0)
      snprintf(per, sizeof(per), "%.1f B/message", k->bytes_per_message);
    else snprintf(per, sizeof(per), "0");
    len += (size_t)snprintf(buf + len, cap - len, "%s%s=%s: %s", i ? ", " : "",
                            v->key_name, k->key ? k->key : "-", per);
  }
}

void pw_on_leak(const sluice_prof_leak *v, void *user) {
  pw_worker *w = user;
  /* Keep this callback's own work out of any message's scope. */
  sluice_prof_scope prev = sluice_prof_scope_enter(0);
  char key[160] = "", kinds[512];
  if (v->key) snprintf(key, sizeof(key), "%s=%s", v->key_name, v->key);
  kinds_line(kinds, sizeof(kinds), v);
  pthread_mutex_lock(&w->verdict_mu);
  if (w->n_verdicts < MAX_VERDICTS) {
    pw_verdict *r = &w->verdicts[w->n_verdicts++];
    snprintf(r->queue, sizeof(r->queue), "%s", v->queue ? v->queue : "");
    snprintf(r->key, sizeof(r->key), "%s", key);
    snprintf(r->kinds, sizeof(r->kinds), "%s", kinds);
    r->outcome = v->outcome;
    r->bytes_per_message = v->bytes_per_message;
    r->messages = v->messages;
    snprintf(r->site, sizeof(r->site), "%s",
             v->n_sites ? v->sites[0].function : "(no stacks sampled)");
    snprintf(r->stack, sizeof(r->stack), "%s",
             v->n_sites ? v->sites[0].stack : "");
  }
  pthread_mutex_unlock(&w->verdict_mu);
  fprintf(stderr,
          "push-worker: LEAK: queue %s, outcome %s%s%s: %.1f B/message left "
          "behind over %" PRIu64 " messages; top site %s (%s)\n",
          v->queue, sluice_outcome_name(v->outcome), *key ? " " : "", key,
          v->bytes_per_message, v->messages,
          v->n_sites ? v->sites[0].function : "?",
          v->n_sites ? v->sites[0].stack : "no stacks sampled");
  /* One line that says which kind of message leaks. */
  if (v->n_kinds > 1)
    fprintf(stderr, "push-worker: by %s: %s\n", v->key_name, kinds);
  sluice_prof_scope_enter(prev);
}

/* ---- the end of a run --------------------------------------------------- */

json_t *pw_final_json(pw_worker *w, double elapsed) {
  json_t *o = pw_sample_json(w, "final");
  if (!o) return NULL;
  json_object_set_new(o, "elapsed_s", json_real(elapsed));
  json_object_set_new(o, "leak_mode", json_string(pw_leak_names[w->cfg.leak]));
  json_object_set_new(o, "interposing",
                      json_boolean(sluice_prof_interposing()));
  json_object_set_new(o, "profiling", json_boolean(w->cfg.prof_rate != 0));
  json_object_set_new(o, "run_result",
                      json_string(sluice_err_name(w->run_result)));
  json_t *aggs = json_array();
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    json_array_append_new(
        aggs,
        json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, "
                  "s:s, s:b}",
                  "queue", v[i].queue, "key", v[i].key, "outcome",
                  sluice_outcome_name(v[i].outcome), "messages",
                  (json_int_t)v[i].messages, "with_residual",
                  (json_int_t)v[i].with_residual, "bytes_at_end",
                  (json_int_t)v[i].bytes_at_end, "cached",
                  (json_int_t)v[i].cached, "leaked", (json_int_t)v[i].leaked,
                  "bytes_leaked", (json_int_t)v[i].bytes_leaked,
                  "retained_bytes", (json_int_t)v[i].retained_bytes,
                  "bytes_per_message", v[i].bytes_per_message, "state",
                  sluice_prof_state_name(v[i].state), "leaking", v[i].leaking));
  json_object_set_new(o, "aggregates", aggs);
  json_t *verdicts = json_array();
  pthread_mutex_lock(&w->verdict_mu);
  for (size_t i = 0; i < w->n_verdicts; i++) {
    const pw_verdict *r = &w->verdicts[i];
    json_array_append_new(
        verdicts,
        json_pack("{s:s, s:s, s:s, s:s, s:f, s:I, s:s, s:s}", "queue", r->queue,
                  "key", r->key, "kinds", r->kinds, "outcome",
                  sluice_outcome_name(r->outcome), "bytes_per_message",
                  r->bytes_per_message, "messages", (json_int_t)r->messages,
                  "top_site", r->site, "stack", r->stack));
  }
  pthread_mutex_unlock(&w->verdict_mu);
  json_object_set_new(o, "verdicts", verdicts);
  return o;
}

void pw_print_summary(pw_worker *w, double elapsed) {
  sluice_consumer_stats cs;
  sluice_consumer_get_stats(w->c, &cs);
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  residual_sum r;
  residual_totals(&r);
  uint64_t fin = LOAD(w->n.finished);
  printf(
      "push-worker: %" PRIu64 " jobs in %.2f s (%.0f/s), %s ack, "
      "prefetch %u, %d workers, leak %s: %" PRIu64 " sent, %" PRIu64
      " ok, %" PRIu64 " probes, %" PRIu64 " dead-lettered (%" PRIu64
      " invalid, %" PRIu64 " 4xx, %" PRIu64 " auth), %" PRIu64
      " retried; acked %" PRIu64 ", nacked %" PRIu64 ", rejected %" PRIu64
      "; rss %.1f MiB, heap %.1f MiB; residual %.1f B/message (%" PRIu64
      " B retained)%s%s\n",
      fin, elapsed, elapsed > 0 ? (double)fin / elapsed : 0.0,
      w->cfg.ack == SLUICE_ACK_AUTO ? "auto" : "manual", w->cfg.prefetch,
      w->cfg.workers, pw_leak_names[w->cfg.leak], LOAD(w->n.sent),
      LOAD(w->n.ok), LOAD(w->n.probes), LOAD(w->n.dead_lettered),
      LOAD(w->n.invalid), LOAD(w->n.rejected_4xx), LOAD(w->n.auth_failed),
      LOAD(w->n.retried), cs.acked, cs.nacked, cs.rejected,
      (double)ms.rss_bytes / 1048576.0, (double)ms.heap_live_bytes / 1048576.0,
      r.messages ? (double)r.retained_bytes / (double)r.messages : 0.0,
      r.retained_bytes, r.leaking ? ", LEAK" : "",
      w->listeners_refused ? ", close listeners REFUSED (registry full)" : "");
  if (w->cfg.prof_rate && !sluice_prof_interposing())
    printf("push-worker: this build cannot interpose malloc (sanitizer): "
           "residuals count only announced blocks\n");
}

static int write_stdout(const void *data, size_t len, void *user) {
  return fwrite(data, 1, len, stdout) == len ? 0 : -1;
}

void pw_print_report(void) {
  sluice_prof_output ro = {.format = SLUICE_PROF_FMT_RESIDUAL};
  printf("\n");
  sluice_prof_write(NULL, &ro, write_stdout, NULL);
  sluice_prof_output to = {.format = SLUICE_PROF_FMT_TOP,
                           .value = SLUICE_PROF_RESIDUAL_SPACE,
                           .max_rows = 10};
  printf("\n");
  sluice_prof_write(NULL, &to, write_stdout, NULL);
}
