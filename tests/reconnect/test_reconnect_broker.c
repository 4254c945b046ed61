/* SPDX-License-Identifier: MIT */
/* Reconnect against the real broker, with faults injected by a loopback
 * proxy (tests/common/proxy.c) or by rabbitmqctl on this test's own
 * connection only. Every test is bounded by a watchdog; no test asserts a
 * timing (the figures are printed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <cmocka.h>

#include "common/broker_util.h"
#include "proxy.h"
#include "rc_util.h"

static tproxy *proxy_new(uint16_t upstream) {
  tproxy *p = NULL;
  assert_int_equal(tproxy_start(upstream, &p), 0);
  return p;
}

static const char *fresh_filled(const char *prefix, unsigned n) {
  const char *q = tb_qname(prefix);
  sluice_queue_decl d = {.name = q, .durable = 1};
  tb_fresh_queue(&d);
  tb_fill(q, n, 64);
  return q;
}

/* ---- cut through the proxy ---------------------------------------------- */

static int fault_cut(rc_stream *s, unsigned k) {
  return tproxy_cut(s->fault_user) >= 1 ? 0 : -1;
}

static void proxy_cuts(void **state) {
  tproxy *p = proxy_new(5672);
  unsigned n = 5000;
  const char *q = fresh_filled("cut", n);
  rc_stream *s = rc_stream_new(q, n);
  s->fault = fault_cut;
  s->fault_user = p;
  s->n_faults = 4;
  s->gate_during_fault = 1; /* handlers finish after the cut: stale */
  char uri[128];
  sluice_consumer_opts o = {
      .uri = tproxy_uri(p, uri, sizeof(uri)),
      .workers = 4,
      .prefetch = 100,
      .reconnect = {.enabled = 1, .min_delay_ms = 10, .max_delay_ms = 100},
  };
  rc_stream_consumer(s, &o);
  int to = 0;
  assert_int_equal(rc_stream_run(s, 60, &to), 0);
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  assert_int_equal(st.reconnects, 4);
  assert_true(st.stale > 0); /* the held handlers' completions */
  /* EOF, or a reset when the proxy closed with bytes unread */
  int err = atomic_load(&s->last_closed_err);
  assert_true(err == SLUICE_ECLOSED || err == SLUICE_ESOCKET);
  assert_int_equal(tproxy_accepted(p), 5);
  rc_stream_check(s);
  rc_stream_free(s);
  tproxy_free(p);
  tb_delete_queue(q);
}


/* ---- autoAck: what sluice received is handled, even across a cut ------- */

static int fault_reset(rc_stream *s, unsigned k) {
  return tproxy_reset(s->fault_user) >= 1 ? 0 : -1;
}

static void auto_mode_keeps_what_it_received(void **state) {
  tproxy *p = proxy_new(5672);
  unsigned n = 3000;
  const char *q = fresh_filled("auto", n);
  rc_stream *s = rc_stream_new(q, n);
  /* A reset: seen even while reading is paused by the full buffer. (After
   * a FIN autoAck first reads what is left, which needs the handlers the
   * gate holds until the close is seen.) */
  s->fault = fault_reset;
  s->fault_user = p;
  /* one cut: autoAck loses what is in transit at a cut (up to the proxy's
   * and the kernel's buffers), so a later checkpoint may never come */
  s->n_faults = 1;
  s->gate_during_fault = 1; /* the buffer is full when the cut comes */
  s->stop_when_drained = 1;
  char uri[128];
  sluice_consumer_opts o = {
      .uri = tproxy_uri(p, uri, sizeof(uri)),
      .ack_mode = SLUICE_ACK_AUTO,
      .workers = 2,
      .max_inflight = 64,
      .heartbeat_s = 1, /* the paused loop looks at the socket every 0.5 s */
      .reconnect = {.enabled = 1, .min_delay_ms = 10, .max_delay_ms = 50},
  };
  rc_stream_consumer(s, &o);
  int to = 0;
  assert_int_equal(rc_stream_run(s, 60, &to), 0);
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  unsigned calls = atomic_load(&s->tally.calls);
  printf("  autoAck: %llu delivered to sluice, %u handled, %u of %u lost "
         "in transit at the cuts (the broker settled them on sending)\n",
         (unsigned long long)st.delivered, calls,
         n - atomic_load(&s->tally.distinct), n);
  assert_false(s->chaos_failed);
  assert_int_equal(st.reconnects, 1);
  /* every delivery that reached sluice was handled: none dropped because
   * its connection died (the broker will not send it again) */
  assert_int_equal(st.delivered, calls);
  assert_int_equal(st.stale, 0);
  assert_int_equal(st.acked, calls);
  assert_int_equal(atomic_load(&s->tally.dup_fresh), 0);
  assert_int_equal(atomic_load(&s->tally.bad_body), 0);
  rc_stream_free(s);
  tproxy_free(p);
  tb_delete_queue(q);
}

/* ---- black hole: only heartbeats can tell ------------------------------- */

static int fault_hole(rc_stream *s, unsigned k) {
  return tproxy_blackhole(s->fault_user) >= 1 ? 0 : -1;
}

static void blackhole_detected_by_heartbeats(void **state) {
  tproxy *p = proxy_new(5672);
  unsigned n = 3000;
  const char *q = fresh_filled("hole", n);
  rc_stream *s = rc_stream_new(q, n);
  s->fault = fault_hole;
  s->fault_user = p;
  s->n_faults = 2;
  char uri[128];
  sluice_consumer_opts o = {
      .uri = tproxy_uri(p, uri, sizeof(uri)),
      .heartbeat_s = 1,
      .prefetch = 50,
      .reconnect = {.enabled = 1, .min_delay_ms = 10, .max_delay_ms = 100},
  };
  rc_stream_consumer(s, &o);
  int to = 0;
  assert_int_equal(rc_stream_run(s, 60, &to), 0);
  assert_false(to);
  assert_int_equal(atomic_load(&s->last_closed_err), SLUICE_EHEARTBEAT);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  assert_int_equal(st.reconnects, 2);
  printf("  heartbeat 1 s: black hole detected after %llu and %llu ms\n",
         (unsigned long long)(s->closed_ms[0] - s->fault_ms[0]),
         (unsigned long long)(s->closed_ms[1] - s->fault_ms[1]));
  rc_stream_check(s);
  rc_stream_free(s);
  tproxy_free(p);
  tb_delete_queue(q);
}


/* ---- faults while reading is paused by the in-flight bound -------------- */

#define PAUSED_N 10

enum paused_fault { PF_HOLE, PF_CUT, PF_RESET };

struct paused {
  tproxy *p;
  sluice_consumer *c;
  enum paused_fault fault;
  sluice_delivery *held[PAUSED_N];
  int n_held;
  unsigned closed, stale_rc, redelivered_acks;
  int closed_err;
  uint64_t fault_ms, closed_ms;
};

static int paused_handler(sluice_delivery *d, const sluice_message *m,
                          void *user) {
  struct paused *x = user;
  if (!m->redelivered && x->n_held < PAUSED_N) {
    x->held[x->n_held++] = d;
    if (x->n_held == PAUSED_N) {
      /* the bound is reached and reading stops: then the fault */
      x->fault_ms = rc_now_ms();
      if (x->fault == PF_HOLE) tproxy_blackhole(x->p);
      if (x->fault == PF_CUT) tproxy_cut(x->p);
      if (x->fault == PF_RESET) tproxy_reset(x->p);
    }
    return SLUICE_DEFER;
  }
  if (++x->redelivered_acks == PAUSED_N) sluice_consumer_stop(x->c);
  return SLUICE_ACK;
}

static void paused_event(sluice_consumer *c, const sluice_event *ev,
                         void *user) {
  struct paused *x = user;
  if (ev->type != SLUICE_EV_CLOSED) return;
  x->closed++;
  x->closed_err = ev->err;
  x->closed_ms = rc_now_ms();
  for (int i = 0; i < x->n_held; i++)
    if (sluice_delivery_done(x->held[i], SLUICE_ACK) == SLUICE_ESTALE)
      x->stale_rc++;
  x->n_held = 0;
}

static void fault_while_paused(enum paused_fault fault, int want_err) {
  static const char *const names[] = {"black hole", "cut (FIN)", "reset (RST)"};
  tproxy *p = proxy_new(5672);
  const char *q = fresh_filled("paused", PAUSED_N);
  struct paused x = {.p = p, .fault = fault};
  char uri[128];
  sluice_consumer_opts o = {
      .uri = tproxy_uri(p, uri, sizeof(uri)),
      .heartbeat_s = 1,
      .prefetch = 50,
      .max_inflight = PAUSED_N,
      .on_event = paused_event,
      .event_user = &x,
      .log_level = SLUICE_LOG_ERROR,
      .reconnect = {.enabled = 1, .min_delay_ms = 10, .max_delay_ms = 50},
  };
  assert_int_equal(sluice_consumer_new(&o, &x.c), 0);
  sluice_subscribe_opts so = {.queue = q,
                              .handler = paused_handler,
                              .user = &x};
  assert_int_equal(sluice_consumer_subscribe(x.c, &so), 0);
  int to = 0;
  assert_int_equal(tb_run_bounded(x.c, 30, &to), 0);
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(x.c, &st);
  printf("  paused by the bound (%llu pauses), heartbeat 1 s: %s seen "
         "after %llu ms (%s)\n",
         (unsigned long long)st.read_pauses, names[fault],
         (unsigned long long)(x.closed_ms - x.fault_ms),
         sluice_err_name(x.closed_err));
  assert_true(st.read_pauses >= 1);
  assert_int_equal(x.closed, 1);
  assert_int_equal(x.closed_err, want_err);
  assert_int_equal(x.stale_rc, PAUSED_N);
  assert_int_equal(x.redelivered_acks, PAUSED_N);
  assert_int_equal(st.acked, PAUSED_N);
  sluice_consumer_free(x.c);
  assert_int_equal(tb_depth_eventually(q, 0, 5000), 0);
  tproxy_free(p);
  tb_delete_queue(q);
}

/* Black hole: only the two-interval rule can tell. A close or a reset is
 * seen by the heartbeat timer looking at the socket, without waiting for
 * the deferred deliveries to free the bound. */
static void faults_while_paused(void **state) {
  fault_while_paused(PF_HOLE, SLUICE_EHEARTBEAT);
  fault_while_paused(PF_CUT, SLUICE_ECLOSED);
  fault_while_paused(PF_RESET, SLUICE_ESOCKET);
}

/* ---- the broker closes our connection (rabbitmqctl) --------------------- */

static int fault_close_named(rc_stream *s, unsigned k) {
  return rc_close_named_connection(s->conn_name) >= 1 ? 0 : -1;
}

static void broker_closes_connection_20k(void **state) {
  unsigned n = 20000;
  const char *q = fresh_filled("close", n);
  rc_stream *s = rc_stream_new(q, n);
  s->fault = fault_close_named;
  s->n_faults = 4;
  s->gate_during_fault = 1;
  char name[128];
  snprintf(name, sizeof(name), "sluice.test.reconnect.%ld", (long)getpid());
  sluice_consumer_opts o = {
      .uri = TEST_URI,
      .connection_name = name,
      .ack_mode = SLUICE_ACK_MANUAL,
      .workers = 4,
      .prefetch = 200,
      .reconnect = {.enabled = 1, .min_delay_ms = 20, .max_delay_ms = 200},
  };
  rc_stream_consumer(s, &o);
  int to = 0;
  assert_int_equal(rc_stream_run(s, 120, &to), 0);
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  assert_int_equal(st.reconnects, 4);
  assert_true(st.stale > 0);
  char text[256];
  /* 320 CONNECTION_FORCED, kept with its text */
  assert_int_equal(sluice_consumer_last_close(s->c, text, sizeof(text)), 320);
  printf("  last broker close: 320 %s\n", text);
  rc_stream_check(s);
  rc_stream_free(s);
  tb_delete_queue(q);
}

/* ---- a deferred delivery completed after the reconnect ------------------ */

struct defer_ctx {
  sluice_consumer *c;
  tproxy *p;
  sluice_delivery *held[2];
  int n_held;
  int rc_in_closed;     /* done() inside the CLOSED event */
  _Atomic int rc_after; /* done() from a thread after CONNECTED */
  unsigned connected, closed, closed_406;
  unsigned redelivered_acks;
  pthread_t th;
  int th_started;
};

static int defer_handler(sluice_delivery *d, const sluice_message *m,
                         void *user) {
  struct defer_ctx *x = user;
  if (!m->redelivered) {
    assert_true(x->n_held < 2);
    x->held[x->n_held++] = d;
    if (x->n_held == 2) tproxy_cut(x->p); /* both are deferred: cut */
    return SLUICE_DEFER;
  }
  if (++x->redelivered_acks == 2) sluice_consumer_stop(x->c);
  return SLUICE_ACK;
}

static void *late_done(void *arg) {
  struct defer_ctx *x = arg;
  /* a push reply arriving after the reconnect */
  atomic_store(&x->rc_after, sluice_delivery_done(x->held[1], SLUICE_ACK));
  return NULL;
}

static void defer_event(sluice_consumer *c, const sluice_event *ev,
                        void *user) {
  struct defer_ctx *x = user;
  if (ev->type == SLUICE_EV_CLOSED) {
    x->closed++;
    if (ev->reply_code == 406) x->closed_406++;
    /* already stale while disconnected, before any new connection */
    x->rc_in_closed = sluice_delivery_done(x->held[0], SLUICE_ACK);
  }
  if (ev->type == SLUICE_EV_CONNECTED && ++x->connected == 2) {
    pthread_create(&x->th, NULL, late_done, x);
    x->th_started = 1;
  }
}

static void deferred_done_after_reconnect_is_stale(void **state) {
  tproxy *p = proxy_new(5672);
  const char *q = fresh_filled("defer", 2);
  struct defer_ctx x = {.p = p};
  char uri[128];
  sluice_consumer_opts o = {
      .uri = tproxy_uri(p, uri, sizeof(uri)),
      .prefetch = 2,
      .on_event = defer_event,
      .event_user = &x,
      .log_level = SLUICE_LOG_ERROR,
      .reconnect = {.enabled = 1, .min_delay_ms = 10, .max_delay_ms = 50},
  };
  assert_int_equal(sluice_consumer_new(&o, &x.c), 0);
  sluice_subscribe_opts so = {.queue = q, .handler = defer_handler, .user = &x};
  assert_int_equal(sluice_consumer_subscribe(x.c, &so), 0);
  int to = 0;
  assert_int_equal(tb_run_bounded(x.c, 30, &to), 0);
  assert_false(to);
  if (x.th_started) pthread_join(x.th, NULL);
  assert_int_equal(x.rc_in_closed, SLUICE_ESTALE);
  assert_int_equal(atomic_load(&x.rc_after), SLUICE_ESTALE);
  /* one close (the cut): no PRECONDITION_FAILED from a stale tag */
  assert_int_equal(x.closed, 1);
  assert_int_equal(x.closed_406, 0);
  assert_int_equal(x.redelivered_acks, 2);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(x.c, &st);
  assert_int_equal(st.stale, 2);
  assert_int_equal(st.acked, 2); /* only the redelivered ones */
  assert_int_equal(st.nacked + st.rejected, 0);
  assert_int_equal(sluice_consumer_last_close(x.c, NULL, 0), 0);
  sluice_consumer_free(x.c);
  assert_int_equal(tb_depth_eventually(q, 0, 5000), 0);
  tproxy_free(p);
  tb_delete_queue(q);
}

/* ---- failover across URIs ----------------------------------------------- */

struct attempts {
  unsigned reconnecting, gave_up, listener_gave_up;
  _Atomic unsigned tls_asked; /* logged by the attempt thread */
};

/* Counts the diagnostic connections: a plaintext login reset before any
 * reply makes sluice ask the port whether it speaks TLS (DEBUG line). */
static void count_tls_asked(int level, const char *msg, void *user) {
  struct attempts *a = user;
  if (level == SLUICE_LOG_DEBUG && strstr(msg, "whether it speaks TLS"))
    atomic_fetch_add(&a->tls_asked, 1);
}

struct failover {
  tproxy *a, *b;
};

static int fault_failover(rc_stream *s, unsigned k) {
  struct failover *f = s->fault_user;
  if (k == 1) {
    /* B stops accepting and A comes back: the next attempt moves on */
    if (tproxy_refuse(f->a, 0) != 0 || tproxy_refuse(f->b, 1) != 0) return -1;
  }
  return tproxy_cut(f->b) >= 1 ? 0 : -1;
}

static void failover_across_uris(void **state) {
  /* C accepts, then closes at once (a load balancer with no backend);
   * A refuses (nothing listens); B forwards to the broker. */
  tproxy *c = proxy_new(1);
  struct failover f = {proxy_new(5672), proxy_new(5672)};
  assert_int_equal(tproxy_refuse(f.a, 1), 0);
  char ua[128], ub[128], uc[128];
  const char *uris[] = {tproxy_uri(c, uc, sizeof(uc)),
                        tproxy_uri(f.a, ua, sizeof(ua)),
                        tproxy_uri(f.b, ub, sizeof(ub))};
  unsigned n = 3000;
  const char *q = fresh_filled("failover", n);
  rc_stream *s = rc_stream_new(q, n);
  s->fault = fault_failover;
  s->fault_user = &f;
  s->n_faults = 2;
  /* C's close of a login it has not read reads as a reset, not a FIN:
   * then the port is asked once whether it speaks TLS (one more
   * connection to C, counted from the log). */
  struct attempts at = {0};
  sluice_consumer_opts o = {
      .uris = uris,
      .n_uris = 3,
      .prefetch = 100,
      .log = count_tls_asked,
      .log_user = &at,
      .log_level = SLUICE_LOG_DEBUG,
      .reconnect = {.enabled = 1, .min_delay_ms = 10, .max_delay_ms = 50},
  };
  rc_stream_consumer(s, &o);
  int to = 0;
  assert_int_equal(rc_stream_run(s, 60, &to), 0);
  assert_false(to);
  unsigned asked = atomic_load(&at.tls_asked);
  printf("  connections accepted: C (no backend) %u (%u of them asking "
         "about TLS), A %u, B %u\n",
         tproxy_accepted(c), asked, tproxy_accepted(f.a), tproxy_accepted(f.b));
  /* start: C fails, A refuses, B; cut 1: B again (it stays on the node
   * that worked); cut 2: B refuses, C fails, A */
  assert_in_range(asked, 0, 1);
  assert_int_equal(tproxy_accepted(c), 2 + asked);
  assert_int_equal(tproxy_accepted(f.a), 1);
  assert_int_equal(tproxy_accepted(f.b), 2);
  rc_stream_check(s);
  rc_stream_free(s);
  tproxy_free(c);
  tproxy_free(f.a);
  tproxy_free(f.b);
  tb_delete_queue(q);
}


/* A node that completes the TCP handshake and then never answers: the
 * attempt is bounded by connect_timeout_ms, and the next node is tried. */
static void failover_past_a_hung_node(void **state) {
  tproxy *hung = proxy_new(5672), *b = proxy_new(5672);
  tproxy_hold_new(hung, 1);
  char uh[128], ub[128];
  const char *uris[] = {tproxy_uri(hung, uh, sizeof(uh)),
                        tproxy_uri(b, ub, sizeof(ub))};
  unsigned n = 500;
  const char *q = fresh_filled("hung", n);
  rc_stream *s = rc_stream_new(q, n);
  sluice_consumer_opts o = {
      .uris = uris,
      .n_uris = 2,
      .connect_timeout_ms = 300,
      .log_level = -1,
      .reconnect = {.enabled = 1, .min_delay_ms = 10, .max_delay_ms = 50},
  };
  rc_stream_consumer(s, &o);
  int to = 0;
  uint64_t t0 = rc_now_ms();
  assert_int_equal(rc_stream_run(s, 30, &to), 0);
  assert_false(to);
  printf("  hung node skipped (connect_timeout_ms 300): stream of %u done "
         "in %llu ms\n",
         n, (unsigned long long)(rc_now_ms() - t0));
  assert_int_equal(tproxy_accepted(hung), 1);
  assert_int_equal(tproxy_accepted(b), 1);
  rc_stream_check(s);
  rc_stream_free(s);
  tproxy_free(hung);
  tproxy_free(b);
  tb_delete_queue(q);
}

/* ---- errors that retrying cannot fix, and ones it can ------------------- */

static void count_attempts(sluice_consumer *c, const sluice_event *ev,
                           void *user) {
  struct attempts *a = user;
  if (ev->type == SLUICE_EV_RECONNECTING) a->reconnecting++;
  if (ev->type == SLUICE_EV_GAVE_UP) a->gave_up++;
}

static void listener_gave_up(sluice_consumer *c, const sluice_event *ev,
                             void *user) {
  struct attempts *a = user;
  if (ev->type == SLUICE_EV_GAVE_UP) a->listener_gave_up++;
}

static void no_retry_storm(void **state) {
  tproxy *p = proxy_new(5672);
  char uri[160];
  snprintf(uri, sizeof(uri), "amqp://guest:wrong@127.0.0.1:%u/",
           (unsigned)tproxy_port(p));
  struct attempts a = {0};
  sluice_consumer_opts o = {
      .uri = uri,
      .on_event = count_attempts,
      .event_user = &a,
      /* Attempts are counted by the connections the proxy accepts, plus
       * the port's TLS diagnosis (counted from the log): when the proxy
       * closes a login whose AMQP header it had not read, the client sees
       * a reset, not a FIN, and asks the port about TLS once. */
      .log = count_tls_asked,
      .log_user = &a,
      .log_level = SLUICE_LOG_DEBUG,
      .reconnect = {.enabled = 1,
                    .min_delay_ms = 1,
                    .max_delay_ms = 5,
                    .max_attempts = UINT32_MAX},
  };
  sluice_consumer *c;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  int to = 0;
  assert_int_equal(tb_run_bounded(c, 20, &to), SLUICE_EAUTH);
  assert_false(to);
  assert_int_equal(tproxy_accepted(p), 1); /* one attempt, no storm */
  assert_int_equal(a.reconnecting, 0);
  sluice_consumer_free(c);

  /* a vhost that does not exist: the same */
  snprintf(uri, sizeof(uri), "amqp://guest:guest@127.0.0.1:%u/nope",
           (unsigned)tproxy_port(p));
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  assert_int_equal(tb_run_bounded(c, 20, &to), SLUICE_EVHOST);
  assert_int_equal(tproxy_accepted(p), 2);
  assert_int_equal(a.reconnecting, 0);
  sluice_consumer_free(c);
  tproxy_free(p);

  /* A socket closed during the handshake without a reply code is not a
   * refusal of credentials: it is retried, up to max_attempts, then the
   * run ends with SLUICE_EGAVEUP and listeners hear SLUICE_EV_GAVE_UP. */
  tproxy *dead = proxy_new(1);
  snprintf(uri, sizeof(uri), "amqp://guest:guest@127.0.0.1:%u/",
           (unsigned)tproxy_port(dead));
  o.reconnect.max_attempts = 3;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  sluice_listener h;
  assert_int_equal(sluice_consumer_on_close(c, listener_gave_up, &a,
                                            SLUICE_LISTEN_PERSISTENT, &h),
                   0);
  assert_int_equal(tb_run_bounded(c, 20, &to), SLUICE_EGAVEUP);
  assert_false(to);
  /* first try + 3 attempts, and at most one TLS diagnosis */
  unsigned asked = atomic_load(&a.tls_asked);
  assert_in_range(asked, 0, 1);
  assert_int_equal(tproxy_accepted(dead), 4 + asked);
  assert_int_equal(a.reconnecting, 3);
  assert_int_equal(a.gave_up, 1);
  assert_int_equal(a.listener_gave_up, 1);
  sluice_consumer_free(c);
  tproxy_free(dead);
}


/* ---- stop() while waiting to reconnect ----------------------------------- */

struct stopper {
  unsigned reconnecting, stopped;
};

static void stop_on_third_attempt(sluice_consumer *c, const sluice_event *ev,
                                  void *user) {
  struct stopper *x = user;
  if (ev->type == SLUICE_EV_RECONNECTING && ++x->reconnecting == 3)
    sluice_consumer_stop(c);
  if (ev->type == SLUICE_EV_STOPPED) x->stopped++;
}

/* A node that resets every login once it has read the AMQP header (as a
 * TLS port answering plaintext would, or a balancer dropping logins): each
 * failure is retried, and the port is asked whether it speaks TLS only
 * once, not once per attempt (that doubled the connections). */
struct resetter {
  int lfd, stop_fd;
  _Atomic unsigned accepted;
  pthread_t th;
};

static void *resetter_main(void *arg) {
  struct resetter *r = arg;
  for (;;) {
    struct pollfd p[2] = {{r->lfd, POLLIN, 0}, {r->stop_fd, POLLIN, 0}};
    if (poll(p, 2, -1) < 0 || p[1].revents) return NULL;
    int fd = accept(r->lfd, NULL, NULL);
    if (fd < 0) continue;
    atomic_fetch_add(&r->accepted, 1);
    char hdr[8];
    size_t got = 0;
    struct pollfd q = {fd, POLLIN, 0};
    while (got < sizeof(hdr) && poll(&q, 1, 5000) == 1) {
      ssize_t n = recv(fd, hdr + got, sizeof(hdr) - got, 0);
      if (n <= 0) break;
      got += (size_t)n;
    }
    struct linger l = {1, 0}; /* close() sends a RST */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    close(fd);
  }
}

static void resetting_node_asked_about_tls_once(void **state) {
  struct resetter r = {.stop_fd = eventfd(0, EFD_CLOEXEC)};
  r.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof(sa);
  assert_int_equal(bind(r.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  assert_int_equal(listen(r.lfd, 16), 0);
  assert_int_equal(getsockname(r.lfd, (struct sockaddr *)&sa, &sl), 0);
  assert_int_equal(pthread_create(&r.th, NULL, resetter_main, &r), 0);

  char uri[160];
  snprintf(uri, sizeof(uri), "amqp://guest:guest@127.0.0.1:%u/",
           (unsigned)ntohs(sa.sin_port));
  struct attempts a = {0};
  sluice_consumer_opts o = {.uri = uri,
                            .on_event = count_attempts,
                            .event_user = &a,
                            .log = count_tls_asked,
                            .log_user = &a,
                            .log_level = SLUICE_LOG_DEBUG,
                            .reconnect = {.enabled = 1,
                                          .min_delay_ms = 1,
                                          .max_delay_ms = 5,
                                          .max_attempts = 5}};
  sluice_consumer *c;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  int to = 0;
  assert_int_equal(tb_run_bounded(c, 20, &to), SLUICE_EGAVEUP);
  assert_false(to);
  sluice_consumer_free(c);
  uint64_t one = 1;
  assert_int_equal(write(r.stop_fd, &one, sizeof(one)), (ssize_t)sizeof(one));
  pthread_join(r.th, NULL);
  close(r.lfd);
  close(r.stop_fd);
  printf("  a node resetting every login: %u attempts, %u TLS diagnosis, "
         "%u connections\n",
         a.reconnecting + 1, atomic_load(&a.tls_asked),
         atomic_load(&r.accepted));
  assert_int_equal(a.reconnecting, 5);
  assert_int_equal(atomic_load(&a.tls_asked), 1);
  /* the first try, 5 attempts, one diagnosis */
  assert_int_equal(atomic_load(&r.accepted), 1 + 5 + 1);
  (void)state;
}

static void stop_while_reconnecting(void **state) {
  tproxy *p = proxy_new(5672);
  assert_int_equal(tproxy_refuse(p, 1), 0);
  struct stopper x = {0};
  char uri[128];
  sluice_consumer_opts o = {
      .uri = tproxy_uri(p, uri, sizeof(uri)),
      .on_event = stop_on_third_attempt,
      .event_user = &x,
      .log_level = -1,
      .reconnect = {.enabled = 1,
                    .min_delay_ms = 20,
                    .max_delay_ms = 50,
                    .max_attempts = UINT32_MAX},
  };
  sluice_consumer *c;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  int to = 0;
  assert_int_equal(tb_run_bounded(c, 20, &to), 0); /* a graceful stop */
  assert_false(to);
  assert_int_equal(x.reconnecting, 3);
  assert_int_equal(x.stopped, 1);
  assert_int_equal(tproxy_accepted(p), 0);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  assert_int_equal(st.reconnects, 0);
  sluice_consumer_free(c);
  tproxy_free(p);
}

/* ---- a refusing node is probed, not waited for -------------------------- */

struct prober {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned probes, reconnecting, connected, attempt;
};

static void probe_log(int level, const char *msg, void *user) {
  struct prober *x = user;
  if (level != SLUICE_LOG_DEBUG || !strstr(msg, "probing again")) return;
  pthread_mutex_lock(&x->mu);
  x->probes++;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
}

static void probe_event(sluice_consumer *c, const sluice_event *ev,
                        void *user) {
  struct prober *x = user;
  pthread_mutex_lock(&x->mu);
  if (ev->type == SLUICE_EV_RECONNECTING) x->reconnecting++;
  if (ev->type == SLUICE_EV_CONNECTED) {
    x->connected++;
    x->attempt = ev->attempt;
    sluice_consumer_stop(c);
  }
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
}

struct runner {
  sluice_consumer *c;
  int rc, to;
};

static void *run_bounded(void *arg) {
  struct runner *r = arg;
  r->rc = tb_run_bounded(r->c, 30, &r->to);
  return NULL;
}

/* The node refuses (its host is up, nothing listens): within the first
 * backoff delay (10 s here) sluice probes it every ~20 ms, silently and
 * without counting attempts, and connects at the first probe after it
 * listens again, still inside that delay. */
static void refused_node_is_probed(void **state) {
  tproxy *p = proxy_new(5672);
  assert_int_equal(tproxy_refuse(p, 1), 0);
  struct prober x = {.probes = 0};
  pthread_mutex_init(&x.mu, NULL);
  pthread_cond_init(&x.cv, NULL);
  char uri[128];
  sluice_consumer_opts o = {
      .uri = tproxy_uri(p, uri, sizeof(uri)),
      .on_event = probe_event,
      .event_user = &x,
      .log = probe_log,
      .log_user = &x,
      .log_level = SLUICE_LOG_DEBUG,
      .reconnect = {.enabled = 1,
                    .min_delay_ms = 10000,
                    .max_delay_ms = 10000,
                    .max_attempts = UINT32_MAX,
                    .refused_probe_ms = 20},
  };
  struct runner r = {0};
  assert_int_equal(sluice_consumer_new(&o, &r.c), 0);
  pthread_t t;
  pthread_create(&t, NULL, run_bounded, &r);
  /* three probes refused, then the node listens again */
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 20;
  pthread_mutex_lock(&x.mu);
  while (x.probes < 3 && !x.connected)
    if (pthread_cond_timedwait(&x.cv, &x.mu, &dl) != 0) break;
  unsigned probes = x.probes;
  pthread_mutex_unlock(&x.mu);
  assert_true(probes >= 3);
  uint64_t t_listen = rc_now_ms();
  assert_int_equal(tproxy_refuse(p, 0), 0);
  pthread_join(t, NULL);
  uint64_t t_done = rc_now_ms();
  printf("  %u probes refused; connected %llu ms after the node listened "
         "again (first backoff delay 10000 ms)\n",
         x.probes, (unsigned long long)(t_done - t_listen));
  assert_int_equal(r.rc, 0);
  assert_false(r.to);
  assert_int_equal(x.connected, 1);
  /* the probes were not attempts: one RECONNECTING, connected on it */
  assert_int_equal(x.reconnecting, 1);
  assert_int_equal(x.attempt, 1);
  assert_int_equal(tproxy_accepted(p), 1);
  sluice_consumer_free(r.c);
  pthread_mutex_destroy(&x.mu);
  pthread_cond_destroy(&x.cv);
  tproxy_free(p);
  (void)state;
}

int main(void) {
  tb_require_broker("test_reconnect_broker");
  setvbuf(stdout, NULL, _IONBF, 0);
  /* SLUICE_TEST_FILTER=auto_mode* runs the matching tests only */
  if (getenv("SLUICE_TEST_FILTER"))
    cmocka_set_test_filter(getenv("SLUICE_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(proxy_cuts),
      cmocka_unit_test(auto_mode_keeps_what_it_received),
      cmocka_unit_test(blackhole_detected_by_heartbeats),
      cmocka_unit_test(faults_while_paused),
      cmocka_unit_test(deferred_done_after_reconnect_is_stale),
      cmocka_unit_test(failover_across_uris),
      cmocka_unit_test(failover_past_a_hung_node),
      cmocka_unit_test(no_retry_storm),
      cmocka_unit_test(resetting_node_asked_about_tls_once),
      cmocka_unit_test(stop_while_reconnecting),
      cmocka_unit_test(refused_node_is_probed),
      cmocka_unit_test(broker_closes_connection_20k),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
