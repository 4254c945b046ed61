/* SPDX-License-Identifier: MIT */
/* /debug/vars: one JSON object, like Go's expvar, built with jansson. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "debug_internal.h"

static json_t *num(uint64_t v) {
  return json_integer(v > (uint64_t)INT64_MAX ? (json_int_t)INT64_MAX
                                              : (json_int_t)v);
}

/* json_object_set_new() that remembers a failure instead of checking each
 * call. */
typedef struct jb {
  int oom;
} jb;

static void set(jb *b, json_t *o, const char *k, json_t *v) {
  if (!o || !v) {
    json_decref(v);
    b->oom = 1;
    return;
  }
  if (json_object_set_new(o, k, v)) b->oom = 1; /* takes v even then */
}

static json_t *memstats(jb *b) {
  sluice_prof_memstats m;
  sluice_prof_memstats_read(&m);
  json_t *o = json_object();
#define F(name) set(b, o, #name, num(m.name))
  F(heap_live_bytes);
  F(heap_mapped_bytes);
  F(live_objects);
  F(total_alloc_bytes);
  F(mallocs);
  F(frees);
  F(rss_bytes);
  F(sampled_live_bytes);
  F(tracked_blocks);
  F(stacks);
  F(stacks_dropped);
  F(scopes_open);
  F(scopes_pending);
  F(scopes_retained);
  F(scopes_refused);
  F(rechecks_skipped);
  F(groups);
  F(groups_overflow);
  F(keys_overflow);
  F(ledgers);
  F(ledger_merges);
  F(deferred_unentered);
  F(overhead_bytes);
  F(sample_rate);
#undef F
  return o;
}

static json_t *consumer(jb *b, sluice_consumer *c) {
  if (!c) return json_null();
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  json_t *o = json_object();
#define F(name) set(b, o, #name, num(st.name))
  F(delivered);
  F(acked);
  F(nacked);
  F(rejected);
  F(handler_errors);
  F(stale);
  F(redelivered);
  F(too_big);
  F(ack_frames);
  F(in_flight);
  F(in_flight_bytes);
  F(max_in_flight);
  F(in_handler);
  F(max_in_handler);
  F(read_pauses);
  F(reconnects);
  F(generation);
  F(close_listeners);
#undef F
  set(b, o, "buffered",
      num(st.in_flight > st.in_handler ? st.in_flight - st.in_handler : 0));
  set(b, o, "connected", json_boolean(st.connected));
  set(b, o, "blocked", json_boolean(st.blocked));
  if (st.memory_high_bytes) {
    json_t *m = json_object();
#define M(key, name) set(b, m, key, num(st.name))
    M("bytes", memory_bytes);
    M("high_bytes", memory_high_bytes);
    M("low_bytes", memory_low_bytes);
    M("pauses", memory_pauses);
    M("paused_ms", memory_paused_ms);
    M("checks", memory_checks);
    M("read_errors", memory_read_errors);
    M("check_us", memory_check_us);
#undef M
    set(b, m, "paused", json_boolean(st.memory_paused));
    set(b, m, "source", json_string(st.memory_source));
    set(b, o, "memory_guard", m);
  }
  return o;
}

static json_t *residual(jb *b) {
  size_t n;
  sluice_prof_residual_stats *v = sluice__dbg_residual_stats(&n);
  json_t *a = json_array();
  if (!v) {
    b->oom = 1;
    return a;
  }
  for (size_t i = 0; i < n; i++) {
    const sluice_prof_residual_stats *r = &v[i];
    json_t *o = json_object();
    char *qn = sluice__dbg_utf8_clean(r->queue ? r->queue : "");
    set(b, o, "queue", qn ? json_string(qn) : NULL);
    free(qn);
    if (r->key_name) {
      char *kn = sluice__dbg_utf8_clean(r->key_name);
      char *kv = sluice__dbg_utf8_clean(r->key);
      set(b, o, "key_name", kn ? json_string(kn) : NULL);
      set(b, o, "key", kv ? json_string(kv) : NULL);
      free(kn);
      free(kv);
    }
    set(b, o, "outcome", json_string(sluice_outcome_name(r->outcome)));
#define F(name) set(b, o, #name, num(r->name))
    F(messages);
    F(with_residual);
    F(bytes_at_end);
    F(objects_at_end);
    F(pending);
    F(cached);
    F(leaked);
    F(bytes_leaked);
    F(objects_leaked);
    F(skipped);
    F(retained_bytes);
    F(retained_objects);
    F(slope_messages);
    F(level_off_messages);
    F(oldest_age_messages);
#undef F
    set(b, o, "state", json_string(sluice_prof_state_name(r->state)));
    set(b, o, "bytes_per_message", json_real(r->bytes_per_message));
    set(b, o, "objects_per_message", json_real(r->objects_per_message));
    set(b, o, "slope_seconds", json_real(r->slope_seconds));
    set(b, o, "level_off_seconds", json_real(r->level_off_seconds));
    set(b, o, "oldest_age_seconds", json_real(r->oldest_age_seconds));
    set(b, o, "leaking", json_boolean(r->leaking));
    if (json_array_append_new(a, o)) b->oom = 1; /* takes o even then */
  }
  free(v);
  return a;
}

void sluice__dbg_vars(sluice_debug_server *s, struct evhttp_request *req,
                      const struct evkeyvalq *q) {
  (void)q;
  jb b = {0};
  json_t *root = json_object();
  json_t *prof = json_object();
  set(&b, prof, "running", json_boolean(sluice_prof_running()));
  set(&b, prof, "interposing", json_boolean(sluice_prof_interposing()));
  size_t rate = sluice_prof_sample_rate();
  set(&b, prof, "sample_rate",
      rate == SLUICE_PROF_RATE_NONE ? json_null() : num(rate));
  set(&b, root, "profiler", prof);
  set(&b, root, "memstats", memstats(&b));
  set(&b, root, "consumer", consumer(&b, s->c));
  set(&b, root, "residual", residual(&b));
  json_t *srv = json_object();
  set(&b, srv, "requests", num(s->requests));
  set(&b, srv, "unauthorized", num(s->unauthorized));
  set(&b, srv, "snapshots", num(s->n_snaps));
  set(&b, srv, "pending", num(s->n_pending));
  set(&b, root, "debug_server", srv);

  char *text = b.oom ? NULL : json_dumps(root, JSON_INDENT(1));
  json_decref(root);
  if (!text) {
    sluice__dbg_error(req, 500, "out of memory");
    return;
  }
  struct evbuffer *body = evbuffer_new();
  if (body) {
    evbuffer_add(body, text, strlen(text));
    evbuffer_add(body, "\n", 1);
  }
  free(text);
  sluice__dbg_reply(req, 200, "application/json", body);
  if (body) evbuffer_free(body);
}
