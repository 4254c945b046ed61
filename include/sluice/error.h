/* SPDX-License-Identifier: MIT */
/** \file
 * Error codes shared by every sluice module.
 *
 * Every function that can fail returns an `int`: 0 on success, one of the
 * negative `SLUICE_E*` codes below on failure. When a function that takes a
 * callback fails, the callback is never called.
 *
 * Errors raised by the broker (a `connection.close` or `channel.close` with a
 * reply code) are reported with a library code that classifies them
 * (`SLUICE_EAUTH`, `SLUICE_ENOTFOUND`, ...); the broker's own AMQP reply code
 * and text stay readable through sluice_consumer_last_close().
 */
#ifndef SLUICE_ERROR_H
#define SLUICE_ERROR_H

#include <sluice/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* XX(name, value, message). Values are stable and dense from -1 down:
 * append, never renumber (error.c checks both at compile time).
 * SLUICE_ECANCELED is reserved: no 0.2 function returns it. */
#define SLUICE_ERRNO_MAP(XX)                                                  \
  XX(EINVAL, -1, "invalid argument")                                          \
  XX(ENOMEM, -2, "out of memory")                                             \
  XX(EURI, -3, "malformed AMQP URI")                                          \
  XX(ECONNECT, -4, "cannot connect to the broker")                            \
  XX(EAUTH, -5, "the broker refused the credentials (ACCESS_REFUSED)")        \
  XX(EVHOST, -6, "the virtual host does not exist or access to it is denied") \
  XX(ENOTFOUND, -7, "queue or exchange not found (NOT_FOUND)")                \
  XX(ECLOSED, -8, "the connection is closed")                                 \
  XX(ECHANNEL, -9, "the broker closed the channel")                           \
  XX(EPROTO, -10, "AMQP protocol error or unexpected frame")                  \
  XX(ETIMEDOUT, -11, "operation timed out")                                   \
  XX(EHEARTBEAT, -12, "missed heartbeats: the peer is gone")                  \
  XX(ELIMIT, -13, "capacity limit reached")                                   \
  XX(ESTATE, -14, "operation not allowed in the current state")               \
  XX(EALREADY, -15, "already done")                                           \
  XX(ESTALE, -16, "delivery belongs to a connection that no longer exists")   \
  XX(ECANCELED, -17, "operation canceled")                                    \
  XX(EHANDLER, -18, "the handler returned an invalid value")                  \
  XX(ETOOBIG, -19, "message body exceeds the configured maximum")             \
  XX(ENACKED, -20, "the broker nacked a published message")                   \
  XX(ERETURNED, -21, "the broker returned an unroutable message")             \
  XX(EBROKER, -22, "the broker closed the connection with an error")          \
  XX(ESOCKET, -23, "socket error")                                            \
  XX(EGAVEUP, -24, "gave up reconnecting after the last attempt")             \
  XX(ENOTSUP, -25, "operation not supported")                                 \
  XX(EIO, -26, "I/O error while writing output")                              \
  XX(EBLOCKED, -27, "the broker blocked the connection (resource alarm)")     \
  XX(ECONFLICT, -28, "declared entity exists with different arguments")       \
  XX(ETLS, -29, "TLS handshake or TLS connection failed")                     \
  XX(ETLSCA, -30, "the broker's certificate is not signed by a trusted CA")   \
  XX(ETLSEXPIRED, -31,                                                        \
     "the broker's certificate has expired or is not yet valid")              \
  XX(ETLSHOST, -32,                                                           \
     "the broker's certificate does not match the host name or address")      \
  XX(ETLSVERIFY, -33, "the broker's certificate failed verification")         \
  XX(ETLSCLIENT, -34, "the broker refused the client certificate")            \
  XX(ENOTTLS, -35,                                                            \
     "TLS to a port that does not speak TLS (amqps:// to a "                  \
     "plaintext port?)")                                                      \
  XX(ETLSPORT, -36,                                                           \
     "plaintext AMQP to a TLS port (amqp:// where amqps:// "                  \
     "is needed?)")                                                           \
  XX(ETLSCONFIG, -37, "TLS settings unusable (CA, certificate or key file)")  \
  XX(ENOTALLOWED, -38,                                                        \
     "the broker does not allow this operation (530 NOT_ALLOWED)")

/** The error codes. */
typedef enum sluice_errno {
  SLUICE_OK = 0,
#define SLUICE_ERR_ENUM_(name, val, msg) SLUICE_##name = (val),
  SLUICE_ERRNO_MAP(SLUICE_ERR_ENUM_)
#undef SLUICE_ERR_ENUM_
/** The lowest code (derived from the table; for tests). */
#define SLUICE_ERR_ONE_(name, val, msg) -1
      SLUICE_ERR_MIN_ = 0 SLUICE_ERRNO_MAP(SLUICE_ERR_ONE_)
#undef SLUICE_ERR_ONE_
} sluice_errno;

/** Human-readable message for an error code ("success" for 0, "unknown
 *  error" for a value outside the table). Never NULL; thread-safe. */
SLUICE_EXPORT const char *sluice_strerror(int err);

/** Name of an error code ("SLUICE_EAUTH"; "SLUICE_OK" for 0; "SLUICE_EUNKNOWN"
 *  outside the table). Never NULL; thread-safe. */
SLUICE_EXPORT const char *sluice_err_name(int err);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_ERROR_H */
