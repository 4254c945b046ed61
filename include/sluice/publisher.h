/* SPDX-License-Identifier: MIT */
/** \file
 * A small blocking publisher with publisher confirms: publish a batch, wait
 * for the broker's confirms, learn which messages were nacked or returned.
 * Used to fill queues (demo, tests, benchmarks) and to republish to retry or
 * dead-letter queues.
 *
 * A publisher owns its own connection and is not thread-safe: use one per
 * thread. Calls block, bounded by the timeouts in the options. Callbacks
 * run inside the call that reads the broker's answers (publish, wait) and
 * take `(publisher, payload, user)`; they must not free the publisher
 * (refused, as sluice_consumer_free() from a consumer's callback).
 *
 * Resource alarms: when the broker runs low on memory or disk it blocks the
 * connections that publish (`connection.blocked`) and stops reading from
 * them. The publisher reports it (SLUICE_EV_BLOCKED / SLUICE_EV_UNBLOCKED to
 * `on_event`, sluice_publisher_blocked()) and never writes into a blocked
 * connection: a call waits for `connection.unblocked`, bounded by
 * `blocked_timeout_ms`, then fails with SLUICE_EBLOCKED.
 */
#ifndef SLUICE_PUBLISHER_H
#define SLUICE_PUBLISHER_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/consumer.h>
#include <sluice/error.h>
#include <sluice/export.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sluice_publisher sluice_publisher;

/** A message the broker returned as unroutable (mandatory publish). Borrowed
 *  for the duration of the callback. */
typedef struct sluice_returned {
  uint16_t reply_code; /**< e.g. 312 NO_ROUTE */
  const char *reply_text;
  const char *exchange;
  const char *routing_key;
  const void *body;
  size_t body_len;
  const char *message_id; /**< or NULL */
} sluice_returned;

/** Receives each message the broker returned. `r` is borrowed for the call.
 *  \since 0.2 (0.1 had no publisher argument) */
typedef void (*sluice_return_fn)(sluice_publisher *p, const sluice_returned *r,
                                 void *user);

/** Receives the publisher's events: SLUICE_EV_BLOCKED (the broker blocked
 *  the connection; `text` is its reason, e.g. "low on memory") and
 *  SLUICE_EV_UNBLOCKED. Runs on the thread that called into the publisher,
 *  inside that call; `ev` is borrowed for the call. Like every publisher
 *  callback it must not free the publisher.
 *  \since 0.2 */
typedef void (*sluice_publisher_event_fn)(sluice_publisher *p,
                                          const sluice_event *ev, void *user);

/** Publisher options. Zero-initialise; zero means the default. */
typedef struct sluice_publisher_opts {
  /** Default amqp://guest:guest@127.0.0.1:5672/; read during
   *  sluice_publisher_new(), not kept. */
  const char *uri;
  const char *connection_name; /**< read during sluice_publisher_new() */
  int connect_timeout_ms;      /**< default 10000 */
  int confirm_timeout_ms;      /**< sluice_publisher_wait() budget; 30000 */
  unsigned max_outstanding;    /**< unconfirmed messages before publish waits;
                                    default 1024 */
  int no_confirms;             /**< 1: fire and forget (not recommended) */
  sluice_return_fn on_return;  /**< unroutable messages; may be NULL */
  void *return_user;           /**< for on_return (`user` in 0.1) \since 0.2 */
  sluice_log_fn log;           /**< default: stderr \since 0.2 */
  void *log_user;              /**< \since 0.2 */
  int log_level;               /**< most verbose level logged; default WARN;
                          negative: nothing \since 0.2 */
  /** BLOCKED / UNBLOCKED; may be NULL. \since 0.2 */
  sluice_publisher_event_fn on_event;
  void *event_user; /**< for on_event \since 0.2 */
  /** How long a call waits for `connection.unblocked` once it finds the
   *  connection blocked; default confirm_timeout_ms; negative: do not wait
   *  (SLUICE_EBLOCKED at once). \since 0.2 */
  int blocked_timeout_ms;
  sluice_tls_opts tls; /**< for an amqps:// `uri`; read during
                            sluice_publisher_new() \since 0.2 */
} sluice_publisher_opts;

/** Properties of a published message; NULL means persistent, no fields.
 *  Strings and headers are read during the call, not kept. */
typedef struct sluice_publish_props {
  const char *content_type;
  const char *message_id;
  const char *correlation_id;
  const char *reply_to;
  const char *expiration;
  const char *type;
  const char *app_id;
  uint8_t transient; /**< 1: delivery_mode 1; default persistent (2) */
  uint8_t priority;
  int mandatory; /**< return unroutable messages (counted, callback) */
  const sluice_kv *headers;
  size_t n_headers;
} sluice_publish_props;

/** What happened to everything published so far. */
typedef struct sluice_publish_report {
  uint64_t published;
  uint64_t confirmed; /**< acked by the broker */
  uint64_t nacked;    /**< the broker could not take them */
  uint64_t returned;  /**< unroutable (mandatory) */
  uint64_t pending;   /**< not yet confirmed */
} sluice_publish_report;

/** Connect and enable confirms.
 *  \return 0; SLUICE_EURI, SLUICE_ECONNECT, SLUICE_EAUTH, SLUICE_EVHOST,
 *          SLUICE_ETIMEDOUT, SLUICE_ENOMEM; for amqps:// the TLS codes
 *          (SLUICE_ETLS*, SLUICE_ENOTTLS) and for amqp:// to a TLS port
 *          SLUICE_ETLSPORT, as for sluice_consumer_connect(). */
SLUICE_EXPORT int sluice_publisher_new(const sluice_publisher_opts *opts,
                                       sluice_publisher **out);

/** Close the connection (pending confirms are not awaited). NULL: no-op.
 *  From inside the publisher's own callback: refused (logged; nothing
 *  happens). */
SLUICE_EXPORT void sluice_publisher_free(sluice_publisher *p);

/** Publish one message. Waits for confirms first when max_outstanding are
 *  unconfirmed, and for `connection.unblocked` while the broker blocks the
 *  connection. `exchange` "" is the default exchange. Everything is read
 *  during the call.
 *  \return 0; SLUICE_EINVAL; SLUICE_ECLOSED (the broker closed the channel,
 *          e.g. a missing exchange: see sluice_publisher_last_close());
 *          SLUICE_EBLOCKED (still blocked after blocked_timeout_ms; nothing
 *          was sent); SLUICE_ETIMEDOUT; SLUICE_ESOCKET.
 *  \since 0.2 (sluice_publish() before) */
SLUICE_EXPORT int sluice_publisher_publish(sluice_publisher *p,
                                           const char *exchange,
                                           const char *routing_key,
                                           const void *body, size_t len,
                                           const sluice_publish_props *props);

/** Wait until every published message is confirmed or nacked (bounded by
 *  confirm_timeout_ms), then fill `report` (may be NULL).
 *  \return 0 when all were confirmed; SLUICE_ENACKED when some were nacked;
 *          SLUICE_ERETURNED when some were returned (and none nacked);
 *          SLUICE_EBLOCKED when the broker blocked the connection for
 *          blocked_timeout_ms during the wait (the confirms of what it has
 *          not read yet cannot come); SLUICE_ETIMEDOUT; SLUICE_ECLOSED. */
SLUICE_EXPORT int sluice_publisher_wait(sluice_publisher *p,
                                        sluice_publish_report *report);

/** Declare a queue on the publisher's connection (tests, demos); not
 *  remembered. \return as sluice_consumer_declare_queue(). */
SLUICE_EXPORT int sluice_publisher_declare_queue(sluice_publisher *p,
                                                 const sluice_queue_decl *d);

/** Declare an exchange on the publisher's connection. */
SLUICE_EXPORT int sluice_publisher_declare_exchange(
    sluice_publisher *p, const sluice_exchange_decl *d);

/** Bind a queue on the publisher's connection.
 *  \since 0.2 (sluice_publisher_bind() before) */
SLUICE_EXPORT int sluice_publisher_bind_queue(sluice_publisher *p,
                                              const char *queue,
                                              const char *exchange,
                                              const char *routing_key);

/** Delete a queue (if it exists); `*messages` gets how many it held. */
SLUICE_EXPORT int sluice_publisher_delete_queue(sluice_publisher *p,
                                                const char *queue,
                                                uint32_t *messages);

/** Messages ready in a queue (passive declare); SLUICE_ENOTFOUND if the
 *  queue does not exist. */
SLUICE_EXPORT int sluice_publisher_queue_depth(sluice_publisher *p,
                                               const char *queue,
                                               uint32_t *messages,
                                               uint32_t *consumers);

/** Whether the broker blocks the connection now, as far as the publisher has
 *  read (it reads on every call into it). The reason is copied to `buf` (may
 *  be NULL) when blocked.
 *  \return 1 blocked, 0 not (or `p` NULL).
 *  \since 0.2 */
SLUICE_EXPORT int sluice_publisher_blocked(const sluice_publisher *p, char *buf,
                                           size_t buflen);

/** The last broker close (reply code, text copied to buf), 0 if none. */
SLUICE_EXPORT int sluice_publisher_last_close(const sluice_publisher *p,
                                              char *buf, size_t buflen);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_PUBLISHER_H */
