/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <sluice/consumer.h>

static void ok(const char *uri, const char *user, const char *pass,
               const char *host, int port, const char *vhost) {
  char buf[512];
  sluice_uri u;
  int rc = sluice_uri_parse(uri, &u, buf, sizeof(buf));
  if (rc) fail_msg("%s: %s", uri, sluice_err_name(rc));
  assert_string_equal(u.user, user);
  assert_string_equal(u.password, pass);
  assert_string_equal(u.host, host);
  assert_int_equal(u.port, port);
  assert_string_equal(u.vhost, vhost);
}

static void bad(const char *uri) {
  char buf[512];
  sluice_uri u;
  int rc = sluice_uri_parse(uri, &u, buf, sizeof(buf));
  if (rc != SLUICE_EURI) fail_msg("%s: got %s", uri, sluice_err_name(rc));
}

static void valid_uris(void **state) {
  (void)state;
  ok("amqp://guest:guest@127.0.0.1:5672/", "guest", "guest", "127.0.0.1",
     5672, "/");
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
}

static void tls_is_flagged(void **state) {
  (void)state;
  char buf[256];
  sluice_uri u;
  assert_int_equal(sluice_uri_parse("amqps://h", &u, buf, sizeof(buf)), 0);
  assert_int_equal(u.tls, 1);
  assert_int_equal(u.port, 5671);
}

static void small_buffer(void **state) {
  (void)state;
  char buf[8];
  sluice_uri u;
  assert_int_equal(sluice_uri_parse("amqp://longusername:pw@host/", &u, buf,
                                    sizeof(buf)),
                   SLUICE_ELIMIT);
  assert_int_equal(sluice_uri_parse(NULL, &u, buf, sizeof(buf)),
                   SLUICE_EINVAL);
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
  sluice_consumer_opts o3 = {.uri = "amqps://h/"};
  assert_int_equal(sluice_consumer_new(&o3, &c), SLUICE_ENOTSUP);
  sluice_consumer_opts o4 = {.ack_mode = 7};
  assert_int_equal(sluice_consumer_new(&o4, &c), SLUICE_EINVAL);
  sluice_consumer_free(NULL); /* no-op */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(valid_uris),
      cmocka_unit_test(malformed_uris),
      cmocka_unit_test(tls_is_flagged),
      cmocka_unit_test(small_buffer),
      cmocka_unit_test(consumer_new_rejects_bad_uri),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
