/* SPDX-License-Identifier: MIT */
/* What the application declared through the consumer (exchanges, queues,
 * bindings) and its subscriptions: sent at once when connected, remembered,
 * and declared again on every new connection (by the attempt that makes it,
 * attempt.c, through sluice__topo_send and sluice__consume_send). The calls
 * are synchronous on the topology channel, bounded by rpc_timeout_ms; a
 * failed declaration closes that channel only, never the consuming one. */
#include <stdio.h>
#include <unistd.h>

#include "internal.h"

/* ---- sending (any thread: an attempt recovers off the loop) -------------- */

static int topo_reply(sluice__link *k, const char *what, const char *name) {
  uint16_t code;
  char text[256];
  int rc = sluice__rpc_result(k->conn, SLUICE__CH_TOPOLOGY, &code, text,
                              sizeof(text));
  if (rc == 0) return 0;
  sluice__link_note(k, code, text);
  sluice__logf(k->log, SLUICE_LOG_ERROR, "%s '%s': %s%s%s", what, name,
               sluice_strerror(rc), text[0] ? ": " : "", text);
  return rc;
}

int sluice__topo_send(sluice__link *k, const struct sluice__topo *t) {
  amqp_channel_t ch = SLUICE__CH_TOPOLOGY;
  switch (t->kind) {
    case SLUICE__TOPO_EXCHANGE:
      amqp_exchange_declare(k->conn, ch, amqp_cstring_bytes(t->name),
                            amqp_cstring_bytes(t->type), t->passive, t->durable,
                            t->auto_delete, t->internal, t->args);
      return topo_reply(k, "declare exchange", t->name);
    case SLUICE__TOPO_QUEUE:
      amqp_queue_declare(k->conn, ch, amqp_cstring_bytes(t->name), t->passive,
                         t->durable, t->exclusive, t->auto_delete, t->args);
      return topo_reply(k, "declare queue", t->name);
    case SLUICE__TOPO_BIND:
      amqp_queue_bind(k->conn, ch, amqp_cstring_bytes(t->name),
                      amqp_cstring_bytes(t->exchange),
                      amqp_cstring_bytes(t->routing_key), t->args);
      return topo_reply(k, "bind queue", t->name);
  }
  return SLUICE_EINVAL;
}

int sluice__consume_send(sluice__link *k, const char *queue, const char *tag,
                         int no_ack, int exclusive, int priority) {
  /* A passive declare on the topology channel first: basic.consume on a
   * missing queue would close the consuming channel and every other
   * subscription on it. */
  amqp_queue_declare(k->conn, SLUICE__CH_TOPOLOGY, amqp_cstring_bytes(queue), 1,
                     0, 0, 0, amqp_empty_table);
  int rc = topo_reply(k, "subscribe to queue", queue);
  if (rc) return rc;

  amqp_table_entry_t prio;
  amqp_table_t args = amqp_empty_table;
  if (priority) {
    prio.key = amqp_cstring_bytes("x-priority");
    prio.value.kind = AMQP_FIELD_KIND_I32;
    prio.value.value.i32 = priority;
    args.num_entries = 1;
    args.entries = &prio;
  }
  amqp_basic_consume_ok_t *ok =
      amqp_basic_consume(k->conn, SLUICE__CH_MAIN, amqp_cstring_bytes(queue),
                         amqp_cstring_bytes(tag), 0, no_ack, exclusive, args);
  uint16_t code;
  char text[256];
  rc = sluice__reply_to_err(amqp_get_rpc_reply(k->conn), &code, text,
                            sizeof(text));
  if (rc || !ok) {
    sluice__link_note(k, code, text);
    sluice__logf(k->log, SLUICE_LOG_ERROR, "basic.consume '%s': %s%s%s", queue,
                 sluice_strerror(rc), text[0] ? ": " : "", text);
    return rc ? rc : SLUICE_EPROTO;
  }
  return 0;
}

/* ---- on the live connection (loop thread) --------------------------------- */

static sluice__link link_of(sluice_consumer *c) {
  sluice__link k;
  memset(&k, 0, sizeof(k));
  k.conn = c->conn;
  k.log = &c->log;
  return k;
}

int sluice__apply_topology(sluice_consumer *c, struct sluice__topo *t) {
  sluice__link k = link_of(c);
  int rc = sluice__topo_send(&k, t);
  sluice__note_close(c, k.close_code, k.close_text);
  return rc;
}

int sluice__consume(sluice_consumer *c, struct sluice__sub *s) {
  sluice__link k = link_of(c);
  int rc = sluice__consume_send(&k, s->queue, s->tag,
                                c->o.ack_mode == SLUICE_ACK_AUTO, s->exclusive,
                                s->priority);
  sluice__note_close(c, k.close_code, k.close_text);
  if (rc) return rc;
  s->active = 1;
  s->cancelled = 0;
  return 0;
}

static const struct sluice__sub *sub_by_name(const sluice_consumer *c,
                                             const char *tag) {
  for (int i = 0; i < SLUICE__MAX_SUBS; i++)
    if (c->subs[i].used && c->subs[i].tag && !strcmp(c->subs[i].tag, tag))
      return &c->subs[i];
  return NULL;
}

struct sluice__sub *sluice__sub_by_tag(sluice_consumer *c, amqp_bytes_t tag) {
  for (int i = 0; i < SLUICE__MAX_SUBS; i++) {
    struct sluice__sub *s = &c->subs[i];
    if (s->used && s->tag && s->tag_len == tag.len &&
        memcmp(s->tag, tag.bytes, tag.len) == 0)
      return s;
  }
  return NULL;
}

/* ---- declarations -------------------------------------------------------- */

static char *pool_str(amqp_pool_t *p, const char *s) {
  if (!s) s = "";
  size_t n = strlen(s) + 1;
  char *d = amqp_pool_alloc(p, n);
  if (d) memcpy(d, s, n);
  return d;
}

static struct sluice__topo *topo_new(enum sluice__topo_kind kind) {
  struct sluice__topo *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  t->kind = kind;
  init_amqp_pool(&t->pool, 1024);
  return t;
}

static void topo_free(struct sluice__topo *t) {
  empty_amqp_pool(&t->pool);
  free(t);
}

/* A synchronous call made for the application (a declaration, a
 * subscription, a purge) failed with `rc`. If it ended the connection (a
 * connection.close came instead of the reply: 503 for an unknown exchange
 * type, 530 for a reused consumer tag...) or the consuming channel (a
 * basic.consume refused with a channel.close: 405 on another connection's
 * exclusive queue, 403), the connection is lost now, as when the same
 * close arrives between deliveries: the event, the stats, the deliveries
 * of the dead connection stale (their acks would be dropped by the
 * broker), a reconnect if it is worth one. `consuming` says the call was
 * basic.consume: then a channel.close is the consuming channel's (the
 * topology channel's are answered and reopened by sluice__rpc_result).
 * Not when the call came during a connection attempt (attempt.c):
 * the attempt fails and says so itself. */
static int app_call_failed(sluice_consumer *c, int rc, int consuming) {
  if (!c->conn) return rc;
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c->conn);
  int channel_gone = consuming &&
                     r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
                     r.reply.id == AMQP_CHANNEL_CLOSE_METHOD;
  int broker = r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION;
  if (channel_gone || sluice__rpc_conn_gone(c->conn)) {
    if (broker) c->lost_code = c->last_close_code; /* noted by the call */
    sluice__conn_lost(c, rc);
  }
  return rc;
}

/* Send `t` now if connected, and remember it for the next connection. */
static int topo_add(sluice_consumer *c, struct sluice__topo *t) {
  if (c->connected) sluice__reads_settle(c); /* may lose the connection */
  if (c->connected) {
    int rc = sluice__apply_topology(c, t);
    if (rc) {
      topo_free(t);
      return app_call_failed(c, rc, 0);
    }
    sluice__kick_read(c);
  }
  *c->topo_tail = t;
  c->topo_tail = &t->next;
  return 0;
}

int sluice_consumer_declare_exchange(sluice_consumer *c,
                                     const sluice_exchange_decl *d) {
  if (!c || !d || !d->name || !d->name[0]) return SLUICE_EINVAL;
  struct sluice__topo *t = topo_new(SLUICE__TOPO_EXCHANGE);
  if (!t) return SLUICE_ENOMEM;
  t->name = pool_str(&t->pool, d->name);
  t->type = pool_str(&t->pool, d->type ? d->type : "direct");
  t->durable = d->durable;
  t->auto_delete = d->auto_delete;
  t->internal = d->internal;
  t->passive = d->passive;
  int rc = sluice__kv_to_table(&t->pool, d->args, d->n_args, &t->args);
  if (!rc && (!t->name || !t->type)) rc = SLUICE_ENOMEM;
  if (rc) {
    topo_free(t);
    return rc;
  }
  return topo_add(c, t);
}

int sluice_consumer_declare_queue(sluice_consumer *c,
                                  const sluice_queue_decl *d) {
  if (!c || !d || !d->name || !d->name[0]) return SLUICE_EINVAL;
  struct sluice__topo *t = topo_new(SLUICE__TOPO_QUEUE);
  if (!t) return SLUICE_ENOMEM;
  t->name = pool_str(&t->pool, d->name);
  t->durable = d->durable || d->quorum; /* quorum queues must be durable */
  t->exclusive = d->exclusive;
  t->auto_delete = d->auto_delete;
  t->passive = d->passive;
  int rc = sluice__queue_args(&t->pool, d, &t->args);
  if (!rc && !t->name) rc = SLUICE_ENOMEM;
  if (rc) {
    topo_free(t);
    return rc;
  }
  return topo_add(c, t);
}

int sluice_consumer_bind_queue(sluice_consumer *c, const char *queue,
                               const char *exchange, const char *routing_key,
                               const sluice_kv *args, size_t n_args) {
  if (!c || !queue || !queue[0] || !exchange) return SLUICE_EINVAL;
  struct sluice__topo *t = topo_new(SLUICE__TOPO_BIND);
  if (!t) return SLUICE_ENOMEM;
  t->name = pool_str(&t->pool, queue);
  t->exchange = pool_str(&t->pool, exchange);
  t->routing_key = pool_str(&t->pool, routing_key);
  int rc = sluice__kv_to_table(&t->pool, args, n_args, &t->args);
  if (!rc && (!t->name || !t->exchange || !t->routing_key)) rc = SLUICE_ENOMEM;
  if (rc) {
    topo_free(t);
    return rc;
  }
  return topo_add(c, t);
}

int sluice_consumer_purge_queue(sluice_consumer *c, const char *queue,
                                uint32_t *purged) {
  if (!c || !queue) return SLUICE_EINVAL;
  if (!c->connected) return SLUICE_ECLOSED;
  amqp_queue_purge_ok_t *ok =
      amqp_queue_purge(c->conn, SLUICE__CH_TOPOLOGY, amqp_cstring_bytes(queue));
  uint16_t code;
  char text[256];
  int rc = sluice__rpc_result(c->conn, SLUICE__CH_TOPOLOGY, &code, text,
                              sizeof(text));
  if (rc) {
    sluice__note_close(c, code, text);
    return app_call_failed(c, rc, 0);
  }
  if (purged && ok) *purged = ok->message_count;
  sluice__kick_read(c);
  return 0;
}

/* ---- subscriptions ------------------------------------------------------- */

static void sub_clear(struct sluice__sub *s) {
  free(s->queue);
  free(s->tag);
  free(s->key_spec);
  memset(s, 0, sizeof(*s));
}

/* Where a subscription's hook key comes from; -1 for a bad spelling. */
static int key_source(const char *spec) {
  static const struct {
    const char *name;
    int from;
  } names[] = {{"routing_key", SLUICE__KEY_ROUTING},
               {"exchange", SLUICE__KEY_EXCHANGE},
               {"type", SLUICE__KEY_TYPE},
               {"app_id", SLUICE__KEY_APP_ID},
               {"content_type", SLUICE__KEY_CONTENT_TYPE},
               {"user_id", SLUICE__KEY_USER_ID}};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (!strcmp(spec, names[i].name)) return names[i].from;
  if (!strncmp(spec, "header:", 7) && spec[7] && strlen(spec + 7) <= 255)
    return SLUICE__KEY_HEADER;
  return -1;
}

int sluice_consumer_subscribe(sluice_consumer *c,
                              const sluice_subscribe_opts *o) {
  if (!c || !o || !o->queue || !o->queue[0] || !o->handler)
    return SLUICE_EINVAL;
  if (c->stopping || c->stopped) return SLUICE_ESTATE;
  struct sluice__sub *s = NULL;
  for (int i = 0; i < SLUICE__MAX_SUBS; i++) {
    if (!c->subs[i].used) {
      s = &c->subs[i];
      break;
    }
  }
  if (!s) return SLUICE_ELIMIT;
  int key_from = o->key ? key_source(o->key) : SLUICE__KEY_NONE;
  if (key_from < 0) {
    sluice__log(c, SLUICE_LOG_ERROR,
                "subscribe: key \"%.64s\" is not one of routing_key, "
                "exchange, type, app_id, content_type, user_id, header:NAME",
                o->key);
    return SLUICE_EINVAL;
  }
  char tag[256];
  if (o->consumer_tag && o->consumer_tag[0]) {
    if (strlen(o->consumer_tag) > 255) return SLUICE_EINVAL;
    snprintf(tag, sizeof(tag), "%s", o->consumer_tag);
    /* Tags name subscriptions on the consuming channel: the broker closes
     * the whole connection (530) on a second basic.consume with one. */
    const struct sluice__sub *other = sub_by_name(c, tag);
    if (other) {
      sluice__log(c, SLUICE_LOG_ERROR,
                  "consumer tag '%s' is already used by the subscription to "
                  "'%s': refused",
                  tag, other->queue);
      return SLUICE_EINVAL;
    }
  } else {
    /* "" too: a tag the broker makes up would route no delivery here. */
    do {
      snprintf(tag, sizeof(tag), "sluice.%ld.%u", (long)getpid(),
               ++c->tag_counter);
    } while (sub_by_name(c, tag));
  }
  memset(s, 0, sizeof(*s));
  s->queue = sluice__strdup(o->queue);
  s->tag = sluice__strdup(tag);
  s->tag_len = strlen(tag);
  s->key_from = key_from;
  if (key_from) s->key_spec = sluice__strdup(o->key);
  if (!s->queue || !s->tag || (key_from && !s->key_spec)) {
    sub_clear(s);
    return SLUICE_ENOMEM;
  }
  s->handler = o->handler;
  s->user = o->user;
  s->exclusive = o->exclusive;
  s->priority = o->priority;
  s->used = 1;
  if (c->connected) sluice__reads_settle(c); /* may lose the connection */
  if (c->connected) {
    int rc = sluice__consume(c, s);
    if (rc) {
      sub_clear(s);
      return app_call_failed(c, rc, 1);
    }
    sluice__kick_read(c);
  }
  c->n_subs++;
  return 0;
}

void sluice__topology_free(sluice_consumer *c) {
  while (c->topo) {
    struct sluice__topo *t = c->topo;
    c->topo = t->next;
    topo_free(t);
  }
  for (int i = 0; i < SLUICE__MAX_SUBS; i++) sub_clear(&c->subs[i]);
}
