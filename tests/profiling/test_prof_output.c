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

T_NOINLINE static void alloc_big(int n, size_t size) {
  for (int i = 0; i < n; i++) {
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

/* A row of `top` for function fn, or NULL. */
static const char *top_row(const char *text, const char *fn, char *row,
                           size_t n) {
  const char *p = strstr(text, "cum%\n");
  if (!p) return NULL;
  p += 5;
  size_t fl = strlen(fn);
  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    if (len > fl && !memcmp(p + len - fl, fn, fl) && p[len - fl - 1] == ' ') {
      snprintf(row, n, "%.*s", (int)len, p);
      return row;
    }
    if (!nl) break;
    p = nl + 1;
  }
  return NULL;
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
      t_report(&out, SLUICE_PROF_FMT_LEGACY, SLUICE_PROF_INUSE_SPACE, NULL),
      0);
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
      t_report(&out, SLUICE_PROF_FMT_LEGACY, SLUICE_PROF_INUSE_SPACE, NULL),
      0);
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
  assert_non_null(top_row(tbuf_str(&out), "test_top_and_folded", row,
                          sizeof row));

  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_TOP, SLUICE_PROF_ALLOC_OBJECTS, NULL), 0);
  assert_non_null(top_row(tbuf_str(&out), "alloc_small", row, sizeof row));
  long objs = strtol(row, NULL, 10); /* 105 per call, test_pprof too */
  assert_true(objs >= 105 && objs % 105 == 0);

  assert_int_equal(
      t_report(&out, SLUICE_PROF_FMT_FOLDED, SLUICE_PROF_INUSE_SPACE, NULL),
      0);
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_pprof, setup),
      cmocka_unit_test_setup(test_legacy, setup),
      cmocka_unit_test_setup(test_top_and_folded, setup),
      cmocka_unit_test_setup(test_diff, setup),
      cmocka_unit_test_setup(test_unbiased_sampling, setup),
      cmocka_unit_test_setup(test_api_edges, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
