/* SPDX-License-Identifier: MIT */
/* AMQP URI parsing (https://www.rabbitmq.com/uri-spec.html), without the
 * query part. rabbitmq-c has amqp_parse_url, but it writes into the string it
 * is given and does not tell the error apart from its position; this one
 * reports SLUICE_EURI for every malformed input and percent-decodes. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/consumer.h>

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Copy [s, e) into *out percent-decoded and NUL-terminated. */
static int decode(const char *s, const char *e, char **out, char *end) {
  char *o = *out;
  for (; s < e; s++) {
    if (o >= end) return SLUICE_ELIMIT;
    if (*s == '%') {
      int hi, lo;
      if (e - s < 3 || (hi = hexval(s[1])) < 0 || (lo = hexval(s[2])) < 0)
        return SLUICE_EURI;
      *o++ = (char)(hi * 16 + lo);
      s += 2;
    } else {
      *o++ = *s;
    }
  }
  if (o >= end) return SLUICE_ELIMIT;
  *o++ = '\0';
  *out = o;
  return 0;
}

int sluice_uri_parse(const char *uri, sluice_uri *out, char *buf,
                     size_t buflen) {
  if (!uri || !out || !buf) return SLUICE_EINVAL;
  memset(out, 0, sizeof(*out));
  const char *p = uri;
  if (strncmp(p, "amqp://", 7) == 0) {
    p += 7;
    out->port = 5672;
  } else if (strncmp(p, "amqps://", 8) == 0) {
    p += 8;
    out->tls = 1;
    out->port = 5671;
  } else {
    return SLUICE_EURI;
  }
  for (const char *q = p; *q; q++)
    if (iscntrl((unsigned char)*q) || *q == ' ' || *q == '?' || *q == '#')
      return SLUICE_EURI;

  const char *auth_end = strchr(p, '/');
  if (!auth_end) auth_end = p + strlen(p);
  char *o = buf, *end = buf + buflen;
  int rc;

  /* userinfo: the last '@' before the path */
  const char *at = NULL;
  for (const char *q = p; q < auth_end; q++)
    if (*q == '@') at = q;
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    const char *ue = colon ? colon : at;
    out->user = o;
    if ((rc = decode(p, ue, &o, end))) return rc;
    out->password = o;
    if ((rc = decode(colon ? colon + 1 : at, at, &o, end))) return rc;
    p = at + 1;
  } else {
    out->user = o;
    if ((rc = decode("guest", "guest" + 5, &o, end))) return rc;
    out->password = out->user;
  }

  /* host[:port], with [v6] literals */
  const char *he, *port = NULL;
  if (*p == '[') {
    const char *rb = memchr(p, ']', (size_t)(auth_end - p));
    if (!rb || rb == p + 1) return SLUICE_EURI;
    out->host = o;
    if ((rc = decode(p + 1, rb, &o, end))) return rc;
    he = rb + 1;
    if (he < auth_end) {
      if (*he != ':') return SLUICE_EURI;
      port = he + 1;
    }
  } else {
    const char *colon = memchr(p, ':', (size_t)(auth_end - p));
    he = colon ? colon : auth_end;
    out->host = o;
    if ((rc = decode(p, he, &o, end))) return rc;
    if (colon) port = colon + 1;
  }
  if (out->host[0] == '\0') {
    /* "amqp://" alone means localhost, as the URI spec allows. */
    if (he != p || port) return SLUICE_EURI;
    out->host = o;
    if ((rc = decode("localhost", "localhost" + 9, &o, end))) return rc;
  }
  if (port) {
    if (port == auth_end) return SLUICE_EURI;
    long v = 0;
    for (const char *q = port; q < auth_end; q++) {
      if (!isdigit((unsigned char)*q)) return SLUICE_EURI;
      v = v * 10 + (*q - '0');
      if (v > 65535) return SLUICE_EURI;
    }
    if (v == 0) return SLUICE_EURI;
    out->port = (int)v;
  }

  /* vhost: everything after the first '/', one segment, percent-decoded */
  out->vhost = o;
  if (*auth_end == '/') {
    const char *v = auth_end + 1;
    if (strchr(v, '/')) return SLUICE_EURI;
    if (*v == '\0') {
      if ((rc = decode("/", "/" + 1, &o, end))) return rc;
    } else if ((rc = decode(v, v + strlen(v), &o, end))) {
      return rc;
    }
  } else if ((rc = decode("/", "/" + 1, &o, end))) {
    return rc;
  }
  return 0;
}
