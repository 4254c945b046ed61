/* SPDX-License-Identifier: MIT */
/* Fuzz target: the AMQP URI parser and the consumer's URI list.
 *
 * The input is split at newlines into at most 8 URIs. Each is parsed with
 * the documented buffer size, strlen(uri) + 8, which must always be enough
 * (SLUICE_ELIMIT there aborts), and with smaller buffers, which must fail
 * cleanly; a failure must come with a diagnosis inside the URI. The list
 * then goes to sluice_consumer_new() as `uris`, which validates every
 * entry (and shuffles them when asked) without connecting. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/consumer.h>

#include "consumer/uri.h"
#include "fuzz.h"

#define MAX_URIS 8

/* Each part is in the buffer, NUL-terminated there, or a static default. */
static void check_part(const char *part, const char *buf, size_t cap) {
  if (!part) abort();
  if (part >= buf && part < buf + cap) {
    if (!memchr(part, '\0', (size_t)(buf + cap - part))) abort();
  } else if (strcmp(part, "guest") && strcmp(part, "localhost") &&
             strcmp(part, "/")) {
    abort();
  }
}

static void check_parsed(const sluice_uri *u, const char *buf, size_t cap) {
  check_part(u->user, buf, cap);
  check_part(u->password, buf, cap);
  check_part(u->host, buf, cap);
  check_part(u->vhost, buf, cap);
  if (u->port < 1 || u->port > 65535) abort();
  if (!u->host[0]) abort();
}

static int parse_one(const char *uri) {
  size_t n = strlen(uri);
  size_t cap = n + 8;
  char *buf = malloc(cap);
  if (!buf) return SLUICE_ENOMEM;
  sluice_uri u;
  sluice__uri_err e;
  int rc = sluice__uri_parse(uri, &u, buf, cap, &e);
  if (rc == SLUICE_ELIMIT) abort(); /* the documented size was too small */
  if (rc == 0) {
    check_parsed(&u, buf, cap);
  } else {
    if (rc != SLUICE_EURI || !e.what || e.at > n) abort();
    char text[256];
    sluice__uri_err_text(rc, &e, text, sizeof(text));
  }
  int full = rc;
  free(buf);
  /* Too small a buffer: a clean SLUICE_ELIMIT or the same answer, never a
   * write past it (ASan). */
  for (size_t small = 0; small < cap; small += 1 + small / 2) {
    char *b = malloc(small ? small : 1);
    if (!b) break;
    rc = sluice__uri_parse(uri, &u, b, small, &e);
    if (rc != full && rc != SLUICE_ELIMIT) abort();
    free(b);
  }
  return full;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 1 << 16) return 0;
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';

  const char *uris[MAX_URIS];
  size_t n = 0;
  int all_ok = 1;
  char *p = text;
  while (n < MAX_URIS) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = '\0';
    uris[n++] = p;
    int rc = parse_one(p);
    if (rc != 0) all_ok = 0;
    if (!nl) break;
    p = nl + 1;
  }

  /* The list as the consumer takes it; the first byte picks the shuffle. */
  sluice_consumer_opts o;
  memset(&o, 0, sizeof(o));
  o.uris = uris;
  o.n_uris = n;
  o.log_level = -1;
  o.reconnect.shuffle = size > 0 && (data[0] & 1);
  sluice_consumer *c = NULL;
  int rc = sluice_consumer_new(&o, &c);
  if (rc == 0) {
    sluice_consumer_free(c);
  } else {
    if (c) abort();
    if (rc != SLUICE_EURI && rc != SLUICE_ENOTSUP && rc != SLUICE_ENOMEM)
      abort();
    /* every URI parsed, yet refused: only amqps:// may be */
    if (all_ok && rc == SLUICE_EURI) abort();
  }
  free(text);
  return 0;
}
