/* SPDX-License-Identifier: MIT */
/* The outputs, decoded by the test itself: gzipped profile.proto, the
 * gperftools heap text, top, folded stacks, snapshot differences, and the
 * sampler's unbiasing. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "prof_test.h"

static void start(size_t rate) {
  sluice_prof_opts o = {.sample_rate = rate, .grace_ms = -1};
  assert_int_equal(sluice_prof_start(&o), 0);
}

static int setup(void **state) {
  (void)state;
  start(1);
  return 0;
}

static void *big[16], *small[8];
static int big_line; /* the line of alloc_big's allocation */

T_NOINLINE static void alloc_big(int n, size_t size) {
  for (int i = 0; i < n; i++) {
    big_line = __LINE__ + 1;
    big[i] = TALLOC(size);
    memset(big[i], i, size);
  }
}

T_NOINLINE static void alloc_small(void) {
  for (int i = 0; i < 100; i++) {
    char *p = TALLOC(10);
    p[0] = (char)i;
    TFREE(p);
  }
  for (int i = 0; i < 5; i++) {
    small[i] = TALLOC(10);
    memset(small[i], i, 10);
  }
}

static void free_all(void) {
  for (int i = 0; i < 16; i++) {
    if (big[i]) TFREE(big[i]);
    big[i] = NULL;
  }
  for (int i = 0; i < 8; i++) {
    if (small[i]) TFREE(small[i]);
    small[i] = NULL;
  }
}

/* The next row of `top` at or after p for function fn (followed by its
 * file:line, if any), or NULL; *next: where the following row starts. */
static const char *top_row_at(const char *p, const char *fn, char *row,
                              size_t n, const char **next) {
  size_t fl = strlen(fn);
  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    /* The name follows the cum% column and two spaces. */
    const char *name = strstr(p, "%  ");
    while (name && name < p + len && name[3] == ' ')
      name = strstr(name + 1, "%  ");
    if (name && name < p + len) {
      name += 3;
      size_t rest = len - (size_t)(name - p);
      if (rest >= fl && !memcmp(name, fn, fl) &&
          (rest == fl || name[fl] == ' ')) {
        snprintf(row, n, "%.*s", (int)len, p);
        if (next) *next = p + len + (nl ? 1 : 0);
        return row;
      }
    }
    if (!nl) break;
    p = nl + 1;
  }
  return NULL;
}

/* The first row of `top` for function fn, or NULL. */
static const char *top_row(const char *text, const char *fn, char *row,
                           size_t n) {
  const char *p = strstr(text, "cum%\n");
  return p ? top_row_at(p + 5, fn, row, n, NULL) : NULL;
}

/* The sum of the flat column over fn's rows (one per line of fn). */
static long top_flat_sum(const char *text, const char *fn, int *rows) {
  char row[512];
  long sum = 0;
  *rows = 0;
  const char *p = strstr(text, "cum%\n");
  for (p = p ? p + 5 : ""; top_row_at(p, fn, row, sizeof row, &p);)
    sum += strtol(row, NULL, 10), ++*rows;
  return sum;
}

static void test_pprof(void **state) {
  (void)state;
  alloc_big(10, 1000);
  alloc_small();
  tbuf out = {0};
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  assert_true(out.len > 20);
  assert_int_equal((unsigned char)out.data[0], 0x1f); /* gzip */
  assert_int_equal((unsigned char)out.data[1], 0x8b);
  tprofile p;
  assert_int_equal(tprofile_parse(out.data, out.len, &p), 0);
  assert_int_equal(p.n_types, 4);
  assert_int_equal(tprofile_type_index(&p, "alloc_objects"), 0);
  assert_int_equal(tprofile_type_index(&p, "alloc_space"), 1);
  assert_int_equal(tprofile_type_index(&p, "inuse_objects"), 2);
  assert_int_equal(tprofile_type_index(&p, "inuse_space"), 3);
  assert_int_equal(p.period, 1);
  assert_true(p.n_mappings > 0);
  assert_int_equal(tprofile_sum(&p, "inuse_space", "alloc_big"), 10000);
  assert_int_equal(tprofile_sum(&p, "inuse_objects", "alloc_big"), 10);
  assert_int_equal(tprofile_sum(&p, "alloc_space", "alloc_small"), 1050);
  assert_int_equal(tprofile_sum(&p, "alloc_objects", "alloc_small"), 105);
  assert_int_equal(tprofile_sum(&p, "inuse_space", "alloc_small"), 50);
  /* Callers are there too, and the block size label like Go's. */
  int found = 0;
  for (size_t i = 0; i < p.n_samples; i++) {
    const char *leaf = tprofile_frame(&p, &p.samples[i], 0);
    if (!leaf || strcmp(leaf, "alloc_big")) continue;
    assert_string_equal(tprofile_frame(&p, &p.samples[i], 1), "test_pprof");
    const tlabel *l = tsample_label(&p.samples[i], "bytes");
    assert_non_null(l);
    assert_int_equal(l->num, 1000);
    found++;
  }
  assert_int_equal(found, 1);
  tprofile_free(&p);
  tbuf_free(&out);
  free_all();
}

static void test_legacy(void **state) {
  (void)state;
  alloc_big(10, 1000);
  tbuf out = {0};
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_LEGACY, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  const char *s = tbuf_str(&out);
  assert_true(!strncmp(s, "heap profile: ", 14));
  const char *nl = strchr(s, '\n');
  assert_non_null(nl);
  assert_true(memmem(s, (size_t)(nl - s), "@ heapprofile", 13) != NULL);
  assert_non_null(strstr(s, "\n10: 10000 [10: 10000] @ 0x"));
  assert_non_null(strstr(s, "\nMAPPED_LIBRARIES:\n"));
  tbuf_free(&out);
  free_all();

  /* Sampled: the header names the rate, and counts stay raw. */
  start(4096);
  alloc_big(16, 100000);
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_LEGACY, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  assert_non_null(strstr(tbuf_str(&out), "@ heap_v2/4096\n"));
  assert_non_null(strstr(tbuf_str(&out), "\n16: 1600000 [16: 1600000] @ 0x"));
  tbuf_free(&out);
  free_all();
}

static void test_top_and_folded(void **state) {
  (void)state;
  alloc_big(10, 1000);
  alloc_small();
  tbuf out = {0};
  char row[512];
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_TOP, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  assert_non_null(strstr(tbuf_str(&out), "Type: inuse_space\n"));
  assert_non_null(strstr(tbuf_str(&out), "Showing nodes accounting for "));
  assert_non_null(
      strstr(tbuf_str(&out), "      flat  flat%   sum%        cum   cum%\n"));
  assert_non_null(top_row(tbuf_str(&out), "alloc_big", row, sizeof row));
  assert_true(!strncmp(row, "    9.77kB ", 11));
  if (SLUICE_TEST_LINES) { /* rows are lines: "alloc_big file:line" */
    char want[512];
    snprintf(want, sizeof want, "alloc_big %s:%d", __FILE__, big_line);
    assert_non_null(strstr(row, want));
  }
  assert_non_null(
      top_row(tbuf_str(&out), "test_top_and_folded", row, sizeof row));

  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_TOP, SLUICE_PROF_ALLOC_OBJECTS, NULL), 0);
  /* 105 per call (test_pprof's too), on two lines when there are lines. */
  int rows = 0;
  long objs = top_flat_sum(tbuf_str(&out), "alloc_small", &rows);
  assert_int_equal(rows, SLUICE_TEST_LINES ? 2 : 1);
  assert_true(objs >= 105 && objs % 105 == 0);

  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_FOLDED, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  assert_non_null(
      strstr(tbuf_str(&out), ";test_top_and_folded;alloc_big 10000\n"));
  assert_non_null(strstr(tbuf_str(&out), ";alloc_small 50\n"));
  tbuf_free(&out);
  free_all();
}

static void test_diff(void **state) {
  (void)state;
  alloc_big(4, 1000);
  sluice_prof_snapshot *a, *b, *d;
  assert_int_equal(sluice_prof_snapshot_take(&a), 0);
  for (int i = 0; i < 3; i++) {
    TFREE(big[i]);
    big[i] = NULL;
  }
  alloc_big(3, 2000); /* another call site: another stack */
  assert_int_equal(sluice_prof_snapshot_take(&b), 0);
  assert_int_equal(sluice_prof_snapshot_diff(a, b, &d), 0);

  tbuf out = {0};
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_INUSE_SPACE, d), 0);
  tprofile p;
  assert_int_equal(tprofile_parse(out.data, out.len, &p), 0);
  /* +3 x 2000 allocated; -3 x 1000 freed. */
  assert_int_equal(tprofile_sum(&p, "alloc_space", "alloc_big"), 6000);
  assert_int_equal(tprofile_sum(&p, "inuse_space", "alloc_big"), 3000);
  assert_int_equal(tprofile_sum(&p, "inuse_objects", "alloc_big"), 0);
  tprofile_free(&p);

  /* The same difference in the other formats. */
  char row[512];
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_TOP, SLUICE_PROF_ALLOC_SPACE, d), 0);
  assert_non_null(strstr(tbuf_str(&out), "difference of two snapshots"));
  assert_non_null(top_row(tbuf_str(&out), "alloc_big", row, sizeof row));
  assert_true(!strncmp(row, "    5.86kB ", 11));
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_LEGACY, SLUICE_PROF_INUSE_SPACE, d), 0);
  assert_non_null(strstr(tbuf_str(&out), "heap profile: "));
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_FOLDED, SLUICE_PROF_INUSE_SPACE, d), 0);
  assert_non_null(strstr(tbuf_str(&out), ";alloc_big 6000\n"));
  assert_non_null(strstr(tbuf_str(&out), ";alloc_big -3000\n"));

  sluice_prof_memstats ms;
  sluice_prof_snapshot_memstats(d, &ms);
  assert_true(ms.mallocs >= 3);
  sluice_prof_snapshot_free(a);
  sluice_prof_snapshot_free(b);
  sluice_prof_snapshot_free(d);
  sluice_prof_snapshot_free(NULL);
  tbuf_free(&out);
  free_all();
}

/* Go's unbiasing: at a 64 KiB rate, 16 MiB of 4 KiB blocks give ~256
 * samples; the estimate is within a few percent (25% is > 4 sigma). */
T_NOINLINE static void alloc_sampled(void **v, int n) {
  for (int i = 0; i < n; i++) {
    v[i] = TALLOC(4096);
    memset(v[i], 0, 64);
  }
}

static void test_unbiased_sampling(void **state) {
  (void)state;
  start(65536);
  enum { N = 4096 };
  void **v = calloc(N, sizeof(void *));
  alloc_sampled(v, N);
  tbuf out = {0};
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  tprofile p;
  assert_int_equal(tprofile_parse(out.data, out.len, &p), 0);
  assert_int_equal(p.period, 65536);
  int64_t est = tprofile_sum(&p, "inuse_space", "alloc_sampled");
  int64_t truth = (int64_t)N * 4096;
  assert_true(est > truth * 3 / 4 && est < truth * 5 / 4);
  int64_t objs = tprofile_sum(&p, "inuse_objects", "alloc_sampled");
  assert_true(objs > N * 3 / 4 && objs < N * 5 / 4);
  tprofile_free(&p);
  for (int i = 0; i < N; i++) TFREE(v[i]);
  free(v);
  tbuf_free(&out);
}

static int failing_writer(const void *d, size_t n, void *user) {
  (void)user;
  (void)d;
  (void)n;
  return -1;
}

static void test_api_edges(void **state) {
  (void)state;
  tbuf out = {0};
  assert_int_equal(sluice_prof_write(NULL, NULL, NULL, NULL), SLUICE_EINVAL);
  sluice_prof_output bad = {.format = (sluice_prof_format)99};
  assert_int_equal(sluice_prof_write(NULL, &bad, tbuf_write, &out),
                   SLUICE_EINVAL);
  assert_int_equal(sluice_prof_write(NULL, NULL, failing_writer, NULL),
                   SLUICE_EIO);
  assert_int_equal(sluice_prof_snapshot_take(NULL), SLUICE_EINVAL);
  assert_string_equal(sluice_prof_value_name(SLUICE_PROF_RESIDUAL_OBJECTS),
                      "residual_objects");
  assert_string_equal(sluice_prof_value_name(42), "?");
  sluice_prof_opts o = {.max_queues = 100000};
  assert_int_equal(sluice_prof_start(&o), SLUICE_EINVAL);

  /* Files: the format follows the name; %p is the pid. */
  alloc_big(2, 500);
  char dir[] = "/tmp/sluice-prof-out-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256], real[256];
  snprintf(path, sizeof path, "%s/heap.%%p.heap", dir);
  snprintf(real, sizeof real, "%s/heap.%ld.heap", dir, (long)getpid());
  assert_int_equal(sluice_prof_write_file(NULL, NULL, path), 0);
  FILE *f = fopen(real, "r");
  assert_non_null(f);
  char line[128];
  assert_non_null(fgets(line, sizeof line, f));
  fclose(f);
  assert_true(!strncmp(line, "heap profile: ", 14));
  unlink(real);
  snprintf(path, sizeof path, "%s/nodir/x.pb.gz", dir);
  assert_int_equal(sluice_prof_write_file(NULL, NULL, path), SLUICE_EIO);
  rmdir(dir);
  free_all();
  tbuf_free(&out);
}

/* Source lines and inlined calls, as each writer shows them. */
static int inl_line, outer_line;
static void *inl_kept[3];

__attribute__((always_inline)) static inline void *inl_alloc(size_t n) {
  inl_line = __LINE__ + 1;
  void *p = TALLOC(n);
  memset(p, 1, n);
  return p;
}

T_NOINLINE static void alloc_inlined(void) {
  for (int i = 0; i < 3; i++) {
    outer_line = __LINE__ + 1;
    inl_kept[i] = inl_alloc(777);
  }
}

static void test_lines(void **state) {
  (void)state;
  if (!SLUICE_TEST_LINES) {
    print_message("SKIP: libsluice_prof built without libdw\n");
    skip();
  }
  alloc_inlined();
  tbuf out = {0};
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  tprofile p;
  assert_int_equal(tprofile_parse(out.data, out.len, &p), 0);
  /* The leaf location holds two Line entries: the inlined function first,
   * at the allocation; then its caller, at the call. */
  assert_int_equal(tprofile_sum(&p, "inuse_space", "inl_alloc"), 3 * 777);
  int seen = 0;
  for (size_t i = 0; i < p.n_samples; i++) {
    const char *leaf = tprofile_frame(&p, &p.samples[i], 0);
    if (!leaf || strcmp(leaf, "inl_alloc")) continue;
    tline l[4];
    assert_int_equal(tprofile_lines(&p, &p.samples[i], 0, l, 4), 2);
    assert_string_equal(l[0].func, "inl_alloc");
    assert_string_equal(l[0].file, __FILE__);
    assert_int_equal(l[0].line, inl_line);
    assert_string_equal(l[1].func, "alloc_inlined");
    assert_string_equal(l[1].file, __FILE__);
    assert_int_equal(l[1].line, outer_line);
    /* The caller's location: test_lines, at its call of alloc_inlined. */
    assert_true(tprofile_lines(&p, &p.samples[i], 1, l, 4) >= 1);
    assert_string_equal(l[0].func, "test_lines");
    assert_string_equal(l[0].file, __FILE__);
    seen++;
  }
  assert_int_equal(seen, 1);
  tprofile_free(&p);

  /* top: a row per line, the inlined function's included. */
  char row[512], want[512];
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_TOP, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  assert_non_null(top_row(tbuf_str(&out), "inl_alloc", row, sizeof row));
  snprintf(want, sizeof want, "  inl_alloc %s:%d (inline)", __FILE__, inl_line);
  assert_non_null(strstr(row, want));
  assert_true(!strncmp(row, "    2.28kB ", 11));
  assert_non_null(top_row(tbuf_str(&out), "alloc_inlined", row, sizeof row));
  snprintf(want, sizeof want, "  alloc_inlined %s:%d", __FILE__, outer_line);
  assert_non_null(strstr(row, want));
  assert_null(strstr(row, "(inline)"));

  /* Folded stacks: the inlined call is a frame of its own. */
  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_FOLDED, SLUICE_PROF_INUSE_SPACE, NULL), 0);
  assert_non_null(
      strstr(tbuf_str(&out), ";test_lines;alloc_inlined;inl_alloc 2331\n"));
  for (int i = 0; i < 3; i++) TFREE(inl_kept[i]);

  /* The residual report's sites: "fn (file.c:N) <- caller (...)". */
  sluice_prof_scope sc = sluice_prof_scope_begin("lines.q", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(sc);
  alloc_inlined();
  sluice_prof_scope_enter(prev);
  assert_int_equal(sluice_prof_scope_end(sc, SLUICE_ACK, NULL), 0);
  assert_int_equal(t_report(&out, SLUICE_PROF_FMT_RESIDUAL, 0, NULL), 0);
  snprintf(want, sizeof want,
           "  inl_alloc (test_prof_output.c:%d, inlined) <- alloc_inlined "
           "(test_prof_output.c:%d) <- test_lines (test_prof_output.c:",
           inl_line, outer_line);
  assert_non_null(strstr(tbuf_str(&out), want));
  tbuf_free(&out);
  for (int i = 0; i < 3; i++) TFREE(inl_kept[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_pprof, setup),
      cmocka_unit_test_setup(test_legacy, setup),
      cmocka_unit_test_setup(test_top_and_folded, setup),
      cmocka_unit_test_setup(test_diff, setup),
      cmocka_unit_test_setup(test_unbiased_sampling, setup),
      cmocka_unit_test_setup(test_api_edges, setup),
      cmocka_unit_test_setup(test_lines, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
