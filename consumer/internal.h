/* SPDX-License-Identifier: MIT */
/* The consumer's internals, shared by its files (consumer.c lifecycle,
 * frames.c reading, delivery.c slots/completion/acks, topology.c
 * declarations and recovery, conn.c connecting, workers.c) and reconnect/.
 * Not installed. */
#ifndef SLUICE_CONSUMER_INTERNAL_H
#define SLUICE_CONSUMER_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include <amqp.h>

#include <sluice/consumer.h>
#include <sluice/reconnect.h>

#include "../reconnect/policy.h"
#include "../reconnect/registry.h"
#include "ackq.h"
#include "ackwire.h"
#include "amqp_util.h"
#include "bound.h"
#include "handle.h"
#include "loop.h"
#include "memguard.h"
#include "tls.h"
#include "util.h"

#define SLUICE__MAX_SUBS 64

/* ---- deliveries --------------------------------------------------------- */

enum sluice__delivery_state {
  SLUICE__DS_FREE = 0,     /* in the slot pool */
  SLUICE__DS_ASSEMBLING,   /* frames still arriving */
  SLUICE__DS_QUEUED,       /* waiting for a worker */
  SLUICE__DS_HANDLER,      /* a handler is running */
  SLUICE__DS_DEFERRED,     /* handler returned SLUICE_DEFER */
  SLUICE__DS_HANDLER_DONE, /* sluice_delivery_done() inside the handler;
                              the outcome rides in the state word */
  SLUICE__DS_COMPLETING,   /* outcome known, on its way to the loop thread */
  SLUICE__DS_ABANDONED     /* stopping: left unacked, the broker requeues */
};

/* A delivery slot. Its state lives in its handle-table entry (handle.h),
 * with the use count of the delivery it serves, in one atomic word: read
 * and change it with the sluice__ds_* helpers below. */
struct sluice_delivery {
  struct sluice_consumer *c;
  sluice__hentry *he; /* its entry in the handle table */
  uint32_t hidx;      /* and that entry's index */
  uint64_t use;       /* the use (delivery) the slot serves now */
  int outcome;
  struct sluice__sub *sub;
  sluice_message msg;
  sluice_delivery_info info;
  void *hook_token;
  size_t body_size; /* announced by the content header */
  size_t body_got;  /* received so far */
  size_t mem;       /* bytes charged to the in-flight bound */
  int too_big;      /* body discarded; will be rejected */
  int on_stale;     /* linked on the stale list, not the held one */
  int unbound;      /* begun while parking: not counted in the bound yet */
  char key_buf[32]; /* a non-string header value as text (hooks' key) */
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

/* The state of the delivery a slot serves. */
static inline unsigned sluice__ds_get(const struct sluice_delivery *d) {
  return sluice__word_state(atomic_load(&d->he->word));
}
static inline void sluice__ds_set(struct sluice_delivery *d, unsigned st) {
  atomic_store(&d->he->word, sluice__word(d->use, st));
}
/* From `from` to `to`, if the slot still serves the same delivery and is in
 * `from`; else *seen gets the word found. */
static inline int sluice__ds_cas(struct sluice_delivery *d, unsigned from,
                                 unsigned to, uint64_t *seen) {
  uint64_t w = sluice__word(d->use, from);
  if (atomic_compare_exchange_strong(&d->he->word, &w,
                                     sluice__word(d->use, to)))
    return 1;
  if (seen) *seen = w;
  return 0;
}

/* ---- topology and subscriptions ----------------------------------------- */

enum sluice__topo_kind {
  SLUICE__TOPO_EXCHANGE,
  SLUICE__TOPO_QUEUE,
  SLUICE__TOPO_BIND
};

struct sluice__topo {
  enum sluice__topo_kind kind;
  struct sluice__topo *next;
  amqp_pool_t pool; /* owns every string and the argument table */
  char *name, *type, *exchange, *routing_key;
  int durable, auto_delete, internal, passive, exclusive;
  amqp_table_t args;
};

struct sluice__sub {
  int used;
  int active;    /* basic.consume-ok received on the current connection */
  int cancelled; /* by the broker (queue deleted) or by stop */
  char *queue;
  char *tag;
  size_t tag_len; /* strlen(tag): compared with each delivery's tag */
  sluice_handler_fn handler;
  void *user;
  int exclusive;
  int priority;
  /* The hooks' key (sluice_subscribe_opts.key): where to read it. */
  int key_from;   /* SLUICE__KEY_* */
  char *key_spec; /* as given: "type", "header:x-kind" */
};

enum {
  SLUICE__KEY_NONE = 0,
  SLUICE__KEY_ROUTING,
  SLUICE__KEY_EXCHANGE,
  SLUICE__KEY_TYPE,
  SLUICE__KEY_APP_ID,
  SLUICE__KEY_CONTENT_TYPE,
  SLUICE__KEY_USER_ID,
  SLUICE__KEY_HEADER
};

/* ---- the consumer ------------------------------------------------------- */

struct sluice_consumer {
  sluice_consumer_opts o; /* with defaults applied; strings below */
  sluice__logger log;
  char **uris;
  size_t n_uris;
  /* per URI: its port was asked whether it speaks TLS since it last took a
   * connection (sluice__open_args.tls_asked) */
  unsigned char *tls_asked;
  char *conn_name;
  sluice__tls_config tls; /* for amqps:// URIs (has_tls) */
  int has_tls;
  sluice_delivery_hooks hooks;
  int has_hooks;

  /* connection (loop thread) */
  amqp_connection_state_t conn;
  int fd;
  _Atomic int connected; /* read by get_stats from any thread */
  int heartbeat_s;       /* negotiated */
  uint64_t last_rx_ms;   /* last time bytes were seen from the broker */
  _Atomic uint64_t generation;
  uint16_t last_close_code;
  /* The broker's close that the next sluice__conn_lost() reports (set just
   * before it by whoever read the close), or 0. */
  uint16_t lost_code;
  char last_close_text[256];
  _Atomic int blocked;

  /* loop */
  sluice__loop loop;
  int wake_fd;
  int reading;      /* READ is armed */
  int want_write;   /* WRITE is armed */
  int write_budget; /* bytes writable without another poll(2) */
  /* Ack frames sluice writes itself, on a plain TCP connection (ackwire.h,
   * delivery.c "acks"): set per connection; while ack_hold > 0 (a pass
   * over frames read or completions drained), frames collect in ackw and
   * go out together when the pass ends. */
  int own_acks;
  /* Frames sluice reads itself, on the same connections (frames.c,
   * "reading"): the socket's bytes go into rx_buf and rabbitmq-c only
   * decodes them (amqp_handle_input); rx_off..rx_len is what is not decoded
   * yet. rabbitmq-c's own heartbeat bookkeeping is off on such a
   * connection: sluice__heartbeat() sends and checks them. Deliveries that
   * a synchronous call made sluice decode while reading was paused wait on
   * park_head..park_tail (qnext), not counted in the bound. */
  int own_reads;
  int mute[2]; /* an empty socketpair: rabbitmq-c's socket while it drains */
  unsigned char *rx_buf;
  size_t rx_off, rx_len;
  sluice_delivery *park_head, *park_tail;
  size_t n_parked;
  size_t n_unbound; /* deliveries held outside the bound (parked) */
  int parking;      /* in sluice__reads_settle() */
  int rmq_check;    /* rabbitmq-c may hold bytes: a synchronous call ran */
  int ack_hold;
  int ackw_failed; /* a write of ackw failed: the connection is given up */
  sluice__ackwire ackw;
  int ack_timer_on;
  /* The broker's window as the loop thread sees it (frames.c,
   * window_drained): deliveries received on this connection, those settled
   * by ack frames the socket took, the latter before the last write of
   * acks and when the socket was last read. Reset per connection. */
  uint64_t win_rx, win_tx, win_tx_prev, win_tx_at_read;
  int n_subs; /* subscriptions made (each has its own prefetch window) */
  int run_result;
  int started;
  pthread_t loop_thread;
  size_t abandoned; /* held deliveries left unacked by a stop */
  _Atomic int stopped;
  /* sluice_consumer_run() has not returned yet: its last access to the
   * consumer is the store that clears this (sluice_consumer_free() from
   * another thread waits for it). */
  _Atomic int in_run;
  pthread_t run_thread; /* the thread in run(), set before in_run */

  /* topology */
  struct sluice__topo *topo, **topo_tail;
  struct sluice__sub subs[SLUICE__MAX_SUBS];
  unsigned tag_counter;

  /* delivery assembly */
  sluice_delivery *asm_d;
  char asm_tag[256], asm_exchange[256], asm_rk[256];
  size_t asm_tag_len, asm_exchange_len, asm_rk_len; /* strlen of each */
  unsigned release_main; /* frames.c: pool releases of the consuming
                            channel alone since all were released */

  /* held deliveries, loop thread: current generation in tag order, and the
   * ones left over from dead connections */
  sluice_delivery *held_head, *held_tail;
  sluice_delivery *stale_head;
  sluice__bound bound; /* every delivery held, whatever its generation */

  /* the memory guard (memguard.c): its state on the loop thread, what
   * get_stats reports in atomics */
  sluice__memguard mem;
  int mem_failing;      /* the options' reader failed at the last check */
  int mem_slow;         /* checks are spaced out: a reading takes long */
  uint64_t mem_last_ns; /* the CPU time of the last reading (0: none) */
  unsigned mem_every;   /* also read after this many deliveries (0: never) */
  unsigned mem_ticks;   /* deliveries since the last reading */
  _Atomic int mem_paused, mem_source;
  _Atomic uint64_t mem_since_ms; /* when the current pause began */
  _Atomic uint64_t n_mem_bytes, n_mem_pauses, n_mem_paused_ms, n_mem_checks,
      n_mem_read_errors, n_mem_check_us;

  /* slot pool (loop thread allocates; any thread may complete) */
  sluice_delivery *pool;

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
  sluice__ackq acks;

  /* stop */
  _Atomic int stop_requested;
  int stopping;
  int draining; /* AUTO stop past its deadline: hand deliveries off */
  uint64_t stop_deadline_ms;

  /* reconnect: the policy decides, the consumer arms SLUICE__W_RETRY */
  sluice__registry *registry;
  sluice__policy policy;
  /* the last attempt: every node refused, the slowest after this long;
   * UINT64_MAX when some node failed otherwise (or it got further) */
  uint64_t refused_ms;
  int probing; /* the retry armed now is a probe (its refusals: DEBUG) */
  struct sluice__attempt *attempt; /* a connection attempt in flight */
  char last_error[512];            /* why the last attempt failed */

  /* counters (atomics: read from any thread) */
  _Atomic uint64_t n_delivered, n_acked, n_nacked, n_rejected, n_errors,
      n_stale, n_redelivered, n_too_big, n_dropped, n_ack_frames, n_in_handler,
      n_max_in_handler, n_max_inflight, n_read_pauses, n_reconnects, n_inflight,
      n_inflight_bytes;
  _Atomic uint64_t seq;
};

/* Add to a counter that only the loop thread writes (n_delivered,
 * n_redelivered, n_acked, n_nacked, n_rejected, n_ack_frames, seq; other
 * threads only read them): a relaxed load and store, without the locked
 * read-modify-write of atomic_fetch_add, a few on every delivery. */
static inline uint64_t sluice__count(_Atomic uint64_t *v, uint64_t n) {
  uint64_t x = atomic_load_explicit(v, memory_order_relaxed) + n;
  atomic_store_explicit(v, x, memory_order_relaxed);
  return x;
}

/* log.c: the consumer's log (stderr at WARN for NULL) */
void sluice__log(const sluice_consumer *c, int level, const char *fmt, ...)
    SLUICE__PRINTF(3, 4);

/* consumer.c: lifecycle */
void sluice__emit(sluice_consumer *c, const sluice_event *ev);
void sluice__conn_lost(sluice_consumer *c, int err);
void sluice__check_stop(sluice_consumer *c);
void sluice__begin_stop(sluice_consumer *c);

/* conn.c: disconnecting (loop thread) */
void sluice__disconnect(sluice_consumer *c, int graceful);

/* attempt.c: connection attempts, off the loop thread (loop thread side) */
typedef struct sluice__attempt sluice__attempt;
/* Start one on a thread of its own; it wakes the loop when done. */
int sluice__attempt_start(sluice_consumer *c);
/* 1 once the attempt in flight has finished. */
int sluice__attempt_done(sluice_consumer *c);
/* Take a finished attempt's result: 0 and the consumer is connected,
 * recovered and subscribed; or why it failed (c->last_error says more). */
int sluice__attempt_adopt(sluice_consumer *c);
/* One attempt on the calling thread (sluice_consumer_connect()), adopted. */
int sluice__attempt_now(sluice_consumer *c);
/* Stop: end the attempt's waits; its result will be dropped. */
void sluice__attempt_cancel(sluice_consumer *c);
/* Free: cancel, and forget the attempt (it may finish on its own). */
void sluice__attempt_release(sluice_consumer *c);
/* Record a broker close for sluice_consumer_last_close(). */
void sluice__note_close(sluice_consumer *c, uint16_t code, const char *text);

/* topology.c: declarations, subscriptions, recovery */
/* A connection and where its broker calls report: what the calls below
 * touch, so that an attempt can make them on its own thread. */
typedef struct sluice__link {
  amqp_connection_state_t conn;
  const sluice__logger *log;
  uint16_t close_code; /* the last broker close seen, and its text */
  char close_text[256];
} sluice__link;
static inline void sluice__link_note(sluice__link *k, uint16_t code,
                                     const char *text) {
  if (!code) return;
  k->close_code = code;
  snprintf(k->close_text, sizeof(k->close_text), "%s", text);
}
/* Declare `t` / subscribe on `k`'s connection; any thread. */
int sluice__topo_send(sluice__link *k, const struct sluice__topo *t);
int sluice__consume_send(sluice__link *k, const char *queue, const char *tag,
                         int no_ack, int exclusive, int priority);
/* The same on the live connection, recording the close and the
 * subscription's state in the consumer (loop thread). */
int sluice__apply_topology(sluice_consumer *c, struct sluice__topo *t);
int sluice__consume(sluice_consumer *c, struct sluice__sub *s);
struct sluice__sub *sluice__sub_by_tag(sluice_consumer *c, amqp_bytes_t tag);
void sluice__topology_free(sluice_consumer *c);

/* frames.c: reading, assembly, heartbeats (loop thread) */
void sluice__read_frames(sluice_consumer *c);
void sluice__kick_read(sluice_consumer *c);
/* 1 if the broker sent something not read yet (in rabbitmq-c's buffer or
 * the socket's); never blocks. */
int sluice__input_pending(sluice_consumer *c);
void sluice__update_pause(sluice_consumer *c);
void sluice__heartbeat(sluice_consumer *c);
/* A new connection: read it with sluice's own buffer where sluice writes
 * its acks (own_acks), unless SLUICE_OWN_READS=0; 0 or SLUICE_ENOMEM. */
int sluice__reads_begin(sluice_consumer *c);
/* Before a synchronous call on the live connection (rabbitmq-c then reads
 * the socket itself): decode what sluice read ahead of it. Deliveries
 * completed here are parked, handed out by the next read pass. The
 * connection may be lost. */
void sluice__reads_settle(sluice_consumer *c);
/* Before a graceful close: decode what sluice read ahead and forget it
 * (the broker requeues unacknowledged deliveries when the channel closes).
 * 0, or -1 if those bytes are not AMQP: then rabbitmq-c must not read the
 * connection again (conn.c, close_rpcs), and it is closed without the
 * handshake. */
int sluice__reads_drop(sluice_consumer *c);
/* The connection is gone or stopped: parked deliveries count as held again
 * (they are released with the rest of what it held). */
void sluice__reads_end(sluice_consumer *c);

/* memguard.c: the memory guard (loop thread) */
/* Check the figure once and arm the periodic check (start). */
void sluice__memguard_start(sluice_consumer *c);
/* One check: read the figure, pause or resume, report (the timer). */
void sluice__memguard_check(sluice_consumer *c);
/* A check between deliveries, without moving the timer. */
void sluice__memguard_check_between(sluice_consumer *c);
/* A delivery was read: a check when the reading is cheap enough to be made
 * every `mem_every` deliveries (memguard.c; 0 without a guard), else only a
 * test on the per-delivery path. */
static inline void sluice__memguard_tick(sluice_consumer *c) {
  if (c->mem_every && ++c->mem_ticks >= c->mem_every)
    sluice__memguard_check_between(c);
}
/* 1 if the guard holds reading now. A stop reads on whatever the figure:
 * MANUAL to see the cancel-ok (what comes meanwhile is never handled, and
 * the broker takes it back at the close); AUTO because what the broker
 * pushes after basic.cancel it has already settled: held off the socket it
 * would reach no handler before the stop timeout, and be lost without
 * on_abandoned. The in-flight bound still applies (docs/consumer.md, "The
 * memory guard"). Inline: it is asked several times per delivery. */
static inline int sluice__memguard_holds(const sluice_consumer *c) {
  return c->mem.held && !c->stopping;
}
/* The name of a figure's source (stats.memory_source). */
const char *sluice__memguard_source_name(int src);

/* delivery.c: slots, dispatch, completion, acks */
/* A new delivery held (in tag order) on the live connection. */
sluice_delivery *sluice__delivery_new(sluice_consumer *c);
/* Charge `bytes` of a delivery to the in-flight bound. */
void sluice__charge(sluice_consumer *c, sluice_delivery *d, size_t bytes);
/* Count a delivery begun during a synchronous call (unbound) in the bound,
 * with what it was charged. */
void sluice__delivery_bind(sluice_consumer *c, sluice_delivery *d);
/* An assembled delivery: to its handler, or settled if it cannot run. */
void sluice__dispatch(sluice_consumer *c, sluice_delivery *d);
/* Settle a delivery that never reaches a handler (unknown tag). */
void sluice__settle_unhandled(sluice_consumer *c, sluice_delivery *d,
                              sluice__ackq_kind kind);
void sluice__run_handler(sluice_consumer *c, sluice_delivery *d);
void sluice__drain_completions(sluice_consumer *c);
void sluice__flush_acks(sluice_consumer *c);
/* Bracket a pass of the loop (frames read, completions drained): the ack
 * frames it produces are written together when the outermost pass ends
 * (own_acks connections; otherwise nothing changes). */
void sluice__acks_hold(sluice_consumer *c);
void sluice__acks_release(sluice_consumer *c);
/* Write the frames collected so far (the connection may be lost). */
void sluice__acks_write(sluice_consumer *c);
/* Stop: send the pending acks, waiting up to `wait_ms` each time for the
 * socket to take more. */
void sluice__flush_acks_blocking(sluice_consumer *c, int wait_ms);
/* The connection died: drop pending acks, release or orphan what it held. */
void sluice__deliveries_conn_lost(sluice_consumer *c);
/* Stop: take back what waits for a worker (left to the broker). */
void sluice__abandon_queued(sluice_consumer *c);
/* AUTO stop past its deadline: what waits for a worker goes to on_abandoned. */
void sluice__hand_off_queued(sluice_consumer *c);
/* The run ended: release what the broker takes back. */
void sluice__deliveries_stopped(sluice_consumer *c);
void sluice__deliveries_free(sluice_consumer *c);
/* Deliveries held and still being worked on (stop waits for them). */
size_t sluice__busy_count(const sluice_consumer *c);

/* workers.c */
int sluice__workers_start(sluice_consumer *c);
void sluice__workers_stop(sluice_consumer *c);
void sluice__workers_push(sluice_consumer *c, sluice_delivery *d);
/* Take back every queued delivery not yet handled (stop/reconnect). */
sluice_delivery *sluice__workers_take_all(sluice_consumer *c);

#endif
