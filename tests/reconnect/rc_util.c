/* SPDX-License-Identifier: MIT */
#include "rc_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/broker_util.h"

uint64_t rc_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the stream ---------------------------------------------------------- */

static _Atomic unsigned want_distinct;

static void wake(rc_stream *s) {
  pthread_mutex_lock(&s->mu);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* A fault's checkpoint: distinct = n*(k+1)/(n_faults+1), k = 0.. */
static int at_checkpoint(const rc_stream *s, unsigned dn) {
  if (!s->fault) return 0;
  for (unsigned k = 0; k < s->n_faults && k < 16; k++)
    if (dn == (unsigned)((uint64_t)s->n * (k + 1) / (s->n_faults + 1)))
      return 1;
  return 0;
}

static int rc_handler(sluice_delivery *d, const sluice_message *m, void *user) {
  (void)d;
  rc_stream *s = user;
  unsigned call;
  unsigned dn = tb_tally_record(&s->tally, m, &call);
  if (call == atomic_load(&s->stop_at_calls)) sluice_consumer_stop(s->c);
  if (dn && dn == s->n) sluice_consumer_stop(s->c);
  if (dn && at_checkpoint(s, dn)) {
    /* The stream waits here for the chaos thread's fault: a fast stream
     * (or a slow chaos thread) must not run on to its end first. */
    pthread_mutex_lock(&s->mu);
    atomic_store_explicit(&s->gate, 1, memory_order_relaxed);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
  } else if (dn && dn == atomic_load(&want_distinct)) {
    wake(s);
  }
  if (atomic_load_explicit(&s->gate, memory_order_relaxed)) {
    pthread_mutex_lock(&s->mu);
    while (atomic_load(&s->gate) && !s->quit) pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
  }
  return SLUICE_ACK;
}

static void rc_on_event(sluice_consumer *c, const sluice_event *ev,
                        void *user) {
  rc_stream *s = user;
  if (ev->type == SLUICE_EV_CLOSED) {
    atomic_store(&s->last_closed_err, ev->err);
    atomic_store(&s->last_closed_ms, rc_now_ms());
    if (ev->reply_code == 406) atomic_fetch_add(&s->closed_406, 1);
  }
  if ((unsigned)ev->type < 16) atomic_fetch_add(&s->events[ev->type], 1);
  wake(s);
}

rc_stream *rc_stream_new(const char *queue, unsigned n) {
  rc_stream *s = calloc(1, sizeof(*s));
  assert_non_null(s);
  assert_true(n <= RC_MAXN);
  s->queue = queue;
  s->n = n;
  s->tally.n = n;
  s->wait_timeout_s = 30;
  pthread_mutex_init(&s->mu, NULL);
  tb_cond_init_monotonic(&s->cv);
  return s;
}

void rc_stream_free(rc_stream *s) {
  if (!s) return;
  sluice_consumer_free(s->c);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}

sluice_consumer *rc_stream_consumer(rc_stream *s, sluice_consumer_opts *o) {
  o->on_event = rc_on_event;
  o->event_user = s;
  if (!o->log) o->log = tb_log_quiet;
  if (!o->log_level) o->log_level = SLUICE_LOG_WARN;
  if (o->connection_name) s->conn_name = o->connection_name;
  sluice_consumer *c = NULL;
  assert_int_equal(sluice_consumer_new(o, &c), 0);
  sluice_subscribe_opts so = {.queue = s->queue,
                              .handler = rc_handler,
                              .user = s};
  assert_int_equal(sluice_consumer_subscribe(c, &so), 0);
  s->c = c;
  return c;
}

/* Wait on the stream's condition until pred(s, arg) or the deadline. */
static int wait_until(rc_stream *s, int (*pred)(rc_stream *, unsigned),
                      unsigned arg, int seconds) {
  struct timespec dl;
  clock_gettime(CLOCK_MONOTONIC, &dl);
  dl.tv_sec += seconds;
  int rc = 0;
  pthread_mutex_lock(&s->mu);
  while (!pred(s, arg) && !s->quit) {
    if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT) {
      rc = pred(s, arg) ? 0 : -1;
      break;
    }
  }
  if (s->quit && !pred(s, arg)) rc = -1;
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static int distinct_at_least(rc_stream *s, unsigned v) {
  return atomic_load(&s->tally.distinct) >= v;
}

static int wait_type_;
static int event_at_least(rc_stream *s, unsigned v) {
  return atomic_load(&s->events[wait_type_]) >= v;
}

int rc_wait_event(rc_stream *s, int type, unsigned want, int seconds) {
  /* The chaos thread is the only caller at a time. */
  wait_type_ = type;
  return wait_until(s, event_at_least, want, seconds);
}

static void open_gate(rc_stream *s) {
  pthread_mutex_lock(&s->mu);
  atomic_store_explicit(&s->gate, 0, memory_order_relaxed);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void *chaos_main(void *arg) {
  rc_stream *s = arg;
  int to = s->wait_timeout_s;
  for (unsigned k = 0; k < s->n_faults && k < 16; k++) {
    unsigned target = (unsigned)((uint64_t)s->n * (k + 1) / (s->n_faults + 1));
    atomic_store(&want_distinct, target);
    if (wait_until(s, distinct_at_least, target, to) != 0) {
      if (!s->quit) s->chaos_failed = 1;
      break;
    }
    unsigned closed = atomic_load(&s->events[SLUICE_EV_CLOSED]);
    unsigned conn = atomic_load(&s->events[SLUICE_EV_CONNECTED]);
    if (s->gate_during_fault) {
      pthread_mutex_lock(&s->mu);
      atomic_store_explicit(&s->gate, 1, memory_order_relaxed);
      pthread_mutex_unlock(&s->mu);
    }
    s->fault_ms[k] = rc_now_ms();
    if (s->fault(s, k) != 0) {
      s->chaos_failed = 1;
      open_gate(s);
      break;
    }
    /* The handlers held at the checkpoint go on now, or once the close is
     * seen (gate_during_fault: their completions are then stale). */
    if (!s->gate_during_fault) open_gate(s);
    int rc = rc_wait_event(s, SLUICE_EV_CLOSED, closed + 1, to);
    s->closed_ms[k] = rc_now_ms();
    open_gate(s);
    if (rc == 0) rc = rc_wait_event(s, SLUICE_EV_CONNECTED, conn + 1, to);
    s->connected_ms[k] = rc_now_ms();
    if (rc != 0) {
      s->chaos_failed = 1;
      break;
    }
    s->faults_done++;
  }
  if (s->chaos_failed) {
    fprintf(stderr, "chaos: gave up waiting after %u faults\n", s->faults_done);
    sluice_consumer_stop(s->c);
  } else if (s->stop_when_drained) {
    /* The broker has no event for "queue empty": poll, bounded. */
    tb_depth_eventually(s->queue, 0, to * 1000);
    uint64_t end = rc_now_ms() + (uint64_t)to * 1000u;
    for (;;) {
      sluice_consumer_stats st;
      sluice_consumer_get_stats(s->c, &st);
      if ((st.in_flight == 0 && st.in_handler == 0) || rc_now_ms() > end) break;
      struct timespec ts = {0, 10 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
    sluice_consumer_stop(s->c);
  }
  return NULL;
}

int rc_stream_run(rc_stream *s, int seconds, int *timed_out) {
  atomic_store(&want_distinct, 0);
  if (s->n_faults) pthread_create(&s->chaos, NULL, chaos_main, s);
  int rc = tb_run_bounded(s->c, seconds, timed_out);
  pthread_mutex_lock(&s->mu);
  s->quit = 1;
  atomic_store_explicit(&s->gate, 0, memory_order_relaxed);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (s->n_faults) pthread_join(s->chaos, NULL);
  return rc;
}

void rc_stream_check(rc_stream *s) {
  sluice_consumer_stats st;
  sluice_consumer_get_stats(s->c, &st);
  unsigned missing = tb_tally_missing(&s->tally);
  printf("  %u messages, %u handler calls (%u redelivered), %u faults, "
         "%u closed / %u connected events, %llu reconnects, %llu stale, "
         "%llu acked\n",
         s->n, atomic_load(&s->tally.calls),
         atomic_load(&s->tally.redelivered_calls), s->faults_done,
         atomic_load(&s->events[SLUICE_EV_CLOSED]),
         atomic_load(&s->events[SLUICE_EV_CONNECTED]),
         (unsigned long long)st.reconnects, (unsigned long long)st.stale,
         (unsigned long long)st.acked);
  for (unsigned k = 0; k < s->faults_done; k++)
    printf("    fault %u: closed after %llu ms, connected again after "
           "%llu ms\n",
           k, (unsigned long long)(s->closed_ms[k] - s->fault_ms[k]),
           (unsigned long long)(s->connected_ms[k] - s->fault_ms[k]));
  assert_false(s->chaos_failed);
  assert_int_equal(s->faults_done, s->n_faults);
  assert_int_equal(atomic_load(&s->tally.bad_body), 0);
  if (missing) fail_msg("%u of %u messages never handled", missing, s->n);
  assert_int_equal(atomic_load(&s->tally.distinct), s->n);
  /* a repeat only ever comes with the redelivered flag */
  assert_int_equal(atomic_load(&s->tally.dup_fresh), 0);
  /* no stale ack reached a new channel (it would close it with 406) */
  assert_int_equal(atomic_load(&s->closed_406), 0);
  /* Every message acked by the end. Acks written just before a cut may
   * have been lost with the connection: the broker requeues those messages
   * once it has closed that connection (at once after a cut, after its own
   * heartbeat timeout after a black hole). Wait for that, consume what came
   * back (only repeats, flagged redelivered), then nothing may be left. */
  sluice_consumer_free(s->c);
  s->c = NULL;
  uint32_t ready = 0;
  assert_int_equal(rc_wait_no_consumers(s->queue, 20, &ready), 0);
  if (ready > 0) {
    printf("    %u messages came back after the stream (acks lost with a "
           "connection): consuming them\n",
           ready);
    unsigned distinct = atomic_load(&s->tally.distinct);
    atomic_store(&s->stop_at_calls, atomic_load(&s->tally.calls) + ready);
    sluice_consumer_opts o = {.uri = TEST_URI};
    rc_stream_consumer(s, &o);
    int to = 0;
    assert_int_equal(tb_run_bounded(s->c, 20, &to), 0);
    assert_false(to);
    assert_int_equal(atomic_load(&s->tally.distinct), distinct);
    assert_int_equal(atomic_load(&s->tally.dup_fresh), 0);
    sluice_consumer_free(s->c);
    s->c = NULL;
    assert_int_equal(rc_wait_no_consumers(s->queue, 20, &ready), 0);
  }
  assert_int_equal(ready, 0);
}

int rc_wait_no_consumers(const char *queue, int seconds, uint32_t *ready) {
  sluice_publisher_opts po = {.uri = TEST_URI, .connection_name = "test pub"};
  sluice_publisher *p = NULL;
  if (sluice_publisher_new(&po, &p) != 0) return -1;
  uint64_t end = rc_now_ms() + (uint64_t)seconds * 1000u;
  int rc = -1;
  for (;;) {
    uint32_t msgs = 0, consumers = 0;
    if (sluice_publisher_queue_depth(p, queue, &msgs, &consumers) != 0) break;
    *ready = msgs;
    if (consumers == 0) {
      rc = 0;
      break;
    }
    if (rc_now_ms() >= end) break;
    /* The broker has no event for "that connection is gone": poll. */
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  sluice_publisher_free(p);
  return rc;
}

/* ---- rabbitmqctl --------------------------------------------------------- */

int rc_close_named_connection(const char *name) {
  FILE *f = popen("rabbitmqctl -q list_connections pid client_properties "
                  "2>/dev/null",
                  "r");
  if (!f) return -1;
  char needle[300];
  snprintf(needle, sizeof(needle), "{\"connection_name\",\"%s\"}", name);
  char *line = NULL;
  size_t cap = 0;
  char pids[8][128];
  int n = 0;
  while (getline(&line, &cap, f) > 0) {
    if (!strstr(line, needle) || n == 8) continue;
    char *tab = strchr(line, '\t');
    if (!tab || tab - line >= 127) continue;
    memcpy(pids[n], line, (size_t)(tab - line));
    pids[n][tab - line] = '\0';
    n++;
  }
  free(line);
  if (pclose(f) != 0) return -1;
  int closed = 0;
  for (int i = 0; i < n; i++) {
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "rabbitmqctl -q close_connection '%s' 'sluice reconnect test' "
             ">/dev/null 2>&1",
             pids[i]);
    if (system(cmd) == 0) closed++; /* one may be closing already */
  }
  return closed;
}

/* A guardian process outlives the test (double fork, so neither ctest's
 * timeout nor a crash takes it down) and starts the app again if the test
 * dies between stop_app and start_app: other suites share the broker. */
static int guard_fd = -1;

static void guardian(int rfd) {
  char state = 'R', ch;
  while (read(rfd, &ch, 1) == 1) state = ch;
  if (state == 'S') {
    int rc = system("rabbitmqctl -q start_app >/dev/null 2>&1");
    (void)rc;
  }
  _exit(0);
}

static void start_guardian(void) {
  if (guard_fd >= 0) return;
  int p[2];
  if (pipe(p) != 0) return;
  pid_t pid = fork();
  if (pid == 0) {
    close(p[1]);
    setsid();
    if (fork() == 0) guardian(p[0]);
    _exit(0);
  }
  close(p[0]);
  if (pid > 0) waitpid(pid, NULL, 0);
  guard_fd = p[1];
}

static void tell_guardian(char state) {
  if (guard_fd >= 0) {
    ssize_t w = write(guard_fd, &state, 1);
    (void)w;
  }
}

int rc_stop_app(void) {
  start_guardian();
  tell_guardian('S');
  return system("rabbitmqctl -q stop_app >/dev/null 2>&1") == 0 ? 0 : -1;
}

int rc_start_app(void) {
  int rc = system("rabbitmqctl -q start_app >/dev/null 2>&1");
  if (rc == 0) tell_guardian('R');
  return rc == 0 ? 0 : -1;
}
