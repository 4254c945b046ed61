/* SPDX-License-Identifier: MIT */
/* /debug/pprof/{heap,residual,snapshot}: profiles now, over N seconds, or
 * against a kept snapshot, in pprof's formats or as text. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>

#include "debug_internal.h"

/* What a profile request asks for, once its parameters are checked. */
typedef struct preq {
  int residual; /* /debug/pprof/residual */
  int debug;    /* ?debug=1: text, MemStats at the bottom */
  sluice_prof_output out;
  unsigned seconds; /* ?seconds=N, or 0 */
  uint64_t base;    /* ?base=ID, or 0 */
  char queue[256];  /* ?queue= (residual) */
} preq;

struct sluice__dbg_pending {
  sluice__dbg_pending *next;
  sluice_debug_server *s;
  struct evhttp_request *req;
  struct evhttp_connection *evcon;
  struct event *timer;
  struct event *watch; /* readable socket: has the client gone? */
  sluice_prof_snapshot *start;
  preq p;
};

/* ------------------------------------------------------------------------ */
/* Parameters. */

static int parse_uint(const char *v, unsigned long long max,
                      unsigned long long *out) {
  if (!v || !*v) return -1;
  for (const char *p = v; *p; p++)
    if (*p < '0' || *p > '9') return -1;
  errno = 0;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end || x > max) return -1;
  *out = x;
  return 0;
}

static int value_from_name(const char *n, int *out) {
  for (int v = SLUICE_PROF_INUSE_SPACE; v <= SLUICE_PROF_RESIDUAL_OBJECTS; v++)
    if (!strcmp(n, sluice_prof_value_name(v))) {
      *out = v;
      return 0;
    }
  return -1;
}

static int outcomes_from_list(const char *list, unsigned *mask) {
  *mask = 0;
  const char *p = list;
  while (*p) {
    size_t n = strcspn(p, ",");
    int found = 0;
    for (int o = 0; o < SLUICE_OUTCOME_COUNT_; o++) {
      const char *name = sluice_outcome_name(o);
      if (strlen(name) == n && !strncmp(p, name, n)) {
        *mask |= SLUICE_PROF_OUTCOME_BIT(o);
        found = 1;
      }
    }
    if (!found) return -1;
    p += n;
    if (*p == ',') p++;
  }
  return *mask ? 0 : -1;
}

/* Fills `p` from the query; on a bad parameter answers 400 and returns -1. */
static int parse_preq(sluice_debug_server *s, struct evhttp_request *req,
                      const struct evkeyvalq *q, int residual, preq *p) {
  memset(p, 0, sizeof *p);
  p->residual = residual;
  p->out.format = SLUICE_PROF_FMT_PPROF;
  p->out.value = residual ? SLUICE_PROF_RESIDUAL_SPACE
                          : SLUICE_PROF_INUSE_SPACE;
  unsigned long long x;
  const char *v;

  if ((v = evhttp_find_header(q, "debug"))) {
    if (parse_uint(v, 2, &x)) goto bad_debug;
    p->debug = x > 0;
    if (p->debug)
      p->out.format = residual ? SLUICE_PROF_FMT_RESIDUAL
                               : SLUICE_PROF_FMT_LEGACY;
  }
  if ((v = evhttp_find_header(q, "format"))) {
    static const struct {
      const char *name;
      sluice_prof_format f;
    } fmts[] = {{"pprof", SLUICE_PROF_FMT_PPROF},
                {"legacy", SLUICE_PROF_FMT_LEGACY},
                {"top", SLUICE_PROF_FMT_TOP},
                {"folded", SLUICE_PROF_FMT_FOLDED},
                {"report", SLUICE_PROF_FMT_RESIDUAL}};
    size_t i = 0;
    while (i < sizeof fmts / sizeof fmts[0] && strcmp(v, fmts[i].name)) i++;
    if (i == sizeof fmts / sizeof fmts[0] ||
        (fmts[i].f == SLUICE_PROF_FMT_RESIDUAL && !residual)) {
      sluice__dbg_error(req, 400, "format: pprof, legacy, top, folded%s",
                        residual ? " or report" : "");
      return -1;
    }
    p->out.format = fmts[i].f;
  }
  v = evhttp_find_header(q, "sample_index");
  if (!v) v = evhttp_find_header(q, "value");
  if (v) {
    int val;
    int is_resid_val = 0;
    if (!value_from_name(v, &val))
      is_resid_val = val == SLUICE_PROF_RESIDUAL_SPACE ||
                     val == SLUICE_PROF_RESIDUAL_OBJECTS;
    if (value_from_name(v, &val) || is_resid_val != residual) {
      sluice__dbg_error(req, 400, "sample_index: %s",
                        residual ? "residual_space or residual_objects"
                                 : "inuse_space, inuse_objects, alloc_space "
                                   "or alloc_objects");
      return -1;
    }
    p->out.value = (sluice_prof_value)val;
  }
  if ((v = evhttp_find_header(q, "rows"))) {
    if (parse_uint(v, 100000, &x) || !x) {
      sluice__dbg_error(req, 400, "rows: 1 to 100000");
      return -1;
    }
    p->out.max_rows = (unsigned)x;
  }
  if ((v = evhttp_find_header(q, "queue"))) {
    if (!residual || strlen(v) >= sizeof p->queue) {
      sluice__dbg_error(req, 400, "queue: residual profiles only, < 256 bytes");
      return -1;
    }
    strcpy(p->queue, v);
    p->out.queue = p->queue;
  }
  if ((v = evhttp_find_header(q, "outcome"))) {
    if (!residual || outcomes_from_list(v, &p->out.outcomes)) {
      sluice__dbg_error(req, 400,
                        "outcome: residual profiles only; a list of ack, "
                        "nack, reject, defer, stale, error");
      return -1;
    }
  }
  if ((v = evhttp_find_header(q, "seconds"))) {
    if (parse_uint(v, s->max_seconds, &x) || !x) {
      sluice__dbg_error(req, 400, "seconds: 1 to %u", s->max_seconds);
      return -1;
    }
    p->seconds = (unsigned)x;
  }
  if ((v = evhttp_find_header(q, "base"))) {
    if (parse_uint(v, UINT64_MAX, &x) || !x) {
      sluice__dbg_error(req, 400,
                        "base: a snapshot ID from "
                        "/debug/pprof/snapshot");
      return -1;
    }
    p->base = x;
  }
  if (p->seconds && p->base) {
    sluice__dbg_error(req, 400, "seconds and base cannot be combined");
    return -1;
  }
  /* The residual report always shows the live aggregates: for a difference
   * show the residual that grew, by function. */
  if ((p->seconds || p->base) && p->out.format == SLUICE_PROF_FMT_RESIDUAL)
    p->out.format = SLUICE_PROF_FMT_TOP;
  return 0;

bad_debug:
  sluice__dbg_error(req, 400, "debug: 0 or 1");
  return -1;
}

/* ------------------------------------------------------------------------ */
/* Output. */

static void u64line(struct evbuffer *b, const char *name, uint64_t v) {
  evbuffer_add_printf(b, "# %s = %llu\n", name, (unsigned long long)v);
}

void sluice__dbg_memstats_text(struct evbuffer *b) {
  sluice_prof_memstats m;
  sluice_prof_memstats_read(&m);
  /* Go's names where the meaning is the same, then sluice's own. */
  evbuffer_add_printf(b, "\n# MemStats\n");
  u64line(b, "Alloc", m.heap_live_bytes);
  u64line(b, "TotalAlloc", m.total_alloc_bytes);
  u64line(b, "Sys", m.heap_mapped_bytes);
  u64line(b, "Mallocs", m.mallocs);
  u64line(b, "Frees", m.frees);
  u64line(b, "HeapAlloc", m.heap_live_bytes);
  u64line(b, "HeapSys", m.heap_mapped_bytes);
  u64line(b, "HeapObjects", m.live_objects);
  u64line(b, "RSS", m.rss_bytes);
  u64line(b, "SampledLiveBytes", m.sampled_live_bytes);
  u64line(b, "TrackedBlocks", m.tracked_blocks);
  u64line(b, "Stacks", m.stacks);
  u64line(b, "StacksDropped", m.stacks_dropped);
  u64line(b, "ScopesOpen", m.scopes_open);
  u64line(b, "ScopesPending", m.scopes_pending);
  u64line(b, "ScopesRetained", m.scopes_retained);
  u64line(b, "ScopesRefused", m.scopes_refused);
  u64line(b, "ProfilerOverhead", m.overhead_bytes);
  u64line(b, "SampleRate", m.sample_rate);
  evbuffer_add_printf(b, "# Profiler = %s\n",
                      sluice_prof_running() ? "running" : "not running");
  evbuffer_add_printf(b, "# Interposing = %d\n", sluice_prof_interposing());
  if (!sluice_prof_running())
    evbuffer_add_printf(b, "# (start it with sluice_prof_start() or "
                           "SLUICE_PROF=1 in the environment)\n");
  if (!sluice_prof_interposing())
    evbuffer_add_printf(b, "# (this build cannot replace malloc: only blocks "
                           "announced with sluice_prof_note_alloc())\n");
}

static void profiler_header(struct evhttp_request *req) {
  char v[64];
  snprintf(v, sizeof v, "%s; interposing=%d",
           sluice_prof_running() ? "running" : "stopped",
           sluice_prof_interposing());
  evhttp_add_header(evhttp_request_get_output_headers(req), "X-Sluice-Profiler",
                    v);
}

/* Writes the report of `snap` (NULL: now) and answers. */
static void answer(struct evhttp_request *req, const preq *p,
                   const sluice_prof_snapshot *snap) {
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    sluice__dbg_error(req, 500, "out of memory");
    return;
  }
  int rc = sluice_prof_write(snap, &p->out, sluice__dbg_evbuffer_sink, b);
  if (rc) {
    evbuffer_free(b);
    sluice__dbg_error(req, 500, "profile: %s", sluice_strerror(rc));
    return;
  }
  profiler_header(req);
  if (p->out.format == SLUICE_PROF_FMT_PPROF) {
    evhttp_add_header(evhttp_request_get_output_headers(req),
                      "Content-Disposition",
                      p->residual ? "attachment; filename=\"residual\""
                                  : "attachment; filename=\"heap\"");
    sluice__dbg_reply(req, 200, "application/octet-stream", b);
  } else {
    if (p->debug) sluice__dbg_memstats_text(b);
    sluice__dbg_reply(req, 200, SLUICE__DBG_TEXT, b);
  }
  evbuffer_free(b);
}

/* Answers the difference from `base` to now. */
static void answer_diff(struct evhttp_request *req, const preq *p,
                        const sluice_prof_snapshot *base) {
  sluice_prof_snapshot *cur = NULL, *d = NULL;
  int rc = sluice_prof_snapshot_take(&cur);
  if (!rc) rc = sluice_prof_snapshot_diff(base, cur, &d);
  sluice_prof_snapshot_free(cur);
  if (rc) {
    sluice__dbg_error(req, 500, "snapshot: %s", sluice_strerror(rc));
    return;
  }
  answer(req, p, d);
  sluice_prof_snapshot_free(d);
}

/* ------------------------------------------------------------------------ */
/* ?seconds=N: the request waits on a timer; the client may go away first. */

static void unlink_pending(sluice_debug_server *s, sluice__dbg_pending *pd) {
  for (sluice__dbg_pending **pp = &s->pending; *pp; pp = &(*pp)->next)
    if (*pp == pd) {
      *pp = pd->next;
      s->n_pending--;
      return;
    }
}

static void free_pending(sluice__dbg_pending *pd) {
  if (pd->timer) event_free(pd->timer);
  if (pd->watch) event_free(pd->watch);
  sluice_prof_snapshot_free(pd->start);
  free(pd);
}

static void on_client_gone(struct evhttp_connection *evcon, void *arg) {
  sluice__dbg_pending *pd = arg;
  (void)evcon;
  unlink_pending(pd->s, pd);
  free_pending(pd); /* evhttp frees the request itself */
}

/* evhttp does not read a connection while its request waits for an answer,
 * so it would not notice the client leaving until the answer is written.
 * Watch the socket: EOF or an error means the client is gone, and the
 * snapshot it pins is freed now rather than N seconds later. Data means a
 * pipelined request: leave it to evhttp and stop watching. */
static void on_readable(evutil_socket_t fd, short what, void *arg) {
  sluice__dbg_pending *pd = arg;
  (void)what;
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    event_add(pd->watch, NULL);
    return;
  }
  struct evhttp_connection *evcon = pd->evcon;
  evhttp_connection_set_closecb(evcon, NULL, NULL);
  unlink_pending(pd->s, pd);
  free_pending(pd);
  evhttp_connection_free(evcon); /* and the request with it */
}

static void on_seconds(evutil_socket_t fd, short what, void *arg) {
  sluice__dbg_pending *pd = arg;
  (void)fd;
  (void)what;
  unlink_pending(pd->s, pd);
  evhttp_connection_set_closecb(pd->evcon, NULL, NULL);
  /* Back to the server's usual limit for whatever comes next. */
  evhttp_connection_set_timeout(pd->evcon, pd->s->timeout_s);
  answer_diff(pd->req, &pd->p, pd->start);
  free_pending(pd);
}

static void defer(sluice_debug_server *s, struct evhttp_request *req,
                  const preq *p) {
  if (s->n_pending >= SLUICE__DBG_MAX_PENDING) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After",
                      "10");
    sluice__dbg_error(req, 503, "%d profiles over ?seconds= already running",
                      SLUICE__DBG_MAX_PENDING);
    return;
  }
  struct evhttp_connection *evcon = evhttp_request_get_connection(req);
  sluice__dbg_pending *pd = calloc(1, sizeof *pd);
  if (!pd || !evcon) {
    free(pd);
    sluice__dbg_error(req, 500, "out of memory");
    return;
  }
  pd->s = s;
  pd->req = req;
  pd->evcon = evcon;
  pd->p = *p;
  if (p->out.queue) pd->p.out.queue = pd->p.queue;
  int rc = sluice_prof_snapshot_take(&pd->start);
  pd->timer = rc ? NULL : evtimer_new(s->base, on_seconds, pd);
  struct timeval tv = {(time_t)p->seconds, 0};
  if (rc || !pd->timer || evtimer_add(pd->timer, &tv)) {
    free_pending(pd);
    sluice__dbg_error(req, 500, "snapshot: %s",
                      sluice_strerror(rc ? rc : SLUICE_ENOMEM));
    return;
  }
  struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
  evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
  if (fd >= 0) {
    pd->watch = event_new(s->base, fd, EV_READ, on_readable, pd);
    if (pd->watch) event_add(pd->watch, NULL);
  }
  /* The connection's timeout must not cut the wait short. */
  evhttp_connection_set_timeout(evcon, (int)p->seconds + s->timeout_s);
  evhttp_connection_set_closecb(evcon, on_client_gone, pd);
  pd->next = s->pending;
  s->pending = pd;
  s->n_pending++;
}

/* ------------------------------------------------------------------------ */
/* Snapshots kept for ?base=. */

static const sluice_prof_snapshot *find_snap(const sluice_debug_server *s,
                                             uint64_t id) {
  for (size_t i = 0; i < s->n_snaps; i++)
    if (s->snaps[i].id == id) return s->snaps[i].snap;
  return NULL;
}

void sluice__dbg_snapshot(sluice_debug_server *s, struct evhttp_request *req,
                          const struct evkeyvalq *q) {
  (void)q;
  sluice_prof_snapshot *snap = NULL;
  int rc = sluice_prof_snapshot_take(&snap);
  if (rc) {
    sluice__dbg_error(req, 500, "snapshot: %s", sluice_strerror(rc));
    return;
  }
  if (s->n_snaps == s->max_snapshots) { /* the oldest goes */
    sluice_prof_snapshot_free(s->snaps[0].snap);
    memmove(s->snaps, s->snaps + 1, (s->n_snaps - 1) * sizeof *s->snaps);
    s->n_snaps--;
  }
  uint64_t id = s->next_snap_id++;
  s->snaps[s->n_snaps].id = id;
  s->snaps[s->n_snaps].snap = snap;
  s->n_snaps++;
  struct evbuffer *b = evbuffer_new();
  if (b) evbuffer_add_printf(b, "%llu\n", (unsigned long long)id);
  profiler_header(req);
  sluice__dbg_reply(req, 200, SLUICE__DBG_TEXT, b);
  if (b) evbuffer_free(b);
}

void sluice__dbg_pprof_cleanup(sluice_debug_server *s) {
  while (s->pending) {
    sluice__dbg_pending *pd = s->pending;
    s->pending = pd->next;
    /* evhttp_free() closes the connection and frees the request. */
    evhttp_connection_set_closecb(pd->evcon, NULL, NULL);
    free_pending(pd);
  }
  s->n_pending = 0;
  for (size_t i = 0; i < s->n_snaps; i++)
    sluice_prof_snapshot_free(s->snaps[i].snap);
  s->n_snaps = 0;
}

/* ------------------------------------------------------------------------ */
/* Handlers. */

static void profile(sluice_debug_server *s, struct evhttp_request *req,
                    const struct evkeyvalq *q, int residual) {
  preq p;
  if (parse_preq(s, req, q, residual, &p)) return;
  if (p.seconds) {
    defer(s, req, &p);
  } else if (p.base) {
    const sluice_prof_snapshot *base = find_snap(s, p.base);
    if (!base) {
      sluice__dbg_error(req, 404,
                        "no snapshot %llu (the last %u are kept; take one "
                        "with /debug/pprof/snapshot)",
                        (unsigned long long)p.base, s->max_snapshots);
      return;
    }
    answer_diff(req, &p, base);
  } else {
    answer(req, &p, NULL);
  }
}

void sluice__dbg_heap(sluice_debug_server *s, struct evhttp_request *req,
                      const struct evkeyvalq *q) {
  profile(s, req, q, 0);
}

void sluice__dbg_residual(sluice_debug_server *s, struct evhttp_request *req,
                          const struct evkeyvalq *q) {
  profile(s, req, q, 1);
}

void sluice__dbg_index(sluice_debug_server *s, struct evhttp_request *req,
                       const struct evkeyvalq *q) {
  (void)q;
  struct evbuffer *b = evbuffer_new();
  if (b) {
    evbuffer_add_printf(
        b,
        "sluice debug endpoint\n\n"
        "/debug/pprof/heap       heap profile (gzipped profile.proto)\n"
        "    ?debug=1            text, with MemStats at the bottom\n"
        "    ?seconds=N          what changed over the next N s (max %u)\n"
        "    ?base=ID            what changed since snapshot ID\n"
        "    ?format=top|folded|legacy|pprof  ?sample_index=inuse_space|"
        "inuse_objects|alloc_space|alloc_objects  ?rows=N\n"
        "/debug/pprof/residual   what messages left behind (same options;\n"
        "                        ?debug=1 or ?format=report: the report;\n"
        "                        ?queue=Q ?outcome=ack,nack,...)\n"
        "/debug/pprof/snapshot   keep a snapshot (the last %u); answers its "
        "ID\n"
        "/debug/vars             JSON: MemStats, consumer counters, "
        "residual\n"
        "/metrics                Prometheus text format\n"
        "/healthz                ok while the consumer is connected\n\n"
        "profiler: %s, interposing=%d\n",
        s->max_seconds, s->max_snapshots,
        sluice_prof_running() ? "running" : "not running",
        sluice_prof_interposing());
  }
  sluice__dbg_reply(req, 200, SLUICE__DBG_TEXT, b);
  if (b) evbuffer_free(b);
}
