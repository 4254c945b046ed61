/* SPDX-License-Identifier: MIT */
/* Crash and failover proofs on the 3-node test cluster (scripts/cluster.sh):
 *  - a quorum queue's leader node is killed (kill -9) in the middle of a
 *    stream while a publisher with confirms keeps publishing through another
 *    node: every confirmed message is handled, a repeat only ever comes with
 *    the redelivered flag; the node is started again and rejoins;
 *  - a single node (the consumer knows no other) is killed and started
 *    again under a durable classic queue of persistent messages;
 *  - a memory alarm blocks a publishing connection (connection.blocked and
 *    unblocked reach the publisher) while a consumer keeps consuming.
 * Skipped when the cluster is not up, failed when SLUICE_REQUIRE_CLUSTER=1.
 * Every wait is bounded; figures are printed, never asserted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "cl_stream.h"
#include "cluster_util.h"

static const char *qname(const char *prefix) {
  static char buf[8][128];
  static int n;
  char *b = buf[n % 8];
  snprintf(b, sizeof(buf[0]), "sluice.test.%s.%ld.%d", prefix, (long)getpid(),
           n);
  n++;
  return b;
}

static sluice_publisher *publisher(int node, const char *name) {
  sluice_publisher_opts po = {.uri = cl_uri(node),
                              .connection_name = name,
                              .max_outstanding = 2048};
  sluice_publisher *p = NULL;
  assert_int_equal(sluice_publisher_new(&po, &p), 0);
  return p;
}

static void fresh_queue(int node, const sluice_queue_decl *d) {
  sluice_publisher *p = publisher(node, "cluster setup");
  sluice_publisher_delete_queue(p, d->name, NULL);
  assert_int_equal(sluice_publisher_declare_queue(p, d), 0);
  sluice_publisher_free(p);
}

static void delete_queue(int node, const char *q) {
  sluice_publisher *p = publisher(node, "cluster setup");
  sluice_publisher_delete_queue(p, q, NULL);
  sluice_publisher_free(p);
}

/* After the stream: what the broker still holds can only be repeats (acks
 * lost with a connection); consume them and check that. */
static void drain_repeats(cl_stream *s, int node) {
  unsigned distinct = atomic_load(&s->tally.distinct);
  sluice_consumer_free(s->c);
  s->c = NULL;
  uint32_t ready = 0;
  assert_int_equal(cl_wait_no_consumers(cl_uri(node), s->queue, 30, &ready), 0);
  if (ready == 0) return;
  printf("  %u messages came back after the stream: consuming them\n", ready);
  atomic_store(&s->stop_at_distinct, 0);
  atomic_store(&s->stop_at_calls, atomic_load(&s->tally.calls) + ready);
  sluice_consumer_opts o = {.uri = cl_uri(node)};
  assert_non_null(cl_stream_consumer(s, &o));
  cl_stream_start(s);
  int to = 0;
  assert_int_equal(cl_stream_join(s, 30, &to), 0);
  assert_false(to);
  assert_int_equal(atomic_load(&s->tally.distinct), distinct);
  assert_int_equal(atomic_load(&s->tally.dup_fresh), 0);
  sluice_consumer_free(s->c);
  s->c = NULL;
  assert_int_equal(cl_wait_no_consumers(cl_uri(node), s->queue, 30, &ready), 0);
  assert_int_equal(ready, 0);
}

static void print_stream(cl_stream *s, const char *what) {
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  printf("  %s: %u distinct, %u handler calls (%u redelivered, %u repeats "
         "without the flag), %llu reconnects, %llu stale, %u closed / "
         "%u reconnecting / %u connected events\n",
         what, atomic_load(&s->tally.distinct), atomic_load(&s->tally.calls),
         atomic_load(&s->tally.redelivered_calls),
         atomic_load(&s->tally.dup_fresh), (unsigned long long)st.reconnects,
         (unsigned long long)st.stale,
         atomic_load(&s->events[SLUICE_EV_CLOSED]),
         atomic_load(&s->events[SLUICE_EV_RECONNECTING]),
         atomic_load(&s->events[SLUICE_EV_CONNECTED]));
}

/* ---- quorum queue: the leader's node is killed mid-stream ---------------- */

struct pub_run {
  const char *queue;
  int node;
  unsigned n, batch;
  cl_stream *s;
  /* results */
  _Atomic unsigned char confirmed[CL_MAXN];
  unsigned n_confirmed, n_unsure, published;
  int rc;
  uint64_t t_done;
  pthread_t thread;
};

/* Publish ids 0..n-1 in batches, waiting for the confirms of each: a batch
 * whose every message was confirmed is "confirmed"; any other outcome makes
 * its messages "unsure" (the broker may or may not have them). */
static void *publish_main(void *arg) {
  struct pub_run *r = arg;
  sluice_publisher_opts po = {.uri = cl_uri(r->node),
                              .connection_name = "cluster publisher",
                              .max_outstanding = 2048};
  sluice_publisher *p = NULL;
  r->rc = sluice_publisher_new(&po, &p);
  uint64_t confirmed_before = 0;
  for (unsigned first = 0; r->rc == 0 && first < r->n; first += r->batch) {
    unsigned k = r->n - first < r->batch ? r->n - first : r->batch;
    for (unsigned i = 0; i < k && r->rc == 0; i++) {
      r->rc = cl_publish_id(p, r->queue, first + i, 64);
      if (r->rc == 0) r->published++;
    }
    sluice_publish_report rep = {0};
    int wrc = r->rc ? r->rc : sluice_publisher_wait(p, &rep);
    if (wrc == 0 && rep.confirmed - confirmed_before == k) {
      for (unsigned i = 0; i < k; i++)
        atomic_store(&r->confirmed[first + i], 1);
      r->n_confirmed += k;
    } else {
      r->n_unsure += k;
      if (wrc != SLUICE_ENACKED && !r->rc) r->rc = wrc;
    }
    confirmed_before = rep.confirmed;
  }
  sluice_publisher_free(p);
  r->t_done = cl_now_ms();
  return NULL;
}

static unsigned confirmed_missing(struct pub_run *r, cl_stream *s) {
  unsigned missing = 0;
  for (unsigned i = 0; i < r->n; i++)
    if (atomic_load(&r->confirmed[i]) && !atomic_load(&s->tally.seen[i]))
      missing++;
  return missing;
}

static void quorum_leader_killed(void **state) {
  (void)state;
  const unsigned n = 6000;
  const char *q = qname("quorum");
  sluice_queue_decl d = {.name = q, .quorum = 1};
  fresh_queue(1, &d); /* the declaring node leads (client-local) */
  int leader = cl_quorum_leader(q);
  assert_true(leader >= 1 && leader <= CL_NODES);
  int pub_node = leader % CL_NODES + 1; /* another node */

  cl_stream *s = cl_stream_new(q, n);
  assert_non_null(s);
  /* the leader's node first: the consumer is on the node that dies */
  const char *uris[CL_NODES];
  for (int i = 0; i < CL_NODES; i++)
    uris[i] = cl_uri((leader - 1 + i) % CL_NODES + 1);
  sluice_consumer_opts o = {
      .uris = uris,
      .n_uris = CL_NODES,
      .connection_name = "cluster consumer",
      .prefetch = 100,
      .reconnect = {.enabled = 1}, /* defaults: 100 ms .. 30 s */
  };
  assert_non_null(cl_stream_consumer(s, &o));

  struct pub_run *r = calloc(1, sizeof(*r));
  assert_non_null(r);
  r->queue = q;
  r->node = pub_node;
  r->n = n;
  r->batch = 100;
  cl_stream_start(s);
  pthread_create(&r->thread, NULL, publish_main, r);

  /* Kill the leader's node once a third of the stream was handled. */
  assert_int_equal(cl_wait_distinct(s, n / 3, 60), 0);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  unsigned closed = atomic_load(&s->events[SLUICE_EV_CLOSED]);
  atomic_store(&s->after_gen, st.generation);
  unsigned published_at_kill = r->published;
  uint64_t t_kill = cl_now_ms();
  assert_int_equal(cl_kill(leader), 0);
  uint64_t t_dead = cl_now_ms();
  int ok_closed = cl_wait_event(s, SLUICE_EV_CLOSED, closed + 1, 30);
  int ok_first = cl_wait_first_after(s, 60);

  /* The publisher finishes; then every confirmed message must arrive. */
  pthread_join(r->thread, NULL);
  int drained = -1;
  uint64_t end = cl_now_ms() + 60000;
  for (;;) {
    unsigned missing = confirmed_missing(r, s);
    if (missing == 0) {
      drained = 0;
      break;
    }
    uint64_t now = cl_now_ms();
    if (now >= end) break;
    /* all confirmed seen implies at least this many distinct */
    if (cl_wait_distinct(s, atomic_load(&s->tally.distinct) + missing,
                         (int)((end - now + 999) / 1000)) != 0)
      break;
  }
  sluice_consumer_stop(s->c);
  int to = 0;
  assert_int_equal(cl_stream_join(s, 30, &to), 0);
  assert_false(to);

  uint64_t first = atomic_load(&s->first_after_ms);
  int new_leader = cl_quorum_leader(q);
  printf("  leader %s killed after %u of %u handled, %u published; process "
         "gone in %llu ms\n",
         cl_name(leader), n / 3, n, published_at_kill,
         (unsigned long long)(t_dead - t_kill));
  printf("  consumer: CLOSED after %llu ms, first delivery on the new "
         "connection %llu ms after the kill; new leader %s\n",
         (unsigned long long)(atomic_load(&s->event_ms[SLUICE_EV_CLOSED]) -
                              t_kill),
         first ? (unsigned long long)(first - t_kill) : 0ULL,
         new_leader > 0 ? cl_name(new_leader) : "?");
  printf("  publisher on %s: %u published, %u confirmed, %u unsure (nacked "
         "or unconfirmed), rc %s\n",
         cl_name(pub_node), r->published, r->n_confirmed, r->n_unsure,
         sluice_err_name(r->rc));
  print_stream(s, "stream");

  assert_int_equal(ok_closed, 0);
  assert_int_equal(ok_first, 0);
  assert_int_equal(r->rc, 0);
  assert_int_equal(drained, 0);
  assert_int_equal(confirmed_missing(r, s), 0);
  assert_int_equal(atomic_load(&s->tally.dup_fresh), 0);
  assert_int_equal(atomic_load(&s->tally.bad_body), 0);
  assert_int_equal(atomic_load(&s->closed_406), 0);

  /* The killed node comes back and rejoins (the script checks it is a
   * running member again). */
  uint64_t t0 = cl_now_ms();
  assert_int_equal(cl_start(), 0);
  printf("  %s started again and rejoined in %llu ms\n", cl_name(leader),
         (unsigned long long)(cl_now_ms() - t0));
  cl_stream_free(s);
  delete_queue(pub_node, q);
  free(r);
}

/* ---- a single node killed and started again ------------------------------ */

/* When the node accepts TCP again: no event says so, so a thread polls its
 * port every 5 ms (a refused connect costs microseconds), bounded. */
struct port_watch {
  int node;
  uint64_t accepting_ms;
  pthread_t thread;
};

static void *watch_port(void *arg) {
  struct port_watch *w = arg;
  uint64_t end = cl_now_ms() + 180000;
  while (cl_now_ms() < end) {
    if (cl_node_up(w->node)) {
      w->accepting_ms = cl_now_ms();
      break;
    }
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void single_node_crash(void **state) {
  (void)state;
  const int node = 3;
  const unsigned n = 5000;
  const char *q = qname("crash");
  sluice_queue_decl d = {.name = q, .durable = 1};
  fresh_queue(node, &d); /* a classic queue lives on its declaring node */
  assert_int_equal(cl_fill(cl_uri(node), q, 0, n, 64), 0);

  cl_stream *s = cl_stream_new(q, n);
  assert_non_null(s);
  atomic_store(&s->stop_at_distinct, n);
  sluice_consumer_opts o = {
      .uri = cl_uri(node), /* the only node it knows */
      .connection_name = "crash consumer",
      .prefetch = 100,
      .reconnect = {.enabled = 1, .max_attempts = UINT32_MAX},
  };
  assert_non_null(cl_stream_consumer(s, &o));
  assert_int_equal(sluice_consumer_declare_queue(s->c, &d), 0);
  cl_stream_start(s);

  assert_int_equal(cl_wait_distinct(s, n / 2, 60), 0);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  unsigned closed = atomic_load(&s->events[SLUICE_EV_CLOSED]);
  atomic_store(&s->after_gen, st.generation);
  uint64_t t_kill = cl_now_ms();
  assert_int_equal(cl_kill(node), 0);
  int ok_closed = cl_wait_event(s, SLUICE_EV_CLOSED, closed + 1, 30);
  struct port_watch w = {.node = node};
  pthread_create(&w.thread, NULL, watch_port, &w);
  /* Start it again (the script returns once it is a member again). */
  uint64_t t_restart = cl_now_ms();
  int ok_start = cl_start();
  pthread_join(w.thread, NULL);
  int ok_first = cl_wait_first_after(s, 120);
  int to = 0;
  int rc = cl_stream_join(s, 120, &to);

  uint64_t first = atomic_load(&s->first_after_ms);
  printf("  %s killed after %u of %u handled; started again %llu ms after "
         "the kill, accepting TCP %llu ms after the kill\n",
         cl_name(node), n / 2, n, (unsigned long long)(t_restart - t_kill),
         (unsigned long long)(w.accepting_ms - t_kill));
  printf("  first delivery %llu ms after the kill, %lld ms after the node "
         "accepted TCP again\n",
         first ? (unsigned long long)(first - t_kill) : 0ULL,
         first ? (long long)(first - w.accepting_ms) : 0LL);
  print_stream(s, "stream");

  assert_int_equal(ok_closed, 0);
  assert_int_equal(ok_start, 0);
  assert_true(w.accepting_ms != 0);
  assert_int_equal(ok_first, 0);
  assert_int_equal(rc, 0);
  assert_false(to);
  assert_int_equal(cl_stream_missing(s), 0);
  assert_int_equal(atomic_load(&s->tally.dup_fresh), 0);
  assert_int_equal(atomic_load(&s->tally.bad_body), 0);
  assert_int_equal(atomic_load(&s->closed_406), 0);
  drain_repeats(s, node);
  cl_stream_free(s);
  delete_queue(node, q);
}

/* ---- memory alarm: connection.blocked / unblocked ------------------------ */

struct alarm_ctl {
  int node;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int go, done, rc;
};

struct pub_events {
  unsigned blocked, unblocked;
  int order_ok; /* every UNBLOCKED follows a BLOCKED */
  char reason[128];
  struct alarm_ctl *clear_on_block; /* or NULL */
};

static void pub_event(sluice_publisher *p, const sluice_event *ev, void *user) {
  (void)p;
  struct pub_events *e = user;
  if (ev->type == SLUICE_EV_BLOCKED) {
    e->blocked++;
    if (ev->err != SLUICE_EBLOCKED) e->order_ok = 0;
    snprintf(e->reason, sizeof(e->reason), "%s", ev->text ? ev->text : "");
    struct alarm_ctl *a = e->clear_on_block;
    if (a) {
      pthread_mutex_lock(&a->mu);
      a->go = 1;
      pthread_cond_signal(&a->cv);
      pthread_mutex_unlock(&a->mu);
    }
  } else if (ev->type == SLUICE_EV_UNBLOCKED) {
    e->unblocked++;
    if (e->unblocked > e->blocked) e->order_ok = 0;
  }
}

/* Clears the alarm once told to (from the publisher's BLOCKED event). */
static void *clear_alarm_main(void *arg) {
  struct alarm_ctl *a = arg;
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 60;
  pthread_mutex_lock(&a->mu);
  while (!a->go)
    if (pthread_cond_timedwait(&a->cv, &a->mu, &dl) != 0) break;
  pthread_mutex_unlock(&a->mu);
  a->rc = cl_alarm_clear(a->node); /* also when never told: clean up */
  a->done = 1;
  return NULL;
}

static void memory_alarm_blocks_publisher(void **state) {
  (void)state;
  const int node = 2;
  const unsigned n = 3000;
  const char *q = qname("alarm");
  sluice_queue_decl d = {.name = q, .durable = 1};
  fresh_queue(node, &d);
  assert_int_equal(cl_fill(cl_uri(node), q, 0, n, 64), 0);

  /* p waits (default blocked_timeout_ms), on the alarm's node; p2 gives up
   * after 200 ms, on another node: alarms are cluster-wide. */
  const int other = node % CL_NODES + 1;
  struct alarm_ctl a = {.node = node};
  pthread_mutex_init(&a.mu, NULL);
  pthread_cond_init(&a.cv, NULL);
  struct pub_events ev = {.order_ok = 1, .clear_on_block = &a};
  struct pub_events ev2 = {.order_ok = 1};
  sluice_publisher_opts po = {.uri = cl_uri(node),
                              .connection_name = "alarm publisher",
                              .on_event = pub_event,
                              .event_user = &ev};
  sluice_publisher *p = NULL, *p2 = NULL;
  assert_int_equal(sluice_publisher_new(&po, &p), 0);
  po.uri = cl_uri(other);
  po.event_user = &ev2;
  po.blocked_timeout_ms = 200;
  po.connection_name = "alarm publisher (200 ms)";
  assert_int_equal(sluice_publisher_new(&po, &p2), 0);

  /* A consumer on the same node, a third of the queue in. */
  cl_stream *s = cl_stream_new(q, n + 100);
  assert_non_null(s);
  sluice_consumer_opts o = {.uri = cl_uri(node),
                            .connection_name = "alarm consumer",
                            .prefetch = 50};
  assert_non_null(cl_stream_consumer(s, &o));
  cl_stream_start(s);
  assert_int_equal(cl_wait_distinct(s, n / 3, 30), 0);

  uint64_t t0 = cl_now_ms();
  assert_int_equal(cl_alarm_raise(node), 0);
  uint64_t t_alarm = cl_now_ms();

  /* RabbitMQ blocks a connection when it publishes during an alarm (it
   * stops reading at the message's header, so that message waits too).
   * p2 publishes until it has read connection.blocked: normally at once;
   * the connection's reader may learn of the alarm a moment after
   * rabbitmqctl returns, and then the message is simply confirmed. */
  unsigned id = n, rounds = 0;
  sluice_publish_report rep;
  int rc = 0;
  while (rounds++ < 50) {
    assert_int_equal(cl_publish_id(p2, q, id++, 64), 0);
    rc = sluice_publisher_wait(p2, &rep);
    if (rc != 0) break;
  }
  uint64_t t_blocked = cl_now_ms();
  assert_int_equal(rc, SLUICE_EBLOCKED); /* after 200 ms blocked */
  char reason[128];
  assert_int_equal(sluice_publisher_blocked(p2, reason, sizeof(reason)), 1);
  assert_int_equal(ev2.blocked, 1);
  assert_string_equal(ev2.reason, reason);
  assert_true(reason[0] != '\0');
  assert_int_equal(rep.pending, 1);
  /* nothing is written into a blocked connection: the next publish gives
   * up after blocked_timeout_ms */
  uint64_t t1 = cl_now_ms();
  assert_int_equal(cl_publish_id(p2, q, id, 64), SLUICE_EBLOCKED);
  uint64_t t_gave_up = cl_now_ms() - t1;

  /* The consumer is not blocked: RabbitMQ blocks only connections that
   * publish, and consuming is what relieves the alarm. It handles the rest
   * of the queue while the alarm is on. */
  assert_int_equal(cl_wait_distinct(s, n, 60), 0);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  assert_int_equal(st.blocked, 0);
  assert_int_equal(atomic_load(&s->events[SLUICE_EV_BLOCKED]), 0);

  /* p publishes and waits for its confirm: it reads connection.blocked,
   * whose event tells the other thread to clear the alarm, then
   * connection.unblocked, then the confirm. */
  pthread_t t;
  pthread_create(&t, NULL, clear_alarm_main, &a);
  assert_int_equal(cl_publish_id(p, q, id++, 64), 0);
  uint64_t t_wait = cl_now_ms();
  rc = sluice_publisher_wait(p, &rep);
  uint64_t t_unblocked = cl_now_ms();
  pthread_join(t, NULL);
  assert_int_equal(a.rc, 0);
  assert_int_equal(rc, 0);
  assert_int_equal(rep.confirmed, 1);
  assert_int_equal(ev.blocked, 1);
  assert_int_equal(ev.unblocked, 1);
  assert_true(ev.order_ok);
  assert_int_equal(sluice_publisher_blocked(p, NULL, 0), 0);
  /* p2 hears the unblock on its next call, and its parked message is
   * confirmed. */
  assert_int_equal(sluice_publisher_wait(p2, &rep), 0);
  assert_int_equal(ev2.unblocked, 1);
  assert_true(ev2.order_ok);
  assert_int_equal(rep.pending, 0);
  assert_int_equal(cl_publish_id(p2, q, id++, 64), 0);
  assert_int_equal(sluice_publisher_wait(p2, &rep), 0);

  printf("  alarm raised on %s (rabbitmqctl) in %llu ms; the 200 ms "
         "publisher on %s blocked (\"%s\") after %u publish(es), "
         "SLUICE_EBLOCKED %llu ms "
         "after rabbitmqctl returned; its next publish gave up after %llu "
         "ms; the waiting publisher's confirm came %llu ms later, after "
         "the alarm was cleared\n",
         cl_name(node), (unsigned long long)(t_alarm - t0), cl_name(other),
         reason, rounds, (unsigned long long)(t_blocked - t_alarm),
         (unsigned long long)t_gave_up,
         (unsigned long long)(t_unblocked - t_wait));
  print_stream(s, "consumer during the alarm");

  /* everything published reaches the consumer */
  atomic_store(&s->stop_at_distinct, id);
  int to = 0;
  if (atomic_load(&s->tally.distinct) >= id) sluice_consumer_stop(s->c);
  assert_int_equal(cl_stream_join(s, 30, &to), 0);
  assert_false(to);
  assert_int_equal(atomic_load(&s->tally.distinct), id);
  assert_int_equal(atomic_load(&s->tally.dup_fresh), 0);
  sluice_publisher_free(p2);
  sluice_publisher_free(p);
  cl_stream_free(s);
  pthread_mutex_destroy(&a.mu);
  pthread_cond_destroy(&a.cv);
  delete_queue(node, q);
}

int main(void) {
  cl_require("test_cluster", 1200);
  setvbuf(stdout, NULL, _IONBF, 0);
  /* SLUICE_TEST_FILTER=memory_alarm* runs the matching tests only;
   * SLUICE_CLUSTER_FILTER does the same for this test only (scripts/test.sh
   * runs the kill -9 tests in one build) */
  const char *filter = getenv("SLUICE_TEST_FILTER");
  if (!filter) filter = getenv("SLUICE_CLUSTER_FILTER");
  if (filter) cmocka_set_test_filter(filter);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(memory_alarm_blocks_publisher),
      cmocka_unit_test(quorum_leader_killed),
      cmocka_unit_test(single_node_crash),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
