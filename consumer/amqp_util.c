/* SPDX-License-Identifier: MIT */
/* Conversions between rabbitmq-c's types and sluice's. */
#include <stdio.h>
#include <string.h>


#include "amqp_util.h"

char *sluice__bytes_str(char *dst, size_t dstlen, amqp_bytes_t b) {
  if (!dstlen) return dst;
  size_t n = b.len < dstlen - 1 ? b.len : dstlen - 1;
  if (n) memcpy(dst, b.bytes, n);
  dst[n] = '\0';
  return dst;
}

int sluice__kv_to_table(amqp_pool_t *pool, const sluice_kv *kv, size_t n,
                        amqp_table_t *out) {
  out->num_entries = 0;
  out->entries = NULL;
  if (n == 0) return 0;
  if (!kv) return SLUICE_EINVAL;
  amqp_table_entry_t *e = amqp_pool_alloc(pool, n * sizeof(*e));
  if (!e) return SLUICE_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    if (!kv[i].key) return SLUICE_EINVAL;
    size_t kl = strlen(kv[i].key);
    amqp_pool_alloc_bytes(pool, kl, &e[i].key);
    if (kl && !e[i].key.bytes) return SLUICE_ENOMEM;
    if (kl) memcpy(e[i].key.bytes, kv[i].key, kl);
    const sluice_value *v = &kv[i].value;
    switch (v->kind) {
      case SLUICE_VAL_BOOL:
        e[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        e[i].value.value.boolean = v->u.b != 0;
        break;
      case SLUICE_VAL_INT:
        e[i].value.kind = AMQP_FIELD_KIND_I64;
        e[i].value.value.i64 = v->u.i;
        break;
      case SLUICE_VAL_UINT:
        e[i].value.kind = AMQP_FIELD_KIND_U64;
        e[i].value.value.u64 = v->u.u;
        break;
      case SLUICE_VAL_DOUBLE:
        e[i].value.kind = AMQP_FIELD_KIND_F64;
        e[i].value.value.f64 = v->u.d;
        break;
      case SLUICE_VAL_TIMESTAMP:
        e[i].value.kind = AMQP_FIELD_KIND_TIMESTAMP;
        e[i].value.value.u64 = v->u.ts;
        break;
      case SLUICE_VAL_STRING: {
        if (!v->u.s.str) return SLUICE_EINVAL;
        size_t l = v->u.s.len ? v->u.s.len : strlen(v->u.s.str);
        e[i].value.kind = AMQP_FIELD_KIND_UTF8;
        amqp_pool_alloc_bytes(pool, l, &e[i].value.value.bytes);
        if (l && !e[i].value.value.bytes.bytes) return SLUICE_ENOMEM;
        if (l) memcpy(e[i].value.value.bytes.bytes, v->u.s.str, l);
        break;
      }
      default: return SLUICE_EINVAL;
    }
  }
  out->num_entries = (int)n;
  out->entries = e;
  return 0;
}

int sluice__queue_args(amqp_pool_t *pool, const sluice_queue_decl *d,
                       amqp_table_t *out) {
  if (d->n_args > 64) return SLUICE_EINVAL;
  sluice_kv kv[64 + 5];
  size_t n = 0;
  if (d->quorum) kv[n++] = (sluice_kv)SLUICE_KV_STR("x-queue-type", "quorum");
  if (d->dead_letter_exchange)
    kv[n++] = (sluice_kv)SLUICE_KV_STR("x-dead-letter-exchange",
                                       d->dead_letter_exchange);
  if (d->dead_letter_routing_key)
    kv[n++] = (sluice_kv)SLUICE_KV_STR("x-dead-letter-routing-key",
                                       d->dead_letter_routing_key);
  if (d->message_ttl_ms > 0)
    kv[n++] = (sluice_kv)SLUICE_KV_INT("x-message-ttl", d->message_ttl_ms);
  if (d->max_length > 0)
    kv[n++] = (sluice_kv)SLUICE_KV_INT("x-max-length", d->max_length);
  for (size_t i = 0; i < d->n_args; i++) kv[n++] = d->args[i];
  return sluice__kv_to_table(pool, kv, n, out);
}

/* A close about the vhost itself. RabbitMQ says "access to vhost 'v'
 * refused for user 'u'" (403) or "vhost v not found" (530); many other
 * closes name the vhost of a queue ("... queue 'q' in vhost '/' in
 * exclusive use"), which says nothing about the vhost. */
static int about_vhost(const char *text) {
  if (!text) return 0;
  if (strstr(text, "access to vhost")) return 1;
  return strstr(text, "vhost") && strstr(text, "not found") &&
         !strstr(text, " in vhost");
}

int sluice__close_code_to_err(uint16_t code, const char *text) {
  switch (code) {
    case 0: return SLUICE_ECLOSED;
    case AMQP_ACCESS_REFUSED: /* 403 */
      if (about_vhost(text)) return SLUICE_EVHOST;
      /* another consumer's exclusive use of the queue: it may end */
      if (text && strstr(text, "exclusive use")) return SLUICE_ECHANNEL;
      return SLUICE_EAUTH;
    case AMQP_NOT_ALLOWED: /* 530 */
      if (about_vhost(text)) return SLUICE_EVHOST;
      return SLUICE_ENOTALLOWED;
    case AMQP_NOT_FOUND: /* 404 */ return SLUICE_ENOTFOUND;
    case AMQP_PRECONDITION_FAILED: /* 406 */
      if (text && strstr(text, "inequivalent")) return SLUICE_ECONFLICT;
      return SLUICE_ECHANNEL;
    case AMQP_RESOURCE_LOCKED: /* 405 */ return SLUICE_ECHANNEL;
    case AMQP_CONNECTION_FORCED: /* 320 */ return SLUICE_ECLOSED;
    case AMQP_FRAME_ERROR:
    case AMQP_SYNTAX_ERROR:
    case AMQP_COMMAND_INVALID:
    case AMQP_CHANNEL_ERROR:
    case AMQP_UNEXPECTED_FRAME:
    case AMQP_NOT_IMPLEMENTED: return SLUICE_EPROTO;
    default: return SLUICE_EBROKER;
  }
}

int sluice__amqp_status_to_err(int status) {
  switch (status) {
    case AMQP_STATUS_OK: return 0;
    case AMQP_STATUS_NO_MEMORY: return SLUICE_ENOMEM;
    case AMQP_STATUS_TIMEOUT:
    case AMQP_STATUS_TIMER_FAILURE: return SLUICE_ETIMEDOUT;
    case AMQP_STATUS_HEARTBEAT_TIMEOUT: return SLUICE_EHEARTBEAT;
    case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED:
    case AMQP_STATUS_SOCKET_ERROR:
    case AMQP_STATUS_TCP_ERROR:
    case AMQP_STATUS_TCP_SOCKETLIB_INIT_ERROR: return SLUICE_ESOCKET;
    case AMQP_STATUS_CONNECTION_CLOSED:
    case AMQP_STATUS_SOCKET_CLOSED: return SLUICE_ECLOSED;
    case AMQP_STATUS_BAD_AMQP_DATA:
    case AMQP_STATUS_UNKNOWN_CLASS:
    case AMQP_STATUS_UNKNOWN_METHOD:
    case AMQP_STATUS_WRONG_METHOD:
    case AMQP_STATUS_UNEXPECTED_STATE:
    case AMQP_STATUS_INCOMPATIBLE_AMQP_VERSION:
    case AMQP_STATUS_TABLE_TOO_BIG: return SLUICE_EPROTO;
    default: return SLUICE_ESOCKET;
  }
}

int sluice__reply_to_err(amqp_rpc_reply_t r, uint16_t *code, char *text,
                         size_t textlen) {
  if (code) *code = 0;
  if (text && textlen) text[0] = '\0';
  switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: return 0;
    case AMQP_RESPONSE_NONE: return SLUICE_EPROTO;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      if (text && textlen)
        snprintf(text, textlen, "%s", amqp_error_string2(r.library_error));
      return sluice__amqp_status_to_err(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION: {
      uint16_t c = 0;
      amqp_bytes_t t = {0, NULL};
      if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *m = r.reply.decoded;
        c = m->reply_code;
        t = m->reply_text;
      } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *m = r.reply.decoded;
        c = m->reply_code;
        t = m->reply_text;
      }
      char tmp[256];
      sluice__bytes_str(tmp, sizeof(tmp), t);
      if (code) *code = c;
      if (text && textlen) snprintf(text, textlen, "%s", tmp);
      int err = sluice__close_code_to_err(c, tmp);
      if (err == SLUICE_ECLOSED && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
        err = SLUICE_ECHANNEL;
      return err;
    }
  }
  return SLUICE_EPROTO;
}

/* ---- properties ---------------------------------------------------------- */

static size_t str_need(const amqp_basic_properties_t *p, amqp_flags_t f,
                       amqp_bytes_t b) {
  return (p->_flags & f) ? b.len + 1 : 0;
}

static size_t align8(size_t n) {
  return (n + 7) & ~(size_t)7;
}

size_t sluice__props_size(const amqp_basic_properties_t *p) {
  size_t n = 0;
  n += str_need(p, AMQP_BASIC_CONTENT_TYPE_FLAG, p->content_type);
  n += str_need(p, AMQP_BASIC_CONTENT_ENCODING_FLAG, p->content_encoding);
  n += str_need(p, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id);
  n += str_need(p, AMQP_BASIC_REPLY_TO_FLAG, p->reply_to);
  n += str_need(p, AMQP_BASIC_EXPIRATION_FLAG, p->expiration);
  n += str_need(p, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id);
  n += str_need(p, AMQP_BASIC_TYPE_FLAG, p->type);
  n += str_need(p, AMQP_BASIC_USER_ID_FLAG, p->user_id);
  n += str_need(p, AMQP_BASIC_APP_ID_FLAG, p->app_id);
  n = align8(n);
  if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
    n += align8((size_t)p->headers.num_entries * sizeof(sluice_kv));
    for (int i = 0; i < p->headers.num_entries; i++) {
      const amqp_table_entry_t *e = &p->headers.entries[i];
      n += e->key.len + 1;
      if (e->value.kind == AMQP_FIELD_KIND_UTF8 ||
          e->value.kind == AMQP_FIELD_KIND_BYTES)
        n += e->value.value.bytes.len + 1;
    }
  }
  return align8(n);
}

static const char *put_str(char **blk, amqp_bytes_t b) {
  char *s = *blk;
  if (b.len) memcpy(s, b.bytes, b.len);
  s[b.len] = '\0';
  *blk += b.len + 1;
  return s;
}

#define COPY_STR(flag, field) \
  out->field = (p->_flags & (flag)) ? put_str(&w, p->field) : NULL

static void value_copy(const amqp_field_value_t *v, sluice_value *o, char **w) {
  memset(o, 0, sizeof(*o));
  switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
      o->kind = SLUICE_VAL_BOOL;
      o->u.b = v->value.boolean != 0;
      break;
    case AMQP_FIELD_KIND_I8:
      o->kind = SLUICE_VAL_INT;
      o->u.i = v->value.i8;
      break;
    case AMQP_FIELD_KIND_U8:
      o->kind = SLUICE_VAL_INT;
      o->u.i = v->value.u8;
      break;
    case AMQP_FIELD_KIND_I16:
      o->kind = SLUICE_VAL_INT;
      o->u.i = v->value.i16;
      break;
    case AMQP_FIELD_KIND_U16:
      o->kind = SLUICE_VAL_INT;
      o->u.i = v->value.u16;
      break;
    case AMQP_FIELD_KIND_I32:
      o->kind = SLUICE_VAL_INT;
      o->u.i = v->value.i32;
      break;
    case AMQP_FIELD_KIND_U32:
      o->kind = SLUICE_VAL_INT;
      o->u.i = v->value.u32;
      break;
    case AMQP_FIELD_KIND_I64:
      o->kind = SLUICE_VAL_INT;
      o->u.i = v->value.i64;
      break;
    case AMQP_FIELD_KIND_U64:
      /* Wrapped into int64 it would read as a negative number. */
      if (v->value.u64 <= (uint64_t)INT64_MAX) {
        o->kind = SLUICE_VAL_INT;
        o->u.i = (int64_t)v->value.u64;
      } else {
        o->kind = SLUICE_VAL_UINT;
        o->u.u = v->value.u64;
      }
      break;
    case AMQP_FIELD_KIND_F32:
      o->kind = SLUICE_VAL_DOUBLE;
      o->u.d = v->value.f32;
      break;
    case AMQP_FIELD_KIND_F64:
      o->kind = SLUICE_VAL_DOUBLE;
      o->u.d = v->value.f64;
      break;
    case AMQP_FIELD_KIND_TIMESTAMP:
      o->kind = SLUICE_VAL_TIMESTAMP;
      o->u.ts = v->value.u64;
      break;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
      o->kind = SLUICE_VAL_STRING;
      o->u.s.len = v->value.bytes.len;
      o->u.s.str = put_str(w, v->value.bytes);
      break;
    default:
      o->kind = SLUICE_VAL_VOID; /* nested tables, arrays, decimals */
      break;
  }
}

void sluice__props_copy(const amqp_basic_properties_t *p,
                        sluice_properties *out, char *blk) {
  char *w = blk;
  memset(out, 0, sizeof(*out));
  COPY_STR(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type);
  COPY_STR(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding);
  COPY_STR(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id);
  COPY_STR(AMQP_BASIC_REPLY_TO_FLAG, reply_to);
  COPY_STR(AMQP_BASIC_EXPIRATION_FLAG, expiration);
  COPY_STR(AMQP_BASIC_MESSAGE_ID_FLAG, message_id);
  COPY_STR(AMQP_BASIC_TYPE_FLAG, type);
  COPY_STR(AMQP_BASIC_USER_ID_FLAG, user_id);
  COPY_STR(AMQP_BASIC_APP_ID_FLAG, app_id);
  if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) {
    out->timestamp = p->timestamp;
    out->has_timestamp = 1;
  }
  if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
    out->delivery_mode = p->delivery_mode;
  if (p->_flags & AMQP_BASIC_PRIORITY_FLAG) {
    out->priority = p->priority;
    out->has_priority = 1;
  }
  w = blk + align8((size_t)(w - blk));
  if ((p->_flags & AMQP_BASIC_HEADERS_FLAG) && p->headers.num_entries > 0) {
    sluice_kv *kv = (sluice_kv *)(void *)w;
    size_t n = (size_t)p->headers.num_entries;
    w += align8(n * sizeof(sluice_kv));
    for (size_t i = 0; i < n; i++) {
      const amqp_table_entry_t *e = &p->headers.entries[i];
      kv[i].key = put_str(&w, e->key);
      value_copy(&e->value, &kv[i].value, &w);
    }
    out->headers = kv;
    out->n_headers = n;
  }
}
