/* SPDX-License-Identifier: MIT */
/* Writes the binary seeds of the fuzz corpus (docs/fuzzing.md): valid
 * inputs that a fuzzer mutates from, encoded with rabbitmq-c's own
 * encoders so that they are what a broker sends.
 *   fuzz_gen_corpus DIR     writes DIR/props/... and DIR/frames/...
 * The text seeds (uri, jobs) are written by hand. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <amqp.h>
#include <amqp_framing.h>

#include "gen_corpus.h"

static const char *root;

void gen_write(const char *target, const char *name, const void *data,
               size_t len) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", root, target);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) {
    perror(path);
    exit(1);
  }
  snprintf(path, sizeof(path), "%s/%s/%s", root, target, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
}

size_t gen_props(amqp_basic_properties_t *p, uint8_t *buf, size_t cap) {
  amqp_bytes_t out = {cap, buf};
  int n = amqp_encode_properties(AMQP_BASIC_CLASS, p, out);
  if (n < 0) {
    fprintf(stderr, "encode: %s\n", amqp_error_string2(n));
    exit(1);
  }
  return (size_t)n;
}

static amqp_table_entry_t entry(const char *key, amqp_field_value_t v) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value = v;
  return e;
}

static void props_seeds(void) {
  uint8_t buf[4096];
  amqp_basic_properties_t p;

  memset(&p, 0, sizeof(p));
  gen_write("props", "none", buf, gen_props(&p, buf, sizeof(buf)));

  p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
             AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
             AMQP_BASIC_PRIORITY_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
             AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_EXPIRATION_FLAG |
             AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_USER_ID_FLAG |
             AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG;
  p.content_type = amqp_cstring_bytes("application/json");
  p.content_encoding = amqp_cstring_bytes("gzip");
  p.message_id = amqp_cstring_bytes("job-42");
  p.correlation_id = amqp_cstring_bytes("corr");
  p.reply_to = amqp_cstring_bytes("amq.rabbitmq.reply-to");
  p.expiration = amqp_cstring_bytes("60000");
  p.type = amqp_cstring_bytes("ok");
  p.user_id = amqp_cstring_bytes("guest");
  p.app_id = amqp_cstring_bytes("sluice");
  p.delivery_mode = 2;
  p.priority = 3;
  p.timestamp = 1764547200;
  gen_write("props", "all_fields", buf, gen_props(&p, buf, sizeof(buf)));

  /* every field kind a header can have, nested tables and arrays too */
  amqp_field_value_t inner_v[2];
  inner_v[0].kind = AMQP_FIELD_KIND_UTF8;
  inner_v[0].value.bytes = amqp_cstring_bytes("q");
  inner_v[1].kind = AMQP_FIELD_KIND_I64;
  inner_v[1].value.i64 = 3;
  amqp_table_entry_t inner[] = {entry("queue", inner_v[0]),
                                entry("count", inner_v[1])};
  amqp_field_value_t arr_v[1];
  arr_v[0].kind = AMQP_FIELD_KIND_TABLE;
  arr_v[0].value.table.num_entries = 2;
  arr_v[0].value.table.entries = inner;
  amqp_field_value_t v[16];
  int n = 0;
  amqp_table_entry_t h[16];
#define ADD(k, kind_, field, val) \
  v[n].kind = (kind_);            \
  v[n].value.field = (val);       \
  h[n] = entry((k), v[n]);        \
  n++
  ADD("s", AMQP_FIELD_KIND_UTF8, bytes, amqp_cstring_bytes("text"));
  ADD("bin", AMQP_FIELD_KIND_BYTES, bytes, amqp_cstring_bytes("b\x01y"));
  ADD("t", AMQP_FIELD_KIND_BOOLEAN, boolean, 1);
  ADD("i8", AMQP_FIELD_KIND_I8, i8, -8);
  ADD("u8", AMQP_FIELD_KIND_U8, u8, 200);
  ADD("i16", AMQP_FIELD_KIND_I16, i16, -16000);
  ADD("u16", AMQP_FIELD_KIND_U16, u16, 60000);
  ADD("i32", AMQP_FIELD_KIND_I32, i32, -7);
  ADD("u32", AMQP_FIELD_KIND_U32, u32, 4000000000u);
  ADD("i64", AMQP_FIELD_KIND_I64, i64, INT64_MIN);
  ADD("u64", AMQP_FIELD_KIND_U64, u64, UINT64_MAX);
  ADD("f32", AMQP_FIELD_KIND_F32, f32, 1.5f);
  ADD("f64", AMQP_FIELD_KIND_F64, f64, -2.25);
  ADD("ts", AMQP_FIELD_KIND_TIMESTAMP, u64, 1764547200);
  ADD("x-death", AMQP_FIELD_KIND_ARRAY, array, ((amqp_array_t){1, arr_v}));
  ADD("nested", AMQP_FIELD_KIND_TABLE, table, ((amqp_table_t){2, inner}));
#undef ADD
  memset(&p, 0, sizeof(p));
  p._flags = AMQP_BASIC_HEADERS_FLAG;
  p.headers.num_entries = n;
  p.headers.entries = h;
  gen_write("props", "headers_every_kind", buf,
            gen_props(&p, buf, sizeof(buf)));

  /* the same key twice, an empty key and an empty value */
  amqp_field_value_t e;
  e.kind = AMQP_FIELD_KIND_UTF8;
  e.value.bytes = amqp_cstring_bytes("");
  amqp_table_entry_t dup[] = {entry("k", v[0]), entry("k", v[2]), entry("", e)};
  p.headers.num_entries = 3;
  p.headers.entries = dup;
  gen_write("props", "headers_dup_empty", buf, gen_props(&p, buf, sizeof(buf)));
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  root = argv[1];
  if (mkdir(root, 0755) != 0 && errno != EEXIST) {
    perror(root);
    return 1;
  }
  props_seeds();
  gen_frames_seeds();
  return 0;
}
