/* SPDX-License-Identifier: MIT */
/* The consumer's loop on libevent: each watch of loop.h is one struct
 * event whose callback reports it to the core. */
#include <event2/event.h>

#include <sluice/error.h>

#include "loop.h"
#include "util.h"

static void fired(evutil_socket_t fd, short what, void *arg) {
  struct sluice__loop_arg *a = arg;
  sluice__on_watch(a->c, a->w);
}

static short flags_of(sluice__watch w) {
  switch (w) {
    case SLUICE__W_READ:
    case SLUICE__W_WAKE: return EV_READ | EV_PERSIST;
    case SLUICE__W_WRITE: return EV_WRITE;
    case SLUICE__W_HEARTBEAT:
    case SLUICE__W_STOP: return EV_PERSIST;
    default: return 0; /* a one-shot timer */
  }
}

static int make(sluice__loop *l, struct sluice_consumer *c, sluice__watch w,
                int fd) {
  if (l->ev[w]) event_free(l->ev[w]);
  l->arg[w].c = c;
  l->arg[w].w = w;
  l->ev[w] = event_new(l->base, fd, flags_of(w), fired, &l->arg[w]);
  return l->ev[w] ? 0 : SLUICE_ENOMEM;
}

int sluice__loop_attach(sluice__loop *l, struct event_base *base,
                        struct sluice_consumer *c, int wake_fd) {
  l->base = base;
  int rc = make(l, c, SLUICE__W_WAKE, wake_fd);
  for (int w = SLUICE__W_HEARTBEAT; !rc && w < SLUICE__W_COUNT; w++)
    rc = make(l, c, (sluice__watch)w, -1);
  if (!rc) rc = event_add(l->ev[SLUICE__W_WAKE], NULL) ? SLUICE_ENOMEM : 0;
  return rc;
}

int sluice__loop_set_socket(sluice__loop *l, struct sluice_consumer *c,
                            int fd) {
  if (!l->base) return 0;
  int rc = make(l, c, SLUICE__W_READ, fd);
  return rc ? rc : make(l, c, SLUICE__W_WRITE, fd);
}

void sluice__loop_arm(sluice__loop *l, sluice__watch w, uint64_t ms) {
  if (!l->base || !l->ev[w]) return;
  if (w == SLUICE__W_READ || w == SLUICE__W_WRITE || w == SLUICE__W_WAKE) {
    event_add(l->ev[w], NULL);
    return;
  }
  struct timeval tv = sluice__tv_ms(ms);
  event_add(l->ev[w], &tv);
}

void sluice__loop_disarm(sluice__loop *l, sluice__watch w) {
  if (l->ev[w]) event_del(l->ev[w]);
}

void sluice__loop_disarm_all(sluice__loop *l) {
  for (int w = 0; w < SLUICE__W_COUNT; w++)
    if (w != SLUICE__W_WAKE) sluice__loop_disarm(l, (sluice__watch)w);
}

int sluice__loop_armed(const sluice__loop *l, sluice__watch w) {
  return l->ev[w] &&
         event_pending(l->ev[w], EV_READ | EV_WRITE | EV_TIMEOUT, NULL);
}

void sluice__loop_detach(sluice__loop *l) {
  for (int w = 0; w < SLUICE__W_COUNT; w++) {
    if (l->ev[w]) event_free(l->ev[w]);
    l->ev[w] = NULL;
  }
}

int sluice__loop_new_base(sluice__loop *l) {
  l->base = event_base_new();
  if (!l->base) return SLUICE_ENOMEM;
  l->own_base = 1;
  return 0;
}

int sluice__loop_run(sluice__loop *l) {
  if (event_base_dispatch(l->base) < 0) return SLUICE_EIO;
  if (event_base_got_break(l->base) == 0 && event_base_got_exit(l->base) == 0)
    return SLUICE_ESTATE; /* no events left */
  return 0;
}

void sluice__loop_break(sluice__loop *l) {
  if (l->own_base && l->base) event_base_loopbreak(l->base);
}

void sluice__loop_free_base(sluice__loop *l) {
  if (l->own_base && l->base) event_base_free(l->base);
  l->base = NULL;
  l->own_base = 0;
}
