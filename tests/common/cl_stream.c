/* SPDX-License-Identifier: MIT */
#include "cl_stream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_util.h"

static void wake(cl_stream *s) {
  pthread_mutex_lock(&s->mu);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static int handler(sluice_delivery *d, const sluice_message *m, void *user) {
  (void)d;
  cl_stream *s = user;
  uint64_t ag = atomic_load(&s->after_gen);
  if (ag && m->generation > ag && !atomic_load(&s->first_after_ms)) {
    atomic_store(&s->first_after_ms, cl_now_ms());
    wake(s);
  }
  unsigned call;
  unsigned dn = tb_tally_record(&s->tally, m, &call);
  if (call == atomic_load(&s->stop_at_calls)) sluice_consumer_stop(s->c);
  if (dn && dn == atomic_load(&s->stop_at_distinct)) sluice_consumer_stop(s->c);
  if (dn && dn == atomic_load(&s->want_distinct)) wake(s);
  return SLUICE_ACK;
}

static void on_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  (void)c;
  cl_stream *s = user;
  if (ev->type == SLUICE_EV_CLOSED && ev->reply_code == 406)
    atomic_fetch_add(&s->closed_406, 1);
  if ((unsigned)ev->type < 16) {
    atomic_store(&s->event_ms[ev->type], cl_now_ms());
    atomic_fetch_add(&s->events[ev->type], 1);
  }
  wake(s);
}

cl_stream *cl_stream_new(const char *queue, unsigned n) {
  if (n > CL_MAXN) return NULL;
  cl_stream *s = calloc(1, sizeof(*s));
  if (!s) return NULL;
  s->queue = queue;
  s->tally.n = n;
  pthread_mutex_init(&s->mu, NULL);
  tb_cond_init_monotonic(&s->cv);
  return s;
}

void cl_stream_free(cl_stream *s) {
  if (!s) return;
  sluice_consumer_free(s->c);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}

sluice_consumer *cl_stream_consumer(cl_stream *s, sluice_consumer_opts *o) {
  o->on_event = on_event;
  o->event_user = s;
  if (!o->log) o->log = tb_log_quiet;
  sluice_consumer *c = NULL;
  if (sluice_consumer_new(o, &c) != 0) return NULL;
  sluice_subscribe_opts so = {.queue = s->queue, .handler = handler, .user = s};
  if (sluice_consumer_subscribe(c, &so) != 0) {
    sluice_consumer_free(c);
    return NULL;
  }
  sluice_consumer_free(s->c);
  s->c = c;
  return c;
}

static void *run_main(void *arg) {
  cl_stream *s = arg;
  int rc = sluice_consumer_run(s->c);
  pthread_mutex_lock(&s->mu);
  s->run_rc = rc;
  s->finished = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

void cl_stream_start(cl_stream *s) {
  s->finished = 0;
  pthread_create(&s->thread, NULL, run_main, s);
}

static void deadline_in(struct timespec *dl, int seconds) {
  clock_gettime(CLOCK_MONOTONIC, dl);
  dl->tv_sec += seconds;
}

int cl_stream_join(cl_stream *s, int seconds, int *timed_out) {
  struct timespec dl;
  deadline_in(&dl, seconds);
  int fired = 0;
  pthread_mutex_lock(&s->mu);
  while (!s->finished) {
    if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT &&
        !s->finished) {
      fired = 1;
      fprintf(stderr, "watchdog: consumer still running after %d s\n", seconds);
      sluice_consumer_stop(s->c);
      break;
    }
  }
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  if (timed_out) *timed_out = fired;
  return s->run_rc;
}

static int wait_pred(cl_stream *s, int (*pred)(cl_stream *, unsigned, int),
                     unsigned v, int type, int seconds) {
  struct timespec dl;
  deadline_in(&dl, seconds);
  int rc = 0;
  pthread_mutex_lock(&s->mu);
  while (!pred(s, v, type)) {
    if (s->finished ||
        pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT) {
      rc = pred(s, v, type) ? 0 : -1;
      break;
    }
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static int distinct_at_least(cl_stream *s, unsigned v, int type) {
  (void)type;
  return atomic_load(&s->tally.distinct) >= v;
}

static int event_at_least(cl_stream *s, unsigned v, int type) {
  return atomic_load(&s->events[type]) >= v;
}

static int first_after_seen(cl_stream *s, unsigned v, int type) {
  (void)v;
  (void)type;
  return atomic_load(&s->first_after_ms) != 0;
}

int cl_wait_distinct(cl_stream *s, unsigned want, int seconds) {
  atomic_store(&s->want_distinct, want);
  return wait_pred(s, distinct_at_least, want, 0, seconds);
}

int cl_wait_event(cl_stream *s, int type, unsigned want, int seconds) {
  return wait_pred(s, event_at_least, want, type, seconds);
}

int cl_wait_first_after(cl_stream *s, int seconds) {
  return wait_pred(s, first_after_seen, 0, 0, seconds);
}

unsigned cl_stream_missing(cl_stream *s) {
  return tb_tally_missing(&s->tally);
}

int cl_publish_id(sluice_publisher *p, const char *queue, unsigned id,
                  size_t size) {
  char id_s[16], body[256];
  snprintf(id_s, sizeof(id_s), "%u", id);
  size_t l = strlen(id_s);
  if (size < l) size = l;
  if (size > sizeof(body)) size = sizeof(body);
  memset(body, '.', size);
  memcpy(body, id_s, l);
  sluice_publish_props pr = {.message_id = id_s};
  return sluice_publisher_publish(p, "", queue, body, size, &pr);
}

int cl_fill(const char *uri, const char *queue, unsigned first, unsigned n,
            size_t size) {
  sluice_publisher_opts po = {.uri = uri,
                              .connection_name = "cluster fill",
                              .max_outstanding = 2048};
  sluice_publisher *p = NULL;
  int rc = sluice_publisher_new(&po, &p);
  for (unsigned i = 0; rc == 0 && i < n; i++)
    rc = cl_publish_id(p, queue, first + i, size);
  sluice_publish_report rep = {0};
  if (rc == 0) rc = sluice_publisher_wait(p, &rep);
  if (rc == 0 && rep.confirmed != n) rc = SLUICE_ENACKED;
  sluice_publisher_free(p);
  return rc;
}

int cl_wait_no_consumers(const char *uri, const char *queue, int seconds,
                         uint32_t *ready) {
  sluice_publisher_opts po = {.uri = uri, .connection_name = "cluster probe"};
  sluice_publisher *p = NULL;
  if (sluice_publisher_new(&po, &p) != 0) return -1;
  uint64_t end = cl_now_ms() + (uint64_t)seconds * 1000u;
  int rc = -1;
  for (;;) {
    uint32_t msgs = 0, consumers = 0;
    if (sluice_publisher_queue_depth(p, queue, &msgs, &consumers) != 0) break;
    *ready = msgs;
    if (consumers == 0) {
      rc = 0;
      break;
    }
    if (cl_now_ms() >= end) break;
    /* The broker has no event for "that connection is gone": poll. */
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  sluice_publisher_free(p);
  return rc;
}
