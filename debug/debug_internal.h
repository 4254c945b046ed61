/* SPDX-License-Identifier: MIT */
/* What the files of the debug endpoint share. Everything here runs on the
 * server's own thread, except start/stop (debug_server.c). */
#ifndef SLUICE_DEBUG_INTERNAL_H
#define SLUICE_DEBUG_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <sluice/debug.h>
#include <sluice/profiling.h>

/* `?seconds=N` requests waiting for their timer at once; more get 503. Each
 * holds a snapshot, so this bounds the memory they can pin. */
#define SLUICE__DBG_MAX_PENDING 4

typedef struct sluice__dbg_snap {
  uint64_t id;
  sluice_prof_snapshot *snap;
} sluice__dbg_snap;

typedef struct sluice__dbg_pending sluice__dbg_pending;

/* An accepted connection, from its accept to its close (debug_server.c). */
typedef struct sluice__dbg_conn {
  struct bufferevent *bev; /* NULL: a free slot; we hold a reference */
  uint64_t accepted_ms;    /* when it was accepted, or its last reply sent */
  int serving;             /* a request of it is being answered */
} sluice__dbg_conn;

struct sluice_debug_server {
  sluice_consumer *c;
  char *token; /* NULL: no authentication (loopback only) */
  size_t token_len;
  int port;
  size_t max_request_bytes;
  int timeout_s;
  unsigned max_seconds;
  unsigned max_snapshots;

  struct event_base *base;
  struct evhttp *http;
  struct evhttp_bound_socket *bound;
  struct event *wake_ev;
  int wake_fd;
  pthread_t thread;
  int thread_started;

  /* Server thread only. */
  sluice__dbg_snap *snaps; /* oldest first */
  size_t n_snaps;
  uint64_t next_snap_id;
  sluice__dbg_pending *pending; /* ?seconds=N waiting for their timer */
  unsigned n_pending;
  uint64_t requests;     /* requests dispatched to a handler */
  uint64_t unauthorized; /* refused with 401 or 403 */

  /* Connections (server thread only): at most max_connections tracked,
   * each given timeout_s to send a whole request. */
  sluice__dbg_conn *conns; /* max_connections + 1 slots */
  unsigned max_connections;
  unsigned n_conns;
  struct evconnlistener *listener;
  struct event *sweep_ev;   /* closes connections past their deadline */
  struct event *resume_ev;  /* accepts again after a failed accept() */
  struct event *yield_ev;   /* accepts again after an eviction */
  struct event *calm_ev;    /* ends an episode of failed accept() calls */
  int cap_paused;           /* every place is taken by an answer */
  int yielding;             /* an evicted socket is still to be closed */
  unsigned backoff_ms;      /* current pause after a failed accept(), or 0 */
  uint64_t accept_failures; /* failed accept() calls, this episode */
  uint64_t timed_out;       /* closed: no whole request within timeout_s */
  uint64_t evicted;         /* closed to admit a newer connection */
  sluice_log_fn log;
  void *log_user;
};

/* ---- replies (debug_server.c) ------------------------------------------ */

#define SLUICE__DBG_TEXT "text/plain; charset=utf-8"

/* Send `body` (may be NULL: empty) with a status and a content type; the
 * reply owns nothing of the caller's afterwards (the buffer is drained). */
void sluice__dbg_reply(struct evhttp_request *req, int code,
                       const char *content_type, struct evbuffer *body);
/* A plain-text error reply: the message, then a newline. */
void sluice__dbg_error(struct evhttp_request *req, int code, const char *fmt,
                       ...) __attribute__((format(printf, 3, 4)));
/* sluice_prof_write_fn appending to an evbuffer. */
int sluice__dbg_evbuffer_sink(const void *data, size_t len, void *user);

/* ---- handlers ------------------------------------------------------------ */

typedef void (*sluice__dbg_handler)(sluice_debug_server *s,
                                    struct evhttp_request *req,
                                    const struct evkeyvalq *query);

/* debug_pprof.c */
void sluice__dbg_heap(sluice_debug_server *s, struct evhttp_request *req,
                      const struct evkeyvalq *query);
void sluice__dbg_residual(sluice_debug_server *s, struct evhttp_request *req,
                          const struct evkeyvalq *query);
void sluice__dbg_snapshot(sluice_debug_server *s, struct evhttp_request *req,
                          const struct evkeyvalq *query);
void sluice__dbg_index(sluice_debug_server *s, struct evhttp_request *req,
                       const struct evkeyvalq *query);
/* Drop every stored snapshot and pending request (at stop, loop stopped). */
void sluice__dbg_pprof_cleanup(sluice_debug_server *s);
/* The "# MemStats" block of ?debug=1 outputs. */
void sluice__dbg_memstats_text(struct evbuffer *out);

/* debug_vars.c */
void sluice__dbg_vars(sluice_debug_server *s, struct evhttp_request *req,
                      const struct evkeyvalq *query);

/* debug_metrics.c */
void sluice__dbg_metrics(sluice_debug_server *s, struct evhttp_request *req,
                         const struct evkeyvalq *query);
void sluice__dbg_healthz(sluice_debug_server *s, struct evhttp_request *req,
                         const struct evkeyvalq *query);

/* ---- shared helpers ------------------------------------------------------ */

/* debug_metrics.c: the length of the well-formed UTF-8 sequence at s (1 to
 * 4; RFC 3629: no overlongs, surrogates or code points past U+10FFFF), 0
 * when the bytes there are not one. */
size_t sluice__dbg_utf8_len(const char *s);
/* s with each byte that is not part of well-formed UTF-8 written as the
 * text \xHH (JSON and Prometheus need UTF-8; AMQP names are bytes).
 * malloc'd; NULL when out of memory. */
char *sluice__dbg_utf8_clean(const char *s);

/* Residual aggregates, copied (free() the result). *n receives the count. */
sluice_prof_residual_stats *sluice__dbg_residual_stats(size_t *n);

#endif /* SLUICE_DEBUG_INTERNAL_H */
