/* SPDX-License-Identifier: MIT */
/* The push worker against the real broker and the gateway stand-in: each
 * --leak mode is found (the residual per message and the function that
 * allocated it, or the close-listener refusal), a clean run leaves nothing,
 * bad jobs and failing ones reach the dead-letter queue with their reason,
 * and SIGTERM mid-stream loses nothing.
 *
 * The worker runs as a child process; it reports on a pipe (its fd 3, JSON
 * lines). Builds that cannot interpose malloc (ASan, TSan) skip the
 * residual assertions, loudly, and check the rest. */
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "examples/push_worker/gateway.h"
#include "examples/push_worker/jobs.h"
#include "push_util.h"
#include "tests/common/broker_util.h"
#include "tests/common/proxy.h"

#define WAIT_MS 60000 /* bound for one worker run; never reached */

static pw_gateway *gw;
static char gw_url[128];

/* Fresh work and dead-letter queues, filled with `n` jobs of `mix`. */
static void setup_queue(const char *q, const char *mix, unsigned n) {
  char dlq[256], err[128];
  sluice_queue_decl qd, dd;
  pw_queue_decl(q, &qd);
  pw_dlq_decl(pw_dlq_name(q, dlq, sizeof(dlq)), &dd);
  tb_fresh_queue(&dd);
  tb_fresh_queue(&qd);
  pw_mix m;
  assert_int_equal(pw_mix_parse(mix, &m, err, sizeof(err)), 0);
  sluice_publisher_opts po = {.uri = TEST_URI, .max_outstanding = 2048};
  sluice_publisher *p;
  assert_int_equal(sluice_publisher_new(&po, &p), 0);
  assert_int_equal(pw_publish_jobs(p, q, &m, 0, n), 0);
  sluice_publish_report rep;
  assert_int_equal(sluice_publisher_wait(p, &rep), 0);
  assert_int_equal(rep.confirmed, n);
  sluice_publisher_free(p);
}

static void drop_queue(const char *q) {
  char dlq[256];
  tb_delete_queue(q);
  tb_delete_queue(pw_dlq_name(q, dlq, sizeof(dlq)));
}

/* Run the worker on `q` with extra args until it exits; returns its final
 * JSON line (the caller decrefs). */
static json_t *run_worker(const char *q, int leaky, const char *extra[]) {
  const char *args[48] = {
      "--queue",       q,    "--gateway", gw_url, "--stats-fd", "3", "--quiet",
      "--leak-window", "10", "--horizon", "50,1"};
  size_t n = 11;
  for (size_t i = 0; extra && extra[i]; i++) args[n++] = extra[i];
  args[n] = NULL;
  pu_proc p;
  assert_int_equal(pu_spawn(&p, PW_WORKER, args, leaky), 0);
  int st = pu_wait(&p, WAIT_MS);
  assert_int_equal(st, 0);
  assert_non_null(p.final);
  json_t *f = json_incref(p.final);
  pu_free(&p);
  return f;
}

static int interposing(json_t *final) {
  if (json_is_true(json_object_get(final, "interposing"))) return 1;
  fprintf(stderr,
          "SKIPPED: residual assertions: this build cannot interpose malloc "
          "(sanitizer), so the profiler sees no allocation of the worker\n");
  return 0;
}

/* The aggregate of `outcome` and job type `key` (the worker groups the
 * residual by the `type` property) in the final line, or NULL. */
static json_t *aggregate(json_t *final, const char *outcome, const char *key) {
  size_t i;
  json_t *a;
  json_array_foreach(json_object_get(final, "aggregates"), i, a) {
    if (strcmp(json_string_value(json_object_get(a, "outcome")), outcome) ==
            0 &&
        strcmp(json_string_value(json_object_get(a, "key")), key) == 0)
      return a;
  }
  return NULL;
}

/* The leak verdict must name `site` as the top site for `outcome` and job
 * type `key`, and the verdict line compare the job types. */
static void expect_leak(json_t *final, const char *outcome, const char *key,
                        const char *site) {
  json_t *a = aggregate(final, outcome, key);
  assert_non_null(a);
  assert_true(json_is_true(json_object_get(a, "leaking")));
  assert_true(pu_int(a, "bytes_leaked") > 0);
  assert_true(pu_int(a, "retained_bytes") > 0);
  size_t i;
  json_t *v;
  int found = 0;
  json_array_foreach(json_object_get(final, "verdicts"), i, v) {
    const char *o = json_string_value(json_object_get(v, "outcome"));
    const char *s = json_string_value(json_object_get(v, "top_site"));
    const char *k = json_string_value(json_object_get(v, "key"));
    fprintf(stderr, "verdict: outcome %s, %.1f B/message, top site %s\n", o,
            json_real_value(json_object_get(v, "bytes_per_message")), s);
    char want[160];
    snprintf(want, sizeof want, "type=%s", key);
    if (strcmp(o, outcome) == 0 && strcmp(k, want) == 0) {
      assert_string_equal(s, site);
      assert_true(json_real_value(json_object_get(v, "bytes_per_message")) > 0);
      found = 1;
    }
  }
  assert_true(found);
}

/* ------------------------------------------------------------------------ */

static void test_none_is_clean(void **state) {
  const char *q = tb_qname("push.none");
  setup_queue(q, "probe=10,bad=3,missing=2,forbidden=5,gone=5", 400);
  const char *extra[] = {"--count", "400", NULL};
  json_t *f = run_worker(q, 0, extra);
  assert_int_equal(pu_int(f, "counters.finished"), 400);
  assert_int_equal(pu_int(f, "counters.probes"), 40);
  assert_int_equal(pu_int(f, "counters.inflight_map"), 0);
  if (interposing(f)) {
    assert_int_equal(pu_int(f, "residual.messages"), 400);
    assert_int_equal(pu_int(f, "residual.with_residual"), 0);
    assert_int_equal(pu_int(f, "residual.retained_bytes"), 0);
    assert_int_equal(pu_int(f, "residual.bytes_leaked"), 0);
    assert_int_equal(json_array_size(json_object_get(f, "verdicts")), 0);
  }
  json_decref(f);
  drop_queue(q);
}

static void test_leak_global_map(void **state) {
  const char *q = tb_qname("push.map");
  setup_queue(q, "", 300);
  const char *extra[] = {"--count", "300", "--leak", "global-map", NULL};
  json_t *f = run_worker(q, 1, extra);
  assert_int_equal(pu_int(f, "counters.finished"), 300);
  /* The bug itself, seen without the profiler: the map keeps every job. */
  assert_int_equal(pu_int(f, "counters.inflight_map"), 300);
  if (interposing(f)) expect_leak(f, "ack", "ok", "inflight_put");
  json_decref(f);
  drop_queue(q);
}

static void test_leak_probe_path(void **state) {
  const char *q = tb_qname("push.probe");
  setup_queue(q, "probe=25", 400);
  /* Handlers on worker threads this time. */
  const char *extra[] = {"--count",   "400", "--leak", "probe-path",
                         "--workers", "2",   NULL};
  json_t *f = run_worker(q, 1, extra);
  assert_int_equal(pu_int(f, "counters.finished"), 400);
  assert_int_equal(pu_int(f, "counters.probes"), 100);
  if (interposing(f)) {
    expect_leak(f, "ack", "probe", "job_new");
    /* Only the probes leak: one object each; the other jobs nothing. */
    assert_int_equal(pu_int(aggregate(f, "ack", "probe"), "leaked"), 100);
    assert_int_equal(pu_int(aggregate(f, "ack", "ok"), "retained_bytes"), 0);
  }
  json_decref(f);
  drop_queue(q);
}

static void test_leak_error_path(void **state) {
  const char *q = tb_qname("push.auth");
  setup_queue(q, "forbidden=25", 400);
  /* Worker threads: auth_new() runs on the HTTP sender's thread, attributed
   * to the message through sluice_delivery_enter()/leave(). */
  const char *extra[] = {"--count",   "400", "--leak", "error-path",
                         "--workers", "2",   NULL};
  json_t *f = run_worker(q, 1, extra);
  assert_int_equal(pu_int(f, "counters.finished"), 400);
  assert_int_equal(pu_int(f, "counters.auth_failed"), 100);
  assert_int_equal(pu_int(f, "counters.dead_lettered"), 100);
  if (interposing(f)) {
    expect_leak(f, "reject", "forbidden", "auth_new");
    json_t *ack = aggregate(f, "ack", "ok");
    assert_int_equal(pu_int(ack, "retained_bytes"), 0);
    assert_false(json_is_true(json_object_get(ack, "leaking")));
  }
  json_decref(f);
  drop_queue(q);
}

/* Cut the worker's connection (through a proxy) after each connect, up to
 * `cuts` times or until the worker reports a refused listener. */
static json_t *listener_run(const char *leak, int cuts, int *refusals) {
  const char *q = tb_qname("push.listen");
  setup_queue(q, "", 0);
  tproxy *px;
  assert_int_equal(tproxy_start(5672, &px), 0);
  char uri[128];
  tproxy_uri(px, uri, sizeof(uri));
  const char *args[] = {"--queue", q,        "--gateway",  gw_url,
                        "--uri",   uri,      "--stats-fd", "3",
                        "--quiet", "--leak", leak,         "--max-listeners",
                        "3",       NULL};
  pu_proc p;
  assert_int_equal(pu_spawn(&p, PW_WORKER, args, 0), 0);
  *refusals = 0;
  for (int i = 0; i <= cuts; i++) {
    json_t *ev = pu_next(&p, "event", NULL, WAIT_MS);
    assert_non_null(ev);
    const char *e = json_string_value(json_object_get(ev, "event"));
    if (strcmp(e, "listener_refused") == 0) {
      assert_string_equal(json_string_value(json_object_get(ev, "error")),
                          "SLUICE_ELIMIT");
      (*refusals)++;
      json_decref(ev);
      break;
    }
    if (strcmp(e, "connected") == 0 && i < cuts) tproxy_cut(px);
    else if (strcmp(e, "connected") != 0) i--; /* "closed": not a cycle */
    json_decref(ev);
  }
  kill(p.pid, SIGTERM);
  assert_int_equal(pu_wait(&p, WAIT_MS), 0);
  json_t *f = json_incref(p.final);
  pu_free(&p);
  tproxy_free(px);
  drop_queue(q);
  return f;
}

static void test_leak_listener(void **state) {
  int refusals;
  /* Capacity 3: connections 1-3 register, the 4th is refused. */
  json_t *f = listener_run("listener", 6, &refusals);
  assert_int_equal(refusals, 1);
  assert_true(pu_int(f, "listeners_refused") >= 1);
  assert_int_equal(pu_int(f, "counters.consumer.close_listeners"), 3);
  json_decref(f);
  /* The correct code: one listener per connection, removed with it. */
  f = listener_run("none", 4, &refusals);
  assert_int_equal(refusals, 0);
  assert_int_equal(pu_int(f, "listeners_refused"), 0);
  assert_int_equal(pu_int(f, "listeners_registered"), 5);
  assert_true(pu_int(f, "counters.consumer.close_listeners") <= 1);
  json_decref(f);
}

static void test_dead_letters(void **state) {
  const char *q = tb_qname("push.dlq");
  setup_queue(q, "bad=25,missing=25,badtype=25,gone=25", 100);
  const char *extra[] = {"--count", "100", NULL};
  json_t *f = run_worker(q, 0, extra);
  assert_int_equal(pu_int(f, "counters.dead_lettered"), 100);
  assert_int_equal(pu_int(f, "counters.consumer.rejected"), 100);
  json_decref(f);
  assert_int_equal(tb_depth_eventually(q, 0, 5000), 0);
  char dlq[256];
  pu_msg m[100];
  size_t n = pu_drain(pw_dlq_name(q, dlq, sizeof(dlq)), m, 100, 30);
  assert_int_equal(n, 100);
  unsigned seen[4] = {0};
  for (size_t i = 0; i < n; i++) {
    assert_string_equal(m[i].origin, q);
    assert_int_equal(m[i].attempts, 1);
    if (strcmp(m[i].type, "bad") == 0) {
      assert_non_null(strstr(m[i].reason, "invalid JSON"));
      assert_int_equal(m[i].status, 0);
      seen[0]++;
    } else if (strcmp(m[i].type, "missing") == 0) {
      assert_string_equal(m[i].reason, "missing field \"token\"");
      seen[1]++;
    } else if (strcmp(m[i].type, "badtype") == 0) {
      assert_string_equal(m[i].reason, "field \"title\" is not a string");
      seen[2]++;
    } else {
      assert_string_equal(m[i].type, "gone");
      assert_string_equal(m[i].reason, "gateway 410");
      assert_int_equal(m[i].status, 410);
      seen[3]++;
    }
  }
  for (int k = 0; k < 4; k++) assert_int_equal(seen[k], 25);
  drop_queue(q);
}

static void test_gateway_500(void **state) {
  const char *q = tb_qname("push.fail");
  setup_queue(q, "fail=100", 20);
  pw_gateway_stats before, after;
  pw_gateway_stats_get(gw, &before);
  const char *extra[] = {
      "--count", "20", "--max-attempts", "3", "--retry-delay-ms", "0", NULL};
  json_t *f = run_worker(q, 0, extra);
  pw_gateway_stats_get(gw, &after);
  /* Each job: two requeues (the quorum queue counts them), then the
   * dead-letter queue. */
  assert_int_equal(after.c500 - before.c500, 60);
  assert_int_equal(pu_int(f, "counters.failed_5xx"), 60);
  assert_int_equal(pu_int(f, "counters.retried"), 40);
  assert_int_equal(pu_int(f, "counters.consumer.nacked"), 40);
  assert_int_equal(pu_int(f, "counters.consumer.redelivered"), 40);
  assert_int_equal(pu_int(f, "counters.dead_lettered"), 20);
  json_decref(f);
  assert_int_equal(tb_depth_eventually(q, 0, 5000), 0);
  char dlq[256];
  pu_msg m[20];
  assert_int_equal(pu_drain(pw_dlq_name(q, dlq, sizeof(dlq)), m, 20, 30), 20);
  for (int i = 0; i < 20; i++) {
    assert_string_equal(m[i].reason, "gateway 500 after 3 attempts");
    assert_int_equal(m[i].status, 500);
    assert_int_equal(m[i].attempts, 3);
  }
  drop_queue(q);
}

/* SIGTERM once `after` jobs are done: what was acknowledged plus what is
 * still queued must be exactly what was published. */
static void graceful(const char *ack, const char *workers) {
  const unsigned total = 3000;
  const char *q = tb_qname("push.stop");
  setup_queue(q, "", total);
  const char *args[] = {"--queue",    q,
                        "--gateway",  gw_url,
                        "--stats-fd", "3",
                        "--quiet",    "--stats-interval-ms",
                        "20",         "--ack",
                        ack,          "--workers",
                        workers,      "--prefetch",
                        "50",         NULL};
  pu_proc p;
  assert_int_equal(pu_spawn(&p, PW_WORKER, args, 0), 0);
  for (;;) {
    json_t *s = pu_next(&p, "sample", NULL, WAIT_MS);
    assert_non_null(s);
    long long done = pu_int(s, "counters.finished");
    json_decref(s);
    if (done >= 300) break;
  }
  kill(p.pid, SIGTERM);
  assert_int_equal(pu_wait(&p, WAIT_MS), 0);
  json_t *f = p.final;
  assert_non_null(f);
  long long acked = pu_int(f, "counters.consumer.acked");
  long long ok = pu_int(f, "counters.ok");
  fprintf(stderr, "graceful stop (%s ack, %s workers): %lld acked of %u\n", ack,
          workers, acked, total);
  assert_true(acked >= 300);
  /* Manual ack: the rest is still queued. AutoAck: the broker may already
   * have pushed everything into the socket buffers before the stop; then
   * the stop must process all of it (it is no longer in the queue). */
  if (strcmp(ack, "manual") == 0) assert_true(acked < total);
  assert_int_equal(ok, acked); /* every ack is a 2xx, nothing else */
  assert_int_equal(pu_int(f, "counters.consumer.nacked"), 0);
  assert_int_equal(pu_int(f, "counters.stale"), 0);
  uint32_t left = tb_depth_eventually(q, total - (uint32_t)acked, 10000);
  assert_int_equal((long long)left + acked, total);
  pu_free(&p);
  drop_queue(q);
}

static void test_graceful_stop_manual(void **state) {
  graceful("manual", "0");
}
static void test_graceful_stop_auto(void **state) {
  graceful("auto", "2");
}

int main(void) {
  tb_require_broker("test_push_worker");
  signal(SIGPIPE, SIG_IGN);
  pw_gateway_opts go = {.latency_ms = 1};
  if (pw_gateway_start(&go, &gw)) return 1;
  pw_gateway_url(gw, gw_url, sizeof(gw_url));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_none_is_clean),
      cmocka_unit_test(test_leak_global_map),
      cmocka_unit_test(test_leak_probe_path),
      cmocka_unit_test(test_leak_error_path),
      cmocka_unit_test(test_leak_listener),
      cmocka_unit_test(test_dead_letters),
      cmocka_unit_test(test_gateway_500),
      cmocka_unit_test(test_graceful_stop_manual),
      cmocka_unit_test(test_graceful_stop_auto),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  pw_gateway_stop(gw);
  return rc;
}
