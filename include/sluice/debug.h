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
 * - `/debug/pprof/snapshot`: keep a snapshot; answers its ID.
 * - `/debug/vars`: JSON with the MemStats fields and the consumer counters.
 * - `/metrics`: Prometheus text format (deliveries by outcome, in flight,
 *   buffer depth and bytes, reconnects, close listeners, stale acks, residual
 *   bytes per message by queue and outcome, live heap).
 * - `/healthz`: "ok" while the consumer is connected (or with no consumer).
 *
 * It binds to loopback unless told otherwise; any other address needs
 * `allow_remote` and a bearer token. Requests are bounded in size and time,
 * so a slow or malicious client cannot stall anything. The server runs on its
 * own thread and event_base, so report generation never blocks a consumer's
 * loop, and its allocations are outside every message scope.
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
  /** "host:port"; default "127.0.0.1:6060"; port 0 picks a free one
   *  (read it back with sluice_debug_server_port()). */
  const char *addr;
  /** Required to bind an address that is not loopback. */
  int allow_remote;
  /** Bearer token demanded on every request (`Authorization: Bearer ...`);
   *  mandatory with allow_remote. Copied. */
  const char *token;
  size_t max_request_bytes; /**< headers + body; default 8192 */
  int timeout_s;            /**< per connection; default 10 */
  unsigned max_seconds;     /**< cap for ?seconds=N; default 300 */
  unsigned max_snapshots;   /**< kept for ?base=; default 8 (oldest go) */
} sluice_debug_opts;

/** Start the endpoint on its own thread.
 *  \param c  the consumer whose counters to serve; NULL for profiler only.
 *            It must outlive the server.
 *  \return 0; SLUICE_EINVAL (bad address; remote without allow_remote or
 *          token); SLUICE_ESOCKET (cannot bind); SLUICE_ENOMEM. */
SLUICE_EXPORT int sluice_debug_server_start(sluice_consumer *c,
                                            const sluice_debug_opts *opts,
                                            sluice_debug_server **out);

/** The port the server listens on. */
SLUICE_EXPORT int sluice_debug_server_port(const sluice_debug_server *s);

/** Stop the server, join its thread, free it. NULL is a no-op. */
SLUICE_EXPORT void sluice_debug_server_stop(sluice_debug_server *s);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_DEBUG_H */
