/* SPDX-License-Identifier: MIT */
/* The republisher: one thread with its own publisher connection (publisher
 * confirms on) that writes dead letters to the dead-letter queue, with the
 * reason in headers, and, in autoAck mode, retries back to the work queue.
 *
 * A delivery handed over here is completed only after the broker confirmed
 * the copy: a crash in between loses nothing (manual ack: the original is
 * still unacknowledged), and a failed publish completes it with NACK so the
 * broker delivers it again. sluice's publisher is blocking, which is why it
 * lives on its own thread, away from the consumer's loop and the HTTP
 * sender's. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pw.h"

struct pw_republisher {
  pw_worker *w;
  char *uri, *queue, *dlq;
  sluice_publisher *pub;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pw_repub_item *head, *tail; /* (mu) */
  int stop;                   /* (mu) */
};

static int connect_pub(pw_republisher *r) {
  if (r->pub) return 0;
  sluice_publisher_opts o = {.uri = r->uri,
                             .connection_name = "push-worker republisher",
                             .confirm_timeout_ms = 10000};
  return sluice_publisher_new(&o, &r->pub);
}

static int publish(pw_republisher *r, const pw_repub_item *it) {
  const sluice_message *m = sluice_delivery_message(it->d);
  sluice_kv h[4] = {
      SLUICE_KV_STR("x-reject-reason", it->reason),
      SLUICE_KV_INT("x-reject-status", it->status),
      SLUICE_KV_INT("x-attempts", (int64_t)it->attempts),
      SLUICE_KV_STR("x-original-queue", r->queue),
  };
  sluice_publish_props p = {
      .content_type = m->props.content_type,
      .message_id = m->props.message_id,
      .type = m->props.type,
      .mandatory = 1,
      .headers = it->dead ? h : h + 2, /* a retry carries x-attempts only */
      .n_headers = it->dead ? 4 : 1,
  };
  return sluice_publisher_publish(r->pub, "", it->dead ? r->dlq : r->queue,
                                  m->body, m->body_len, &p);
}

static void process(pw_republisher *r, pw_repub_item *batch) {
  int rc = connect_pub(r);
  for (pw_repub_item *it = batch; it && !rc; it = it->next) rc = publish(r, it);
  sluice_publish_report rep = {0};
  if (!rc) rc = sluice_publisher_wait(r->pub, &rep);
  if (rc) {
    fprintf(stderr,
            "push-worker: republish failed: %s; the deliveries are nacked\n",
            sluice_strerror(rc));
    /* Start over on a new connection next time. */
    sluice_publisher_free(r->pub);
    r->pub = NULL;
  }
  while (batch) {
    pw_repub_item *it = batch;
    batch = it->next;
    sluice_delivery *d = it->d;
    int dead = it->dead, outcome = it->outcome;
    free(it); /* before the delivery completes: no residual */
    pw_republished(r->w, d, dead, rc ? SLUICE_NACK : outcome, rc == 0);
  }
}

static void *run(void *arg) {
  pw_republisher *r = arg;
  for (;;) {
    pthread_mutex_lock(&r->mu);
    while (!r->head && !r->stop) pthread_cond_wait(&r->cv, &r->mu);
    pw_repub_item *batch = r->head;
    r->head = r->tail = NULL;
    int stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    if (batch) process(r, batch);
    else if (stop) break;
  }
  return NULL;
}

int pw_republisher_new(pw_worker *w, const char *uri, const char *queue,
                       const char *dlq, pw_republisher **out) {
  pw_republisher *r = calloc(1, sizeof(*r));
  if (!r) return SLUICE_ENOMEM;
  r->w = w;
  r->uri = strdup(uri);
  r->queue = strdup(queue);
  r->dlq = strdup(dlq);
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  int rc = r->uri && r->queue && r->dlq ? connect_pub(r) : SLUICE_ENOMEM;
  if (!rc && pthread_create(&r->thread, NULL, run, r)) rc = SLUICE_ENOMEM;
  if (rc) {
    sluice_publisher_free(r->pub);
    free(r->uri);
    free(r->queue);
    free(r->dlq);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
    return rc;
  }
  *out = r;
  return 0;
}

void pw_republish(pw_republisher *r, pw_repub_item *it) {
  it->next = NULL;
  pthread_mutex_lock(&r->mu);
  if (r->tail) r->tail->next = it;
  else r->head = it;
  r->tail = it;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

void pw_republisher_free(pw_republisher *r) {
  if (!r) return;
  pthread_mutex_lock(&r->mu);
  r->stop = 1;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
  pthread_join(r->thread, NULL);
  sluice_publisher_free(r->pub);
  free(r->uri);
  free(r->queue);
  free(r->dlq);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  free(r);
}
