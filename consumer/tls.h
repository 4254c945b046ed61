/* SPDX-License-Identifier: MIT */
/* TLS for amqps:// on rabbitmq-c's SSL socket (OpenSSL): the settings,
 * copied and checked once; the socket of one attempt, configured on its
 * SSL_CTX (verification by OpenSSL, host names and IP addresses, SNI, the
 * version floor, the client certificate); and what went wrong, told apart
 * from what OpenSSL saw during the handshake, since rabbitmq-c reports
 * several different failures with one status. Not installed. */
#ifndef SLUICE_CONSUMER_TLS_H
#define SLUICE_CONSUMER_TLS_H

#include <stddef.h>

#include <amqp.h>

#include <sluice/consumer.h>

#include "amqp_util.h"

/* sluice_tls_opts with every string copied. */
typedef struct sluice__tls_config {
  char *ca_file, *ca_dir, *cert_file, *key_file, *key_password;
  char *server_name;
  int min_version; /* TLS1_2_VERSION or TLS1_3_VERSION */
  int verify_peer, verify_hostname;
} sluice__tls_config;

/* Copy `o` into `out` and check it: the CA, certificate and key files load
 * and the key matches the certificate. Returns 0, SLUICE_EINVAL (a value out
 * of range), SLUICE_ETLSCONFIG (a file that does not load; why in `text`)
 * or SLUICE_ENOMEM. `out` is to be freed with sluice__tls_config_free()
 * whatever the result. */
int sluice__tls_config_init(sluice__tls_config *out, const sluice_tls_opts *o,
                            char *text, size_t textlen);
void sluice__tls_config_free(sluice__tls_config *cfg);
/* Free OpenSSL's state of the calling thread (its error queue) now rather
 * than in the thread's exit: a detached attempt does this before it says
 * it is done, so nothing of it is left once a waiter sees it ended. */
void sluice__tls_thread_stop(void);
/* A copy of `src` (for an attempt that may outlive its consumer). */
int sluice__tls_config_copy(sluice__tls_config *dst,
                            const sluice__tls_config *src);

/* What OpenSSL saw during one attempt's handshake and first reads. */
struct sluice__cancel;

typedef struct sluice__tls_diag {
  const sluice__tls_config *cfg;
  struct sluice__cancel *cancel; /* tracks the socket from handshake start */
  const char *sni;               /* the name sent in SNI, or NULL for none */
  int started;                   /* the handshake began (TCP was up) */
  int done;                      /* the handshake completed */
  int version;                   /* the version it agreed on (TLS1_3_VERSION) */
  int cert_requested;            /* the server asked for a client certificate */
  long verify_err;               /* first X509_V_ERR_* of the server's chain */
  int verify_depth;
  char verify_subject[160]; /* the certificate it concerns */
  int alert;                /* fatal alert received from the server, -1 */
  int alert_sent;           /* fatal alert we sent, -1 */
} sluice__tls_diag;

/* A new SSL socket on `conn` for a connection to `host` (the URI's),
 * configured from `cfg`; `diag` (owned by the caller, alive as long as the
 * socket) records the handshake. Returns 0, SLUICE_ENOMEM or
 * SLUICE_ETLSCONFIG (why in `text`). */
int sluice__tls_socket(amqp_connection_state_t conn,
                       const sluice__tls_config *cfg, const char *host,
                       sluice__tls_diag *diag, amqp_socket_t **out, char *text,
                       size_t textlen);

/* When the failure happened. */
enum { SLUICE__TLS_AT_OPEN, SLUICE__TLS_AT_LOGIN };

/* The SLUICE_E* code for a failed amqps:// attempt on this thread, from
 * rabbitmq-c's `status` and what `diag` and OpenSSL's error queue say; the
 * reason in OpenSSL's words goes to `text`. Returns 0 when the failure is
 * not TLS's (a TCP error, an AMQP refusal): the caller classifies it. */
int sluice__tls_error(const sluice__tls_diag *diag, int when, int status,
                      char *text, size_t textlen);

#endif
