/* SPDX-License-Identifier: MIT */
/* Helpers for tests against the TLS node of scripts/tls-broker.sh: where it
 * listens, its certificates, TLS settings for each case, a publisher over
 * TLS to fill queues on it, and a log sink that keeps what was logged. */
#ifndef SLUICE_TEST_TLS_UTIL_H
#define SLUICE_TEST_TLS_UTIL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/sluice.h>

/* Call first in main(): exits 77 (skipped, loudly) when the TLS node is not
 * up or its certificates are missing, or fails when SLUICE_REQUIRE_TLS=1. */
void tt_require_tls(const char *test);

uint16_t tt_tls_port(void);  /* SLUICE_TLS_PORT, default 5671 */
uint16_t tt_amqp_port(void); /* the node's plaintext port (5691) */
/* DIR/certs/<name> (SLUICE_TLS_DIR, default /tmp/sluice-tls). */
const char *tt_cert(const char *name);

/* The working settings: the test CA, the client certificate. */
sluice_tls_opts tt_tls(void);
/* "amqps://guest:guest@<host>:<tls port>/" (or the plaintext port). */
const char *tt_uri(const char *host);
const char *tt_plain_uri(const char *host);

/* A publisher over TLS to the node. */
sluice_publisher *tt_publisher(void);
/* Delete and declare `q` on the TLS node, then publish n messages whose
 * message_id is their number. */
void tt_fresh_filled(const char *q, unsigned n);
/* Ready messages in `q`, waiting up to `ms` for `want`. */
uint32_t tt_depth_eventually(const char *q, uint32_t want, int ms);
void tt_delete_queue(const char *q);

/* A log sink keeping every line (bounded). */
typedef struct tt_log {
  pthread_mutex_t mu;
  char text[16384];
  size_t len;
  unsigned lines;
  int echo; /* also print them */
} tt_log;
void tt_log_init(tt_log *l);
void tt_log_fn(int level, const char *msg, void *user);
/* 1 if some line contains `needle`. */
int tt_log_has(tt_log *l, const char *needle);
void tt_log_clear(tt_log *l);

#endif
