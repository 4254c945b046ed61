/* SPDX-License-Identifier: MIT */
/* The debug endpoint's server: address checks, the thread and its
 * event_base, authentication, routing, and the reply helpers. The handlers
 * live in debug_pprof.c, debug_vars.c and debug_metrics.c. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "debug_internal.h"

#define DEFAULT_ADDR "127.0.0.1:6060"
#define DEFAULT_MAX_CONNECTIONS 32
#define MAX_BACKOFF_MS 1000 /* longest pause after a failed accept() */
#define CALM_MS 5000        /* accept() working this long ends an episode */

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void dbg_log(const sluice_debug_server *s, int level, const char *fmt,
                    ...) __attribute__((format(printf, 3, 4)));
static void dbg_log(const sluice_debug_server *s, int level, const char *fmt,
                    ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (s->log) s->log(level, line, s->log_user);
  else if (level <= SLUICE_LOG_WARN)
    fprintf(stderr, "sluice debug endpoint: %s\n", line);
}

/* ------------------------------------------------------------------------ */
/* Replies. */

static const char *reason(int code) {
  switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

void sluice__dbg_reply(struct evhttp_request *req, int code,
                       const char *content_type, struct evbuffer *body) {
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Content-Type", content_type);
  evhttp_add_header(h, "Cache-Control", "no-store");
  evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
  evhttp_send_reply(req, code, reason(code), body);
}

void sluice__dbg_error(struct evhttp_request *req, int code, const char *fmt,
                       ...) {
  struct evbuffer *b = evbuffer_new();
  if (b) {
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(b, fmt, ap);
    va_end(ap);
    evbuffer_add(b, "\n", 1);
  }
  sluice__dbg_reply(req, code, SLUICE__DBG_TEXT, b);
  if (b) evbuffer_free(b);
}

int sluice__dbg_evbuffer_sink(const void *data, size_t len, void *user) {
  return evbuffer_add(user, data, len) == 0 ? 0 : -1;
}

sluice_prof_residual_stats *sluice__dbg_residual_stats(size_t *n) {
  size_t cap = sluice_prof_residual_stats_get(NULL, 0) + 8;
  for (;;) {
    sluice_prof_residual_stats *v = calloc(cap, sizeof *v);
    if (!v) {
      *n = 0;
      return NULL;
    }
    size_t got = sluice_prof_residual_stats_get(v, cap);
    if (got <= cap) {
      *n = got;
      return v;
    }
    free(v); /* grew in between: try again with room for all */
    cap = got + 8;
  }
}

/* ------------------------------------------------------------------------ */
/* Authentication. */

/* Compares in time that depends only on the length of the presented token,
 * never on where it first differs from the real one. */
static int token_ok(const sluice_debug_server *s, const char *given,
                    size_t len) {
  unsigned char diff = (unsigned char)(len != s->token_len);
  for (size_t i = 0; i < len; i++) {
    unsigned char want =
        (unsigned char)s->token[s->token_len ? i % s->token_len : 0];
    diff |= (unsigned char)((unsigned char)given[i] ^ want);
  }
  return diff == 0;
}

static int authorized(const sluice_debug_server *s,
                      struct evhttp_request *req) {
  const char *a = evhttp_find_header(evhttp_request_get_input_headers(req),
                                     "Authorization");
  if (!a) return 0;
  while (*a == ' ') a++;
  if (strncasecmp(a, "Bearer", 6) != 0 || (a[6] != ' ' && a[6] != '\t'))
    return 0;
  a += 7;
  while (*a == ' ' || *a == '\t') a++;
  size_t len = strlen(a);
  while (len && (a[len - 1] == ' ' || a[len - 1] == '\t')) len--;
  return token_ok(s, a, len);
}

/* Without a token the endpoint serves loopback only; a Host header naming
 * anything but loopback then means a browser was led here by DNS
 * rebinding, and is refused. A missing Host (HTTP/1.0) is fine. */
static int host_ok(struct evhttp_request *req) {
  const char *h =
      evhttp_find_header(evhttp_request_get_input_headers(req), "Host");
  if (!h || !*h) return 1;
  char host[256];
  size_t n = 0;
  if (*h == '[') {
    const char *e = strchr(h, ']');
    if (!e || (size_t)(e - h - 1) >= sizeof host) return 0;
    n = (size_t)(e - h - 1);
    memcpy(host, h + 1, n);
  } else {
    while (h[n] && h[n] != ':' && n + 1 < sizeof host) {
      host[n] = h[n];
      n++;
    }
  }
  host[n] = 0;
  if (!strcasecmp(host, "localhost")) return 1;
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, host, &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Connections.
 *
 * evhttp's timeout restarts with every byte received: a client trickling a
 * header byte every few seconds holds its socket for ever. And libevent
 * 2.1's evhttp can neither cap its connections nor say when one starts
 * (2.2 has evhttp_set_newreqcb). Its one hook at accept time is the
 * bufferevent a connection is made with (evhttp_set_bevcb): the server
 * makes it, keeps a reference on it, and finds the connection again from
 * it. So each connection has
 *  - a deadline for its whole request: timeout_s from its accept (or from
 *    its previous answer, kept alive) to a complete request, however the
 *    bytes trickle in;
 *  - one of max_connections places: a new connection past the cap evicts
 *    the oldest one still sending its request (one being answered is never
 *    cut), or is closed itself when every other is being answered, and
 *    accepting pauses until a place frees;
 * and a failed accept() (EMFILE at the fd limit) pauses accepting with a
 * backoff instead of spinning on the readable listener, logged once per
 * episode. Server thread only. */

/* The evhttp connection of a tracked bufferevent; NULL once evhttp has let
 * go of it (bufferevent_free() clears the callbacks; our reference keeps
 * the object). */
static struct evhttp_connection *conn_of(const sluice__dbg_conn *k) {
  bufferevent_event_cb ev = NULL;
  void *arg = NULL;
  bufferevent_getcb(k->bev, NULL, NULL, &ev, &arg);
  return ev ? arg : NULL;
}

static sluice__dbg_conn *slot_of(sluice_debug_server *s,
                                 struct evhttp_request *req) {
  struct evhttp_connection *evcon = evhttp_request_get_connection(req);
  struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon)
                                  : NULL;
  for (unsigned i = 0; bev && i <= s->max_connections; i++)
    if (s->conns[i].bev == bev) return &s->conns[i];
  return NULL;
}

/* Accept unless every place is taken by a connection being answered (a
 * newcomer could evict none), a failed accept() is backing off, or an
 * eviction waits for its socket to close (libevent closes it from the loop,
 * so a burst of accepts would otherwise take a new descriptor per evicted
 * one before any is given back). */
static void update_accepting(sluice_debug_server *s) {
  if (!s->listener) return;
  if (s->cap_paused && s->n_conns < s->max_connections) s->cap_paused = 0;
  int backing_off = event_pending(s->resume_ev, EV_TIMEOUT, NULL);
  if (s->cap_paused || backing_off || s->yielding)
    evconnlistener_disable(s->listener);
  else evconnlistener_enable(s->listener);
}

/* Drop our reference to connections evhttp has closed: that frees their
 * bufferevent and closes the socket. */
static void reap(sluice_debug_server *s) {
  for (unsigned i = 0; i <= s->max_connections; i++) {
    sluice__dbg_conn *k = &s->conns[i];
    if (k->bev && !conn_of(k)) {
      bufferevent_decref(k->bev);
      k->bev = NULL;
      s->n_conns--;
    }
  }
}

static void close_conn(sluice_debug_server *s, sluice__dbg_conn *k) {
  struct evhttp_connection *evcon = conn_of(k);
  if (evcon) evhttp_connection_free(evcon); /* its pending request too */
}

/* Close the connection that has waited longest for its request; 1 if there
 * was one. */
static int evict_oldest(sluice_debug_server *s) {
  sluice__dbg_conn *oldest = NULL;
  for (unsigned i = 0; i <= s->max_connections; i++) {
    sluice__dbg_conn *k = &s->conns[i];
    if (k->bev && !k->serving && conn_of(k) &&
        (!oldest || k->accepted_ms < oldest->accepted_ms))
      oldest = k;
  }
  if (!oldest) return 0;
  s->evicted++;
  close_conn(s, oldest);
  reap(s);
  return 1;
}

static void sweep(evutil_socket_t fd, short what, void *arg) {
  sluice_debug_server *s = arg;
  (void)fd;
  (void)what;
  uint64_t now = now_ms(), limit = (uint64_t)s->timeout_s * 1000;
  reap(s);
  for (unsigned i = 0; i <= s->max_connections; i++) {
    sluice__dbg_conn *k = &s->conns[i];
    if (k->bev && !k->serving && now - k->accepted_ms >= limit) {
      s->timed_out++;
      close_conn(s, k);
    }
  }
  reap(s);
  if (!s->n_conns) event_del(s->sweep_ev);
  update_accepting(s);
}

/* evhttp_set_bevcb: a connection was accepted. */
static struct bufferevent *on_accept(struct event_base *base, void *arg) {
  sluice_debug_server *s = arg;
  if (s->accept_failures && !event_pending(s->calm_ev, EV_TIMEOUT, NULL)) {
    struct timeval tv = {CALM_MS / 1000, 0};
    event_add(s->calm_ev, &tv);
  }
  reap(s);
  if (s->n_conns >= s->max_connections && evict_oldest(s)) {
    s->yielding = 1;
    event_active(s->yield_ev, EV_TIMEOUT, 1);
  }
  sluice__dbg_conn *k = NULL;
  for (unsigned i = 0; !k && i <= s->max_connections; i++)
    if (!s->conns[i].bev) k = &s->conns[i];
  /* NULL makes evhttp create one we do not track: only when out of
   * memory, or past the cap before accepting pauses. */
  if (!k) return NULL;
  struct bufferevent *bev =
      bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (!bev) return NULL;
  bufferevent_incref(bev);
  k->bev = bev;
  k->serving = 0;
  k->accepted_ms = now_ms();
  s->n_conns++;
  if (s->n_conns > s->max_connections) {
    /* Every other connection is being answered: this one goes at once
     * (past its deadline) and accepting pauses until a place frees. */
    s->evicted++;
    k->accepted_ms = 0;
    s->cap_paused = 1;
    event_active(s->sweep_ev, EV_TIMEOUT, 1);
  }
  if (!event_pending(s->sweep_ev, EV_TIMEOUT, NULL)) {
    unsigned ms = s->timeout_s * 1000u / 4;
    struct timeval tv = {0, (suseconds_t)((ms < 250 ? ms : 250) * 1000)};
    event_add(s->sweep_ev, &tv);
  }
  update_accepting(s);
  return bev;
}

static void on_reply_sent(struct evhttp_request *req, void *arg) {
  sluice_debug_server *s = arg;
  sluice__dbg_conn *k = slot_of(s, req);
  if (!k) return;
  /* Kept alive: the next request gets timeout_s from now. */
  k->serving = 0;
  k->accepted_ms = now_ms();
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
  sluice_debug_server *s = arg;
  (void)fd;
  (void)what;
  s->yielding = 0;
  update_accepting(s);
}

/* accept() has worked for CALM_MS since the last failure: the episode is
 * over. */
static void on_calm(evutil_socket_t fd, short what, void *arg) {
  sluice_debug_server *s = arg;
  (void)fd;
  (void)what;
  dbg_log(s, SLUICE_LOG_INFO,
          "accepting again after %llu failed accept() "
          "calls",
          (unsigned long long)s->accept_failures);
  s->accept_failures = 0;
  s->backoff_ms = 0;
}

/* accept() failed for a reason other than a retriable one: EMFILE or
 * ENFILE at the fd limit, ENOBUFS, ENOMEM. The listener stays readable, so
 * accepting pauses (10 ms, doubling up to MAX_BACKOFF_MS) instead of
 * spinning. One warning per episode, which ends once accept() has worked
 * for CALM_MS (an INFO line then). */
static _Thread_local sluice_debug_server *this_server; /* its thread's */

static void on_accept_error(struct evconnlistener *lev, void *arg) {
  /* `arg` is evhttp's (the listener's callback is evhttp's own). */
  sluice_debug_server *s = this_server;
  int err = EVUTIL_SOCKET_ERROR();
  (void)lev;
  (void)arg;
  event_del(s->calm_ev);
  if (s->accept_failures++ == 0)
    dbg_log(s, SLUICE_LOG_WARN,
            "accept(): %s; accepting pauses and retries with a backoff "
            "(up to %d ms) until it works again",
            strerror(err), MAX_BACKOFF_MS);
  s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : 10;
  if (s->backoff_ms > MAX_BACKOFF_MS) s->backoff_ms = MAX_BACKOFF_MS;
  struct timeval tv = {(time_t)(s->backoff_ms / 1000),
                       (suseconds_t)(s->backoff_ms % 1000) * 1000};
  event_add(s->resume_ev, &tv);
  update_accepting(s);
}

/* ------------------------------------------------------------------------ */
/* Routing. */

static const struct route {
  const char *path;
  sluice__dbg_handler fn;
} routes[] = {
    {"/debug/pprof/heap", sluice__dbg_heap},
    {"/debug/pprof/residual", sluice__dbg_residual},
    {"/debug/pprof/snapshot", sluice__dbg_snapshot},
    {"/debug/pprof/", sluice__dbg_index},
    {"/debug/pprof", sluice__dbg_index},
    {"/debug/vars", sluice__dbg_vars},
    {"/metrics", sluice__dbg_metrics},
    {"/healthz", sluice__dbg_healthz},
};

static void dispatch(struct evhttp_request *req, void *arg) {
  sluice_debug_server *s = arg;
  /* Nothing on this thread may count against a message's scope. The thread
   * never enters one; this makes sure of it. */
  if (sluice_prof_scope_current()) sluice_prof_scope_enter(0);
  /* The request is complete: its deadline is met; the answer is bounded
   * by evhttp's timeout (and a ?seconds=N wait). */
  sluice__dbg_conn *k = slot_of(s, req);
  if (k) {
    k->serving = 1;
    evhttp_request_set_on_complete_cb(req, on_reply_sent, s);
  }

  if (s->token ? !authorized(s, req) : !host_ok(req)) {
    s->unauthorized++;
    if (s->token) {
      evhttp_add_header(evhttp_request_get_output_headers(req),
                        "WWW-Authenticate", "Bearer realm=\"sluice\"");
      sluice__dbg_error(req, 401, "a bearer token is required");
    } else {
      sluice__dbg_error(req, 403, "Host must name a loopback address");
    }
    return;
  }
  if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
    sluice__dbg_error(req, 405, "only GET is served");
    return;
  }
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
  const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
  if (!path || !*path) path = "/";
  const struct route *r = NULL;
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if (!strcmp(routes[i].path, path)) r = &routes[i];
  if (!r) {
    sluice__dbg_error(req, 404, "not found: %s (see /debug/pprof/)", path);
    return;
  }
  struct evkeyvalq q; /* an empty TAILQ: evhttp's headers have no init */
  q.tqh_first = NULL;
  q.tqh_last = &q.tqh_first;
  const char *qs = evhttp_uri_get_query(uri);
  if (qs && evhttp_parse_query_str(qs, &q) != 0) {
    evhttp_clear_headers(&q);
    sluice__dbg_error(req, 400, "malformed query string");
    return;
  }
  s->requests++;
  r->fn(s, req, &q);
  evhttp_clear_headers(&q);
}

/* ------------------------------------------------------------------------ */
/* Addresses. */

typedef struct addr {
  char host[INET6_ADDRSTRLEN];
  int port;
  int loopback;
} addr;

/* "host:port", "[v6]:port" or ":port" (every interface). Only literal
 * addresses and "localhost": no name lookups at start. */
static int parse_addr(const char *s, addr *out) {
  const char *colon;
  char host[INET6_ADDRSTRLEN + 2];
  size_t hn;
  if (*s == '[') {
    const char *e = strchr(s, ']');
    if (!e || e[1] != ':') return SLUICE_EINVAL;
    hn = (size_t)(e - s - 1);
    if (hn >= sizeof host) return SLUICE_EINVAL;
    memcpy(host, s + 1, hn);
    colon = e + 1;
  } else {
    colon = strrchr(s, ':');
    if (!colon) return SLUICE_EINVAL;
    hn = (size_t)(colon - s);
    if (hn >= sizeof host) return SLUICE_EINVAL;
    memcpy(host, s, hn);
  }
  host[hn] = 0;
  const char *p = colon + 1;
  if (!*p || strlen(p) > 5) return SLUICE_EINVAL;
  long port = 0;
  for (; *p; p++) {
    if (!isdigit((unsigned char)*p)) return SLUICE_EINVAL;
    port = port * 10 + (*p - '0');
  }
  if (port > 65535) return SLUICE_EINVAL;
  out->port = (int)port;

  if (!hn) strcpy(host, "0.0.0.0");
  if (!strcasecmp(host, "localhost")) strcpy(host, "127.0.0.1");
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, host, &a4) == 1) {
    out->loopback = (ntohl(a4.s_addr) >> 24) == 127;
  } else if (inet_pton(AF_INET6, host, &a6) == 1) {
    out->loopback = IN6_IS_ADDR_LOOPBACK(&a6) ||
                    (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
  } else {
    return SLUICE_EINVAL;
  }
  strcpy(out->host, host);
  return 0;
}

/* RFC 6750 b64token characters: what may follow "Bearer ". */
static int token_valid(const char *t) {
  if (!*t) return 0;
  for (; *t; t++) {
    unsigned char ch = (unsigned char)*t;
    if (!isalnum(ch) && !strchr("-._~+/=", ch)) return 0;
  }
  return 1;
}

/* ------------------------------------------------------------------------ */
/* The thread. */

static void on_wake(evutil_socket_t fd, short what, void *arg) {
  sluice_debug_server *s = arg;
  uint64_t v;
  if (read(fd, &v, sizeof v) < 0 && errno != EAGAIN) {
    /* Nothing to do: the loop stops either way. */
  }
  event_base_loopbreak(s->base);
}

static void *serve(void *arg) {
  sluice_debug_server *s = arg;
  this_server = s;
  sluice_prof_scope_enter(0);
  event_base_dispatch(s->base);
  return NULL;
}

static void destroy(sluice_debug_server *s) {
  sluice__dbg_pprof_cleanup(s);
  if (s->http) evhttp_free(s->http); /* closes every connection */
  if (s->conns) {
    for (unsigned i = 0; i <= s->max_connections; i++)
      if (s->conns[i].bev) bufferevent_decref(s->conns[i].bev);
    free(s->conns);
  }
  if (s->sweep_ev) event_free(s->sweep_ev);
  if (s->resume_ev) event_free(s->resume_ev);
  if (s->yield_ev) event_free(s->yield_ev);
  if (s->calm_ev) event_free(s->calm_ev);
  if (s->wake_ev) event_free(s->wake_ev);
  if (s->base) event_base_free(s->base);
  if (s->wake_fd >= 0) close(s->wake_fd);
  free(s->snaps);
  free(s->token);
  free(s);
}

static int start(const sluice_debug_opts *o, sluice_debug_server **out) {
  addr a;
  if (parse_addr(o->addr ? o->addr : DEFAULT_ADDR, &a)) return SLUICE_EINVAL;
  if (o->token && !token_valid(o->token)) return SLUICE_EINVAL;
  if (!a.loopback && (!o->allow_remote || !o->token)) return SLUICE_EINVAL;
  if (o->timeout_s < 0) return SLUICE_EINVAL;

  sluice_debug_server *s = calloc(1, sizeof *s);
  if (!s) return SLUICE_ENOMEM;
  s->c = o->consumer;
  s->wake_fd = -1;
  s->max_request_bytes = o->max_request_bytes ? o->max_request_bytes : 8192;
  s->timeout_s = o->timeout_s ? o->timeout_s : 10;
  s->max_seconds = o->max_seconds ? o->max_seconds : 300;
  s->max_snapshots = o->max_snapshots ? o->max_snapshots : 8;
  s->max_connections = o->max_connections ? o->max_connections
                                          : DEFAULT_MAX_CONNECTIONS;
  s->log = o->log;
  s->log_user = o->log_user;
  s->next_snap_id = 1;
  int rc = SLUICE_ENOMEM;
  if (o->token) {
    s->token = strdup(o->token);
    if (!s->token) goto fail;
    s->token_len = strlen(s->token);
  }
  s->snaps = calloc(s->max_snapshots, sizeof *s->snaps);
  s->conns = calloc(s->max_connections + 1, sizeof *s->conns);
  s->base = event_base_new();
  if (!s->snaps || !s->conns || !s->base) goto fail;
  s->sweep_ev = event_new(s->base, -1, EV_PERSIST, sweep, s);
  s->resume_ev = evtimer_new(s->base, on_resume, s);
  s->yield_ev = evtimer_new(s->base, on_resume, s);
  s->calm_ev = evtimer_new(s->base, on_calm, s);
  if (!s->sweep_ev || !s->resume_ev || !s->yield_ev || !s->calm_ev) goto fail;
  s->http = evhttp_new(s->base);
  if (!s->http) goto fail;
  /* Every request line and header together, and no body at all: no path
   * takes one. */
  evhttp_set_max_headers_size(s->http, (ev_ssize_t)s->max_request_bytes);
  evhttp_set_max_body_size(s->http, 0);
  evhttp_set_timeout(s->http, s->timeout_s);
  /* Let every method reach dispatch() so that the answer is a 405, not
   * evhttp's 501. */
  evhttp_set_allowed_methods(
      s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                   EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
  evhttp_set_gencb(s->http, dispatch, s);
  evhttp_set_bevcb(s->http, on_accept, s);

  rc = SLUICE_ESOCKET;
  s->bound =
      evhttp_bind_socket_with_handle(s->http, a.host, (ev_uint16_t)a.port);
  if (!s->bound) goto fail;
  s->listener = evhttp_bound_socket_get_listener(s->bound);
  evconnlistener_set_error_cb(s->listener, on_accept_error);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(evhttp_bound_socket_get_fd(s->bound), (struct sockaddr *)&ss,
                  &sl))
    goto fail;
  s->port = ss.ss_family == AF_INET6
                ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                : ntohs(((struct sockaddr_in *)&ss)->sin_port);

  rc = SLUICE_ENOMEM;
  s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->wake_fd < 0) goto fail;
  s->wake_ev = event_new(s->base, s->wake_fd, EV_READ, on_wake, s);
  if (!s->wake_ev || event_add(s->wake_ev, NULL)) goto fail;

  /* The thread takes no signals: a handler of the program's must not run
   * here, and a SIGPIPE from writing to a client that went away stays
   * pending on this thread instead of killing the process (the write
   * returns EPIPE, which evhttp handles). */
  sigset_t all, old;
  sigfillset(&all);
  sigdelset(&all, SIGSEGV);
  sigdelset(&all, SIGBUS);
  sigdelset(&all, SIGFPE);
  sigdelset(&all, SIGILL);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int e = pthread_create(&s->thread, NULL, serve, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (e) goto fail;
  s->thread_started = 1;
  *out = s;
  return 0;

fail:
  destroy(s);
  return rc;
}

int sluice_debug_server_new(const sluice_debug_opts *opts,
                            sluice_debug_server **out) {
  if (!out) return SLUICE_EINVAL;
  *out = NULL;
  sluice_debug_opts zero;
  memset(&zero, 0, sizeof zero);
  /* Called from a handler, the server's memory must not become that
   * message's residual. */
  sluice_prof_scope prev = sluice_prof_scope_enter(0);
  int rc = start(opts ? opts : &zero, out);
  sluice_prof_scope_enter(prev);
  return rc;
}

int sluice_debug_server_port(const sluice_debug_server *s) {
  return s ? s->port : 0;
}

void sluice_debug_server_free(sluice_debug_server *s) {
  if (!s) return;
  if (s->thread_started) {
    uint64_t one = 1;
    while (write(s->wake_fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
    pthread_join(s->thread, NULL);
  }
  destroy(s);
}
