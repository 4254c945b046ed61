/* SPDX-License-Identifier: MIT */
/* The debug endpoint without a broker: every path, `go tool pprof` over
 * HTTP, diffs over ?seconds and against snapshots, authentication, request
 * bounds, slow and vanishing clients, the Prometheus text, and the server's
 * memory staying out of message scopes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <zlib.h>

#include <sluice/debug.h>
#include <sluice/profiling.h>

#include "http_client.h"

#if defined(__clang__)
#define T_NOINLINE __attribute__((noinline))
#else
#define T_NOINLINE __attribute__((noinline, noclone))
#endif

/* Under ASan/TSan the profiler cannot replace malloc: blocks the tests want
 * to see are announced (the stack recorded is the caller's, as with malloc).
 */
__attribute__((always_inline)) static inline void *t_alloc(size_t n) {
  void *p = malloc(n);
  if (p && !sluice_prof_interposing()) sluice_prof_note_alloc(p, n);
  return p;
}

static void t_free(void *p) {
  if (!sluice_prof_interposing()) sluice_prof_note_free(p);
  free(p);
}

static sluice_debug_server *srv;
static int port;
static char tmpdir[64];

/* ------------------------------------------------------------------------ */
/* Helpers. */

/* GET and check the status and the start of the content type. */
static void expect(const char *path, int status, const char *ctype,
                   hresp *out) {
  hresp r;
  int got = h_get(port, path, NULL, &r);
  if (got != status)
    fail_msg("GET %s: status %d, want %d\n%s%s", path, got, status,
             r.head ? r.head : "", r.body ? r.body : "");
  if (ctype) {
    const char *ct = h_header(&r, "Content-Type");
    if (!ct || strncmp(ct, ctype, strlen(ctype)))
      fail_msg("GET %s: Content-Type %s, want %s", path, ct ? ct : "(none)",
               ctype);
  }
  if (out) *out = r;
  else h_free(&r);
}

/* 1 if `data` is a complete gzip stream with a non-empty payload. */
static int gunzips(const void *data, size_t len) {
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, 15 + 16) != Z_OK) return 0;
  unsigned char out[65536];
  size_t total = 0;
  z.next_in = (Bytef *)(uintptr_t)data;
  z.avail_in = (uInt)len;
  int rc;
  do {
    z.next_out = out;
    z.avail_out = sizeof out;
    rc = inflate(&z, Z_NO_FLUSH);
    total += sizeof out - z.avail_out;
  } while (rc == Z_OK);
  inflateEnd(&z);
  return rc == Z_STREAM_END && total > 0;
}

static json_t *get_json_at(int p, const char *path) {
  hresp r;
  if (h_get(p, path, NULL, &r) != 200)
    fail_msg("GET %s: status %d", path, r.status);
  const char *ct = h_header(&r, "Content-Type");
  if (!ct || strcmp(ct, "application/json"))
    fail_msg("GET %s: Content-Type %s", path, ct ? ct : "(none)");
  json_error_t err;
  json_t *j = json_loads(r.body, 0, &err);
  if (!j)
    fail_msg("%s is not JSON: %s (line %d)\n%s", path, err.text, err.line,
             r.body);
  h_free(&r);
  return j;
}

static json_t *get_json(const char *path) {
  return get_json_at(port, path);
}

static json_int_t vars_int_at(int p, const char *obj, const char *key) {
  json_t *j = get_json_at(p, "/debug/vars");
  json_t *v = json_object_get(json_object_get(j, obj), key);
  assert_true(json_is_integer(v));
  json_int_t n = json_integer_value(v);
  json_decref(j);
  return n;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Waits until the server reports `want` ?seconds requests waiting. The
 * server's own count is the only sign that it has taken the first
 * snapshot, so ask it (each answer is a round trip through its loop). */
static void wait_pending_at(int p, json_int_t want, int within_ms) {
  uint64_t end = now_ms() + (uint64_t)within_ms;
  json_int_t n;
  while ((n = vars_int_at(p, "debug_server", "pending")) != want) {
    if (now_ms() > end)
      fail_msg("pending is %lld, want %lld after %d ms", (long long)n,
               (long long)want, within_ms);
    struct timespec ts = {0, 2 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

static void wait_pending(json_int_t want, int within_ms) {
  wait_pending_at(port, want, within_ms);
}

static json_int_t vars_int(const char *obj, const char *key) {
  return vars_int_at(port, obj, key);
}

/* Sends a request on a new connection and returns it without reading. */
static int send_get_at(int p, const char *path) {
  int fd = h_connect(p);
  assert_true(fd >= 0);
  char req[512];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Connection: close\r\n\r\n",
                   path);
  assert_int_equal(h_send(fd, req, (size_t)n), 0);
  return fd;
}

static int send_get(const char *path) {
  return send_get_at(port, path);
}

/* Missing tools skip, or fail when SLUICE_REQUIRE_BROKER=1 (CI). */
static char *need_tool(const char *prog, const char *package,
                       const char *what) {
  char *path = h_which(prog);
  if (!path) {
    const char *req = getenv("SLUICE_REQUIRE_BROKER");
    if (req && !strcmp(req, "1"))
      fail_msg("%s not found in PATH (required in CI: scripts/setup.sh "
               "installs %s)",
               prog, package);
    print_message("SKIP: %s not found in PATH: %s not tested\n", prog, what);
  }
  return path;
}

static char *need_go(void) {
  return need_tool("go", "golang-go", "go tool pprof");
}

/* `go tool pprof -top <args> URL`, asserting exit 0; output malloc'd. */
static char *go_pprof(const char *go, const char *arg, const char *path) {
  char url[256], home[128], cache[128], gopath[128], ptmp[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
  snprintf(home, sizeof home, "HOME=%s", tmpdir);
  snprintf(cache, sizeof cache, "GOCACHE=%s/cache", tmpdir);
  snprintf(gopath, sizeof gopath, "GOPATH=%s/gopath", tmpdir);
  snprintf(ptmp, sizeof ptmp, "PPROF_TMPDIR=%s", tmpdir);
  char *env[] = {home, cache, gopath, ptmp, "GOFLAGS=", NULL};
  char *argv[8];
  int k = 0;
  argv[k++] = (char *)go;
  argv[k++] = "tool";
  argv[k++] = "pprof";
  argv[k++] = "-top";
  if (arg) argv[k++] = (char *)arg;
  argv[k++] = url;
  argv[k] = NULL;
  char *out = NULL;
  int rc = h_run(argv, env, &out);
  if (rc != 0)
    fail_msg("go tool pprof %s exited %d:\n%s", url, rc, out ? out : "");
  return out;
}

/* ------------------------------------------------------------------------ */
/* Named allocation sites. */

static void *held[20];

T_NOINLINE static void dbg_hold_memory(void) {
  if (held[0]) return; /* once: the blocks stay live to the end */
  for (int i = 0; i < 20; i++) {
    held[i] = t_alloc(4096);
    memset(held[i], i, 4096);
  }
}

static void *grown[10];

T_NOINLINE static void dbg_grow_in_window(void) {
  assert_null(grown[0]);
  for (int i = 0; i < 10; i++) {
    grown[i] = t_alloc(3000);
    memset(grown[i], i, 3000);
  }
}

static void *later[10];

T_NOINLINE static void dbg_grow_after_snapshot(void) {
  assert_null(later[0]);
  for (int i = 0; i < 10; i++) {
    later[i] = t_alloc(5000);
    memset(later[i], i, 5000);
  }
}

static void *kept[16];
static int n_kept;

/* A handler that keeps its context when it nacks: the residual to find. */
T_NOINLINE static int dbg_leaky_handler(int i) {
  char *ctx = t_alloc(64);
  memset(ctx, i, 64);
  if (i % 2) {
    kept[n_kept++] = ctx;
    return SLUICE_NACK;
  }
  t_free(ctx);
  return SLUICE_ACK;
}

/* ------------------------------------------------------------------------ */
/* Fixtures. */

static int start_server(void **state) {
  (void)state;
  sluice_debug_opts o = {.addr = "127.0.0.1:0"};
  if (sluice_debug_server_new(&o, &srv)) return -1;
  port = sluice_debug_server_port(srv);
  return port > 0 ? 0 : -1;
}

static int stop_server(void **state) {
  (void)state;
  sluice_debug_server_free(srv);
  srv = NULL;
  return 0;
}

static int start_profiler(void **state) {
  sluice_prof_opts o = {.sample_rate = 1, .grace_ms = -1};
  if (sluice_prof_start(&o)) return -1;
  return start_server(state);
}

/* ------------------------------------------------------------------------ */
/* Before the profiler starts: valid, empty profiles that say so. */

static void test_profiler_off(void **state) {
  (void)state;
  assert_false(sluice_prof_running());
  hresp r;
  expect("/debug/pprof/heap", 200, "application/octet-stream", &r);
  assert_true(gunzips(r.body, r.body_len));
  assert_non_null(h_header(&r, "X-Sluice-Profiler"));
  assert_non_null(strstr(h_header(&r, "X-Sluice-Profiler"), "stopped"));
  h_free(&r);
  expect("/debug/pprof/heap?debug=1", 200, "text/plain", &r);
  assert_non_null(strstr(r.body, "heap profile:"));
  assert_non_null(strstr(r.body, "# Profiler = not running"));
  h_free(&r);
  expect("/debug/pprof/residual", 200, "application/octet-stream", &r);
  assert_true(gunzips(r.body, r.body_len));
  h_free(&r);
  expect("/debug/pprof/residual?debug=1", 200, "text/plain", NULL);
  expect("/debug/pprof/snapshot", 200, "text/plain", NULL);
  expect("/debug/pprof/heap?base=1", 200, "application/octet-stream", NULL);
  expect("/metrics", 200, "text/plain; version=0.0.4", &r);
  assert_non_null(strstr(r.body, "\nsluice_profiler_running 0\n"));
  assert_null(strstr(r.body, "sluice_deliveries_total")); /* no consumer */
  h_free(&r);
  json_t *j = get_json("/debug/vars");
  assert_true(json_is_false(
      json_object_get(json_object_get(j, "profiler"), "running")));
  assert_true(json_is_null(json_object_get(j, "consumer")));
  json_decref(j);

  char *go = need_go();
  if (go) {
    char *out = go_pprof(go, NULL, "/debug/pprof/heap");
    assert_non_null(strstr(out, "Type: inuse_space"));
    free(out);
    free(go);
  }
}

/* ------------------------------------------------------------------------ */
/* With the profiler running. */

static void test_paths(void **state) {
  (void)state;
  hresp r;
  expect("/debug/pprof/", 200, "text/plain", NULL);
  expect("/debug/pprof", 200, "text/plain", NULL);
  expect("/debug/pprof/heap", 200, "application/octet-stream", &r);
  assert_true(gunzips(r.body, r.body_len));
  assert_non_null(strstr(h_header(&r, "X-Sluice-Profiler"), "running"));
  h_free(&r);

  /* The text form, with MemStats at the very bottom as Go writes it. */
  expect("/debug/pprof/heap?debug=1", 200, "text/plain", &r);
  assert_true(!strncmp(r.body, "heap profile:", 13));
  char *maps = strstr(r.body, "\nMAPPED_LIBRARIES:\n");
  char *ms = strstr(r.body, "\n# MemStats\n");
  assert_non_null(maps);
  assert_non_null(ms);
  assert_true(ms > maps);
  assert_non_null(strstr(ms, "# HeapAlloc = "));
  assert_non_null(strstr(ms, "# Profiler = running"));
  h_free(&r);

  expect("/debug/pprof/heap?format=top&sample_index=alloc_space", 200,
         "text/plain", NULL);
  expect("/debug/pprof/heap?format=folded", 200, "text/plain", NULL);
  expect("/debug/pprof/residual", 200, "application/octet-stream", &r);
  assert_true(gunzips(r.body, r.body_len));
  h_free(&r);
  expect("/debug/pprof/residual?debug=1", 200, "text/plain", &r);
  assert_non_null(strstr(r.body, "residual report"));
  assert_non_null(strstr(r.body, "\n# MemStats\n"));
  h_free(&r);
  expect("/debug/pprof/residual?format=top&outcome=ack,nack&queue=x", 200,
         "text/plain", NULL);

  expect("/debug/vars", 200, "application/json", NULL);
  expect("/metrics", 200, "text/plain; version=0.0.4", NULL);
  expect("/healthz", 200, "text/plain", &r);
  assert_string_equal(r.body, "ok\n");
  h_free(&r);

  /* Bad parameters. */
  expect("/debug/pprof/heap?debug=x", 400, "text/plain", NULL);
  expect("/debug/pprof/heap?seconds=0", 400, "text/plain", NULL);
  expect("/debug/pprof/heap?seconds=100000", 400, "text/plain", NULL);
  expect("/debug/pprof/heap?seconds=-1", 400, "text/plain", NULL);
  expect("/debug/pprof/heap?seconds=1&base=1", 400, "text/plain", NULL);
  expect("/debug/pprof/heap?sample_index=residual_space", 400, NULL, NULL);
  expect("/debug/pprof/heap?format=report", 400, NULL, NULL);
  expect("/debug/pprof/residual?outcome=maybe", 400, NULL, NULL);
  expect("/debug/pprof/heap?queue=q", 400, NULL, NULL);
  expect("/debug/pprof/heap?base=99999", 404, "text/plain", NULL);

  /* Unknown paths and other methods. */
  expect("/", 404, "text/plain", NULL);
  expect("/debug/pprof/goroutine", 404, "text/plain", NULL);
  expect("/metrics/", 404, NULL, NULL);
  const char *methods[] = {"POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"};
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    int st = h_request(port, methods[i], "/debug/vars", NULL, &r);
    if (st != 405) fail_msg("%s: status %d, want 405", methods[i], st);
    assert_string_equal(h_header(&r, "Allow"), "GET");
    h_free(&r);
  }

  /* No token: only a loopback Host (DNS rebinding). */
  assert_int_equal(h_get(port, "/debug/vars", "Host: attacker.example\r\n", &r),
                   403);
  h_free(&r);
}

static void test_go_tool_pprof(void **state) {
  (void)state;
  char *go = need_go();
  if (!go) skip();
  dbg_hold_memory();
  char *out = go_pprof(go, NULL, "/debug/pprof/heap");
  assert_non_null(strstr(out, "Type: inuse_space"));
  if (!strstr(out, "dbg_hold_memory"))
    fail_msg("dbg_hold_memory not in the heap profile:\n%s", out);
  free(out);
  out = go_pprof(go, "-sample_index=alloc_objects", "/debug/pprof/heap");
  assert_non_null(strstr(out, "Type: alloc_objects"));
  free(out);

  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  for (int i = 0; i < 8; i++) {
    sluice_delivery_info info = {
        "orders", (uint64_t)i + 1, 1, (uint64_t)i + 1, 0, NULL, NULL};
    void *tok = hk->begin(hk->user, &info);
    int outcome = dbg_leaky_handler(i);
    hk->suspend(hk->user, tok);
    hk->end(hk->user, tok, &info, outcome);
  }
  out = go_pprof(go, "-tagfocus=outcome=nack", "/debug/pprof/residual");
  assert_non_null(strstr(out, "Type: residual_space"));
  if (!strstr(out, "dbg_leaky_handler"))
    fail_msg("dbg_leaky_handler not in the residual profile:\n%s", out);
  free(out);
  free(go);
}

static void test_seconds_diff(void **state) {
  (void)state;
  dbg_hold_memory(); /* before the window: not in the diff */
  int fd = send_get("/debug/pprof/heap?seconds=1&format=top&rows=1000");
  wait_pending(1, 10000);
  /* Other requests are served while that one waits. */
  expect("/healthz", 200, "text/plain", NULL);
  dbg_grow_in_window();
  hresp r;
  assert_int_equal(h_read(fd, &r), 0);
  close(fd);
  assert_int_equal(r.status, 200);
  if (!strstr(r.body, "dbg_grow_in_window"))
    fail_msg("dbg_grow_in_window not in the diff:\n%s", r.body);
  if (strstr(r.body, "dbg_hold_memory"))
    fail_msg("dbg_hold_memory (unchanged) in the diff:\n%s", r.body);
  h_free(&r);
  wait_pending(0, 1000);

  /* The same over pprof. */
  char *go = need_go();
  if (go) {
    char *out = go_pprof(go, NULL, "/debug/pprof/heap?seconds=1");
    assert_non_null(strstr(out, "Type: inuse_space"));
    free(out);
    free(go);
  }
}

static void test_base_diff(void **state) {
  (void)state;
  hresp r;
  expect("/debug/pprof/snapshot", 200, "text/plain", &r);
  unsigned long long id = strtoull(r.body, NULL, 10);
  assert_true(id > 0);
  h_free(&r);
  dbg_grow_after_snapshot();
  char path[128];
  snprintf(path, sizeof path,
           "/debug/pprof/heap?base=%llu&format=top&rows=1000", id);
  expect(path, 200, "text/plain", &r);
  if (!strstr(r.body, "dbg_grow_after_snapshot"))
    fail_msg("dbg_grow_after_snapshot not in the diff:\n%s", r.body);
  assert_null(strstr(r.body, "dbg_hold_memory"));
  h_free(&r);
  snprintf(path, sizeof path, "/debug/pprof/heap?base=%llu", id);
  expect(path, 200, "application/octet-stream", &r);
  assert_true(gunzips(r.body, r.body_len));
  h_free(&r);

  /* Only the last max_snapshots (8) are kept. */
  for (int i = 0; i < 8; i++)
    expect("/debug/pprof/snapshot", 200, "text/plain", NULL);
  snprintf(path, sizeof path, "/debug/pprof/heap?base=%llu", id);
  expect(path, 404, "text/plain", NULL);
  assert_int_equal(vars_int("debug_server", "snapshots"), 8);
}

static void test_seconds_bounds(void **state) {
  (void)state;
  /* A client that leaves while its profile is pending frees it at once. */
  int fd = send_get("/debug/pprof/heap?seconds=60");
  wait_pending(1, 10000);
  close(fd);
  wait_pending(0, 10000);

  /* At most 4 wait at once; the next is refused, not queued. */
  int fds[4];
  for (int i = 0; i < 4; i++) fds[i] = send_get("/debug/pprof/heap?seconds=60");
  wait_pending(4, 10000);
  hresp r;
  assert_int_equal(h_get(port, "/debug/pprof/heap?seconds=1", NULL, &r), 503);
  assert_non_null(h_header(&r, "Retry-After"));
  h_free(&r);
  for (int i = 0; i < 4; i++) close(fds[i]);
  wait_pending(0, 10000);
}

/* ------------------------------------------------------------------------ */
/* Prometheus text (the checker is h_prom_check() in http_client.c). */

static void test_metrics(void **state) {
  (void)state;
  /* Deliveries on a queue whose name needs escaping. */
  const char *q = "dbg\"q\\x";
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  for (int i = 0; i < 6; i++) {
    sluice_delivery_info info = {
        q, (uint64_t)i + 1, 1, (uint64_t)i + 100, 0, NULL, NULL};
    void *tok = hk->begin(hk->user, &info);
    int outcome = dbg_leaky_handler(i);
    hk->suspend(hk->user, tok);
    hk->end(hk->user, tok, &info, outcome);
  }
  /* A name that is not UTF-8 (AMQP names are bytes): Prometheus refuses
   * such label values and would fail the whole scrape. */
  const char *bad = "dbg\xff\xc3(";
  for (int i = 0; i < 4; i += 2) {
    sluice_delivery_info info = {
        bad, (uint64_t)i + 1, 1, (uint64_t)i + 200, 0, NULL, NULL};
    void *tok = hk->begin(hk->user, &info);
    int outcome = dbg_leaky_handler(i);
    hk->suspend(hk->user, tok);
    hk->end(hk->user, tok, &info, outcome);
  }
  hresp r;
  expect("/metrics", 200, "text/plain; version=0.0.4", &r);
  const char *err = h_prom_check(r.body);
  if (err) fail_msg("/metrics: %s\n%s", err, r.body);
  char *promtool =
      need_tool("promtool", "prometheus", "promtool check metrics");
  if (promtool) {
    char *out = NULL;
    int rc = h_promtool_check_metrics(promtool, r.body, tmpdir, &out);
    if (rc != 0)
      fail_msg("promtool check metrics exited %d:\n%s\n%s", rc, out ? out : "",
               r.body);
    free(out);
    free(promtool);
  }
  const char *want[] = {
      "\nsluice_residual_messages_total{queue=\"dbg\\\\xFF\\\\xC3(\","
      "outcome=\"ack\"} 2\n",
      "# TYPE sluice_build_info gauge\n",
      "\nsluice_profiler_sample_rate_bytes 1\n",
      "# TYPE sluice_residual_bytes_per_message gauge\n",
      "\nsluice_residual_messages_total{queue=\"dbg\\\"q\\\\x\","
      "outcome=\"nack\"} 3\n",
      "\nsluice_residual_messages_total{queue=\"dbg\\\"q\\\\x\","
      "outcome=\"ack\"} 3\n",
      "\nsluice_residual_bytes_total{queue=\"dbg\\\"q\\\\x\","
      "outcome=\"nack\"} 192\n",
      "\nsluice_residual_bytes_total{queue=\"dbg\\\"q\\\\x\","
      "outcome=\"ack\"} 0\n",
      "\nsluice_profiler_running 1\n",
      "# TYPE process_resident_memory_bytes gauge\n",
      "# TYPE sluice_heap_live_bytes gauge\n",
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(r.body, want[i]))
      fail_msg("/metrics lacks %s\n%s", want[i], r.body);
  h_free(&r);

  json_t *j = get_json("/debug/vars");
  json_t *res = json_object_get(j, "residual");
  assert_true(json_is_array(res));
  int found = 0;
  for (size_t i = 0; i < json_array_size(res); i++) {
    json_t *e = json_array_get(res, i);
    if (!strcmp(json_string_value(json_object_get(e, "queue")), q) &&
        !strcmp(json_string_value(json_object_get(e, "outcome")), "nack")) {
      assert_int_equal(json_integer_value(json_object_get(e, "messages")), 3);
      assert_int_equal(json_integer_value(json_object_get(e, "bytes_at_end")),
                       192);
      found = 1;
    }
  }
  assert_true(found);
  /* The same spelling as the label: JSON strings must be UTF-8 too. */
  found = 0;
  for (size_t i = 0; i < json_array_size(res); i++)
    if (!strcmp(json_string_value(
                    json_object_get(json_array_get(res, i), "queue")),
                "dbg\\xFF\\xC3("))
      found = 1;
  assert_true(found);
  assert_true(json_integer_value(json_object_get(json_object_get(j, "memstats"),
                                                 "rss_bytes")) > 0);
  json_decref(j);
}

/* ------------------------------------------------------------------------ */
/* Security and robustness. */

static void test_remote_needs_token(void **state) {
  (void)state;
  sluice_debug_server *s = NULL;
  struct {
    sluice_debug_opts o;
    const char *why;
  } bad[] = {
      {{.addr = "0.0.0.0:0"}, "remote, no allow_remote, no token"},
      {{.addr = "0.0.0.0:0", .allow_remote = 1}, "remote without a token"},
      {{.addr = "0.0.0.0:0", .token = "abc"}, "token without allow_remote"},
      {{.addr = ":0", .allow_remote = 1}, "every interface, no token"},
      {{.addr = "[::]:0", .allow_remote = 1}, "IPv6 any, no token"},
      {{.addr = "0.0.0.0:0", .allow_remote = 1, .token = ""}, "empty token"},
      {{.addr = "127.0.0.1:0", .token = "has space"}, "token with a space"},
      {{.addr = "127.0.0.1"}, "no port"},
      {{.addr = "127.0.0.1:65536"}, "port out of range"},
      {{.addr = "127.0.0.1:x"}, "port not a number"},
      {{.addr = "example.com:6060"}, "a name to resolve"},
      {{.addr = "[::1:0"}, "unclosed bracket"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = sluice_debug_server_new(&bad[i].o, &s);
    if (rc != SLUICE_EINVAL)
      fail_msg("%s (%s): %s, want SLUICE_EINVAL", bad[i].why, bad[i].o.addr,
               sluice_err_name(rc));
    assert_null(s);
  }
  assert_int_equal(sluice_debug_server_new(NULL, NULL), SLUICE_EINVAL);
  sluice_debug_server_free(NULL);

  /* The port in use: a socket error, not a crash. */
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  sluice_debug_opts same = {.addr = addr};
  assert_int_equal(sluice_debug_server_new(&same, &s), SLUICE_ESOCKET);

  /* Every interface with a token: requests need it. */
  const char *tok = "s3cret-Token_1";
  sluice_debug_opts o = {.addr = "0.0.0.0:0", .allow_remote = 1, .token = tok};
  assert_int_equal(sluice_debug_server_new(&o, &s), 0);
  int p = sluice_debug_server_port(s);
  hresp r;
  assert_int_equal(h_get(p, "/healthz", NULL, &r), 401);
  assert_non_null(h_header(&r, "WWW-Authenticate"));
  h_free(&r);
  const char *wrong[] = {
      "Authorization: Bearer wrong\r\n",
      "Authorization: Bearer s3cret-Token_\r\n",
      "Authorization: Bearer s3cret-Token_12\r\n",
      "Authorization: Bearer s3cret-token_1\r\n",
      "Authorization: Basic s3cret-Token_1\r\n",
      "Authorization: Bearers3cret-Token_1\r\n",
      "Authorization: s3cret-Token_1\r\n",
  };
  for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
    if (h_get(p, "/debug/vars", wrong[i], &r) != 401)
      fail_msg("%s: status %d, want 401", wrong[i], r.status);
    h_free(&r);
  }
  /* Even unknown paths and other methods answer 401 first. */
  assert_int_equal(h_get(p, "/nope", NULL, &r), 401);
  h_free(&r);
  assert_int_equal(h_request(p, "POST", "/metrics", NULL, &r), 401);
  h_free(&r);
  assert_int_equal(h_get(p, "/debug/vars",
                         "Authorization: Bearer s3cret-Token_1\r\n", &r),
                   200);
  h_free(&r);
  assert_int_equal(h_get(p, "/healthz",
                         "Authorization: bearer  s3cret-Token_1 \r\n", &r),
                   200);
  h_free(&r);
  /* With a token, any Host will do (the server is meant to be remote). */
  assert_int_equal(h_get(p, "/healthz",
                         "Host: debug.example\r\n"
                         "Authorization: Bearer s3cret-Token_1\r\n",
                         &r),
                   200);
  h_free(&r);
  sluice_debug_server_free(s);

  /* A token on loopback is demanded too. */
  sluice_debug_opts lo = {.addr = "localhost:0", .token = tok};
  assert_int_equal(sluice_debug_server_new(&lo, &s), 0);
  assert_int_equal(h_get(sluice_debug_server_port(s), "/healthz", NULL, &r),
                   401);
  h_free(&r);
  sluice_debug_server_free(s);
}

static void test_oversized(void **state) {
  (void)state;
  hresp r;
  /* Headers over the default 8192 bytes. */
  size_t big = 20000;
  char *hdr = malloc(big + 16);
  memcpy(hdr, "X-Big: ", 7);
  memset(hdr + 7, 'a', big);
  memcpy(hdr + 7 + big, "\r\n", 3);
  int st = h_get(port, "/healthz", hdr, &r);
  h_free(&r);
  if (st != 413 && st != 400 && st != 0)
    fail_msg("oversized headers: status %d", st);
  /* A request line over the limit. */
  char *path = malloc(big + 32);
  strcpy(path, "/healthz?x=");
  memset(path + 11, 'b', big);
  path[11 + big] = 0;
  st = h_get(port, path, NULL, &r);
  h_free(&r);
  if (st != 413 && st != 414 && st != 400 && st != 0)
    fail_msg("oversized request line: status %d", st);
  /* A body: no path takes one. */
  st = h_request(port, "POST", "/healthz", "Content-Length: 100000\r\n", &r);
  h_free(&r);
  if (st != 413 && st != 400 && st != 0) fail_msg("body: status %d", st);
  /* Still serving. */
  expect("/healthz", 200, "text/plain", NULL);

  /* A smaller limit of the caller's. */
  sluice_debug_server *s;
  sluice_debug_opts o = {.addr = "127.0.0.1:0", .max_request_bytes = 1024};
  assert_int_equal(sluice_debug_server_new(&o, &s), 0);
  int p = sluice_debug_server_port(s);
  hdr[7 + 1500] = 0;
  strcat(hdr, "\r\n");
  st = h_get(p, "/healthz", hdr, &r);
  h_free(&r);
  if (st != 413 && st != 400 && st != 0) fail_msg("1.5 KB: status %d", st);
  hdr[7 + 300] = 0;
  strcat(hdr, "\r\n");
  assert_int_equal(h_get(p, "/healthz", hdr, &r), 200);
  h_free(&r);
  sluice_debug_server_free(s);
  free(hdr);
  free(path);
}

static void test_slow_clients(void **state) {
  (void)state;
  sluice_debug_server *s;
  sluice_debug_opts o = {.addr = "127.0.0.1:0", .timeout_s = 1};
  assert_int_equal(sluice_debug_server_new(&o, &s), 0);
  int p = sluice_debug_server_port(s);
  /* One connection that says nothing, one that stops mid-line. */
  int idle = h_connect(p), partial = h_connect(p);
  assert_true(idle >= 0 && partial >= 0);
  assert_int_equal(h_send(partial, "GET /heal", 9), 0);
  hresp r;
  for (int i = 0; i < 5; i++) {
    assert_int_equal(h_get(p, "/healthz", NULL, &r), 200);
    h_free(&r);
    assert_int_equal(h_get(p, "/metrics", NULL, &r), 200);
    h_free(&r);
  }
  /* The server drops both after its timeout: EOF (or a reset), well
   * before the client's own 15 s receive timeout. */
  char c;
  assert_true(recv(idle, &c, 1, 0) <= 0 && errno != EAGAIN);
  assert_true(recv(partial, &c, 1, 0) <= 0 && errno != EAGAIN);
  close(idle);
  close(partial);
  assert_int_equal(h_get(p, "/healthz", NULL, &r), 200);
  h_free(&r);
  /* Stopping with a ?seconds= request and a snapshot held frees both (the
   * sanitizer build checks for leaks). */
  int waiting = send_get_at(p, "/debug/pprof/heap?seconds=60");
  wait_pending_at(p, 1, 10000);
  assert_int_equal(h_get(p, "/debug/pprof/snapshot", NULL, &r), 200);
  h_free(&r);
  sluice_debug_server_free(s);
  assert_true(recv(waiting, &c, 1, 0) <= 0);
  close(waiting);
}

/* Clients that reset the connection while the reply is being written: the
 * write fails (EPIPE/ECONNRESET) on the server's thread, which takes no
 * signals, so no SIGPIPE ends the process. */
static void test_vanishing_clients(void **state) {
  (void)state;
  for (int i = 0; i < 30; i++) {
    int fd = send_get(i % 2 ? "/debug/pprof/heap?debug=1" : "/metrics");
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
  }
  expect("/healthz", 200, "text/plain", NULL);
  expect("/debug/pprof/heap", 200, "application/octet-stream", NULL);
}

/* The server's memory is never a message's residual: started from inside a
 * delivery's scope, none of it is counted there. */
static void test_outside_scopes(void **state) {
  (void)state;
  if (!sluice_prof_interposing()) {
    print_message("SKIP: this build cannot replace malloc (ASan/TSan): "
                  "scope accounting of the server's memory not tested\n");
    skip();
  }
  sluice_prof_scope sc = sluice_prof_scope_begin("dbg-scope", 1, 1);
  assert_true(sc != 0);
  sluice_prof_scope prev = sluice_prof_scope_enter(sc);
  sluice_debug_server *s;
  sluice_debug_opts o = {.addr = "127.0.0.1:0"};
  int rc = sluice_debug_server_new(&o, &s);
  sluice_prof_scope_enter(prev);
  assert_int_equal(rc, 0);
  int p = sluice_debug_server_port(s);
  /* The server thread allocates for each of these. */
  hresp r;
  const char *paths[] = {"/debug/vars",
                         "/metrics",
                         "/debug/pprof/heap",
                         "/debug/pprof/snapshot",
                         "/debug/pprof/heap?base=1",
                         "/healthz"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    assert_int_equal(h_get(p, paths[i], NULL, &r), 200);
    h_free(&r);
  }
  uint64_t bytes = 1, objects = 1;
  assert_int_equal(sluice_prof_scope_usage(sc, &bytes, &objects), 0);
  if (bytes || objects)
    fail_msg("the scope holds %llu bytes in %llu objects of the server's",
             (unsigned long long)bytes, (unsigned long long)objects);
  sluice_debug_server_free(s);
  assert_int_equal(sluice_prof_scope_end(sc, SLUICE_ACK, NULL), 0);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/sluice-debug-test-XXXXXX");
  if (!mkdtemp(tmpdir)) return 1;
  const struct CMUnitTest off[] = {
      cmocka_unit_test(test_profiler_off),
  };
  const struct CMUnitTest on[] = {
      cmocka_unit_test(test_paths),
      cmocka_unit_test(test_go_tool_pprof),
      cmocka_unit_test(test_seconds_diff),
      cmocka_unit_test(test_base_diff),
      cmocka_unit_test(test_seconds_bounds),
      cmocka_unit_test(test_metrics),
      cmocka_unit_test(test_remote_needs_token),
      cmocka_unit_test(test_oversized),
      cmocka_unit_test(test_slow_clients),
      cmocka_unit_test(test_vanishing_clients),
      cmocka_unit_test(test_outside_scopes),
  };
  int failed = cmocka_run_group_tests_name("profiler off", off, start_server,
                                           stop_server);
  failed += cmocka_run_group_tests_name("profiler on", on, start_profiler,
                                        stop_server);
  char *argv[] = {"rm", "-rf", tmpdir, NULL};
  char *out = NULL;
  h_run(argv, NULL, &out);
  free(out);
  for (int i = 0; i < 20; i++) t_free(held[i]);
  for (int i = 0; i < 10; i++) {
    t_free(grown[i]);
    t_free(later[i]);
  }
  for (int i = 0; i < n_kept; i++) t_free(kept[i]);
  return failed ? 1 : 0;
}
