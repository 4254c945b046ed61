/* SPDX-License-Identifier: MIT */
/* amqps:// against a real RabbitMQ TLS listener (scripts/tls-broker.sh):
 * consuming and publishing over mutual TLS, each way a TLS connection can
 * fail with its own code and OpenSSL's reason, no plaintext fallback,
 * reconnect and failover over TLS (and across a list mixing amqp:// and
 * amqps://). Skipped when the TLS node is not up, failed when
 * SLUICE_REQUIRE_TLS=1. Every run is bounded by a watchdog; no timing is
 * asserted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "broker_util.h"
#include "proxy.h"
#include "tls_util.h"

/* ---- a consumer of numbered messages -------------------------------------- */

#define MAXN 4000

typedef struct run {
  sluice_consumer *c;
  unsigned n;
  _Atomic unsigned char seen[MAXN];
  _Atomic unsigned distinct, calls;
  /* a fault injected when `distinct` reaches each of fault_at[] */
  unsigned fault_at[4];
  unsigned n_faults, faults_done;
  void (*fault)(struct run *r, unsigned k);
  void *fault_user;
  _Atomic unsigned events[16];
  _Atomic int stopped_err;
  tt_log log;
} run;

static int handler(sluice_delivery *d, const sluice_message *m, void *user) {
  run *r = user;
  atomic_fetch_add(&r->calls, 1);
  unsigned id = (unsigned)strtoul(
      m->props.message_id ? m->props.message_id : "0", NULL, 10);
  if (id < MAXN && atomic_exchange(&r->seen[id], 1) == 0) {
    unsigned got = atomic_fetch_add(&r->distinct, 1) + 1;
    if (r->faults_done < r->n_faults && got == r->fault_at[r->faults_done])
      r->fault(r, r->faults_done++);
    if (got == r->n) sluice_consumer_stop(r->c);
  }
  return SLUICE_ACK;
}

static void on_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  run *r = user;
  if (ev->type < 16) atomic_fetch_add(&r->events[ev->type], 1);
  if (ev->type == SLUICE_EV_STOPPED) atomic_store(&r->stopped_err, ev->err);
}

static run *run_new(unsigned n) {
  run *r = calloc(1, sizeof(*r));
  r->n = n;
  tt_log_init(&r->log);
  return r;
}

/* Options for `r`: its callbacks, its log, the working TLS settings. */
static sluice_consumer_opts run_opts(run *r) {
  sluice_consumer_opts o = {.on_event = on_event,
                            .event_user = r,
                            .log = tt_log_fn,
                            .log_user = &r->log,
                            .log_level = SLUICE_LOG_INFO,
                            .tls = tt_tls()};
  return o;
}

static void run_consumer(run *r, sluice_consumer_opts *o, const char *q) {
  assert_int_equal(sluice_consumer_new(o, &r->c), 0);
  sluice_subscribe_opts so = {.queue = q, .handler = handler, .user = r};
  assert_int_equal(sluice_consumer_subscribe(r->c, &so), 0);
  int to = 0;
  assert_int_equal(tb_run_bounded(r->c, 60, &to), 0);
  assert_false(to);
  assert_int_equal(atomic_load(&r->distinct), r->n);
}

static void run_free(run *r) {
  sluice_consumer_free(r->c);
  pthread_mutex_destroy(&r->log.mu);
  free(r);
}

/* ---- consuming and publishing over TLS ------------------------------------ */

static void consume_over_mutual_tls(void **state) {
  unsigned n = 2000;
  const char *q = tb_qname("tls");
  tt_fresh_filled(q, n); /* the publisher over TLS */
  run *r = run_new(n);
  sluice_consumer_opts o = run_opts(r);
  /* amqps:// without a port means 5671. */
  char uri[128];
  if (tt_tls_port() == 5671)
    snprintf(uri, sizeof(uri), "amqps://guest:guest@localhost/");
  else snprintf(uri, sizeof(uri), "%s", tt_uri("localhost"));
  o.uri = uri;
  run_consumer(r, &o, q);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(r->c, &st);
  assert_int_equal(st.acked, n);
  assert_int_equal(atomic_load(&r->stopped_err), 0);
  assert_true(tt_log_has(&r->log, "connected to amqps://"));
  assert_int_equal(tt_depth_eventually(q, 0, 5000), 0);
  run_free(r);
  tt_delete_queue(q);
}

/* rabbitmq-c's own host check ignores IP subjectAltNames; sluice's is
 * OpenSSL's, which does not. */
static void ip_address_in_the_certificate(void **state) {
  tt_log log;
  tt_log_init(&log);
  sluice_consumer_opts o = {.uri = tt_uri("127.0.0.1"),
                            .tls = tt_tls(),
                            .log = tt_log_fn,
                            .log_user = &log};
  sluice_consumer *c;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  assert_int_equal(sluice_consumer_connect(c), 0);
  sluice_consumer_free(c);
}

/* ---- each failure, its code and OpenSSL's reason ---------------------------- */

typedef struct failure {
  const char *name;
  const char *uri;
  sluice_tls_opts tls;
  int want;
  const char *reason; /* in the log line */
} failure;

static void each_failure_has_its_code(void **state) {
  sluice_tls_opts good = tt_tls();
  sluice_tls_opts otherca = good, expired = good, wronghost = good,
                  rogue = good, nocert = good;
  otherca.ca_file = tt_cert("otherca.pem");
  expired.server_name = "expired.test";     /* the node serves expired.pem */
  wronghost.server_name = "wronghost.test"; /* and wronghost.pem */
  rogue.cert_file = tt_cert("rogueclient.pem");
  rogue.key_file = tt_cert("rogueclient.key");
  nocert.cert_file = nocert.key_file = NULL;
  char plain_to_tls[128];
  snprintf(plain_to_tls, sizeof(plain_to_tls),
           "amqp://guest:guest@127.0.0.1:%u/", tt_tls_port());
  char tls_to_plain[128];
  snprintf(tls_to_plain, sizeof(tls_to_plain),
           "amqps://guest:guest@localhost:%u/", tt_amqp_port());
  const failure cases[] = {
      {"unknown CA", tt_uri("localhost"), otherca, SLUICE_ETLSCA,
       "certificate verify failed"},
      {"expired certificate", tt_uri("localhost"), expired, SLUICE_ETLSEXPIRED,
       "certificate has expired"},
      {"certificate for another host", tt_uri("localhost"), wronghost,
       SLUICE_ETLSHOST, "hostname mismatch"},
      {"address not in the certificate", tt_uri("127.0.0.2"), good,
       SLUICE_ETLSHOST, "IP address mismatch"},
      {"client certificate from an unknown CA", tt_uri("localhost"), rogue,
       SLUICE_ETLSCLIENT, "refused the"},
      {"no client certificate", tt_uri("localhost"), nocert, SLUICE_ETLSCLIENT,
       "none is configured"},
      {"TLS to a plaintext port", tls_to_plain, good, SLUICE_ENOTTLS,
       "wrong version number"},
      {"plaintext to a TLS port", plain_to_tls, good, SLUICE_ETLSPORT,
       "speaks TLS"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
    const failure *f = &cases[i];
    tt_log log;
    tt_log_init(&log);
    sluice_consumer_opts o = {.uri = f->uri,
                              .tls = f->tls,
                              .log = tt_log_fn,
                              .log_user = &log};
    sluice_consumer *c;
    assert_int_equal(sluice_consumer_new(&o, &c), 0);
    int rc = sluice_consumer_connect(c);
    printf("  %-40s consumer %-18s %s", f->name, sluice_err_name(rc), log.text);
    assert_int_equal(rc, f->want);
    assert_true(tt_log_has(&log, f->reason));
    sluice_consumer_free(c);

    /* The publisher takes the same path. */
    tt_log_clear(&log);
    sluice_publisher_opts po = {.uri = f->uri,
                                .tls = f->tls,
                                .log = tt_log_fn,
                                .log_user = &log};
    sluice_publisher *p = NULL;
    rc = sluice_publisher_new(&po, &p);
    assert_int_equal(rc, f->want);
    assert_null(p);
    assert_true(tt_log_has(&log, f->reason));
    pthread_mutex_destroy(&log.mu);
  }
}

/* Verification can be relaxed, loudly; it is never silently skipped. */
static void relaxed_verification(void **state) {
  tt_log log;
  tt_log_init(&log);
  sluice_tls_opts t = tt_tls();
  t.server_name = "wronghost.test";
  t.skip_verify_hostname = 1;
  sluice_consumer_opts o = {.uri = tt_uri("localhost"),
                            .tls = t,
                            .log = tt_log_fn,
                            .log_user = &log};
  sluice_consumer *c;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  assert_int_equal(sluice_consumer_connect(c), 0);
  sluice_consumer_free(c);

  t = tt_tls();
  t.ca_file = tt_cert("otherca.pem");
  t.skip_verify_peer = 1;
  o.tls = t;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  assert_int_equal(sluice_consumer_connect(c), 0);
  assert_true(tt_log_has(&log, "not verified"));
  sluice_consumer_free(c);
  pthread_mutex_destroy(&log.mu);
}

/* A certificate problem is not retried (no reconnect storm); run() ends
 * with its code, and SLUICE_EV_STOPPED carries it. */
static void certificate_errors_are_not_retried(void **state) {
  run *r = run_new(1);
  sluice_consumer_opts o = run_opts(r);
  o.uri = tt_uri("localhost");
  o.tls.server_name = "expired.test";
  o.reconnect.enabled = 1;
  o.reconnect.min_delay_ms = 10;
  assert_int_equal(sluice_consumer_new(&o, &r->c), 0);
  sluice_subscribe_opts so = {.queue = "unused", .handler = handler, .user = r};
  assert_int_equal(sluice_consumer_subscribe(r->c, &so), 0);
  int to = 0;
  assert_int_equal(tb_run_bounded(r->c, 30, &to), SLUICE_ETLSEXPIRED);
  assert_false(to);
  assert_int_equal(atomic_load(&r->events[SLUICE_EV_RECONNECTING]), 0);
  assert_true(tt_log_has(&r->log, "certificate has expired"));
  run_free(r);
}

/* ---- reconnect and failover over TLS -------------------------------------- */

static void fault_cut(run *r, unsigned k) {
  assert_true(tproxy_cut(r->fault_user) >= 1);
}

static void reconnect_over_tls(void **state) {
  unsigned n = 3000;
  const char *q = tb_qname("tlscut");
  tt_fresh_filled(q, n);
  tproxy *p = NULL;
  assert_int_equal(tproxy_start(tt_tls_port(), &p), 0);
  run *r = run_new(n);
  r->fault = fault_cut;
  r->fault_user = p;
  r->n_faults = 3;
  for (unsigned k = 0; k < 3; k++) r->fault_at[k] = n * (k + 1) / 4;
  char uri[128];
  /* Through the proxy: TLS end to end, the certificate names localhost. */
  snprintf(uri, sizeof(uri), "amqps://guest:guest@localhost:%u/",
           tproxy_port(p));
  sluice_consumer_opts o = run_opts(r);
  o.uri = uri;
  o.reconnect.enabled = 1;
  o.reconnect.min_delay_ms = 10;
  o.reconnect.max_delay_ms = 100;
  run_consumer(r, &o, q);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(r->c, &st);
  assert_int_equal(st.reconnects, 3);
  assert_int_equal(tproxy_accepted(p), 4);
  assert_int_equal(tt_depth_eventually(q, 0, 5000), 0);
  run_free(r);
  tproxy_free(p);
  tt_delete_queue(q);
}

static void fault_failover(run *r, unsigned k) {
  tproxy *p = r->fault_user;
  assert_int_equal(tproxy_refuse(p, 1), 0);
  assert_true(tproxy_cut(p) >= 1);
}

/* A list mixing amqp:// and amqps://: the plaintext node goes away, the
 * consumer carries on over TLS on the next one. */
static void failover_from_plaintext_to_tls(void **state) {
  unsigned n = 2000;
  const char *q = tb_qname("tlsfail");
  tt_fresh_filled(q, n);
  tproxy *p = NULL;
  assert_int_equal(tproxy_start(tt_amqp_port(), &p), 0);
  run *r = run_new(n);
  r->fault = fault_failover;
  r->fault_user = p;
  r->n_faults = 1;
  r->fault_at[0] = n / 2;
  char plain[128];
  snprintf(plain, sizeof(plain), "amqp://guest:guest@127.0.0.1:%u/",
           tproxy_port(p));
  const char *uris[] = {plain, tt_uri("localhost")};
  sluice_consumer_opts o = run_opts(r);
  o.uris = uris;
  o.n_uris = 2;
  o.reconnect.enabled = 1;
  o.reconnect.min_delay_ms = 10;
  o.reconnect.max_delay_ms = 100;
  run_consumer(r, &o, q);
  assert_true(tt_log_has(&r->log, "connected to amqp://"));
  assert_true(tt_log_has(&r->log, "connected to amqps://"));
  assert_int_equal(atomic_load(&r->events[SLUICE_EV_CONNECTED]), 2);
  assert_int_equal(tt_depth_eventually(q, 0, 5000), 0);
  run_free(r);
  tproxy_free(p);
  tt_delete_queue(q);
}

/* A node whose certificate does not verify is passed over for the next
 * one: certificates are per node. */
static void failover_past_a_bad_certificate(void **state) {
  tt_log log;
  tt_log_init(&log);
  const char *uris[] = {tt_uri("127.0.0.2"), tt_uri("localhost")};
  sluice_consumer_opts o = {.uris = uris,
                            .n_uris = 2,
                            .tls = tt_tls(),
                            .log = tt_log_fn,
                            .log_user = &log};
  sluice_consumer *c;
  assert_int_equal(sluice_consumer_new(&o, &c), 0);
  assert_int_equal(sluice_consumer_connect(c), 0);
  assert_true(tt_log_has(&log, "IP address mismatch"));
  sluice_consumer_free(c);
  pthread_mutex_destroy(&log.mu);
}

int main(void) {
  tt_require_tls("test_tls_broker");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(consume_over_mutual_tls),
      cmocka_unit_test(ip_address_in_the_certificate),
      cmocka_unit_test(each_failure_has_its_code),
      cmocka_unit_test(relaxed_verification),
      cmocka_unit_test(certificate_errors_are_not_retried),
      cmocka_unit_test(reconnect_over_tls),
      cmocka_unit_test(failover_from_plaintext_to_tls),
      cmocka_unit_test(failover_past_a_bad_certificate),
  };
  if (getenv("SLUICE_TEST_FILTER"))
    cmocka_set_test_filter(getenv("SLUICE_TEST_FILTER"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
