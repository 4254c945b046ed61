/* SPDX-License-Identifier: MIT */
#include "broker_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int tb_broker_up(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(5672)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
  close(fd);
  return ok;
}

void tb_require_broker(const char *test) {
  if (tb_broker_up()) return;
  const char *req = getenv("SLUICE_REQUIRE_BROKER");
  if (req && strcmp(req, "1") == 0) {
    fprintf(stderr,
            "%s: FAIL: no RabbitMQ on 127.0.0.1:5672 and "
            "SLUICE_REQUIRE_BROKER=1\n",
            test);
    exit(1);
  }
  fprintf(stderr,
          "%s: SKIPPED: no RabbitMQ on 127.0.0.1:5672 "
          "(start it with scripts/broker.sh start)\n",
          test);
  exit(77);
}

int tb_time_scale(void) {
  const char *v = getenv("SLUICE_TEST_TIME_SCALE");
  int k = v ? atoi(v) : 1;
  return k < 1 ? 1 : k > 100 ? 100 : k;
}

const char *tb_qname(const char *prefix) {
  static char buf[16][128];
  static int n;
  char *b = buf[n % 16];
  snprintf(b, sizeof(buf[0]), "sluice.test.%s.%ld.%d", prefix, (long)getpid(),
           n);
  n++;
  return b;
}

static sluice_publisher *pub(void) {
  sluice_publisher_opts o = {.uri = TEST_URI,
                             .connection_name = "test pub",
                             .max_outstanding = 2048};
  sluice_publisher *p = NULL;
  int rc = sluice_publisher_new(&o, &p);
  if (rc) {
    fprintf(stderr, "publisher: %s\n", sluice_strerror(rc));
    abort();
  }
  return p;
}

void tb_delete_queue(const char *name) {
  sluice_publisher *p = pub();
  sluice_publisher_delete_queue(p, name, NULL);
  sluice_publisher_free(p);
}

void tb_fresh_queue(const sluice_queue_decl *d) {
  sluice_publisher *p = pub();
  sluice_publisher_delete_queue(p, d->name, NULL);
  int rc = sluice_publisher_declare_queue(p, d);
  if (rc) {
    fprintf(stderr, "declare %s: %s\n", d->name, sluice_strerror(rc));
    abort();
  }
  sluice_publisher_free(p);
}

void tb_fill(const char *queue, unsigned n, size_t size) {
  sluice_publisher *p = pub();
  char *body = calloc(1, size + 32);
  for (unsigned i = 0; i < n; i++) {
    char id[32];
    snprintf(id, sizeof(id), "%u", i);
    size_t l = strlen(id);
    memset(body, '.', size > l ? size : l);
    memcpy(body, id, l);
    sluice_publish_props pr = {.message_id = id};
    int rc =
        sluice_publisher_publish(p, "", queue, body, size > l ? size : l, &pr);
    if (rc) {
      fprintf(stderr, "publish: %s\n", sluice_strerror(rc));
      abort();
    }
  }
  sluice_publish_report rep;
  int rc = sluice_publisher_wait(p, &rep);
  if (rc || rep.confirmed != n) {
    fprintf(stderr, "confirms: %s (%llu of %u)\n", sluice_strerror(rc),
            (unsigned long long)rep.confirmed, n);
    abort();
  }
  free(body);
  sluice_publisher_free(p);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint32_t tb_depth_eventually(const char *queue, uint32_t want, int ms) {
  sluice_publisher *p = pub();
  uint64_t end = now_ms() + (uint64_t)ms;
  uint32_t depth = 0;
  for (;;) {
    depth = 0;
    sluice_publisher_queue_depth(p, queue, &depth, NULL);
    if (depth == want || now_ms() >= end) break;
    /* The broker offers no event for "requeue finished": poll briefly. */
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  sluice_publisher_free(p);
  return depth;
}

struct watchdog {
  sluice_consumer *c;
  int seconds;
  int fired;
  int done;
  pthread_mutex_t mu;
  pthread_cond_t cv;
};

static void *watch(void *arg) {
  struct watchdog *w = arg;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += w->seconds;
  pthread_mutex_lock(&w->mu);
  while (!w->done) {
    if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT) {
      if (!w->done) {
        w->fired = 1;
        fprintf(stderr, "watchdog: consumer still running after %d s\n",
                w->seconds);
        sluice_consumer_stop(w->c);
      }
      break;
    }
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

int tb_run_bounded(sluice_consumer *c, int seconds, int *timed_out) {
  struct watchdog w = {.c = c, .seconds = seconds};
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  pthread_t t;
  pthread_create(&t, NULL, watch, &w);
  int rc = sluice_consumer_run(c);
  pthread_mutex_lock(&w.mu);
  w.done = 1;
  pthread_cond_signal(&w.cv);
  pthread_mutex_unlock(&w.mu);
  pthread_join(t, NULL);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  if (timed_out) *timed_out = w.fired;
  return rc;
}
