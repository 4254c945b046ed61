/* SPDX-License-Identifier: MIT */
/* /metrics in the Prometheus text exposition format (version 0.0.4), and
 * /healthz. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/sluice.h>

#include "debug_internal.h"

#define PROM_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef enum { COUNTER, GAUGE } kind;

/* The HELP and TYPE lines of one family. Help texts are constants without
 * backslashes or newlines, so they need no escaping. */
static void family(struct evbuffer *b, const char *name, kind k,
                   const char *help) {
  evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                      k == COUNTER ? "counter" : "gauge");
}

static void sample(struct evbuffer *b, const char *name, uint64_t v) {
  evbuffer_add_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void metric(struct evbuffer *b, const char *name, kind k,
                   const char *help, uint64_t v) {
  family(b, name, k, help);
  sample(b, name, v);
}

size_t sluice__dbg_utf8_len(const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else return 0;
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if (s[i] < 0x80 || s[i] > 0xBF) return 0;
  return n;
}

char *sluice__dbg_utf8_clean(const char *s) {
  size_t len = strlen(s);
  char *out = malloc(4 * len + 1), *o = out;
  if (!out) return NULL;
  while (*s) {
    size_t n = sluice__dbg_utf8_len(s);
    if (n == 0) {
      snprintf(o, 5, "\\x%02X", (unsigned char)*s);
      o += 4;
      s++;
    } else {
      memcpy(o, s, n);
      o += n;
      s += n;
    }
  }
  *o = '\0';
  return out;
}

/* A label value: backslash, double quote and newline are escaped as the
 * text format requires. Label values must be UTF-8 (Prometheus fails the
 * whole scrape otherwise), but AMQP names and header values are bytes: a
 * byte that is not part of well-formed UTF-8 is written as the text \xHH,
 * as in /debug/vars, which keeps distinct names distinct. */
static void label_value(struct evbuffer *b, const char *v) {
  while (*v) {
    size_t n = sluice__dbg_utf8_len(v);
    if (n == 0) {
      evbuffer_add_printf(b, "\\\\x%02X", (unsigned char)*v);
      v++;
      continue;
    }
    if (*v == '\\') evbuffer_add(b, "\\\\", 2);
    else if (*v == '"') evbuffer_add(b, "\\\"", 2);
    else if (*v == '\n') evbuffer_add(b, "\\n", 2);
    else evbuffer_add(b, v, n);
    v += n;
  }
}

/* queue="...",key="...",outcome="..." (no key label without a key). */
static void labels(struct evbuffer *b, const sluice_prof_residual_stats *r) {
  evbuffer_add_printf(b, "queue=\"");
  label_value(b, r->queue ? r->queue : "");
  if (r->key_name) {
    evbuffer_add_printf(b, "\",key=\"");
    label_value(b, r->key);
  }
  evbuffer_add_printf(b, "\",outcome=\"%s\"", sluice_outcome_name(r->outcome));
}

static void qo_labels(struct evbuffer *b, const char *name,
                      const sluice_prof_residual_stats *r) {
  evbuffer_add_printf(b, "%s{", name);
  labels(b, r);
  evbuffer_add_printf(b, "} ");
}

static void real(struct evbuffer *b, double v) {
  if (isfinite(v)) evbuffer_add_printf(b, "%.17g\n", v);
  else evbuffer_add_printf(b, "NaN\n");
}

/* The memory guard's families, only for a consumer that has one. */
static void memory_guard_metrics(struct evbuffer *b,
                                 const sluice_consumer_stats *st) {
  family(b, "sluice_memory_guard_bytes", GAUGE,
         "The memory figure the guard read last, by where it came from "
         "(hooks: the profiler's live heap; mallinfo2, sanitizer, mallinfo: "
         "the allocator's; rss; reader: the application's).");
  evbuffer_add_printf(b, "sluice_memory_guard_bytes{source=\"%s\"} %llu\n",
                      st->memory_source[0] ? st->memory_source : "none",
                      (unsigned long long)st->memory_bytes);
  metric(b, "sluice_memory_guard_high_bytes", GAUGE,
         "Reading new deliveries stops while the figure is above this.",
         st->memory_high_bytes);
  metric(b, "sluice_memory_guard_low_bytes", GAUGE,
         "Reading resumes once the figure is below this.",
         st->memory_low_bytes);
  metric(b, "sluice_memory_guard_paused", GAUGE,
         "1 while the memory guard holds reading new deliveries.",
         st->memory_paused ? 1 : 0);
  metric(b, "sluice_memory_guard_pauses_total", COUNTER,
         "Times the memory guard stopped reading new deliveries.",
         st->memory_pauses);
  family(b, "sluice_memory_guard_paused_seconds_total", COUNTER,
         "Time spent with reading held by the memory guard, the current "
         "pause included.");
  evbuffer_add_printf(b, "sluice_memory_guard_paused_seconds_total ");
  real(b, (double)st->memory_paused_ms / 1000.0);
  metric(b, "sluice_memory_guard_checks_total", COUNTER,
         "Readings of the memory figure.", st->memory_checks);
  metric(b, "sluice_memory_guard_read_errors_total", COUNTER,
         "Readings where the configured reader failed (the default figure "
         "stood in).",
         st->memory_read_errors);
  family(b, "sluice_memory_guard_check_cpu_seconds", GAUGE,
         "Loop-thread CPU time the last reading took (two slow readings in "
         "a row space the next by 100 times the cheaper).");
  evbuffer_add_printf(b, "sluice_memory_guard_check_cpu_seconds ");
  real(b, (double)st->memory_check_us / 1e6);
}

static void consumer_metrics(struct evbuffer *b, sluice_consumer *c) {
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  metric(b, "sluice_deliveries_total", COUNTER,
         "Deliveries handed to handlers.", st.delivered);
  family(b, "sluice_deliveries_completed_total", COUNTER,
         "Deliveries settled with the broker, by outcome (nack includes "
         "handler errors).");
  evbuffer_add_printf(b,
                      "sluice_deliveries_completed_total{outcome=\"ack\"} "
                      "%llu\n"
                      "sluice_deliveries_completed_total{outcome=\"nack\"} "
                      "%llu\n"
                      "sluice_deliveries_completed_total{outcome=\"reject\"} "
                      "%llu\n",
                      (unsigned long long)st.acked,
                      (unsigned long long)st.nacked,
                      (unsigned long long)st.rejected);
  metric(b, "sluice_deliveries_redelivered_total", COUNTER,
         "Deliveries that carried the redelivered flag.", st.redelivered);
  metric(b, "sluice_deliveries_too_big_total", COUNTER,
         "Deliveries over max_body, rejected unread (never handed to a "
         "handler).",
         st.too_big);
  metric(b, "sluice_deliveries_dropped_total", COUNTER,
         "autoAck deliveries the broker had settled that no handler took "
         "before the stop timeout (given to on_abandoned when set).",
         st.dropped);
  metric(b, "sluice_handler_errors_total", COUNTER,
         "Handlers that returned an invalid value (the message was nacked).",
         st.handler_errors);
  metric(b, "sluice_stale_acks_total", COUNTER,
         "Completions dropped because their connection had died (the broker "
         "redelivers).",
         st.stale);
  metric(b, "sluice_ack_frames_total", COUNTER,
         "basic.ack, basic.nack and basic.reject frames written.",
         st.ack_frames);
  metric(b, "sluice_in_flight_messages", GAUGE,
         "Deliveries held now: buffered, in a handler or deferred.",
         st.in_flight);
  metric(b, "sluice_in_flight_bytes", GAUGE,
         "Bytes sluice holds for the deliveries held now (body, properties "
         "and headers).",
         st.in_flight_bytes);
  metric(b, "sluice_max_in_flight_messages", GAUGE,
         "High-water mark of sluice_in_flight_messages.", st.max_in_flight);
  metric(b, "sluice_buffered_messages", GAUGE,
         "Deliveries waiting in the in-process buffer for a handler.",
         st.in_flight > st.in_handler ? st.in_flight - st.in_handler : 0);
  metric(b, "sluice_in_handler_messages", GAUGE,
         "Deliveries in a handler or deferred now.", st.in_handler);
  metric(b, "sluice_max_in_handler_messages", GAUGE,
         "High-water mark of sluice_in_handler_messages.", st.max_in_handler);
  metric(b, "sluice_read_pauses_total", COUNTER,
         "Times reading from the broker paused on the in-flight bound.",
         st.read_pauses);
  metric(b, "sluice_reconnects_total", COUNTER, "Successful reconnects.",
         st.reconnects);
  metric(b, "sluice_connection_up", GAUGE, "1 while connected to the broker.",
         st.connected ? 1 : 0);
  metric(b, "sluice_connection_blocked", GAUGE,
         "1 while the broker blocks the connection (resource alarm).",
         st.blocked ? 1 : 0);
  metric(b, "sluice_connection_generation", GAUGE,
         "Generation of the live connection (of the next one while "
         "disconnected).",
         st.generation);
  metric(b, "sluice_close_listeners", GAUGE, "Registered close listeners.",
         st.close_listeners);
  if (st.memory_high_bytes) memory_guard_metrics(b, &st);
}

typedef enum {
  R_MESSAGES,
  R_BYTES,
  R_LEAKED,
  R_LEAKED_BYTES,
  R_SKIPPED,
  R_RETAINED,
  R_RETAINED_OBJECTS,
  R_PER_MESSAGE,
  R_LEVEL_OFF,
  R_AGE,
  R_LEAKING
} rfield;

static void residual_family(struct evbuffer *b,
                            const sluice_prof_residual_stats *v, size_t n,
                            const char *name, kind k, const char *help,
                            rfield f) {
  family(b, name, k, help);
  for (size_t i = 0; i < n; i++) {
    const sluice_prof_residual_stats *r = &v[i];
    unsigned long long x = 0;
    qo_labels(b, name, r);
    switch (f) {
      case R_MESSAGES: x = r->messages; break;
      case R_BYTES: x = r->bytes_at_end; break;
      case R_LEAKED: x = r->leaked; break;
      case R_LEAKED_BYTES: x = r->bytes_leaked; break;
      case R_SKIPPED: x = r->skipped; break;
      case R_RETAINED: x = r->retained_bytes; break;
      case R_RETAINED_OBJECTS: x = r->retained_objects; break;
      case R_LEVEL_OFF: x = r->level_off_messages; break;
      case R_LEAKING: x = r->leaking ? 1 : 0; break;
      case R_PER_MESSAGE: real(b, r->bytes_per_message); continue;
      case R_AGE: real(b, r->oldest_age_seconds); continue;
    }
    evbuffer_add_printf(b, "%llu\n", x);
  }
}

/* The verdict as an enum: one sample per group, labelled with its state. */
static void state_family(struct evbuffer *b,
                         const sluice_prof_residual_stats *v, size_t n) {
  const char *name = "sluice_residual_state";
  family(b, name, GAUGE,
         "The verdict of each queue/key/outcome: 1 on its current state "
         "(ok, growing, bounded, LEAK).");
  for (size_t i = 0; i < n; i++) {
    const sluice_prof_residual_stats *r = &v[i];
    evbuffer_add_printf(b, "%s{", name);
    labels(b, r);
    evbuffer_add_printf(b, ",state=\"%s\"} 1\n",
                        sluice_prof_state_name(r->state));
  }
}

static void residual_metrics(struct evbuffer *b) {
  size_t n = 0;
  sluice_prof_residual_stats *v = sluice__dbg_residual_stats(&n);
  residual_family(b, v, n, "sluice_residual_messages_total", COUNTER,
                  "Messages whose residual was measured (their scope ended).",
                  R_MESSAGES);
  residual_family(b, v, n, "sluice_residual_bytes_total", COUNTER,
                  "Sum of residual bytes when each message completed.",
                  R_BYTES);
  residual_family(b, v, n, "sluice_residual_leaked_messages_total", COUNTER,
                  "Messages whose residual was still live after the grace "
                  "period.",
                  R_LEAKED);
  residual_family(b, v, n, "sluice_residual_leaked_bytes_total", COUNTER,
                  "Sum of residual bytes still live after the grace period.",
                  R_LEAKED_BYTES);
  residual_family(b, v, n, "sluice_residual_skipped_rechecks_total", COUNTER,
                  "Messages with a residual that got no after-grace re-check "
                  "(pending queue full; the grace period is never "
                  "shortened).",
                  R_SKIPPED);
  residual_family(b, v, n, "sluice_residual_retained_bytes", GAUGE,
                  "Bytes still live now that finished messages allocated "
                  "(pending ones included).",
                  R_RETAINED);
  residual_family(b, v, n, "sluice_residual_retained_objects", GAUGE,
                  "Blocks still live now that finished messages allocated.",
                  R_RETAINED_OBJECTS);
  residual_family(b, v, n, "sluice_residual_bytes_per_message", GAUGE,
                  "Growth of the retained bytes per message (the verdict's "
                  "slope).",
                  R_PER_MESSAGE);
  residual_family(b, v, n, "sluice_residual_level_off_messages", GAUGE,
                  "Growing: messages of further growth before it is called "
                  "a leak.",
                  R_LEVEL_OFF);
  residual_family(b, v, n, "sluice_residual_oldest_age_seconds", GAUGE,
                  "Age of the oldest memory still live from the group.", R_AGE);
  residual_family(b, v, n, "sluice_residual_leaking", GAUGE,
                  "1 while the verdict is LEAK.", R_LEAKING);
  state_family(b, v, n);
  free(v);
}

static void heap_metrics(struct evbuffer *b) {
  sluice_prof_memstats m;
  sluice_prof_memstats_read(&m);
  metric(b, "sluice_heap_live_bytes", GAUGE,
         "Heap bytes in use (malloc's own figure).", m.heap_live_bytes);
  metric(b, "sluice_heap_mapped_bytes", GAUGE,
         "Bytes malloc obtained from the system.", m.heap_mapped_bytes);
  metric(b, "sluice_heap_live_objects", GAUGE,
         "Allocations minus frees counted since the profiler started.",
         m.live_objects);
  metric(b, "sluice_heap_alloc_bytes_total", COUNTER,
         "Bytes allocated since the profiler started.", m.total_alloc_bytes);
  metric(b, "sluice_heap_mallocs_total", COUNTER,
         "Allocations since the profiler started.", m.mallocs);
  metric(b, "sluice_heap_frees_total", COUNTER,
         "Frees since the profiler started.", m.frees);
  metric(b, "sluice_heap_sampled_live_bytes", GAUGE,
         "In-use bytes estimated from the sampled stacks.",
         m.sampled_live_bytes);
  metric(b, "process_resident_memory_bytes", GAUGE,
         "Resident memory size in bytes.", m.rss_bytes);
  metric(b, "sluice_profiler_running", GAUGE,
         "1 while the allocation profiler records.",
         sluice_prof_running() ? 1 : 0);
  metric(b, "sluice_profiler_interposing", GAUGE,
         "1 when this build replaces malloc (0 under ASan/TSan).",
         sluice_prof_interposing() ? 1 : 0);
  metric(b, "sluice_profiler_overhead_bytes", GAUGE,
         "The profiler's own memory (approximate).", m.overhead_bytes);
  metric(b, "sluice_profiler_stacks", GAUGE, "Distinct call stacks recorded.",
         m.stacks);
  metric(b, "sluice_profiler_stacks_dropped_total", COUNTER,
         "Sampled allocations counted under \"[stack table full]\".",
         m.stacks_dropped);
  family(b, "sluice_profiler_sample_rate_bytes", GAUGE,
         "Mean bytes between two sampled stacks (1: every allocation; "
         "+Inf: no stacks).");
  if (sluice_prof_sample_rate() == SLUICE_PROF_RATE_NONE)
    evbuffer_add_printf(b, "sluice_profiler_sample_rate_bytes +Inf\n");
  else
    sample(b, "sluice_profiler_sample_rate_bytes", sluice_prof_sample_rate());
  family(b, "sluice_profiler_scopes", GAUGE,
         "Message scopes by state: open, waiting for their re-check, or "
         "retaining memory.");
  evbuffer_add_printf(b,
                      "sluice_profiler_scopes{state=\"open\"} %llu\n"
                      "sluice_profiler_scopes{state=\"pending\"} %llu\n"
                      "sluice_profiler_scopes{state=\"retained\"} %llu\n",
                      (unsigned long long)m.scopes_open,
                      (unsigned long long)m.scopes_pending,
                      (unsigned long long)m.scopes_retained);
  metric(b, "sluice_profiler_scopes_refused_total", COUNTER,
         "Scopes refused because the scope pool was full.", m.scopes_refused);
  metric(b, "sluice_profiler_skipped_rechecks_total", COUNTER,
         "Scopes that ended with a residual without an after-grace re-check "
         "(max_pending reached).",
         m.rechecks_skipped);
  metric(b, "sluice_profiler_groups", GAUGE,
         "Residual groups (queue, outcome, key value) in use.", m.groups);
  metric(b, "sluice_profiler_overflow_scopes_total", COUNTER,
         "Scopes counted in an (other) row: group pool full or too many key "
         "values.",
         m.groups_overflow + m.keys_overflow);
  metric(b, "sluice_profiler_deferred_unentered_total", COUNTER,
         "Deferred deliveries completed on a thread that never entered one "
         "and allocated in between.",
         m.deferred_unentered);
}

void sluice__dbg_metrics(sluice_debug_server *s, struct evhttp_request *req,
                         const struct evkeyvalq *q) {
  (void)q;
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    sluice__dbg_error(req, 500, "out of memory");
    return;
  }
  family(b, "sluice_build_info", GAUGE,
         "Always 1; the library version in a label.");
  evbuffer_add_printf(b, "sluice_build_info{version=\"%s\"} 1\n",
                      SLUICE_VERSION_STRING);
  if (s->c) consumer_metrics(b, s->c);
  residual_metrics(b);
  heap_metrics(b);
  sluice__dbg_reply(req, 200, PROM_TYPE, b);
  evbuffer_free(b);
}

void sluice__dbg_healthz(sluice_debug_server *s, struct evhttp_request *req,
                         const struct evkeyvalq *q) {
  (void)q;
  int ok = 1;
  if (s->c) {
    sluice_consumer_stats st;
    sluice_consumer_get_stats(s->c, &st);
    ok = st.connected && !sluice_consumer_stopped(s->c);
  }
  struct evbuffer *b = evbuffer_new();
  if (b) evbuffer_add_printf(b, ok ? "ok\n" : "not connected\n");
  sluice__dbg_reply(req, ok ? 200 : 503, SLUICE__DBG_TEXT, b);
  if (b) evbuffer_free(b);
}
