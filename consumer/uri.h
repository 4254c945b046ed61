/* SPDX-License-Identifier: MIT */
/* The AMQP URI parser with its diagnosis (uri.c), for the consumer, the
 * publisher and the fuzz target. sluice_uri_parse() is the public face of
 * the same code. Not installed. */
#ifndef SLUICE_CONSUMER_URI_H
#define SLUICE_CONSUMER_URI_H

#include <stddef.h>

#include <sluice/consumer.h>

/* Why and where a URI is malformed: `what` names the fault and the part it
 * is in ("the port is not a number"), `at` is its byte offset in the URI.
 * Neither quotes the URI, which may hold a password. */
typedef struct sluice__uri_err {
  const char *what;
  size_t at;
} sluice__uri_err;

/* sluice_uri_parse() that says why it failed (`err` may be NULL). A buffer
 * of strlen(uri) + 8 bytes is always enough (docs/consumer.md, "URIs"). */
int sluice__uri_parse(const char *uri, sluice_uri *out, char *buf,
                      size_t buflen, sluice__uri_err *err);

/* The same into a buffer of its own: on success `*buf` is to be freed
 * (the strings of `out` point into it or to static defaults). */
int sluice__uri_parse_alloc(const char *uri, sluice_uri *out, char **buf,
                            sluice__uri_err *err);

/* "the port is not a number at byte 17" into `dst` for a failure `rc`
 * with its `err` (the code's message for other failures). Returns dst. */
char *sluice__uri_err_text(int rc, const sluice__uri_err *err, char *dst,
                           size_t dstlen);

#endif
