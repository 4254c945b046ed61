/* SPDX-License-Identifier: MIT */
/* A minimal blocking HTTP/1.1 client for the debug endpoint's tests, and
 * running external tools with their output captured. */
#ifndef SLUICE_TEST_HTTP_CLIENT_H
#define SLUICE_TEST_HTTP_CLIENT_H

#include <stddef.h>

typedef struct hresp {
  int status; /* 0 when the server closed without answering */
  char *head; /* status line and headers, NUL-terminated */
  char *body; /* NUL-terminated (not counted in body_len) */
  size_t body_len;
} hresp;

/* A connection to 127.0.0.1:port, with 15 s send/receive timeouts so that a
 * broken server fails the test instead of hanging it. -1 on failure. */
int h_connect(int port);
/* Write all of `data`. 0, or -1 if the peer is gone. */
int h_send(int fd, const char *data, size_t len);
/* Read one response (Content-Length or until EOF). 0, or -1 when nothing
 * parseable came (r->status is then 0). */
int h_read(int fd, hresp *r);
/* GET `path` on a fresh connection; `headers` are extra header lines, each
 * ending in "\r\n" (may be NULL). Returns the status (0: none). */
int h_get(int port, const char *path, const char *headers, hresp *r);
/* Any method. */
int h_request(int port, const char *method, const char *path,
              const char *headers, hresp *r);
/* The value of a response header (case-insensitive name), copied into a
 * static buffer; NULL if absent. */
const char *h_header(const hresp *r, const char *name);
void h_free(hresp *r);

/* Checks the Prometheus text exposition format: UTF-8; every line is a
 * HELP, a TYPE (counter or gauge, once per family) or a sample of the family
 * typed just before it (a family's samples form one group), with
 * well-formed labels and a number; no series twice. NULL when it is right,
 * else what is wrong (a static string). */
const char *h_prom_check(const char *text);
/* `promtool check metrics` on `text` (written to a file in `tmpdir`, given
 * as stdin). Returns promtool's exit status (-1: could not run it); its
 * output goes to *out (malloc'd). */
int h_promtool_check_metrics(const char *promtool, const char *text,
                             const char *tmpdir, char **out);

/* Run argv (PATH lookup) with extra "NAME=value" entries added to the
 * environment (NULL-terminated, may be NULL); stdout and stderr are captured
 * into *out (malloc'd, NUL-terminated). Returns the exit status, or -1. */
int h_run(char *const argv[], char *const env_extra[], char **out);
/* The same with stdin read from the file `in` (NULL: /dev/null). */
int h_run_in(char *const argv[], char *const env_extra[], const char *in,
             char **out);
/* The full path of a program found in PATH (malloc'd), or NULL. */
char *h_which(const char *prog);

#endif
