/* SPDX-License-Identifier: MIT */
/* Header values from the wire to sluice_value and back, without a broker:
 * every AMQP integer type at its limits keeps its value, and an unsigned
 * 64-bit one above INT64_MAX is SLUICE_VAL_UINT, never a wrapped negative
 * number. (test_consumer_broker does the same through RabbitMQ.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <amqp.h>
#include <amqp_framing.h>

#include "consumer/amqp_util.h"
#include "reconnect/policy.h"

typedef struct wire {
  const char *key;
  amqp_field_value_t v;
} wire;

/* Encode `n` header fields as a broker would send them, decode and copy
 * them as the consumer does; the block is returned for free(). */
static char *deliver(const wire *w, size_t n, sluice_properties *out) {
  amqp_table_entry_t e[32];
  for (size_t i = 0; i < n; i++) {
    e[i].key = amqp_cstring_bytes(w[i].key);
    e[i].value = w[i].v;
  }
  amqp_basic_properties_t p;
  memset(&p, 0, sizeof(p));
  p._flags = AMQP_BASIC_HEADERS_FLAG;
  p.headers.num_entries = (int)n;
  p.headers.entries = e;
  uint8_t buf[4096];
  int len = amqp_encode_properties(AMQP_BASIC_CLASS, &p,
                                   (amqp_bytes_t){sizeof(buf), buf});
  assert_true(len > 0);
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  void *dec = NULL;
  assert_int_equal(amqp_decode_properties(AMQP_BASIC_CLASS, &pool,
                                          (amqp_bytes_t){(size_t)len, buf},
                                          &dec),
                   0);
  size_t need = sluice__props_size(dec);
  char *blk = malloc(need);
  assert_non_null(blk);
  sluice__props_copy(dec, out, blk);
  empty_amqp_pool(&pool);
  return blk;
}

#define INT_FIELD(kind_, member, val) \
  { .kind = (kind_), .value.member = (val) }

static void integers_keep_their_value(void **state) {
  (void)state;
  const wire w[] = {
      {"i8", INT_FIELD(AMQP_FIELD_KIND_I8, i8, INT8_MIN)},
      {"u8", INT_FIELD(AMQP_FIELD_KIND_U8, u8, UINT8_MAX)},
      {"i16", INT_FIELD(AMQP_FIELD_KIND_I16, i16, INT16_MIN)},
      {"u16", INT_FIELD(AMQP_FIELD_KIND_U16, u16, UINT16_MAX)},
      {"i32", INT_FIELD(AMQP_FIELD_KIND_I32, i32, INT32_MIN)},
      {"u32", INT_FIELD(AMQP_FIELD_KIND_U32, u32, UINT32_MAX)},
      {"i64min", INT_FIELD(AMQP_FIELD_KIND_I64, i64, INT64_MIN)},
      {"i64max", INT_FIELD(AMQP_FIELD_KIND_I64, i64, INT64_MAX)},
      {"u64zero", INT_FIELD(AMQP_FIELD_KIND_U64, u64, 0)},
      {"u64fits", INT_FIELD(AMQP_FIELD_KIND_U64, u64, (uint64_t)INT64_MAX)},
      {"u64over", INT_FIELD(AMQP_FIELD_KIND_U64, u64, (uint64_t)INT64_MAX + 1)},
      {"u64max", INT_FIELD(AMQP_FIELD_KIND_U64, u64, UINT64_MAX)},
  };
  const int64_t want_int[] = {INT8_MIN,  UINT8_MAX,  INT16_MIN, UINT16_MAX,
                              INT32_MIN, UINT32_MAX, INT64_MIN, INT64_MAX,
                              0,         INT64_MAX};
  size_t n = sizeof(w) / sizeof(*w);
  sluice_properties p;
  char *blk = deliver(w, n, &p);
  assert_int_equal(p.n_headers, n);
  sluice_message m;
  memset(&m, 0, sizeof(m));
  m.props = p;
  for (size_t i = 0; i < 10; i++) {
    const sluice_value *v = sluice_message_header(&m, w[i].key);
    assert_non_null(v);
    if (v->kind != SLUICE_VAL_INT || v->u.i != want_int[i])
      fail_msg("%s: kind %d value %lld", w[i].key, v->kind, (long long)v->u.i);
  }
  const sluice_value *v = sluice_message_header(&m, "u64over");
  assert_int_equal(v->kind, SLUICE_VAL_UINT);
  assert_true(v->u.u == (uint64_t)INT64_MAX + 1);
  v = sluice_message_header(&m, "u64max");
  assert_int_equal(v->kind, SLUICE_VAL_UINT);
  assert_true(v->u.u == UINT64_MAX); /* 0.1: SLUICE_VAL_INT, -1 */
  free(blk);
}

/* What sluice sends: SLUICE_VAL_UINT as an unsigned 64-bit field, read back
 * as sent. */
static void uint_round_trip(void **state) {
  (void)state;
  sluice_kv kv[] = {SLUICE_KV_UINT("big", UINT64_MAX),
                    SLUICE_KV_UINT("small", 7), SLUICE_KV_INT("neg", -7)};
  amqp_pool_t pool;
  init_amqp_pool(&pool, 1024);
  amqp_table_t t;
  assert_int_equal(sluice__kv_to_table(&pool, kv, 3, &t), 0);
  assert_int_equal(t.entries[0].value.kind, AMQP_FIELD_KIND_U64);
  assert_true(t.entries[0].value.value.u64 == UINT64_MAX);
  wire w[3];
  for (int i = 0; i < 3; i++) {
    w[i].key = kv[i].key;
    w[i].v = t.entries[i].value;
  }
  sluice_properties p;
  char *blk = deliver(w, 3, &p);
  assert_int_equal(p.headers[0].value.kind, SLUICE_VAL_UINT);
  assert_true(p.headers[0].value.u.u == UINT64_MAX);
  assert_int_equal(p.headers[1].value.kind, SLUICE_VAL_INT);
  assert_int_equal(p.headers[1].value.u.i, 7);
  assert_int_equal(p.headers[2].value.kind, SLUICE_VAL_INT);
  assert_int_equal(p.headers[2].value.u.i, -7);
  free(blk);
  empty_amqp_pool(&pool);
}

/* The broker's close codes as sluice errors, and which stop a reconnect:
 * 530 NOT_ALLOWED (a reused consumer tag) is its own, fatal, error. */
static void broker_close_codes(void **state) {
  (void)state;
  assert_int_equal(sluice__close_code_to_err(530,
                                             "NOT_ALLOWED - attempt to reuse "
                                             "consumer tag 'T'"),
                   SLUICE_ENOTALLOWED);
  assert_false(sluice__retryable(SLUICE_ENOTALLOWED));
  assert_int_equal(sluice__close_code_to_err(530, "NOT_ALLOWED - access to "
                                                  "vhost 'x' refused"),
                   SLUICE_EVHOST);
  assert_int_equal(sluice__close_code_to_err(503, "COMMAND_INVALID"),
                   SLUICE_EPROTO);
  assert_true(sluice__retryable(SLUICE_EPROTO));
  assert_int_equal(sluice__close_code_to_err(405, "RESOURCE_LOCKED"),
                   SLUICE_ECHANNEL);
  assert_int_equal(
      sluice__close_code_to_err(530, "NOT_ALLOWED - vhost nope not found"),
      SLUICE_EVHOST);
  assert_int_equal(sluice__close_code_to_err(
                       403, "ACCESS_REFUSED - access to vhost 'v' refused for "
                            "user 'u'"),
                   SLUICE_EVHOST);
  assert_int_equal(sluice__close_code_to_err(
                       403, "ACCESS_REFUSED - queue 'q' in vhost '/' in "
                            "exclusive use"),
                   SLUICE_ECHANNEL);
  assert_int_equal(sluice__close_code_to_err(
                       403, "ACCESS_REFUSED - access to queue 'q' in vhost "
                            "'/' refused for user 'u'"),
                   SLUICE_EAUTH);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(broker_close_codes),
      cmocka_unit_test(integers_keep_their_value),
      cmocka_unit_test(uint_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
