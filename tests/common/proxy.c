/* SPDX-License-Identifier: MIT */
/* The fault-injecting proxy (see proxy.h). Every connection is a pair of
 * bufferevents on the proxy's own event_base; only the proxy thread touches
 * them. Commands from other threads go through a mutex, an eventfd that
 * wakes the proxy thread, and a condition variable that says "done". */
#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

/* bytes queued towards a side before we stop reading the other: memory
 * stays bounded */
#define HIGH_WATER (1u << 20)

enum cmd {
  CMD_NONE,
  CMD_CUT,
  CMD_RESET,
  CMD_HOLE,
  CMD_REFUSE,
  CMD_LISTEN,
  CMD_HOLD_ON,
  CMD_HOLD_OFF,
  CMD_QUIT
};

struct pair {
  struct tproxy *p;
  struct bufferevent *side[2]; /* 0: client, 1: upstream */
  int hole;                    /* black-holed: nothing moves */
  int closing;                 /* one side ended: flush, then free */
  struct pair *prev, *next;
};

struct tproxy {
  struct event_base *base;
  struct evconnlistener *lis;
  struct event *ev_wake;
  int wake_fd;
  uint16_t port, upstream;
  pthread_t thread;

  pthread_mutex_t call_mu; /* one command at a time */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  enum cmd cmd; /* pending command, CMD_NONE when idle */
  int result;
  tproxy_accept_fn on_accept;
  void *user;

  struct pair *pairs; /* proxy thread only */
  int hold_new;       /* proxy thread only: accept, then never answer */
  _Atomic unsigned accepted, open;
};

/* ---- pairs (proxy thread) ------------------------------------------------ */

static void pair_free(struct pair *x) {
  struct tproxy *p = x->p;
  for (int i = 0; i < 2; i++)
    if (x->side[i]) bufferevent_free(x->side[i]); /* closes the socket */
  if (x->prev) x->prev->next = x->next;
  else p->pairs = x->next;
  if (x->next) x->next->prev = x->prev;
  atomic_fetch_sub(&p->open, 1);
  free(x);
}

static int side_of(const struct pair *x, const struct bufferevent *bev) {
  return x->side[0] == bev ? 0 : 1;
}

static void on_read(struct bufferevent *bev, void *arg) {
  struct pair *x = arg;
  if (x->hole) return;
  struct bufferevent *dst = x->side[!side_of(x, bev)];
  struct evbuffer *out = bufferevent_get_output(dst);
  evbuffer_add_buffer(out, bufferevent_get_input(bev));
  /* Back-pressure: stop reading until the other side drains. */
  if (evbuffer_get_length(out) >= HIGH_WATER) bufferevent_disable(bev, EV_READ);
}

static void on_write(struct bufferevent *bev, void *arg) {
  struct pair *x = arg;
  if (x->hole) return;
  /* Called when this side's output is empty (low watermark 0). */
  if (x->closing) {
    pair_free(x);
    return;
  }
  bufferevent_enable(x->side[!side_of(x, bev)], EV_READ);
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  struct pair *x = arg;
  if (what & BEV_EVENT_CONNECTED) return;
  if (x->hole) return;
  if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
    /* Orderly end of one side: pass on what it sent last (a
     * connection.close, say), then close both. */
    struct bufferevent *dst = x->side[!side_of(x, bev)];
    struct evbuffer *out = bufferevent_get_output(dst);
    evbuffer_add_buffer(out, bufferevent_get_input(bev));
    x->closing = 1;
    bufferevent_disable(bev, EV_READ);
    bufferevent_disable(dst, EV_READ);
    if (evbuffer_get_length(out) == 0) pair_free(x);
    return;
  }
  pair_free(x); /* error, or the upstream refused */
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg) {
  struct tproxy *p = arg;
  struct pair *x = calloc(1, sizeof(*x));
  if (!x) {
    evutil_closesocket(fd);
    return;
  }
  x->p = p;
  x->side[0] = bufferevent_socket_new(p->base, fd, BEV_OPT_CLOSE_ON_FREE);
  if (!p->hold_new)
    x->side[1] = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
  x->next = p->pairs;
  if (p->pairs) p->pairs->prev = x;
  p->pairs = x;
  atomic_fetch_add(&p->open, 1);
  unsigned n = atomic_fetch_add(&p->accepted, 1) + 1;
  if (!x->side[0] || (!p->hold_new && !x->side[1])) {
    if (!x->side[0]) evutil_closesocket(fd);
    pair_free(x);
    return;
  }
  if (p->hold_new) {
    /* a hung node: the TCP handshake completes, nothing ever answers */
    x->hole = 1;
    return;
  }
  struct sockaddr_in up = {.sin_family = AF_INET,
                           .sin_port = htons(p->upstream)};
  up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < 2; i++) {
    bufferevent_setcb(x->side[i], on_read, on_write, on_event, x);
    bufferevent_enable(x->side[i], EV_READ | EV_WRITE);
  }
  if (bufferevent_socket_connect(x->side[1], (struct sockaddr *)&up,
                                 sizeof(up)) != 0) {
    pair_free(x);
    return;
  }
  /* Forward small frames at once: Nagle against delayed ACKs would add
   * tens of ms per round trip that a direct connection does not have. */
  int one = 1;
  for (int i = 0; i < 2; i++)
    setsockopt(bufferevent_getfd(x->side[i]), IPPROTO_TCP, TCP_NODELAY, &one,
               sizeof(one));
  pthread_mutex_lock(&p->mu);
  tproxy_accept_fn fn = p->on_accept;
  void *user = p->user;
  pthread_mutex_unlock(&p->mu);
  if (fn) fn(user, n);
}

static int listen_on(struct tproxy *p) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p->port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  p->lis = evconnlistener_new_bind(p->base, on_accept, p,
                                   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                   128, (struct sockaddr *)&a, sizeof(a));
  if (!p->lis) return -1;
  struct sockaddr_in got;
  socklen_t gl = sizeof(got);
  if (getsockname(evconnlistener_get_fd(p->lis), (struct sockaddr *)&got,
                  &gl) != 0)
    return -1;
  if (!p->port) p->port = ntohs(got.sin_port); /* set once, before use */
  return 0;
}

/* ---- commands ------------------------------------------------------------ */

static int execute(struct tproxy *p, enum cmd cmd) {
  int n = 0;
  switch (cmd) {
    case CMD_RESET:
      /* SO_LINGER 0: close() sends a RST instead of a FIN */
      for (struct pair *x = p->pairs; x; x = x->next)
        for (int i = 0; i < 2; i++) {
          struct linger lg = {1, 0};
          if (x->side[i])
            setsockopt(bufferevent_getfd(x->side[i]), SOL_SOCKET, SO_LINGER,
                       &lg, sizeof(lg));
        }
      /* fall through */
    case CMD_CUT:
    case CMD_QUIT:
      while (p->pairs) {
        pair_free(p->pairs);
        n++;
      }
      if (cmd == CMD_QUIT) {
        if (p->lis) evconnlistener_free(p->lis);
        p->lis = NULL;
        event_base_loopbreak(p->base);
      }
      return n;
    case CMD_HOLE:
      for (struct pair *x = p->pairs; x; x = x->next) {
        if (x->hole) continue;
        x->hole = 1;
        for (int i = 0; i < 2; i++)
          bufferevent_disable(x->side[i], EV_READ | EV_WRITE);
        n++;
      }
      return n;
    case CMD_REFUSE:
      if (p->lis) evconnlistener_free(p->lis);
      p->lis = NULL;
      return 0;
    case CMD_LISTEN: return p->lis ? 0 : listen_on(p);
    case CMD_HOLD_ON:
    case CMD_HOLD_OFF: p->hold_new = cmd == CMD_HOLD_ON; return 0;
    case CMD_NONE: break;
  }
  return 0;
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {
  struct tproxy *p = arg;
  uint64_t v;
  ssize_t r = read(p->wake_fd, &v, sizeof(v));
  (void)r;
  pthread_mutex_lock(&p->mu);
  if (p->cmd != CMD_NONE) {
    p->result = execute(p, p->cmd);
    p->cmd = CMD_NONE;
    pthread_cond_broadcast(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
}

static int run_cmd(struct tproxy *p, enum cmd cmd) {
  pthread_mutex_lock(&p->call_mu);
  pthread_mutex_lock(&p->mu);
  p->cmd = cmd;
  uint64_t one = 1;
  ssize_t w = write(p->wake_fd, &one, sizeof(one));
  (void)w;
  while (p->cmd != CMD_NONE) pthread_cond_wait(&p->cv, &p->mu);
  int rc = p->result;
  pthread_mutex_unlock(&p->mu);
  pthread_mutex_unlock(&p->call_mu);
  return rc;
}

static void *proxy_main(void *arg) {
  struct tproxy *p = arg;
  event_base_dispatch(p->base);
  return NULL;
}

/* ---- public -------------------------------------------------------------- */

int tproxy_start(uint16_t upstream_port, tproxy **out) {
  struct tproxy *p = calloc(1, sizeof(*p));
  if (!p) return -1;
  p->upstream = upstream_port;
  p->wake_fd = -1;
  pthread_mutex_init(&p->call_mu, NULL);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->base = event_base_new();
  if (!p->base) goto fail;
  p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (p->wake_fd < 0) goto fail;
  p->ev_wake = event_new(p->base, p->wake_fd, EV_READ | EV_PERSIST, on_wake, p);
  if (!p->ev_wake || event_add(p->ev_wake, NULL) != 0) goto fail;
  if (listen_on(p) != 0) goto fail;
  if (pthread_create(&p->thread, NULL, proxy_main, p) != 0) goto fail;
  *out = p;
  return 0;
fail:
  if (p->lis) evconnlistener_free(p->lis);
  if (p->ev_wake) event_free(p->ev_wake);
  if (p->wake_fd >= 0) close(p->wake_fd);
  if (p->base) event_base_free(p->base);
  pthread_mutex_destroy(&p->call_mu);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p);
  return -1;
}

void tproxy_free(tproxy *p) {
  if (!p) return;
  run_cmd(p, CMD_QUIT);
  pthread_join(p->thread, NULL);
  event_free(p->ev_wake);
  close(p->wake_fd);
  event_base_free(p->base);
  pthread_mutex_destroy(&p->call_mu);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p);
}

uint16_t tproxy_port(const tproxy *p) {
  return p->port;
}

const char *tproxy_uri(const tproxy *p, char *buf, unsigned len) {
  snprintf(buf, len, "amqp://guest:guest@127.0.0.1:%u/", (unsigned)p->port);
  return buf;
}

unsigned tproxy_cut(tproxy *p) {
  return (unsigned)run_cmd(p, CMD_CUT);
}
unsigned tproxy_reset(tproxy *p) {
  return (unsigned)run_cmd(p, CMD_RESET);
}
unsigned tproxy_blackhole(tproxy *p) {
  return (unsigned)run_cmd(p, CMD_HOLE);
}
int tproxy_refuse(tproxy *p, int refuse) {
  return run_cmd(p, refuse ? CMD_REFUSE : CMD_LISTEN);
}

void tproxy_hold_new(tproxy *p, int hold) {
  run_cmd(p, hold ? CMD_HOLD_ON : CMD_HOLD_OFF);
}

unsigned tproxy_accepted(const tproxy *p) {
  return atomic_load(&((tproxy *)p)->accepted);
}
unsigned tproxy_open(const tproxy *p) {
  return atomic_load(&((tproxy *)p)->open);
}

void tproxy_on_accept(tproxy *p, tproxy_accept_fn fn, void *user) {
  pthread_mutex_lock(&p->mu);
  p->on_accept = fn;
  p->user = user;
  pthread_mutex_unlock(&p->mu);
}
