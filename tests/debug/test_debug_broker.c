/* SPDX-License-Identifier: MIT */
/* The debug endpoint serving a running consumer on the real broker:
 * /debug/vars and /metrics carry its counters and the residual of its
 * messages, /healthz follows the connection. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdatomic.h>
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
#include <jansson.h>

#include <sluice/debug.h>
#include <sluice/profiling.h>

#include "common/broker_util.h"
#include "http_client.h"

#if defined(__clang__)
#define T_NOINLINE __attribute__((noinline))
#else
#define T_NOINLINE __attribute__((noinline, noclone))
#endif

#define N_MESSAGES 20

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int handled;
static void *kept[N_MESSAGES];
static int n_kept;

/* Every fourth message is rejected and leaves 100 bytes behind. */
T_NOINLINE static int dbg_broker_handler(sluice_delivery *d,
                                         const sluice_message *m, void *user) {
  (void)d;
  (void)user;
  int id = atoi(m->props.message_id ? m->props.message_id : "0");
  int outcome = SLUICE_ACK;
  if (id % 4 == 3) {
    void *p = malloc(100);
    if (!sluice_prof_interposing()) sluice_prof_note_alloc(p, 100);
    memset(p, id, 100);
    pthread_mutex_lock(&mu);
    kept[n_kept++] = p;
    pthread_mutex_unlock(&mu);
    outcome = SLUICE_REJECT;
  }
  pthread_mutex_lock(&mu);
  handled++;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  return outcome;
}

static void *run_consumer(void *arg) {
  int timed_out = 0;
  tb_run_bounded(arg, 60, &timed_out);
  return NULL;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static json_t *vars(int port) {
  hresp r;
  if (h_get(port, "/debug/vars", NULL, &r) != 200)
    fail_msg("/debug/vars: status %d", r.status);
  const char *ct = h_header(&r, "Content-Type");
  assert_non_null(ct);
  assert_string_equal(ct, "application/json");
  json_error_t err;
  json_t *j = json_loads(r.body, 0, &err);
  if (!j) fail_msg("/debug/vars is not JSON: %s\n%s", err.text, r.body);
  h_free(&r);
  return j;
}

static json_int_t field(json_t *j, const char *obj, const char *key) {
  json_t *v = json_object_get(json_object_get(j, obj), key);
  if (!json_is_integer(v)) fail_msg("%s.%s is not an integer", obj, key);
  return json_integer_value(v);
}

static const json_t *residual_of(json_t *j, const char *queue,
                                 const char *outcome) {
  json_t *a = json_object_get(j, "residual");
  for (size_t i = 0; i < json_array_size(a); i++) {
    json_t *e = json_array_get(a, i);
    if (!strcmp(json_string_value(json_object_get(e, "queue")), queue) &&
        !strcmp(json_string_value(json_object_get(e, "outcome")), outcome))
      return e;
  }
  return NULL;
}

/* `promtool check metrics` (Debian prometheus): missing, it skips, or fails
 * when SLUICE_REQUIRE_BROKER=1 (CI). */
static void promtool_check(const char *text) {
  char *promtool = h_which("promtool");
  if (!promtool) {
    const char *req = getenv("SLUICE_REQUIRE_BROKER");
    if (req && !strcmp(req, "1"))
      fail_msg("promtool not found in PATH (required in CI: "
               "scripts/setup.sh installs prometheus)");
    print_message("SKIP: promtool not found: promtool check metrics not "
                  "run\n");
    return;
  }
  char dir[] = "/tmp/sluice-promtool-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char *out = NULL;
  int rc = h_promtool_check_metrics(promtool, text, dir, &out);
  rmdir(dir);
  if (rc != 0)
    fail_msg("promtool check metrics exited %d:\n%s\n%s", rc, out ? out : "",
             text);
  free(out);
  free(promtool);
}

static void test_consumer_counters(void **state) {
  (void)state;
  sluice_prof_opts po = {.sample_rate = 1, .grace_ms = -1};
  assert_int_equal(sluice_prof_start(&po), 0);

  const char *q = tb_qname("debug");
  sluice_queue_decl qd = {.name = q};
  tb_fresh_queue(&qd);
  tb_fill(q, N_MESSAGES, 64);

  sluice_consumer_opts co = {.uri = TEST_URI,
                             .connection_name = "test debug",
                             .prefetch = 10,
                             .hooks = sluice_prof_delivery_hooks()};
  /* A guard that never pauses: its figure comes from the profiler's hooks
   * while the profiler runs. */
  co.memory_guard.high_bytes = UINT64_MAX / 2;
  sluice_consumer *c = NULL;
  assert_int_equal(sluice_consumer_new(&co, &c), 0);
  sluice_subscribe_opts so = {.queue = q, .handler = dbg_broker_handler};
  assert_int_equal(sluice_consumer_subscribe(c, &so), 0);

  sluice_debug_server *s = NULL;
  sluice_debug_opts dopts = {.consumer = c, .addr = "127.0.0.1:0"};
  assert_int_equal(sluice_debug_server_new(&dopts, &s), 0);
  int port = sluice_debug_server_port(s);

  /* Not connected yet. */
  hresp r;
  assert_int_equal(h_get(port, "/healthz", NULL, &r), 503);
  h_free(&r);

  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, run_consumer, c), 0);
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 30;
  pthread_mutex_lock(&mu);
  while (handled < N_MESSAGES && pthread_cond_timedwait(&cv, &mu, &dl) == 0) {
  }
  int got = handled;
  pthread_mutex_unlock(&mu);
  assert_int_equal(got, N_MESSAGES);

  /* Acks are written by the loop after the handlers return (coalesced, on a
   * short timer): the counters are there once the loop has sent them. The
   * endpoint is the only place to see that, so ask it. */
  json_t *j = NULL;
  uint64_t end = now_ms() + 10000;
  for (;;) {
    j = vars(port);
    if (field(j, "consumer", "acked") + field(j, "consumer", "rejected") ==
            N_MESSAGES ||
        now_ms() > end)
      break;
    json_decref(j);
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  assert_true(json_is_true(
      json_object_get(json_object_get(j, "consumer"), "connected")));
  assert_int_equal(field(j, "consumer", "delivered"), N_MESSAGES);
  assert_int_equal(field(j, "consumer", "acked"), 15);
  assert_int_equal(field(j, "consumer", "rejected"), 5);
  assert_int_equal(field(j, "consumer", "nacked"), 0);
  assert_int_equal(field(j, "consumer", "stale"), 0);
  assert_int_equal(field(j, "consumer", "in_flight"), 0);
  assert_true(field(j, "consumer", "generation") >= 1);
  assert_true(field(j, "memstats", "rss_bytes") > 0);
  const json_t *rej = residual_of(j, q, "reject");
  const json_t *ack = residual_of(j, q, "ack");
  assert_non_null(rej);
  assert_non_null(ack);
  assert_int_equal(json_integer_value(json_object_get(rej, "messages")), 5);
  assert_true(json_integer_value(json_object_get(rej, "bytes_at_end")) >= 500);
  assert_int_equal(json_integer_value(json_object_get(ack, "messages")), 15);
  assert_int_equal(json_integer_value(json_object_get(ack, "bytes_at_end")), 0);
  json_decref(j);

  assert_int_equal(h_get(port, "/metrics", NULL, &r), 200);
  const char *err = h_prom_check(r.body);
  if (err) fail_msg("/metrics: %s\n%s", err, r.body);
  promtool_check(r.body);
  char want[6][256];
  snprintf(want[0], sizeof want[0], "\nsluice_deliveries_total %d\n",
           N_MESSAGES);
  snprintf(want[1], sizeof want[1],
           "\nsluice_deliveries_completed_total{outcome=\"ack\"} 15\n");
  snprintf(want[2], sizeof want[2],
           "\nsluice_deliveries_completed_total{outcome=\"reject\"} 5\n");
  snprintf(want[3], sizeof want[3], "\nsluice_connection_up 1\n");
  snprintf(want[4], sizeof want[4],
           "\nsluice_residual_messages_total{queue=\"%s\","
           "outcome=\"reject\"} 5\n",
           q);
  snprintf(want[5], sizeof want[5], "\nsluice_stale_acks_total 0\n");
  for (int i = 0; i < 6; i++)
    if (!strstr(r.body, want[i]))
      fail_msg("/metrics lacks %s\n%s", want[i], r.body);
  assert_non_null(strstr(r.body, "\nsluice_in_flight_messages 0\n"));
  assert_non_null(strstr(r.body, "\nsluice_close_listeners "));
  assert_non_null(strstr(r.body, "\nsluice_reconnects_total 0\n"));
  assert_non_null(
      strstr(r.body, "\nsluice_memory_guard_bytes{source=\"hooks\"} "));
  assert_non_null(strstr(r.body, "\nsluice_memory_guard_paused 0\n"));
  h_free(&r);
  sluice_consumer_stats gst;
  sluice_consumer_get_stats(c, &gst);
  assert_string_equal(gst.memory_source, "hooks");
  assert_true(gst.memory_bytes > 0);
  assert_int_equal(gst.memory_pauses, 0);

  assert_int_equal(h_get(port, "/healthz", NULL, &r), 200);
  assert_string_equal(r.body, "ok\n");
  h_free(&r);

  /* The residual profile names the handler that kept its memory. */
  assert_int_equal(
      h_get(port, "/debug/pprof/residual?format=top&outcome=reject", NULL, &r),
      200);
  if (!strstr(r.body, "dbg_broker_handler"))
    fail_msg("dbg_broker_handler not in the residual profile:\n%s", r.body);
  h_free(&r);

  sluice_consumer_stop(c);
  pthread_join(t, NULL);
  assert_int_equal(h_get(port, "/healthz", NULL, &r), 503);
  h_free(&r);
  j = vars(port);
  assert_true(json_is_false(
      json_object_get(json_object_get(j, "consumer"), "connected")));
  json_decref(j);

  sluice_debug_server_free(s);
  sluice_consumer_free(c);
  tb_delete_queue(q);
  for (int i = 0; i < n_kept; i++) {
    if (!sluice_prof_interposing()) sluice_prof_note_free(kept[i]);
    free(kept[i]);
  }
}

/* ------------------------------------------------------------------------ */
/* The memory guard on /metrics and /debug/vars: a reader of the test's own
 * holds the figure above the mark from the start, then drops it. */

static _Atomic uint64_t mg_figure;
static int mg_paused, mg_resumed, mg_handled;

static int mg_read(void *user, uint64_t *bytes) {
  (void)user;
  *bytes = atomic_load(&mg_figure);
  return 0;
}

static void mg_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  (void)c;
  (void)user;
  pthread_mutex_lock(&mu);
  if (ev->type == SLUICE_EV_MEMORY_PAUSED) mg_paused++;
  if (ev->type == SLUICE_EV_MEMORY_RESUMED) mg_resumed++;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

static int mg_handler(sluice_delivery *d, const sluice_message *m, void *user) {
  (void)d;
  (void)m;
  (void)user;
  pthread_mutex_lock(&mu);
  mg_handled++;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  return SLUICE_ACK;
}

/* Wait (bounded) until *v reaches want; returns *v. */
static int mg_wait(int *v, int want) {
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 30;
  pthread_mutex_lock(&mu);
  while (*v < want && pthread_cond_timedwait(&cv, &mu, &dl) == 0) {
  }
  int got = *v;
  pthread_mutex_unlock(&mu);
  return got;
}

static void metrics_want(int port, const char *const *want, size_t n) {
  hresp r;
  assert_int_equal(h_get(port, "/metrics", NULL, &r), 200);
  const char *err = h_prom_check(r.body);
  if (err) fail_msg("/metrics: %s\n%s", err, r.body);
  promtool_check(r.body);
  for (size_t i = 0; i < n; i++)
    if (!strstr(r.body, want[i]))
      fail_msg("/metrics lacks %s\n%s", want[i], r.body);
  h_free(&r);
}

static void test_memory_guard(void **state) {
  (void)state;
  const char *q = tb_qname("debug.guard");
  sluice_queue_decl qd = {.name = q};
  tb_fresh_queue(&qd);
  tb_fill(q, N_MESSAGES, 64);
  atomic_store(&mg_figure, 5000);
  sluice_consumer_opts co = {.uri = TEST_URI,
                             .prefetch = 5,
                             .on_event = mg_event,
                             .log_level = SLUICE_LOG_ERROR};
  co.memory_guard.high_bytes = 4000;
  co.memory_guard.low_bytes = 1000;
  co.memory_guard.interval_ms = 10;
  co.memory_guard.read = mg_read;
  sluice_consumer *c = NULL;
  assert_int_equal(sluice_consumer_new(&co, &c), 0);
  sluice_subscribe_opts so = {.queue = q, .handler = mg_handler};
  assert_int_equal(sluice_consumer_subscribe(c, &so), 0);
  sluice_debug_server *s = NULL;
  sluice_debug_opts dopts = {.consumer = c, .addr = "127.0.0.1:0"};
  assert_int_equal(sluice_debug_server_new(&dopts, &s), 0);
  int port = sluice_debug_server_port(s);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, run_consumer, c), 0);

  /* Paused from the first check on (before the connection): nothing read. */
  assert_int_equal(mg_wait(&mg_paused, 1), 1);
  const char *paused[] = {
      "# TYPE sluice_memory_guard_bytes gauge\n",
      "\nsluice_memory_guard_bytes{source=\"reader\"} 5000\n",
      "\nsluice_memory_guard_high_bytes 4000\n",
      "\nsluice_memory_guard_low_bytes 1000\n",
      "\nsluice_memory_guard_paused 1\n",
      "# TYPE sluice_memory_guard_pauses_total counter\n",
      "\nsluice_memory_guard_pauses_total 1\n",
      "# TYPE sluice_memory_guard_paused_seconds_total counter\n",
      "\nsluice_memory_guard_read_errors_total 0\n",
      "# TYPE sluice_memory_guard_check_cpu_seconds gauge\n",
  };
  metrics_want(port, paused, sizeof paused / sizeof paused[0]);
  json_t *j = vars(port);
  json_t *mg = json_object_get(json_object_get(j, "consumer"), "memory_guard");
  assert_true(json_is_true(json_object_get(mg, "paused")));
  assert_string_equal(json_string_value(json_object_get(mg, "source")),
                      "reader");
  assert_int_equal(json_integer_value(json_object_get(mg, "high_bytes")), 4000);
  json_decref(j);
  pthread_mutex_lock(&mu);
  assert_int_equal(mg_handled, 0);
  pthread_mutex_unlock(&mu);

  /* Below the low mark: reading resumes and every message comes. */
  atomic_store(&mg_figure, 500);
  assert_int_equal(mg_wait(&mg_resumed, 1), 1);
  assert_int_equal(mg_wait(&mg_handled, N_MESSAGES), N_MESSAGES);
  const char *resumed[] = {
      "\nsluice_memory_guard_bytes{source=\"reader\"} 500\n",
      "\nsluice_memory_guard_paused 0\n",
      "\nsluice_memory_guard_pauses_total 1\n",
  };
  metrics_want(port, resumed, sizeof resumed / sizeof resumed[0]);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  assert_int_equal(st.memory_pauses, 1);
  assert_true(st.memory_checks >= 2);

  sluice_consumer_stop(c);
  pthread_join(t, NULL);
  sluice_consumer_get_stats(c, &st);
  assert_int_equal(st.acked, N_MESSAGES);
  assert_int_equal(mg_paused, 1);
  assert_int_equal(mg_resumed, 1);
  sluice_debug_server_free(s);
  sluice_consumer_free(c);
  assert_int_equal(tb_depth_eventually(q, 0, 5000), 0);
  tb_delete_queue(q);
}

int main(void) {
  tb_require_broker("test_debug_broker");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_consumer_counters),
      cmocka_unit_test(test_memory_guard),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
