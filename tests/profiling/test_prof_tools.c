/* SPDX-License-Identifier: MIT */
/* The profiles read by the real tools: `go tool pprof` (Debian golang-go)
 * and `google-pprof` (Debian google-perftools), and the profiler preloaded
 * into a program that knows nothing about it. A missing tool skips the test,
 * or fails it when SLUICE_REQUIRE_BROKER=1 (CI). Source lines and inlined
 * frames are read back with `-lines` and `-list`, for the executable, a
 * shared library and a preloaded program; a program without debug
 * information falls back to function names. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "prof_test.h"
#include "prof_testlib.h"

static char *go, *gpprof;
static char dir[64];

static int group_setup(void **state) {
  (void)state;
  go = t_which("go");
  gpprof = t_which("google-pprof");
  snprintf(dir, sizeof dir, "/tmp/sluice-prof-tools-XXXXXX");
  if (!mkdtemp(dir)) return -1;
  sluice_prof_opts o = {.sample_rate = 1, .grace_ms = -1};
  return sluice_prof_start(&o);
}

static int group_teardown(void **state) {
  (void)state;
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char p[512];
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(dir);
  free(go);
  free(gpprof);
  return 0;
}

/* Skip, or fail in CI, when a tool is missing. */
#define NEED(tool, path)                                                  \
  do {                                                                    \
    if (!(path)) {                                                        \
      if (t_tools_required())                                             \
        fail_msg("%s not found in PATH (required: run scripts/setup.sh)", \
                 tool);                                                   \
      print_message("SKIP: %s not found in PATH\n", tool);                \
      skip();                                                             \
    }                                                                     \
  } while (0)

static char *path_in(const char *name) {
  char *p = NULL;
  if (asprintf(&p, "%s/%s", dir, name) < 0) return NULL;
  return p;
}

static void write_profile(const sluice_prof_snapshot *s, sluice_prof_format f,
                          sluice_prof_value v, const char *path) {
  sluice_prof_output o = {.format = f, .value = v};
  assert_int_equal(sluice_prof_write_file(s, &o, path), 0);
}

/* Runs a tool; returns its output (caller frees), asserting exit 0. */
static char *run_ok(char *const argv[]) {
  tbuf out = {0};
  int rc = t_run(argv, NULL, &out);
  if (rc != 0) fail_msg("%s exited %d:\n%s", argv[0], rc, tbuf_str(&out));
  return out.data;
}

/* ------------------------------------------------------------------------ */
/* What the profiles contain. */

/* The tests compare the lines the tools print with the lines recorded
 * here (the line after each assignment). */
static int hold_line, leak_line, inl_line, call_line;

static void *held[20];

T_NOINLINE static void hold_buffers(void) {
  for (int i = 0; i < 20; i++) {
    hold_line = __LINE__ + 1;
    held[i] = TALLOC(5000);
    memset(held[i], i, 5000);
  }
}

/* An inlined function: its own frame (a second Line of the location). */
__attribute__((always_inline)) static inline void *inl_make(size_t n) {
  inl_line = __LINE__ + 1;
  void *p = TALLOC(n);
  memset(p, 3, n);
  return p;
}

static void *inl_held[4];

T_NOINLINE static void call_inlined(void) {
  for (int i = 0; i < 4; i++) {
    call_line = __LINE__ + 1;
    inl_held[i] = inl_make(3000);
  }
}

static void *lib_held[3];

static void *grown[10];

T_NOINLINE static void grow_later(void) {
  for (int i = 0; i < 10; i++) {
    grown[i] = TALLOC(7000);
    memset(grown[i], i, 7000);
  }
}

static void *errors[64];
static int n_errors;

T_NOINLINE static int leak_on_nack(int i) {
  leak_line = __LINE__ + 1;
  char *ctx = TALLOC(64);
  memset(ctx, i, 64);
  if (i % 2) {
    errors[n_errors++] = ctx;
    return SLUICE_NACK;
  }
  TFREE(ctx);
  return SLUICE_ACK;
}

static void run_deliveries(void) {
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  for (int i = 0; i < 40; i++) {
    sluice_delivery_info info = {
        "orders", (uint64_t)i + 1, 1, (uint64_t)i + 1, 0, NULL, NULL};
    void *tok = hk->begin(hk->user, &info);
    int outcome = leak_on_nack(i);
    hk->suspend(hk->user, tok);
    hk->end(hk->user, tok, &info, outcome);
  }
}

/* The blocks both tools look at, made once. */
static void prepare(void) {
  static int done;
  if (done) return;
  done = 1;
  hold_buffers();
  call_inlined();
  for (int i = 0; i < 3; i++) lib_held[i] = prof_testlib_alloc(2000);
  run_deliveries();
}

/* Lines are checked where the library was built with libdw; CI must have
 * it (scripts/setup.sh installs libdw-dev). */
static int lines_expected(void) {
  if (SLUICE_TEST_LINES) return 1;
  if (t_tools_required())
    fail_msg("libsluice_prof built without libdw: no source lines");
  print_message("SKIP (lines): libsluice_prof built without libdw\n");
  return 0;
}

/* Does `out` have a row naming fn at file:line (`-lines` output)? An
 * inlined call is marked: "fn file:line (inline)" by go tool pprof,
 * "fn (inline) file:line" by google-pprof. */
static int has_line(const char *out, const char *fn, const char *file,
                    int line) {
  char want[3][1024];
  snprintf(want[0], sizeof want[0], " %s %s:%d\n", fn, file, line);
  snprintf(want[1], sizeof want[1], " %s %s:%d (inline)\n", fn, file, line);
  snprintf(want[2], sizeof want[2], " %s (inline) %s:%d\n", fn, file, line);
  for (int i = 0; i < 3; i++)
    if (strstr(out, want[i])) return i + 1;
  return 0;
}

/* In `pprof -list` output: the value on source line `line` of the listing
 * of fn ("." when none, NULL when the line is not listed). */
static const char *list_value(const char *out, const char *fn, int line,
                              char *val, size_t n) {
  char hdr[256];
  snprintf(hdr, sizeof hdr, " %s in ", fn);
  const char *p = strstr(out, hdr);
  if (!p) return NULL;
  char want[32];
  snprintf(want, sizeof want, " %d:", line);
  for (p = strchr(p, '\n'); p && *p; p = strchr(p + 1, '\n')) {
    const char *eol = strchr(p + 1, '\n');
    if (!strncmp(p + 1, "ROUTINE", 7)) return NULL; /* the next function */
    const char *hit = strstr(p, want);
    if (hit && (!eol || hit < eol)) {
      if (sscanf(p + 1, "%31s", val) != 1) return NULL;
      (void)n;
      return val;
    }
  }
  return NULL;
}

/* The line of the first occurrence of `text` in file `path`, or 0. */
__attribute__((unused)) static int line_of(const char *path, const char *text) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char buf[1024];
  int line = 0, found = 0;
  while (fgets(buf, sizeof buf, f)) {
    line++;
    if (strstr(buf, text)) {
      found = line;
      break;
    }
  }
  fclose(f);
  return found;
}

static void test_go_pprof(void **state) {
  (void)state;
  NEED("go", go);
  prepare();
  char *heap = path_in("heap.pb.gz"), *resid = path_in("resid.pb.gz");
  write_profile(NULL, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_INUSE_SPACE, heap);
  write_profile(NULL, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_RESIDUAL_SPACE, resid);

  char *out = run_ok((char *[]){go, "tool", "pprof", "-top", heap, NULL});
  assert_non_null(strstr(out, "Type: inuse_space"));
  assert_non_null(strstr(out, "hold_buffers"));
  free(out);
  out = run_ok((char *[]){go, "tool", "pprof", "-top",
                          "-sample_index=alloc_objects", heap, NULL});
  assert_non_null(strstr(out, "leak_on_nack"));
  free(out);

  /* The residual profile: the leak is under outcome=nack only. */
  out = run_ok((char *[]){go, "tool", "pprof", "-top", resid, NULL});
  assert_non_null(strstr(out, "Type: residual_space"));
  assert_non_null(strstr(out, "leak_on_nack"));
  free(out);
  out = run_ok((char *[]){go, "tool", "pprof", "-top", "-tagfocus=outcome=nack",
                          "-tagfocus=queue=orders", resid, NULL});
  assert_non_null(strstr(out, "leak_on_nack"));
  assert_non_null(strstr(out, "1.25kB")); /* 20 x 64 B */
  free(out);
  out = run_ok((char *[]){go, "tool", "pprof", "-top",
                          "-tagignore=outcome=nack", resid, NULL});
  assert_null(strstr(out, "leak_on_nack"));
  free(out);
  if (lines_expected()) {
    /* Lines, inlined frames and a shared library's lines, by pprof. */
    out = run_ok((char *[]){go, "tool", "pprof", "-top", "-lines", heap, NULL});
    assert_true(has_line(out, "hold_buffers", __FILE__, hold_line));
    assert_int_equal(has_line(out, "inl_make", __FILE__, inl_line), 2);
    assert_int_equal(has_line(out, "call_inlined", __FILE__, call_line), 1);
    assert_int_equal(
        has_line(out, "lib_make", PROF_TESTLIB_SRC, prof_testlib_line()), 2);
    assert_non_null(strstr(out, " prof_testlib_alloc " PROF_TESTLIB_SRC ":"));
    free(out);
    char val[32];
    /* -source_path: pprof's guess from the working directory can strip
     * the absolute path to a wrong relative one. */
    out = run_ok((char *[]){go, "tool", "pprof", "-list=^hold_buffers$",
                            "-source_path=" SRC_DIR, heap, NULL});
    assert_non_null(strstr(out, "hold_buffers in "));
    assert_non_null(strstr(out, "test_prof_tools.c\n"));
    assert_non_null(
        list_value(out, "hold_buffers", hold_line, val, sizeof val));
    assert_string_equal(val, "97.66kB"); /* 20 x 5000 B */
    free(out);
    out = run_ok((char *[]){go, "tool", "pprof", "-list=^inl_make$",
                            "-source_path=" SRC_DIR, heap, NULL});
    assert_non_null(list_value(out, "inl_make", inl_line, val, sizeof val));
    assert_string_equal(val, "11.72kB"); /* 4 x 3000 B */
    free(out);
    out = run_ok((char *[]){go, "tool", "pprof", "-top", "-lines",
                            "-tagfocus=outcome=nack", resid, NULL});
    assert_true(has_line(out, "leak_on_nack", __FILE__, leak_line));
    free(out);
  }
  out = run_ok((char *[]){go, "tool", "pprof", "-tags", resid, NULL});
  assert_non_null(strstr(out, "outcome"));
  assert_non_null(strstr(out, "nack"));
  assert_non_null(strstr(out, "queue"));
  assert_non_null(strstr(out, "orders"));
  free(out);

  /* -diff_base against an earlier profile, and sluice's own diff. */
  sluice_prof_snapshot *a, *b, *d;
  assert_int_equal(sluice_prof_snapshot_take(&a), 0);
  grow_later();
  assert_int_equal(sluice_prof_snapshot_take(&b), 0);
  assert_int_equal(sluice_prof_snapshot_diff(a, b, &d), 0);
  char *pa = path_in("a.pb.gz"), *pb = path_in("b.pb.gz"),
       *pd = path_in("d.pb.gz");
  write_profile(a, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_INUSE_SPACE, pa);
  write_profile(b, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_INUSE_SPACE, pb);
  write_profile(d, SLUICE_PROF_FMT_PPROF, SLUICE_PROF_INUSE_SPACE, pd);
  char *base_arg = NULL;
  assert_true(asprintf(&base_arg, "-diff_base=%s", pa) > 0);
  out = run_ok((char *[]){go, "tool", "pprof", "-top", base_arg, pb, NULL});
  assert_non_null(strstr(out, "grow_later"));
  assert_null(strstr(out, "hold_buffers")); /* unchanged: diffs to 0 */
  free(out);
  out = run_ok((char *[]){go, "tool", "pprof", "-top", pd, NULL});
  assert_non_null(strstr(out, "68.36kB"));
  assert_non_null(strstr(out, "grow_later"));
  free(out);
  free(base_arg);
  sluice_prof_snapshot_free(a);
  sluice_prof_snapshot_free(b);
  sluice_prof_snapshot_free(d);
  free(pa);
  free(pb);
  free(pd);
  free(heap);
  free(resid);
}

static char *self_exe(void) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  assert_true(n > 0);
  buf[n] = 0;
  return strdup(buf);
}

static void test_google_pprof(void **state) {
  (void)state;
  NEED("google-pprof", gpprof);
  prepare();
  char *heap = path_in("heap.heap"), *exe = self_exe();
  write_profile(NULL, SLUICE_PROF_FMT_LEGACY, SLUICE_PROF_INUSE_SPACE, heap);
  char *out = run_ok((char *[]){gpprof, "--text", exe, heap, NULL});
  assert_non_null(strstr(out, "hold_buffers"));
  free(out);
  if (lines_expected()) {
    /* google-pprof symbolizes the addresses itself (addr2line), the shared
     * library's too: the leaf's address must land on the call's line. */
    out = run_ok((char *[]){gpprof, "--text", "--lines", exe, heap, NULL});
    assert_true(has_line(out, "hold_buffers", __FILE__, hold_line));
    assert_true(
        has_line(out, "lib_make", PROF_TESTLIB_SRC, prof_testlib_line()));
    free(out);
  }
  /* The legacy residual profile too. */
  write_profile(NULL, SLUICE_PROF_FMT_LEGACY, SLUICE_PROF_RESIDUAL_SPACE, heap);
  out = run_ok((char *[]){gpprof, "--text", exe, heap, NULL});
  assert_non_null(strstr(out, "leak_on_nack"));
  free(out);
  /* go tool pprof reads the legacy format as well. */
  if (go) {
    write_profile(NULL, SLUICE_PROF_FMT_LEGACY, SLUICE_PROF_INUSE_SPACE, heap);
    out = run_ok((char *[]){go, "tool", "pprof", "-top", exe, heap, NULL});
    assert_non_null(strstr(out, "hold_buffers"));
    free(out);
  }
  free(heap);
  free(exe);
}

/* LD_PRELOAD into a program built without sluice. */
static void test_preload(void **state) {
  (void)state;
#ifdef SLUICE_TEST_NO_INTERPOSE
  print_message("SKIP: no malloc interposition under the sanitizers\n");
  skip();
#else
  char *pb = path_in("leaky.pb.gz");
  char *env_pb[] = {"LD_PRELOAD=" SLUICE_PROF_SO, "SLUICE_PROF=1",
                    "SLUICE_PROF_RATE=1", NULL, NULL};
  assert_true(asprintf(&env_pb[3], "SLUICE_PROF_OUT=%s", pb) > 0);
  tbuf out = {0};
  assert_int_equal(t_run((char *[]){PROF_LEAKY, NULL}, env_pb, &out), 0);
  tbuf file = {0};
  FILE *f = fopen(pb, "rb");
  assert_non_null(f);
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    tbuf_write(chunk, n, &file);
  fclose(f);
  tprofile p;
  assert_int_equal(tprofile_parse(file.data, file.len, &p), 0);
  assert_string_equal(tprofile_top_leaf(&p, "inuse_space"), "leak_some");
  assert_int_equal(tprofile_sum(&p, "inuse_space", "leak_some"), 64000);
  assert_int_equal(tprofile_sum(&p, "inuse_objects", "leak_some"), 1000);
  assert_int_equal(tprofile_sum(&p, "alloc_space", "handle_request"),
                   1000 * 4096);
  assert_int_equal(tprofile_sum(&p, "inuse_space", "handle_request"), 0);
  tprofile_free(&p);
  tbuf_free(&file);
  int leak_src = line_of(PROF_LEAKY_SRC, "malloc(sizeof *n)");
  assert_true(leak_src > 0);
  if (go) {
    char *o = run_ok((char *[]){go, "tool", "pprof", "-top", pb, NULL});
    assert_non_null(strstr(o, "leak_some"));
    free(o);
    if (lines_expected()) {
      o = run_ok((char *[]){go, "tool", "pprof", "-top", "-lines", pb, NULL});
      assert_true(has_line(o, "leak_some", PROF_LEAKY_SRC, leak_src));
      free(o);
      char val[32];
      o = run_ok((char *[]){go, "tool", "pprof", "-list=^leak_some$",
                            "-source_path=" SRC_DIR, pb, NULL});
      assert_non_null(list_value(o, "leak_some", leak_src, val, sizeof val));
      assert_string_equal(val, "62.50kB"); /* 1000 x 64 B */
      free(o);
    }
  } else {
    NEED("go", go);
  }

  /* The legacy format with the pid in the name, read by google-pprof. */
  char *heap_pat = path_in("leaky.%p.heap");
  char *env_heap[] = {"LD_PRELOAD=" SLUICE_PROF_SO, "SLUICE_PROF=1",
                      "SLUICE_PROF_RATE=1", NULL, NULL};
  assert_true(asprintf(&env_heap[3], "SLUICE_PROF_OUT=%s", heap_pat) > 0);
  out.len = 0;
  assert_int_equal(t_run((char *[]){PROF_LEAKY, NULL}, env_heap, &out), 0);
  char *heap = NULL;
  DIR *d = opendir(dir);
  struct dirent *e;
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, "leaky.", 6) && strstr(e->d_name, ".heap"))
      assert_true(asprintf(&heap, "%s/%s", dir, e->d_name) > 0);
  closedir(d);
  assert_non_null(heap);
  if (gpprof) {
    char *o = run_ok((char *[]){gpprof, "--text", PROF_LEAKY, heap, NULL});
    assert_non_null(strstr(o, "leak_some"));
    free(o);
    if (lines_expected()) {
      o = run_ok(
          (char *[]){gpprof, "--text", "--lines", PROF_LEAKY, heap, NULL});
      assert_true(has_line(o, "leak_some", PROF_LEAKY_SRC, leak_src));
      free(o);
    }
  }

  /* No debug information at all: function names from the ELF symbols,
   * no file, no line; the tools read it the same. */
  out.len = 0;
  assert_int_equal(t_run((char *[]){PROF_LEAKY_NODEBUG, NULL}, env_pb, &out),
                   0);
  tbuf_free(&file);
  f = fopen(pb, "rb");
  assert_non_null(f);
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    tbuf_write(chunk, n, &file);
  fclose(f);
  assert_int_equal(tprofile_parse(file.data, file.len, &p), 0);
  assert_string_equal(tprofile_top_leaf(&p, "inuse_space"), "leak_some");
  assert_int_equal(tprofile_sum(&p, "inuse_space", "leak_some"), 64000);
  for (size_t i = 0; i < p.n_samples; i++) {
    const char *leaf = tprofile_frame(&p, &p.samples[i], 0);
    if (!leaf || strcmp(leaf, "leak_some")) continue;
    tline l[4];
    assert_int_equal(tprofile_lines(&p, &p.samples[i], 0, l, 4), 1);
    assert_null(l[0].file);
    assert_int_equal(l[0].line, 0);
  }
  tprofile_free(&p);
  tbuf_free(&file);
  if (go) {
    char *o =
        run_ok((char *[]){go, "tool", "pprof", "-top", "-lines", pb, NULL});
    assert_non_null(strstr(o, " leak_some\n"));
    free(o);
  }

  /* The default rate: sampled, still a valid profile. */
  char *env_def[] = {"LD_PRELOAD=" SLUICE_PROF_SO, "SLUICE_PROF=1", NULL, NULL};
  assert_true(asprintf(&env_def[2], "SLUICE_PROF_OUT=%s", pb) > 0);
  assert_int_equal(t_run((char *[]){PROF_LEAKY, NULL}, env_def, &out), 0);
  f = fopen(pb, "rb");
  assert_non_null(f);
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    tbuf_write(chunk, n, &file);
  fclose(f);
  assert_int_equal(tprofile_parse(file.data, file.len, &p), 0);
  assert_int_equal(p.period, 524288);
  tprofile_free(&p);
  tbuf_free(&file);

  /* Not enabled: nothing is written. */
  char *absent = path_in("absent.pb.gz");
  char *env_off[] = {"LD_PRELOAD=" SLUICE_PROF_SO, NULL, NULL};
  assert_true(asprintf(&env_off[1], "SLUICE_PROF_OUT=%s", absent) > 0);
  assert_int_equal(t_run((char *[]){PROF_LEAKY, NULL}, env_off, &out), 0);
  assert_int_equal(access(absent, F_OK), -1);

  free(env_def[2]);
  free(env_off[1]);
  free(absent);
  free(heap);
  free(heap_pat);
  free(env_heap[3]);
  free(env_pb[3]);
  free(pb);
  tbuf_free(&out);
  if (!gpprof) NEED("google-pprof", gpprof);
#endif
}

/* More modules with DWARF than the profiler keeps open (16): copies of the
 * test library, each loaded on its own. One report names the lines of
 * every copy (sessions closed to make room are opened again on demand),
 * and the profiler's memory does not grow with the copies beyond the
 * bound. */
#define N_COPIES 24

static void copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  assert_non_null(in);
  assert_non_null(out);
  char buf[8192];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    assert_int_equal(fwrite(buf, 1, n, out), n);
  fclose(in);
  assert_int_equal(fclose(out), 0);
}

static void test_many_modules(void **state) {
  (void)state;
  if (!lines_expected()) skip();
  void *libs[N_COPIES];
  void *blocks[N_COPIES];
  for (int i = 0; i < N_COPIES; i++) {
    char name[32];
    snprintf(name, sizeof name, "libcopy%d.so", i);
    char *path = path_in(name);
    copy_file(PROF_TESTLIB_SO, path);
    libs[i] = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    assert_non_null(libs[i]);
    void *(*alloc)(size_t) =
        (void *(*)(size_t))(uintptr_t)dlsym(libs[i], "prof_testlib_alloc");
    assert_non_null(alloc);
    blocks[i] = alloc(1000 + (size_t)i); /* a size per copy */
    free(path);
  }
  tbuf out = {0};
  for (int round = 0; round < 2; round++) {
    assert_int_equal(t_report(&out, SLUICE_PROF_FMT_PPROF,
                              SLUICE_PROF_INUSE_SPACE, NULL),
                     0);
    tprofile p;
    assert_int_equal(tprofile_parse(out.data, out.len, &p), 0);
    int seen[N_COPIES] = {0};
    int t = tprofile_type_index(&p, "inuse_space");
    for (size_t i = 0; i < p.n_samples; i++) {
      tline l[4];
      size_t n = tprofile_lines(&p, &p.samples[i], 0, l, 4);
      int64_t v = p.samples[i].values[t];
      if (n != 2 || v < 1000 || v >= 1000 + N_COPIES) continue;
      if (!l[0].func || strcmp(l[0].func, "lib_make") || !l[0].file ||
          strcmp(l[0].file, PROF_TESTLIB_SRC) ||
          l[0].line != prof_testlib_line())
        continue;
      assert_string_equal(l[1].func, "prof_testlib_alloc");
      seen[v - 1000]++;
    }
    for (int i = 0; i < N_COPIES; i++) assert_int_equal(seen[i], 1);
    tprofile_free(&p);
  }
  tbuf_free(&out);
  for (int i = 0; i < N_COPIES; i++) {
    TFREE(blocks[i]);
    dlclose(libs[i]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_go_pprof),
      cmocka_unit_test(test_google_pprof),
      cmocka_unit_test(test_preload),
      cmocka_unit_test(test_many_modules),
  };
  int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
  for (int i = 0; i < 20; i++) TFREE(held[i]);
  for (int i = 0; i < 10; i++) TFREE(grown[i]);
  for (int i = 0; i < 4; i++) TFREE(inl_held[i]);
  for (int i = 0; i < 3; i++) TFREE(lib_held[i]);
  for (int i = 0; i < n_errors; i++) TFREE(errors[i]);
  return rc;
}
