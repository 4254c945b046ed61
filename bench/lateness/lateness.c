/* SPDX-License-Identifier: MIT */
/* sluice-bench-lateness: how long sluice holds the caller's event loop while
 * it (re)connects to nodes that do not answer. A 1 ms timer on the same
 * event_base records how late it fires while a consumer attached with
 * sluice_consumer_start() tries, again and again, to reach:
 *
 *   refused     a port where nothing listens (ECONNREFUSED at once)
 *   blackhole   a listener whose accept queue is full: SYNs are dropped, the
 *               TCP connect hangs until connect_timeout_ms
 *   hung        a node that accepts TCP and never answers (the tests' fault
 *               proxy, hold mode): the AMQP handshake hangs
 *   tls-hung    amqps:// to that node: the TLS handshake hangs
 *
 * each listed first, before a working node of the shared broker, so the
 * consumer ends up connected, then its connection is cut and it walks past
 * the dead node again. The reference is the same timer on a base without
 * sluice, in the same run. Also reported: how long start() itself took, and
 * how long a stop() during an attempt took to reach SLUICE_EV_STOPPED.
 *
 * Usage: sluice-bench-lateness [seconds per scenario = 5]
 *                              [connect_timeout_ms = 1000]
 * Needs the broker on 127.0.0.1:5672; tls-hung needs nothing more (the hung
 * node never gets as far as a certificate). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include <sluice/sluice.h>

#include "proxy.h"

#define BROKER_PORT 5672
#define TICK_US 1000

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- the timer ------------------------------------------------------------ */

#define MAXS 200000

struct probe {
  struct event_base *base;
  struct event *tick, *end;
  uint64_t due_us;
  uint64_t *late; /* lateness of each tick, us */
  size_t n;
  sluice_consumer *c;
  unsigned connected, reconnecting, closed;
  uint64_t stop_at_us, stopped_us;
  int stopped;
};

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  struct probe *p = arg;
  uint64_t t = now_us();
  /* Up to the stop: a graceful stop closes the connection synchronously
   * within stop_timeout_ms, which is reported on its own. */
  if (p->n < MAXS && !p->stop_at_us)
    p->late[p->n++] = t > p->due_us ? t - p->due_us : 0;
  struct timeval tv = {0, TICK_US};
  p->due_us = now_us() + TICK_US;
  evtimer_add(p->tick, &tv);
}

static void arm_tick(struct probe *p) {
  struct timeval tv = {0, TICK_US};
  p->due_us = now_us() + TICK_US;
  evtimer_add(p->tick, &tv);
}

/* libevent reads CLOCK_MONOTONIC_COARSE by default: its clock, and so its
 * timers, move in steps of a jiffy (4 ms here), which alone would make a
 * 1 ms timer ~3 ms late. The precise clock measures what the loop does. */
static struct event_base *precise_base(void) {
  struct event_config *cfg = event_config_new();
  event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
  struct event_base *b = event_base_new_with_config(cfg);
  event_config_free(cfg);
  return b;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void report(const char *name, struct probe *p, double start_ms,
                   const char *extra) {
  qsort(p->late, p->n, sizeof(*p->late), cmp_u64);
  uint64_t worst = p->n ? p->late[p->n - 1] : 0;
  uint64_t p99 = p->n ? p->late[(p->n * 99) / 100] : 0;
  uint64_t med = p->n ? p->late[p->n / 2] : 0;
  printf("%-10s %8zu %10.3f %10.3f %10.3f %10.3f  %s\n", name, p->n,
         med / 1000.0, p99 / 1000.0, worst / 1000.0, start_ms, extra);
  fflush(stdout);
}

/* ---- dead nodes ------------------------------------------------------------ */

static int listen_any(int backlog, uint16_t *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t l = sizeof(a);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) ||
      listen(fd, backlog) || getsockname(fd, (struct sockaddr *)&a, &l)) {
    perror("listen");
    exit(1);
  }
  *port = ntohs(a.sin_port);
  return fd;
}

/* A port where nothing listens: bound, then closed. */
static uint16_t refused_port(void) {
  uint16_t port;
  close(listen_any(1, &port));
  return port;
}

/* A listener that never accepts, its queue filled: Linux then drops further
 * SYNs, and a connect hangs as it would towards a black-holed address. */
struct blackhole {
  int lfd, fill[4];
  uint16_t port;
};

static void blackhole_open(struct blackhole *b) {
  b->lfd = listen_any(0, &b->port);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(b->port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < 4; i++) {
    b->fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    connect(b->fill[i], (struct sockaddr *)&a, sizeof(a));
  }
  usleep(50 * 1000); /* let the fillers' handshakes complete */
}

static void blackhole_close(struct blackhole *b) {
  for (int i = 0; i < 4; i++) close(b->fill[i]);
  close(b->lfd);
}

/* ---- a scenario ----------------------------------------------------------- */

static void on_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  struct probe *p = user;
  switch (ev->type) {
    case SLUICE_EV_CONNECTED: p->connected++; break;
    case SLUICE_EV_RECONNECTING: p->reconnecting++; break;
    case SLUICE_EV_CLOSED: p->closed++; break;
    case SLUICE_EV_STOPPED:
      p->stopped = 1;
      p->stopped_us = now_us();
      event_base_loopbreak(p->base);
      break;
    default: break;
  }
}

static int handler(sluice_delivery *d, const sluice_message *m, void *u) {
  return SLUICE_ACK;
}

/* Cut the working connection every 700 ms: the consumer walks the list
 * again, the dead node first. From a thread of the bench's own, since a
 * tproxy command waits for the proxy's thread. */
struct cutter {
  tproxy *p;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int quit;
  pthread_t th;
};

static void *cut_loop(void *arg) {
  struct cutter *k = arg;
  pthread_mutex_lock(&k->mu);
  while (!k->quit) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 700 * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    if (pthread_cond_timedwait(&k->cv, &k->mu, &ts) == 0 || k->quit) continue;
    pthread_mutex_unlock(&k->mu);
    tproxy_cut(k->p);
    pthread_mutex_lock(&k->mu);
  }
  pthread_mutex_unlock(&k->mu);
  return NULL;
}

static void on_end(evutil_socket_t fd, short what, void *arg) {
  struct probe *p = arg;
  p->stop_at_us = now_us();
  sluice_consumer_stop(p->c);
}

static void quiet(int level, const char *msg, void *user) {}

static void scenario(const char *name, const char *dead_uri, int seconds,
                     int connect_timeout_ms, tproxy *work) {
  struct probe p;
  memset(&p, 0, sizeof(p));
  p.late = malloc(sizeof(uint64_t) * MAXS);
  p.base = precise_base();
  p.tick = evtimer_new(p.base, on_tick, &p);
  p.end = evtimer_new(p.base, on_end, &p);
  char work_uri[128];
  const char *uris[2];
  size_t n = 0;
  if (dead_uri) uris[n++] = dead_uri;
  if (work) uris[n++] = tproxy_uri(work, work_uri, sizeof(work_uri));
  sluice_consumer_opts o = {
      .uris = uris,
      .n_uris = n,
      .connect_timeout_ms = connect_timeout_ms,
      .stop_timeout_ms = 2000,
      .on_event = on_event,
      .event_user = &p,
      .log = quiet,
      .tls = {.skip_verify_peer = 1},
      .reconnect = {.enabled = 1,
                    .min_delay_ms = 10,
                    .max_delay_ms = 50,
                    .max_attempts = UINT32_MAX},
  };
  if (sluice_consumer_new(&o, &p.c)) exit(1);
  sluice_queue_decl q = {.name = "sluice.bench.lateness", .auto_delete = 1};
  if (sluice_consumer_declare_queue(p.c, &q)) exit(1);
  sluice_subscribe_opts so = {.queue = q.name, .handler = handler};
  if (sluice_consumer_subscribe(p.c, &so)) exit(1);
  struct cutter k = {.p = work};
  pthread_mutex_init(&k.mu, NULL);
  pthread_cond_init(&k.cv, NULL);
  if (work) pthread_create(&k.th, NULL, cut_loop, &k);
  arm_tick(&p);
  struct timeval end = {seconds, 0};
  evtimer_add(p.end, &end);
  uint64_t t0 = now_us();
  int rc = sluice_consumer_start(p.c, p.base);
  double start_ms = (now_us() - t0) / 1000.0;
  if (rc) {
    printf("%-10s start: %s\n", name, sluice_err_name(rc));
    exit(1);
  }
  event_base_dispatch(p.base);
  if (work) {
    pthread_mutex_lock(&k.mu);
    k.quit = 1;
    pthread_cond_signal(&k.cv);
    pthread_mutex_unlock(&k.mu);
    pthread_join(k.th, NULL);
  }
  pthread_mutex_destroy(&k.mu);
  pthread_cond_destroy(&k.cv);
  char extra[160];
  snprintf(extra, sizeof(extra),
           "connected %u, reconnecting %u; stop -> STOPPED %.1f ms",
           p.connected, p.reconnecting,
           p.stopped ? (p.stopped_us - p.stop_at_us) / 1000.0 : -1.0);
  report(name, &p, start_ms, extra);
  sluice_consumer_free(p.c);
  event_free(p.tick);
  event_free(p.end);
  event_base_free(p.base);
  free(p.late);
}

/* The reference: the timer alone on its own base, same duration. */
static void on_ref_end(evutil_socket_t fd, short what, void *arg) {
  event_base_loopbreak(arg);
}

static void reference(int seconds) {
  struct probe p;
  memset(&p, 0, sizeof(p));
  p.late = malloc(sizeof(uint64_t) * MAXS);
  p.base = precise_base();
  p.tick = evtimer_new(p.base, on_tick, &p);
  p.end = evtimer_new(p.base, on_ref_end, p.base);
  arm_tick(&p);
  struct timeval end = {seconds, 0};
  evtimer_add(p.end, &end);
  event_base_dispatch(p.base);
  report("reference", &p, 0, "the timer alone");
  event_free(p.tick);
  event_free(p.end);
  event_base_free(p.base);
  free(p.late);
}

int main(int argc, char **argv) {
  int seconds = argc > 1 ? atoi(argv[1]) : 5;
  int cto = argc > 2 ? atoi(argv[2]) : 1000;
  if (seconds < 1 || cto < 10) return 2;
  tproxy *work, *hung;
  if (tproxy_start(BROKER_PORT, &work) || tproxy_start(BROKER_PORT, &hung)) {
    fprintf(stderr, "proxy\n");
    return 1;
  }
  tproxy_hold_new(hung, 1);
  printf("# a 1 ms timer on the consumer's event_base, %d s per scenario, "
         "connect_timeout_ms %d; lateness in ms\n",
         seconds, cto);
  printf("%-10s %8s %10s %10s %10s %10s\n", "scenario", "ticks", "median",
         "p99", "worst", "start()");
  reference(seconds);
  char uri[128];
  snprintf(uri, sizeof(uri), "amqp://guest:guest@127.0.0.1:%u/",
           refused_port());
  scenario("refused", uri, seconds, cto, work);
  struct blackhole b;
  blackhole_open(&b);
  snprintf(uri, sizeof(uri), "amqp://guest:guest@127.0.0.1:%u/", b.port);
  scenario("blackhole", uri, seconds, cto, work);
  blackhole_close(&b);
  scenario("hung", tproxy_uri(hung, uri, sizeof(uri)), seconds, cto, work);
  snprintf(uri, sizeof(uri), "amqps://guest:guest@localhost:%u/",
           tproxy_port(hung));
  scenario("tls-hung", uri, seconds, cto, work);
  tproxy_free(hung);
  tproxy_free(work);
  return 0;
}
