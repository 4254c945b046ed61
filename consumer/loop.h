/* SPDX-License-Identifier: MIT */
/* The consumer's event loop, seen from the core: a fixed set of watches
 * that the core arms and disarms, and a call back into the core when one
 * fires. loop_event.c implements it on libevent and is the only file of the
 * consumer that includes libevent (as hiredis' adapters/libevent.h is the
 * only place hiredis meets libevent); another loop means another adapter.
 * Loop thread only, except where said. Not installed. */
#ifndef SLUICE_CONSUMER_LOOP_H
#define SLUICE_CONSUMER_LOOP_H

#include <stdint.h>

struct event_base;
struct event;
struct sluice_consumer;

typedef enum sluice__watch {
  SLUICE__W_READ,      /* the socket is readable; stays armed */
  SLUICE__W_WRITE,     /* the socket is writable; fires once */
  SLUICE__W_WAKE,      /* the wake-up eventfd is readable; stays armed */
  SLUICE__W_HEARTBEAT, /* every `ms`, stays armed */
  SLUICE__W_ACK,       /* ack flush, once after `ms` */
  SLUICE__W_STOP,      /* stop progress check, every `ms` */
  SLUICE__W_RETRY,     /* next reconnect attempt, once after `ms` */
  SLUICE__W_DRAIN,     /* read again soon: once, at the next loop pass */
  SLUICE__W_MEMORY,    /* the memory guard's next check, once after `ms` */
  SLUICE__W_COUNT
} sluice__watch;

typedef struct sluice__loop {
  struct event_base *base; /* NULL while not attached */
  int own_base;            /* created by sluice_consumer_run() */
  struct event *ev[SLUICE__W_COUNT];
  /* The heartbeat's period on a timerfd (loop_event.c), when one could be
   * made: hb_fd is open while hb_timerfd is 1. */
  int hb_fd, hb_timerfd;
  /* what each event's callback gets: the consumer and the watch */
  struct sluice__loop_arg {
    struct sluice_consumer *c;
    sluice__watch w;
  } arg[SLUICE__W_COUNT];
} sluice__loop;

/* Create every watch on `base` (the socket ones once there is a socket);
 * `wake_fd` is armed at once. Returns 0 or SLUICE_ENOMEM. */
int sluice__loop_attach(sluice__loop *l, struct event_base *base,
                        struct sluice_consumer *c, int wake_fd);
/* A new connection: READ and WRITE now watch `fd`, disarmed. */
int sluice__loop_set_socket(sluice__loop *l, struct sluice_consumer *c, int fd);
/* Arm `w`; `ms` is its timeout or period (ignored for the socket and the
 * wake-up). A no-op while not attached. */
void sluice__loop_arm(sluice__loop *l, sluice__watch w, uint64_t ms);
void sluice__loop_disarm(sluice__loop *l, sluice__watch w);
/* Disarm everything but the wake-up. */
void sluice__loop_disarm_all(sluice__loop *l);
int sluice__loop_armed(const sluice__loop *l, sluice__watch w);
/* Free every watch (the base stays). */
void sluice__loop_detach(sluice__loop *l);

/* sluice_consumer_run(): a base of our own. */
int sluice__loop_new_base(sluice__loop *l);
/* Run until broken out of: 0, SLUICE_ESTATE when no event was left, or
 * SLUICE_EIO when the loop failed. */
int sluice__loop_run(sluice__loop *l);
/* Ask a running loop of our own to return. */
void sluice__loop_break(sluice__loop *l);
void sluice__loop_free_base(sluice__loop *l);

/* The core's side: `w` fired (consumer.c). */
void sluice__on_watch(struct sluice_consumer *c, sluice__watch w);

#endif
