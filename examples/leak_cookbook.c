/* SPDX-License-Identifier: MIT */
/* sluice-leak-cookbook: the leak cookbook of docs/profiling.md, runnable.
 * Each queue's handler is one of the patterns of the cookbook; every
 * message runs in a scope (the scope API: what the consumer's hooks do),
 * 10 ms apart on a simulated clock, so the run takes a second and prints
 * the same thing every time: the verdict lines as they fire (stderr), then
 * the residual report (stdout).
 *
 *   sluice-leak-cookbook [--messages N] [--rate BYTES]   (30000, 1)
 *                        [--out FILE]   (also a profile: .pb.gz, .txt, ...)
 *   sluice-leak-cookbook --trace FILE
 *
 * --trace writes the growth curves of docs/img/verdict-states.svg instead:
 * a leak, an LRU whose bound is beyond the horizon, one within it, as CSV
 * (queue, messages, retained kB, state) every 50 messages.
 *
 * Links only the profiler (sluice::profiling), no broker needed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/profiling.h>

#define NOINLINE __attribute__((noinline))

static uint64_t now_ns = 1000000000ull;
static uint64_t clock_fn(void *user) {
  (void)user;
  return now_ns;
}

/* ---- orders: per-request state in a global map, never removed --------- */
struct session {
  unsigned long seq;
  char *buf;
  char pad[24];
};
#define MAX_MSGS 100000
static struct session *sessions[MAX_MSGS];

NOINLINE static int on_order(unsigned long seq) {
  struct session *s = calloc(1, sizeof *s);
  s->seq = seq;
  s->buf = malloc(96);
  sessions[seq % MAX_MSGS] = s; /* "looked up later"; nobody deletes */
  return SLUICE_ACK;
}

/* ---- events: a health-probe path that skips the clean-up --------------- */
static void *pending[MAX_MSGS];

NOINLINE static int on_event(unsigned long seq, int probe) {
  pending[seq % MAX_MSGS] = malloc(128);
  if (probe) return SLUICE_ACK; /* early return: pending[seq] stays */
  free(pending[seq % MAX_MSGS]);
  pending[seq % MAX_MSGS] = NULL;
  return SLUICE_ACK;
}

/* ---- payments: an authentication-error path keeps the request ---------- */
static char *audit[MAX_MSGS];
static const char *header_authorization = "Bearer 0123456789abcdef0123456";

NOINLINE static int on_payment(unsigned long seq, int bad_auth) {
  char *token = strdup(header_authorization);
  if (bad_auth) {
    audit[seq % MAX_MSGS] = token; /* "for the audit log" */
    return SLUICE_REJECT;
  }
  free(token);
  return SLUICE_ACK;
}

/* ---- lookups: an LRU cache of 1,000 entries (not a leak) --------------- */
#define LRU_N 1000
static char *lru[LRU_N];

NOINLINE static int on_lookup(unsigned long seq) {
  free(lru[seq % LRU_N]);
  lru[seq % LRU_N] = malloc(512); /* evicted 1,000 messages later */
  return SLUICE_ACK;
}

/* ---- logs: a log buffer grown by realloc, 64 B per message ------------- */
static char *log_buf;
static size_t log_len;

NOINLINE static int on_log(unsigned long seq) {
  log_buf = realloc(log_buf, log_len + 64);
  memset(log_buf + log_len, (int)(seq & 0x7f), 64);
  log_len += 64;
  return SLUICE_ACK;
}

/* ---- one message through a scope ---------------------------------------- */
static void deliver(const char *queue, const char *key, unsigned long seq,
                    int (*h)(unsigned long, int), int arg) {
  now_ns += 10000000ull; /* 10 ms per message */
  sluice_prof_scope s =
      sluice_prof_scope_begin_key(queue, key ? "type" : NULL, key, seq, seq);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  int outcome = h(seq, arg);
  sluice_prof_scope_enter(prev);
  sluice_prof_scope_end(s, outcome, NULL);
}

static int h_order(unsigned long s, int a) {
  (void)a;
  return on_order(s);
}
static int h_event(unsigned long s, int a) {
  return on_event(s, a);
}
static int h_payment(unsigned long s, int a) {
  return on_payment(s, a);
}
static int h_lookup(unsigned long s, int a) {
  (void)a;
  return on_lookup(s);
}
static int h_log(unsigned long s, int a) {
  (void)a;
  return on_log(s);
}

/* ---- --trace: the curves of the verdict diagram ------------------------- */
#define BIG_N 3000
#define SMALL_N 1000
static char *big[BIG_N], *small[SMALL_N];

NOINLINE static int on_big(unsigned long seq, int a) {
  (void)a;
  free(big[seq % BIG_N]);
  big[seq % BIG_N] = malloc(512);
  return SLUICE_ACK;
}

NOINLINE static int on_small(unsigned long seq, int a) {
  (void)a;
  free(small[seq % SMALL_N]);
  small[seq % SMALL_N] = malloc(512);
  return SLUICE_ACK;
}

NOINLINE static int on_leaky(unsigned long seq, int a) {
  (void)a;
  pending[seq % MAX_MSGS] = malloc(128 * 4);
  return SLUICE_ACK;
}

static void trace_point(FILE *f) {
  sluice_prof_residual_stats v[16];
  size_t n = sluice_prof_residual_stats_get(v, 16);
  for (size_t i = 0; i < n && i < 16; i++)
    fprintf(f, "%s,%llu,%.1f,%s\n", v[i].queue,
            (unsigned long long)v[i].messages,
            (double)v[i].retained_bytes / 1024,
            sluice_prof_state_name(v[i].state));
}

static int trace(const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) return 1;
  fprintf(f, "queue,messages,retained_kb,state\n");
  for (unsigned long i = 0; i < 6000; i++) {
    deliver("leak", NULL, i, on_leaky, 0);
    deliver("lru-3000", NULL, i, on_big, 0);
    deliver("lru-1000", NULL, i, on_small, 0);
    if (i % 50 == 49) trace_point(f);
  }
  /* The big cache is dropped: nothing retained, ok again. */
  for (int i = 0; i < BIG_N; i++) free(big[i]);
  now_ns += 10000000ull;
  trace_point(f);
  fclose(f);
  return 0;
}

static int write_out(const void *data, size_t len, void *user) {
  return fwrite(data, 1, len, user) == len ? 0 : -1;
}

static void quiet(const sluice_prof_leak *v, void *user) {
  (void)v;
  (void)user;
}

int main(int argc, char **argv) {
  unsigned long n = 30000;
  size_t rate = 1;
  const char *trace_file = NULL, *out_file = NULL;
  static struct option lo[] = {{"messages", 1, 0, 'n'},
                               {"rate", 1, 0, 'r'},
                               {"trace", 1, 0, 't'},
                               {"out", 1, 0, 'o'},
                               {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "n:r:t:o:", lo, NULL)) != -1) {
    if (ch == 'n') n = strtoul(optarg, NULL, 10);
    else if (ch == 'r') rate = strtoul(optarg, NULL, 10);
    else if (ch == 't') trace_file = optarg;
    else if (ch == 'o') out_file = optarg;
    else return 2;
  }
  if (n > MAX_MSGS) n = MAX_MSGS;
  sluice_prof_opts o = {.sample_rate = rate,
                        .grace_ms = 1000,
                        .horizon_messages = 2000,
                        .horizon_ms = 20000,
                        .poll_ms = -1, /* the clock is simulated */
                        .now_ns = clock_fn};
  if (trace_file) o.on_leak = quiet;
  if (sluice_prof_start(&o)) return 1;
  if (trace_file) return trace(trace_file);
  for (unsigned long i = 0; i < n; i++) {
    deliver("orders", NULL, i, h_order, 0);
    deliver("events", i % 10 == 0 ? "probe" : "push", i, h_event, i % 10 == 0);
    deliver("payments", NULL, i, h_payment, i % 20 == 0);
    deliver("lookups", NULL, i, h_lookup, 0);
    deliver("logs", NULL, i, h_log, 0);
  }
  now_ns += 2000000000ull; /* past the grace period */
  if (out_file) {
    /* A residual profile for go tool pprof (.pb.gz), or by the name. */
    sluice_prof_output po = {.value = SLUICE_PROF_RESIDUAL_SPACE};
    if (sluice_prof_write_file(NULL, &po, out_file)) return 1;
  }
  sluice_prof_output out = {.format = SLUICE_PROF_FMT_RESIDUAL};
  return sluice_prof_write(NULL, &out, write_out, stdout) ? 1 : 0;
}
