/* SPDX-License-Identifier: MIT */
/* The HTTP sender: POSTs jobs to the push gateway with libevent's async HTTP
 * client over a small pool of keep-alive connections.
 *
 * It runs on one event_base and only that base's thread touches it: the
 * consumer's loop when handlers run inline (--workers 0), or a thread of its
 * own when handlers run on worker threads (which must never touch the
 * consumer's base). Jobs arrive through a mutex-protected list and an
 * eventfd, from any thread.
 *
 * A reply is not acted on inside libevent's callback: evhttp frees the
 * request only after that callback returns, so the job goes on a "done"
 * list that an event drains right after. By then everything libevent
 * allocated for the request is gone, and a delivery completed there leaves
 * no residual behind in the profiler. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "pw.h"

typedef struct conn {
  struct evhttp_connection *evcon;
  pw_job *job; /* in flight on it, or NULL */
} conn;

typedef struct jlist {
  pw_job *head, *tail;
} jlist;

struct pw_sender {
  pw_sender_opts o;
  struct event_base *base;
  int own_base;
  pthread_t thread;
  char host[256];
  int port;
  char path[1024];
  char host_hdr[300];
  conn *conns;
  unsigned n_conns;

  pthread_mutex_t mu;
  jlist in; /* submitted, not yet seen by the base thread (mu) */
  int stop; /* (mu) */
  int wake_fd;
  struct event *wake_ev;

  jlist wait;  /* waiting for a free connection */
  jlist done;  /* replied, to complete */
  jlist delay; /* waiting for their retry delay, oldest first */
  struct event *done_ev, *delay_ev;
  int shut;
};

static void push(jlist *l, pw_job *j) {
  j->next = NULL;
  if (l->tail) l->tail->next = j;
  else l->head = j;
  l->tail = j;
}

static pw_job *pop(jlist *l) {
  pw_job *j = l->head;
  if (j) {
    l->head = j->next;
    if (!l->head) l->tail = NULL;
    j->next = NULL;
  }
  return j;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_reply(struct evhttp_request *req, void *arg) {
  pw_job *job = arg;
  pw_sender *s = job->sender;
  /* req is NULL on a timeout or a connection error. */
  job->status = req ? evhttp_request_get_response_code(req) : 0;
  if (job->conn >= 0) s->conns[job->conn].job = NULL;
  job->conn = -1;
  push(&s->done, job);
  event_active(s->done_ev, EV_TIMEOUT, 0);
}

/* Start `job` on connection `i`. The request is built inside the delivery's
 * scope, so that what is allocated for this message is attributed to it
 * (and must be gone when it completes); evhttp_make_request() runs outside:
 * it may connect, which grows libevent's own tables (the timer heap, the fd
 * map) for the life of the base. That memory belongs to the connection,
 * not to the message that happened to open it. */
static void start(pw_sender *s, unsigned i, pw_job *job) {
  sluice_delivery_enter(job->d);
  struct evhttp_request *req = NULL;
  if (pw_job_prepare(job) == 0) req = evhttp_request_new(on_reply, job);
  if (req) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", s->host_hdr);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Authorization", job->auth->header);
    evbuffer_add(evhttp_request_get_output_buffer(req), job->payload,
                 job->payload_len);
  }
  sluice_delivery_leave(job->d);
  if (req) {
    job->conn = (int)i;
    s->conns[i].job = job;
    if (evhttp_make_request(s->conns[i].evcon, req, EVHTTP_REQ_POST, s->path) !=
        0) {
      /* libevent has disposed of the request. */
      s->conns[i].job = NULL;
      job->conn = -1;
      req = NULL;
    }
  }
  if (!req) {
    job->status = 0;
    push(&s->done, job);
    event_active(s->done_ev, EV_TIMEOUT, 0);
  }
}

static void dispatch(pw_sender *s) {
  for (unsigned i = 0; i < s->n_conns && s->wait.head; i++)
    if (!s->conns[i].job) start(s, i, pop(&s->wait));
}

static void on_done(evutil_socket_t fd, short what, void *arg) {
  pw_sender *s = arg;
  pw_job *job;
  while ((job = pop(&s->done))) pw_job_complete(job);
  dispatch(s);
}

static void arm_delay(pw_sender *s) {
  if (!s->delay.head) return;
  uint64_t now = now_ns(), due = s->delay.head->due_ns;
  uint64_t left = due > now ? due - now : 0;
  struct timeval tv = {(time_t)(left / 1000000000u),
                       (suseconds_t)(left % 1000000000u / 1000u)};
  evtimer_add(s->delay_ev, &tv);
}

static void on_delay(evutil_socket_t fd, short what, void *arg) {
  pw_sender *s = arg;
  uint64_t now = now_ns();
  while (s->delay.head && s->delay.head->due_ns <= now) {
    pw_job *job = pop(&s->delay);
    job->delayed = 1;
    pw_job_complete(job);
  }
  arm_delay(s);
}

int pw_sender_delay(pw_sender *s, pw_job *job) {
  if (!s->o.retry_delay_ms || s->shut) return -1;
  job->due_ns = now_ns() + (uint64_t)s->o.retry_delay_ms * 1000000u;
  int was_empty = !s->delay.head;
  push(&s->delay, job);
  if (was_empty) arm_delay(s);
  return 0;
}

/* Complete every job still held, as aborted. Base thread, or the caller's
 * thread once the base's loop has ended. */
static void shutdown_jobs(pw_sender *s) {
  s->shut = 1;
  jlist left = {0};
  pthread_mutex_lock(&s->mu);
  pw_job *job;
  while ((job = pop(&s->in))) push(&left, job);
  pthread_mutex_unlock(&s->mu);
  for (unsigned i = 0; i < s->n_conns; i++) {
    /* Freeing a connection frees its request without calling back. */
    if (s->conns[i].job) push(&left, s->conns[i].job);
    s->conns[i].job = NULL;
    if (s->conns[i].evcon) evhttp_connection_free(s->conns[i].evcon);
    s->conns[i].evcon = NULL;
  }
  while ((job = pop(&s->wait))) push(&left, job);
  while ((job = pop(&s->delay))) push(&left, job);
  while ((job = pop(&s->done))) {
    /* Replied already: finish it normally. */
    pw_job_complete(job);
  }
  while ((job = pop(&left))) {
    job->aborted = 1;
    job->conn = -1;
    pw_job_complete(job);
  }
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {
  pw_sender *s = arg;
  uint64_t v;
  ssize_t r = read(fd, &v, sizeof(v));
  (void)r;
  pthread_mutex_lock(&s->mu);
  int stop = s->stop;
  pw_job *job;
  while ((job = pop(&s->in))) push(&s->wait, job);
  pthread_mutex_unlock(&s->mu);
  if (stop) {
    shutdown_jobs(s);
    event_base_loopbreak(s->base);
    return;
  }
  dispatch(s);
}

static void *run(void *arg) {
  pw_sender *s = arg;
  event_base_dispatch(s->base);
  return NULL;
}

static int parse_url(pw_sender *s, const char *url) {
  struct evhttp_uri *u = evhttp_uri_parse(url);
  if (!u) return -1;
  const char *scheme = evhttp_uri_get_scheme(u);
  const char *host = evhttp_uri_get_host(u);
  const char *path = evhttp_uri_get_path(u);
  const char *query = evhttp_uri_get_query(u);
  int port = evhttp_uri_get_port(u);
  int ok = scheme && strcmp(scheme, "http") == 0 && host && *host &&
           strlen(host) < sizeof(s->host);
  if (ok) {
    snprintf(s->host, sizeof(s->host), "%s", host);
    s->port = port > 0 ? port : 80;
    snprintf(s->path, sizeof(s->path), "%s%s%s", path && *path ? path : "/",
             query ? "?" : "", query ? query : "");
    if (port > 0)
      snprintf(s->host_hdr, sizeof(s->host_hdr), "%s:%d", host, port);
    else snprintf(s->host_hdr, sizeof(s->host_hdr), "%s", host);
  }
  evhttp_uri_free(u);
  return ok ? 0 : -1;
}

int pw_sender_new(const pw_sender_opts *o, pw_sender **out) {
  pw_sender *s = calloc(1, sizeof(*s));
  if (!s) return -1;
  s->o = *o;
  if (!s->o.conns) s->o.conns = 8;
  if (!s->o.timeout_ms) s->o.timeout_ms = 5000;
  s->wake_fd = -1;
  pthread_mutex_init(&s->mu, NULL);
  if (!o->url || parse_url(s, o->url)) {
    fprintf(stderr,
            "push-worker: bad gateway URL \"%s\" (http://host:port/path)\n",
            o->url ? o->url : "");
    goto fail;
  }
  s->own_base = !o->base;
  s->base = o->base ? o->base : event_base_new();
  s->n_conns = s->o.conns;
  s->conns = calloc(s->n_conns, sizeof(*s->conns));
  s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (!s->base || !s->conns || s->wake_fd < 0) goto fail;
  struct timeval tv = {s->o.timeout_ms / 1000, (s->o.timeout_ms % 1000) * 1000};
  for (unsigned i = 0; i < s->n_conns; i++) {
    s->conns[i].evcon =
        evhttp_connection_base_new(s->base, NULL, s->host, (uint16_t)s->port);
    if (!s->conns[i].evcon) goto fail;
    evhttp_connection_set_timeout_tv(s->conns[i].evcon, &tv);
    /* A gateway's replies are small: a misbehaving one must not make the
     * worker buffer without limit. */
    evhttp_connection_set_max_headers_size(s->conns[i].evcon, 16384);
    evhttp_connection_set_max_body_size(s->conns[i].evcon, 65536);
    evhttp_connection_set_retries(s->conns[i].evcon, 0);
  }
  s->wake_ev = event_new(s->base, s->wake_fd, EV_READ | EV_PERSIST, on_wake, s);
  s->done_ev = event_new(s->base, -1, 0, on_done, s);
  s->delay_ev = evtimer_new(s->base, on_delay, s);
  if (!s->wake_ev || !s->done_ev || !s->delay_ev || event_add(s->wake_ev, NULL))
    goto fail;
  if (s->own_base && pthread_create(&s->thread, NULL, run, s)) goto fail;
  *out = s;
  return 0;
fail:
  if (s->conns)
    for (unsigned i = 0; i < s->n_conns; i++)
      if (s->conns[i].evcon) evhttp_connection_free(s->conns[i].evcon);
  if (s->wake_ev) event_free(s->wake_ev);
  if (s->done_ev) event_free(s->done_ev);
  if (s->delay_ev) event_free(s->delay_ev);
  if (s->own_base && s->base) event_base_free(s->base);
  if (s->wake_fd >= 0) close(s->wake_fd);
  free(s->conns);
  pthread_mutex_destroy(&s->mu);
  free(s);
  return -1;
}

void pw_sender_submit(pw_sender *s, pw_job *job) {
  job->sender = s;
  job->conn = -1;
  pthread_mutex_lock(&s->mu);
  int was_empty = !s->in.head;
  push(&s->in, job);
  pthread_mutex_unlock(&s->mu);
  if (was_empty) {
    uint64_t one = 1;
    ssize_t w = write(s->wake_fd, &one, sizeof(one));
    (void)w;
  }
}

void pw_sender_free(pw_sender *s) {
  if (!s) return;
  if (s->own_base) {
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_mutex_unlock(&s->mu);
    uint64_t one = 1;
    ssize_t w = write(s->wake_fd, &one, sizeof(one));
    (void)w;
    pthread_join(s->thread, NULL);
  } else {
    shutdown_jobs(s);
  }
  event_free(s->wake_ev);
  event_free(s->done_ev);
  event_free(s->delay_ev);
  if (s->own_base) event_base_free(s->base);
  close(s->wake_fd);
  free(s->conns);
  pthread_mutex_destroy(&s->mu);
  free(s);
}
