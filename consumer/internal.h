/* SPDX-License-Identifier: MIT */
/* Internals shared by consumer/ and reconnect/. Not installed. */
#ifndef SLUICE_CONSUMER_INTERNAL_H
#define SLUICE_CONSUMER_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>

#include <amqp.h>

#include <sluice/consumer.h>
#include <sluice/reconnect.h>

#include "ackq.h"
#include "bound.h"

#define SLUICE_MAX_SUBS 64
#define SLUICE_CONSUME_CHANNEL 1
#define SLUICE_TOPOLOGY_CHANNEL 2

#if defined(__GNUC__)
#define SLUICE_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SLUICE_PRINTF(a, b)
#endif

/* ---- callbacks and logging --------------------------------------------- */

/* Callbacks in progress on this thread, innermost first: lets free() refuse
 * to destroy the object whose callback is running (log.c). */
typedef struct sluice__cb_frame {
  const void *owner; /* the consumer or publisher whose callback runs */
  struct sluice__cb_frame *up;
} sluice__cb_frame;

extern _Thread_local sluice__cb_frame *sluice__cb_top;

static inline void sluice__cb_enter(sluice__cb_frame *f, const void *owner) {
  f->owner = owner;
  f->up = sluice__cb_top;
  sluice__cb_top = f;
}

static inline void sluice__cb_leave(sluice__cb_frame *f) {
  sluice__cb_top = f->up;
}

/* 1 if a callback of `owner` is running on this thread. */
int sluice__cb_inside(const void *owner);

/* A log sink with its level; `owner` is the handle its callback belongs to. */
typedef struct sluice__logger {
  sluice_log_fn fn;
  void *user;
  int level;
  const void *owner;
} sluice__logger;

/* ---- deliveries --------------------------------------------------------- */

enum delivery_state {
  DS_FREE = 0,     /* in the slot pool */
  DS_ASSEMBLING,   /* frames still arriving */
  DS_QUEUED,       /* waiting for a worker */
  DS_HANDLER,      /* a handler is running */
  DS_DEFERRED,     /* handler returned SLUICE_DEFER */
  DS_HANDLER_DONE, /* completed by sluice_delivery_done() inside handler */
  DS_COMPLETING,   /* outcome known, on its way to the loop thread */
  DS_ABANDONED     /* stopping: left unacked for the broker to requeue */
};

struct sluice_delivery {
  struct sluice_consumer *c;
  _Atomic int state;
  int outcome;
  struct sub *sub;
  sluice_message msg;
  sluice_delivery_info info;
  void *hook_token;
  size_t body_size;     /* announced by the content header */
  size_t body_got;      /* received so far */
  size_t mem;           /* bytes charged to the in-flight bound */
  int too_big;          /* body discarded; will be rejected */
  int on_stale;         /* linked on the stale list, not the held one */
  int early_outcome;    /* sluice_delivery_done() while still in handler */
  /* storage: strings, headers and body live in one block */
  char *blk;
  size_t blk_cap;
  /* loop-thread list of deliveries held (in-flight), in tag order */
  struct sluice_delivery *prev, *next;
  /* work queue / completion queue link */
  struct sluice_delivery *qnext;
  /* slot pool link */
  struct sluice_delivery *pool_next;
};

/* ---- topology and subscriptions ----------------------------------------- */

enum topo_kind { TOPO_EXCHANGE, TOPO_QUEUE, TOPO_BIND };

struct topo {
  enum topo_kind kind;
  struct topo *next;
  amqp_pool_t pool; /* owns every string and the argument table */
  char *name, *type, *exchange, *routing_key;
  int durable, auto_delete, internal, passive, exclusive;
  amqp_table_t args;
};

struct sub {
  int used;
  int active;    /* basic.consume-ok received on the current connection */
  int cancelled; /* by the broker (queue deleted) or by stop */
  char *queue;
  char *tag;
  sluice_handler_fn handler;
  void *user;
  int exclusive;
  int priority;
};

/* ---- the consumer ------------------------------------------------------- */

struct sluice_consumer {
  sluice_consumer_opts o; /* with defaults applied; strings below */
  sluice__logger log;
  char **uris;
  size_t n_uris, uri_next;
  char *conn_name;
  sluice_delivery_hooks hooks;
  int has_hooks;

  /* connection (loop thread) */
  amqp_connection_state_t conn;
  int fd;
  _Atomic int connected; /* read by get_stats from any thread */
  int heartbeat_s;      /* negotiated */
  uint64_t last_rx_ms;  /* last time bytes were seen from the broker */
  _Atomic uint64_t generation;
  uint16_t last_close_code;
  char last_close_text[256];
  _Atomic int blocked;

  /* loop */
  struct event_base *base;
  int own_base;
  struct event *ev_read, *ev_write, *ev_wake, *ev_hb, *ev_ack, *ev_stop,
      *ev_retry, *ev_drain;
  int wake_fd;
  int reading;      /* ev_read is added */
  int want_write;   /* ev_write is added */
  int write_budget; /* bytes writable without another poll(2) */
  int ack_timer_on;
  int in_dispatch;  /* inside a frame-reading pass */
  int run_result;
  int started;
  pthread_t loop_thread;
  size_t abandoned;  /* held deliveries left unacked by a stop */
  _Atomic int stopped;

  /* topology */
  struct topo *topo, **topo_tail;
  struct sub subs[SLUICE_MAX_SUBS];
  unsigned tag_counter;

  /* delivery assembly */
  sluice_delivery *asm_d;
  char asm_tag[256], asm_exchange[256], asm_rk[256];
  uint64_t asm_delivery_tag;
  int asm_redelivered;

  /* held deliveries, loop thread: current generation in tag order, and the
   * ones left over from dead connections */
  sluice_delivery *held_head, *held_tail;
  sluice_delivery *stale_head;
  sluice_bound bound;    /* every delivery held, whatever its generation */

  /* slot pool (loop thread allocates; any thread may complete) */
  sluice_delivery *pool;
  size_t pool_size;

  /* completions from other threads */
  pthread_mutex_t cq_mu;
  sluice_delivery *cq_head, *cq_tail;

  /* worker pool */
  pthread_mutex_t wq_mu;
  pthread_cond_t wq_cv;
  sluice_delivery *wq_head, *wq_tail;
  int wq_shutdown;
  pthread_t *threads;
  int n_threads;

  /* acks */
  ackq acks;

  /* stop */
  _Atomic int stop_requested;
  int stopping;
  int draining;     /* AUTO stop past its deadline: hand deliveries off */
  uint64_t stop_deadline_ms;

  /* reconnect */
  struct sluice__registry *registry;
  sluice_backoff backoff;
  unsigned attempt;
  uint64_t connected_at_ms;
  uint64_t rng_state;

  /* counters (atomics: read from any thread) */
  _Atomic uint64_t n_delivered, n_acked, n_nacked, n_rejected, n_errors,
      n_stale, n_redelivered, n_too_big, n_dropped, n_ack_frames, n_in_handler,
      n_max_in_handler, n_max_inflight, n_read_pauses, n_reconnects, n_inflight,
      n_inflight_bytes;
  _Atomic uint64_t seq;
};

/* log.c */
void sluice__vlogf(const sluice__logger *lg, int level, const char *fmt,
                   va_list ap);
void sluice__logf(const sluice__logger *lg, int level, const char *fmt, ...)
    SLUICE_PRINTF(3, 4);
/* The consumer's log (stderr at WARN for NULL). */
void sluice__log(const sluice_consumer *c, int level, const char *fmt, ...)
    SLUICE_PRINTF(3, 4);
uint64_t sluice__now_ms(void);

/* amqp_util.c */
int sluice__kv_to_table(amqp_pool_t *pool, const sluice_kv *kv, size_t n,
                        amqp_table_t *out);
/* The x- arguments of a queue declaration (quorum, DLX, TTL, ...). */
int sluice__queue_args(amqp_pool_t *pool, const sluice_queue_decl *d,
                       amqp_table_t *out);
int sluice__reply_to_err(amqp_rpc_reply_t r, uint16_t *code, char *text,
                         size_t textlen);
int sluice__close_code_to_err(uint16_t code, const char *text);
/* Size needed to copy properties (strings + headers) into a block. */
size_t sluice__props_size(const amqp_basic_properties_t *p);
/* Copy properties into `blk` (at least sluice__props_size bytes). */
void sluice__props_copy(const amqp_basic_properties_t *p,
                        sluice_properties *out, char *blk);
int sluice__amqp_status_to_err(int status);

/* conn.c: synchronous steps, loop thread */
typedef struct sluice_open_args {
  const char *uri, *conn_name;
  int connect_timeout_ms, rpc_timeout_ms, heartbeat_s, frame_max;
} sluice_open_args;
/* Open and log in; on failure `code`/`text` say why. */
int sluice__amqp_open(const sluice_open_args *a, amqp_connection_state_t *out,
                      uint16_t *code, char *text, size_t textlen);
int sluice__rpc_result(amqp_connection_state_t conn, amqp_channel_t ch,
                       uint16_t *code, char *text, size_t textlen);
int sluice__connect(sluice_consumer *c);
int sluice__setup_channel(sluice_consumer *c);
int sluice__apply_topology(sluice_consumer *c, struct topo *t);
int sluice__consume(sluice_consumer *c, struct sub *s);
void sluice__disconnect(sluice_consumer *c, int graceful);

/* consumer.c */
void sluice__emit(sluice_consumer *c, const sluice_event *ev);
void sluice__conn_lost(sluice_consumer *c, int err);
void sluice__kick_read(sluice_consumer *c);

/* workers.c */
int sluice__workers_start(sluice_consumer *c);
void sluice__workers_stop(sluice_consumer *c);
void sluice__workers_push(sluice_consumer *c, sluice_delivery *d);
/* Take back every queued delivery not yet handled (stop/reconnect). */
sluice_delivery *sluice__workers_take_all(sluice_consumer *c);
void sluice__run_handler(sluice_consumer *c, sluice_delivery *d);

/* consumer.c: completion from any thread */
int sluice__complete(sluice_delivery *d, int outcome, int from_handler);

/* reconnect/ */
int sluice__registry_new(unsigned cap, struct sluice__registry **out);
void sluice__registry_free(struct sluice__registry *r);
void sluice__registry_dispatch(struct sluice__registry *r, sluice_consumer *c,
                               const sluice_event *ev);
void sluice__registry_generation_died(struct sluice__registry *r,
                                      uint64_t generation);
size_t sluice__registry_count(const struct sluice__registry *r);
/* 0 for errors that retrying cannot fix (credentials, vhost, missing queue) */
int sluice__retryable(int err);
void sluice__reconnect_schedule(sluice_consumer *c, int err);
void sluice__reconnect_connected(sluice_consumer *c);
/* The reconnect clock: opts.reconnect.now_ms when set, else monotonic ms. */
uint64_t sluice__reconnect_now(sluice_consumer *c);
/* End the run with `result` (consumer.c). */
void sluice__finish(sluice_consumer *c, int result);

#endif
