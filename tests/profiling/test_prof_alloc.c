/* SPDX-License-Identifier: MIT */
/* The malloc interposition itself (not built under ASan/TSan): every
 * allocation function, realloc growth charged to the growing scope,
 * pointers the profiler never saw, errno, fork (with the profiler's
 * thread running). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "prof_internal.h" /* SLUICE__TAG_ALIGN, SLUICE__TAG_MIN_RATE */
#include "prof_test.h"

/* Sizes no allocator can satisfy, hidden from the compiler's checks. */
static volatile size_t huge = SIZE_MAX / 2;

static _Atomic int after_grace_seen;

static void on_residual(const sluice_prof_residual *r, void *user) {
  (void)user;
  if (r->after_grace) after_grace_seen++;
}

static int setup(void **state) {
  (void)state;
  sluice_prof_opts o = {.sample_rate = 1,
                        .grace_ms = 1000,
                        .leak_window = 10,
                        .horizon_messages = 50,
                        .horizon_ms = 500,
                        .on_residual = on_residual,
                        .now_ns = t_clock};
  assert_int_equal(sluice_prof_start(&o), 0);
  return 0;
}

static void pass_grace(void) {
  t_clock_ns += 2000000000ull;
  sluice_prof_poll();
}

static void usage(sluice_prof_scope s, uint64_t *b, uint64_t *n) {
  assert_int_equal(sluice_prof_scope_usage(s, b, n), 0);
}

static void test_interposing(void **state) {
  (void)state;
  assert_int_equal(sluice_prof_interposing(), 1);
  assert_int_equal(sluice_prof_running(), 1);
  assert_int_equal(sluice_prof_sample_rate(), 1);
}

/* Every allocation function counts inside a scope, with its size. */
T_NOINLINE static void alloc_all_kinds(void **out) {
  assert_int_equal(posix_memalign(&out[0], 64, 100), 0);
  out[1] = aligned_alloc(64, 128);
  out[2] = memalign(32, 50);
  out[3] = valloc(10);
  out[4] = pvalloc(10);
  out[5] = calloc(10, 10);
  out[6] = reallocarray(NULL, 3, 7);
}

static void test_all_allocators(void **state) {
  (void)state;
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  void *p[7];
  sluice_prof_scope s = sluice_prof_scope_begin("a.kinds", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  alloc_all_kinds(p);
  sluice_prof_scope_enter(prev);
  assert_int_equal((uintptr_t)p[0] % 64, 0);
  assert_int_equal((uintptr_t)p[1] % 64, 0);
  assert_int_equal((uintptr_t)p[2] % 32, 0);
  assert_int_equal((uintptr_t)p[3] % ps, 0);
  assert_int_equal((uintptr_t)p[4] % ps, 0);
  for (int i = 0; i < 10 * 10; i++) assert_int_equal(((char *)p[5])[i], 0);
  uint64_t b, n;
  usage(s, &b, &n);
  assert_int_equal(n, 7);
  assert_int_equal(b, 100 + 128 + 50 + 10 + ps + 100 + 21);
  for (int i = 0; i < 7; i++) {
    assert_true(malloc_usable_size(p[i]) >= 10);
    free(p[i]);
  }
  usage(s, &b, &n);
  assert_int_equal(n, 0);
  assert_int_equal(b, 0);

  /* Failures count nothing. */
  void *bad = NULL;
  prev = sluice_prof_scope_enter(s);
  assert_int_equal(posix_memalign(&bad, 3, 10), EINVAL);
  errno = 0;
  assert_null(reallocarray(NULL, huge, 4));
  assert_int_equal(errno, ENOMEM);
  sluice_prof_scope_enter(prev);
  usage(s, &b, &n);
  assert_int_equal(n, 0);
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, NULL), 0);
  assert_int_equal(malloc_usable_size(NULL), 0);
}

static uint64_t retained_of(const char *queue) {
  sluice_prof_residual_stats st[16];
  size_t n = sluice_prof_residual_stats_get(st, 16);
  uint64_t retained = 0;
  for (size_t i = 0; i < n && i < 16; i++)
    if (!strcmp(st[i].queue, queue)) retained += st[i].retained_bytes;
  return retained;
}

/* realloc: the bytes a scope adds to a block are that scope's, whoever
 * owns the rest; a shrink takes bytes back from the top. */
static void test_realloc_growth(void **state) {
  (void)state;
  sluice_prof_scope a = sluice_prof_scope_begin("a.realloc", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(a);
  char *p = malloc(10);
  memset(p, 1, 10);
  sluice_prof_scope_enter(prev);
  sluice_prof_residual r;
  assert_int_equal(sluice_prof_scope_end(a, SLUICE_ACK, &r), 0);
  assert_int_equal(r.bytes, 10);

  /* Grown inside another message: the growth is that message's. */
  sluice_prof_scope b = sluice_prof_scope_begin("a.realloc", 2, 2);
  prev = sluice_prof_scope_enter(b);
  p = realloc(p, 100000); /* moves */
  memset(p, 2, 100000);
  sluice_prof_scope_enter(prev);
  assert_int_equal(sluice_prof_scope_end(b, SLUICE_ACK, &r), 0);
  assert_int_equal(r.bytes, 99990);
  assert_int_equal(r.objects, 0);
  assert_int_equal(retained_of("a.realloc"), 100000);

  /* A shrink in a third message takes back from the top (b's growth). */
  sluice_prof_scope c = sluice_prof_scope_begin("a.realloc", 3, 3);
  prev = sluice_prof_scope_enter(c);
  p = realloc(p, 50000);
  sluice_prof_scope_enter(prev);
  assert_int_equal(sluice_prof_scope_end(c, SLUICE_ACK, &r), 0);
  assert_int_equal(r.bytes, 0);
  pass_grace();
  assert_int_equal(retained_of("a.realloc"), 50000);

  /* A failed realloc leaves the block and its accounting alone. */
  errno = 0;
  assert_null(realloc(p, huge));
  assert_int_equal(errno, ENOMEM);
  assert_int_equal(retained_of("a.realloc"), 50000);

  /* realloc to 0 frees every layer. */
  assert_null(realloc(p, 0));
  assert_int_equal(retained_of("a.realloc"), 0);
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.ledgers, 0);

  /* A block allocated outside any scope and grown inside one: the scope
   * owns what it added (the size before is what malloc_usable_size says
   * of a block the profiler never saw). */
  sluice_prof_stop();
  char *q = malloc(10);
  setup(NULL);
  size_t before = malloc_usable_size(q);
  sluice_prof_scope d = sluice_prof_scope_begin("a.realloc2", 4, 4);
  prev = sluice_prof_scope_enter(d);
  q = realloc(q, 500);
  sluice_prof_scope_enter(prev);
  uint64_t bytes, objects;
  usage(d, &bytes, &objects);
  assert_int_equal(bytes, 500 - before);
  assert_int_equal(objects, 0);
  free(q);
  usage(d, &bytes, &objects);
  assert_int_equal(bytes, 0);
  assert_int_equal(sluice_prof_scope_end(d, SLUICE_ACK, &r), 0);
  assert_int_equal(r.bytes, 0);
}

/* A log buffer grown 64 bytes per message by every message: 64 B/message
 * at the realloc site, whatever the number of growers. */
static char *g_log;
static size_t g_log_len;

T_NOINLINE static void log_append(int i) {
  g_log = realloc(g_log, g_log_len + 64);
  memset(g_log + g_log_len, i, 64);
  g_log_len += 64;
}

static void test_realloc_log_buffer(void **state) {
  (void)state;
  g_log = malloc(64); /* before any message */
  g_log_len = 64;
  for (int i = 0; i < 200; i++) {
    sluice_prof_scope s = sluice_prof_scope_begin("a.log", (uint64_t)i, 0);
    sluice_prof_scope prev = sluice_prof_scope_enter(s);
    log_append(i);
    sluice_prof_scope_enter(prev);
    sluice_prof_residual r;
    assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, &r), 0);
    if (r.bytes != 64)
      fprintf(stderr, "i=%d bytes=%llu\n", i, (unsigned long long)r.bytes);
    assert_int_equal(r.bytes, 64); /* each message own growth */
    t_clock_ns += 10000000ull;
  }
  sluice_prof_residual_stats st[16];
  size_t n = sluice_prof_residual_stats_get(st, 16);
  const sluice_prof_residual_stats *lg = NULL;
  for (size_t i = 0; i < n && i < 16; i++)
    if (!strcmp(st[i].queue, "a.log")) lg = &st[i];
  assert_non_null(lg);
  assert_int_equal(lg->retained_bytes, 200 * 64);
  assert_int_equal(lg->retained_objects, 0);
  assert_int_equal(lg->state, SLUICE_PROF_LEAK);
  assert_true(lg->bytes_per_message > 63.9 && lg->bytes_per_message < 64.1);

  /* The site is the realloc's. */
  tbuf out = {0};
  sluice_prof_output o = {.format = SLUICE_PROF_FMT_RESIDUAL, .queue = "a.log"};
  assert_int_equal(sluice_prof_write(NULL, &o, tbuf_write, &out), 0);
  assert_non_null(strstr(tbuf_str(&out), "log_append"));
  tbuf_free(&out);

  free(g_log);
  g_log = NULL;
  assert_int_equal(retained_of("a.log"), 0);
  n = sluice_prof_residual_stats_get(st, 16);
  for (size_t i = 0; i < n && i < 16; i++)
    if (!strcmp(st[i].queue, "a.log"))
      assert_int_equal(st[i].state, SLUICE_PROF_OK);
}

/* Pointers the profiler never saw go straight to glibc. */
static void test_untracked_pointer(void **state) {
  (void)state;
  sluice_prof_stop();
  char *old = malloc(100); /* not recorded */
  char *old2 = malloc(200);
  memset(old, 1, 100);
  setup(NULL);
  sluice_prof_memstats before, after;
  sluice_prof_memstats_read(&before);
  sluice_prof_scope s = sluice_prof_scope_begin("a.untracked", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  free(old);                /* freed inside a scope it never belonged to */
  old2 = realloc(old2, 10); /* shrunk inside: nothing added, nothing owed */
  sluice_prof_scope_enter(prev);
  uint64_t b, n;
  usage(s, &b, &n);
  assert_int_equal(b, 0);
  assert_int_equal(n, 0);
  free(old2);
  usage(s, &b, &n);
  assert_int_equal(b, 0);
  assert_int_equal(n, 0);
  sluice_prof_memstats_read(&after);
  assert_int_equal(after.tracked_blocks, before.tracked_blocks);
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, NULL), 0);
}

static void test_errno_preserved(void **state) {
  (void)state;
  sluice_prof_scope s = sluice_prof_scope_begin("a.errno", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  char *p = malloc(10);
  p[0] = 0;
  sluice_prof_scope_enter(prev);
  errno = 1234;
  free(p); /* tracked: the table is visited */
  assert_int_equal(errno, 1234);
  sluice_prof_stop();
  char *q = malloc(10);
  q[0] = 0;
  setup(NULL);
  errno = 4321;
  free(q); /* untracked */
  assert_int_equal(errno, 4321);
  free(NULL);
  assert_int_equal(errno, 4321);
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, NULL), 0);
}

/* The counters behind MemStats. */
static void test_memstats(void **state) {
  (void)state;
  sluice_prof_memstats a, b;
  sluice_prof_memstats_read(&a);
  void *v[100];
  for (int i = 0; i < 100; i++) v[i] = malloc(1000);
  sluice_prof_memstats_read(&b);
  assert_true(b.mallocs - a.mallocs >= 100);
  assert_true(b.total_alloc_bytes - a.total_alloc_bytes >= 100000);
  assert_true(b.heap_live_bytes >= 100000);
  assert_true(b.rss_bytes > 0);
  assert_true(b.sampled_live_bytes >= 100000);
  assert_true(b.tracked_blocks >= 100);
  assert_true(b.stacks > 0);
  assert_true(b.overhead_bytes > 0);
  assert_int_equal(b.sample_rate, 1);
  for (int i = 0; i < 100; i++) free(v[i]);
  sluice_prof_memstats_read(&a);
  assert_true(a.frees - b.frees >= 100);
}

/* ------------------------------------------------------------------------ */
/* Sampled blocks outside scopes carry an address tag (SLUICE__TAG_ALIGN)
 * that lets free() skip the block table for every other block. */

static int setup_tag(void **state) {
  (void)state;
  sluice_prof_opts o = {.sample_rate = SLUICE__TAG_MIN_RATE, .now_ns = t_clock};
  assert_int_equal(sluice_prof_start(&o), 0);
  return 0;
}

static uint64_t tracked(void) {
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  return ms.tracked_blocks;
}

/* The next sampled block of n bytes (the table's count grew), filled with
 * `fill`; the blocks allocated before it are freed. Bounded. */
T_NOINLINE static char *next_sampled(size_t n, int fill) {
  uint64_t base = tracked();
  for (int i = 0; i < 200000; i++) {
    char *p = malloc(n);
    assert_non_null(p);
    if (tracked() > base) {
      memset(p, fill, n);
      return p;
    }
    free(p);
  }
  fail_msg("no block of %zu bytes sampled in 200000", n);
  return NULL;
}

static int all_bytes(const char *p, size_t n, int v) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (char)v) return 0;
  return 1;
}

static void *free_elsewhere(void *p) {
  free(p);
  return NULL;
}

/* A thread that frees, first of all (not registered yet). */
static void free_on_new_thread(void *p) {
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, free_elsewhere, p), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
}

static void test_sampled_tag(void **state) {
  (void)state;
  uint64_t base = tracked();
  size_t sizes[] = {24, 100, 1000, 5000};
  char *p[4];
  for (int i = 0; i < 4; i++) {
    p[i] = next_sampled(sizes[i], 'a' + i);
    assert_int_equal((uintptr_t)p[i] % SLUICE__TAG_ALIGN, 0);
    assert_true(malloc_usable_size(p[i]) >= sizes[i]);
  }
  assert_int_equal(tracked(), base + 4);
  /* realloc moves a tagged block to glibc's own, contents kept. */
  p[0] = realloc(p[0], 10);
  assert_true(all_bytes(p[0], 10, 'a'));
  p[1] = realloc(p[1], 50000);
  assert_true(all_bytes(p[1], 100, 'b'));
  free(p[0]);
  free(p[1]);
  /* Freed on another thread, unregistered: the first thing it does. */
  free_on_new_thread(p[2]);
  /* realloc to 0 frees (as glibc's does). */
  assert_null(realloc(p[3], 0));
  assert_int_equal(tracked(), base);

  /* A big one (sampled surely: 256 times the rate), mapped by glibc. */
  size_t big = (size_t)SLUICE__TAG_MIN_RATE * 256;
  char *b = malloc(big);
  assert_non_null(b);
  assert_int_equal((uintptr_t)b % SLUICE__TAG_ALIGN, 0);
  assert_true(malloc_usable_size(b) >= big);
  b[0] = 1;
  b[big - 1] = 2;
  assert_int_equal(tracked(), base + 1);
  free(b);
  /* calloc's sample is recorded where glibc put it (untagged): frees look
   * in the table while it lives, and find it. */
  char *c = calloc(1, big);
  assert_non_null(c);
  assert_true(all_bytes(c, 4096, 0) && all_bytes(c + big - 4096, 4096, 0));
  assert_int_equal(tracked(), base + 1);
  free(next_sampled(100, 'c')); /* a tagged one meanwhile */
  free_on_new_thread(c);
  assert_int_equal(tracked(), base);
}

/* Blocks that pass the address test without being sampled ones: aligned
 * allocations of the program's, and glibc blocks at such an address by
 * chance. Each is glibc's as it is (usable size, realloc, free). */
static void test_tag_lookalikes(void **state) {
  (void)state;
  uint64_t base = tracked();
  void *a[4];
  assert_int_equal(posix_memalign(&a[0], SLUICE__TAG_ALIGN, 100), 0);
  a[1] = aligned_alloc(SLUICE__TAG_ALIGN, SLUICE__TAG_ALIGN);
  a[2] = memalign(SLUICE__TAG_ALIGN, 0);
  a[3] = valloc(30);
  for (int i = 0; i < 4; i++) {
    assert_non_null(a[i]);
    assert_int_equal((uintptr_t)a[i] % SLUICE__TAG_ALIGN, 0);
    size_t u = malloc_usable_size(a[i]);
    assert_true(u < (size_t)SLUICE__TAG_ALIGN * 2);
    memset(a[i], 'x', u);
  }
  a[0] = realloc(a[0], 200);
  assert_true(all_bytes(a[0], 100, 'x'));
  free(a[0]);
  free_on_new_thread(a[1]);
  free(a[2]);
  a[3] = realloc(a[3], 20);
  assert_true(all_bytes(a[3], 20, 'x'));
  free(a[3]);
  /* Small glibc blocks at a tag address by chance (about 1 in 256):
   * allocate until some turn up, then free them all. Bounded. */
  enum { N = 20000 };
  static char *v[N];
  int chance = 0;
  uint64_t last = tracked();
  for (int i = 0; i < N; i++) {
    size_t n = 16 + (size_t)(i * 37) % 240; /* varied, so are the places */
    v[i] = malloc(n);
    assert_non_null(v[i]);
    memset(v[i], 'y', n);
    if ((uintptr_t)v[i] % SLUICE__TAG_ALIGN) continue;
    uint64_t now = tracked(); /* only a sampled block adds a record */
    if (now == last) {
      chance++; /* glibc's own block, where glibc put it */
      size_t u = malloc_usable_size(v[i]);
      assert_true(u >= n && u < n + 48);
    }
    last = now;
  }
  for (int i = 0; i < N; i++) free(v[i]);
  assert_true(chance > 0);
  assert_int_equal(tracked(), base);
}

/* MemStats counts every call exactly, whichever way free() goes. */
T_NOINLINE static void churn_counted(int n) {
  static char *ring[64];
  for (int i = 0; i < n; i++) {
    free(ring[i & 63]);
    ring[i & 63] = malloc(16 + (size_t)(i * 37) % 240);
  }
  for (int i = 0; i < 64; i++) {
    free(ring[i]);
    ring[i] = NULL;
  }
}

static uint64_t churn_bytes(int n) {
  uint64_t b = 0;
  for (int i = 0; i < n; i++) b += 16 + (uint64_t)(i * 37) % 240;
  return b;
}

static void *thread_churn(void *arg) {
  churn_counted((int)(intptr_t)arg);
  return NULL;
}

/* MemStats counts every call and byte exactly: whichever way free() goes,
 * inside scopes and out, on a thread that has exited. The bytes are the
 * countdown's progress (see cd_mark). */
static void test_tag_counts_exact(void **state) {
  (void)state;
  char *s = next_sampled(200, 's'); /* one tagged block live */
  char *c = calloc(1, (size_t)SLUICE__TAG_MIN_RATE * 256); /* and a loose one */
  sluice_prof_memstats a, b;
  sluice_prof_memstats_read(&a);
  churn_counted(100000);
  free(c);
  churn_counted(100000);
  s = realloc(s, 300);
  free(s);
  free(NULL); /* not counted */
  sluice_prof_memstats_read(&b);
  /* Each churn: n mallocs, n frees of non-NULL blocks (64 of them NULL
   * at the start, 64 freed at the end). */
  assert_int_equal(b.mallocs - a.mallocs, 2 * 100000 + 1);
  assert_int_equal(b.frees - a.frees, 2 * 100000 + 1 + 1 + 1);
  assert_int_equal(b.total_alloc_bytes - a.total_alloc_bytes,
                   2 * churn_bytes(100000) + 300);

  /* Inside a scope (the countdown armed), and around it. */
  sluice_prof_memstats_read(&a);
  sluice_prof_scope sc = sluice_prof_scope_begin("a.bytes", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(sc);
  churn_counted(5000);
  void *m = NULL;
  assert_int_equal(posix_memalign(&m, 64, 100), 0);
  char *z = calloc(10, 10);
  char *r = realloc(NULL, 77);
  r = realloc(r, 200);
  sluice_prof_scope_enter(prev);
  churn_counted(5000);
  free(m);
  free(z);
  free(r);
  assert_int_equal(sluice_prof_scope_end(sc, SLUICE_ACK, NULL), 0);
  sluice_prof_memstats_read(&b);
  assert_int_equal(b.mallocs - a.mallocs, 2 * 5000 + 4);
  assert_int_equal(b.frees - a.frees, 2 * 5000 + 3 + 1);
  assert_int_equal(b.total_alloc_bytes - a.total_alloc_bytes,
                   2 * churn_bytes(5000) + 100 + 100 + 77 + 200);

  /* A thread that counted and exited. */
  sluice_prof_memstats_read(&a);
  pthread_t th;
  assert_int_equal(
      pthread_create(&th, NULL, thread_churn, (void *)(intptr_t)3000), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  sluice_prof_memstats_read(&b);
  /* pthread_create's own allocations and frees (its stack, TLS) happen in
   * this thread and in glibc's, and are counted as well: at least the
   * churn's. */
  assert_true(b.mallocs - a.mallocs >= 3000);
  assert_true(b.total_alloc_bytes - a.total_alloc_bytes >= churn_bytes(3000));
  assert_int_equal((b.mallocs - a.mallocs) - (b.frees - a.frees),
                   (b.live_objects - a.live_objects));
}

/* A rate change reaches a thread that already runs a countdown within
 * SLUICE__STRETCH of its bytes (only its owner writes a countdown). */
static pthread_barrier_t rate_bar;

static void *rate_thread(void *arg) {
  (void)arg;
  free(malloc(1000));              /* a countdown under the first rate (none) */
  pthread_barrier_wait(&rate_bar); /* the rate changes */
  pthread_barrier_wait(&rate_bar);
  enum { N = (int)(SLUICE__STRETCH / 1000) + 16 }; /* a stretch, and some */
  static char *keep[N];
  uint64_t base = tracked();
  int i, seen = 0;
  for (i = 0; i < N && !seen; i++) {
    keep[i] = malloc(1000);
    seen = tracked() > base;
  }
  for (int j = 0; j < i; j++) free(keep[j]);
  return (void *)(intptr_t)seen;
}

static void test_rate_change_other_thread(void **state) {
  (void)state;
  sluice_prof_opts o = {.sample_rate = SLUICE_PROF_RATE_NONE,
                        .now_ns = t_clock};
  assert_int_equal(sluice_prof_start(&o), 0);
  assert_int_equal(pthread_barrier_init(&rate_bar, NULL, 2), 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, rate_thread, NULL), 0);
  pthread_barrier_wait(&rate_bar);
  o.sample_rate = 1;
  assert_int_equal(sluice_prof_start(&o), 0);
  pthread_barrier_wait(&rate_bar);
  void *seen = NULL;
  assert_int_equal(pthread_join(th, &seen), 0);
  assert_int_equal((intptr_t)seen, 1);
  pthread_barrier_destroy(&rate_bar);
}

/* fork(): the child allocates and frees while another thread of the parent
 * could hold the profiler's locks. */
static void test_fork(void **state) {
  (void)state;
  char *keep = malloc(10);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    sluice_prof_scope s = sluice_prof_scope_begin("a.child", 1, 1);
    sluice_prof_scope_enter(s);
    for (int i = 0; i < 1000; i++) free(malloc((size_t)i + 1));
    free(keep);
    sluice_prof_scope_enter(0);
    sluice_prof_residual r;
    int ok = sluice_prof_scope_end(s, SLUICE_ACK, &r) == 0 && r.bytes == 0;
    _exit(ok ? 0 : 1);
  }
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  free(keep);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_interposing, setup),
      cmocka_unit_test_setup(test_all_allocators, setup),
      cmocka_unit_test_setup(test_realloc_growth, setup),
      cmocka_unit_test_setup(test_realloc_log_buffer, setup),
      cmocka_unit_test_setup(test_untracked_pointer, setup),
      cmocka_unit_test_setup(test_errno_preserved, setup),
      cmocka_unit_test_setup(test_memstats, setup),
      cmocka_unit_test_setup(test_fork, setup),
      cmocka_unit_test_setup(test_sampled_tag, setup_tag),
      cmocka_unit_test_setup(test_tag_lookalikes, setup_tag),
      cmocka_unit_test_setup(test_tag_counts_exact, setup_tag),
      cmocka_unit_test(test_rate_change_other_thread),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
