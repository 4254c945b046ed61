/* SPDX-License-Identifier: MIT */
/* The consumer's loop on libevent: each watch of loop.h is one struct
 * event whose callback reports it to the core. */
#include <stdint.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <event2/event.h>

#include <sluice/error.h>

#include "loop.h"
#include "util.h"

/* The heartbeat's period runs on a timerfd that the loop watches like a
 * socket, not on a libevent timer: a pending libevent timer gives every
 * epoll_wait(2) a timeout, and the kernel then sets up and cancels a
 * high-resolution timer on each sleep. With the heartbeat (always armed)
 * as the only timer of a steady stream of per-message acks, that is once
 * per message at prefetch 1, where the loop sleeps after every ack. The
 * timerfd is armed once per connection. A libevent timer stands in if no
 * timerfd can be made. */

static void fired(evutil_socket_t fd, short what, void *arg) {
  struct sluice__loop_arg *a = arg;
  sluice__on_watch(a->c, a->w);
}

static void fired_timerfd(evutil_socket_t fd, short what, void *arg) {
  uint64_t ticks;
  ssize_t r = read(fd, &ticks, sizeof(ticks)); /* EAGAIN: disarmed since */
  (void)r;
  fired(fd, what, arg);
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
  if (w == SLUICE__W_HEARTBEAT && l->hb_timerfd)
    l->ev[w] = event_new(l->base, l->hb_fd, EV_READ | EV_PERSIST, fired_timerfd,
                         &l->arg[w]);
  else l->ev[w] = event_new(l->base, fd, flags_of(w), fired, &l->arg[w]);
  return l->ev[w] ? 0 : SLUICE_ENOMEM;
}

int sluice__loop_attach(sluice__loop *l, struct event_base *base,
                        struct sluice_consumer *c, int wake_fd) {
  l->base = base;
  if (!l->hb_timerfd) {
    l->hb_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    l->hb_timerfd = l->hb_fd >= 0;
  }
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
  if (w == SLUICE__W_HEARTBEAT && l->hb_timerfd) {
    struct itimerspec t;
    t.it_value.tv_sec = (time_t)(ms / 1000);
    t.it_value.tv_nsec = (long)(ms % 1000) * 1000000L;
    if (ms == 0) t.it_value.tv_nsec = 1; /* zero would disarm it */
    t.it_interval = t.it_value;
    timerfd_settime(l->hb_fd, 0, &t, NULL);
    event_add(l->ev[w], NULL);
    return;
  }
  struct timeval tv = sluice__tv_ms(ms);
  event_add(l->ev[w], &tv);
}

void sluice__loop_disarm(sluice__loop *l, sluice__watch w) {
  if (!l->ev[w]) return;
  event_del(l->ev[w]);
  if (w == SLUICE__W_HEARTBEAT && l->hb_timerfd) {
    struct itimerspec off = {{0, 0}, {0, 0}};
    timerfd_settime(l->hb_fd, 0, &off, NULL);
  }
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
  if (l->hb_timerfd) close(l->hb_fd);
  l->hb_timerfd = 0;
  l->hb_fd = -1;
}

/* sluice_consumer_run()'s own base does not cache the time: libevent
 * would read the clock after every epoll_wait(2) to refresh its cache,
 * for the timers alone. With no timer pending (a steady stream of
 * per-message acks: the heartbeat is a timerfd) libevent reads no clock;
 * a pending timer (the ack flush, the memory guard) reads it when it is
 * added and where libevent checks timeouts, about as often as the cache
 * would. A base the application passes to sluice_consumer_start() keeps
 * its own flags. */
int sluice__loop_new_base(sluice__loop *l) {
  struct event_config *cfg = event_config_new();
  l->base = NULL;
  if (cfg) {
    event_config_set_flag(cfg, EVENT_BASE_FLAG_NO_CACHE_TIME);
    l->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
  }
  if (!l->base) l->base = event_base_new();
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
