/* SPDX-License-Identifier: MIT */
/* A blocking publisher with confirms. Confirms are tracked in a ring indexed
 * by sequence number; the ring is never larger than max_outstanding, since
 * publishing waits for confirms before it would overflow. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include <sluice/publisher.h>

#include "amqp_util.h"
#include "tls.h"
#include "util.h"

#define PUB_CH SLUICE__CH_MAIN
#define PUB_TOPO_CH SLUICE__CH_TOPOLOGY

enum { SEQ_NONE = 0, SEQ_PENDING, SEQ_ACKED, SEQ_NACKED };

struct sluice_publisher {
  sluice_publisher_opts o;
  sluice__logger log;
  amqp_connection_state_t conn;
  uint8_t *ring; /* state per sequence number, ring[seq % cap] */
  unsigned cap;
  uint64_t next_seq; /* next publish gets this (from 1) */
  uint64_t low;      /* lowest sequence number not yet settled */
  sluice_publish_report rep;
  uint16_t close_code;
  char close_text[256];
  int broken;  /* the channel or connection is gone */
  int blocked; /* connection.blocked, not yet unblocked */
  char blocked_reason[256];
};

static void pub_note_close(sluice_publisher *p, uint16_t code,
                           const char *text) {
  if (!code) return;
  p->close_code = code;
  snprintf(p->close_text, sizeof(p->close_text), "%s", text);
}

int sluice_publisher_new(const sluice_publisher_opts *opts,
                         sluice_publisher **out) {
  if (!out) return SLUICE_EINVAL;
  *out = NULL;
  sluice_publisher *p = calloc(1, sizeof(*p));
  if (!p) return SLUICE_ENOMEM;
  if (opts) p->o = *opts;
  if (p->o.log_level == 0) p->o.log_level = SLUICE_LOG_WARN;
  p->log = (sluice__logger){p->o.log, p->o.log_user, p->o.log_level, p};
  if (!p->o.uri) p->o.uri = SLUICE__DEFAULT_URI;
  if (p->o.connect_timeout_ms <= 0)
    p->o.connect_timeout_ms = SLUICE__DEFAULT_CONNECT_TIMEOUT_MS;
  if (p->o.confirm_timeout_ms <= 0) p->o.confirm_timeout_ms = 30000;
  if (p->o.max_outstanding == 0) p->o.max_outstanding = 1024;
  if (p->o.blocked_timeout_ms == 0)
    p->o.blocked_timeout_ms = p->o.confirm_timeout_ms;
  p->cap = p->o.max_outstanding;
  p->ring = calloc(p->cap, 1);
  p->next_seq = p->low = 1;
  if (!p->ring) {
    free(p);
    return SLUICE_ENOMEM;
  }
  char text[512];
  uint16_t code;
  /* The TLS settings serve this one connection only. */
  sluice__tls_config tls;
  int rc = 0, is_tls = strncasecmp(p->o.uri, "amqps://", 8) == 0;
  if (is_tls) rc = sluice__tls_config_init(&tls, &p->o.tls, text, sizeof(text));
  memset(&p->o.tls, 0, sizeof(p->o.tls)); /* not kept */
  if (!rc) {
    sluice__open_args a = {.uri = p->o.uri,
                           .conn_name = p->o.connection_name,
                           .connect_timeout_ms = p->o.connect_timeout_ms,
                           .rpc_timeout_ms = p->o.confirm_timeout_ms,
                           .frame_max = SLUICE__DEFAULT_FRAME_MAX,
                           .tls = is_tls ? &tls : NULL,
                           .log = &p->log};
    rc = sluice__amqp_open(&a, &p->conn, &code, text, sizeof(text));
  }
  if (is_tls) sluice__tls_config_free(&tls);
  if (rc) {
    sluice__logf(&p->log, SLUICE_LOG_ERROR, "publisher: %s (%s)", text,
                 sluice_strerror(rc));
    free(p->ring);
    free(p);
    return rc;
  }
  p->o.uri = NULL; /* not kept */
  p->o.connection_name = NULL;
  amqp_channel_open(p->conn, PUB_CH);
  rc = sluice__rpc_result(p->conn, PUB_CH, &code, text, sizeof(text));
  if (!rc) {
    amqp_channel_open(p->conn, PUB_TOPO_CH);
    rc = sluice__rpc_result(p->conn, PUB_TOPO_CH, &code, text, sizeof(text));
  }
  if (!rc && !p->o.no_confirms) {
    amqp_confirm_select(p->conn, PUB_CH);
    rc = sluice__rpc_result(p->conn, PUB_CH, &code, text, sizeof(text));
  }
  if (rc) {
    sluice_publisher_free(p);
    return rc;
  }
  *out = p;
  return 0;
}

void sluice_publisher_free(sluice_publisher *p) {
  if (!p) return;
  if (sluice__cb_inside(p)) {
    sluice__logf(&p->log, SLUICE_LOG_ERROR,
                 "sluice_publisher_free() from inside a callback of the same "
                 "publisher: refused");
    return;
  }
  if (p->conn) {
    if (!p->broken) {
      amqp_channel_close(p->conn, PUB_TOPO_CH, AMQP_REPLY_SUCCESS);
      amqp_channel_close(p->conn, PUB_CH, AMQP_REPLY_SUCCESS);
      amqp_connection_close(p->conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(p->conn);
  }
  free(p->ring);
  free(p);
}

static void settle(sluice_publisher *p, uint64_t tag, int multiple, int state) {
  uint64_t from = multiple ? p->low : tag;
  for (uint64_t s = from; s <= tag && s < p->next_seq; s++) {
    uint8_t *slot = &p->ring[s % p->cap];
    if (*slot != SEQ_PENDING) continue;
    *slot = (uint8_t)state;
    p->rep.pending--;
    if (state == SEQ_ACKED) p->rep.confirmed++;
    else p->rep.nacked++;
  }
  while (p->low < p->next_seq && p->ring[p->low % p->cap] != SEQ_PENDING) {
    p->ring[p->low % p->cap] = SEQ_NONE;
    p->low++;
  }
}

/* Read the rest of a basic.return (header and body) and report it. */
static int read_return(sluice_publisher *p, amqp_basic_return_t *m) {
  char text[256], exch[256], rk[256];
  sluice__bytes_str(text, sizeof(text), m->reply_text);
  sluice__bytes_str(exch, sizeof(exch), m->exchange);
  sluice__bytes_str(rk, sizeof(rk), m->routing_key);
  uint16_t code = m->reply_code;
  amqp_message_t msg;
  amqp_rpc_reply_t r = amqp_read_message(p->conn, PUB_CH, &msg, 0);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) return SLUICE_EPROTO;
  p->rep.returned++;
  if (p->o.on_return) {
    char mid[256] = "";
    if (msg.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG)
      sluice__bytes_str(mid, sizeof(mid), msg.properties.message_id);
    sluice_returned ret = {code,
                           text,
                           exch,
                           rk,
                           msg.body.bytes,
                           msg.body.len,
                           mid[0] ? mid : NULL};
    sluice__cb_frame f;
    sluice__cb_enter(&f, p);
    p->o.on_return(p, &ret, p->o.return_user);
    sluice__cb_leave(&f);
  }
  amqp_destroy_message(&msg);
  return 0;
}

static void emit(sluice_publisher *p, sluice_event_type type,
                 const char *text) {
  if (!p->o.on_event) return;
  sluice_event ev = {.type = type,
                     .err = type == SLUICE_EV_BLOCKED ? SLUICE_EBLOCKED : 0,
                     .text = text};
  sluice__cb_frame f;
  sluice__cb_enter(&f, p);
  p->o.on_event(p, &ev, p->o.event_user);
  sluice__cb_leave(&f);
}

/* Act on one frame. 0, or an error that ends the call. */
static int handle_frame(sluice_publisher *p, amqp_frame_t *f) {
  if (f->frame_type != AMQP_FRAME_METHOD) return 0;
  switch (f->payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
      amqp_basic_ack_t *m = f->payload.method.decoded;
      settle(p, m->delivery_tag, m->multiple, SEQ_ACKED);
      return 0;
    }
    case AMQP_BASIC_NACK_METHOD: {
      amqp_basic_nack_t *m = f->payload.method.decoded;
      settle(p, m->delivery_tag, m->multiple, SEQ_NACKED);
      return 0;
    }
    case AMQP_BASIC_RETURN_METHOD:
      return read_return(p, f->payload.method.decoded);
    case AMQP_CONNECTION_BLOCKED_METHOD: {
      amqp_connection_blocked_t *m = f->payload.method.decoded;
      sluice__bytes_str(p->blocked_reason, sizeof(p->blocked_reason),
                        m->reason);
      p->blocked = 1;
      sluice__logf(&p->log, SLUICE_LOG_WARN,
                   "publisher: blocked by the broker: %s", p->blocked_reason);
      emit(p, SLUICE_EV_BLOCKED, p->blocked_reason);
      return 0;
    }
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
      p->blocked = 0;
      p->blocked_reason[0] = '\0';
      sluice__logf(&p->log, SLUICE_LOG_INFO, "publisher: unblocked");
      emit(p, SLUICE_EV_UNBLOCKED, NULL);
      return 0;
    case AMQP_CHANNEL_CLOSE_METHOD: {
      amqp_channel_close_t *m = f->payload.method.decoded;
      char t[256];
      sluice__bytes_str(t, sizeof(t), m->reply_text);
      pub_note_close(p, m->reply_code, t);
      amqp_channel_close_ok_t ok;
      memset(&ok, 0, sizeof(ok));
      amqp_send_method(p->conn, f->channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
      p->broken = 1;
      sluice__logf(&p->log, SLUICE_LOG_ERROR,
                   "publisher: channel closed: %u %s", m->reply_code, t);
      return SLUICE_ECLOSED;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
      amqp_connection_close_t *m = f->payload.method.decoded;
      char t[256];
      sluice__bytes_str(t, sizeof(t), m->reply_text);
      pub_note_close(p, m->reply_code, t);
      p->broken = 1;
      return SLUICE_ECLOSED;
    }
    default: return 0;
  }
}

/* Read one frame, waiting until `deadline` at most. 0 with a frame handled,
 * SLUICE_ETIMEDOUT, or the error that broke the connection. */
static int pump_one(sluice_publisher *p, uint64_t deadline) {
  uint64_t now = sluice__now_ms();
  struct timeval tv = sluice__tv_ms(deadline > now ? deadline - now : 0);
  amqp_frame_t f;
  int st = amqp_simple_wait_frame_noblock(p->conn, &f, &tv);
  if (st == AMQP_STATUS_TIMEOUT) return SLUICE_ETIMEDOUT;
  if (st != AMQP_STATUS_OK) {
    p->broken = 1;
    return sluice__amqp_status_to_err(st);
  }
  int rc = handle_frame(p, &f);
  amqp_maybe_release_buffers(p->conn);
  return rc;
}

/* While blocked, a call waits at most blocked_timeout_ms from the moment it
 * finds the connection blocked (`*since`, 0 until then); then
 * SLUICE_EBLOCKED. Until then it may shorten `*deadline` to that moment. */
static int blocked_expired(const sluice_publisher *p, uint64_t now,
                           uint64_t *since, uint64_t *deadline) {
  if (!p->blocked) return 0;
  if (p->o.blocked_timeout_ms < 0) return 1;
  if (!*since) *since = now;
  uint64_t until = *since + (uint64_t)p->o.blocked_timeout_ms;
  if (now >= until) return 1;
  if (until < *deadline) *deadline = until;
  return 0;
}

/* Handle frames until `until_pending` or fewer are unconfirmed, or the
 * deadline passes (SLUICE_ETIMEDOUT), or the broker blocks the connection
 * for longer than blocked_timeout_ms (SLUICE_EBLOCKED). */
static int pump(sluice_publisher *p, uint64_t until_pending, int timeout_ms) {
  uint64_t deadline = sluice__now_ms() + (uint64_t)timeout_ms, since = 0;
  while (p->rep.pending > until_pending) {
    uint64_t now = sluice__now_ms(), dl = deadline;
    if (blocked_expired(p, now, &since, &dl)) return SLUICE_EBLOCKED;
    if (now >= deadline) return SLUICE_ETIMEDOUT;
    int rc = pump_one(p, dl);
    if (rc && rc != SLUICE_ETIMEDOUT) return rc;
  }
  return 0;
}

/* Handle whatever the broker has sent, without waiting: confirms, and above
 * all connection.blocked, so that nothing is written into a connection the
 * broker no longer reads (rabbitmq-c's send would wait without limit once
 * the socket buffers are full). One poll() when nothing is there. */
static int drain(sluice_publisher *p) {
  for (;;) {
    if (!amqp_data_in_buffer(p->conn) && !amqp_frames_enqueued(p->conn)) {
      struct pollfd pfd = {.fd = amqp_get_sockfd(p->conn), .events = POLLIN};
      if (poll(&pfd, 1, 0) <= 0) return 0;
    }
    int rc = pump_one(p, 0);
    if (rc == SLUICE_ETIMEDOUT) return 0; /* a partial frame: later */
    if (rc) return rc;
  }
}

/* While blocked, wait for connection.unblocked (bounded as above). */
static int wait_unblocked(sluice_publisher *p) {
  uint64_t since = 0;
  while (p->blocked) {
    uint64_t dl = UINT64_MAX;
    if (blocked_expired(p, sluice__now_ms(), &since, &dl))
      return SLUICE_EBLOCKED;
    int rc = pump_one(p, dl);
    if (rc && rc != SLUICE_ETIMEDOUT) return rc;
  }
  return 0;
}

static amqp_bytes_t cs(const char *s) {
  return s ? amqp_cstring_bytes(s) : amqp_empty_bytes;
}

int sluice_publisher_publish(sluice_publisher *p, const char *exchange,
                             const char *routing_key, const void *body,
                             size_t len, const sluice_publish_props *props) {
  if (!p || !routing_key || (!body && len)) return SLUICE_EINVAL;
  if (p->broken) return SLUICE_ECLOSED;
  int rc = drain(p);
  if (!rc) rc = wait_unblocked(p);
  if (!rc && !p->o.no_confirms && p->rep.pending >= p->cap)
    rc = pump(p, p->cap / 2, p->o.confirm_timeout_ms);
  if (rc) return rc;
  amqp_basic_properties_t bp;
  memset(&bp, 0, sizeof(bp));
  bp._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
  bp.delivery_mode = props && props->transient ? 1 : 2;
  amqp_pool_t pool;
  init_amqp_pool(&pool, 512);
  int mandatory = 0;
  if (props) {
    mandatory = props->mandatory;
#define SET(field, flag)                         \
  if (props->field) {                            \
    bp._flags |= (flag);                         \
    bp.field = amqp_cstring_bytes(props->field); \
  }
    SET(content_type, AMQP_BASIC_CONTENT_TYPE_FLAG);
    SET(message_id, AMQP_BASIC_MESSAGE_ID_FLAG);
    SET(correlation_id, AMQP_BASIC_CORRELATION_ID_FLAG);
    SET(reply_to, AMQP_BASIC_REPLY_TO_FLAG);
    SET(expiration, AMQP_BASIC_EXPIRATION_FLAG);
    SET(type, AMQP_BASIC_TYPE_FLAG);
    SET(app_id, AMQP_BASIC_APP_ID_FLAG);
#undef SET
    if (props->priority) {
      bp._flags |= AMQP_BASIC_PRIORITY_FLAG;
      bp.priority = props->priority;
    }
    if (props->n_headers) {
      rc = sluice__kv_to_table(&pool, props->headers, props->n_headers,
                               &bp.headers);
      if (rc) {
        empty_amqp_pool(&pool);
        return rc;
      }
      bp._flags |= AMQP_BASIC_HEADERS_FLAG;
    }
  }
  amqp_bytes_t b = {len, (void *)body};
  int st = amqp_basic_publish(p->conn, PUB_CH, cs(exchange),
                              amqp_cstring_bytes(routing_key), mandatory, 0,
                              &bp, b);
  empty_amqp_pool(&pool);
  if (st != AMQP_STATUS_OK) {
    p->broken = 1;
    return sluice__amqp_status_to_err(st);
  }
  p->rep.published++;
  if (!p->o.no_confirms) {
    p->ring[p->next_seq % p->cap] = SEQ_PENDING;
    p->next_seq++;
    p->rep.pending++;
  }
  return 0;
}

int sluice_publisher_wait(sluice_publisher *p, sluice_publish_report *report) {
  if (!p) return SLUICE_EINVAL;
  int rc = drain(p);
  if (!rc && !p->o.no_confirms) rc = pump(p, 0, p->o.confirm_timeout_ms);
  if (report) *report = p->rep;
  if (rc) return rc;
  if (p->rep.nacked) return SLUICE_ENACKED;
  if (p->rep.returned) return SLUICE_ERETURNED;
  return 0;
}

static int topo_result(sluice_publisher *p) {
  uint16_t code;
  char text[256];
  int rc = sluice__rpc_result(p->conn, PUB_TOPO_CH, &code, text, sizeof(text));
  pub_note_close(p, code, text);
  return rc;
}

int sluice_publisher_declare_queue(sluice_publisher *p,
                                   const sluice_queue_decl *d) {
  if (!p || !d || !d->name) return SLUICE_EINVAL;
  amqp_pool_t pool;
  init_amqp_pool(&pool, 512);
  amqp_table_t args;
  int rc = sluice__queue_args(&pool, d, &args);
  if (rc == 0) {
    amqp_queue_declare(p->conn, PUB_TOPO_CH, amqp_cstring_bytes(d->name),
                       d->passive, d->durable || d->quorum, d->exclusive,
                       d->auto_delete, args);
    rc = topo_result(p);
  }
  empty_amqp_pool(&pool);
  return rc;
}

int sluice_publisher_declare_exchange(sluice_publisher *p,
                                      const sluice_exchange_decl *d) {
  if (!p || !d || !d->name) return SLUICE_EINVAL;
  amqp_pool_t pool;
  init_amqp_pool(&pool, 512);
  amqp_table_t args;
  int rc = sluice__kv_to_table(&pool, d->args, d->n_args, &args);
  if (rc == 0) {
    amqp_exchange_declare(p->conn, PUB_TOPO_CH, amqp_cstring_bytes(d->name),
                          amqp_cstring_bytes(d->type ? d->type : "direct"),
                          d->passive, d->durable, d->auto_delete, d->internal,
                          args);
    rc = topo_result(p);
  }
  empty_amqp_pool(&pool);
  return rc;
}

int sluice_publisher_bind_queue(sluice_publisher *p, const char *queue,
                                const char *exchange, const char *routing_key) {
  if (!p || !queue || !exchange) return SLUICE_EINVAL;
  amqp_queue_bind(p->conn, PUB_TOPO_CH, amqp_cstring_bytes(queue),
                  amqp_cstring_bytes(exchange), cs(routing_key),
                  amqp_empty_table);
  return topo_result(p);
}

int sluice_publisher_delete_queue(sluice_publisher *p, const char *queue,
                                  uint32_t *messages) {
  if (!p || !queue) return SLUICE_EINVAL;
  amqp_queue_delete_ok_t *ok =
      amqp_queue_delete(p->conn, PUB_TOPO_CH, amqp_cstring_bytes(queue), 0, 0);
  int rc = topo_result(p);
  if (rc == 0 && messages) *messages = ok ? ok->message_count : 0;
  return rc;
}

int sluice_publisher_queue_depth(sluice_publisher *p, const char *queue,
                                 uint32_t *messages, uint32_t *consumers) {
  if (!p || !queue) return SLUICE_EINVAL;
  amqp_queue_declare_ok_t *ok = amqp_queue_declare(p->conn, PUB_TOPO_CH,
                                                   amqp_cstring_bytes(queue), 1,
                                                   0, 0, 0, amqp_empty_table);
  int rc = topo_result(p);
  if (rc == 0 && ok) {
    if (messages) *messages = ok->message_count;
    if (consumers) *consumers = ok->consumer_count;
  }
  return rc;
}

int sluice_publisher_blocked(const sluice_publisher *p, char *buf,
                             size_t buflen) {
  if (!p) return 0;
  if (buf && buflen) snprintf(buf, buflen, "%s", p->blocked_reason);
  return p->blocked;
}

int sluice_publisher_last_close(const sluice_publisher *p, char *buf,
                                size_t buflen) {
  if (!p) return 0;
  if (buf && buflen) snprintf(buf, buflen, "%s", p->close_text);
  return p->close_code;
}
