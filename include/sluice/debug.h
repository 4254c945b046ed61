/* SPDX-License-Identifier: MIT */
/** \file
 * The debug HTTP endpoint: the C counterpart of Go's `import _
 * "net/http/pprof"`, on libevent's evhttp, in library `libsluice_debug`
 * (CMake target `sluice::debug`, which links `sluice::sluice` and
 * `sluice::profiling`).
 *
 * Paths:
 * - `/debug/pprof/heap`: gzipped profile.proto (`go tool pprof
 *   http://127.0.0.1:6060/debug/pprof/heap`); `?debug=1` gives the text form
 *   with the MemStats block at the bottom, as Go does; `?seconds=N` answers
 *   after N seconds with the difference over that time; `?base=ID` the
 *   difference against a snapshot kept earlier with `/debug/pprof/snapshot`.
 * - `/debug/pprof/residual`: the per-message residual profile (same options).
 *   Both also take `format=top|folded|legacy`, `sample_index=`, `rows=`,
 *   and for the residual `queue=` and `outcome=` (docs/debug-endpoint.md).
 * - `/debug/pprof/snapshot`: keep a snapshot; answers its ID.
 * - `/debug/vars`: JSON with the MemStats fields and the consumer counters.
 * - `/metrics`: Prometheus text format (deliveries by outcome, in flight,
 *   buffer depth and bytes, reconnects, close listeners, stale acks, residual
 *   bytes per message by queue and outcome, live heap).
 * - `/healthz`: "ok" while the consumer is connected (or with no consumer).
 *
 * It binds to loopback unless told otherwise; any other address needs
 * `allow_remote` and a bearer token. Requests are bounded in size and in
 * total time (`timeout_s` for a whole request, however slowly its bytes
 * come), connections in number (`max_connections`: the oldest one still
 * sending its request makes room for a new one), and a failed accept() at
 * the fd limit pauses accepting with a backoff instead of spinning: a slow
 * or malicious client cannot stall anything, nor take the sockets a
 * consumer in the same process needs (docs/debug-endpoint.md, "Limits").
 * The server runs on its own thread and event_base, so report generation
 * never blocks a consumer's loop, and its allocations are outside every
 * message scope.
 */
#ifndef SLUICE_DEBUG_H
#define SLUICE_DEBUG_H

#include <stddef.h>

#include <sluice/consumer.h>
#include <sluice/error.h>
#include <sluice/export.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sluice_debug_server sluice_debug_server;

/** Options. Zero-initialise; zero means the default. */
typedef struct sluice_debug_opts {
  /** The consumer whose counters to serve (/debug/vars, /metrics,
   *  /healthz); NULL for the profiler only. It must outlive the server.
   *  \since 0.2 (an argument of sluice_debug_server_start() before) */
  sluice_consumer *consumer;
  /** "host:port"; default "127.0.0.1:6060"; port 0 picks a free one
   *  (read it back with sluice_debug_server_port()). `host` is an IP
   *  literal ("[::1]:6060" for IPv6) or "localhost"; names are not
   *  resolved; an empty host (":6060") means every interface. Read during
   *  sluice_debug_server_new(). */
  const char *addr;
  /** Required to bind an address that is not loopback. */
  int allow_remote;
  /** Bearer token demanded on every request (`Authorization: Bearer ...`,
   *  else 401); mandatory with allow_remote. RFC 6750 characters only
   *  (letters, digits, "-._~+/="). Copied. Without a token, requests whose
   *  Host header is not loopback are refused (403: DNS rebinding). */
  const char *token;
  /** Request line + headers; no path takes a body, so any body is refused
   *  (413). Default 8192. */
  size_t max_request_bytes;
  /** Seconds a connection has to send a whole request (request line and
   *  headers), from its accept or its previous answer, however slowly the
   *  bytes trickle in; also the idle time allowed while an answer is
   *  written (a ?seconds=N request gets N more). Default 10.
   *  \since 0.2 (an idle time only, restarted by every byte, in 0.1) */
  int timeout_s;
  /** Cap for ?seconds=N; default 300. At most 4 such requests wait at
   *  once; more are answered 503. */
  unsigned max_seconds;
  unsigned max_snapshots; /**< kept for ?base=; default 8 (oldest go) */
  /** Connections open at once; default 32. Past it, a new connection
   *  closes the one that has waited longest for its request; when every one
   *  is being answered, the new one is closed and accepting pauses.
   *  \since 0.2 */
  unsigned max_connections;
  /** Log sink (the consumer's type): accept() failures, once per episode.
   *  Default: stderr at SLUICE_LOG_WARN. Called on the server's thread.
   *  \since 0.2 */
  sluice_log_fn log;
  void *log_user; /**< for `log` \since 0.2 */
} sluice_debug_opts;

/** Create the endpoint and start serving on its own thread. Any thread;
 *  the server's memory is not counted in the caller's message scope, if it
 *  is in one.
 *  \param opts NULL for the defaults (profiler only, 127.0.0.1:6060)
 *  \return 0; SLUICE_EINVAL (`out` NULL; bad address; remote without
 *          allow_remote or token; a token with other characters; negative
 *          timeout_s); SLUICE_ESOCKET (cannot bind); SLUICE_ENOMEM.
 *  \since 0.2 (sluice_debug_server_start(c, opts, out) before) */
SLUICE_EXPORT int sluice_debug_server_new(const sluice_debug_opts *opts,
                                          sluice_debug_server **out);

/** The port the server listens on (0 for NULL). Any thread. */
SLUICE_EXPORT int sluice_debug_server_port(const sluice_debug_server *s);

/** Stop the server, join its thread, free it; requests in progress are
 *  dropped. Any thread, once. NULL is a no-op.
 *  \since 0.2 (sluice_debug_server_stop() before) */
SLUICE_EXPORT void sluice_debug_server_free(sluice_debug_server *s);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_DEBUG_H */
