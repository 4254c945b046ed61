/* SPDX-License-Identifier: MIT */
/* The reconnect policy (policy.h): backoff with full jitter, the count of
 * failures in a row, the reset after a connection that stayed up, the
 * rotation through a cluster's nodes, and which errors are worth retrying.
 * No events, no consumer: the consumer asks and arms its own timer. */
#include "policy.h"

#include <sluice/error.h>

#include "../consumer/util.h"

int sluice__err_class(int err) {
  switch (err) {
    case SLUICE_EAUTH:  /* credentials will not fix themselves */
    case SLUICE_EVHOST: /* nor will a missing vhost */
      return SLUICE__ERR_FATAL | SLUICE__ERR_EVERY_NODE | SLUICE__ERR_BROKER;
    case SLUICE_EURI: return SLUICE__ERR_FATAL | SLUICE__ERR_EVERY_NODE;
    case SLUICE_ENOTFOUND: /* passive declare or subscribe: missing queue */
    case SLUICE_ECONFLICT: /* declared with other arguments */
      return SLUICE__ERR_FATAL | SLUICE__ERR_BROKER | SLUICE__ERR_CHANNEL_ONLY;
    case SLUICE_ECHANNEL: return SLUICE__ERR_BROKER | SLUICE__ERR_CHANNEL_ONLY;
    case SLUICE_ECLOSED:
    case SLUICE_EBROKER: return SLUICE__ERR_BROKER;
    /* 530 NOT_ALLOWED (a reused consumer tag, an operation the user may not
     * do): the same request is refused the same way after a reconnect. */
    case SLUICE_ENOTALLOWED: return SLUICE__ERR_FATAL | SLUICE__ERR_BROKER;
    case SLUICE_EINVAL:
    case SLUICE_ENOTSUP: return SLUICE__ERR_FATAL;
    case SLUICE_ETLSCONFIG: /* our own files: the same for every node */
      return SLUICE__ERR_FATAL | SLUICE__ERR_EVERY_NODE;
    case SLUICE_ETLSCA:      /* the broker's certificate, as verified here: */
    case SLUICE_ETLSEXPIRED: /* a node's, so the next node may do */
    case SLUICE_ETLSHOST:
    case SLUICE_ETLSVERIFY:
    case SLUICE_ENOTTLS:  /* amqps:// to a plaintext port, or */
    case SLUICE_ETLSPORT: /* amqp:// to a TLS one: a URI to fix */
      return SLUICE__ERR_FATAL;
    /* SLUICE_ETLSCLIENT and SLUICE_ETLS are retried: under TLS 1.3 the
     * refusal of a client certificate is inferred from a close (tls.c), and
     * a handshake can fail for passing reasons. */
    default: return 0;
  }
}

void sluice__policy_init(sluice__policy *p, const sluice_reconnect_opts *o,
                         size_t n_nodes, uint64_t seed) {
  memset(p, 0, sizeof(*p));
  p->o = *o;
  p->backoff.min_ms = o->min_delay_ms;
  p->backoff.max_ms = o->max_delay_ms;
  p->rng_state = seed;
  p->n_nodes = n_nodes ? n_nodes : 1;
}

uint64_t sluice__policy_now(const sluice__policy *p) {
  return p->o.now_ms ? p->o.now_ms(p->o.clock_user) : sluice__now_ms();
}

uint64_t sluice__policy_random(sluice__policy *p) {
  if (p->o.random) return p->o.random(p->o.clock_user);
  /* splitmix64: enough for jitter, no shared state between consumers */
  uint64_t z = (p->rng_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void sluice__policy_shuffle(sluice__policy *p, void **items, size_t n) {
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)(sluice__policy_random(p) % i);
    void *t = items[i - 1];
    items[i - 1] = items[j];
    items[j] = t;
  }
}

void sluice__policy_up(sluice__policy *p) {
  p->connected_at_ms = sluice__policy_now(p);
  p->window_end_ms = 0;
}

unsigned sluice__policy_connected(sluice__policy *p) {
  unsigned attempts = p->attempt;
  p->connected_at_ms = sluice__policy_now(p);
  p->window_end_ms = 0;
  p->attempt = 0;
  return attempts;
}

/* The wait before the next probe: refused_probe_ms +-50 %, so a fleet that
 * lost the same node does not probe it in step. */
static uint64_t probe_delay(sluice__policy *p) {
  uint64_t ms = p->o.refused_probe_ms;
  uint64_t lo = ms / 2, span = ms + 1; /* [ms/2, ms/2 + ms] */
  return lo + sluice__policy_random(p) % span;
}

static sluice__decision fail(sluice__policy *p, int err, int probing) {
  sluice__decision d = {SLUICE__FATAL, 0, p->attempt, 0};
  if (!p->o.enabled || !sluice__retryable(err)) return d;
  uint64_t now = sluice__policy_now(p);
  /* Inside the backoff delay, a node that refused quickly is probed again
   * soon: it answers, so its host is up and the broker is starting or
   * restarting. A probe is not an attempt: the delay runs on. */
  if (probing && now < p->window_end_ms) {
    uint64_t left = p->window_end_ms - now, pd = probe_delay(p);
    d.action = SLUICE__RETRY;
    d.delay_ms = pd < left ? pd : left;
    d.probe = 1;
    return d;
  }
  /* A connection that stayed up long enough starts the backoff over. */
  uint64_t up_ms = now - p->connected_at_ms;
  if (p->connected_at_ms && up_ms >= p->o.reset_after_ms) {
    sluice_backoff_reset(&p->backoff);
    p->attempt = 0;
  }
  p->connected_at_ms = 0;
  if (p->o.max_attempts != UINT32_MAX && p->attempt >= p->o.max_attempts) {
    d.action = SLUICE__GIVE_UP;
    d.attempt = p->attempt;
    return d;
  }
  p->attempt++;
  d.action = SLUICE__RETRY;
  d.attempt = p->attempt;
  d.delay_ms = sluice_backoff_next(&p->backoff, sluice__policy_random(p));
  p->window_end_ms = now + d.delay_ms;
  if (probing) {
    uint64_t pd = probe_delay(p);
    if (pd < d.delay_ms) d.delay_ms = pd;
  }
  return d;
}

sluice__decision sluice__policy_failed(sluice__policy *p, int err) {
  return fail(p, err, 0);
}

sluice__decision sluice__policy_refused(sluice__policy *p, int err,
                                        uint64_t slowest_ms) {
  int probing = p->o.refused_probe_ms != UINT32_MAX &&
                slowest_ms < p->o.refused_probe_ms / 2;
  return fail(p, err, probing);
}

size_t sluice__policy_node(const sluice__policy *p, size_t i) {
  return (p->next_node + i) % p->n_nodes;
}

void sluice__policy_node_up(sluice__policy *p, size_t idx) {
  p->next_node = idx;
}

void sluice__policy_nodes_failed(sluice__policy *p) {
  p->next_node = (p->next_node + 1) % p->n_nodes;
}
