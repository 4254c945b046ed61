/* SPDX-License-Identifier: MIT */
/* push-worker's command line: every option is one row of a table (its
 * field, its kind and its bounds); a few kinds need a word of their own. */
#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"

const char *const pw_leak_names[] = {"none",       "global-map", "probe-path",
                                     "error-path", "listener",   NULL};

static const pw_config defaults = {
    .uri = "amqp://guest:guest@127.0.0.1:5672/",
    .queue = "push.jobs",
    .gateway = "http://127.0.0.1:8080/push",
    .api_key = "sluice-demo",
    .ack = SLUICE_ACK_MANUAL,
    .prefetch = 100,
    .http_conns = 8,
    .http_timeout_ms = 5000,
    .max_attempts = 5,
    .retry_delay_ms = 100,
    .stats_fd = -1,
    .prof_rate = 1,
    .leak_window = 100,
    .grace_ms = 1000,
    .prof_key = "type",
    .stop_timeout_ms = 10000,
};

void pw_cli_usage(FILE *f, const char *argv0) {
  fprintf(
      f,
      "usage: %s [options]\n"
      "  --uri URI               broker (amqp://guest:guest@127.0.0.1:5672/)\n"
      "  --queue NAME            work queue (push.jobs); dead letters go to "
      "NAME.dead\n"
      "  --gateway URL           push gateway "
      "(http://127.0.0.1:8080/push)\n"
      "  --api-key KEY           sent as Authorization: Bearer KEY "
      "(sluice-demo)\n"
      "  --ack auto|manual       acknowledgement mode (manual)\n"
      "  --prefetch N            unacknowledged deliveries (100)\n"
      "  --workers N             handler threads; 0 runs handlers on the "
      "loop (0)\n"
      "  --http-conns N          keep-alive connections to the gateway "
      "(8)\n"
      "  --http-timeout-ms MS    per request (5000)\n"
      "  --max-attempts N        deliveries before a failing job is "
      "dead-lettered (5)\n"
      "  --retry-delay-ms MS     pause before a failed job is nacked "
      "(100)\n"
      "  --leak MODE             none|global-map|probe-path|error-path|"
      "listener\n"
      "  --debug-addr HOST:PORT  serve /debug/pprof, /debug/vars, "
      "/metrics\n"
      "  --report                print the residual report at exit\n"
      "  --count N               stop after N jobs finished\n"
      "  --duration S            stop after S seconds\n"
      "  --stats-fd FD           JSON lines (events, samples, final) to "
      "FD\n"
      "  --stats-interval-ms MS  sample period on --stats-fd (1000)\n"
      "  --prof-rate BYTES|none  profiler sampling rate; 1 = every "
      "allocation (1);\n"
      "                          0 turns the profiler off\n"
      "  --leak-window N         messages between growth-curve points "
      "(100)\n"
      "  --horizon N,MS          verdict horizon: messages and ms "
      "(50000,120000)\n"
      "  --prof-key KEY          residual per value of KEY (type): "
      "routing_key,\n"
      "                          type, app_id, header:NAME; none\n"
      "  --grace-ms MS           residual re-check delay (1000)\n"
      "  --max-listeners N       close-listener registry capacity (16)\n"
      "  --stop-timeout-ms MS    graceful stop budget (10000)\n"
      "  --quiet                 fewer messages on stderr\n",
      argv0);
}

typedef enum kind {
  K_STR,     /* const char * */
  K_FLAG,    /* int, set to 1; no argument */
  K_UINT,    /* an unsigned integer of the field's size, 0 .. max */
  K_UINT1,   /* the same, 1 .. max */
  K_ACK,     /* auto|manual */
  K_LEAK,    /* one of pw_leak_names */
  K_SECONDS, /* double > 0 */
  K_RATE,    /* "none" or an unsigned integer */
  K_HORIZON, /* N,MS: messages and ms, both above 0 */
  K_HELP
} kind;

typedef struct opt {
  const char *name;
  kind k;
  size_t off, size; /* the field in pw_config */
  unsigned long long max;
} opt;

#define F(field) offsetof(pw_config, field), sizeof(((pw_config *)0)->field)
#define NONE 0, 0

static const opt opts[] = {
    {"uri", K_STR, F(uri), 0},
    {"queue", K_STR, F(queue), 0},
    {"gateway", K_STR, F(gateway), 0},
    {"api-key", K_STR, F(api_key), 0},
    {"ack", K_ACK, F(ack), 0},
    {"prefetch", K_UINT1, F(prefetch), 65535},
    {"workers", K_UINT, F(workers), 256},
    {"http-conns", K_UINT1, F(http_conns), 1024},
    {"http-timeout-ms", K_UINT1, F(http_timeout_ms), 3600000},
    {"max-attempts", K_UINT1, F(max_attempts), 1000},
    {"retry-delay-ms", K_UINT, F(retry_delay_ms), 3600000},
    {"leak", K_LEAK, F(leak), 0},
    {"debug-addr", K_STR, F(debug_addr), 0},
    {"report", K_FLAG, F(report), 0},
    {"count", K_UINT, F(count), UINT64_MAX},
    {"duration", K_SECONDS, F(duration_s), 0},
    {"stats-fd", K_UINT, F(stats_fd), 65535},
    {"stats-interval-ms", K_UINT1, F(stats_interval_ms), 3600000},
    {"prof-rate", K_RATE, F(prof_rate), SIZE_MAX},
    {"leak-window", K_UINT1, F(leak_window), 1000000},
    {"grace-ms", K_UINT, F(grace_ms), 3600000},
    {"horizon", K_HORIZON, NONE, 0},
    {"prof-key", K_STR, F(prof_key), 0},
    {"max-listeners", K_UINT1, F(max_listeners), 4096},
    {"stop-timeout-ms", K_UINT1, F(stop_timeout_ms), 3600000},
    {"quiet", K_FLAG, F(quiet), 0},
    {"help", K_HELP, NONE, 0},
};
#define N_OPTS (sizeof(opts) / sizeof(*opts))

static int parse_uint(const char *s, unsigned long long max,
                      unsigned long long *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || v > max || s[0] == '-') return -1;
  *out = v;
  return 0;
}

/* Store `v` in an integer field of `size` bytes (its bound was checked). */
static void store_uint(void *field, size_t size, unsigned long long v) {
  switch (size) {
    case sizeof(uint8_t): *(uint8_t *)field = (uint8_t)v; break;
    case sizeof(uint16_t): *(uint16_t *)field = (uint16_t)v; break;
    case sizeof(uint32_t): *(uint32_t *)field = (uint32_t)v; break;
    default: *(uint64_t *)field = (uint64_t)v; break;
  }
}

/* Apply one option; -1 for a bad value. */
static int apply(const opt *o, const char *arg, pw_config *c) {
  void *field = (char *)c + o->off;
  unsigned long long v;
  switch (o->k) {
    case K_STR: *(const char **)field = arg; return 0;
    case K_FLAG: *(int *)field = 1; return 0;
    case K_UINT:
    case K_UINT1:
      if (parse_uint(arg, o->max, &v) || (o->k == K_UINT1 && v == 0)) return -1;
      store_uint(field, o->size, v);
      return 0;
    case K_ACK:
      if (strcmp(arg, "auto") == 0) c->ack = SLUICE_ACK_AUTO;
      else if (strcmp(arg, "manual") == 0) c->ack = SLUICE_ACK_MANUAL;
      else return -1;
      return 0;
    case K_LEAK:
      for (int i = 0; pw_leak_names[i]; i++)
        if (strcmp(arg, pw_leak_names[i]) == 0) {
          c->leak = (pw_leak)i;
          return 0;
        }
      return -1;
    case K_SECONDS: {
      char *end;
      c->duration_s = strtod(arg, &end);
      return *end || c->duration_s <= 0 ? -1 : 0;
    }
    case K_RATE:
      if (strcmp(arg, "none") == 0) {
        c->prof_rate = SLUICE_PROF_RATE_NONE;
        return 0;
      }
      if (parse_uint(arg, o->max, &v)) return -1;
      c->prof_rate = (size_t)v;
      return 0;
    case K_HORIZON: {
      char buf[64];
      unsigned long long ms;
      char *comma;
      snprintf(buf, sizeof(buf), "%s", arg);
      if (!(comma = strchr(buf, ','))) return -1;
      *comma = 0;
      if (parse_uint(buf, UINT32_MAX, &v) || v == 0 ||
          parse_uint(comma + 1, 86400000, &ms) || ms == 0)
        return -1;
      c->horizon_msgs = v;
      c->horizon_ms = (long)ms;
      return 0;
    }
    default: return -1;
  }
}

int pw_cli_parse(int argc, char **argv, pw_config *c) {
  *c = defaults;
  struct option lo[N_OPTS + 1];
  for (size_t i = 0; i < N_OPTS; i++) {
    int has_arg = opts[i].k == K_FLAG || opts[i].k == K_HELP
                      ? no_argument
                      : required_argument;
    lo[i] = (struct option){opts[i].name, has_arg, NULL, (int)i};
  }
  lo[N_OPTS] = (struct option){0, 0, 0, 0};
  int ch;
  while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    if (ch < 0 || (size_t)ch >= N_OPTS) return -1; /* getopt said why */
    if (opts[ch].k == K_HELP) {
      pw_cli_usage(stdout, argv[0]);
      return 1;
    }
    if (apply(&opts[ch], optarg, c)) {
      fprintf(stderr, "push-worker: bad value for --%s: \"%s\"\n",
              opts[ch].name, optarg);
      return -1;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "push-worker: unexpected argument \"%s\"\n", argv[optind]);
    return -1;
  }
  if (c->stats_fd >= 0 && !c->stats_interval_ms) c->stats_interval_ms = 1000;
  return 0;
}
