/* SPDX-License-Identifier: MIT */
/* A small fault-injecting TCP proxy for tests: listens on 127.0.0.1 (an
 * ephemeral port), forwards every connection to 127.0.0.1:<upstream>, and
 * can cut, black-hole or refuse connections on command. It runs on its own
 * libevent base in its own thread; every function below may be called from
 * any thread (including a sluice callback) and returns once the proxy thread
 * has carried the command out. */
#ifndef SLUICE_TEST_PROXY_H
#define SLUICE_TEST_PROXY_H

#include <stdint.h>

typedef struct tproxy tproxy;

/* Called on the proxy thread for each accepted connection; `n` counts them
 * from 1. Must not call back into the proxy. */
typedef void (*tproxy_accept_fn)(void *user, unsigned n);

/* Start a proxy to 127.0.0.1:`upstream_port`. 0 on success, -1 on error. */
int tproxy_start(uint16_t upstream_port, tproxy **out);
/* Close everything and join the thread. NULL is a no-op. */
void tproxy_free(tproxy *p);

/* The local port it listens on. */
uint16_t tproxy_port(const tproxy *p);
/* Fill `buf` with "amqp://guest:guest@127.0.0.1:<port>/". */
const char *tproxy_uri(const tproxy *p, char *buf, unsigned len);

/* Close both sides of every open connection now (no data is flushed).
 * Returns how many connections were cut. */
unsigned tproxy_cut(tproxy *p);
/* The same with a TCP reset (SO_LINGER 0) on both sides instead of a FIN. */
unsigned tproxy_reset(tproxy *p);
/* Stop forwarding on every open connection, in both directions, without
 * closing anything: only heartbeats can tell. Connections accepted later
 * forward normally. Returns how many connections were black-holed. */
unsigned tproxy_blackhole(tproxy *p);
/* refuse != 0: close the listening socket, so connects are refused
 * (ECONNREFUSED); 0: listen again on the same port. Returns 0, or -1 when
 * the port cannot be bound again. */
int tproxy_refuse(tproxy *p, int refuse);

/* hold != 0: connections accepted from now on are never forwarded nor
 * answered (a hung node: the TCP handshake completes, then silence); 0:
 * forward new ones again. Cut closes held ones too. */
void tproxy_hold_new(tproxy *p, int hold);

/* Connections accepted since start, and open now (black holes included). */
unsigned tproxy_accepted(const tproxy *p);
unsigned tproxy_open(const tproxy *p);

void tproxy_on_accept(tproxy *p, tproxy_accept_fn fn, void *user);

#endif
