/* SPDX-License-Identifier: MIT */
/* What the consumer and the publisher share about AMQP: the defaults, the
 * channel numbers, opening a connection, and conversions between
 * rabbitmq-c's types and sluice's (amqp_util.c, conn.c). Not installed. */
#ifndef SLUICE_CONSUMER_AMQP_UTIL_H
#define SLUICE_CONSUMER_AMQP_UTIL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <amqp.h>

#include <sluice/consumer.h>

/* Defaults shared by sluice_consumer_opts and sluice_publisher_opts. */
#define SLUICE__DEFAULT_URI "amqp://guest:guest@127.0.0.1:5672/"
#define SLUICE__DEFAULT_FRAME_MAX 131072
#define SLUICE__MIN_FRAME_MAX 4096 /* AMQP 0-9-1's frame-min-size */
#define SLUICE__DEFAULT_CONNECT_TIMEOUT_MS 10000

/* Channels: deliveries (consumer) or publishes (publisher) on one, the
 * synchronous declarations on the other, so that a failed declaration,
 * which closes its channel, never takes the deliveries with it. */
#define SLUICE__CH_MAIN 1
#define SLUICE__CH_TOPOLOGY 2

/* ---- connecting (conn.c) ------------------------------------------------- */

struct sluice__tls_config;

/* Another thread's way to end an open, or the synchronous calls that
 * follow it, at once: a flag, an eventfd that sluice's TCP connect polls,
 * and a duplicate of the socket in use, which it shuts down (a TLS
 * handshake, a login, an RPC then fail at once). */
typedef struct sluice__cancel {
  pthread_mutex_t mu;
  int cancelled;
  int event_fd; /* readable once cancelled */
  int dup_fd;   /* the socket being opened or used, or -1 */
} sluice__cancel;

int sluice__cancel_init(sluice__cancel *k);
void sluice__cancel_destroy(sluice__cancel *k);
/* The owner uses socket `fd` from now on: a cancel shuts it down (at once
 * if already cancelled: then SLUICE_ECANCELED). `k` may be NULL. */
int sluice__cancel_track(sluice__cancel *k, int fd);
/* ... and no longer (before closing it, or handing it over). */
void sluice__cancel_untrack(sluice__cancel *k);
/* Cancel: any thread (_locked: with k->mu held). */
void sluice__cancel_fire(sluice__cancel *k);
void sluice__cancel_fire_locked(sluice__cancel *k);
int sluice__cancelled(sluice__cancel *k); /* 0 for NULL */

typedef struct sluice__open_args {
  const char *uri, *conn_name;
  int connect_timeout_ms, rpc_timeout_ms, heartbeat_s, frame_max;
  const struct sluice__tls_config *tls; /* for amqps:// URIs */
  const struct sluice__logger *log;     /* warnings */
  /* Out, may be NULL: set when the TCP connect itself failed with a socket
   * error (refused, or unreachable), to how long it took; left alone
   * otherwise. */
  uint64_t *refused_ms;
  /* In/out, may be NULL (then always asked): a plaintext login reset before
   * any reply makes sluice ask the port, on a connection of its own,
   * whether it speaks TLS. That is one more connection to the node; asked
   * once (*tls_asked set) it is not asked again while *tls_asked stays set,
   * so a node that resets every login sees one connection per attempt. */
  int *tls_asked;
  sluice__cancel *cancel; /* may be NULL */
} sluice__open_args;

/* Open a TCP (or TLS, for amqps://) connection and log in; on failure
 * `code`/`text` say why. */
int sluice__amqp_open(const sluice__open_args *a, amqp_connection_state_t *out,
                      uint16_t *code, char *text, size_t textlen);
/* 1 if the last synchronous call on `conn` ended the connection: the
 * broker answered with a connection.close (rabbitmq-c returns it as that
 * call's error, and sends no close-ok), or the socket failed or timed out.
 */
int sluice__rpc_conn_gone(amqp_connection_state_t conn);
/* The result of the last synchronous call on `ch`; a failed call closed the
 * channel, which is answered and opened again. */
int sluice__rpc_result(amqp_connection_state_t conn, amqp_channel_t ch,
                       uint16_t *code, char *text, size_t textlen);

/* ---- conversions (amqp_util.c) ------------------------------------------- */

/* `b` as a C string in `dst` (truncated to dstlen - 1 bytes); returns dst. */
char *sluice__bytes_str(char *dst, size_t dstlen, amqp_bytes_t b);

int sluice__kv_to_table(amqp_pool_t *pool, const sluice_kv *kv, size_t n,
                        amqp_table_t *out);
/* The x- arguments of a queue declaration (quorum, DLX, TTL, ...). */
int sluice__queue_args(amqp_pool_t *pool, const sluice_queue_decl *d,
                       amqp_table_t *out);
int sluice__reply_to_err(amqp_rpc_reply_t r, uint16_t *code, char *text,
                         size_t textlen);
int sluice__close_code_to_err(uint16_t code, const char *text);
int sluice__amqp_status_to_err(int status);
/* Size needed to copy properties (strings + headers) into a block. */
size_t sluice__props_size(const amqp_basic_properties_t *p);
/* Copy properties into `blk` (at least sluice__props_size bytes). */
void sluice__props_copy(const amqp_basic_properties_t *p,
                        sluice_properties *out, char *blk);

#endif
