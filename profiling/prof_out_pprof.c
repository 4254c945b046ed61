/* SPDX-License-Identifier: MIT */
/* pprof's profile.proto, gzipped, encoded by hand (the schema is small and
 * stable: github.com/google/pprof/proto/profile.proto).
 *
 * Heap profiles carry Go's four sample types (alloc_objects/count,
 * alloc_space/bytes, inuse_objects/count, inuse_space/bytes; pprof shows
 * the last one by default), already unbiased, with a "bytes" label (mean
 * block size) like Go's. Residual profiles carry residual_objects/count and
 * residual_space/bytes with "queue", "outcome", "key" and "message"
 * labels, so `-tagfocus outcome=nack` works. Functions, source lines (several Line
 * entries per Location for inlined calls, innermost first) and mappings
 * are filled in (has_functions; has_filenames, has_line_numbers and
 * has_inline_frames where the module has DWARF), so `go tool pprof` needs
 * no binary. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <string.h>
#include <zlib.h>

#include "prof_internal.h"

/* ------------------------------------------------------------------------ */
/* Wire encoding. */

static void pb_varint(sluice__buf *b, uint64_t v) {
  unsigned char tmp[10];
  int n = 0;
  do {
    tmp[n] = (unsigned char)(v & 0x7f);
    v >>= 7;
    if (v) tmp[n] |= 0x80;
    n++;
  } while (v);
  sluice__buf_put(b, tmp, (size_t)n);
}

static void pb_key(sluice__buf *b, unsigned field, unsigned wire) {
  pb_varint(b, (uint64_t)field << 3 | wire);
}

static void pb_int(sluice__buf *b, unsigned field, int64_t v) {
  if (!v) return;
  pb_key(b, field, 0);
  pb_varint(b, (uint64_t)v);
}

static void pb_bytes(sluice__buf *b, unsigned field, const void *d, size_t n) {
  pb_key(b, field, 2);
  pb_varint(b, n);
  sluice__buf_put(b, d, n);
}

static void pb_msg(sluice__buf *b, unsigned field, sluice__buf *m) {
  pb_bytes(b, field, m->data ? m->data : "", m->len);
  if (m->oom) b->oom = 1;
  m->len = 0;
}

/* ------------------------------------------------------------------------ */
/* Tables: strings, functions, locations. */

typedef struct tables {
  const char **strs;
  size_t n_strs, cap_strs;
  uint32_t *str_idx; /* hash index, string index + 1 */
  size_t str_icap;
  sluice__symtab *st;
  /* locations: pc -> id, with their lines */
  uintptr_t *loc_pc;
  int *loc_map;
  uint32_t *loc_line0; /* first entry in lines */
  uint16_t *loc_nlines;
  size_t n_locs, cap_locs;
  uint32_t *loc_idx;
  size_t loc_icap;
  /* lines of all locations: function id, line */
  uint32_t (*lines)[2];
  size_t n_lines, cap_lines;
  /* functions: name, file (string indexes), start line */
  uint32_t (*funcs)[3];
  size_t n_funcs, cap_funcs;
  uint32_t *func_idx; /* hash index, function id */
  size_t func_icap;
  int oom;
} tables;

static uint64_t str_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static int grow_arr(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap * 2 : 64;
  while (c < need) c *= 2;
  void *n = sluice__realloc(*p, c * elem);
  if (!n) return -1;
  *p = n;
  *cap = c;
  return 0;
}

static int rehash_strs(tables *t) {
  size_t cap = t->str_icap ? t->str_icap * 2 : 256;
  uint32_t *idx = sluice__calloc(cap, sizeof(uint32_t));
  if (!idx) return -1;
  for (size_t i = 0; i < t->n_strs; i++) {
    size_t j = str_hash(t->strs[i]) & (cap - 1);
    while (idx[j]) j = (j + 1) & (cap - 1);
    idx[j] = (uint32_t)i + 1;
  }
  sluice__free(t->str_idx);
  t->str_idx = idx;
  t->str_icap = cap;
  return 0;
}

/* Index of string s (borrowed: must outlive the tables). */
static int64_t str_id(tables *t, const char *s) {
  if (t->oom) return 0;
  if ((t->n_strs + 1) * 2 > t->str_icap && rehash_strs(t)) goto oom;
  size_t j = str_hash(s) & (t->str_icap - 1);
  while (t->str_idx[j]) {
    uint32_t i = t->str_idx[j] - 1;
    if (!strcmp(t->strs[i], s)) return i;
    j = (j + 1) & (t->str_icap - 1);
  }
  if (grow_arr((void **)&t->strs, &t->cap_strs, t->n_strs + 1, sizeof(char *)))
    goto oom;
  t->strs[t->n_strs] = s;
  t->str_idx[j] = (uint32_t)++t->n_strs;
  return (int64_t)t->n_strs - 1;
oom:
  t->oom = 1;
  return 0;
}

static uint64_t pair_hash(uint32_t a, uint32_t b) {
  uint64_t h = ((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull;
  return h ^ (h >> 29);
}

static int rehash_funcs(tables *t) {
  size_t cap = t->func_icap ? t->func_icap * 2 : 256;
  uint32_t *idx = sluice__calloc(cap, sizeof(uint32_t));
  if (!idx) return -1;
  for (size_t i = 0; i < t->n_funcs; i++) {
    size_t j = pair_hash(t->funcs[i][0], t->funcs[i][1]) & (cap - 1);
    while (idx[j]) j = (j + 1) & (cap - 1);
    idx[j] = (uint32_t)i + 1;
  }
  sluice__free(t->func_idx);
  t->func_idx = idx;
  t->func_icap = cap;
  return 0;
}

/* A function is its name and its file (pprof's identity, less the start
 * line, which the same function always has). */
static uint32_t func_id(tables *t, const sluice__frame *f) {
  uint32_t name = (uint32_t)str_id(t, f->func);
  uint32_t file = f->file ? (uint32_t)str_id(t, f->file) : 0;
  if (t->oom) return 0;
  if ((t->n_funcs + 1) * 2 > t->func_icap && rehash_funcs(t)) goto oom;
  size_t j = pair_hash(name, file) & (t->func_icap - 1);
  while (t->func_idx[j]) {
    uint32_t *e = t->funcs[t->func_idx[j] - 1];
    if (e[0] == name && e[1] == file) return t->func_idx[j];
    j = (j + 1) & (t->func_icap - 1);
  }
  if (grow_arr((void **)&t->funcs, &t->cap_funcs, t->n_funcs + 1,
               sizeof(*t->funcs)))
    goto oom;
  t->funcs[t->n_funcs][0] = name;
  t->funcs[t->n_funcs][1] = file;
  t->funcs[t->n_funcs][2] = f->start_line;
  t->func_idx[j] = (uint32_t)++t->n_funcs;
  return (uint32_t)t->n_funcs;
oom:
  t->oom = 1;
  return 0;
}

static uint64_t pc_hash(uintptr_t pc) {
  uint64_t h = (uint64_t)pc * 0x9E3779B97F4A7C15ull;
  return h ^ (h >> 29);
}

static int rehash_locs(tables *t) {
  size_t cap = t->loc_icap ? t->loc_icap * 2 : 256;
  uint32_t *idx = sluice__calloc(cap, sizeof(uint32_t));
  if (!idx) return -1;
  for (size_t i = 0; i < t->n_locs; i++) {
    size_t j = pc_hash(t->loc_pc[i]) & (cap - 1);
    while (idx[j]) j = (j + 1) & (cap - 1);
    idx[j] = (uint32_t)i + 1;
  }
  sluice__free(t->loc_idx);
  t->loc_idx = idx;
  t->loc_icap = cap;
  return 0;
}

/* The location of return address pc (0: the "[stack table full]" frame),
 * resolved to its lines (inlined calls first) when first seen. */
static uint32_t loc_id(tables *t, uintptr_t pc) {
  if (t->oom) return 0;
  if ((t->n_locs + 1) * 2 > t->loc_icap && rehash_locs(t)) goto oom;
  size_t j = pc_hash(pc) & (t->loc_icap - 1);
  while (t->loc_idx[j]) {
    uint32_t i = t->loc_idx[j] - 1;
    if (t->loc_pc[i] == pc) return i + 1;
    j = (j + 1) & (t->loc_icap - 1);
  }
  sluice__frame f[SLUICE__MAX_INLINE];
  int map = -1, nf = 1;
  if (pc) nf = sluice__sym_frames(t->st, pc - 1, f, SLUICE__MAX_INLINE, &map);
  else f[0] = (sluice__frame){"[stack table full]", NULL, 0, 0, 0};
  if (grow_arr((void **)&t->lines, &t->cap_lines, t->n_lines + (size_t)nf,
               sizeof(*t->lines)))
    goto oom;
  uint32_t line0 = (uint32_t)t->n_lines;
  for (int i = 0; i < nf; i++) {
    uint32_t fid = func_id(t, &f[i]);
    if (t->oom) return 0;
    t->lines[t->n_lines][0] = fid;
    t->lines[t->n_lines][1] = f[i].line;
    t->n_lines++;
  }
  size_t c1 = t->cap_locs, c2 = t->cap_locs, c3 = t->cap_locs, c4 = t->cap_locs;
  if (grow_arr((void **)&t->loc_pc, &c1, t->n_locs + 1, sizeof(uintptr_t)) ||
      grow_arr((void **)&t->loc_map, &c2, t->n_locs + 1, sizeof(int)) ||
      grow_arr((void **)&t->loc_line0, &c3, t->n_locs + 1, sizeof(uint32_t)) ||
      grow_arr((void **)&t->loc_nlines, &c4, t->n_locs + 1, sizeof(uint16_t)))
    goto oom;
  t->cap_locs = c1 < c2 ? c1 : c2;
  if (c3 < t->cap_locs) t->cap_locs = c3;
  if (c4 < t->cap_locs) t->cap_locs = c4;
  t->loc_pc[t->n_locs] = pc;
  t->loc_map[t->n_locs] = map;
  t->loc_line0[t->n_locs] = line0;
  t->loc_nlines[t->n_locs] = (uint16_t)nf;
  t->loc_idx[j] = (uint32_t)++t->n_locs;
  return (uint32_t)t->n_locs;
oom:
  t->oom = 1;
  return 0;
}

static void tables_free(tables *t) {
  sluice__free(t->strs);
  sluice__free(t->str_idx);
  sluice__free(t->loc_pc);
  sluice__free(t->loc_map);
  sluice__free(t->loc_line0);
  sluice__free(t->loc_nlines);
  sluice__free(t->loc_idx);
  sluice__free(t->lines);
  sluice__free(t->funcs);
  sluice__free(t->func_idx);
}

/* ------------------------------------------------------------------------ */

static void value_type(sluice__buf *b, tables *t, unsigned field,
                       const char *type, const char *unit) {
  sluice__buf m = {0};
  pb_int(&m, 1, str_id(t, type));
  pb_int(&m, 2, str_id(t, unit));
  pb_msg(b, field, &m);
  sluice__buf_free(&m);
}

static void label_str(sluice__buf *b, tables *t, const char *k, const char *v) {
  sluice__buf m = {0};
  pb_int(&m, 1, str_id(t, k));
  pb_int(&m, 2, str_id(t, v));
  pb_msg(b, 3, &m);
  sluice__buf_free(&m);
}

static void label_num(sluice__buf *b, tables *t, const char *k, int64_t v,
                      const char *unit) {
  sluice__buf m = {0};
  pb_int(&m, 1, str_id(t, k));
  pb_int(&m, 3, v);
  if (unit) pb_int(&m, 4, str_id(t, unit));
  pb_msg(b, 3, &m);
  sluice__buf_free(&m);
}

/* One sample: stack `id`, `nv` values, and labels written by `labels`. */
static void sample(sluice__buf *b, tables *t, const sluice_prof_snapshot *s,
                   uint32_t id, const int64_t *v, int nv,
                   const sluice__snap_resid *r, int64_t avg) {
  id = SLUICE__STACK_ID(id);
  sluice__buf m = {0}, packed = {0};
  if (id == SLUICE__STACK_FULL) {
    pb_varint(&packed, loc_id(t, 0));
  } else {
    uint32_t n;
    const uintptr_t *pcs = sluice__stack_frames(id, &n);
    if (n > SLUICE__MAX_DEPTH) n = SLUICE__MAX_DEPTH;
    for (uint32_t i = 0; i < n; i++) pb_varint(&packed, loc_id(t, pcs[i]));
  }
  pb_bytes(&m, 1, packed.data ? packed.data : "", packed.len);
  packed.len = 0;
  for (int i = 0; i < nv; i++) pb_varint(&packed, (uint64_t)v[i]);
  pb_bytes(&m, 2, packed.data ? packed.data : "", packed.len);
  if (r) {
    const char *q = sluice__queue_name(r->key.queue);
    if (*q) label_str(&m, t, "queue", q);
    label_str(&m, t, "outcome", sluice__outcome_name(r->key.outcome));
    const char *key = sluice__snap_key(s, &r->key, NULL);
    if (key) label_str(&m, t, "key", key);
    if (r->key.seq) label_num(&m, t, "message", (int64_t)r->key.seq, NULL);
  }
  if (avg) label_num(&m, t, "bytes", avg, "bytes");
  if (packed.oom) m.oom = 1;
  pb_msg(b, 2, &m);
  sluice__buf_free(&m);
  sluice__buf_free(&packed);
}

static int gzip_out(const sluice__buf *b, sluice__out *out);

int sluice__write_pprof(const sluice_prof_snapshot *s,
                        const sluice_prof_output *o, sluice__out *out) {
  tables t = {0};
  sluice__buf b = {0};
  int residual = o->value == SLUICE_PROF_RESIDUAL_SPACE ||
                 o->value == SLUICE_PROF_RESIDUAL_OBJECTS;
  sluice__symtab *st = sluice__sym_open();
  if (!st) return SLUICE_ENOMEM;
  t.st = st;
  str_id(&t, "");
  if (residual) {
    value_type(&b, &t, 1, "residual_objects", "count");
    value_type(&b, &t, 1, "residual_space", "bytes");
    for (size_t i = 0; i < s->n_resid; i++) {
      const sluice__snap_resid *r = &s->resid[i];
      if (!sluice__resid_match(s, o, r)) continue;
      int64_t v[2];
      sluice__resid_unbias(s, r, &v[0], &v[1]);
      if (!v[0] && !v[1]) continue;
      sample(&b, &t, s, r->key.stack, v, 2, r, r->n ? r->b / r->n : 0);
    }
  } else {
    value_type(&b, &t, 1, "alloc_objects", "count");
    value_type(&b, &t, 1, "alloc_space", "bytes");
    value_type(&b, &t, 1, "inuse_objects", "count");
    value_type(&b, &t, 1, "inuse_space", "bytes");
    for (size_t i = 0; i < s->n_stacks; i++) {
      const sluice__snap_stack *e = &s->stacks[i];
      int64_t v[4];
      v[0] = sluice__stack_value(s, e, SLUICE_PROF_ALLOC_OBJECTS);
      v[1] = sluice__stack_value(s, e, SLUICE_PROF_ALLOC_SPACE);
      v[2] = sluice__stack_value(s, e, SLUICE_PROF_INUSE_OBJECTS);
      v[3] = sluice__stack_value(s, e, SLUICE_PROF_INUSE_SPACE);
      if (!v[0] && !v[1] && !v[2] && !v[3]) continue;
      int64_t an = e->alloc_n + e->x_alloc_n, ab = e->alloc_b + e->x_alloc_b;
      sample(&b, &t, s, e->stack, v, 4, NULL, an ? ab / an : 0);
    }
  }

  const sluice__mapping *maps;
  size_t n_maps = sluice__sym_mappings(st, &maps);
  sluice__buf m = {0}, ln = {0};
  for (size_t i = 0; i < n_maps; i++) {
    pb_int(&m, 1, (int64_t)i + 1);
    pb_int(&m, 2, (int64_t)maps[i].start);
    pb_int(&m, 3, (int64_t)maps[i].limit);
    pb_int(&m, 4, (int64_t)maps[i].offset);
    pb_int(&m, 5, str_id(&t, maps[i].path));
    pb_int(&m, 6, str_id(&t, maps[i].build_id));
    pb_int(&m, 7, 1); /* has_functions */
    if (sluice__sym_mapping_has_lines(st, i)) {
      pb_int(&m, 8, 1);  /* has_filenames */
      pb_int(&m, 9, 1);  /* has_line_numbers */
      pb_int(&m, 10, 1); /* has_inline_frames */
    }
    pb_msg(&b, 3, &m);
  }
  for (size_t i = 0; i < t.n_locs; i++) {
    pb_int(&m, 1, (int64_t)i + 1);
    if (t.loc_map[i] >= 0) pb_int(&m, 2, t.loc_map[i] + 1);
    /* Go's convention: the address of the call, not the return address. */
    pb_int(&m, 3, t.loc_pc[i] ? (int64_t)(t.loc_pc[i] - 1) : 0);
    /* Innermost inlined call first, as pprof expects. */
    for (uint32_t k = 0; k < t.loc_nlines[i]; k++) {
      const uint32_t *l = t.lines[t.loc_line0[i] + k];
      pb_int(&ln, 1, l[0]);
      pb_int(&ln, 2, l[1]);
      pb_msg(&m, 4, &ln);
    }
    pb_msg(&b, 4, &m);
  }
  for (size_t i = 0; i < t.n_funcs; i++) {
    pb_int(&m, 1, (int64_t)i + 1);
    pb_int(&m, 2, t.funcs[i][0]);
    pb_int(&m, 3, t.funcs[i][0]);
    pb_int(&m, 4, t.funcs[i][1]);
    pb_int(&m, 5, t.funcs[i][2]);
    pb_msg(&b, 5, &m);
  }
  sluice__buf_free(&m);
  sluice__buf_free(&ln);
  pb_int(&b, 9, (int64_t)s->time_ns);
  pb_int(&b, 10, (int64_t)s->duration_ns);
  value_type(&b, &t, 11, "space", "bytes");
  uint64_t rate = s->rate == (uint64_t)SLUICE_PROF_RATE_NONE ? 0 : s->rate;
  pb_int(&b, 12, (int64_t)rate);
  pb_int(&b, 13,
         str_id(&t, s->is_diff ? "sluice: difference of two snapshots"
                               : "sluice allocation profile"));
  /* The string table goes last: every string is known by now. */
  for (size_t i = 0; i < t.n_strs; i++)
    pb_bytes(&b, 6, t.strs[i], strlen(t.strs[i]));
  int rc = (b.oom || t.oom) ? SLUICE_ENOMEM : gzip_out(&b, out);
  sluice__buf_free(&b);
  tables_free(&t);
  sluice__sym_close(st);
  return rc;
}

/* ------------------------------------------------------------------------ */

static voidpf z_alloc(voidpf opaque, uInt items, uInt size) {
  (void)opaque;
  return sluice__calloc(items, size);
}

static void z_free(voidpf opaque, voidpf p) {
  (void)opaque;
  sluice__free(p);
}

static int gzip_out(const sluice__buf *b, sluice__out *out) {
  z_stream z;
  memset(&z, 0, sizeof z);
  z.zalloc = z_alloc;
  z.zfree = z_free;
  /* windowBits 15 + 16: a gzip header and trailer instead of zlib's. */
  if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8,
                   Z_DEFAULT_STRATEGY) != Z_OK)
    return SLUICE_ENOMEM;
  unsigned char chunk[16384];
  z.next_in = (Bytef *)(b->data ? b->data : "");
  z.avail_in = (uInt)b->len;
  int zr, rc = 0;
  do {
    z.next_out = chunk;
    z.avail_out = sizeof chunk;
    zr = deflate(&z, Z_FINISH);
    if (zr == Z_STREAM_ERROR) {
      rc = SLUICE_ENOMEM;
      break;
    }
    rc = sluice__out_write(out, chunk, sizeof chunk - z.avail_out);
  } while (!rc && zr != Z_STREAM_END);
  deflateEnd(&z);
  return rc;
}
