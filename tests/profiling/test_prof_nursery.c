/* SPDX-License-Identifier: MIT */
/* The blocks of a scope kept in their thread's nursery (prof_nursery.c)
 * until freed or until the thread leaves the scope: the scope's figures
 * must stay exact whoever frees the block and when. Run without stacks
 * (SLUICE_PROF_RATE_NONE, and the default rate), where every scoped block
 * goes through the nursery: freed by another thread while the scope is
 * open, realloc'ed there, more blocks than the nursery's slots, a scope
 * ended on another thread than the one that began it, a thread that exits
 * inside its scope, many threads exchanging blocks, fork. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "prof_test.h"

static uint64_t t_now;
static uint64_t test_clock(void *user) {
  (void)user;
  return __atomic_load_n(&t_now, __ATOMIC_RELAXED);
}

static void start(size_t rate) {
  sluice_prof_opts o = {
      .sample_rate = rate,
      .grace_ms = 1000,
      .poll_ms = -1,
      .now_ns = test_clock,
  };
  assert_int_equal(sluice_prof_start(&o), 0);
}

static int setup_none(void **state) {
  (void)state;
  start(SLUICE_PROF_RATE_NONE);
  return 0;
}

static int setup_default(void **state) {
  (void)state;
  start(524288);
  return 0;
}

static void pass_grace(void) {
  __atomic_add_fetch(&t_now, 2000000000ull, __ATOMIC_RELAXED);
  sluice_prof_poll();
}

static int get_stats(const char *queue, sluice_prof_residual_stats *out) {
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    if (!strcmp(v[i].queue, queue) && v[i].outcome == SLUICE_ACK) {
      *out = v[i];
      return 0;
    }
  memset(out, 0, sizeof *out);
  return -1;
}

static void usage(sluice_prof_scope s, uint64_t *b, uint64_t *n) {
  assert_int_equal(sluice_prof_scope_usage(s, b, n), 0);
}

/* ------------------------------------------------------------------------ */
/* Blocks freed on another thread while their scope is still open. */

typedef struct hand {
  void **v;
  size_t n;
} hand;

static void *free_them(void *arg) {
  hand *h = arg;
  for (size_t i = 0; i < h->n; i++) TFREE(h->v[i]);
  return NULL;
}

/* A thread started before the scope (pthread_create allocates, and would
 * do it inside the scope) that frees what it is handed when told. */
static sem_t go, done;
static void *(*g_fn)(void *);
static void *g_arg;

static void *freer(void *arg) {
  (void)arg;
  for (;;) {
    while (sem_wait(&go)) continue;
    if (!g_fn) return NULL;
    g_fn(g_arg);
    sem_post(&done);
  }
}

static pthread_t freer_th;
static void freer_start(void) {
  sem_init(&go, 0, 0);
  sem_init(&done, 0, 0);
  assert_int_equal(pthread_create(&freer_th, NULL, freer, NULL), 0);
}
__attribute__((unused)) static void on_freer(void *(*fn)(void *), void *arg) {
  g_fn = fn;
  g_arg = arg;
  sem_post(&go);
  while (sem_wait(&done)) continue;
}
static void freer_run(hand *h) {
  g_fn = free_them;
  g_arg = h;
  sem_post(&go);
  while (sem_wait(&done)) continue;
}
static void freer_stop(void) {
  g_fn = NULL;
  sem_post(&go);
  pthread_join(freer_th, NULL);
  sem_destroy(&go);
  sem_destroy(&done);
}

static void test_free_on_other_thread(void **state) {
  (void)state;
  freer_start();
  sluice_prof_scope s = sluice_prof_scope_begin("t.n.other", 1, 1);
  assert_true(s != 0);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  void *v[40];
  for (int i = 0; i < 40; i++) v[i] = TALLOC(100 + (size_t)i);
  /* Still inside the scope: the other thread frees 20 of them. */
  hand h = {v, 20};
  freer_run(&h);
  /* This thread frees 10 more, still inside. */
  for (int i = 20; i < 30; i++) TFREE(v[i]);
  uint64_t b, n, want = 0;
  for (int i = 30; i < 40; i++) want += 100 + (uint64_t)i;
  usage(s, &b, &n);
  assert_int_equal(b, want);
  assert_int_equal(n, 10);
  sluice_prof_scope_enter(prev);
  sluice_prof_residual r;
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, &r), 0);
  assert_int_equal(r.bytes, want);
  assert_int_equal(r.objects, 10);
  /* The rest freed by the other thread after the end. */
  h = (hand){v + 30, 10};
  freer_run(&h);
  freer_stop();
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.other", &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.retained_objects, 0);
  pass_grace();
  assert_int_equal(get_stats("t.n.other", &st), 0);
  assert_int_equal(st.cached, 1);
}

/* ------------------------------------------------------------------------ */
/* More blocks than the nursery has slots: the ones it cannot keep go to
 * the block table; frees find each where it is. */

static void test_many_blocks(void **state) {
  (void)state;
  enum { N = 1000 };
  static void *v[N];
  freer_start();
  sluice_prof_scope s = sluice_prof_scope_begin("t.n.many", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  for (int i = 0; i < N; i++) v[i] = TALLOC(16 + (size_t)(i % 7));
  uint64_t b, n, want = 0;
  for (int i = 0; i < N; i++) want += 16 + (uint64_t)(i % 7);
  usage(s, &b, &n);
  assert_int_equal(b, want);
  assert_int_equal(n, N);
  /* Every other one freed here, in the scope; every fourth by another
   * thread. */
  for (int i = 0; i < N; i += 2) {
    TFREE(v[i]);
    want -= 16 + (uint64_t)(i % 7);
  }
  static void *odd[N / 4];
  size_t k = 0;
  for (int i = 1; i < N; i += 4) {
    odd[k++] = v[i];
    want -= 16 + (uint64_t)(i % 7);
    v[i] = NULL;
  }
  hand h = {odd, k};
  freer_run(&h);
  usage(s, &b, &n);
  assert_int_equal(b, want);
  assert_int_equal(n, N - N / 2 - k);
  sluice_prof_scope_enter(prev);
  sluice_prof_residual r;
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, &r), 0);
  assert_int_equal(r.bytes, want);
  for (int i = 1; i < N; i += 2)
    if (v[i]) TFREE(v[i]);
  freer_stop();
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.many", &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.retained_objects, 0);
}

/* ------------------------------------------------------------------------ */
/* realloc of a nursery block, on its thread and on another. */

#ifndef SLUICE_TEST_NO_INTERPOSE
static void *grow_it(void *arg) {
  void **p = arg;
  *p = realloc(*p, 4000);
  return NULL;
}
#endif

static void test_nursery_realloc(void **state) {
  (void)state;
#ifdef SLUICE_TEST_NO_INTERPOSE
  skip(); /* realloc is seen only when malloc is replaced */
#else
  freer_start();
  sluice_prof_scope s = sluice_prof_scope_begin("t.n.realloc", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  char *a = malloc(100), *c = malloc(50);
  a = realloc(a, 300); /* the scope's own growth */
  uint64_t b, n;
  usage(s, &b, &n);
  assert_int_equal(b, 350);
  assert_int_equal(n, 2);
  /* Grown by a thread outside any scope: the block keeps its owner for
   * the bytes it had (the growth is nobody's). */
  void *cv = c;
  on_freer(grow_it, &cv);
  freer_stop();
  usage(s, &b, &n);
  assert_int_equal(b, 350);
  assert_int_equal(n, 2);
  sluice_prof_scope_enter(prev);
  sluice_prof_residual r;
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, &r), 0);
  assert_int_equal(r.bytes, 350);
  free(a);
  free(cv);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.realloc", &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.retained_objects, 0);
#endif
}

/* ------------------------------------------------------------------------ */
/* Begun and left on one thread, ended on another (a deferred delivery). */

static sluice_prof_scope g_scope;
static sluice_prof_residual g_res;

static void *end_it(void *arg) {
  (void)arg;
  assert_int_equal(sluice_prof_scope_end(g_scope, SLUICE_ACK, &g_res), 0);
  return NULL;
}

static void test_end_on_other_thread(void **state) {
  (void)state;
  g_scope = sluice_prof_scope_begin("t.n.end", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(g_scope);
  void *keep = TALLOC(64), *gone = TALLOC(32);
  TFREE(gone);
  sluice_prof_scope_enter(prev);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, end_it, NULL), 0);
  pthread_join(th, NULL);
  assert_int_equal(g_res.bytes, 64);
  assert_int_equal(g_res.objects, 1);
  TFREE(keep);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.end", &st), 0);
  assert_int_equal(st.retained_bytes, 0);
}

/* ------------------------------------------------------------------------ */
/* A thread that exits inside its scope: what it kept is counted. */

static void *exit_inside(void *arg) {
  void **keep = arg;
  sluice_prof_scope_enter(g_scope);
  keep[0] = TALLOC(200);
  keep[1] = TALLOC(300);
  void *x = TALLOC(5);
  TFREE(x);
  return NULL; /* still in the scope */
}

static void test_thread_exit_in_scope(void **state) {
  (void)state;
  g_scope = sluice_prof_scope_begin("t.n.exit", 1, 1);
  void *keep[2];
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, exit_inside, keep), 0);
  pthread_join(th, NULL);
  sluice_prof_residual r;
  assert_int_equal(sluice_prof_scope_end(g_scope, SLUICE_ACK, &r), 0);
  assert_int_equal(r.bytes, 500);
  assert_int_equal(r.objects, 2);
  TFREE(keep[0]);
  TFREE(keep[1]);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.exit", &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.retained_objects, 0);
}

/* ------------------------------------------------------------------------ */
/* Threads in their own scopes, each freeing its neighbour's blocks while
 * both scopes are open (a ring of mailboxes). */

enum { THREADS = 4, ROUNDS = 300, PER = 8 };
static void *_Atomic mailbox[THREADS][PER];
static uint64_t kept_b[THREADS];
static void *leaks[THREADS][ROUNDS / 50 + 1];

static void *ring_worker(void *arg) {
  int me = (int)(intptr_t)arg, next = (me + 1) % THREADS;
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  char q[32];
  snprintf(q, sizeof q, "t.n.ring%d", me);
  for (int r = 0; r < ROUNDS; r++) {
    sluice_delivery_info info = {
        q, (uint64_t)r + 1, 1, (uint64_t)r + 1, 0, NULL, NULL};
    void *tok = hk->begin(hk->user, &info);
    for (int i = 0; i < PER; i++) {
      void *p = TALLOC(24 + (size_t)i);
      void *old = atomic_exchange(&mailbox[next][i], p);
      if (old) TFREE(old); /* a block of some other thread's scope */
      void *mine = atomic_exchange(&mailbox[me][i], NULL);
      if (mine) TFREE(mine);
    }
    if (r % 50 == 0) { /* a small leak, kept until the process exits */
      kept_b[me] += 8;
      leaks[me][r / 50] = TALLOC(8);
    }
    hk->suspend(hk->user, tok);
    hk->end(hk->user, tok, &info, SLUICE_ACK);
  }
  return NULL;
}

static void test_ring_of_threads(void **state) {
  (void)state;
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++)
    assert_int_equal(
        pthread_create(&th[i], NULL, ring_worker, (void *)(intptr_t)i), 0);
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < THREADS; i++)
    for (int k = 0; k < PER; k++) {
      void *p = atomic_exchange(&mailbox[i][k], NULL);
      if (p) TFREE(p);
    }
  /* Every mailbox block was freed: only the deliberate leaks remain. */
  uint64_t total = 0, want = 0;
  for (int i = 0; i < THREADS; i++) {
    char q[32];
    snprintf(q, sizeof q, "t.n.ring%d", i);
    sluice_prof_residual_stats st;
    assert_int_equal(get_stats(q, &st), 0);
    assert_true(st.messages >= ROUNDS);
    total += st.retained_bytes;
    want += kept_b[i];
  }
  assert_int_equal(total, want);
}

/* ------------------------------------------------------------------------ */
/* fork() with blocks in the nursery: the child goes on with them. */

static void test_fork(void **state) {
  (void)state;
  sluice_prof_scope s = sluice_prof_scope_begin("t.n.fork", 1, 1);
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  void *a = TALLOC(111), *b = TALLOC(222);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    TFREE(a);
    void *c = TALLOC(33);
    uint64_t ub = 0, un = 0;
    int ok = sluice_prof_scope_usage(s, &ub, &un) == 0 && ub == 255 && un == 2;
    sluice_prof_scope_enter(prev);
    sluice_prof_residual r;
    ok = ok && sluice_prof_scope_end(s, SLUICE_ACK, &r) == 0 &&
         r.bytes == 255 && r.objects == 2;
    TFREE(b);
    TFREE(c);
    _exit(ok ? 0 : 1);
  }
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  TFREE(b);
  uint64_t ub, un;
  usage(s, &ub, &un);
  assert_int_equal(ub, 111);
  assert_int_equal(un, 1);
  sluice_prof_scope_enter(prev);
  sluice_prof_residual r;
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, &r), 0);
  assert_int_equal(r.bytes, 111);
  TFREE(a);
}

/* ------------------------------------------------------------------------ */
/* Scopes that end with nothing live are accounted without the scope lock
 * (prof_scope.c, "Clean ends"): the figures read afterwards are the same. */

static void one_delivery(const char *queue, uint64_t seq, size_t leak,
                         void **kept) {
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  sluice_delivery_info info = {queue, seq, 1, seq, 0, NULL, NULL};
  void *tok = hk->begin(hk->user, &info);
  assert_non_null(tok);
  void *a = TALLOC(64), *b = TALLOC(300);
  TFREE(a);
  TFREE(b);
  if (leak) *kept = TALLOC(leak);
  hk->suspend(hk->user, tok);
  __atomic_add_fetch(&t_now, 1000000ull, __ATOMIC_RELAXED);
  hk->end(hk->user, tok, &info, SLUICE_ACK);
}

static void test_clean_ends_counted(void **state) {
  (void)state;
  static int run;
  char q[32];
  snprintf(q, sizeof q, "t.n.clean%d", run++);
  static void *kept[100];
  size_t k = 0;
  for (uint64_t i = 0; i < 1000; i++)
    one_delivery(q, i + 1, i % 10 == 9 ? 16 : 0, &kept[k]), k += i % 10 == 9;
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats(q, &st), 0);
  assert_int_equal(st.messages, 1000);
  assert_int_equal(st.with_residual, 100);
  assert_int_equal(st.bytes_at_end, 1600);
  assert_int_equal(st.retained_bytes, 1600);
  assert_int_equal(st.retained_objects, 100);
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.scopes_open, 0);
  for (size_t i = 0; i < k; i++) TFREE(kept[i]);
  pass_grace();
  assert_int_equal(get_stats(q, &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.cached, 100);
  assert_int_equal(st.leaked, 0);
  /* A handle ends once, whichever path ends it. */
  sluice_prof_scope s = sluice_prof_scope_begin(q, 1, 1);
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, NULL), 0);
  assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, NULL), SLUICE_EINVAL);
  uint64_t b, n;
  assert_int_equal(sluice_prof_scope_usage(s, &b, &n), SLUICE_EINVAL);
}

/* A pool of 16 slots and 2,000 messages: ended slots waiting to be
 * accounted are given back when a begin needs one. */
static int setup_small_pool(void **state) {
  (void)state;
  sluice_prof_opts o = {
      .sample_rate = SLUICE_PROF_RATE_NONE,
      .max_scopes = 16,
      .max_pending = 8,
      .poll_ms = -1,
      .now_ns = test_clock,
  };
  assert_int_equal(sluice_prof_start(&o), 0);
  /* The pool's size is fixed at the first start in a process: these tests
   * run in a process of their own (main: "small-pool"). Check that the
   * pool really is small: 17 scopes open at once cannot all get a slot
   * (with the default pool none would be refused). */
  sluice_prof_memstats before, after;
  sluice_prof_memstats_read(&before);
  sluice_prof_scope open[17];
  for (int i = 0; i < 17; i++)
    open[i] = sluice_prof_scope_begin("t.n.poolsize", 1, (uint64_t)i + 1);
  sluice_prof_memstats_read(&after);
  for (int i = 0; i < 17; i++)
    if (open[i]) assert_int_equal(sluice_prof_scope_end(open[i], 0, NULL), 0);
  assert_true(after.scopes_refused > before.scopes_refused);
  return 0;
}

static void test_clean_ends_small_pool(void **state) {
  (void)state;
  sluice_prof_memstats before, after;
  sluice_prof_memstats_read(&before);
  for (uint64_t i = 0; i < 2000; i++) one_delivery("t.n.pool", i + 1, 0, NULL);
  sluice_prof_memstats_read(&after);
  assert_int_equal(after.scopes_refused, before.scopes_refused);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.pool", &st), 0);
  assert_int_equal(st.messages, 2000);
}

/* Threads end their scopes into queues of their own and exit with ends
 * not yet accounted. */
static void *clean_worker(void *arg) {
  (void)arg;
  for (uint64_t i = 0; i < 500; i++)
    one_delivery("t.n.threads", i + 1, 0, NULL);
  return NULL;
}

static void test_clean_ends_threads(void **state) {
  (void)state;
  pthread_t th[4];
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&th[i], NULL, clean_worker, NULL), 0);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.threads", &st), 0);
  assert_int_equal(st.messages, 2000);
  assert_int_equal(st.with_residual, 0);
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.scopes_open, 0);
}


/* ------------------------------------------------------------------------ */
/* A deferred delivery completed while a worker is still inside its scope:
 * the worker's block, kept in its nursery and pending credits until it
 * leaves, belongs to the ended scope (its group), never to the message that
 * reuses the slot (a freed slot is the first a begin takes). */

static sem_t late_in, late_go;
static void *late_block;

static void *late_worker(void *arg) {
  sluice_prof_scope s = *(sluice_prof_scope *)arg;
  sluice_prof_scope prev = sluice_prof_scope_enter(s);
  late_block = TALLOC(100);
  void *x = TALLOC(40);
  TFREE(x);
  sem_post(&late_in);
  while (sem_wait(&late_go)) {
  }
  sluice_prof_scope_enter(prev); /* leaves after the scope has ended */
  return NULL;
}

static void test_end_while_inside(void **state) {
  (void)state;
  assert_int_equal(sem_init(&late_in, 0, 0), 0);
  assert_int_equal(sem_init(&late_go, 0, 0), 0);
  sluice_prof_scope s1 = sluice_prof_scope_begin("t.n.late1", 1, 1);
  assert_true(s1 != 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, late_worker, &s1), 0);
  while (sem_wait(&late_in)) {
  }
  sluice_prof_residual r1, r2;
  /* Completed on this thread while the worker is still inside. */
  assert_int_equal(sluice_prof_scope_end(s1, SLUICE_ACK, &r1), 0);
  sluice_prof_poll();
  /* The next messages (the slot of s1 would be first in line). */
  sluice_prof_scope s2 = sluice_prof_scope_begin("t.n.late2", 2, 2);
  assert_true(s2 != 0);
  sem_post(&late_go);
  pthread_join(th, NULL);
  assert_int_equal(sluice_prof_scope_end(s2, SLUICE_ACK, &r2), 0);
  assert_int_equal(r2.bytes, 0);
  assert_int_equal(r2.objects, 0);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.late1", &st), 0);
  assert_int_equal(st.retained_bytes, 100);
  assert_int_equal(st.retained_objects, 1);
  assert_int_equal(get_stats("t.n.late2", &st), 0);
  assert_int_equal(st.with_residual, 0);
  assert_int_equal(st.retained_bytes, 0);
  TFREE(late_block);
  pass_grace();
  assert_int_equal(get_stats("t.n.late1", &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.retained_objects, 0);
  assert_int_equal(get_stats("t.n.late2", &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.retained_objects, 0);
  /* The slot is given back once the worker has left: a small pool still
   * serves many messages. */
  sluice_prof_memstats before, ms;
  sluice_prof_memstats_read(&before);
  for (uint64_t i = 0; i < 100; i++) one_delivery("t.n.late3", i + 1, 0, NULL);
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.scopes_open, 0);
  assert_int_equal(ms.scopes_refused, before.scopes_refused);
  sem_destroy(&late_in);
  sem_destroy(&late_go);
}

/* ------------------------------------------------------------------------ */
/* Begins without the scope lock (prof_scope.c, "The thread's scope
 * record"): a thread keeps the slot of its last clean end and caches
 * (queue, key value) -> kind; the figures stay exact across threads, key
 * values evicted while another thread has them cached, threads that exit
 * with a kept slot, fork. */

static void keyed_delivery(const char *queue, const char *key, uint64_t seq,
                           size_t leak, void **kept) {
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  sluice_delivery_info info = {queue, seq, 1, seq, 0, "type", key};
  void *tok = hk->begin(hk->user, &info);
  assert_non_null(tok);
  void *a = TALLOC(48);
  TFREE(a);
  if (leak) *kept = TALLOC(leak);
  hk->suspend(hk->user, tok);
  __atomic_add_fetch(&t_now, 1000ull, __ATOMIC_RELAXED);
  hk->end(hk->user, tok, &info, SLUICE_ACK);
}

static int get_key_stats(const char *queue, const char *key,
                         sluice_prof_residual_stats *out) {
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    if (!strcmp(v[i].queue, queue) && !strcmp(v[i].key, key) &&
        v[i].outcome == SLUICE_ACK) {
      *out = v[i];
      return 0;
    }
  memset(out, 0, sizeof *out);
  return -1;
}

/* Messages of every row of `queue` (ACK). */
static uint64_t queue_messages(const char *queue) {
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  uint64_t m = 0;
  assert_true(n <= 64);
  for (size_t i = 0; i < n; i++)
    if (!strcmp(v[i].queue, queue) && v[i].outcome == SLUICE_ACK)
      m += v[i].messages;
  return m;
}

static const char *const cache_keys[] = {"probe", "push", "auth",
                                         "other", "bulk", "x"};
/* 600 messages, one in six a probe: at most 100 kept per worker. */
#define CACHE_KEPT 100
static void *cache_kept[4][CACHE_KEPT];
static char cache_q[32];

static void *cache_worker(void *arg) {
  int w = (int)(intptr_t)arg;
  size_t k = 0;
  for (uint64_t i = 0; i < 600; i++) {
    const char *key = cache_keys[(i + (uint64_t)w) % 6];
    int leak = !strcmp(key, "probe") && i % 2 == 0;
    keyed_delivery(cache_q, key, i + 1, leak ? 16 : 0,
                   leak ? &cache_kept[w][k] : NULL);
    k += leak;
  }
  return NULL;
}

static void test_cached_begins_threads(void **state) {
  (void)state;
  static int run;
  snprintf(cache_q, sizeof cache_q, "t.n.cache%d", run++);
  memset(cache_kept, 0, sizeof cache_kept);
  sluice_prof_memstats before, ms;
  sluice_prof_memstats_read(&before);
  pthread_t th[4];
  for (int i = 0; i < 4; i++)
    assert_int_equal(
        pthread_create(&th[i], NULL, cache_worker, (void *)(intptr_t)i), 0);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  uint64_t leaked = 0;
  for (int w = 0; w < 4; w++)
    for (uint64_t i = 0; i < 600; i++)
      leaked += !strcmp(cache_keys[(i + (uint64_t)w) % 6], "probe") &&
                i % 2 == 0;
  sluice_prof_residual_stats st;
  for (int k = 0; k < 6; k++) {
    assert_int_equal(get_key_stats(cache_q, cache_keys[k], &st), 0);
    assert_int_equal(st.messages, 400);
    if (!strcmp(cache_keys[k], "probe")) {
      assert_int_equal(st.with_residual, leaked);
      assert_int_equal(st.retained_bytes, 16 * leaked);
    } else {
      assert_int_equal(st.with_residual, 0);
      assert_int_equal(st.retained_bytes, 0);
    }
  }
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.scopes_open, 0);
  assert_int_equal(ms.scopes_refused, before.scopes_refused);
  for (int w = 0; w < 4; w++)
    for (int i = 0; i < CACHE_KEPT; i++)
      if (cache_kept[w][i]) TFREE(cache_kept[w][i]);
  pass_grace();
  assert_int_equal(get_key_stats(cache_q, "probe", &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.cached, leaked);
}

/* Two key values per queue: evictions run while another thread has a value
 * cached, with a scope of it open, then without. */
static int setup_two_keys(void **state) {
  (void)state;
  sluice_prof_opts o = {
      .sample_rate = SLUICE_PROF_RATE_NONE,
      .max_keys = 2,
      .grace_ms = 1000,
      .poll_ms = -1,
      .now_ns = test_clock,
  };
  assert_int_equal(sluice_prof_start(&o), 0);
  return 0;
}

static sem_t ev_ready, ev_go;
static void ev_wait(sem_t *s) {
  while (sem_wait(s)) {
  }
}

static void *evict_worker(void *arg) {
  (void)arg;
  const sluice_delivery_hooks *hk = sluice_prof_delivery_hooks();
  keyed_delivery("t.n.evict", "a", 1, 0, NULL); /* "a" cached, slot kept */
  sluice_delivery_info info = {"t.n.evict", 2, 1, 2, 0, "type", "a"};
  void *tok = hk->begin(hk->user, &info); /* through the cache */
  assert_non_null(tok);
  hk->suspend(hk->user, tok);
  sem_post(&ev_ready);
  ev_wait(&ev_go); /* evictions run meanwhile */
  hk->end(hk->user, tok, &info, SLUICE_ACK);
  keyed_delivery("t.n.evict", "a", 3, 0, NULL);
  sem_post(&ev_ready);
  ev_wait(&ev_go); /* "a" cached, no scope open: evicted meanwhile */
  keyed_delivery("t.n.evict", "a", 4, 0, NULL);
  return NULL;
}

static void test_cached_evict(void **state) {
  (void)state;
  assert_int_equal(sem_init(&ev_ready, 0, 0), 0);
  assert_int_equal(sem_init(&ev_go, 0, 0), 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, evict_worker, NULL), 0);
  ev_wait(&ev_ready);
  /* Many values, each once: "(other)" fills and evictions run; "a" has a
   * scope open (counted in the worker's cache): never evicted now. */
  char key[16];
  uint64_t total = 1;
  for (int i = 0; i < 64; i++, total++) {
    snprintf(key, sizeof key, "x%d", i);
    keyed_delivery("t.n.evict", key, (uint64_t)i + 10, 0, NULL);
  }
  sluice_prof_residual_stats st;
  assert_int_equal(get_key_stats("t.n.evict", "a", &st), 0);
  assert_int_equal(st.messages, 1);
  sem_post(&ev_go);
  ev_wait(&ev_ready);
  total += 2;
  assert_int_equal(get_key_stats("t.n.evict", "a", &st), 0);
  assert_int_equal(st.messages, 3);
  /* Now "a" is only cached: evicted, its kind given to a new value. */
  for (int i = 0; i < 64; i++, total++) {
    snprintf(key, sizeof key, "y%d", i);
    keyed_delivery("t.n.evict", key, (uint64_t)i + 100, 0, NULL);
  }
  assert_int_equal(get_key_stats("t.n.evict", "a", &st), -1);
  sem_post(&ev_go);
  pthread_join(th, NULL);
  total++;
  /* Each value's row counts its own messages: the worker's cached entry
   * did not count "a" in the kind that another value took over. */
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  assert_true(n <= 64);
  for (size_t i = 0; i < n; i++)
    if (!strcmp(v[i].queue, "t.n.evict") && v[i].outcome == SLUICE_ACK &&
        (v[i].key[0] == 'x' || v[i].key[0] == 'y'))
      assert_int_equal(v[i].messages, 1);
  assert_int_equal(queue_messages("t.n.evict"), total);
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.scopes_open, 0);
  assert_true(ms.keys_overflow > 0);
  sem_destroy(&ev_ready);
  sem_destroy(&ev_go);
}

/* Evictions racing cached begins: four threads deliver values of a queue
 * with room for two, so that every few messages one thread evicts a value
 * that the others have cached and may be beginning through at that moment
 * (the eviction's side of the busy handshake: a membarrier, or without it
 * the sequentially consistent exchange). Every message is counted once, in
 * the row of the value it was begun with, and none stays open. */
#define RACE_MSGS 3000
static const char *const race_keys[] = {"r0", "r1", "r2", "r3", "r4"};
static void *race_worker(void *arg) {
  int w = (int)(intptr_t)arg;
  for (uint64_t i = 0; i < RACE_MSGS; i++)
    keyed_delivery("t.n.evrace", race_keys[(i / (uint64_t)(w + 1)) % 5], i + 1,
                   0, NULL);
  return NULL;
}

static void test_cached_evict_race(void **state) {
  (void)state;
  sluice_prof_memstats before, ms;
  sluice_prof_memstats_read(&before);
  pthread_t th[4];
  for (int i = 0; i < 4; i++)
    assert_int_equal(
        pthread_create(&th[i], NULL, race_worker, (void *)(intptr_t)i), 0);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  assert_int_equal(queue_messages("t.n.evrace"), 4 * RACE_MSGS);
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.scopes_open, 0);
  assert_int_equal(ms.scopes_refused, before.scopes_refused);
  assert_true(ms.keys_overflow > before.keys_overflow);
  sluice_prof_residual_stats v[64];
  size_t n = sluice_prof_residual_stats_get(v, 64);
  assert_true(n <= 64);
  for (size_t i = 0; i < n; i++)
    if (!strcmp(v[i].queue, "t.n.evrace")) {
      assert_int_equal(v[i].with_residual, 0);
      assert_int_equal(v[i].retained_bytes, 0);
    }
}

/* Threads that exit with a slot kept and kinds cached give them back: 40
 * threads one after the other on a 16-slot pool. */
static void *exit_worker(void *arg) {
  (void)arg;
  for (uint64_t i = 0; i < 20; i++)
    keyed_delivery("t.n.exit", i % 2 ? "odd" : "even", i + 1, 0, NULL);
  return NULL;
}

static void test_cached_thread_exit(void **state) {
  (void)state;
  sluice_prof_memstats before, ms;
  sluice_prof_memstats_read(&before);
  for (int i = 0; i < 40; i++) {
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, exit_worker, NULL), 0);
    pthread_join(th, NULL);
  }
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.scopes_refused, before.scopes_refused);
  assert_int_equal(ms.scopes_open, 0);
  sluice_prof_residual_stats st;
  assert_int_equal(get_key_stats("t.n.exit", "odd", &st), 0);
  assert_int_equal(st.messages, 400);
  assert_int_equal(get_key_stats("t.n.exit", "even", &st), 0);
  assert_int_equal(st.messages, 400);
}

/* fork with this thread's cache warm and another thread's slot kept: the
 * child counts its own messages exactly and has its slots. */
static sem_t fk_ready, fk_go;
static void *fork_peer(void *arg) {
  (void)arg;
  for (uint64_t i = 0; i < 10; i++)
    keyed_delivery("t.n.cfork", "peer", i + 1, 0, NULL);
  sem_post(&fk_ready);
  ev_wait(&fk_go);
  return NULL;
}

static void test_cached_fork(void **state) {
  (void)state;
  assert_int_equal(sem_init(&fk_ready, 0, 0), 0);
  assert_int_equal(sem_init(&fk_go, 0, 0), 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, fork_peer, NULL), 0);
  ev_wait(&fk_ready);
  for (uint64_t i = 0; i < 10; i++)
    keyed_delivery("t.n.cfork", "main", i + 1, 0, NULL);
  sluice_prof_memstats at_fork;
  sluice_prof_memstats_read(&at_fork);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    void *kept = NULL;
    for (uint64_t i = 0; i < 100; i++)
      keyed_delivery("t.n.cfork", "main", i + 11, i == 50 ? 24 : 0, &kept);
    /* 16-slot pool: the peer's kept slot came back to the pool. */
    for (uint64_t i = 0; i < 100; i++)
      keyed_delivery("t.n.cfork", i % 2 ? "c1" : "c2", i + 1, 0, NULL);
    sluice_prof_residual_stats st;
    sluice_prof_memstats ms;
    int ok = get_key_stats("t.n.cfork", "main", &st) == 0 &&
             st.messages == 110 && st.retained_bytes == 24 &&
             get_key_stats("t.n.cfork", "peer", &st) == 0 && st.messages == 10;
    sluice_prof_memstats_read(&ms);
    ok = ok && ms.scopes_open == 0 &&
         ms.scopes_refused == at_fork.scopes_refused;
    TFREE(kept);
    _exit(ok ? 0 : 1);
  }
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  sem_post(&fk_go);
  pthread_join(th, NULL);
  sluice_prof_residual_stats rs;
  assert_int_equal(get_key_stats("t.n.cfork", "main", &rs), 0);
  assert_int_equal(rs.messages, 10);
  sem_destroy(&fk_ready);
  sem_destroy(&fk_go);
}

/* ------------------------------------------------------------------------ */
/* Sticky nurseries (prof_nursery.c): with a background thread (here one
 * that never wakes up by itself), a nursery stays counted as active across
 * its thread's scopes, and sluice_prof_poll() takes the count of an idle
 * one back. Exact figures whether the count was taken back between two
 * scopes, or a poll ran while the owner was inside one. */

static int setup_sticky(void **state) {
  (void)state;
  sluice_prof_opts o = {
      .sample_rate = SLUICE_PROF_RATE_NONE,
      .grace_ms = 1000,
      .poll_ms = 600000,
      .now_ns = test_clock,
  };
  assert_int_equal(sluice_prof_start(&o), 0);
  return 0;
}

static void *poll_once(void *arg) {
  (void)arg;
  sluice_prof_poll();
  return NULL;
}

static void test_sticky_revoke(void **state) {
  (void)state;
  freer_start();
  uint64_t want_b = 0;
  void *late[50][2];
  for (int r = 0; r < 50; r++) {
    sluice_prof_scope s = sluice_prof_scope_begin("t.n.sticky", 1, 1);
    assert_true(s != 0);
    sluice_prof_scope prev = sluice_prof_scope_enter(s);
    void *v[8];
    for (int i = 0; i < 8; i++) v[i] = TALLOC(40 + (size_t)i);
    /* Every third round a poll on the other thread while this one is
     * inside: its nursery is busy, its count stays. */
    if (r % 3 == 1) on_freer(poll_once, NULL);
    hand h = {v, 4}; /* freed there, from this thread's nursery */
    freer_run(&h);
    TFREE(v[4]);
    TFREE(v[5]);
    uint64_t b, n;
    usage(s, &b, &n);
    assert_int_equal(b, 46 + 47);
    assert_int_equal(n, 2);
    sluice_prof_scope_enter(prev);
    sluice_prof_residual res;
    assert_int_equal(sluice_prof_scope_end(s, SLUICE_ACK, &res), 0);
    assert_int_equal(res.bytes, 46 + 47);
    assert_int_equal(res.objects, 2);
    want_b += 46 + 47;
    late[r][0] = v[6];
    late[r][1] = v[7];
    /* Idle now: every other round its count is taken back, by a poll on
     * this thread or the other one. */
    if (r % 2 == 0) sluice_prof_poll();
    else if (r % 4 == 1) on_freer(poll_once, NULL);
  }
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.sticky", &st), 0);
  assert_int_equal(st.messages, 50);
  assert_int_equal(st.retained_bytes, want_b);
  for (int r = 0; r < 50; r++) {
    hand h = {late[r], 2};
    freer_run(&h);
  }
  freer_stop();
  assert_int_equal(get_stats("t.n.sticky", &st), 0);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(st.retained_objects, 0);
}

/* The ring of threads exchanging blocks while another thread polls without
 * pause: counts taken back and taken again race every scope's first
 * block and the frees of blocks that are in another thread's nursery. */
static atomic_int poller_stop;
static void *poller(void *arg) {
  (void)arg;
  while (!atomic_load(&poller_stop)) {
    sluice_prof_poll();
    sched_yield(); /* the workers run too (valgrind runs one thread at once) */
  }
  return NULL;
}

static void test_sticky_ring(void **state) {
  pthread_t pt;
  atomic_store(&poller_stop, 0);
  assert_int_equal(pthread_create(&pt, NULL, poller, NULL), 0);
  test_ring_of_threads(state);
  atomic_store(&poller_stop, 1);
  pthread_join(pt, NULL);
}

/* Threads that run a few scopes and exit while another thread polls
 * without pause: an exiting thread's nursery stops counting as active
 * while a poll may be taking the same count back (each taken once). */
static void *short_lived(void *arg) {
  int w = (int)(intptr_t)arg;
  for (uint64_t i = 0; i < 20; i++)
    one_delivery(w % 2 ? "t.n.sexit1" : "t.n.sexit0", i + 1, 0, NULL);
  return NULL;
}

static void test_sticky_exit(void **state) {
  (void)state;
  pthread_t pt;
  atomic_store(&poller_stop, 0);
  assert_int_equal(pthread_create(&pt, NULL, poller, NULL), 0);
  for (int r = 0; r < 10; r++) {
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
      assert_int_equal(
          pthread_create(&th[i], NULL, short_lived, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  }
  atomic_store(&poller_stop, 1);
  pthread_join(pt, NULL);
  sluice_prof_residual_stats st;
  assert_int_equal(get_stats("t.n.sexit0", &st), 0);
  assert_int_equal(st.messages, 400);
  assert_int_equal(st.retained_bytes, 0);
  assert_int_equal(get_stats("t.n.sexit1", &st), 0);
  assert_int_equal(st.messages, 400);
  sluice_prof_memstats ms;
  sluice_prof_memstats_read(&ms);
  assert_int_equal(ms.scopes_open, 0);
}

/* fork while this thread's nursery is sticky and idle: the child, which
 * has no background thread to take the count back, drops it; its scopes
 * stay exact. The child starts no thread (TSan does not support threads
 * started after a multi-threaded fork): no background thread there. */
static void test_sticky_fork(void **state) {
  (void)state;
  one_delivery("t.n.sfork", 1, 0, NULL); /* sticky, idle after */
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    sluice_prof_opts o = {.sample_rate = SLUICE_PROF_RATE_NONE,
                          .grace_ms = 1000,
                          .poll_ms = -1,
                          .now_ns = test_clock};
    int ok = sluice_prof_start(&o) == 0;
    for (uint64_t m = 2; m < 6; m++) {
      sluice_prof_scope s = sluice_prof_scope_begin("t.n.sfork", m, m);
      sluice_prof_scope prev = sluice_prof_scope_enter(s);
      void *v[4];
      for (int i = 0; i < 4; i++) v[i] = TALLOC(64);
      TFREE(v[0]);
      TFREE(v[1]);
      sluice_prof_scope_enter(prev);
      sluice_prof_residual r;
      ok = ok && sluice_prof_scope_end(s, SLUICE_ACK, &r) == 0 &&
           r.bytes == 128 && r.objects == 2;
      TFREE(v[2]);
      TFREE(v[3]);
    }
    sluice_prof_residual_stats st;
    ok = ok && get_stats("t.n.sfork", &st) == 0 && st.messages == 5 &&
         st.retained_bytes == 0;
    _exit(ok ? 0 : 1);
  }
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  one_delivery("t.n.sfork", 2, 0, NULL);
  sluice_prof_residual_stats rs;
  assert_int_equal(get_stats("t.n.sfork", &rs), 0);
  assert_int_equal(rs.messages, 2);
}

/* The tests on a 16-slot pool run in a process of their own (ctest
 * test_prof_nursery_small_pool): a pool's size is fixed at the first
 * sluice_prof_start() in a process. */
int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_free_on_other_thread, setup_none),
      cmocka_unit_test_setup(test_many_blocks, setup_none),
      cmocka_unit_test_setup(test_many_blocks, setup_default),
      cmocka_unit_test_setup(test_nursery_realloc, setup_none),
      cmocka_unit_test_setup(test_end_on_other_thread, setup_none),
      cmocka_unit_test_setup(test_thread_exit_in_scope, setup_none),
      cmocka_unit_test_setup(test_ring_of_threads, setup_none),
      cmocka_unit_test_setup(test_ring_of_threads, setup_default),
      cmocka_unit_test_setup(test_fork, setup_none),
      cmocka_unit_test_setup(test_clean_ends_counted, setup_none),
      cmocka_unit_test_setup(test_clean_ends_counted, setup_default),
      cmocka_unit_test_setup(test_clean_ends_threads, setup_none),
      cmocka_unit_test_setup(test_cached_begins_threads, setup_none),
      cmocka_unit_test_setup(test_cached_begins_threads, setup_default),
      cmocka_unit_test_setup(test_cached_evict, setup_two_keys),
      cmocka_unit_test_setup(test_cached_evict_race, setup_two_keys),
      cmocka_unit_test_setup(test_sticky_revoke, setup_sticky),
      cmocka_unit_test_setup(test_sticky_ring, setup_sticky),
      cmocka_unit_test_setup(test_sticky_exit, setup_sticky),
      cmocka_unit_test_setup(test_sticky_fork, setup_sticky),
      cmocka_unit_test_setup(test_cached_begins_threads, setup_sticky),
      cmocka_unit_test_setup(test_many_blocks, setup_sticky),
  };
  const struct CMUnitTest small_pool[] = {
      cmocka_unit_test_setup(test_clean_ends_small_pool, setup_small_pool),
      cmocka_unit_test_setup(test_end_while_inside, setup_small_pool),
      cmocka_unit_test_setup(test_cached_thread_exit, setup_small_pool),
      cmocka_unit_test_setup(test_cached_fork, setup_small_pool),
  };
  if (argc > 1 && strcmp(argv[1], "small-pool") == 0)
    return cmocka_run_group_tests(small_pool, NULL, NULL);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
