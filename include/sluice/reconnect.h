/* SPDX-License-Identifier: MIT */
/** \file
 * Close notifications through a bounded listener registry, and the backoff
 * used between reconnect attempts.
 *
 * The registry has a fixed capacity (sluice_consumer_opts.max_close_listeners,
 * default 16, at most 4096). Registering returns a handle; removing takes
 * it. Listeners of scope SLUICE_LISTEN_GENERATION belong to one connection:
 * they see that connection's close and are then removed automatically, so
 * code that registers one per connection never accumulates them. A full
 * registry is an error (SLUICE_ELIMIT), never growth.
 *
 * Listeners receive SLUICE_EV_CLOSED (connection or channel lost: broker
 * close with reply code and text, socket error, missed heartbeats),
 * SLUICE_EV_CANCELLED (the broker cancelled a subscription) and
 * SLUICE_EV_GAVE_UP, once each, on the loop thread. A listener may remove
 * itself or others from inside its callback; one registered from inside a
 * callback first sees the next event.
 */
#ifndef SLUICE_RECONNECT_H
#define SLUICE_RECONNECT_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/error.h>
#include <sluice/export.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sluice_consumer sluice_consumer;
struct sluice_event;

/** Reconnect policy of a consumer (sluice_consumer_opts.reconnect).
 *  Zero-initialise; a zero field means its default. \since 0.2 (in
 *  sluice/consumer.h before) */
typedef struct sluice_reconnect_opts {
  int enabled;             /**< 0 (default): a lost connection ends run() */
  unsigned min_delay_ms;   /**< default 100 */
  unsigned max_delay_ms;   /**< default 30000; not below min_delay_ms
                                 (SLUICE_EINVAL) */
  unsigned max_attempts;   /**< consecutive failed attempts before giving
                                 up (a successful reconnect starts the
                                 count over); 0 = default 10;
                                 UINT32_MAX = forever */
  unsigned reset_after_ms; /**< a connection up this long resets the
                                 backoff delay to min_delay_ms; 10000 */
  int shuffle;             /**< try the URIs in random order (drawn from
                                 `random` when set) */
  /** While every node refuses TCP connections quickly (its host answers,
   *  nothing listens: a broker restarting), try again about this often
   *  (+-50 % jitter) instead of waiting out the backoff delay; these probes
   *  are not attempts (no SLUICE_EV_RECONNECTING, not counted towards
   *  max_attempts), so the time to SLUICE_EV_GAVE_UP is unchanged. "Quick"
   *  is under half this interval. Default 250; UINT32_MAX: off (plain
   *  backoff, e.g. for a fleet so large that its probes would matter).
   *  \since 0.2 */
  unsigned refused_probe_ms;
  /** Injectable clock in ms (tests); NULL: CLOCK_MONOTONIC. Loop thread. */
  uint64_t (*now_ms)(void *user);
  /** Injectable randomness (tests): jitter and the URI shuffle; NULL: a
   *  per-consumer generator seeded at sluice_consumer_new(). */
  uint64_t (*random)(void *user);
  void *clock_user; /**< passed to now_ms and random */
} sluice_reconnect_opts;

/** How long a close listener stays registered. */
typedef enum sluice_listen_scope {
  /** Until the current connection (generation) dies; removed automatically
   *  after its close event. Registered while disconnected, it binds to the
   *  next connection. */
  SLUICE_LISTEN_GENERATION = 0,
  /** Until sluice_consumer_off_close(). */
  SLUICE_LISTEN_PERSISTENT = 1
} sluice_listen_scope;

/** A listener handle; 0 is never a valid handle. */
typedef uint64_t sluice_listener;

/** A close listener; runs on the loop thread. `ev` is borrowed for the
 *  call. It may call sluice_consumer_stop() and (un)register listeners, but
 *  not sluice_consumer_free() (refused: see there). */
typedef void (*sluice_close_fn)(sluice_consumer *c,
                                const struct sluice_event *ev, void *user);

/** Register a close listener. Any thread.
 *  \return 0 and `*out`; SLUICE_EINVAL (NULL c/fn/out, unknown scope);
 *          SLUICE_ELIMIT when the registry is full (nothing is registered).
 *  \since 0.2 (sluice_on_close() before) */
SLUICE_EXPORT int sluice_consumer_on_close(sluice_consumer *c,
                                           sluice_close_fn fn, void *user,
                                           sluice_listen_scope scope,
                                           sluice_listener *out);

/** Remove a close listener. Any thread, including from inside a listener.
 *  \return 0; SLUICE_EINVAL (NULL c); SLUICE_EALREADY when the handle was
 *          already removed (twice, or automatically with its generation) or
 *          never valid.
 *  \since 0.2 (sluice_off_close() before) */
SLUICE_EXPORT int sluice_consumer_off_close(sluice_consumer *c,
                                            sluice_listener h);

/** Number of registered close listeners (0 for NULL). Any thread.
 *  \since 0.2 (sluice_close_listener_count() before) */
SLUICE_EXPORT size_t
sluice_consumer_close_listener_count(const sluice_consumer *c);

/** Exponential backoff with full jitter (the "Full Jitter" scheme): the n-th
 *  delay is uniform in [min, min(max, min * 2^n)]. Pure; not thread-safe. */
typedef struct sluice_backoff {
  uint64_t min_ms, max_ms;
  unsigned attempt; /**< failures so far */
} sluice_backoff;

/** Next delay in ms for a random 64-bit value `r`; increments `attempt`. */
SLUICE_EXPORT uint64_t sluice_backoff_next(sluice_backoff *b, uint64_t r);
/** Start over from the minimum delay (after a connection stayed up). */
SLUICE_EXPORT void sluice_backoff_reset(sluice_backoff *b);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_RECONNECT_H */
