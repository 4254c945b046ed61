/* SPDX-License-Identifier: MIT */
#include "gateway.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* A request waiting for its latency to pass. */
typedef struct pending {
  struct pending *prev, *next;
  pw_gateway *g;
  struct evhttp_request *req;
  struct event *timer;
  int code;
} pending;

struct pw_gateway {
  pw_gateway_opts o;
  char *api_key;
  char *auth; /* "Bearer <api key>" */
  struct event_base *base;
  struct evhttp *http;
  struct event *stop_ev;
  int stop_fd;
  int port;
  pthread_t thread;
  uint64_t rng;
  pending *pend; /* doubly linked, for stop */
  atomic_uint_fast64_t requests, replied, ok, c400, c401, c403, c410, c500,
      c503;
};

static uint64_t rng_next(pw_gateway *g) {
  /* xorshift64*: plenty for an error rate. */
  uint64_t x = g->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  g->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static double rng_unit(pw_gateway *g) {
  return (double)(rng_next(g) >> 11) / (double)(1ULL << 53);
}

static void count(pw_gateway *g, int code) {
  atomic_fetch_add(&g->replied, 1);
  atomic_uint_fast64_t *c = NULL;
  switch (code) {
    case 400: c = &g->c400; break;
    case 401: c = &g->c401; break;
    case 403: c = &g->c403; break;
    case 410: c = &g->c410; break;
    case 500: c = &g->c500; break;
    case 503: c = &g->c503; break;
    default:
      if (code >= 200 && code < 300) c = &g->ok;
  }
  if (c) atomic_fetch_add(c, 1);
}

static void reply(pw_gateway *g, struct evhttp_request *req, int code) {
  struct evbuffer *b = evbuffer_new();
  const char *reason = "OK";
  if (code == 200) {
    evbuffer_add_printf(b, "{\"name\": \"messages/%" PRIu64 "\"}\n",
                        (uint64_t)atomic_load(&g->ok) + 1);
  } else {
    switch (code) {
      case 400: reason = "Bad Request"; break;
      case 401: reason = "Unauthorized"; break;
      case 403: reason = "Forbidden"; break;
      case 410: reason = "Gone"; break;
      case 500: reason = "Internal Server Error"; break;
      default: reason = "Service Unavailable"; break;
    }
    evbuffer_add_printf(b, "{\"error\": {\"code\": %d, \"status\": \"%s\"}}\n",
                        code, reason);
  }
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                    "application/json");
  count(g, code);
  evhttp_send_reply(req, code, reason, b);
  evbuffer_free(b);
}

static void unlink_pending(pending *p) {
  pw_gateway *g = p->g;
  if (p->prev) p->prev->next = p->next;
  else g->pend = p->next;
  if (p->next) p->next->prev = p->prev;
}

static void on_latency(evutil_socket_t fd, short what, void *arg) {
  pending *p = arg;
  unlink_pending(p);
  reply(p->g, p->req, p->code);
  event_free(p->timer);
  free(p);
}

static int decide(pw_gateway *g, struct evhttp_request *req) {
  const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req),
                                        "Authorization");
  if (!auth || strncmp(auth, g->auth, strlen(g->auth)) != 0) return 401;
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  size_t len = evbuffer_get_length(in);
  const char *data = (const char *)evbuffer_pullup(in, -1);
  json_error_t err;
  json_t *j = data ? json_loadb(data, len, 0, &err) : NULL;
  const char *to = j ? json_string_value(json_object_get(j, "to")) : NULL;
  int code = 200;
  if (!to) code = 400;
  else if (strncmp(to, "forbidden", 9) == 0) code = 403;
  else if (strncmp(to, "gone", 4) == 0) code = 410;
  else if (strncmp(to, "fail", 4) == 0) code = 500;
  else if (g->o.error_rate > 0 && rng_unit(g) < g->o.error_rate)
    code = rng_unit(g) < g->o.error_4xx_share ? 400 : 503;
  json_decref(j);
  return code;
}

static void on_push(struct evhttp_request *req, void *arg) {
  pw_gateway *g = arg;
  if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
    evhttp_send_error(req, 405, "use POST");
    return;
  }
  atomic_fetch_add(&g->requests, 1);
  int code = decide(g, req);
  unsigned ms = g->o.latency_ms;
  if (g->o.jitter_ms) ms += (unsigned)(rng_next(g) % (g->o.jitter_ms + 1u));
  if (ms == 0) {
    reply(g, req, code);
    return;
  }
  pending *p = calloc(1, sizeof(*p));
  if (!p) {
    reply(g, req, 503);
    return;
  }
  p->g = g;
  p->req = req;
  p->code = code;
  p->timer = evtimer_new(g->base, on_latency, p);
  p->next = g->pend;
  if (g->pend) g->pend->prev = p;
  g->pend = p;
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  evtimer_add(p->timer, &tv);
}

static void on_stats(struct evhttp_request *req, void *arg) {
  pw_gateway_stats s;
  char buf[512];
  pw_gateway_stats_get(arg, &s);
  struct evbuffer *b = evbuffer_new();
  evbuffer_add_printf(b, "%s\n", pw_gateway_stats_json(&s, buf, sizeof(buf)));
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                    "application/json");
  evhttp_send_reply(req, 200, "OK", b);
  evbuffer_free(b);
}

static void on_healthz(struct evhttp_request *req, void *arg) {
  struct evbuffer *b = evbuffer_new();
  evbuffer_add_printf(b, "ok\n");
  evhttp_send_reply(req, 200, "OK", b);
  evbuffer_free(b);
}

static void on_stop(evutil_socket_t fd, short what, void *arg) {
  pw_gateway *g = arg;
  uint64_t v;
  ssize_t r = read(fd, &v, sizeof(v));
  (void)r;
  while (g->pend) {
    pending *p = g->pend;
    unlink_pending(p);
    reply(g, p->req, 503);
    event_free(p->timer);
    free(p);
  }
  event_base_loopbreak(g->base);
}

static void *run(void *arg) {
  pw_gateway *g = arg;
  event_base_dispatch(g->base);
  return NULL;
}

int pw_gateway_start(const pw_gateway_opts *opts, pw_gateway **out) {
  pw_gateway *g = calloc(1, sizeof(*g));
  if (!g) return -1;
  if (opts) g->o = *opts;
  const char *key = g->o.api_key ? g->o.api_key : "sluice-demo";
  g->api_key = strdup(key);
  g->auth = malloc(strlen(key) + 8);
  if (g->auth) sprintf(g->auth, "Bearer %s", key);
  g->rng = g->o.seed ? g->o.seed : 1;
  g->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

  char host[64] = "127.0.0.1";
  int port = 0;
  if (g->o.addr) {
    const char *colon = strrchr(g->o.addr, ':');
    if (!colon || (size_t)(colon - g->o.addr) >= sizeof(host)) {
      fprintf(stderr, "push-gateway: bad address \"%s\" (host:port)\n",
              g->o.addr);
      goto fail;
    }
    memcpy(host, g->o.addr, (size_t)(colon - g->o.addr));
    host[colon - g->o.addr] = 0;
    port = atoi(colon + 1);
  }
  g->base = event_base_new();
  g->http = g->base ? evhttp_new(g->base) : NULL;
  if (!g->http || !g->api_key || !g->auth || g->stop_fd < 0) goto fail;
  struct evhttp_bound_socket *bs =
      evhttp_bind_socket_with_handle(g->http, host, (uint16_t)port);
  if (!bs) {
    fprintf(stderr, "push-gateway: cannot listen on %s:%d: %s\n", host, port,
            strerror(errno));
    goto fail;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl);
  g->port = ss.ss_family == AF_INET6
                ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  evhttp_set_cb(g->http, "/push", on_push, g);
  evhttp_set_cb(g->http, "/stats", on_stats, g);
  evhttp_set_cb(g->http, "/healthz", on_healthz, g);
  evhttp_set_max_body_size(g->http, 64 * 1024);
  evhttp_set_timeout(g->http, 30);
  g->stop_ev = event_new(g->base, g->stop_fd, EV_READ, on_stop, g);
  if (!g->stop_ev || event_add(g->stop_ev, NULL)) goto fail;
  if (pthread_create(&g->thread, NULL, run, g)) goto fail;
  *out = g;
  return 0;
fail:
  if (g->stop_ev) event_free(g->stop_ev);
  if (g->http) evhttp_free(g->http);
  if (g->base) event_base_free(g->base);
  if (g->stop_fd >= 0) close(g->stop_fd);
  free(g->api_key);
  free(g->auth);
  free(g);
  return -1;
}

int pw_gateway_port(const pw_gateway *g) {
  return g->port;
}

const char *pw_gateway_url(const pw_gateway *g, char *buf, size_t cap) {
  snprintf(buf, cap, "http://127.0.0.1:%d/push", g->port);
  return buf;
}

void pw_gateway_stats_get(const pw_gateway *cg, pw_gateway_stats *s) {
  pw_gateway *g = (pw_gateway *)cg;
  memset(s, 0, sizeof(*s));
  s->requests = atomic_load(&g->requests);
  s->replied = atomic_load(&g->replied);
  s->ok = atomic_load(&g->ok);
  s->c400 = atomic_load(&g->c400);
  s->c401 = atomic_load(&g->c401);
  s->c403 = atomic_load(&g->c403);
  s->c410 = atomic_load(&g->c410);
  s->c500 = atomic_load(&g->c500);
  s->c503 = atomic_load(&g->c503);
  s->in_progress = s->requests > s->replied ? s->requests - s->replied : 0;
}

const char *pw_gateway_stats_json(const pw_gateway_stats *s, char *buf,
                                  size_t cap) {
  snprintf(buf, cap,
           "{\"requests\": %" PRIu64 ", \"replied\": %" PRIu64
           ", \"ok\": %" PRIu64 ", \"400\": %" PRIu64 ", \"401\": %" PRIu64
           ", \"403\": %" PRIu64 ", \"410\": %" PRIu64 ", \"500\": %" PRIu64
           ", \"503\": %" PRIu64 ", \"in_progress\": %" PRIu64 "}",
           s->requests, s->replied, s->ok, s->c400, s->c401, s->c403, s->c410,
           s->c500, s->c503, s->in_progress);
  return buf;
}

void pw_gateway_stop(pw_gateway *g) {
  if (!g) return;
  uint64_t one = 1;
  ssize_t w = write(g->stop_fd, &one, sizeof(one));
  (void)w;
  pthread_join(g->thread, NULL);
  event_free(g->stop_ev);
  evhttp_free(g->http);
  event_base_free(g->base);
  close(g->stop_fd);
  free(g->api_key);
  free(g->auth);
  free(g);
}
