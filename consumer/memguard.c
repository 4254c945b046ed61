/* SPDX-License-Identifier: MIT */
/* The memory guard: above a memory figure the consumer stops reading new
 * deliveries, and resumes below a lower one (memguard.h: the hysteresis and
 * how it combines with the in-flight bound). Here: where the figure comes
 * from, the periodic check on the loop, and the events. Loop thread, except
 * sluice_memory_read(). docs/consumer.md, "The memory guard".
 *
 * libsluice does not link the profiler (docs/architecture.md): the figure
 * comes from the options' reader, else from the delivery hooks' heap_read
 * (the profiler fills it in its hooks, and answers while it runs), else
 * from the allocator itself. */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "internal.h"

/* The sanitizers' count of the bytes they handed out and have not taken
 * back (quarantine excluded): under ASan and TSan malloc is theirs and
 * glibc's mallinfo2() sees nothing. Weak, so it is NULL unless a sanitizer
 * runtime is loaded, however this library was built. */
extern size_t __sanitizer_get_current_allocated_bytes(void)
    __attribute__((weak));

enum {
  SRC_NONE,
  SRC_READER,
  SRC_HOOKS,
  SRC_SANITIZER,
  SRC_MALLINFO2,
  SRC_MALLINFO,
  SRC_RSS
};

static const char *const src_names[] = {
    "", "reader", "hooks", "sanitizer", "mallinfo2", "mallinfo", "rss"};

const char *sluice__memguard_source_name(int src) {
  if (src < 0 || src > SRC_RSS) return "";
  return src_names[src];
}

/* ---- the default figure -------------------------------------------------- */

static uint64_t rss_bytes(void) {
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  char *e;
  (void)strtoull(buf, &e, 10); /* size, then resident */
  unsigned long long res = strtoull(e, NULL, 10);
  long page = sysconf(_SC_PAGESIZE);
  return (uint64_t)res * (uint64_t)(page > 0 ? page : 4096);
}

#if defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
/* glibc's lazy malloc setup is not thread-safe: where its malloc is never
 * otherwise called (valgrind replaces it), the first mallinfo2() is made
 * once, alone (the profiler's memstats do the same). */
static pthread_once_t mallinfo_once = PTHREAD_ONCE_INIT;
static void mallinfo_first(void) {
  (void)mallinfo2();
}
#endif

/* The live heap, from the allocator that serves malloc: a sanitizer's,
 * glibc's, or one that replaced glibc's and answers mallinfo() (valgrind
 * replaces mallinfo but not mallinfo2, whose glibc figure then stays 0,
 * as it does under ASan). 0 when none of them sees it. */
static uint64_t heap_bytes(int *src) {
  if (__sanitizer_get_current_allocated_bytes) {
    *src = SRC_SANITIZER;
    return __sanitizer_get_current_allocated_bytes();
  }
#if defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  pthread_once(&mallinfo_once, mallinfo_first);
  struct mallinfo2 m2 = mallinfo2();
  uint64_t live = (uint64_t)m2.uordblks + (uint64_t)m2.hblkhd;
  if (live) {
    *src = SRC_MALLINFO2;
    return live;
  }
#endif
#if defined(__GLIBC__)
  /* A process that allocated anything has a non-zero glibc figure, unless
   * malloc is not glibc's. mallinfo's fields are int: exact below 2 GiB. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  struct mallinfo m = mallinfo();
#pragma GCC diagnostic pop
  uint64_t old = (uint64_t)(unsigned)m.uordblks + (uint64_t)(unsigned)m.hblkhd;
  if (old) {
    *src = SRC_MALLINFO;
    return old;
  }
#endif
  return 0;
}

static int default_read(int use_rss, uint64_t *bytes, int *src) {
  uint64_t v = use_rss ? 0 : heap_bytes(src);
  if (!v) {
    v = rss_bytes();
    *src = SRC_RSS;
  }
  if (!v) return SLUICE_EIO;
  *bytes = v;
  return 0;
}

int sluice_memory_read(int use_rss, uint64_t *bytes, const char **source) {
  if (!bytes) return SLUICE_EINVAL;
  int src = SRC_NONE;
  int rc = default_read(use_rss, bytes, &src);
  if (source) *source = rc ? "" : src_names[src];
  return rc;
}

/* ---- the check ----------------------------------------------------------- */

/* The figure, from the options' reader, the hooks' or the default; the
 * source, or SRC_NONE when there is none. */
static int read_figure(sluice_consumer *c, uint64_t *bytes) {
  const sluice_memory_guard_opts *o = &c->o.memory_guard;
  int rc = 1;
  int src = SRC_NONE;
  sluice__cb_frame f;
  sluice__cb_enter(&f, c);
  if (o->read) {
    rc = o->read(o->read_user, bytes);
    src = SRC_READER;
  } else if (!o->use_rss && c->has_hooks && c->hooks.heap_read) {
    /* The profiler answers only while it runs: otherwise, quietly, the
     * default figure. */
    rc = c->hooks.heap_read(c->hooks.user, bytes);
    src = SRC_HOOKS;
  }
  sluice__cb_leave(&f);
  if (o->read) {
    if (rc) {
      atomic_fetch_add(&c->n_mem_read_errors, 1);
      if (!c->mem_failing)
        sluice__log(c, SLUICE_LOG_WARN,
                    "memory guard: the reader failed (%d): the default "
                    "figure is used until it answers again",
                    rc);
    } else if (c->mem_failing) {
      sluice__log(c, SLUICE_LOG_INFO, "memory guard: the reader answers again");
    }
    c->mem_failing = rc != 0;
  }
  if (rc == 0) return src;
  return default_read(o->use_rss, bytes, &src) ? SRC_NONE : src;
}

/* The loop thread's CPU time: what a reading costs it. A wall clock would
 * count a preemption on a loaded machine as a slow reading, and space the
 * checks out for nothing. */
static uint64_t cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)) return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* When the next check is due. glibc's mallinfo2() walks every free chunk
 * of every arena, each arena's lock held: microseconds on a young heap,
 * milliseconds to a hundred on a fragmented one (docs/consumer.md, "The
 * memory guard"). So a check that took long spaces the next ones: reading
 * takes at most 1% of the loop thread, and of the arenas' time. */
static uint64_t next_period_ms(sluice_consumer *c, uint64_t took_ns, int src) {
  uint64_t period = c->o.memory_guard.interval_ms;
  /* The cheaper of this reading and the one before: one slow reading (the
   * first, which binds symbols and faults pages in; one the arenas' locks
   * held up) does not space the checks, two in a row do. */
  uint64_t cost = took_ns < c->mem_last_ns ? took_ns : c->mem_last_ns;
  c->mem_last_ns = took_ns;
  /* A cheap reading is also taken every so many deliveries, so that
   * handlers cannot allocate for a whole interval past the mark: a
   * delivery costs the loop thread 2 us or more, so a reading every
   * 50 x its cost in deliveries stays under 1% of it (8 at the least, and
   * none when that would be over 4,096: the timer is enough). */
  uint64_t every = cost / 20 < 8 ? 8 : cost / 20;
  c->mem_every = every > 4096 ? 0 : (unsigned)every;
  uint64_t floor_ms = cost / 10000; /* 100 x the cost, in ms */
  if (floor_ms <= period) {
    c->mem_slow = 0;
    return period;
  }
  if (!c->mem_slow)
    sluice__log(c, SLUICE_LOG_WARN,
                "memory guard: reading the figure (%s) took %llu us: "
                "checking every %llu ms instead of %llu (use_rss, or a "
                "reader of constant cost, avoids this)",
                src_names[src], (unsigned long long)(cost / 1000),
                (unsigned long long)floor_ms, (unsigned long long)period);
  c->mem_slow = 1;
  return floor_ms;
}

/* Read the figure and act on it; `rearm`: from the timer, which is armed
 * again (else between deliveries, sluice__memguard_tick(), which leaves
 * it). */
static void check(sluice_consumer *c, int rearm) {
  uint64_t bytes = 0;
  uint64_t t0 = cpu_ns();
  int src = read_figure(c, &bytes);
  uint64_t t1 = cpu_ns();
  uint64_t took = t1 > t0 ? t1 - t0 : 0;
  atomic_store_explicit(&c->n_mem_check_us, took / 1000, memory_order_relaxed);
  c->mem_ticks = 0;
  uint64_t period = next_period_ms(c, took, src);
  if (rearm && !c->stopped)
    sluice__loop_arm(&c->loop, SLUICE__W_MEMORY, period);
  if (src == SRC_NONE) return; /* nothing to go by: keep the state */
  atomic_fetch_add_explicit(&c->n_mem_checks, 1, memory_order_relaxed);
  atomic_store_explicit(&c->n_mem_bytes, bytes, memory_order_relaxed);
  atomic_store_explicit(&c->mem_source, src, memory_order_relaxed);
  int change = sluice__memguard_update(&c->mem, bytes);
  if (change == SLUICE__BOUND_SAME) return;
  uint64_t now = sluice__now_ms();
  sluice_event ev = {.text = src_names[src],
                     .bytes = bytes,
                     .generation = atomic_load(&c->generation)};
  if (change == SLUICE__BOUND_PAUSE) {
    atomic_store(&c->mem_since_ms, now);
    atomic_store(&c->n_mem_pauses, c->mem.pauses);
    atomic_store(&c->mem_paused, 1);
    sluice__log(c, SLUICE_LOG_WARN,
                "memory guard: %llu bytes (%s) above %llu: reading new "
                "deliveries paused; %zu held finish",
                (unsigned long long)bytes, src_names[src],
                (unsigned long long)c->mem.high, c->bound.count);
    ev.type = SLUICE_EV_MEMORY_PAUSED;
    ev.limit = c->mem.high;
  } else {
    uint64_t paused = now - atomic_load(&c->mem_since_ms);
    atomic_fetch_add(&c->n_mem_paused_ms, paused);
    atomic_store(&c->mem_paused, 0);
    sluice__log(c, SLUICE_LOG_INFO,
                "memory guard: %llu bytes (%s) below %llu: reading resumes "
                "after %llu ms",
                (unsigned long long)bytes, src_names[src],
                (unsigned long long)c->mem.low, (unsigned long long)paused);
    ev.type = SLUICE_EV_MEMORY_RESUMED;
    ev.limit = c->mem.low;
  }
  /* Reading follows first, so that an event handler sees it done. */
  sluice__update_pause(c);
  sluice__emit(c, &ev);
}

void sluice__memguard_check(sluice_consumer *c) {
  if (c->mem.high) check(c, 1);
}

void sluice__memguard_check_between(sluice_consumer *c) {
  check(c, 0);
}

void sluice__memguard_start(sluice_consumer *c) {
  sluice__memguard_check(c); /* and arms the next one */
}
