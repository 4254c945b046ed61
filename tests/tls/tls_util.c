/* SPDX-License-Identifier: MIT */
#include "tls_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint16_t env_port(const char *name, uint16_t def) {
  const char *v = getenv(name);
  long p = v ? strtol(v, NULL, 10) : 0;
  return p > 0 && p < 65536 ? (uint16_t)p : def;
}

uint16_t tt_tls_port(void) {
  return env_port("SLUICE_TLS_PORT", 5671);
}
uint16_t tt_amqp_port(void) {
  return env_port("SLUICE_TLS_AMQP_PORT", 5691);
}

const char *tt_cert(const char *name) {
  static char buf[16][512];
  static int n;
  char *b = buf[n++ % 16];
  const char *dir = getenv("SLUICE_TLS_DIR");
  snprintf(b, sizeof(buf[0]), "%s/certs/%s", dir ? dir : "/tmp/sluice-tls",
           name);
  return b;
}

static int port_open(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
  close(fd);
  return ok;
}

void tt_require_tls(const char *test) {
  const char *why = NULL;
  if (!port_open(tt_tls_port()) || !port_open(tt_amqp_port()))
    why = "the TLS node is not up";
  else if (access(tt_cert("ca.pem"), R_OK) != 0 ||
           access(tt_cert("client.key"), R_OK) != 0)
    why = "its certificates are not readable";
  if (!why) return;
  const char *req = getenv("SLUICE_REQUIRE_TLS");
  if (req && strcmp(req, "1") == 0) {
    fprintf(stderr, "%s: FAIL: %s (TLS port %u) and SLUICE_REQUIRE_TLS=1\n",
            test, why, tt_tls_port());
    exit(1);
  }
  fprintf(stderr,
          "%s: SKIPPED: %s (TLS port %u; start it with scripts/tls-broker.sh "
          "start)\n",
          test, why, tt_tls_port());
  exit(77);
}

sluice_tls_opts tt_tls(void) {
  sluice_tls_opts t = {.ca_file = tt_cert("ca.pem"),
                       .cert_file = tt_cert("client.pem"),
                       .key_file = tt_cert("client.key")};
  return t;
}

const char *tt_uri(const char *host) {
  static char buf[8][128];
  static int n;
  char *b = buf[n++ % 8];
  snprintf(b, sizeof(buf[0]), "amqps://guest:guest@%s:%u/", host,
           tt_tls_port());
  return b;
}

const char *tt_plain_uri(const char *host) {
  static char buf[8][128];
  static int n;
  char *b = buf[n++ % 8];
  snprintf(b, sizeof(buf[0]), "amqp://guest:guest@%s:%u/", host,
           tt_amqp_port());
  return b;
}

sluice_publisher *tt_publisher(void) {
  sluice_publisher_opts o = {.uri = tt_uri("localhost"),
                             .connection_name = "tls test pub",
                             .max_outstanding = 2048,
                             .tls = tt_tls()};
  sluice_publisher *p = NULL;
  int rc = sluice_publisher_new(&o, &p);
  if (rc) {
    fprintf(stderr, "TLS publisher: %s\n", sluice_err_name(rc));
    abort();
  }
  return p;
}

void tt_fresh_filled(const char *q, unsigned n) {
  sluice_publisher *p = tt_publisher();
  sluice_publisher_delete_queue(p, q, NULL);
  sluice_queue_decl d = {.name = q, .durable = 1};
  if (sluice_publisher_declare_queue(p, &d)) abort();
  for (unsigned i = 0; i < n; i++) {
    char id[32];
    snprintf(id, sizeof(id), "%u", i);
    sluice_publish_props pr = {.message_id = id};
    if (sluice_publisher_publish(p, "", q, id, strlen(id), &pr)) abort();
  }
  sluice_publish_report rep;
  if (sluice_publisher_wait(p, &rep) || rep.confirmed != n) {
    fprintf(stderr, "TLS publisher: %llu of %u confirmed\n",
            (unsigned long long)rep.confirmed, n);
    abort();
  }
  sluice_publisher_free(p);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint32_t tt_depth_eventually(const char *q, uint32_t want, int ms) {
  sluice_publisher *p = tt_publisher();
  uint64_t end = now_ms() + (uint64_t)ms;
  uint32_t depth = 0;
  for (;;) {
    depth = 0;
    sluice_publisher_queue_depth(p, q, &depth, NULL);
    if (depth == want || now_ms() >= end) break;
    /* The broker offers no event for "requeue finished": poll briefly. */
    usleep(20 * 1000);
  }
  sluice_publisher_free(p);
  return depth;
}

void tt_delete_queue(const char *q) {
  sluice_publisher *p = tt_publisher();
  sluice_publisher_delete_queue(p, q, NULL);
  sluice_publisher_free(p);
}

void tt_log_init(tt_log *l) {
  memset(l, 0, sizeof(*l));
  pthread_mutex_init(&l->mu, NULL);
  l->echo = getenv("SLUICE_TEST_VERBOSE") != NULL;
}

void tt_log_fn(int level, const char *msg, void *user) {
  tt_log *l = user;
  pthread_mutex_lock(&l->mu);
  size_t n = strlen(msg);
  if (l->len + n + 2 < sizeof(l->text)) {
    memcpy(l->text + l->len, msg, n);
    l->len += n;
    l->text[l->len++] = '\n';
    l->text[l->len] = '\0';
  }
  l->lines++;
  if (l->echo) fprintf(stderr, "  log(%d): %s\n", level, msg);
  pthread_mutex_unlock(&l->mu);
}

int tt_log_has(tt_log *l, const char *needle) {
  pthread_mutex_lock(&l->mu);
  int yes = strstr(l->text, needle) != NULL;
  pthread_mutex_unlock(&l->mu);
  return yes;
}

void tt_log_clear(tt_log *l) {
  pthread_mutex_lock(&l->mu);
  l->len = 0;
  l->text[0] = '\0';
  l->lines = 0;
  pthread_mutex_unlock(&l->mu);
}
