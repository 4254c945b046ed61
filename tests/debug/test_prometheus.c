/* SPDX-License-Identifier: MIT */
/* /metrics as users run it: a real Prometheus (Debian `prometheus`) on
 * loopback scrapes the debug endpoint of a worker consuming from the real
 * broker with the profiler running, and the test asks Prometheus' HTTP API
 * what it saw:
 *  - rate() of the delivered and acked counters equals what the consumer's
 *    stats say over the same interval, for windows while messages flow;
 *  - the in-flight gauges at rest (deferred messages held, then released);
 *  - the residual families per queue and outcome: a leak planted on one
 *    queue shows there only, through the PromQL of docs/debug-endpoint.md
 *    and the alert of docs/prometheus/sluice-rules.yml.
 * Without `prometheus` in PATH the test skips (77), or fails when
 * SLUICE_REQUIRE_BROKER=1 (CI). The Prometheus it starts dies with it: it
 * is stopped at the end, from an atexit handler when a check fails, and by
 * the kernel (PR_SET_PDEATHSIG) when the test is killed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include <sluice/debug.h>
#include <sluice/profiling.h>

#include "common/broker_util.h"
#include "http_client.h"

#ifndef SLUICE_SOURCE_DIR
#error "SLUICE_SOURCE_DIR must name the source tree (the rules file)"
#endif
#define RULES_FILE SLUICE_SOURCE_DIR "/docs/prometheus/sluice-rules.yml"

#define WARMUP 40     /* messages per queue before the first rest */
#define FLOW 1200     /* messages while the rate is measured */
#define FLOW_RATE 150 /* published per second (the load's shape) */
#define HELD 5        /* deferred messages held across the rests */
#define HELD_BODY 100 /* their body size */
#define LEAK_BYTES 64 /* what each message of the leaky queue keeps */
#define WINDOW 5      /* scrape intervals per rate() window */
#define KEYED 40      /* keyed messages, twice */
#define MAX_READS 20000

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void pause_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- Prometheus, started and always stopped ------------------------------ */

static pid_t prom_pid;
static int prom_port;
static char prom_dir[64];

static void prom_kill(void) {
  if (prom_pid <= 0) return;
  pid_t pid = prom_pid;
  prom_pid = 0;
  kill(pid, SIGTERM);
  /* Wait for it (pidfd: an event, not a poll), at most 10 s, then KILL. */
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pfd >= 0) {
    struct pollfd p = {.fd = pfd, .events = POLLIN};
    if (poll(&p, 1, 10000) == 0) kill(pid, SIGKILL);
    close(pfd);
  } else {
    for (int i = 0; i < 500 && waitpid(pid, NULL, WNOHANG) == 0; i++)
      pause_ms(20);
    kill(pid, SIGKILL);
  }
  waitpid(pid, NULL, 0);
}

static void prom_cleanup(void) {
  prom_kill();
  if (prom_dir[0]) {
    char *argv[] = {"rm", "-rf", prom_dir, NULL};
    char *out = NULL;
    h_run(argv, NULL, &out);
    free(out);
    prom_dir[0] = 0;
  }
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
      getsockname(fd, (struct sockaddr *)&a, &len)) {
    if (fd >= 0) close(fd);
    return -1;
  }
  close(fd);
  return ntohs(a.sin_port);
}

static void print_prom_log(void) {
  char path[128];
  snprintf(path, sizeof path, "%s/prometheus.log", prom_dir);
  FILE *f = fopen(path, "r");
  if (!f) return;
  char line[512];
  fprintf(stderr, "---- %s\n", path);
  while (fgets(line, sizeof line, f)) fputs(line, stderr);
  fclose(f);
}

/* Start Prometheus on a free loopback port, scraping the debug endpoint on
 * `target` every second and evaluating the repository's rules. 0 when it
 * answers /-/ready. */
static int prom_start(const char *prometheus, int target) {
  char cfg[128], log[128], data[128], listen[64], a_cfg[160], a_data[160],
      a_listen[96];
  snprintf(cfg, sizeof cfg, "%s/prometheus.yml", prom_dir);
  snprintf(log, sizeof log, "%s/prometheus.log", prom_dir);
  snprintf(data, sizeof data, "%s/data", prom_dir);
  /* A port found free can be taken before Prometheus binds it: try again
   * with another (bounded). */
  for (int attempt = 0; attempt < 3; attempt++) {
    prom_port = free_port();
    if (prom_port < 0) return -1;
    FILE *f = fopen(cfg, "w");
    if (!f) return -1;
    fprintf(f,
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "rule_files:\n"
            "  - %s\n"
            "scrape_configs:\n"
            "  - job_name: sluice\n"
            "    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n"
            "  - job_name: prometheus\n"
            "    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n",
            RULES_FILE, target, prom_port);
    fclose(f);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", prom_port);
    snprintf(a_cfg, sizeof a_cfg, "--config.file=%s", cfg);
    snprintf(a_data, sizeof a_data, "--storage.tsdb.path=%s", data);
    snprintf(a_listen, sizeof a_listen, "--web.listen-address=%s", listen);
    char *argv[] = {(char *)prometheus, a_cfg, a_data, a_listen,
                    "--log.level=warn", NULL};
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
      /* Async-signal-safe calls only until exec. The kernel kills
       * Prometheus when this (main) thread of the test dies, whatever
       * kills it. */
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (nul >= 0) dup2(nul, 0);
      execv(prometheus, argv);
      _exit(127);
    }
    prom_pid = pid;
    /* Ready within 30 s, or it died (a taken port: try another). */
    for (int i = 0; i < 600; i++) {
      hresp r;
      int st = h_get(prom_port, "/-/ready", NULL, &r);
      h_free(&r);
      if (st == 200) return 0;
      if (waitpid(pid, NULL, WNOHANG) == pid) {
        prom_pid = 0;
        break;
      }
      pause_ms(50);
    }
    print_prom_log();
    prom_kill();
  }
  return -1;
}

/* ---- Prometheus' HTTP API ------------------------------------------------ */

static char *urlenc(const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  char *out = malloc(3 * strlen(s) + 1), *o = out;
  assert_non_null(out);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
        c == '~') {
      *o++ = (char)c;
    } else {
      *o++ = '%';
      *o++ = hex[c >> 4];
      *o++ = hex[c & 15];
    }
  }
  *o = 0;
  return out;
}

/* GET an API path; the "data" member of a successful answer (decref the
 * returned root, *data borrows from it). */
static json_t *api(const char *path, json_t **data) {
  hresp r;
  int st = h_get(prom_port, path, NULL, &r);
  if (st != 200) fail_msg("GET %s: %d\n%s", path, st, r.body ? r.body : "");
  json_error_t err;
  json_t *j = json_loads(r.body, 0, &err);
  if (!j) fail_msg("GET %s: not JSON (%s):\n%s", path, err.text, r.body);
  h_free(&r);
  const char *status = json_string_value(json_object_get(j, "status"));
  if (!status || strcmp(status, "success"))
    fail_msg("GET %s: status %s", path, status ? status : "?");
  *data = json_object_get(j, "data");
  return j;
}

/* An instant query, at `at_ms` (0: now). Returns the root; *result is the
 * result array (vector or matrix). */
static json_t *query(const char *promql, uint64_t at_ms, json_t **result) {
  char *q = urlenc(promql), *path = NULL;
  int n;
  if (at_ms)
    n = asprintf(&path, "/api/v1/query?query=%s&time=%" PRIu64 ".%03u", q,
                 at_ms / 1000, (unsigned)(at_ms % 1000));
  else n = asprintf(&path, "/api/v1/query?query=%s", q);
  assert_true(n > 0);
  json_t *data, *root = api(path, &data);
  free(q);
  free(path);
  *result = json_object_get(data, "result");
  assert_true(json_is_array(*result));
  return root;
}

static double num_of(json_t *v) {
  const char *s = json_string_value(v);
  if (!s) fail_msg("a sample value that is not a string");
  return strtod(s, NULL);
}

static uint64_t ms_of(json_t *t) {
  return (uint64_t)llround(json_number_value(t) * 1000.0);
}

/* The single value of an instant vector query; fails unless exactly one
 * series answers. */
static double query1(const char *promql, uint64_t at_ms) {
  json_t *res, *root = query(promql, at_ms, &res);
  if (json_array_size(res) != 1)
    fail_msg("%s: %zu series, want 1", promql, json_array_size(res));
  double v = num_of(
      json_array_get(json_object_get(json_array_get(res, 0), "value"), 1));
  json_decref(root);
  return v;
}

typedef struct sample {
  uint64_t ts;
  double v;
} sample;

/* The raw samples of one series over the last `range_s` seconds before
 * `at_ms` (a range selector answers them with their scrape timestamps).
 * Returns the count (at most `cap`); no series is 0 samples. */
static size_t raw_samples(const char *selector, int range_s, uint64_t at_ms,
                          sample *out, size_t cap) {
  char *promql = NULL;
  assert_true(asprintf(&promql, "%s[%ds]", selector, range_s) > 0);
  json_t *res, *root = query(promql, at_ms, &res);
  if (json_array_size(res) == 0) {
    json_decref(root);
    free(promql);
    return 0;
  }
  if (json_array_size(res) != 1)
    fail_msg("%s: %zu series, want 1", promql, json_array_size(res));
  json_t *vals = json_object_get(json_array_get(res, 0), "values");
  size_t n = 0;
  for (size_t i = 0; i < json_array_size(vals) && n < cap; i++) {
    json_t *p = json_array_get(vals, i);
    out[n].ts = ms_of(json_array_get(p, 0));
    out[n].v = num_of(json_array_get(p, 1));
    n++;
  }
  json_decref(root);
  free(promql);
  return n;
}

/* Wait until Prometheus holds a successful scrape of the endpoint that
 * started after `after_ms` (a scrape every second; bounded: 20 s). Returns
 * its timestamp. Prometheus may align a scrape's timestamp by up to 2 ms
 * (and truncates it to ms), hence the margin. A scrape that failed (a
 * machine too busy to answer within the 1 s timeout) is not an answer:
 * the next one is. */
static unsigned failed_scrapes;

static uint64_t scrape_after(uint64_t after_ms) {
  uint64_t seen = 0;
  for (int i = 0; i < 200; i++) {
    sample s[32];
    size_t n = raw_samples("up{job=\"sluice\"}", 5, 0, s, 32);
    for (size_t k = 0; k < n; k++) {
      if (s[k].ts <= after_ms + 3 || s[k].ts <= seen) continue;
      seen = s[k].ts;
      if (s[k].v == 1) return s[k].ts;
      failed_scrapes++;
      print_message("note: the scrape at %" PRIu64 " failed\n", s[k].ts);
    }
    pause_ms(100);
  }
  fail_msg("no successful scrape after %" PRIu64 " within 20 s", after_ms);
  return 0;
}

/* ---- the worker ---------------------------------------------------------- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void *leaks[WARMUP + FLOW];
static size_t n_leaks;
static sluice_delivery *held[HELD];
static size_t n_held;
static const char *q_clean, *q_leak, *q_held;

/* Clean: a per-message context, freed. Leaky: the same context, kept in a
 * global list (the field's "map nobody clears"). Held: deferred until the
 * test completes them. */
static int handler(sluice_delivery *d, const sluice_message *m, void *user) {
  (void)user;
  if (!strcmp(m->queue, q_held)) {
    pthread_mutex_lock(&mu);
    held[n_held++] = d;
    pthread_mutex_unlock(&mu);
    return SLUICE_DEFER;
  }
  char *ctx = malloc(LEAK_BYTES);
  assert_non_null(ctx);
  if (!sluice_prof_interposing()) sluice_prof_note_alloc(ctx, LEAK_BYTES);
  memcpy(ctx, m->body, m->body_len < LEAK_BYTES ? m->body_len : LEAK_BYTES);
  if (!strcmp(m->queue, q_leak)) {
    pthread_mutex_lock(&mu);
    leaks[n_leaks++] = ctx;
    pthread_mutex_unlock(&mu);
  } else {
    if (!sluice_prof_interposing()) sluice_prof_note_free(ctx);
    free(ctx);
  }
  return SLUICE_ACK;
}

static void *run_consumer(void *arg) {
  int timed_out = 0;
  tb_run_bounded(arg, 150, &timed_out);
  return NULL;
}

typedef struct flow {
  unsigned n;
  int rc;
} flow;

/* The load: FLOW messages alternating between the clean and the leaky
 * queue, at FLOW_RATE per second (paced: the shape of the load, not a wait
 * for an event). */
static void *publish_flow(void *arg) {
  flow *f = arg;
  sluice_publisher_opts o = {.uri = TEST_URI,
                             .connection_name = "test prometheus load"};
  sluice_publisher *p = NULL;
  f->rc = sluice_publisher_new(&o, &p);
  if (f->rc) return NULL;
  struct timespec next;
  clock_gettime(CLOCK_MONOTONIC, &next);
  char body[32];
  for (unsigned i = 0; i < f->n && !f->rc; i++) {
    int len = snprintf(body, sizeof body, "flow %u", i);
    f->rc = sluice_publisher_publish(p, "", i % 2 ? q_leak : q_clean, body,
                                     (size_t)len, NULL);
    next.tv_nsec += 1000000000L / FLOW_RATE;
    if (next.tv_nsec >= 1000000000L) {
      next.tv_sec++;
      next.tv_nsec -= 1000000000L;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
  }
  sluice_publish_report rep;
  if (!f->rc) f->rc = sluice_publisher_wait(p, &rep);
  if (!f->rc && rep.confirmed != f->n) f->rc = SLUICE_EPROTO;
  sluice_publisher_free(p);
  return NULL;
}

/* The consumer's stats as the test reads them: the counter was `delivered`
 * (`acked`) at some instant between `t0` and `t1` (wall clock, ms). */
typedef struct reading {
  uint64_t t0, t1;
  uint64_t delivered, acked;
} reading;

static reading reads[MAX_READS];
static size_t n_reads;

static void read_stats(sluice_consumer *c) {
  if (n_reads == MAX_READS) return;
  reading *r = &reads[n_reads++];
  sluice_consumer_stats st;
  r->t0 = wall_ms();
  sluice_consumer_get_stats(c, &st);
  r->t1 = wall_ms();
  r->delivered = st.delivered;
  r->acked = st.acked;
}

/* What the stats say a counter was when a scrape read it: the scrape
 * started at `ts` and took `dur_ms`; the endpoint read the counter in
 * between. Counters only grow, so the last reading that ended before the
 * scrape began bounds it from below, the first that began after the scrape
 * ended from above. */
static void bracket(uint64_t ts, uint64_t dur_ms, int acked, uint64_t *lo,
                    uint64_t *hi) {
  *lo = 0;
  *hi = UINT64_MAX;
  for (size_t i = 0; i < n_reads; i++) {
    uint64_t v = acked ? reads[i].acked : reads[i].delivered;
    if (reads[i].t1 + 3 <= ts) *lo = v;
    if (reads[i].t0 >= ts + dur_ms + 3 && *hi == UINT64_MAX) *hi = v;
  }
}

/* The profiler's residual figures for a queue and outcome: messages, or
 * bytes still live after the grace period. */
static uint64_t residual_of(const char *queue, int outcome, int leaked_bytes) {
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    if (v[i].queue && !strcmp(v[i].queue, queue) && v[i].outcome == outcome)
      return leaked_bytes ? v[i].bytes_leaked : v[i].messages;
  return 0;
}

/* Finished messages still waiting for their re-check. */
static uint64_t pending_rechecks(void) {
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  uint64_t p = 0;
  for (size_t i = 0; i < n && i < 64; i++) p += v[i].pending;
  return p;
}

/* Wait until the consumer has settled `want` deliveries and every finished
 * message has had its re-check (the profiler's grace period): the worker
 * is at rest, its figures no longer move. Bounded: 60 s. */
static void wait_rest(sluice_consumer *c, uint64_t want_delivered,
                      uint64_t want_acked) {
  for (int i = 0; i < 6000; i++) {
    read_stats(c);
    sluice_consumer_stats st;
    sluice_consumer_get_stats(c, &st);
    if (st.delivered == want_delivered && st.acked == want_acked &&
        pending_rechecks() == 0)
      return;
    pause_ms(10);
  }
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  fail_msg("not at rest: delivered %" PRIu64 "/%" PRIu64 ", acked %" PRIu64
           "/%" PRIu64,
           st.delivered, want_delivered, st.acked, want_acked);
}

static void check_gauges(sluice_consumer *c, uint64_t ts) {
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  const struct {
    const char *name;
    uint64_t want;
  } g[] = {
      {"sluice_in_flight_messages", st.in_flight},
      {"sluice_in_flight_bytes", st.in_flight_bytes},
      {"sluice_in_handler_messages", st.in_handler},
      {"sluice_buffered_messages", st.in_flight - st.in_handler},
      {"sluice_max_in_flight_messages", st.max_in_flight},
      {"sluice_connection_up", 1},
  };
  for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
    char sel[128];
    snprintf(sel, sizeof sel, "%s{job=\"sluice\"}", g[i].name);
    double v = query1(sel, ts);
    if (v != (double)g[i].want)
      fail_msg("%s: Prometheus %.17g, stats %" PRIu64, g[i].name, v, g[i].want);
  }
}

/* How long the scrape at `ts` took (ms, rounded up), from Prometheus'
 * scrape_duration_seconds samples. */
static uint64_t dur_at(const sample *d, size_t nd, uint64_t ts) {
  for (size_t i = 0; i < nd; i++)
    if (d[i].ts == ts) return (uint64_t)ceil(d[i].v * 1000.0);
  fail_msg("no scrape_duration_seconds at %" PRIu64, ts);
  return 0;
}

/* rate() over windows that end at scrapes while the messages flow, each
 * spanning exactly back to an earlier scrape plus 1 ms: then the window
 * holds both scrapes and no third one, and Prometheus' rate() is the
 * counter's increase between the two scrapes divided by their distance
 * (its extrapolation to the window's edges covers the 1 ms only). The
 * stats bracket the counter at each scrape (bracket()), so they bound the
 * rate: the tolerance is what the counter moved while the endpoint was
 * being scraped and the test was between two readings, from the data, not
 * a guess. */
static int check_rates(const char *sel, int acked, uint64_t from_ms,
                       uint64_t to_ms) {
  sample s[256], d[256];
  int range_s = (int)((to_ms - from_ms) / 1000) + 2;
  size_t n = raw_samples(sel, range_s, to_ms, s, 256);
  size_t nd = raw_samples("scrape_duration_seconds{job=\"sluice\"}", range_s,
                          to_ms, d, 256);
  int windows = 0;
  for (size_t k = 0; k < n; k++) {
    uint64_t lo, hi;
    bracket(s[k].ts, dur_at(d, nd, s[k].ts), acked, &lo, &hi);
    /* Each scraped value is the stats' value at that scrape. */
    if (s[k].v < (double)lo || s[k].v > (double)hi)
      fail_msg("%s at %" PRIu64 ": Prometheus %.0f, stats between %" PRIu64
               " and %" PRIu64,
               sel, s[k].ts, s[k].v, lo, hi);
    if (k < WINDOW || s[k].ts < from_ms) continue;
    size_t j = k - WINDOW;
    if (s[j].ts < from_ms || s[k].v == s[j].v) continue; /* no flow */
    uint64_t jlo, jhi;
    bracket(s[j].ts, dur_at(d, nd, s[j].ts), acked, &jlo, &jhi);
    uint64_t span = s[k].ts - s[j].ts;
    char promql[256];
    snprintf(promql, sizeof promql, "rate(%s[%" PRIu64 "ms])", sel, span + 1);
    double rate = query1(promql, s[k].ts);
    double sec = (double)span / 1000.0;
    double want_lo = ((double)lo - (double)jhi) / sec,
           want_hi = ((double)hi - (double)jlo) / sec;
    /* 1e-9: floating point; 1e-4: when the earlier scrape read 0, the
     * extrapolation stops at zero and rate() divides by the 1 ms too. */
    double eps = 1e-4 * want_hi + 1e-9;
    print_message("%s: rate() %.2f/s over %.3f s; the stats say %.2f to "
                  "%.2f/s\n",
                  promql, rate, sec, want_lo, want_hi);
    if (rate < want_lo - eps || rate > want_hi + eps)
      fail_msg("%s at %" PRIu64 " = %.6f; the stats say %.6f to %.6f", promql,
               s[k].ts, rate, want_lo, want_hi);
    windows++;
  }
  return windows;
}

/* Series of a vector answer whose label `name` is `value` (NULL: any
 * series). */
static size_t series_with(json_t *res, const char *name, const char *value) {
  size_t n = 0;
  for (size_t i = 0; i < json_array_size(res); i++) {
    const char *v = json_string_value(json_object_get(
        json_object_get(json_array_get(res, i), "metric"), name));
    if (!value || (v && !strcmp(v, value))) n++;
  }
  return n;
}

static size_t series_for(json_t *res, const char *queue) {
  return series_with(res, "queue", queue);
}

/* Messages with a key, through the profiler's scope API (a worker that
 * names the kind of each message): on queue q_keyed, key "type" =
 * "invoice" keeps its context, "receipt" frees it. */
static void *keyed_leaks[2 * KEYED];
static size_t n_keyed_leaks;
static const char *q_keyed;

static void keyed_messages(unsigned n, uint64_t seq0) {
  for (unsigned i = 0; i < n; i++) {
    int leak = i % 2;
    sluice_prof_scope sc = sluice_prof_scope_begin_key(
        q_keyed, "type", leak ? "invoice" : "receipt", seq0 + i, seq0 + i);
    assert_true(sc != 0);
    sluice_prof_scope prev = sluice_prof_scope_enter(sc);
    char *ctx = malloc(LEAK_BYTES);
    assert_non_null(ctx);
    if (!sluice_prof_interposing()) sluice_prof_note_alloc(ctx, LEAK_BYTES);
    memset(ctx, (int)i, LEAK_BYTES);
    if (leak) {
      keyed_leaks[n_keyed_leaks++] = ctx;
    } else {
      if (!sluice_prof_interposing()) sluice_prof_note_free(ctx);
      free(ctx);
    }
    sluice_prof_scope_enter(prev);
    assert_int_equal(sluice_prof_scope_end(sc, SLUICE_ACK, NULL), 0);
  }
}

static void test_prometheus_scrapes_worker(void **state) {
  (void)state;
  char *prometheus = h_which("prometheus");
  assert_non_null(prometheus); /* main() checked */

  /* A short verdict horizon: the leaky queue is LEAK within the run. */
  sluice_prof_opts po = {.grace_ms = 200,
                         .leak_window = 20,
                         .horizon_messages = 100,
                         .horizon_ms = 1};
  assert_int_equal(sluice_prof_start(&po), 0);

  q_clean = tb_qname("prom.clean");
  q_leak = tb_qname("prom.leaky");
  q_held = tb_qname("prom.held");
  q_keyed = tb_qname("prom.keyed"); /* a profiler aggregate, not a queue */
  const char *qs[] = {q_clean, q_leak, q_held};
  for (int i = 0; i < 3; i++) {
    sluice_queue_decl qd = {.name = qs[i]};
    tb_fresh_queue(&qd);
  }

  sluice_consumer_opts co = {.uri = TEST_URI,
                             .connection_name = "test prometheus",
                             .prefetch = 50,
                             .hooks = sluice_prof_delivery_hooks()};
  sluice_consumer *c = NULL;
  assert_int_equal(sluice_consumer_new(&co, &c), 0);
  for (int i = 0; i < 3; i++) {
    sluice_subscribe_opts so = {.queue = qs[i], .handler = handler};
    assert_int_equal(sluice_consumer_subscribe(c, &so), 0);
  }
  sluice_debug_server *dbg = NULL;
  sluice_debug_opts dopts = {.consumer = c, .addr = "127.0.0.1:0"};
  assert_int_equal(sluice_debug_server_new(&dopts, &dbg), 0);
  int dbg_port = sluice_debug_server_port(dbg);

  snprintf(prom_dir, sizeof prom_dir, "/tmp/sluice-prom-XXXXXX");
  assert_non_null(mkdtemp(prom_dir));
  if (prom_start(prometheus, dbg_port))
    fail_msg("Prometheus did not start (log above)");
  free(prometheus);

  pthread_t ct;
  assert_int_equal(pthread_create(&ct, NULL, run_consumer, c), 0);

  /* Warm-up: the series appear; HELD messages stay deferred. */
  tb_fill(q_clean, WARMUP, 16);
  tb_fill(q_leak, WARMUP, 16);
  tb_fill(q_held, HELD, HELD_BODY);
  keyed_messages(KEYED, 1);
  uint64_t delivered = 2 * WARMUP + HELD, acked = 2 * WARMUP;
  wait_rest(c, delivered, acked);
  uint64_t leaked_1 = residual_of(q_leak, SLUICE_ACK, 1);
  uint64_t msgs_1 = residual_of(q_leak, SLUICE_ACK, 0);
  uint64_t rest_1 = scrape_after(wall_ms());
  /* The in-flight gauges while HELD deliveries are deferred. */
  check_gauges(c, rest_1);
  assert_int_equal(query1("sluice_in_flight_messages", rest_1), HELD);
  /* Bodies plus properties: at least the bodies. */
  assert_true(query1("sluice_in_flight_bytes", rest_1) >= HELD * HELD_BODY);
  /* More keyed messages: their counters move between the two rests. */
  keyed_messages(KEYED, KEYED + 1);

  /* The flow: the stats are read every 10 ms meanwhile. */
  flow f = {.n = FLOW};
  pthread_t pt;
  uint64_t flow_start = wall_ms();
  assert_int_equal(pthread_create(&pt, NULL, publish_flow, &f), 0);
  delivered += FLOW;
  acked += FLOW;
  for (int i = 0; i < 6000; i++) {
    read_stats(c);
    if (reads[n_reads - 1].delivered >= delivered) break;
    pause_ms(10);
  }
  pthread_join(pt, NULL);
  assert_int_equal(f.rc, 0);
  wait_rest(c, delivered, acked);
  uint64_t rest_2 = scrape_after(wall_ms());
  /* At rest: a reading that began after that scrape ended bounds it from
   * above (bracket(); 5 ms covers the timestamps' 3 ms margin). */
  pause_ms(5);
  read_stats(c);

  int w = check_rates("sluice_deliveries_total{job=\"sluice\"}", 0, flow_start,
                      rest_2);
  w += check_rates(
      "sluice_deliveries_completed_total{job=\"sluice\",outcome=\"ack\"}", 1,
      flow_start, rest_2);
  if (w < 2)
    fail_msg("only %d rate() windows while messages flowed (scrapes every "
             "second, %d messages at %d/s)",
             w, FLOW, FLOW_RATE);

  /* The residual per queue and outcome, at rest: what the profiler says. */
  uint64_t leaked_2 = residual_of(q_leak, SLUICE_ACK, 1);
  uint64_t msgs_2 = residual_of(q_leak, SLUICE_ACK, 0);
  assert_true(leaked_2 >= (uint64_t)LEAK_BYTES * (WARMUP + FLOW / 2));
  assert_int_equal(residual_of(q_clean, SLUICE_ACK, 1), 0);
  char promql[512];
  snprintf(promql, sizeof promql,
           "sluice_residual_leaked_bytes_total{queue=\"%s\",outcome=\"ack\"}",
           q_leak);
  assert_true(query1(promql, rest_2) == (double)leaked_2);
  snprintf(promql, sizeof promql,
           "sluice_residual_leaked_bytes_total{queue=\"%s\",outcome=\"ack\"}",
           q_clean);
  assert_true(query1(promql, rest_2) == 0);
  snprintf(promql, sizeof promql,
           "sluice_residual_messages_total{queue=\"%s\",outcome=\"ack\"}",
           q_clean);
  assert_true(query1(promql, rest_2) == WARMUP + FLOW / 2);

  /* docs/debug-endpoint.md, "Which queue is leaking": the same queries. */
  /* The verdict names the leaky queue, never the clean queue or key (the
   * leaky key may or may not have had enough messages for its verdict). */
  json_t *res, *root = query("sluice_residual_leaking == 1", rest_2, &res);
  if (series_for(res, q_leak) != 1 || series_for(res, q_clean) ||
      series_with(res, "key", "receipt") ||
      json_array_size(res) != 1 + series_with(res, "key", "invoice"))
    fail_msg("sluice_residual_leaking == 1: %zu series, want %s (and the "
             "invoice key of %s)",
             json_array_size(res), q_leak, q_keyed);
  json_decref(root);
  /* Queues that leak: the leaky one and the keyed one, not the clean one. */
  root = query("topk(3, sum by (queue, outcome) "
               "(rate(sluice_residual_leaked_bytes_total[5m])) > 0)",
               rest_2, &res);
  if (json_array_size(res) != 2 || series_for(res, q_leak) != 1 ||
      series_for(res, q_keyed) != 1)
    fail_msg("leak ranking: %zu series, want %s and %s", json_array_size(res),
             q_leak, q_keyed);
  json_decref(root);
  root = query("topk(3, sum by (queue) (sluice_residual_retained_bytes) > 0)",
               rest_2, &res);
  if (json_array_size(res) != 2 || series_for(res, q_leak) != 1 ||
      series_for(res, q_keyed) != 1)
    fail_msg("retained ranking: %zu series, want %s and %s",
             json_array_size(res), q_leak, q_keyed);
  json_decref(root);
  /* Inside the keyed queue: which kind of message. */
  snprintf(promql, sizeof promql,
           "topk(5, sum by (key) (rate(sluice_residual_leaked_bytes_total"
           "{queue=\"%s\"}[5m])) > 0)",
           q_keyed);
  root = query(promql, rest_2, &res);
  if (json_array_size(res) != 1 || series_with(res, "key", "invoice") != 1)
    fail_msg("%s: %zu series, want key=invoice only", promql,
             json_array_size(res));
  json_decref(root);
  snprintf(promql, sizeof promql,
           "sluice_residual_messages_total{queue=\"%s\",key=\"receipt\"}",
           q_keyed);
  assert_true(query1(promql, rest_2) == KEYED);
  snprintf(promql, sizeof promql,
           "sluice_residual_leaked_bytes_total{queue=\"%s\",key=\"receipt\"}",
           q_keyed);
  assert_true(query1(promql, rest_2) == 0);
  /* Bytes per message over the flow, between the two rests: exactly what
   * the profiler's figures say (both counters come from the same scrapes;
   * a 1 ms wider window as above). */
  snprintf(promql, sizeof promql,
           "sum by (queue, outcome) "
           "(rate(sluice_residual_leaked_bytes_total{queue=\"%s\"}[%" PRIu64
           "ms])) / sum by (queue, outcome) "
           "(rate(sluice_residual_messages_total{queue=\"%s\"}[%" PRIu64
           "ms]))",
           q_leak, rest_2 - rest_1 + 1, q_leak, rest_2 - rest_1 + 1);
  double per_msg = query1(promql, rest_2);
  double want = (double)(leaked_2 - leaked_1) / (double)(msgs_2 - msgs_1);
  print_message("leaked bytes per message: Prometheus %.6f, profiler %.6f\n",
                per_msg, want);
  assert_true(fabs(per_msg - want) <= 1e-9 * want);

  /* The alert of docs/prometheus/sluice-rules.yml: pending (it needs 10
   * minutes to fire) for the leaky queue, never for the clean ones. Rules
   * are evaluated every second: bounded wait, 20 s. */
  size_t n_alerts = 0;
  for (int i = 0; i < 200 && !n_alerts; i++) {
    json_t *data, *r = api("/api/v1/alerts", &data);
    json_t *alerts = json_object_get(data, "alerts");
    for (size_t k = 0; k < json_array_size(alerts); k++) {
      json_t *a = json_array_get(alerts, k);
      json_t *l = json_object_get(a, "labels");
      if (strcmp(json_string_value(json_object_get(l, "alertname")),
                 "SluiceResidualLeak"))
        continue;
      const char *q = json_string_value(json_object_get(l, "queue"));
      const char *kv = json_string_value(json_object_get(l, "key"));
      if (q && !strcmp(q, q_keyed) && kv && !strcmp(kv, "invoice")) continue;
      if (!q || strcmp(q, q_leak))
        fail_msg("SluiceResidualLeak for queue %s", q ? q : "(none)");
      n_alerts++;
    }
    json_decref(r);
    if (!n_alerts) pause_ms(100);
  }
  assert_int_equal(n_alerts, 1);

  /* Release the held deliveries: the gauges go back to 0. */
  pthread_mutex_lock(&mu);
  size_t nh = n_held;
  pthread_mutex_unlock(&mu);
  assert_int_equal(nh, HELD);
  for (size_t i = 0; i < nh; i++)
    assert_int_equal(sluice_delivery_done(held[i], SLUICE_ACK), 0);
  acked += HELD;
  wait_rest(c, delivered, acked);
  uint64_t rest_3 = scrape_after(wall_ms());
  check_gauges(c, rest_3);
  assert_int_equal(query1("sluice_in_flight_messages", rest_3), 0);

  /* No sample was dropped as a duplicate series. */
  assert_true(query1("sum(prometheus_target_scrapes_sample_duplicate_"
                     "timestamp_total)",
                     0) == 0);

  sluice_consumer_stop(c);
  pthread_join(ct, NULL);
  sluice_debug_server_free(dbg);
  sluice_consumer_free(c);
  prom_cleanup();
  for (int i = 0; i < 3; i++) tb_delete_queue(qs[i]);
  for (size_t i = 0; i < n_leaks; i++) {
    if (!sluice_prof_interposing()) sluice_prof_note_free(leaks[i]);
    free(leaks[i]);
  }
  for (size_t i = 0; i < n_keyed_leaks; i++) {
    if (!sluice_prof_interposing()) sluice_prof_note_free(keyed_leaks[i]);
    free(keyed_leaks[i]);
  }
}

int main(void) {
  tb_require_broker("test_prometheus");
  char *prometheus = h_which("prometheus");
  if (!prometheus) {
    const char *req = getenv("SLUICE_REQUIRE_BROKER");
    if (req && !strcmp(req, "1")) {
      fprintf(stderr, "test_prometheus: FAIL: prometheus not found in PATH "
                      "and SLUICE_REQUIRE_BROKER=1 (scripts/setup.sh "
                      "installs it)\n");
      return 1;
    }
    fprintf(stderr, "test_prometheus: SKIPPED: prometheus not found in PATH "
                    "(apt-get install prometheus)\n");
    return 77;
  }
  free(prometheus);
  atexit(prom_cleanup); /* a failed check: cmocka goes on, then exits */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prometheus_scrapes_worker),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  prom_cleanup();
  return failed ? 1 : 0;
}
