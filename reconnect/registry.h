/* SPDX-License-Identifier: MIT */
/* The close-listener registry: fixed capacity, handles that detect reuse,
 * listeners bound to a connection generation that the caller names. Knows
 * nothing of the consumer: the consumer passes the generation in and says
 * when one died. Thread-safe. Not installed. */
#ifndef SLUICE_RECONNECT_REGISTRY_H
#define SLUICE_RECONNECT_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/consumer.h>

typedef struct sluice__registry sluice__registry;

int sluice__registry_new(unsigned cap, sluice__registry **out);
void sluice__registry_free(sluice__registry *r);
/* Register `fn` for `generation` (the live connection's, or the next one's
 * while disconnected). SLUICE_ELIMIT when full, SLUICE_EINVAL for a bad
 * scope or a NULL fn/out. */
int sluice__registry_add(sluice__registry *r, sluice_close_fn fn, void *user,
                         sluice_listen_scope scope, uint64_t generation,
                         sluice_listener *out);
/* 0, or SLUICE_EALREADY for a handle removed before or never valid. */
int sluice__registry_remove(sluice__registry *r, sluice_listener h);
size_t sluice__registry_count(const sluice__registry *r);
unsigned sluice__registry_capacity(const sluice__registry *r);
/* Call every listener concerned by `ev` with `(c, ev, user)`, without a
 * lock held: a listener may (un)register; one registered during the call
 * first hears the next event. */
void sluice__registry_dispatch(sluice__registry *r, sluice_consumer *c,
                               const sluice_event *ev);
/* Remove the generation listeners of `generation` and older. */
void sluice__registry_generation_died(sluice__registry *r, uint64_t generation);

#endif
