/* SPDX-License-Identifier: MIT */
/* The URI parser (consumer/uri.c) and URI validation by the consumer and
 * the publisher. No broker: the long-password URI against the real broker
 * is in test_consumer_broker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sluice/consumer.h>
#include <sluice/publisher.h>

#include "consumer/uri.h"

/* Parse with exactly the documented buffer size, strlen(uri) + 8. */
static int parse_tight(const char *uri, sluice_uri *u, char **buf) {
  size_t n = strlen(uri) + 8;
  *buf = malloc(n);
  assert_non_null(*buf);
  return sluice_uri_parse(uri, u, *buf, n);
}

static void ok(const char *uri, const char *user, const char *pass,
               const char *host, int port, const char *vhost) {
  char *buf;
  sluice_uri u;
  int rc = parse_tight(uri, &u, &buf);
  if (rc) fail_msg("%s: %s", uri, sluice_err_name(rc));
  assert_string_equal(u.user, user);
  assert_string_equal(u.password, pass);
  assert_string_equal(u.host, host);
  assert_int_equal(u.port, port);
  assert_string_equal(u.vhost, vhost);
  free(buf);
}

/* Malformed at any buffer size, and the diagnosis names the fault and a
 * byte inside the URI. */
static void bad(const char *uri) {
  char *buf;
  sluice_uri u;
  int rc = parse_tight(uri, &u, &buf);
  if (rc != SLUICE_EURI) fail_msg("%s: got %s", uri, sluice_err_name(rc));
  sluice__uri_err e;
  char big[4096];
  assert_int_equal(sluice__uri_parse(uri, &u, big, sizeof(big), &e),
                   SLUICE_EURI);
  assert_non_null(e.what);
  assert_true(e.at <= strlen(uri));
  free(buf);
}

static void valid_uris(void **state) {
  (void)state;
  ok("amqp://guest:guest@127.0.0.1:5672/", "guest", "guest", "127.0.0.1", 5672,
     "/");
  ok("amqp://user:pass@host:10000/vhost", "user", "pass", "host", 10000,
     "vhost");
  ok("amqp://host", "guest", "guest", "host", 5672, "/");
  ok("amqp://", "guest", "guest", "localhost", 5672, "/");
  ok("amqp://h/%2f", "guest", "guest", "h", 5672, "/");
  ok("amqp://us%40er:p%3Ass@h/v%2Fx", "us@er", "p:ss", "h", 5672, "v/x");
  ok("amqp://user@h", "user", "", "h", 5672, "/");
  ok("amqp://u:@h:1", "u", "", "h", 1, "/");
  ok("amqp://[::1]:5673/x", "guest", "guest", "::1", 5673, "x");
  ok("amqp://a:b@c@d/", "a", "b@c", "d", 5672, "/");
  /* defaults need no room in the buffer: these fit strlen + 8 */
  ok("amqp:///", "guest", "guest", "localhost", 5672, "/");
  ok("amqp://u@", "u", "", "localhost", 5672, "/");
  ok("amqp:///v", "guest", "guest", "localhost", 5672, "v");
  /* schemes are case-insensitive (RFC 3986, 3.1) */
  ok("AMQP://h/", "guest", "guest", "h", 5672, "/");
  ok("aMqP://u:p@H:7/V", "u", "p", "H", 7, "V");
}

static void malformed_uris(void **state) {
  (void)state;
  bad("");
  bad("http://host/");
  bad("amqp:/host");
  bad("amqp://host:");
  bad("amqp://host:0");
  bad("amqp://host:65536");
  bad("amqp://host:12ab");
  bad("amqp://host/a/b");
  bad("amqp://host/%zz");
  bad("amqp://host/%2");
  bad("amqp://ho st/");
  bad("amqp://host/?heartbeat=10");
  bad("amqp://[::1/");
  bad("amqp://[]/");
  bad("amqp://:5672/");
  /* a NUL would silently cut the part short ("ho%00st" is not "ho") */
  bad("amqp://ho%00st/");
  bad("amqp://u%00ser:p@h/");
  bad("amqp://u:pa%00ss@h/");
  bad("amqp://h/v%00");
  bad("amqp://[::%001]/");
  bad("amqpx://h/");
  bad("amqp:h");
}

/* The diagnosis says what is wrong and where, and never quotes the URI. */
static void diagnosis(void **state) {
  (void)state;
  struct {
    const char *uri, *what;
    size_t at;
  } cases[] = {
      {"amqp://host:12ab/", "the port is not a number", 14},
      {"amqp://ho%00st/", "percent-encoded NUL (%00) in the host", 9},
      {"amqp://u:s3cr%zzet@h/", "bad percent-escape in the password (want %XX)",
       13},
      {"http://h/", "the scheme is not amqp:// or amqps://", 0},
      {"amqp://h/a/b", "'/' in the vhost (percent-encode it as %2F)", 10},
      {"amqp://h:99999", "the port is over 65535", 9},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
    char buf[256], text[256];
    sluice_uri u;
    sluice__uri_err e;
    int rc = sluice__uri_parse(cases[i].uri, &u, buf, sizeof(buf), &e);
    assert_int_equal(rc, SLUICE_EURI);
    assert_string_equal(e.what, cases[i].what);
    assert_int_equal(e.at, cases[i].at);
    sluice__uri_err_text(rc, &e, text, sizeof(text));
    assert_non_null(strstr(text, cases[i].what));
    assert_null(strstr(text, "s3cr"));
  }
}

/* strlen(uri) + 8 is enough for every URI, the shortest ones included
 * (0.1 needed 18 bytes for the 7 of "amqp://"). */
static void documented_buffer_size(void **state) {
  (void)state;
  const char *uris[] = {"amqp://",      "amqp:///",      "amqps://",
                        "amqps:///",    "amqp://h",      "amqp://@",
                        "amqp://:@",    "amqp://:@/",    "amqp://u@h",
                        "amqp://[::1]", "amqp://h:1/%2f"};
  for (size_t i = 0; i < sizeof(uris) / sizeof(*uris); i++) {
    char *buf;
    sluice_uri u;
    int rc = parse_tight(uris[i], &u, &buf);
    if (rc) fail_msg("%s: %s", uris[i], sluice_err_name(rc));
    free(buf);
  }
}

static void tls_is_flagged(void **state) {
  (void)state;
  char buf[256];
  sluice_uri u;
  assert_int_equal(sluice_uri_parse("amqps://h", &u, buf, sizeof(buf)), 0);
  assert_int_equal(u.tls, 1);
  assert_int_equal(u.port, 5671);
}

/* An OAuth2 access token (a JWT) is the password: 2 KiB and more. */
static void long_uri(void **state) {
  (void)state;
  size_t n = 4096;
  char *uri = malloc(n + 64);
  assert_non_null(uri);
  int k = snprintf(uri, n + 64, "amqp://svc:");
  for (size_t i = 0; i < n; i++) uri[k + i] = "abcXYZ012-_."[i % 12];
  snprintf(uri + k + n, 64, "@127.0.0.1:1/vh");
  char *buf;
  sluice_uri u;
  assert_int_equal(parse_tight(uri, &u, &buf), 0);
  assert_int_equal(strlen(u.password), n);
  assert_string_equal(u.host, "127.0.0.1");
  free(buf);
  sluice_consumer *c = NULL;
  sluice_consumer_opts o = {.uri = uri};
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  sluice_consumer_free(c);
  free(uri);
}

static void small_buffer(void **state) {
  (void)state;
  char buf[8];
  sluice_uri u;
  assert_int_equal(sluice_uri_parse("amqp://longusername:pw@host/", &u, buf,
                                    sizeof(buf)),
                   SLUICE_ELIMIT);
  assert_int_equal(sluice_uri_parse(NULL, &u, buf, sizeof(buf)), SLUICE_EINVAL);
}

static void consumer_new_rejects_bad_uri(void **state) {
  (void)state;
  sluice_consumer *c = (sluice_consumer *)0x1;
  sluice_consumer_opts o = {.uri = "amqp://host:notaport/"};
  assert_int_equal(sluice_consumer_new(&o, &c), SLUICE_EURI);
  assert_null(c);
  const char *list[] = {"amqp://a/", "amqp://b:99999/"};
  sluice_consumer_opts o2 = {.uris = list, .n_uris = 2};
  assert_int_equal(sluice_consumer_new(&o2, &c), SLUICE_EURI);
  /* amqps:// is accepted; its TLS files are loaded at creation. */
  sluice_consumer_opts o3 = {.uri = "amqps://h/", .log_level = -1};
  assert_int_equal(sluice_consumer_new(&o3, &c), 0);
  sluice_consumer_free(c);
  o3.tls.ca_file = "/nonexistent/ca.pem";
  assert_int_equal(sluice_consumer_new(&o3, &c), SLUICE_ETLSCONFIG);
  assert_null(c);
  o3.tls.ca_file = NULL;
  o3.tls.min_version = 11;
  assert_int_equal(sluice_consumer_new(&o3, &c), SLUICE_EINVAL);
  /* TLS files are not read for a plaintext URI. */
  sluice_consumer_opts o5 = {.uri = "amqp://h/"};
  o5.tls.ca_file = "/nonexistent/ca.pem";
  assert_int_equal(sluice_consumer_new(&o5, &c), 0);
  sluice_consumer_free(c);
  sluice_consumer_opts o4 = {.ack_mode = 7};
  assert_int_equal(sluice_consumer_new(&o4, &c), SLUICE_EINVAL);
  sluice_consumer_free(NULL); /* no-op */
}

struct logged {
  char text[1024];
  int n;
};
static void keep_log(int level, const char *msg, void *user) {
  struct logged *l = user;
  l->n++;
  snprintf(l->text, sizeof(l->text), "%s", msg);
}

/* A bad URI is reported with what is wrong and where, by the consumer and
 * by the publisher, without the password. */
static void bad_uri_is_explained(void **state) {
  (void)state;
  struct logged l = {0};
  sluice_consumer *c = NULL;
  const char *list[] = {"amqp://a/", "amqp://u:hunter2@b:80x/"};
  sluice_consumer_opts o = {.uris = list,
                            .n_uris = 2,
                            .log = keep_log,
                            .log_user = &l};
  assert_int_equal(sluice_consumer_new(&o, &c), SLUICE_EURI);
  assert_int_equal(l.n, 1);
  assert_non_null(strstr(l.text, "URI 2 of 2"));
  assert_non_null(strstr(l.text, "the port is not a number at byte 21"));
  assert_null(strstr(l.text, "hunter2"));

  memset(&l, 0, sizeof(l));
  sluice_publisher *p = NULL;
  sluice_publisher_opts po = {.uri = "amqp://u:hunter2@h/a/b",
                              .log = keep_log,
                              .log_user = &l};
  assert_int_equal(sluice_publisher_new(&po, &p), SLUICE_EURI);
  assert_null(p);
  assert_int_equal(l.n, 1);
  assert_non_null(strstr(l.text, "'/' in the vhost"));
  assert_non_null(strstr(l.text, "at byte 20"));
  assert_null(strstr(l.text, "hunter2"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(valid_uris),
      cmocka_unit_test(malformed_uris),
      cmocka_unit_test(diagnosis),
      cmocka_unit_test(documented_buffer_size),
      cmocka_unit_test(long_uri),
      cmocka_unit_test(tls_is_flagged),
      cmocka_unit_test(small_buffer),
      cmocka_unit_test(consumer_new_rejects_bad_uri),
      cmocka_unit_test(bad_uri_is_explained),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
