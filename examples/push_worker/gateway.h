/* SPDX-License-Identifier: MIT */
/* A push-gateway stand-in (in the spirit of FCM's HTTP API) for the demo,
 * the tests and the soak runner, so that none of them needs the internet.
 *
 * POST /push with a JSON body {"to": TOKEN, "notification": {...}} and the
 * header `Authorization: Bearer <api key>` answers, after the configured
 * latency:
 *   401 when the Authorization header is missing or wrong;
 *   400 when the body is not such a JSON object;
 *   403 for tokens starting with "forbidden", 410 for "gone", 500 for "fail";
 *   otherwise, with probability error_rate, 400 or 503 (error_4xx_share
 *   decides which); otherwise 200 {"name": "messages/<n>"}.
 * GET /stats answers the counters as JSON; GET /healthz answers "ok".
 *
 * It runs on its own thread and event_base, on loopback. */
#ifndef PW_GATEWAY_H
#define PW_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

typedef struct pw_gateway pw_gateway;

typedef struct pw_gateway_opts {
  const char *addr;       /* "host:port"; default "127.0.0.1:0" (any port) */
  unsigned latency_ms;    /* added before every /push reply */
  unsigned jitter_ms;     /* plus uniform [0, jitter_ms] */
  double error_rate;      /* random failures, 0..1 */
  double error_4xx_share; /* share of those answered 400 (rest 503) */
  const char *api_key;    /* default "sluice-demo"; copied */
  uint64_t seed;          /* for the random failures; default 1 */
} pw_gateway_opts;

typedef struct pw_gateway_stats {
  uint64_t requests; /* POST /push received */
  uint64_t replied;  /* replies sent */
  uint64_t ok;       /* 2xx */
  uint64_t c400, c401, c403, c410, c500, c503;
  uint64_t in_progress; /* received, not yet answered */
} pw_gateway_stats;

/* Start; 0 or -1 (message on stderr). */
int pw_gateway_start(const pw_gateway_opts *opts, pw_gateway **out);
int pw_gateway_port(const pw_gateway *g);
/* "http://127.0.0.1:<port>/push" */
const char *pw_gateway_url(const pw_gateway *g, char *buf, size_t cap);
void pw_gateway_stats_get(const pw_gateway *g, pw_gateway_stats *out);
/* The counters as one JSON object; returns buf. */
const char *pw_gateway_stats_json(const pw_gateway_stats *s, char *buf,
                                  size_t cap);
/* Stop (pending requests are answered 503), join, free. NULL: no-op. */
void pw_gateway_stop(pw_gateway *g);

#endif
