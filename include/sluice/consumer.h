/* SPDX-License-Identifier: MIT */
/** \file
 * The sluice consumer: an AMQP 0-9-1 consumer on rabbitmq-c, driven by a
 * libevent loop, whose memory stays bounded whatever the queue depth.
 *
 * Threading: one loop thread owns the AMQP connection. Handlers run on the
 * loop thread (`workers == 0`) or on a pool of worker threads. Functions are
 * to be called from the thread that runs the loop (or before it runs) unless
 * their documentation says "any thread".
 *
 * Callbacks take `(handle, payload, user)`: the consumer or delivery they
 * concern, what happened, and the `user` pointer given with them (the log
 * sink, shared with the publisher, has no handle; the delivery hooks of
 * sluice/hooks.h are methods of their `user`). A callback of a consumer must
 * not free that consumer: sluice_consumer_free() refuses (see there).
 *
 * Strings in options and declarations are copied unless said otherwise;
 * the caller's may go away once the call returns.
 *
 * Lifetimes: data handed to a callback is borrowed until the callback
 * returns. A delivery's message stays valid until the delivery is completed
 * (by the handler's return value, or by sluice_delivery_done() for a deferred
 * delivery). A delivery handle is a value, not a pointer: once its delivery
 * is completed it is stale, and every function taking it detects that and
 * acts on nothing (SLUICE_EALREADY, NULL, a no-op), whatever delivery came
 * next, even after the consumer is freed. \since 0.2 (0.1 handles were
 * reused: a late second completion could act on the next delivery)
 */
#ifndef SLUICE_CONSUMER_H
#define SLUICE_CONSUMER_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/error.h>
#include <sluice/export.h>
#include <sluice/hooks.h>
#include <sluice/reconnect.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

typedef struct sluice_consumer sluice_consumer;
typedef struct sluice_delivery sluice_delivery;

/* ------------------------------------------------------------------------ */
/** \name Values, headers and arguments */

/** Kind of a header or argument value.
 *
 *  Integers: every AMQP integer whose value fits in int64_t is
 *  SLUICE_VAL_INT (`u.i`), whatever its wire type; an unsigned 64-bit one
 *  above INT64_MAX is SLUICE_VAL_UINT (`u.u`), never a wrapped negative
 *  number (0.1 read UINT64_MAX as -1). So code that handles SLUICE_VAL_INT
 *  sees every value it can represent, and a value it cannot is a kind of
 *  its own. Sent (publisher, declaration arguments), SLUICE_VAL_INT is a
 *  signed 64-bit field and SLUICE_VAL_UINT an unsigned one. */
typedef enum sluice_value_kind {
  SLUICE_VAL_VOID = 0, /**< no value / unsupported AMQP type (table, array) */
  SLUICE_VAL_BOOL,
  SLUICE_VAL_INT,    /**< an AMQP integer that fits in int64: `u.i` */
  SLUICE_VAL_DOUBLE, /**< f32, f64 */
  SLUICE_VAL_STRING, /**< long string or byte array: `str`/`len` */
  SLUICE_VAL_TIMESTAMP,
  SLUICE_VAL_UINT /**< unsigned 64-bit above INT64_MAX: `u.u` \since 0.2 */
} sluice_value_kind;

/** A header or argument value. Strings are not NUL-terminated on input to
 *  sluice unless `len` is 0, in which case strlen() is used; strings handed
 *  out by sluice are always NUL-terminated as well. */
typedef struct sluice_value {
  sluice_value_kind kind;
  union {
    int b;
    int64_t i;
    uint64_t u; /**< SLUICE_VAL_UINT \since 0.2 */
    double d;
    uint64_t ts;
    struct {
      const char *str;
      size_t len;
    } s;
  } u;
} sluice_value;

/** A named value: a message header or a declare/consume argument. */
typedef struct sluice_kv {
  const char *key;
  sluice_value value;
} sluice_kv;

/* clang-format would spread each initializer over six lines. */
/* clang-format off */
/** Convenience constructors for sluice_kv arrays. */
#define SLUICE_KV_STR(k, v) \
  { (k), { .kind = SLUICE_VAL_STRING, .u.s = { (v), 0 } } }
#define SLUICE_KV_INT(k, v) \
  { (k), { .kind = SLUICE_VAL_INT, .u.i = (v) } }
#define SLUICE_KV_BOOL(k, v) \
  { (k), { .kind = SLUICE_VAL_BOOL, .u.b = (v) } }
/** \since 0.2 */
#define SLUICE_KV_UINT(k, v) \
  { (k), { .kind = SLUICE_VAL_UINT, .u.u = (v) } }
/* clang-format on */

/* ------------------------------------------------------------------------ */
/** \name Messages */

/** The AMQP basic properties of a message. Absent string fields are NULL;
 *  absent numeric fields are 0 (check the `has_*` flags where 0 is valid). */
typedef struct sluice_properties {
  const char *content_type;
  const char *content_encoding;
  const char *correlation_id;
  const char *reply_to;
  const char *expiration;
  const char *message_id;
  const char *type;
  const char *user_id;
  const char *app_id;
  uint64_t timestamp;
  uint8_t delivery_mode; /**< 1 transient, 2 persistent, 0 absent */
  uint8_t priority;
  uint8_t has_timestamp;
  uint8_t has_priority;
  const sluice_kv *headers; /**< `n_headers` entries, top-level only */
  size_t n_headers;
} sluice_properties;

/** A borrowed view of one delivered message. */
typedef struct sluice_message {
  const void *body; /**< NUL-terminated for convenience, not counted */
  size_t body_len;
  const char *queue;    /**< the queue it was consumed from */
  const char *exchange; /**< "" for the default exchange */
  const char *routing_key;
  const char *consumer_tag;
  uint64_t delivery_tag; /**< channel-scoped; see `generation` */
  uint64_t generation;   /**< connection generation it arrived on */
  int redelivered;
  sluice_properties props;
} sluice_message;

/** Look up a header by name. \return the value, or NULL if absent. */
SLUICE_EXPORT const sluice_value *sluice_message_header(
    const sluice_message *msg, const char *key);

/* ------------------------------------------------------------------------ */
/** \name Outcomes and handlers */

/** Name of an outcome ("ack", "nack", "reject", "defer", "stale",
 *  "error"); "?" otherwise. Thread-safe. */
SLUICE_EXPORT const char *sluice_outcome_name(int outcome);

/** A message handler. Runs on the loop thread or a worker thread. It may
 *  call sluice_consumer_stop() but not sluice_consumer_free() (refused).
 *  \param d   the delivery handle, valid until the delivery is completed
 *  \param msg borrowed until the delivery is completed
 *  \return a sluice_outcome. Any other value is logged, counted as a handler
 *          error and treated as SLUICE_NACK (requeue), so no message is lost.
 *          In SLUICE_ACK_AUTO mode the broker already considers the message
 *          acknowledged: the outcome only feeds statistics and hooks. */
typedef int (*sluice_handler_fn)(sluice_delivery *d, const sluice_message *msg,
                                 void *user);

/** Complete a delivery whose handler returned SLUICE_DEFER. Any thread.
 *  \param outcome SLUICE_ACK, SLUICE_NACK or SLUICE_REJECT
 *  \return 0; SLUICE_EINVAL for another outcome (the delivery stays open)
 *          or a value that was never a delivery handle; SLUICE_EALREADY if
 *          the delivery was already completed: nothing is sent, and no other
 *          delivery is touched (\since 0.2); SLUICE_ESTALE if its connection
 *          died in between (the broker redelivers the message; the handle is
 *          released). Never SLUICE_ESTALE in SLUICE_ACK_AUTO mode: the
 *          broker settled the message when it sent it, so there is nothing
 *          to go stale. */
SLUICE_EXPORT int sluice_delivery_done(sluice_delivery *d, int outcome);

/** The message of a delivery (for deferred completion). Any thread, until the
 *  delivery is completed; NULL for a completed (stale) handle. */
SLUICE_EXPORT const sluice_message *sluice_delivery_message(
    const sluice_delivery *d);

/** Make the calling thread allocate "inside" this delivery again (for the
 *  allocation profiler): call from code that works on a deferred delivery
 *  outside its handler, such as an HTTP reply callback, then
 *  sluice_delivery_leave(). No-op without hooks, and for a completed
 *  (stale) handle. Any thread. */
SLUICE_EXPORT void sluice_delivery_enter(sluice_delivery *d);
/** Counterpart of sluice_delivery_enter(). Any thread. */
SLUICE_EXPORT void sluice_delivery_leave(sluice_delivery *d);

/* ------------------------------------------------------------------------ */
/** \name Events and logging */

typedef enum sluice_event_type {
  SLUICE_EV_CONNECTED = 1, /**< connection (re)established and recovered */
  SLUICE_EV_CLOSED,        /**< connection or channel lost; see err/reply */
  SLUICE_EV_CANCELLED,     /**< the broker cancelled a subscription */
  SLUICE_EV_BLOCKED,       /**< connection.blocked (reason in `text`) */
  SLUICE_EV_UNBLOCKED,     /**< connection.unblocked */
  SLUICE_EV_RECONNECTING,  /**< next attempt in `delay_ms` */
  SLUICE_EV_GAVE_UP,       /**< reconnect attempts exhausted */
  SLUICE_EV_REJECTED_BIG,  /**< a body over max_body was rejected */
  SLUICE_EV_HANDLER_ERROR, /**< a handler returned an invalid value */
  SLUICE_EV_STOPPED,       /**< graceful stop finished */
  /** The memory guard stopped reading new deliveries: the figure in
   *  `bytes` is above `limit` (the high mark); `text` names its source
   *  (sluice_consumer_stats.memory_source). \since 0.2 */
  SLUICE_EV_MEMORY_PAUSED,
  /** The memory guard let reading resume: `bytes` is below `limit` (the
   *  low mark). \since 0.2 */
  SLUICE_EV_MEMORY_RESUMED
} sluice_event_type;

/** An event. Borrowed for the duration of the callback. */
typedef struct sluice_event {
  sluice_event_type type;
  int err;             /**< SLUICE_E* classifying the event, or 0 */
  uint16_t reply_code; /**< AMQP reply code of a broker close, or 0 */
  const char *text;    /**< broker reply text, blocked reason; for
                             RECONNECTING, GAVE_UP and STOPPED after a
                             failed attempt, why it failed (OpenSSL's reason
                             for TLS); or NULL */
  const char *queue;   /**< queue concerned, or NULL */
  uint64_t generation; /**< connection generation concerned */
  uint64_t delay_ms;   /**< for SLUICE_EV_RECONNECTING */
  unsigned attempt;    /**< for SLUICE_EV_RECONNECTING */
  uint64_t bytes;      /**< SLUICE_EV_MEMORY_*: the figure read \since 0.2 */
  uint64_t limit;      /**< SLUICE_EV_MEMORY_*: the mark it crossed
                            \since 0.2 */
} sluice_event;

/** An event callback; runs on the loop thread. It may call
 *  sluice_consumer_stop() but not sluice_consumer_free() (refused). */
typedef void (*sluice_event_fn)(sluice_consumer *c, const sluice_event *ev,
                                void *user);

/** Receives, at a graceful stop in SLUICE_ACK_AUTO mode, each delivery the
 *  broker had already sent (and settled) but no handler could take before
 *  stop_timeout_ms: typically to republish it. Loop thread; `msg` is
 *  borrowed for the call. Without it such deliveries are counted (`dropped`)
 *  and logged as errors. Never called in MANUAL mode, where the broker
 *  requeues what was not acknowledged. */
typedef void (*sluice_abandoned_fn)(sluice_consumer *c,
                                    const sluice_message *msg, void *user);

typedef enum sluice_log_level {
  SLUICE_LOG_ERROR = 1,
  SLUICE_LOG_WARN = 2,
  SLUICE_LOG_INFO = 3,
  SLUICE_LOG_DEBUG = 4
} sluice_log_level;

/** A log sink, for a consumer (sluice_consumer_opts.log) or a publisher
 *  (sluice_publisher_opts.log). `msg` is one line without its newline,
 *  borrowed for the call; may be called from any sluice thread. */
typedef void (*sluice_log_fn)(int level, const char *msg, void *user);

/* ------------------------------------------------------------------------ */
/** \name TLS */

/** Lowest TLS version accepted (sluice_tls_opts.min_version). \since 0.2 */
typedef enum sluice_tls_version {
  SLUICE_TLS_DEFAULT = 0, /**< TLS 1.2 */
  SLUICE_TLS_1_2 = 12,
  SLUICE_TLS_1_3 = 13
} sluice_tls_version;

/** TLS settings, used for every amqps:// URI of a consumer or publisher
 *  (amqp:// URIs in the same list ignore them). Zero-initialise: the
 *  defaults verify the broker's certificate against the system's CAs and
 *  its name against the URI's host (a DNS name or an IP address), send that
 *  host in SNI (not an IP address) and accept TLS 1.2 and 1.3. A failure is
 *  never retried in plaintext. Strings are copied; the files are read at
 *  sluice_consumer_new() / sluice_publisher_new() (an unreadable one fails
 *  there with SLUICE_ETLSCONFIG) and again at each connection.
 *  See docs/consumer.md, "TLS". \since 0.2 */
typedef struct sluice_tls_opts {
  const char *ca_file;      /**< PEM bundle of the CAs to trust; with
                              `ca_dir` unset too: the system's store */
  const char *ca_dir;       /**< directory of hashed CA certificates
                              (`openssl rehash`) */
  const char *cert_file;    /**< client certificate chain (PEM), for mutual
                              TLS */
  const char *key_file;     /**< its private key (PEM); default: `cert_file` */
  const char *key_password; /**< for an encrypted key; never prompted */
  /** The name sent in SNI and matched against the certificate; default:
   *  each URI's host. For a broker reached by an address or a name its
   *  certificate does not carry (a tunnel, a load balancer). */
  const char *server_name;
  sluice_tls_version min_version;
  /** 1: accept a valid certificate issued for another name. Weakens TLS:
   *  any holder of a certificate from a trusted CA can pose as the broker. */
  int skip_verify_hostname;
  /** 1: accept any certificate, unverified: anyone on the path can read and
   *  change the traffic. Tests only; logged as a warning at each connect. */
  int skip_verify_peer;
} sluice_tls_opts;

/* ------------------------------------------------------------------------ */
/** \name Memory guard */

/** The memory guard (sluice_consumer_opts.memory_guard): above a memory
 *  figure the consumer stops reading new deliveries, and resumes below a
 *  lower one; deliveries already read are handled. Zero-initialise: a zero
 *  `high_bytes` means no guard. See docs/consumer.md, "The memory guard",
 *  for what it means with prefetch, autoAck and reconnects. \since 0.2 */
typedef struct sluice_memory_guard_opts {
  /** Reading stops while the figure is above this many bytes; 0: no
   *  guard. */
  uint64_t high_bytes;
  /** Reading resumes once the figure is below this; default high_bytes -
   *  high_bytes / 4. Must be below high_bytes (else SLUICE_EINVAL). */
  uint64_t low_bytes;
  /** How often the figure is read, on the loop thread; default 100 ms.
   *  Two slow readings in a row space the next by 100 times the cheaper's
   *  CPU time (sluice_consumer_stats.memory_check_us). A cheap reading is
   *  also taken every 50 x its CPU time in microseconds deliveries (8 to
   *  4,096), which bounds the overshoot by deliveries as well. */
  unsigned interval_ms;
  /** 1: the default figure is the resident set size (RSS) instead of the
   *  live heap. RSS keeps the pages the allocator holds after free(), so it
   *  may stay above `low_bytes` when the heap has fallen: see the docs. */
  int use_rss;
  /** A reader of your own, called on the loop thread every `interval_ms`
   *  (never concurrently with itself); it wins over the
   *  hooks' `heap_read` and `use_rss`. When it fails the default figure is
   *  used for that reading (counted in `memory_read_errors`). NULL: the
   *  delivery hooks' `heap_read` when there is one and it answers (the
   *  profiler, while it runs), else sluice_memory_read(). */
  sluice_heap_read_fn read;
  /** Passed to `read`; borrowed: it must stay valid until
   *  sluice_consumer_free(). */
  void *read_user;
} sluice_memory_guard_opts;

/** The default memory figure of the guard, for this process: with `use_rss`
 *  0, the bytes the allocator has handed out and not taken back (the live
 *  heap): the sanitizer's count under ASan or TSan, glibc's mallinfo2()
 *  otherwise, mallinfo() when malloc is replaced by one that provides only
 *  that (valgrind, tcmalloc; exact below 2 GiB), and the RSS when none of
 *  them sees the heap; with `use_rss` 1, the RSS (/proc/self/statm).
 *  \param use_rss 1: the RSS whatever the allocator
 *  \param bytes  receives the figure
 *  \param source receives a static string naming where it came from
 *                ("sanitizer", "mallinfo2", "mallinfo", "rss"); may be NULL
 *  \return 0; SLUICE_EINVAL (`bytes` NULL); SLUICE_EIO when nothing could
 *          be read. Any thread. \since 0.2 */
SLUICE_EXPORT int sluice_memory_read(int use_rss, uint64_t *bytes,
                                     const char **source);

/* ------------------------------------------------------------------------ */
/** \name Options */

typedef enum sluice_ack_mode {
  SLUICE_ACK_MANUAL = 0, /**< default: basic.qos prefetch, explicit acks */
  SLUICE_ACK_AUTO = 1    /**< no_ack consume; bounded in-process buffer */
} sluice_ack_mode;

/** Consumer options. Zero-initialise; a zero field means its default. */
typedef struct sluice_consumer_opts {
  /** Broker URI, amqp://user:pass@host:port/vhost, or amqps:// for TLS
   *  (see `tls`); copied. Default "amqp://guest:guest@127.0.0.1:5672/". */
  const char *uri;
  /** Or a list of URIs (a cluster's nodes) tried in turn; overrides `uri`.
   *  amqp:// and amqps:// may be mixed. The strings are copied (the array
   *  too). */
  const char *const *uris;
  size_t n_uris;
  const char *connection_name; /**< shown by the management UI; copied */
  int heartbeat_s;             /**< default 30; negative disables heartbeats */
  int frame_max;               /**< default 131072; at least 4096 (else
                               SLUICE_EINVAL) */
  int connect_timeout_ms;      /**< TCP connect, TLS handshake and AMQP login,
                               per node; default 10000 */
  int rpc_timeout_ms;          /**< synchronous broker calls; default 10000 */

  sluice_ack_mode ack_mode;
  uint16_t prefetch; /**< basic.qos per consumer, MANUAL; default 250
                          (docs/consumer.md, "Choosing prefetch") */
  int workers;       /**< 0: handlers inline on the loop thread; at
                            most 1024 (else SLUICE_EINVAL) */

  /** In-process bound on deliveries held by sluice (queued for workers, in a
   *  handler, or deferred). When reached, the loop stops reading the socket
   *  and TCP back-pressure holds the broker. Defaults: count 256, bytes
   *  64 MiB. In MANUAL mode prefetch usually binds first. */
  size_t max_inflight;
  size_t max_inflight_bytes;
  size_t max_body; /**< larger bodies are rejected unread; default 64 MiB */

  /** Ack coalescing: completed acks are sent when `ack_batch` are pending
   *  or `ack_flush_ms` after the first of them, whichever comes first, as
   *  one basic.ack multiple=true where the tags are contiguous. 1 sends one
   *  ack per message. Defaults: max(1, prefetch / 4) and 5 ms. */
  unsigned ack_batch;
  unsigned ack_flush_ms;

  /** Graceful stop budget; default 5000. In AUTO mode the handlers get this
   *  long to take what the broker already sent; what is left after it is
   *  read off the socket up to the cancel-ok and handed to `on_abandoned`,
   *  for as long as the broker keeps sending (this budget restarts with each
   *  delivery read; the broker sends nothing new after the cancel). */
  unsigned stop_timeout_ms;
  sluice_abandoned_fn on_abandoned; /**< AUTO mode stop; may be NULL */
  void *abandoned_user;
  /** SO_RCVBUF of the connection; 0: 128 KiB in AUTO mode (what sits in the
   *  kernel was settled by the broker and is lost if the process dies),
   *  the kernel's default in MANUAL mode; negative: the kernel's default.
   *  It bounds only the client's side of an AUTO crash loss: the broker's
   *  socket buffer (up to 4 MiB on Linux) holds more (docs/consumer.md,
   *  "autoAck and a crash of the process"); only MANUAL bounds it. */
  int socket_rcvbuf;

  sluice_tls_opts tls; /**< for amqps:// URIs \since 0.2 */

  sluice_reconnect_opts reconnect;
  /** Stop reading new deliveries while memory is above a mark; off by
   *  default. \since 0.2 */
  sluice_memory_guard_opts memory_guard;
  unsigned max_close_listeners; /**< registry capacity; default 16, at
                                     most 4096 (else SLUICE_EINVAL) */

  sluice_event_fn on_event;
  void *event_user;
  sluice_log_fn log; /**< default: stderr */
  void *log_user;
  int log_level; /**< most verbose level logged; default WARN;
                          negative: nothing */
  const sluice_delivery_hooks *hooks; /**< copied; may be NULL */
} sluice_consumer_opts;

/* ------------------------------------------------------------------------ */
/** \name Lifecycle */

/** Create a consumer. Does not connect. Copies every string of `opts`.
 *  \return 0; SLUICE_EINVAL for bad options (out of the documented ranges);
 *          SLUICE_EURI for a malformed URI; SLUICE_ETLSCONFIG when a TLS
 *          file does not load (an amqps:// URI is given; why in the log);
 *          SLUICE_ENOMEM. */
SLUICE_EXPORT int sluice_consumer_new(const sluice_consumer_opts *opts,
                                      sluice_consumer **out);

/** Free a consumer; stops it first if running. NULL is a no-op.
 *
 *  From another thread while sluice_consumer_run() runs: it asks for a
 *  graceful stop (as sluice_consumer_stop()), waits until run() has
 *  returned, then frees; run() returns 0 to its caller, which must not use
 *  the consumer afterwards. With sluice_consumer_start(), from a thread
 *  other than the one that started it, before SLUICE_EV_STOPPED: refused
 *  (logged), since stopping needs the caller's loop, which sluice cannot
 *  drive from there; stop it and free it once stopped. A consumer is freed
 *  once, by one thread. \since 0.2 (a crash in 0.1)
 *
 *  From inside a callback of this same consumer (a handler, an event or
 *  close listener, on_abandoned, the log sink, on any thread) the call is
 *  refused: it logs an error and returns with the consumer untouched, since
 *  the code that called the callback still uses it. Call
 *  sluice_consumer_stop() there instead, and free the consumer once run()
 *  has returned (or SLUICE_EV_STOPPED was seen and the callback returned).
 *  \since 0.2 (the refusal; undefined behaviour in 0.1) */
SLUICE_EXPORT void sluice_consumer_free(sluice_consumer *c);

/** Wait until every connection attempt that sluice_consumer_free() left
 *  behind has ended, at most `timeout_ms`.
 *
 *  free() never waits for an attempt blocked where sluice cannot interrupt
 *  it (a name lookup, the TCP connect of an amqps:// node, both inside
 *  libc or rabbitmq-c): that attempt ends on its own within
 *  connect_timeout_ms, on a thread of its own, and frees everything it
 *  holds. A program that exits meanwhile leaves that memory to the
 *  process's end, which LeakSanitizer and valgrind report as leaks; call
 *  this before exiting where leaks are checked. Process-wide; any thread;
 *  never from a sluice callback.
 *  
eturn 0 when none is left; SLUICE_ETIMEDOUT.
 *  \since 0.2 */
SLUICE_EXPORT int sluice_consumer_wait_detached(unsigned timeout_ms);

/** Connect now, on the calling thread (blocking, bounded by
 *  connect_timeout_ms per node and rpc_timeout_ms per call), so that errors
 *  such as refused credentials surface here. The only call that connects on
 *  the caller's thread: run() and start() connect on a thread of their own.
 *  Declarations and subscriptions made after this are sent at once and
 *  report broker errors directly.
 *  \return 0; SLUICE_ECONNECT, SLUICE_EAUTH, SLUICE_EVHOST, SLUICE_ETIMEDOUT,
 *          SLUICE_EPROTO; for amqps:// the TLS codes (SLUICE_ETLS*,
 *          SLUICE_ENOTTLS) and for amqp:// to a TLS port SLUICE_ETLSPORT;
 *          SLUICE_ESTATE if already connected, stopped, or started and
 *          connecting. */
SLUICE_EXPORT int sluice_consumer_connect(sluice_consumer *c);

/** Run the consumer on its own event loop until stopped.
 *  \return 0 after a graceful stop; SLUICE_EGAVEUP after the last reconnect
 *          attempt; the connection error when reconnect is off; connect
 *          errors as for sluice_consumer_connect(). */
SLUICE_EXPORT int sluice_consumer_run(sluice_consumer *c);

/** Attach to the caller's event_base instead; the caller runs the loop.
 *  Returns at once: unless sluice_consumer_connect() came first, the first
 *  connection is made on a thread of sluice's own and announced on the loop
 *  (SLUICE_EV_CONNECTED; a failure as SLUICE_EV_RECONNECTING, or as
 *  SLUICE_EV_STOPPED with its code when it is not retried). No connection
 *  attempt, first or later, ever holds the caller's loop. Stop with
 *  sluice_consumer_stop() and wait for SLUICE_EV_STOPPED (or
 *  sluice_consumer_stopped()); after it sluice has no event left on `base`,
 *  so event_base_dispatch() returns once the caller's own events are done.
 *  \return 0; SLUICE_EINVAL; SLUICE_ESTATE (started or stopped before);
 *          SLUICE_ENOMEM, SLUICE_ESOCKET, SLUICE_ELIMIT (no thread).
 *  \since 0.2 (0.1 connected on the caller's thread and returned the
 *  connection error) */
SLUICE_EXPORT int sluice_consumer_start(sluice_consumer *c,
                                        struct event_base *base);

/** Ask for a graceful stop: cancel the subscriptions, let in-flight handlers
 *  finish, flush acks, close channel and connection, within stop_timeout_ms.
 *  Deliveries not completed by then are left to the broker to requeue.
 *  Any thread, and async-signal-safe. Idempotent. */
SLUICE_EXPORT void sluice_consumer_stop(sluice_consumer *c);

/** 1 once a started consumer has stopped. Any thread. */
SLUICE_EXPORT int sluice_consumer_stopped(const sluice_consumer *c);

/* ------------------------------------------------------------------------ */
/** \name Topology (remembered and re-declared after a reconnect) */

typedef struct sluice_exchange_decl {
  const char *name;
  const char *type; /**< "direct" (default), "fanout", "topic", "headers" */
  int durable, auto_delete, internal, passive;
  const sluice_kv *args;
  size_t n_args;
} sluice_exchange_decl;

typedef struct sluice_queue_decl {
  const char *name; /**< required (server-named queues are not recovered) */
  int durable, exclusive, auto_delete, passive;
  int quorum;                       /**< x-queue-type=quorum */
  const char *dead_letter_exchange; /**< x-dead-letter-exchange */
  const char *dead_letter_routing_key;
  int64_t message_ttl_ms; /**< x-message-ttl, 0 = none */
  int64_t max_length;     /**< x-max-length, 0 = none */
  const sluice_kv *args;  /**< further arguments */
  size_t n_args;
} sluice_queue_decl;

/** Declare an exchange. Sent now if connected, else at connect. Every
 *  string and argument is copied (kept for the re-declaration). A broker
 *  that answers by closing the connection (503 for an unknown exchange
 *  type) leaves it lost when this returns (see sluice_consumer_subscribe()).
 *  \return 0; SLUICE_EINVAL; SLUICE_ECONFLICT (exists with other settings);
 *          SLUICE_ENOTFOUND (passive, missing); SLUICE_ECLOSED; the
 *          broker's refusal (SLUICE_EPROTO for a 503).
 *  \since 0.2 (sluice_declare_exchange() before) */
SLUICE_EXPORT int sluice_consumer_declare_exchange(
    sluice_consumer *c, const sluice_exchange_decl *d);
/** Declare a queue; strings and arguments copied.
 *  \return as sluice_consumer_declare_exchange().
 *  \since 0.2 (sluice_declare_queue() before) */
SLUICE_EXPORT int sluice_consumer_declare_queue(sluice_consumer *c,
                                                const sluice_queue_decl *d);
/** Bind a queue to an exchange; strings and arguments copied.
 *  \return as sluice_consumer_declare_exchange().
 *  \since 0.2 (sluice_bind_queue() before) */
SLUICE_EXPORT int sluice_consumer_bind_queue(
    sluice_consumer *c, const char *queue, const char *exchange,
    const char *routing_key, const sluice_kv *args, size_t n_args);
/** Purge a queue (not remembered). \return 0 or as above; `*purged` gets
 *  the number of messages removed when not NULL.
 *  \since 0.2 (sluice_purge_queue() before) */
SLUICE_EXPORT int sluice_consumer_purge_queue(sluice_consumer *c,
                                              const char *queue,
                                              uint32_t *purged);

/* ------------------------------------------------------------------------ */
/** \name Subscriptions */

typedef struct sluice_subscribe_opts {
  const char *queue;         /**< required; copied */
  sluice_handler_fn handler; /**< required */
  void *user;
  const char *consumer_tag; /**< default (NULL or ""): generated;
                                   copied; at most 255 bytes; unique within
                                   the consumer */
  int exclusive;
  int priority; /**< x-priority, 0 = none */
  /** The message key the delivery hooks (the allocation profiler) group
   *  deliveries by, so that residual memory is also kept per key value
   *  (docs/profiling.md): "routing_key", "exchange", a property ("type",
   *  "app_id", "content_type", "user_id") or a header ("header:x-kind").
   *  A message without it has the value "(none)". NULL: no key. Copied;
   *  anything else is SLUICE_EINVAL. \since 0.2 */
  const char *key;
} sluice_subscribe_opts;

/** Subscribe a handler to a queue. Sent now if connected, else at connect.
 *  If the broker answers by closing the connection or the consuming channel
 *  (403 for a queue another consumer uses exclusively), the connection is
 *  lost when this returns, as for any close: SLUICE_EV_CLOSED, deferred
 *  deliveries stale, a reconnect if enabled. Declarations and purges alike.
 *  \return 0; SLUICE_EINVAL (also a consumer_tag this consumer already
 *          uses: refused before anything is sent, \since 0.2);
 *          SLUICE_ENOTFOUND (no such queue); SLUICE_ELIMIT (64 subscriptions
 *          per consumer); SLUICE_ECLOSED; the broker's refusal. */
SLUICE_EXPORT int sluice_consumer_subscribe(sluice_consumer *c,
                                            const sluice_subscribe_opts *o);

/* ------------------------------------------------------------------------ */
/** \name Statistics and state */

/** Counters; a snapshot readable from any thread at any time. */
typedef struct sluice_consumer_stats {
  uint64_t delivered;               /**< deliveries handed to handlers */
  uint64_t acked, nacked, rejected; /**< completed with each outcome */
  uint64_t handler_errors;          /**< invalid handler returns (nacked) */
  uint64_t stale;                   /**< completions dropped: connection died
                                (MANUAL mode; the broker redelivers) */
  uint64_t redelivered;             /**< deliveries with the redelivered flag */
  uint64_t too_big;                 /**< bodies over max_body, rejected */
  uint64_t dropped;                 /**< AUTO mode: settled by the broker, never
                                handled (stop timeout, handed to
                                on_abandoned when set) */
  uint64_t ack_frames;              /**< basic.ack/nack/reject frames written */
  uint64_t in_flight; /**< held now: buffered + in handler + deferred */
  uint64_t in_flight_bytes;
  uint64_t max_in_flight;   /**< high-water mark of in_flight */
  uint64_t in_handler;      /**< in a handler or deferred now */
  uint64_t max_in_handler;  /**< high-water mark of in_handler */
  uint64_t read_pauses;     /**< times reading stopped on the in-flight bound */
  uint64_t reconnects;      /**< successful reconnects */
  uint64_t generation;      /**< generation of the live connection, or of
                                the next one while disconnected (from 1;
                                it moves on when a connection dies) */
  uint64_t close_listeners; /**< registered close listeners */
  int connected;
  int blocked; /**< broker sent connection.blocked on the live
                                connection (cleared when it closes) */
  /** The memory guard (all 0 without one) \since 0.2 */
  uint64_t memory_bytes;       /**< the figure it read last */
  uint64_t memory_high_bytes;  /**< reading stops above this */
  uint64_t memory_low_bytes;   /**< and resumes below this */
  uint64_t memory_pauses;      /**< times it stopped reading */
  uint64_t memory_paused_ms;   /**< time spent paused, the current pause
                                    included */
  uint64_t memory_checks;      /**< readings taken */
  uint64_t memory_read_errors; /**< readings where `read` failed */
  /** The loop thread's CPU time the last reading took, in microseconds.
   *  Two slow readings in a row space the next by 100 times the cheaper
   *  of them (at most 1% of the loop thread): glibc's mallinfo2() walks
   *  every free chunk, tens of milliseconds on a heap fragmented into
   *  500,000 of them. */
  uint64_t memory_check_us;
  int memory_paused; /**< 1 while it holds reading */
  /** Where the last figure came from: "reader" (the options' `read`),
   *  "hooks" (the delivery hooks' `heap_read`: the profiler), or the
   *  default's "sanitizer", "mallinfo2", "mallinfo", "rss"; "" before the
   *  first reading. A static string. */
  const char *memory_source;
} sluice_consumer_stats;

/** Fill `out` with the current counters. Any thread. */
SLUICE_EXPORT void sluice_consumer_get_stats(const sluice_consumer *c,
                                             sluice_consumer_stats *out);

/** The last broker-side close (connection.close or channel.close): its AMQP
 *  reply code (e.g. 403, 404, 406) and text. `text` is copied into `buf`.
 *  \return the reply code, 0 if the broker never closed anything. Loop
 *          thread or after run() returned. */
SLUICE_EXPORT int sluice_consumer_last_close(const sluice_consumer *c,
                                             char *buf, size_t buflen);

/** The event_base the consumer runs on (NULL before run/start). */
SLUICE_EXPORT struct event_base *sluice_consumer_base(sluice_consumer *c);

/* ------------------------------------------------------------------------ */
/** \name URIs */

/** A parsed AMQP URI. Strings point into the caller's `buf`, or to static
 *  strings for the defaults ("guest", "localhost", "/"). */
typedef struct sluice_uri {
  const char *user, *password, *host, *vhost;
  int port;
  int tls; /**< 1 for amqps:// (default port 5671; 5672 for amqp://) */
} sluice_uri;

/** Parse `amqp://[user[:pass]@]host[:port][/vhost]` (percent-decoding each
 *  part; an empty path means vhost "/", no host means "localhost"). The
 *  scheme is case-insensitive; a percent-encoded NUL (`%00`) in any part is
 *  malformed, since it would cut the part short. Thread-safe.
 *  \return 0; SLUICE_EURI when malformed; SLUICE_ELIMIT when `buflen` is too
 *          small: strlen(uri) + 8 bytes are always enough.
 *  \since 0.2 (the scheme's case, `%00` and the buffer bound for the
 *         shortest URIs) */
SLUICE_EXPORT int sluice_uri_parse(const char *uri, sluice_uri *out, char *buf,
                                   size_t buflen);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_CONSUMER_H */
