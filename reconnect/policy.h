/* SPDX-License-Identifier: MIT */
/* The reconnect policy, pure: given what went wrong and an injected clock
 * and random source, it answers "try again after this delay", "give up" or
 * "fatal", and which node of a cluster to try next. It owns no event and
 * reads no consumer: the consumer asks it and arms its own timer. Also the
 * one place that classifies errors (sluice__err_class). Not installed. */
#ifndef SLUICE_RECONNECT_POLICY_H
#define SLUICE_RECONNECT_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/reconnect.h>

/* ---- errors -------------------------------------------------------------- */

enum {
  /* Retrying cannot fix it (credentials, vhost, missing queue, a conflicting
   * declaration, a bad URI or argument): stop instead of a reconnect storm. */
  SLUICE__ERR_FATAL = 1,
  /* Every node of a cluster would answer the same (credentials and vhosts
   * are cluster-wide): do not try the next one. */
  SLUICE__ERR_EVERY_NODE = 2,
  /* The broker closed something and said why: its reply code and text are
   * worth reporting. */
  SLUICE__ERR_BROKER = 4,
  /* A failed declaration closed only the topology channel (reopened at
   * once): the connection and its deliveries live on. */
  SLUICE__ERR_CHANNEL_ONLY = 8
};

/* The SLUICE__ERR_* bits of a SLUICE_E* code (0 for a transient fault). */
int sluice__err_class(int err);

/* 0 for errors that retrying cannot fix. */
static inline int sluice__retryable(int err) {
  return !(sluice__err_class(err) & SLUICE__ERR_FATAL);
}

/* ---- the policy ---------------------------------------------------------- */

typedef struct sluice__policy {
  sluice_reconnect_opts o; /* with defaults applied */
  sluice_backoff backoff;
  unsigned attempt;         /* failed attempts in a row */
  uint64_t connected_at_ms; /* when the live connection came up; 0: none */
  uint64_t rng_state;       /* the built-in generator, when o.random is NULL */
  uint64_t window_end_ms;   /* end of the current backoff delay (probes
                               inside it are not attempts); 0: none */
  size_t n_nodes, next_node;
} sluice__policy;

typedef enum sluice__action {
  SLUICE__RETRY,   /* try again after `delay_ms` (attempt number `attempt`) */
  SLUICE__GIVE_UP, /* `attempt` failures in a row: max_attempts reached */
  SLUICE__FATAL    /* reconnecting is off, or the error is not retryable */
} sluice__action;

typedef struct sluice__decision {
  sluice__action action;
  uint64_t delay_ms;
  unsigned attempt;
  /* 1: a probe of refusing nodes inside the current backoff delay; not an
   * attempt (no RECONNECTING event, not counted towards max_attempts) */
  int probe;
} sluice__decision;

/* `o` with its defaults applied; `seed` seeds the built-in generator. */
void sluice__policy_init(sluice__policy *p, const sluice_reconnect_opts *o,
                         size_t n_nodes, uint64_t seed);
/* The policy's clock: o.now_ms, else the monotonic clock (ms). */
uint64_t sluice__policy_now(const sluice__policy *p);
/* The policy's randomness: o.random, else splitmix64. */
uint64_t sluice__policy_random(sluice__policy *p);
/* Put `n` pointers in random order (Fisher-Yates, the policy's random). */
void sluice__policy_shuffle(sluice__policy *p, void **items, size_t n);

/* A connection is up (its topology recovered). */
void sluice__policy_up(sluice__policy *p);
/* The connection made after failed attempts is up: the run of failures
 * ends. Returns how many attempts it took. The delay starts over only once
 * a connection stays up reset_after_ms (see _failed), so a connection that
 * flaps keeps backing off instead of storming. */
unsigned sluice__policy_connected(sluice__policy *p);
/* A connection was lost, or an attempt failed, with `err`. */
sluice__decision sluice__policy_failed(sluice__policy *p, int err);
/* An attempt failed because every node refused the TCP connection (their
 * hosts answered, nothing listened: brokers restarting), the slowest
 * refusal after `slowest_ms`. A quick refusal (under refused_probe_ms / 2)
 * is probed again every refused_probe_ms (jittered by +-50 %) inside the
 * current backoff delay, and those probes are not attempts: the backoff,
 * the attempt count and the time to GAVE_UP stay as without them. A slow
 * one, or probing off (refused_probe_ms UINT32_MAX): as _failed. */
sluice__decision sluice__policy_refused(sluice__policy *p, int err,
                                        uint64_t slowest_ms);

/* The node to try `i`-th (0 .. n_nodes - 1) in an attempt. */
size_t sluice__policy_node(const sluice__policy *p, size_t i);
/* Node `idx` took the connection: stay on it next time. */
void sluice__policy_node_up(sluice__policy *p, size_t idx);
/* No node took it: the next attempt starts at the following node. */
void sluice__policy_nodes_failed(sluice__policy *p);

#endif
