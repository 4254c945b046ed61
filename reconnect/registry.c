/* SPDX-License-Identifier: MIT */
/* The close-listener registry: a fixed array of slots, allocated once.
 * Handles carry the slot index and a per-slot serial, so a stale handle
 * (removed twice, or removed automatically with its generation) is detected
 * instead of removing whatever took the slot since. */
#include <pthread.h>
#include <stdlib.h>

#include "registry.h"

struct slot {
  sluice_close_fn fn;
  void *user;
  uint64_t serial;     /* bumped on every free; 0 never used in handles */
  uint64_t epoch;      /* dispatch epoch at registration */
  uint64_t generation; /* for SLUICE_LISTEN_GENERATION; 0 = next one */
  int scope;
  int used;
};

struct sluice__registry {
  pthread_mutex_t mu;
  unsigned cap, count;
  uint64_t epoch;
  struct slot slots[];
};

#define SLOT_BITS 16

int sluice__registry_new(unsigned cap, sluice__registry **out) {
  sluice__registry *r =
      calloc(1, sizeof(*r) + (size_t)cap * sizeof(struct slot));
  if (!r) return SLUICE_ENOMEM;
  pthread_mutex_init(&r->mu, NULL);
  r->cap = cap;
  for (unsigned i = 0; i < cap; i++) r->slots[i].serial = 1;
  *out = r;
  return 0;
}

void sluice__registry_free(sluice__registry *r) {
  if (!r) return;
  pthread_mutex_destroy(&r->mu);
  free(r);
}

size_t sluice__registry_count(const sluice__registry *r) {
  if (!r) return 0;
  sluice__registry *m = (sluice__registry *)r;
  pthread_mutex_lock(&m->mu);
  size_t n = m->count;
  pthread_mutex_unlock(&m->mu);
  return n;
}

static void slot_free(sluice__registry *r, struct slot *s) {
  s->used = 0;
  s->fn = NULL;
  s->user = NULL;
  s->serial++;
  r->count--;
}

int sluice__registry_add(sluice__registry *r, sluice_close_fn fn, void *user,
                         sluice_listen_scope scope, uint64_t generation,
                         sluice_listener *out) {
  if (!fn || !out) return SLUICE_EINVAL;
  if (scope != SLUICE_LISTEN_GENERATION && scope != SLUICE_LISTEN_PERSISTENT)
    return SLUICE_EINVAL;
  pthread_mutex_lock(&r->mu);
  for (unsigned i = 0; i < r->cap; i++) {
    struct slot *s = &r->slots[i];
    if (s->used) continue;
    s->used = 1;
    s->fn = fn;
    s->user = user;
    s->scope = scope;
    s->epoch = r->epoch;
    s->generation = generation;
    r->count++;
    *out = (s->serial << SLOT_BITS) | i;
    pthread_mutex_unlock(&r->mu);
    return 0;
  }
  pthread_mutex_unlock(&r->mu);
  return SLUICE_ELIMIT;
}

int sluice__registry_remove(sluice__registry *r, sluice_listener h) {
  unsigned i = (unsigned)(h & ((1u << SLOT_BITS) - 1));
  uint64_t serial = h >> SLOT_BITS;
  int rc = SLUICE_EALREADY;
  pthread_mutex_lock(&r->mu);
  if (i < r->cap && r->slots[i].used && r->slots[i].serial == serial) {
    slot_free(r, &r->slots[i]);
    rc = 0;
  }
  pthread_mutex_unlock(&r->mu);
  return rc;
}

unsigned sluice__registry_capacity(const sluice__registry *r) {
  return r ? r->cap : 0;
}

void sluice__registry_dispatch(sluice__registry *r, sluice_consumer *c,
                               const sluice_event *ev) {
  pthread_mutex_lock(&r->mu);
  uint64_t epoch = ++r->epoch;
  pthread_mutex_unlock(&r->mu);
  for (unsigned i = 0; i < r->cap; i++) {
    pthread_mutex_lock(&r->mu);
    struct slot *s = &r->slots[i];
    /* Listeners registered during this dispatch wait for the next event;
     * generation listeners only hear about their own connection. */
    int call = s->used && s->epoch < epoch &&
               (s->scope == SLUICE_LISTEN_PERSISTENT ||
                ev->type == SLUICE_EV_GAVE_UP ||
                s->generation == ev->generation);
    sluice_close_fn fn = s->fn;
    void *user = s->user;
    pthread_mutex_unlock(&r->mu);
    if (call) fn(c, ev, user); /* no lock held: it may (un)register */
  }
}

void sluice__registry_generation_died(sluice__registry *r,
                                      uint64_t generation) {
  pthread_mutex_lock(&r->mu);
  for (unsigned i = 0; i < r->cap; i++) {
    struct slot *s = &r->slots[i];
    if (s->used && s->scope == SLUICE_LISTEN_GENERATION &&
        s->generation <= generation)
      slot_free(r, s);
  }
  pthread_mutex_unlock(&r->mu);
}
