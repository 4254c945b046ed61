/* SPDX-License-Identifier: MIT */
/* AMQP URI parsing (https://www.rabbitmq.com/uri-spec.html), without the
 * query part. rabbitmq-c has amqp_parse_url, but it writes into the string it
 * is given and does not say what is wrong or where; this one reports
 * SLUICE_EURI for every malformed input, with the fault and its offset, and
 * percent-decodes.
 *
 * Buffer bound: each part is decoded into `buf` at most as long as its
 * encoded form, the parts are disjoint pieces of the URI after its scheme
 * (at least 7 bytes), and four NULs end them; defaults ("guest",
 * "localhost", "/") are static strings, never copied. So strlen(uri) + 8
 * bytes always suffice (the fuzz target checks it). */
#include "uri.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

typedef struct parser {
  const char *uri;
  char *o, *end; /* where the next part goes in the caller's buffer */
  sluice__uri_err *err;
} parser;

static int fail(parser *p, const char *at, const char *what) {
  if (p->err) {
    p->err->what = what;
    p->err->at = (size_t)(at - p->uri);
  }
  return SLUICE_EURI;
}

/* Copy [s, e) percent-decoded and NUL-terminated into the buffer; *out
 * points at the copy. The two messages name the part in errors. */
static int decode(parser *p, const char *s, const char *e, const char **out,
                  const char *bad_escape, const char *nul) {
  char *start = p->o;
  for (; s < e; s++) {
    if (p->o >= p->end) return SLUICE_ELIMIT;
    if (*s == '%') {
      int hi, lo;
      if (e - s < 3 || (hi = hexval(s[1])) < 0 || (lo = hexval(s[2])) < 0)
        return fail(p, s, bad_escape);
      /* A NUL would silently end the C string here: "ho%00st" must not
       * connect to "ho". */
      if (hi == 0 && lo == 0) return fail(p, s, nul);
      *p->o++ = (char)(hi * 16 + lo);
      s += 2;
    } else {
      *p->o++ = *s;
    }
  }
  if (p->o >= p->end) return SLUICE_ELIMIT;
  *p->o++ = '\0';
  *out = start;
  return 0;
}

#define DECODE(p, s, e, out, part)                                  \
  decode(p, s, e, out, "bad percent-escape in " part " (want %XX)", \
         "percent-encoded NUL (%00) in " part)

int sluice__uri_parse(const char *uri, sluice_uri *out, char *buf,
                      size_t buflen, sluice__uri_err *err) {
  if (!uri || !out || !buf) return SLUICE_EINVAL;
  memset(out, 0, sizeof(*out));
  if (err) memset(err, 0, sizeof(*err));
  parser ps = {uri, buf, buf + buflen, err};
  parser *P = &ps;
  const char *p = uri;
  /* Schemes are case-insensitive (RFC 3986, 3.1). */
  if (strncasecmp(p, "amqp://", 7) == 0) {
    p += 7;
    out->port = 5672;
  } else if (strncasecmp(p, "amqps://", 8) == 0) {
    p += 8;
    out->tls = 1;
    out->port = 5671;
  } else {
    return fail(P, p, "the scheme is not amqp:// or amqps://");
  }
  for (const char *q = p; *q; q++) {
    if (iscntrl((unsigned char)*q))
      return fail(P, q, "control character (percent-encode it)");
    if (*q == ' ') return fail(P, q, "space (percent-encode it as %20)");
    if (*q == '?' || *q == '#')
      return fail(P, q, "query or fragment (not supported)");
  }

  const char *auth_end = strchr(p, '/');
  if (!auth_end) auth_end = p + strlen(p);
  int rc;

  /* userinfo: the last '@' before the path */
  const char *at = NULL;
  for (const char *q = p; q < auth_end; q++)
    if (*q == '@') at = q;
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    const char *ue = colon ? colon : at;
    if ((rc = DECODE(P, p, ue, &out->user, "the user name"))) return rc;
    if ((rc = DECODE(P, colon ? colon + 1 : at, at, &out->password,
                     "the password")))
      return rc;
    p = at + 1;
  } else {
    out->user = out->password = "guest";
  }

  /* host[:port], with [v6] literals */
  const char *he, *port = NULL;
  if (*p == '[') {
    const char *rb = memchr(p, ']', (size_t)(auth_end - p));
    if (!rb) return fail(P, p, "IPv6 literal without its closing ']'");
    if (rb == p + 1) return fail(P, p, "empty IPv6 literal");
    if ((rc = DECODE(P, p + 1, rb, &out->host, "the host"))) return rc;
    he = rb + 1;
    if (he < auth_end) {
      if (*he != ':') return fail(P, he, "':' or '/' expected after ']'");
      port = he + 1;
    }
  } else {
    const char *colon = memchr(p, ':', (size_t)(auth_end - p));
    he = colon ? colon : auth_end;
    if (he == p) {
      /* No host means localhost, as the URI spec allows; a port needs
       * one. */
      if (colon) return fail(P, p, "a port without a host");
      out->host = "localhost";
    } else if ((rc = DECODE(P, p, he, &out->host, "the host"))) {
      return rc;
    }
    if (colon) port = colon + 1;
  }
  if (port) {
    if (port == auth_end) return fail(P, port, "empty port");
    long v = 0;
    for (const char *q = port; q < auth_end; q++) {
      if (!isdigit((unsigned char)*q))
        return fail(P, q, "the port is not a number");
      v = v * 10 + (*q - '0');
      if (v > 65535) return fail(P, port, "the port is over 65535");
    }
    if (v == 0) return fail(P, port, "port 0");
    out->port = (int)v;
  }

  /* vhost: everything after the first '/', one segment, percent-decoded;
   * none or an empty one means "/". */
  out->vhost = "/";
  if (*auth_end == '/') {
    const char *v = auth_end + 1;
    const char *slash = strchr(v, '/');
    if (slash)
      return fail(P, slash, "'/' in the vhost (percent-encode it as %2F)");
    if (*v && (rc = DECODE(P, v, v + strlen(v), &out->vhost, "the vhost")))
      return rc;
  }
  return 0;
}

int sluice_uri_parse(const char *uri, sluice_uri *out, char *buf,
                     size_t buflen) {
  return sluice__uri_parse(uri, out, buf, buflen, NULL);
}

int sluice__uri_parse_alloc(const char *uri, sluice_uri *out, char **buf,
                            sluice__uri_err *err) {
  *buf = NULL;
  if (!uri) return SLUICE_EINVAL;
  size_t n = strlen(uri) + 8;
  char *b = malloc(n);
  if (!b) return SLUICE_ENOMEM;
  int rc = sluice__uri_parse(uri, out, b, n, err);
  if (rc) {
    free(b);
    return rc;
  }
  *buf = b;
  return 0;
}

char *sluice__uri_err_text(int rc, const sluice__uri_err *err, char *dst,
                           size_t dstlen) {
  if (rc == SLUICE_EURI && err && err->what)
    snprintf(dst, dstlen, "%s at byte %zu", err->what, err->at);
  else snprintf(dst, dstlen, "%s", sluice_strerror(rc));
  return dst;
}
