/* SPDX-License-Identifier: MIT */
/* Fuzz target: the properties and headers of a delivery, from the wire to
 * what a handler reads. The input is the property part of a content header
 * frame (flags, then each property present), decoded by rabbitmq-c as the
 * consumer's reader does, then sized (sluice__props_size) and copied into
 * a block of exactly that size (sluice__props_copy), as frames.c does for
 * each delivery. ASan catches a copy past the block; the walk below reads
 * every string and header a handler could read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <amqp.h>
#include <amqp_framing.h>

#include <sluice/consumer.h>

#include "consumer/amqp_util.h"
#include "fuzz.h"

static volatile size_t sink; /* keeps the reads below */

static void read_str(const char *s, const char *blk, size_t cap) {
  if (!s) return;
  if (s < blk || s >= blk + cap) abort(); /* points outside the block */
  sink += strlen(s);
}

/* The copy says what the wire said: every integer that fits int64 as
 * SLUICE_VAL_INT with its value, a larger unsigned one as SLUICE_VAL_UINT,
 * strings byte for byte (docs/consumer.md, "Header and argument values"). */
static void same_value(const amqp_table_entry_t *e, const sluice_kv *kv) {
  if (memcmp(kv->key, e->key.bytes, e->key.len) != 0 || kv->key[e->key.len])
    abort();
  const amqp_field_value_t *w = &e->value;
  const sluice_value *v = &kv->value;
  int64_t i;
  switch (w->kind) {
    case AMQP_FIELD_KIND_I8: i = w->value.i8; goto integer;
    case AMQP_FIELD_KIND_U8: i = w->value.u8; goto integer;
    case AMQP_FIELD_KIND_I16: i = w->value.i16; goto integer;
    case AMQP_FIELD_KIND_U16: i = w->value.u16; goto integer;
    case AMQP_FIELD_KIND_I32: i = w->value.i32; goto integer;
    case AMQP_FIELD_KIND_U32: i = w->value.u32; goto integer;
    case AMQP_FIELD_KIND_I64: i = w->value.i64; goto integer;
    case AMQP_FIELD_KIND_U64:
      if (w->value.u64 > (uint64_t)INT64_MAX) {
        if (v->kind != SLUICE_VAL_UINT || v->u.u != w->value.u64) abort();
        return;
      }
      i = (int64_t)w->value.u64;
    integer:
      if (v->kind != SLUICE_VAL_INT || v->u.i != i) abort();
      return;
    case AMQP_FIELD_KIND_BOOLEAN:
      if (v->kind != SLUICE_VAL_BOOL || v->u.b != (w->value.boolean != 0))
        abort();
      return;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
      if (v->kind != SLUICE_VAL_STRING || v->u.s.len != w->value.bytes.len ||
          memcmp(v->u.s.str, w->value.bytes.bytes, v->u.s.len) != 0)
        abort();
      return;
    case AMQP_FIELD_KIND_TIMESTAMP:
      if (v->kind != SLUICE_VAL_TIMESTAMP || v->u.ts != w->value.u64) abort();
      return;
    case AMQP_FIELD_KIND_F32:
    case AMQP_FIELD_KIND_F64:
      if (v->kind != SLUICE_VAL_DOUBLE) abort();
      return;
    default:
      if (v->kind != SLUICE_VAL_VOID) abort();
      return;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  amqp_bytes_t enc = {size, (void *)data};
  void *decoded = NULL;
  if (amqp_decode_properties(AMQP_BASIC_CLASS, &pool, enc, &decoded) != 0 ||
      !decoded) {
    empty_amqp_pool(&pool);
    return 0;
  }
  const amqp_basic_properties_t *p = decoded;
  size_t need = sluice__props_size(p);
  char *blk = malloc(need ? need : 1);
  if (!blk) {
    empty_amqp_pool(&pool);
    return 0;
  }
  sluice_properties out;
  sluice__props_copy(p, &out, blk);
  if ((p->_flags & AMQP_BASIC_HEADERS_FLAG) &&
      out.n_headers !=
          (size_t)(p->headers.num_entries > 0 ? p->headers.num_entries : 0))
    abort();
  for (size_t i = 0; i < out.n_headers; i++)
    same_value(&p->headers.entries[i], &out.headers[i]);
  /* Nothing of it may still point into rabbitmq-c's pool, which the
   * consumer recycles after each frame. */
  empty_amqp_pool(&pool);

  read_str(out.content_type, blk, need);
  read_str(out.content_encoding, blk, need);
  read_str(out.correlation_id, blk, need);
  read_str(out.reply_to, blk, need);
  read_str(out.expiration, blk, need);
  read_str(out.message_id, blk, need);
  read_str(out.type, blk, need);
  read_str(out.user_id, blk, need);
  read_str(out.app_id, blk, need);
  if (out.n_headers && !out.headers) abort();
  sluice_message m;
  memset(&m, 0, sizeof(m));
  m.props = out;
  for (size_t i = 0; i < out.n_headers; i++) {
    const sluice_kv *kv = &out.headers[i];
    read_str(kv->key, blk, need);
    const sluice_value *v = &kv->value;
    switch (v->kind) {
      case SLUICE_VAL_STRING:
        read_str(v->u.s.str, blk, need);
        /* the length is the wire's: embedded NULs are kept, and the copy
         * is NUL-terminated past it */
        if (v->u.s.str[v->u.s.len] != '\0') abort();
        break;
      case SLUICE_VAL_VOID:
      case SLUICE_VAL_BOOL:
      case SLUICE_VAL_INT:
      case SLUICE_VAL_UINT:
      case SLUICE_VAL_DOUBLE:
      case SLUICE_VAL_TIMESTAMP: break;
      default: abort(); /* a kind the header does not document */
    }
    /* the lookup a handler does finds a header of that name */
    const sluice_value *found = sluice_message_header(&m, kv->key);
    if (!found) abort();
  }
  free(blk);
  return 0;
}
