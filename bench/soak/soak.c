/* SPDX-License-Identifier: MIT */
/* sluice-soak: run the push worker against the broker under a steady
 * publish rate for a bounded time, sample its memory, and say whether it
 * leaks.
 *
 *   sluice-soak [--duration S] [--interval MS] [--rate PER_S] [--mix SPEC]
 *               [--out DIR] [--title TEXT] [--parallel] [--threshold B]
 *               [--source auto|http|pipe] [--worker PATH] [--uri URI]
 *               [--gateway URL | --gateway-latency-ms N
 *                --gateway-jitter-ms N --gateway-error-rate P]
 *               [--worker-args "ARGS"] [--compare "ARGS" "ARGS" ...]
 *
 * Each run is one push-worker child with its own queue, fed by its own
 * publisher thread at --rate jobs per second, given the common
 * --worker-args plus its own ARGS from --compare (split on spaces; must
 * come last). Without --compare there is one run. Runs go one after the
 * other, or all at once with --parallel.
 *
 * Every --interval the runner records, per run: RSS, the live heap, the
 * residual memory left behind by finished messages (exact, from the
 * profiler's per-message scopes), messages done, deliveries held in the
 * process and the queue depth at the broker. It reads them from the
 * worker's debug endpoint (GET /debug/vars) when the worker has one and
 * its JSON carries them, else from the JSON lines the worker writes on a
 * pipe (--stats-fd).
 *
 * Outputs in --out (default "soak-out"): soak.csv (every sample of every
 * run), run<N>.csv, soak.gp and soak.svg (gnuplot: one line per run in each
 * panel), verdict.json and verdict.txt. The verdict per run: growth slopes
 * of RSS and heap in bytes per minute and per message (least squares after
 * a warm-up), the residual per message (slope of the retained residual
 * against messages), and LEAK when that residual exceeds --threshold bytes
 * per message, or when the worker's profiler convicted one queue/outcome
 * (which also catches a leak confined to a rare path, too diluted to show
 * in the mean over all messages). Heap slopes alone are noisy (allocator caches, buffers
 * reaching their working size); the residual is not: a clean worker leaves
 * exactly 0 bytes per message. Where the profiler cannot see malloc
 * (sanitizer builds) the verdict falls back on the heap slope per message,
 * against --heap-threshold, and says so. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>

#include "gateway.h"
#include "jobs.h"

extern char **environ;

#define MAX_RUNS 8
#define MAX_ARGS 64

typedef struct sample {
  double t;
  uint64_t published, finished, depth, in_flight;
  uint64_t rss, heap, objects, retained, res_messages;
  int http;    /* 1: from /debug/vars, 0: from the pipe */
  int leaking; /* the profiler's own verdict, on some queue/outcome */
} sample;

typedef struct run {
  int index;
  char label[256];
  char queue[128];
  char *argv_store;
  const char *argv[MAX_ARGS];

  /* publisher thread */
  pthread_t pub_thread;
  atomic_int pub_stop;
  atomic_uint_fast64_t published, depth;
  atomic_int pub_error;

  /* worker child */
  pid_t pid;
  int fd;
  char buf[1 << 16];
  size_t len;
  json_t *last;            /* latest "sample" line */
  uint64_t last_published; /* publisher's count when that line arrived */
  json_t *final;           /* its "final" line */
  int debug_port;
  int http_ok; /* -1 unknown, 0 no, 1 yes */
  int exit_status;

  double t0;
  sample *s;
  size_t n, cap;
  int interposing;
} run;

typedef struct config {
  double duration;
  unsigned interval_ms;
  double rate;
  const char *mix, *out, *title, *worker, *uri, *gateway, *source;
  const char *worker_args;
  int parallel;
  double threshold, heap_threshold;
  pw_gateway_opts gw;
} config;

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) {
  interrupted = 1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
  double d = t - now_s();
  if (d <= 0) return;
  struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
  while (nanosleep(&ts, &ts) && errno == EINTR && !interrupted) {
  }
}

/* ---- publisher ----------------------------------------------------------- */

typedef struct pub_arg {
  run *r;
  const config *cfg;
  pw_mix mix;
} pub_arg;

static void *publisher(void *arg) {
  pub_arg *a = arg;
  run *r = a->r;
  sluice_publisher_opts po = {.uri = a->cfg->uri,
                              .connection_name = "sluice-soak publisher"};
  sluice_publisher *p = NULL;
  /* Steps of ~20 ms on an absolute schedule; each step waits for its
   * confirms, which keeps the rate honest when the broker slows down. A
   * lost connection (a broker restart) is retried every second: a soak of
   * hours must outlive it. The verdict says the run was disturbed. */
  double rate = a->cfg->rate;
  uint64_t step = rate >= 50 ? (uint64_t)(rate / 50) : 1;
  double t0 = now_s();
  uint64_t sent = 0, i = 0;
  while (!atomic_load(&r->pub_stop)) {
    int rc = p ? 0 : sluice_publisher_new(&po, &p);
    if (!rc) rc = pw_publish_jobs(p, r->queue, &a->mix, sent, step);
    if (!rc) rc = sluice_publisher_wait(p, NULL);
    if (rc) {
      if (!atomic_load(&r->pub_error))
        fprintf(stderr,
                "sluice-soak: run %d: publisher: %s; retrying every "
                "second\n",
                r->index, sluice_strerror(rc));
      atomic_store(&r->pub_error, rc);
      sluice_publisher_free(p);
      p = NULL;
      sleep_until(now_s() + 1.0);
      /* The schedule goes on from now: no burst to catch up. */
      t0 = now_s() - (double)sent / rate;
      continue;
    }
    sent += step;
    atomic_store(&r->published, sent);
    if (++i % 10 == 0) {
      uint32_t depth = 0;
      if (sluice_publisher_queue_depth(p, r->queue, &depth, NULL) == 0)
        atomic_store(&r->depth, depth);
    }
    sleep_until(t0 + (double)sent / rate);
  }
  sluice_publisher_free(p);
  free(a);
  return NULL;
}

/* ---- the worker's reports ------------------------------------------------ */

static json_t *jget(json_t *o, const char *path) {
  char key[64];
  while (o && *path) {
    const char *dot = strchr(path, '.');
    size_t l = dot ? (size_t)(dot - path) : strlen(path);
    if (l >= sizeof(key)) return NULL;
    memcpy(key, path, l);
    key[l] = 0;
    o = json_object_get(o, key);
    path = dot ? dot + 1 : path + l;
  }
  return o;
}

static uint64_t jint(json_t *o, const char *path) {
  json_t *v = jget(o, path);
  return v && json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

/* Sum of `key` over the residual aggregates (one per queue and outcome). */
static uint64_t sum_residual(json_t *arr, const char *key) {
  uint64_t sum = 0;
  size_t i;
  json_t *a;
  json_array_foreach(arr, i, a) sum += jint(a, key);
  return sum;
}

/* GET /debug/vars from the worker's endpoint (loopback, bounded in time). */
static json_t *http_vars(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return NULL;
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  json_t *j = NULL;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  if (connect(fd, (struct sockaddr *)&a, sizeof(a))) goto out;
  char req[128];
  int n = snprintf(req, sizeof(req),
                   "GET /debug/vars HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n",
                   port);
  if (write(fd, req, (size_t)n) != n) goto out;
  double deadline = now_s() + 2.0;
  for (;;) {
    int left = (int)((deadline - now_s()) * 1000);
    struct pollfd p = {fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, left) != 1) goto out;
    if (len + 4096 > cap) {
      cap = cap ? cap * 2 : 16384;
      if (cap > (8u << 20)) goto out;
      char *nb = realloc(buf, cap);
      if (!nb) goto out;
      buf = nb;
    }
    ssize_t r = read(fd, buf + len, cap - len - 1);
    if (r < 0) goto out;
    if (r == 0) break;
    len += (size_t)r;
  }
  buf[len] = 0;
  if (strncmp(buf, "HTTP/1.", 7) || atoi(buf + 9) != 200) goto out;
  char *body = strstr(buf, "\r\n\r\n");
  if (body) j = json_loads(body + 4, 0, NULL);
out:
  free(buf);
  close(fd);
  return j;
}

/* Fill `s` from /debug/vars (docs/debug-endpoint.md: "memstats",
 * "consumer", "residual"); 0 if it carries what we need. */
static int sample_http(run *r, sample *s) {
  json_t *j = http_vars(r->debug_port);
  if (!j) return -1;
  json_t *ms = json_object_get(j, "memstats");
  json_t *res = json_object_get(j, "residual");
  int ok = json_is_integer(json_object_get(ms, "rss_bytes")) &&
           json_is_integer(json_object_get(ms, "heap_live_bytes")) &&
           json_is_array(res);
  if (ok) {
    s->rss = jint(ms, "rss_bytes");
    s->heap = jint(ms, "heap_live_bytes");
    s->objects = jint(ms, "live_objects");
    s->retained = sum_residual(res, "retained_bytes");
    s->res_messages = sum_residual(res, "messages");
    s->in_flight = jint(j, "consumer.in_flight");
    /* Jobs finished, from the same instant as the memory: acknowledged
     * (sent, or probes) or rejected (dead-lettered). */
    s->finished = jint(j, "consumer.acked") + jint(j, "consumer.rejected");
    s->http = 1;
    size_t i;
    json_t *a;
    json_array_foreach(res, i, a)
        s->leaking |= json_is_true(json_object_get(a, "leaking"));
  }
  json_decref(j);
  return ok ? 0 : -1;
}

static void handle_line(run *r, json_t *j) {
  const char *type = json_string_value(json_object_get(j, "type"));
  const char *ev = json_string_value(json_object_get(j, "event"));
  if (!type) {
  } else if (strcmp(type, "sample") == 0) {
    json_decref(r->last);
    r->last = json_incref(j);
    r->last_published = atomic_load(&r->published);
  } else if (strcmp(type, "final") == 0) {
    json_decref(r->final);
    r->final = json_incref(j);
  } else if (ev && strcmp(ev, "debug") == 0) {
    r->debug_port = (int)jint(j, "port");
  } else if (ev && strcmp(ev, "listener_refused") == 0) {
    fprintf(stderr,
            "sluice-soak: run %d: the worker's close listener was "
            "refused (registry full)\n",
            r->index);
  }
}

/* Read what the worker wrote; returns -1 at EOF. */
static int read_worker(run *r) {
  if (r->fd < 0) return -1;
  if (r->len == sizeof(r->buf)) r->len = 0;
  ssize_t n = read(r->fd, r->buf + r->len, sizeof(r->buf) - r->len);
  if (n <= 0) {
    if (n < 0 && errno == EINTR) return 0;
    close(r->fd);
    r->fd = -1;
    return -1;
  }
  r->len += (size_t)n;
  char *nl;
  while ((nl = memchr(r->buf, '\n', r->len))) {
    size_t l = (size_t)(nl - r->buf);
    json_t *j = json_loadb(r->buf, l, 0, NULL);
    if (j) handle_line(r, j);
    json_decref(j);
    memmove(r->buf, nl + 1, r->len - l - 1);
    r->len -= l + 1;
  }
  return 0;
}

static void take_sample(run *r, const config *cfg) {
  sample s = {0};
  s.t = now_s() - r->t0;
  s.published = atomic_load(&r->published);
  s.depth = atomic_load(&r->depth);
  json_t *l = r->last;
  if (l) {
    s.finished = jint(l, "counters.finished");
    s.in_flight = jint(l, "counters.consumer.in_flight");
  }
  int from_http = 0;
  if (r->debug_port && strcmp(cfg->source, "pipe") != 0 && r->http_ok != 0) {
    from_http = sample_http(r, &s) == 0;
    if (r->http_ok < 0) {
      r->http_ok = from_http;
      fprintf(stderr, "sluice-soak: run %d: %s\n", r->index,
              from_http ? "sampling GET /debug/vars"
                        : "/debug/vars lacks memstats or residual: sampling "
                          "the worker's pipe");
    }
  }
  if (!from_http) {
    if (!l) return; /* nothing yet */
    /* The line is up to one interval old: pair it with what had been
     * published when it arrived. */
    s.published = r->last_published;
    s.rss = jint(l, "rss_bytes");
    s.heap = jint(l, "heap_live_bytes");
    s.objects = jint(l, "live_objects");
    s.retained = jint(l, "residual.retained_bytes");
    s.res_messages = jint(l, "residual.messages");
    s.leaking = json_is_true(jget(l, "residual.leaking"));
  }
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 256;
    r->s = realloc(r->s, r->cap * sizeof(*r->s));
  }
  r->s[r->n++] = s;
}

/* ---- running ------------------------------------------------------------- */

static int start_run(run *r, const config *cfg, const char *gw_url) {
  char dlq[256];
  sluice_queue_decl qd, dd;
  pw_queue_decl(r->queue, &qd);
  pw_dlq_decl(pw_dlq_name(r->queue, dlq, sizeof(dlq)), &dd);
  sluice_publisher_opts po = {.uri = cfg->uri};
  sluice_publisher *p;
  int rc = sluice_publisher_new(&po, &p);
  if (rc) {
    fprintf(stderr, "sluice-soak: broker: %s\n", sluice_strerror(rc));
    return -1;
  }
  sluice_publisher_delete_queue(p, r->queue, NULL);
  sluice_publisher_delete_queue(p, dlq, NULL);
  rc = sluice_publisher_declare_queue(p, &dd);
  if (!rc) rc = sluice_publisher_declare_queue(p, &qd);
  sluice_publisher_free(p);
  if (rc) {
    fprintf(stderr, "sluice-soak: declare %s: %s\n", r->queue,
            sluice_strerror(rc));
    return -1;
  }

  char interval[32];
  snprintf(interval, sizeof(interval), "%u", cfg->interval_ms);
  const char *argv[MAX_ARGS + 24];
  size_t n = 0;
  argv[n++] = cfg->worker;
  const char *fixed[] = {"--queue",    r->queue,    "--uri",
                         cfg->uri,     "--gateway", gw_url,
                         "--stats-fd", "3",         "--stats-interval-ms",
                         interval,     "--quiet"};
  for (size_t i = 0; i < sizeof(fixed) / sizeof(*fixed); i++)
    argv[n++] = fixed[i];
  if (strcmp(cfg->source, "pipe") != 0) {
    argv[n++] = "--debug-addr";
    argv[n++] = "127.0.0.1:0";
  }
  for (size_t i = 0; r->argv[i] && n < MAX_ARGS + 22; i++)
    argv[n++] = r->argv[i];
  argv[n] = NULL;

  int fds[2];
  if (pipe(fds)) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 3);
  /* The worker's summary and report go to stderr: stdout is ours. */
  posix_spawn_file_actions_adddup2(&fa, 2, 1);
  rc = posix_spawn(&r->pid, cfg->worker, &fa, NULL, (char *const *)argv,
                   environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc) {
    fprintf(stderr, "sluice-soak: cannot run %s: %s\n", cfg->worker,
            strerror(rc));
    close(fds[0]);
    return -1;
  }
  r->fd = fds[0];
  r->http_ok = -1;
  r->t0 = now_s();

  pub_arg *a = calloc(1, sizeof(*a));
  char err[128];
  a->r = r;
  a->cfg = cfg;
  pw_mix_parse(cfg->mix, &a->mix, err, sizeof(err));
  if (pthread_create(&r->pub_thread, NULL, publisher, a)) {
    free(a);
    return -1;
  }
  return 0;
}

/* Drive the runs in `rs` until `duration` has passed (or ^C), sampling
 * every interval, then stop them. */
static void drive(run **rs, size_t nr, const config *cfg) {
  double start = now_s(), next = start + cfg->interval_ms / 1000.0;
  double end = start + cfg->duration;
  for (;;) {
    double now = now_s();
    if (now >= next) {
      for (size_t i = 0; i < nr; i++) take_sample(rs[i], cfg);
      next += cfg->interval_ms / 1000.0;
      if (next < now) next = now + cfg->interval_ms / 1000.0;
    }
    if (now >= end || interrupted) break;
    struct pollfd pf[MAX_RUNS];
    for (size_t i = 0; i < nr; i++)
      pf[i] = (struct pollfd){rs[i]->fd, POLLIN, 0};
    double until = next < end ? next : end;
    int ms = (int)((until - now_s()) * 1000) + 1;
    int k = poll(pf, (nfds_t)nr, ms > 0 ? ms : 0);
    if (k < 0 && errno != EINTR) break;
    for (size_t i = 0; i < nr && k > 0; i++)
      if (pf[i].revents && read_worker(rs[i]) < 0 && rs[i]->pid > 0) {
        fprintf(stderr, "sluice-soak: run %d: the worker exited early\n",
                rs[i]->index);
        interrupted = 1;
      }
  }
  for (size_t i = 0; i < nr; i++) {
    run *r = rs[i];
    atomic_store(&r->pub_stop, 1);
    pthread_join(r->pub_thread, NULL);
    if (r->pid > 0) kill(r->pid, SIGTERM);
  }
  for (size_t i = 0; i < nr; i++) {
    run *r = rs[i];
    while (r->fd >= 0) {
      struct pollfd p = {r->fd, POLLIN, 0};
      if (poll(&p, 1, 30000) != 1) {
        fprintf(stderr,
                "sluice-soak: run %d: no exit after SIGTERM; "
                "killing it\n",
                r->index);
        kill(r->pid, SIGKILL);
        close(r->fd);
        r->fd = -1;
        break;
      }
      read_worker(r);
    }
    int st = 0;
    if (r->pid > 0 && waitpid(r->pid, &st, 0) == r->pid)
      r->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    r->pid = 0;
    r->interposing = r->final &&
                     json_is_true(json_object_get(r->final, "interposing"));
  }
}

/* ---- verdicts ------------------------------------------------------------ */

/* Least-squares slope of y over x. */
static double slope(const double *x, const double *y, size_t n) {
  if (n < 2) return 0;
  double mx = 0, my = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < n; i++) mx += x[i], my += y[i];
  mx /= (double)n;
  my /= (double)n;
  for (size_t i = 0; i < n; i++) {
    sxx += (x[i] - mx) * (x[i] - mx);
    sxy += (x[i] - mx) * (y[i] - my);
  }
  return sxx > 0 ? sxy / sxx : 0;
}

typedef struct verdict {
  double rss_per_min, heap_per_min, rss_per_msg, heap_per_msg;
  double residual_per_msg;
  uint64_t messages, retained, published, max_depth, max_in_flight;
  double peak_rss;
  int leak;
  int profiler_leaking; /* the worker's profiler convicted a queue/outcome */
  const char *basis;
  const char *source; /* where the samples came from */
} verdict;

static void judge(const run *r, const config *cfg, verdict *v) {
  memset(v, 0, sizeof(*v));
  /* Warm-up: buffers, pools and connections reach their working size. */
  double warm = cfg->duration / 4 < 10 ? cfg->duration / 4 : 10;
  size_t first = 0;
  while (first < r->n && r->s[first].t < warm) first++;
  if (r->n - first < 3) first = r->n > 3 ? r->n - 3 : 0;
  size_t n = r->n - first;
  double *t = calloc(n + 1, sizeof(double)), *m = calloc(n + 1, sizeof(double));
  double *rss = calloc(n + 1, sizeof(double)),
         *heap = calloc(n + 1, sizeof(double));
  double *res = calloc(n + 1, sizeof(double)),
         *rm = calloc(n + 1, sizeof(double));
  for (size_t i = 0; i < n; i++) {
    const sample *s = &r->s[first + i];
    t[i] = s->t / 60.0;
    /* Messages completed, from the same source as the memory figures when
     * the profiler counts them. */
    m[i] = (double)(s->res_messages ? s->res_messages : s->finished);
    rss[i] = (double)s->rss;
    heap[i] = (double)s->heap;
    res[i] = (double)s->retained;
    rm[i] = (double)s->res_messages;
  }
  v->rss_per_min = slope(t, rss, n);
  v->heap_per_min = slope(t, heap, n);
  v->rss_per_msg = slope(m, rss, n);
  v->heap_per_msg = slope(m, heap, n);
  v->residual_per_msg = slope(rm, res, n);
  for (size_t i = 0; i < r->n; i++) {
    if (r->s[i].depth > v->max_depth) v->max_depth = r->s[i].depth;
    if (r->s[i].in_flight > v->max_in_flight)
      v->max_in_flight = r->s[i].in_flight;
    if ((double)r->s[i].rss > v->peak_rss) v->peak_rss = (double)r->s[i].rss;
  }
  size_t http = 0;
  for (size_t i = 0; i < r->n; i++) http += (size_t)r->s[i].http;
  v->source = !r->n ? "none" : http == r->n ? "http" : http ? "mixed" : "pipe";
  if (r->n) {
    v->messages = r->s[r->n - 1].finished;
    v->retained = r->s[r->n - 1].retained;
    v->published = r->s[r->n - 1].published;
  }
  v->profiler_leaking = r->n && r->s[r->n - 1].leaking;
  if (r->interposing) {
    /* The mean over all messages, or the profiler's verdict per queue and
     * outcome, which also catches a leak confined to a rare path. */
    v->basis = "residual";
    v->leak = v->residual_per_msg > cfg->threshold || v->profiler_leaking;
  } else {
    v->basis = "heap (no malloc interposition in this build: noisy)";
    v->leak = v->heap_per_msg > cfg->heap_threshold;
  }
  free(t), free(m), free(rss), free(heap), free(res), free(rm);
}

/* ---- outputs ------------------------------------------------------------- */

static void write_csv(run *const *runs, size_t nr, const config *cfg) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/soak.csv", cfg->out);
  FILE *all = fopen(path, "w");
  const char *hdr =
      "run,label,t_s,published,finished,queue_depth,in_flight,rss_bytes,"
      "heap_live_bytes,live_objects,residual_retained_bytes,"
      "residual_messages,source\n";
  if (all) fputs(hdr, all);
  for (size_t k = 0; k < nr; k++) {
    const run *r = runs[k];
    snprintf(path, sizeof(path), "%s/run%d.csv", cfg->out, r->index);
    FILE *one = fopen(path, "w");
    if (one) fputs(hdr, one);
    for (size_t i = 0; i < r->n; i++) {
      const sample *s = &r->s[i];
      char line[1024];
      snprintf(line, sizeof(line),
               "%d,\"%s\",%.3f,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
               ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
               ",%s\n",
               r->index, r->label, s->t, s->published, s->finished, s->depth,
               s->in_flight, s->rss, s->heap, s->objects, s->retained,
               s->res_messages, s->http ? "http" : "pipe");
      if (all) fputs(line, all);
      if (one) fputs(line, one);
    }
    if (one) fclose(one);
  }
  if (all) fclose(all);
}

static void gp_escape(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    fputc(*s, f);
  }
}

static void plot_body(FILE *f, run *const *runs, size_t nr, const config *cfg) {
  fprintf(f, "set datafile separator ','\n"
             "set key top left opaque box\n"
             "set grid\n"
             "set xlabel 'time (s)'\n"
             "set multiplot layout 3,2 title \"");
  gp_escape(f, cfg->title);
  fprintf(f, "\"\n");
  static const struct {
    const char *title, *col, *scale, *yrange;
  } panels[] = {
      {"RSS (MiB)", "8", "1048576.0", "[*:*]"},
      {"live heap (MiB)", "9", "1048576.0", "[*:*]"},
      {"residual left by finished messages (KiB)", "11", "1024.0", "[0:*]"},
      {"deliveries held in the process", "7", "1.0", "[0:*]"},
      {"queue depth at the broker (messages)", "6", "1.0", "[0:*]"},
      /* In autoAck mode the difference between this and the two panels
       * above is what sits in socket buffers: gone from the queue, not yet
       * in the process. */
      {"published, not yet finished (messages)", "4-$5", "1.0", "[0:*]"}};
  for (size_t p = 0; p < sizeof(panels) / sizeof(*panels); p++) {
    fprintf(f, "set title '%s'\nset yrange %s\nplot ", panels[p].title,
            panels[p].yrange);
    for (size_t k = 0; k < nr; k++) {
      fprintf(f,
              "%s'%s/run%d.csv' every ::1 using 3:($%s/%s) with lines "
              "lw 2 title \"",
              k ? ", " : "", cfg->out, runs[k]->index, panels[p].col,
              panels[p].scale);
      gp_escape(f, runs[k]->label);
      fprintf(f, "\"");
    }
    fprintf(f, "\n");
  }
  fprintf(f, "unset multiplot\n");
}

static void write_plot(run *const *runs, size_t nr, const config *cfg) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/soak.gp", cfg->out);
  FILE *f = fopen(path, "w");
  if (!f) return;
  fprintf(f, "# sluice-soak plot: gnuplot %s/soak.gp\n", cfg->out);
  fprintf(f,
          "set terminal svg size 1000,1000 dynamic background rgb 'white' "
          "font 'sans,11' noenhanced\nset output '%s/soak.svg'\n",
          cfg->out);
  plot_body(f, runs, nr, cfg);
  fprintf(f,
          "set terminal pngcairo size 1000,1000 background rgb 'white' "
          "font 'sans,10' noenhanced\nset output '%s/soak.png'\n",
          cfg->out);
  plot_body(f, runs, nr, cfg);
  fclose(f);
  char cmd[1200];
  snprintf(cmd, sizeof(cmd), "gnuplot '%s/soak.gp' 2>/dev/null", cfg->out);
  int rc = system(cmd);
  if (rc != 0)
    fprintf(stderr,
            "sluice-soak: gnuplot failed or is missing (apt-get install "
            "gnuplot-nox); the script is in %s/soak.gp\n",
            cfg->out);
}

static void fmt_bytes(char *b, size_t cap, double v) {
  double a = fabs(v);
  if (a >= 1048576) snprintf(b, cap, "%+.2f MiB", v / 1048576);
  else if (a >= 1024) snprintf(b, cap, "%+.1f KiB", v / 1024);
  else snprintf(b, cap, "%+.1f B", v);
}

static void write_verdicts(run *const *runs, size_t nr, const config *cfg) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/verdict.txt", cfg->out);
  FILE *txt = fopen(path, "w");
  json_t *arr = json_array();
  for (size_t k = 0; k < nr; k++) {
    const run *r = runs[k];
    verdict v;
    judge(r, cfg, &v);
    char a[32], b[32], c[32], d[32];
    fmt_bytes(a, sizeof(a), v.rss_per_min);
    fmt_bytes(b, sizeof(b), v.heap_per_min);
    fmt_bytes(c, sizeof(c), v.heap_per_msg);
    fmt_bytes(d, sizeof(d), v.rss_per_msg);
    char line[2048];
    snprintf(
        line, sizeof(line),
        "run %d [%s]: %s (on %s, sampled from %s) | residual %.2f B/message (%" PRIu64
        " B retained after %" PRIu64
        " messages; profiler verdict: %s) | heap %s/min, %s/"
        "message | RSS %s/min, %s/message, peak %.1f MiB | published %" PRIu64
        ", max queue depth %" PRIu64 ", max held in process %" PRIu64 "%s\n",
        r->index, r->label, v.leak ? "LEAK" : "ok", v.basis, v.source,
        v.residual_per_msg, v.retained, v.messages,
        v.profiler_leaking ? "leaking" : "none", b, c, a, d,
        v.peak_rss / 1048576.0, v.published, v.max_depth, v.max_in_flight,
        r->exit_status ? " | worker exit status != 0" : "");
    uint64_t reconnects =
        r->final ? jint(r->final, "counters.consumer.reconnects") : 0;
    int pub_err = atomic_load(&((run *)r)->pub_error);
    if (reconnects || pub_err || !r->final) {
      size_t l = strlen(line);
      if (l && line[l - 1] == '\n') line[--l] = 0;
      snprintf(line + l, sizeof(line) - l, " | DISTURBED:%s%s%s\n",
               reconnects ? " the worker reconnected" : "",
               pub_err ? " the publisher lost its connection" : "",
               !r->final ? " no final report" : "");
    }
    fputs(line, stdout);
    if (txt) fputs(line, txt);
    json_array_append_new(
        arr,
        json_pack("{s:i, s:s, s:b, s:s, s:f, s:I, s:I, s:f, s:f, s:f, s:f, "
                  "s:f, s:I, s:I, s:I, s:i, s:i, s:I, s:s, s:I, s:b, s:b}",
                  "run", r->index, "label", r->label, "leak", v.leak, "basis",
                  v.basis, "residual_per_message", v.residual_per_msg,
                  "retained_bytes", (json_int_t)v.retained, "messages",
                  (json_int_t)v.messages, "heap_bytes_per_min", v.heap_per_min,
                  "heap_bytes_per_message", v.heap_per_msg, "rss_bytes_per_min",
                  v.rss_per_min, "rss_bytes_per_message", v.rss_per_msg,
                  "peak_rss_bytes", v.peak_rss, "published",
                  (json_int_t)v.published, "max_queue_depth",
                  (json_int_t)v.max_depth, "max_in_flight",
                  (json_int_t)v.max_in_flight, "exit_status", r->exit_status,
                  "interposing", r->interposing, "samples", (json_int_t)r->n,
                  "source", v.source, "reconnects", (json_int_t)reconnects,
                  "publisher_failed", pub_err != 0, "profiler_leaking",
                  v.profiler_leaking));
  }
  if (txt) fclose(txt);
  snprintf(path, sizeof(path), "%s/verdict.json", cfg->out);
  json_t *o = json_pack("{s:f, s:f, s:f, s:o}", "duration_s", cfg->duration,
                        "rate", cfg->rate, "threshold", cfg->threshold, "runs",
                        arr);
  json_dump_file(o, path, JSON_INDENT(2));
  json_decref(o);
}

/* ---- main ---------------------------------------------------------------- */

static void usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s [--duration S] [--interval MS] [--rate PER_S] "
          "[--mix SPEC]\n"
          "          [--out DIR] [--title TEXT] [--parallel] [--threshold "
          "B/MSG]\n"
          "          [--heap-threshold B/MSG] [--source auto|http|pipe]\n"
          "          [--worker PATH] [--uri URI] [--gateway URL]\n"
          "          [--gateway-latency-ms N] [--gateway-jitter-ms N] "
          "[--gateway-error-rate P]\n"
          "          [--worker-args \"ARGS\"] [--compare \"ARGS\" \"ARGS\" "
          "...]\n",
          argv0);
}

/* Split `s` on spaces into r->argv (kept in r->argv_store). */
static void split_args(run *r, const char *common, const char *own) {
  size_t l = strlen(common) + strlen(own) + 2;
  r->argv_store = malloc(l);
  snprintf(r->argv_store, l, "%s %s", common, own);
  size_t n = 0;
  for (char *tok = strtok(r->argv_store, " \t"); tok && n < MAX_ARGS - 1;
       tok = strtok(NULL, " \t"))
    r->argv[n++] = tok;
  r->argv[n] = NULL;
  snprintf(r->label, sizeof(r->label), "%s", *own ? own : "default");
}

static const config defaults = {.duration = 60,
                                .interval_ms = 1000,
                                .rate = 200,
                                .mix = "probe=5,forbidden=2,gone=2,bad=1",
                                .out = "soak-out",
                                .title =
                                    "sluice-soak: push-worker memory over time",
                                .worker = SOAK_WORKER,
                                .uri = "amqp://guest:guest@127.0.0.1:5672/",
                                .source = "auto",
                                .worker_args = "",
                                .threshold = 1.0,
                                .heap_threshold = 64.0,
                                .gw = {.latency_ms = 2}};

/* The options up to --compare into `cfg`; `*compare` says whether run specs
 * follow (from optind). Returns 0, or 2 after the usage. */
static int parse_args(int argc, char **argv, config *cfg, int *compare) {
  enum {
    O_DURATION = 256,
    O_INTERVAL,
    O_RATE,
    O_MIX,
    O_OUT,
    O_TITLE,
    O_PARALLEL,
    O_THRESHOLD,
    O_HEAP_THRESHOLD,
    O_SOURCE,
    O_WORKER,
    O_URI,
    O_GATEWAY,
    O_GW_LAT,
    O_GW_JIT,
    O_GW_ERR,
    O_WARGS,
    O_COMPARE
  };
  static const struct option lo[] = {
      {"duration", required_argument, 0, O_DURATION},
      {"interval", required_argument, 0, O_INTERVAL},
      {"rate", required_argument, 0, O_RATE},
      {"mix", required_argument, 0, O_MIX},
      {"out", required_argument, 0, O_OUT},
      {"title", required_argument, 0, O_TITLE},
      {"parallel", no_argument, 0, O_PARALLEL},
      {"threshold", required_argument, 0, O_THRESHOLD},
      {"heap-threshold", required_argument, 0, O_HEAP_THRESHOLD},
      {"source", required_argument, 0, O_SOURCE},
      {"worker", required_argument, 0, O_WORKER},
      {"uri", required_argument, 0, O_URI},
      {"gateway", required_argument, 0, O_GATEWAY},
      {"gateway-latency-ms", required_argument, 0, O_GW_LAT},
      {"gateway-jitter-ms", required_argument, 0, O_GW_JIT},
      {"gateway-error-rate", required_argument, 0, O_GW_ERR},
      {"worker-args", required_argument, 0, O_WARGS},
      {"compare", no_argument, 0, O_COMPARE},
      {0, 0, 0, 0}};
  *cfg = defaults;
  *compare = 0;
  int ch;
  /* "+": stop at the first non-option, so that --compare's run specs
   * (which start with "--" themselves) are not parsed as options. */
  while (!*compare && (ch = getopt_long(argc, argv, "+", lo, NULL)) != -1) {
    switch (ch) {
      case O_DURATION: cfg->duration = strtod(optarg, NULL); break;
      case O_INTERVAL:
        cfg->interval_ms = (unsigned)strtoul(optarg, NULL, 10);
        break;
      case O_RATE: cfg->rate = strtod(optarg, NULL); break;
      case O_MIX: cfg->mix = optarg; break;
      case O_OUT: cfg->out = optarg; break;
      case O_TITLE: cfg->title = optarg; break;
      case O_PARALLEL: cfg->parallel = 1; break;
      case O_THRESHOLD: cfg->threshold = strtod(optarg, NULL); break;
      case O_HEAP_THRESHOLD: cfg->heap_threshold = strtod(optarg, NULL); break;
      case O_SOURCE: cfg->source = optarg; break;
      case O_WORKER: cfg->worker = optarg; break;
      case O_URI: cfg->uri = optarg; break;
      case O_GATEWAY: cfg->gateway = optarg; break;
      case O_GW_LAT:
        cfg->gw.latency_ms = (unsigned)strtoul(optarg, NULL, 10);
        break;
      case O_GW_JIT:
        cfg->gw.jitter_ms = (unsigned)strtoul(optarg, NULL, 10);
        break;
      case O_GW_ERR: cfg->gw.error_rate = strtod(optarg, NULL); break;
      case O_WARGS: cfg->worker_args = optarg; break;
      case O_COMPARE: *compare = 1; break;
      default: usage(argv[0]); return 2;
    }
  }
  char err[128];
  pw_mix mix;
  if (cfg->duration <= 0 || cfg->duration > 7 * 86400 ||
      cfg->interval_ms < 50 || cfg->rate <= 0 ||
      (strcmp(cfg->source, "auto") && strcmp(cfg->source, "http") &&
       strcmp(cfg->source, "pipe")) ||
      pw_mix_parse(cfg->mix, &mix, err, sizeof(err))) {
    usage(argv[0]);
    return 2;
  }
  return 0;
}

static void catch_signals(void) {
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

/* The gateway the workers post to: --gateway, or a stand-in of our own. */
static int start_gateway(config *cfg, pw_gateway **gw, char *url, size_t cap) {
  *gw = NULL;
  if (cfg->gateway) {
    snprintf(url, cap, "%s", cfg->gateway);
    return 0;
  }
  if (pw_gateway_start(&cfg->gw, gw)) return -1;
  pw_gateway_url(*gw, url, cap);
  return 0;
}

/* Each run's queue and worker arguments; `specs` holds one per run, or is
 * NULL for a single run with the common arguments only. */
static void set_up_runs(run *runs, run **rp, size_t nr, const config *cfg,
                        char **specs) {
  for (size_t i = 0; i < nr; i++) {
    run *r = &runs[i];
    r->index = (int)i;
    r->fd = -1;
    snprintf(r->queue, sizeof(r->queue), "sluice.soak.%ld.%zu", (long)getpid(),
             i);
    split_args(r, cfg->worker_args, specs ? specs[i] : "");
    rp[i] = r;
  }
}

/* All runs, in parallel or one after the other; 1 if one failed to start. */
static int execute(run **rp, size_t nr, const config *cfg, const char *url) {
  int failed = 0;
  if (cfg->parallel) {
    size_t started = 0;
    for (; started < nr && !failed; started++)
      failed = start_run(rp[started], cfg, url) != 0;
    drive(rp, started - (failed ? 1 : 0), cfg);
    return failed;
  }
  for (size_t i = 0; i < nr && !failed && !interrupted; i++) {
    failed = start_run(rp[i], cfg, url) != 0;
    if (!failed) drive(&rp[i], 1, cfg);
  }
  return failed;
}

/* Delete the runs' queues and free what they hold. */
static void clean_up(run *runs, size_t nr, const config *cfg) {
  sluice_publisher_opts po = {.uri = cfg->uri};
  sluice_publisher *p;
  if (sluice_publisher_new(&po, &p) == 0) {
    for (size_t i = 0; i < nr; i++) {
      char dlq[256];
      sluice_publisher_delete_queue(p, runs[i].queue, NULL);
      sluice_publisher_delete_queue(
          p, pw_dlq_name(runs[i].queue, dlq, sizeof(dlq)), NULL);
    }
    sluice_publisher_free(p);
  }
  for (size_t i = 0; i < nr; i++) {
    json_decref(runs[i].last);
    json_decref(runs[i].final);
    free(runs[i].s);
    free(runs[i].argv_store);
  }
}

int main(int argc, char **argv) {
  config cfg;
  int compare;
  if (parse_args(argc, argv, &cfg, &compare)) return 2;
  size_t nr = compare ? (size_t)(argc - optind) : 1;
  if ((!compare && optind < argc) || nr == 0 || nr > MAX_RUNS) {
    fprintf(stderr, "sluice-soak: give 1 to %d runs after --compare (last)\n",
            MAX_RUNS);
    return 2;
  }
  if (mkdir(cfg.out, 0777) && errno != EEXIST) {
    fprintf(stderr, "sluice-soak: cannot create %s: %s\n", cfg.out,
            strerror(errno));
    return 1;
  }
  catch_signals();
  pw_gateway *gw;
  char gw_url[256];
  if (start_gateway(&cfg, &gw, gw_url, sizeof(gw_url))) return 1;

  static run runs[MAX_RUNS];
  run *rp[MAX_RUNS];
  set_up_runs(runs, rp, nr, &cfg, compare ? argv + optind : NULL);
  printf("sluice-soak: %zu run%s of %.0f s at %.0f jobs/s (mix \"%s\"), %s, "
         "gateway %s%s\n",
         nr, nr > 1 ? "s" : "", cfg.duration, cfg.rate, cfg.mix,
         cfg.parallel ? "in parallel" : "one after the other", gw_url,
         gw ? " (stand-in)" : "");
  fflush(stdout);
  int failed = execute(rp, nr, &cfg, gw_url);
  write_csv(rp, nr, &cfg);
  write_plot(rp, nr, &cfg);
  write_verdicts(rp, nr, &cfg);
  printf("sluice-soak: wrote %s/soak.csv, %s/soak.svg (.png), "
         "%s/verdict.json\n",
         cfg.out, cfg.out, cfg.out);
  clean_up(runs, nr, &cfg);
  pw_gateway_stop(gw);
  return failed ? 1 : 0;
}
