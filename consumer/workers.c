/* SPDX-License-Identifier: MIT */
/* The worker pool: N threads take assembled deliveries from a FIFO and run
 * their handlers. The FIFO never holds more than the in-flight bound, since
 * the loop stops reading when that bound is reached. */
#include <stdlib.h>

#include "internal.h"

static void *worker_main(void *arg) {
  sluice_consumer *c = arg;
  for (;;) {
    pthread_mutex_lock(&c->wq_mu);
    while (!c->wq_head && !c->wq_shutdown)
      pthread_cond_wait(&c->wq_cv, &c->wq_mu);
    sluice_delivery *d = c->wq_head;
    if (!d) { /* shutdown and nothing left */
      pthread_mutex_unlock(&c->wq_mu);
      return NULL;
    }
    c->wq_head = d->qnext;
    if (!c->wq_head) c->wq_tail = NULL;
    pthread_mutex_unlock(&c->wq_mu);
    d->qnext = NULL;
    sluice__run_handler(c, d);
  }
}

int sluice__workers_start(sluice_consumer *c) {
  if (c->o.workers == 0 || c->threads) return 0;
  c->threads = calloc((size_t)c->o.workers, sizeof(pthread_t));
  if (!c->threads) return SLUICE_ENOMEM;
  c->wq_shutdown = 0;
  for (int i = 0; i < c->o.workers; i++) {
    if (pthread_create(&c->threads[i], NULL, worker_main, c) != 0) {
      sluice__workers_stop(c);
      return SLUICE_ENOMEM;
    }
    c->n_threads++;
  }
  return 0;
}

void sluice__workers_stop(sluice_consumer *c) {
  if (!c->threads) return;
  pthread_mutex_lock(&c->wq_mu);
  c->wq_shutdown = 1;
  pthread_cond_broadcast(&c->wq_cv);
  pthread_mutex_unlock(&c->wq_mu);
  /* Workers finish the handlers they are running; a handler that never
   * returns keeps stop waiting here (threads cannot be cancelled safely). */
  for (int i = 0; i < c->n_threads; i++) pthread_join(c->threads[i], NULL);
  free(c->threads);
  c->threads = NULL;
  c->n_threads = 0;
}

void sluice__workers_push(sluice_consumer *c, sluice_delivery *d) {
  d->qnext = NULL;
  pthread_mutex_lock(&c->wq_mu);
  if (c->wq_tail) c->wq_tail->qnext = d;
  else c->wq_head = d;
  c->wq_tail = d;
  pthread_cond_signal(&c->wq_cv);
  pthread_mutex_unlock(&c->wq_mu);
}

sluice_delivery *sluice__workers_take_all(sluice_consumer *c) {
  pthread_mutex_lock(&c->wq_mu);
  sluice_delivery *d = c->wq_head;
  c->wq_head = c->wq_tail = NULL;
  pthread_mutex_unlock(&c->wq_mu);
  return d;
}
