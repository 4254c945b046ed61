/* SPDX-License-Identifier: MIT */
/* Reconnect policy: which errors are worth retrying, when to try again,
 * when to give up. The attempt itself runs in consumer.c (on_retry). */
#include "../consumer/internal.h"

int sluice__retryable(int err) {
  switch (err) {
    case SLUICE_EAUTH:      /* credentials will not fix themselves */
    case SLUICE_EVHOST:
    case SLUICE_ENOTFOUND:  /* passive declare or subscribe: missing queue */
    case SLUICE_ECONFLICT:  /* declared with other arguments */
    case SLUICE_EURI:
    case SLUICE_EINVAL:
    case SLUICE_ENOTSUP:
      return 0;
    default:
      return 1;
  }
}

uint64_t sluice__reconnect_now(sluice_consumer *c) {
  const sluice_reconnect_opts *r = &c->o.reconnect;
  return r->now_ms ? r->now_ms(r->clock_user) : sluice__now_ms();
}

static uint64_t next_random(sluice_consumer *c) {
  const sluice_reconnect_opts *r = &c->o.reconnect;
  if (r->random) return r->random(r->clock_user);
  /* splitmix64: enough for jitter, no shared state between consumers */
  uint64_t z = (c->rng_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void sluice__reconnect_schedule(sluice_consumer *c, int err) {
  if (!c->o.reconnect.enabled || !sluice__retryable(err)) {
    if (c->o.reconnect.enabled)
      sluice__log(c, SLUICE_LOG_ERROR, "not reconnecting: %s",
                  sluice_strerror(err));
    sluice__finish(c, err);
    return;
  }
  /* A connection that stayed up long enough starts the backoff over. */
  uint64_t up_ms = sluice__reconnect_now(c) - c->connected_at_ms;
  if (c->connected_at_ms && up_ms >= c->o.reconnect.reset_after_ms) {
    sluice_backoff_reset(&c->backoff);
    c->attempt = 0;
  }
  c->connected_at_ms = 0;
  if (c->o.reconnect.max_attempts != UINT32_MAX &&
      c->attempt >= c->o.reconnect.max_attempts) {
    sluice__log(c, SLUICE_LOG_ERROR, "gave up after %u attempts: %s",
                c->attempt, sluice_strerror(err));
    sluice_event ev = {.type = SLUICE_EV_GAVE_UP,
                       .err = err,
                       .attempt = c->attempt,
                       .generation = atomic_load(&c->generation)};
    sluice__emit(c, &ev);
    sluice__finish(c, SLUICE_EGAVEUP);
    return;
  }
  c->attempt++;
  uint64_t delay = sluice_backoff_next(&c->backoff, next_random(c));
  sluice_event ev = {.type = SLUICE_EV_RECONNECTING,
                     .err = err,
                     .delay_ms = delay,
                     .attempt = c->attempt,
                     .generation = atomic_load(&c->generation)};
  sluice__emit(c, &ev);
  sluice__log(c, SLUICE_LOG_INFO, "reconnecting in %llu ms (attempt %u)",
              (unsigned long long)delay, c->attempt);
  sluice__loop_arm(&c->loop, SLUICE__W_RETRY, delay);
}

void sluice__reconnect_connected(sluice_consumer *c) {
  /* Generation 1 is the first connection (made after failed attempts at
   * start): not a reconnect. */
  if (atomic_load(&c->generation) > 1) atomic_fetch_add(&c->n_reconnects, 1);
  c->connected_at_ms = sluice__reconnect_now(c);
  sluice_event ev = {.type = SLUICE_EV_CONNECTED,
                     .attempt = c->attempt,
                     .generation = atomic_load(&c->generation)};
  /* max_attempts counts consecutive failures: a connection that was made
   * (and recovered) ends the run of failures. The delay itself starts over
   * only once a connection stays up reset_after_ms (see schedule above), so
   * a connection that flaps keeps backing off instead of storming. */
  c->attempt = 0;
  sluice__emit(c, &ev);
}
