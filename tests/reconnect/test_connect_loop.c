/* SPDX-License-Identifier: MIT */
/* The caller's event loop while sluice connects: an attempt (TCP connect,
 * TLS handshake, AMQP login) never holds it, a stop() during an attempt
 * ends the run without waiting for it, and after SLUICE_EV_STOPPED nothing
 * of sluice's is left on the event_base, so event_base_dispatch() returns by
 * itself. Each consumer is attached with sluice_consumer_start() to an
 * event_base of the test's, as an application would. No timing is
 * asserted: what is checked is the order of things (an event of the test
 * runs while the attempt is stuck; STOPPED comes without any failed attempt
 * before it) and the figures are printed. Every run is bounded by a
 * watchdog thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "broker_util.h"
#include "proxy.h"

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- a consumer on the test's own event_base ------------------------------ */

typedef struct loop_run {
  struct event_base *base;
  sluice_consumer *c;
  struct event *tick;
  int hung_fd;         /* a listener that accepts and never answers */
  int peer_fd;         /* its side of the attempt's connection */
  unsigned events[16]; /* loop thread only */
  int stop_err;
  unsigned ticks_during_attempt;
  uint64_t stop_ms, stopped_ms;
  int stop_on_connected; /* stop() at CONNECTED instead */
  /* watchdog */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, fired;
  pthread_t wd;
} loop_run;

static void on_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  loop_run *r = user;
  if (ev->type < 16) r->events[ev->type]++;
  if (ev->type == SLUICE_EV_CONNECTED && r->stop_on_connected) {
    r->stop_ms = now_ms();
    sluice_consumer_stop(c);
  }
  if (ev->type == SLUICE_EV_STOPPED) {
    r->stop_err = ev->err;
    r->stopped_ms = now_ms();
  }
}

static int handler(sluice_delivery *d, const sluice_message *m, void *u) {
  return SLUICE_ACK;
}

/* Every 5 ms while the attempt is stuck: once the dead node has accepted
 * (or, for a black hole, at once), this event of the test runs while
 * sluice is in its attempt, which has not reported anything yet. */
static void on_tick(evutil_socket_t fd, short what, void *arg) {
  loop_run *r = arg;
  if (r->hung_fd >= 0) {
    if (r->peer_fd < 0)
      r->peer_fd = accept4(r->hung_fd, NULL, NULL, SOCK_NONBLOCK);
    if (r->peer_fd < 0) return; /* the attempt is not there yet */
  }
  if (r->events[SLUICE_EV_RECONNECTING] == 0 &&
      r->events[SLUICE_EV_CONNECTED] == 0 && r->events[SLUICE_EV_STOPPED] == 0)
    r->ticks_during_attempt++;
  event_del(r->tick); /* the test's own event is done */
  r->stop_ms = now_ms();
  sluice_consumer_stop(r->c);
}

static void *watchdog(void *arg) {
  loop_run *r = arg;
  pthread_mutex_lock(&r->mu);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 30;
  while (!r->done)
    if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != 0) break;
  if (!r->done) {
    r->fired = 1;
    event_base_loopbreak(r->base);
  }
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

static loop_run *run_new(void) {
  loop_run *r = calloc(1, sizeof(*r));
  r->hung_fd = r->peer_fd = -1;
  r->base = event_base_new();
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  return r;
}

static void quiet(int level, const char *msg, void *user) {}

static sluice_consumer_opts opts_for(loop_run *r, const char *uri) {
  sluice_consumer_opts o = {.uri = uri,
                            .on_event = on_event,
                            .event_user = r,
                            .log = quiet,
                            .connect_timeout_ms = 20000,
                            .stop_timeout_ms = 2000,
                            .reconnect = {.enabled = 1}};
  return o;
}

/* Dispatch `r`'s base until it runs out of events (bounded by the
 * watchdog): a return that needs no loopbreak is the point. */
static void dispatch_until_idle(loop_run *r) {
  pthread_create(&r->wd, NULL, watchdog, r);
  int rc = event_base_dispatch(r->base);
  pthread_mutex_lock(&r->mu);
  r->done = 1;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
  pthread_join(r->wd, NULL);
  assert_false(r->fired);  /* returned by itself, not broken out of */
  assert_int_equal(rc, 1); /* 1: no events were left */
  assert_int_equal(event_base_get_num_events(r->base,
                                             EVENT_BASE_COUNT_ADDED |
                                                 EVENT_BASE_COUNT_ACTIVE),
                   0);
  assert_int_equal(r->events[SLUICE_EV_STOPPED], 1);
  assert_true(sluice_consumer_stopped(r->c));
}

/* Start `r` on its base and dispatch until the base runs out of events. */
static void run_until_idle(loop_run *r, sluice_consumer_opts *o, int tick) {
  assert_int_equal(sluice_consumer_new(o, &r->c), 0);
  sluice_queue_decl q = {.name = tb_qname("loop"), .auto_delete = 1};
  assert_int_equal(sluice_consumer_declare_queue(r->c, &q), 0);
  sluice_subscribe_opts so = {.queue = q.name, .handler = handler};
  assert_int_equal(sluice_consumer_subscribe(r->c, &so), 0);
  if (tick) {
    r->tick = event_new(r->base, -1, EV_PERSIST, on_tick, r);
    struct timeval tv = {0, 5000};
    event_add(r->tick, &tv);
  }
  assert_int_equal(sluice_consumer_start(r->c, r->base), 0);
  dispatch_until_idle(r);
}

/* A node that accepts TCP and never answers: a listener nobody serves,
 * its connection accepted by the test's tick. */
static uint16_t hung_open(loop_run *r) {
  r->hung_fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t l = sizeof(a);
  assert_int_equal(bind(r->hung_fd, (struct sockaddr *)&a, sizeof(a)), 0);
  assert_int_equal(listen(r->hung_fd, 8), 0);
  assert_int_equal(getsockname(r->hung_fd, (struct sockaddr *)&a, &l), 0);
  return ntohs(a.sin_port);
}

/* The cancel interrupted the attempt's wait on the hung node: its end of
 * the connection closes, long before connect_timeout_ms (20 s) could have
 * ended the attempt. Waited for (poll) up to half that. */
static void hung_connection_closed(loop_run *r) {
  struct pollfd p = {r->peer_fd, POLLIN, 0};
  char buf[512];
  ssize_t n = 1;
  while (n > 0 && poll(&p, 1, 10000) == 1)
    n = recv(r->peer_fd, buf, sizeof(buf), 0); /* the header, a hello */
  printf("    the attempt's connection closed %llu ms after stop()\n",
         (unsigned long long)(now_ms() - r->stop_ms));
  assert_true(n <= 0);
  close(r->peer_fd);
  close(r->hung_fd);
}

static void run_free(loop_run *r) {
  uint64_t t0 = now_ms();
  sluice_consumer_free(r->c);
  printf("    free() took %llu ms\n", (unsigned long long)(now_ms() - t0));
  if (r->tick) event_free(r->tick);
  event_base_free(r->base);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  free(r);
}

/* ---- the tests -------------------------------------------------------------- */

/* A node that accepts TCP and never answers, first in the list, with a
 * 20 s connect timeout: the test's timer runs during the attempt, and its
 * stop() ends the run at once (no failed attempt before STOPPED). */
static void hung_node_does_not_hold_the_loop(void **state) {
  char uri[128];
  loop_run *r = run_new();
  snprintf(uri, sizeof(uri), "amqp://guest:guest@127.0.0.1:%u/", hung_open(r));
  sluice_consumer_opts o = opts_for(r, uri);
  run_until_idle(r, &o, 1);
  printf("    AMQP handshake to a hung node: stop() -> STOPPED %llu ms "
         "(connect_timeout_ms 20000)\n",
         (unsigned long long)(r->stopped_ms - r->stop_ms));
  assert_int_equal(r->ticks_during_attempt, 1);
  assert_int_equal(r->events[SLUICE_EV_RECONNECTING], 0);
  assert_int_equal(r->events[SLUICE_EV_CONNECTED], 0);
  assert_int_equal(r->stop_err, 0);
  hung_connection_closed(r);
  run_free(r);
}

/* The same with amqps://: the TLS handshake never gets an answer. */
static void hung_tls_handshake_does_not_hold_the_loop(void **state) {
  char uri[128];
  loop_run *r = run_new();
  snprintf(uri, sizeof(uri), "amqps://guest:guest@localhost:%u/", hung_open(r));
  sluice_consumer_opts o = opts_for(r, uri);
  run_until_idle(r, &o, 1);
  printf("    TLS handshake to a hung node: stop() -> STOPPED %llu ms\n",
         (unsigned long long)(r->stopped_ms - r->stop_ms));
  assert_int_equal(r->ticks_during_attempt, 1);
  assert_int_equal(r->events[SLUICE_EV_RECONNECTING], 0);
  assert_int_equal(r->stop_err, 0);
  hung_connection_closed(r);
  run_free(r);
}

/* A listener whose accept queue is full: Linux drops further SYNs, so a
 * TCP connect to it hangs as towards a black-holed address. */
struct blackhole {
  int lfd, fill[4];
  uint16_t port;
};

static void blackhole_open(struct blackhole *b) {
  b->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t l = sizeof(a);
  assert_int_equal(bind(b->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
  assert_int_equal(listen(b->lfd, 0), 0);
  assert_int_equal(getsockname(b->lfd, (struct sockaddr *)&a, &l), 0);
  b->port = ntohs(a.sin_port);
  for (int i = 0; i < 4; i++) {
    b->fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    connect(b->fill[i], (struct sockaddr *)&a, sizeof(a));
  }
}

static void blackhole_close(struct blackhole *b) {
  for (int i = 0; i < 4; i++) close(b->fill[i]);
  close(b->lfd);
}

/* TCP connects that hang, plain (sluice's own connect, which the stop
 * interrupts) and TLS (rabbitmq-c's, which nothing interrupts: free()
 * leaves that attempt to end on its own, within connect_timeout_ms). */
static void black_hole_does_not_hold_the_loop(void **state) {
  struct blackhole b;
  blackhole_open(&b);
  for (int tls = 0; tls < 2; tls++) {
    char uri[128];
    snprintf(uri, sizeof(uri), "%s://guest:guest@127.0.0.1:%u/",
             tls ? "amqps" : "amqp", b.port);
    loop_run *r = run_new();
    sluice_consumer_opts o = opts_for(r, uri);
    o.connect_timeout_ms = 1500; /* bounds the TLS attempt left behind */
    run_until_idle(r, &o, 1);
    printf("    %s connect to a black hole: stop() -> STOPPED %llu ms\n",
           tls ? "TLS" : "TCP",
           (unsigned long long)(r->stopped_ms - r->stop_ms));
    assert_int_equal(r->ticks_during_attempt, 1);
    assert_int_equal(r->events[SLUICE_EV_RECONNECTING], 0);
    assert_int_equal(r->stop_err, 0);
    run_free(r);
  }
  blackhole_close(&b);
}

/* After a normal run, nothing of sluice's is left on the caller's base:
 * event_base_dispatch() returns by itself after SLUICE_EV_STOPPED. */
static void dispatch_returns_after_stopped(void **state) {
  loop_run *r = run_new();
  r->stop_on_connected = 1;
  sluice_consumer_opts o = opts_for(r, TEST_URI);
  run_until_idle(r, &o, 0);
  assert_int_equal(r->events[SLUICE_EV_CONNECTED], 1);
  assert_int_equal(r->stop_err, 0);
  /* A late stop() (from another thread, a signal) is harmless. */
  sluice_consumer_stop(r->c);
  run_free(r);
}

/* sluice_consumer_connect() first (documented as blocking), then start():
 * the run is the caller's loop's, and ends the same way. */
static void connect_then_start(void **state) {
  loop_run *r = run_new();
  r->stop_on_connected = 1;
  sluice_consumer_opts o = opts_for(r, TEST_URI);
  assert_int_equal(sluice_consumer_new(&o, &r->c), 0);
  assert_int_equal(sluice_consumer_connect(r->c), 0);
  assert_int_equal(sluice_consumer_start(r->c, r->base), 0);
  dispatch_until_idle(r);
  assert_int_equal(r->events[SLUICE_EV_CONNECTED], 1);
  run_free(r);
}

/* A refused first connection with reconnect off: start() returns at once,
 * and the failure comes as SLUICE_EV_STOPPED with its code and text. */
static void refused_start_reports_stopped(void **state) {
  tproxy *p = NULL;
  assert_int_equal(tproxy_start(5672, &p), 0);
  assert_int_equal(tproxy_refuse(p, 1), 0);
  char uri[128];
  loop_run *r = run_new();
  sluice_consumer_opts o = opts_for(r, tproxy_uri(p, uri, sizeof(uri)));
  o.reconnect.enabled = 0;
  run_until_idle(r, &o, 0);
  assert_int_equal(r->stop_err, SLUICE_ECONNECT);
  assert_int_equal(r->events[SLUICE_EV_CONNECTED], 0);
  run_free(r);
  tproxy_free(p);
}

int main(void) {
  tb_require_broker("test_connect_loop");
  /* So that the watchdog's event_base_loopbreak() from its own thread
   * wakes a loop that would otherwise never return. */
  evthread_use_pthreads();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(black_hole_does_not_hold_the_loop),
      cmocka_unit_test(hung_node_does_not_hold_the_loop),
      cmocka_unit_test(hung_tls_handshake_does_not_hold_the_loop),
      cmocka_unit_test(dispatch_returns_after_stopped),
      cmocka_unit_test(connect_then_start),
      cmocka_unit_test(refused_start_reports_stopped),
  };
  if (getenv("SLUICE_TEST_FILTER"))
    cmocka_set_test_filter(getenv("SLUICE_TEST_FILTER"));
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  /* The TLS attempt left behind by a free() ends on its own (the black
   * hole is closed, connect_timeout_ms 1.5 s) and frees all it held: wait
   * for it, or the leak checkers (ASan, valgrind) see it at exit. */
  int rc = sluice_consumer_wait_detached(10000);
  if (rc) fprintf(stderr, "wait_detached: %s\n", sluice_strerror(rc));
  return failed || rc ? 1 : 0;
}
