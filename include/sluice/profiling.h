/* SPDX-License-Identifier: MIT */
/** \file
 * The sluice allocation profiler: heap profiles in pprof's formats and the
 * memory each message leaves behind (its *residual*).
 *
 * The profiler lives in its own shared library, `libsluice_prof` (CMake
 * target `sluice::profiling`), which does not depend on the consumer. It
 * works two ways:
 *
 * - **Linked** into a program: it replaces malloc, calloc, realloc, free,
 *   posix_memalign, aligned_alloc, memalign, valloc, pvalloc, reallocarray
 *   and malloc_usable_size (glibc's `__libc_*` functions do the real work).
 *   Nothing is recorded until sluice_prof_start(), or `SLUICE_PROF=1` in the
 *   environment; until then each call costs one branch.
 * - **Preloaded** into any program: `LD_PRELOAD=libsluice_prof.so
 *   SLUICE_PROF=1 SLUICE_PROF_RATE=524288 SLUICE_PROF_OUT=heap.pb.gz prog`.
 *
 * What it records:
 * - a sample of allocations with their call stacks, Poisson-sampled by bytes
 *   like Go's `runtime.MemProfileRate` (1 = every allocation); every report
 *   is unbiased with Go's formula;
 * - **scopes**: every allocation made while a thread is inside a scope is
 *   counted against it, exactly (whatever the sampling rate), until it is
 *   freed, by any thread, at any time. The consumer puts each delivery in a
 *   scope (sluice_prof_delivery_hooks()); what is still live when the
 *   delivery completes is its residual, checked again after a grace period
 *   so that a cache freed shortly after is not called a leak.
 *
 * Everything the profiler keeps is bounded: the stack table, the scope pool
 * and the ring of scopes waiting for their re-check have fixed capacities
 * (sluice_prof_opts); the table of tracked blocks is proportional to the
 * tracked blocks that are live.
 *
 * Builds with AddressSanitizer or ThreadSanitizer (`SLUICE_ASAN`,
 * `SLUICE_TSAN`) cannot replace malloc: there the library records only the
 * blocks announced with sluice_prof_note_alloc() (sluice_prof_interposing()
 * returns 0). See docs/profiling.md.
 *
 * Threading: every function here is thread-safe unless its documentation
 * says otherwise. Callbacks run on the thread that triggered them, with no
 * profiler lock held; they may allocate and may call sluice_prof functions.
 */
#ifndef SLUICE_PROFILING_H
#define SLUICE_PROFILING_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/hooks.h> /* sluice_delivery_hooks, sluice_outcome */
#include <sluice/error.h>
#include <sluice/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/** \name Starting and stopping */

/** `sample_rate` value that records no stacks at all: scopes are still
 *  counted exactly (the cheapest useful setting for residual accounting). */
#define SLUICE_PROF_RATE_NONE ((size_t)-1)

/** What one message left behind, handed to sluice_prof_opts.on_residual. */
typedef struct sluice_prof_residual {
  const char *queue; /**< the scope's queue ("" when none) */
  /** The scope's key value (sluice_prof_scope_begin_key()), or NULL.
   *  \since 0.2 */
  const char *key;
  uint64_t seq;          /**< the scope's sequence number (delivery seq) */
  uint64_t delivery_tag; /**< as given to sluice_prof_scope_begin() */
  int outcome;           /**< sluice_outcome the scope ended with */
  /** 0: reported when the scope ended; 1: reported after the grace period
   *  (only for scopes that had a residual when they ended and got a
   *  re-check: see sluice_prof_opts.max_pending). */
  int after_grace;
  uint64_t bytes;          /**< residual bytes at this stage (exact) */
  uint64_t objects;        /**< residual objects at this stage (exact) */
  uint64_t bytes_at_end;   /**< residual bytes when the scope ended */
  uint64_t objects_at_end; /**< residual objects when the scope ended */
} sluice_prof_residual;

/** A per-message residual callback. `r` is borrowed for the call. */
typedef void (*sluice_prof_residual_fn)(const sluice_prof_residual *r,
                                        void *user);

/** The verdict of a group of messages (queue, outcome, key value), from the
 *  growth of the memory its messages retain against their number. See
 *  docs/profiling.md, "The verdict". \since 0.2 */
typedef enum sluice_prof_state {
  /** Nothing retained. */
  SLUICE_PROF_OK = 0,
  /** Retained memory grows with messages; no bound seen yet, and the
   *  growth has not yet lasted the horizon (`level_off_*` says for how much
   *  longer it may grow before it is called a leak). */
  SLUICE_PROF_GROWING = 1,
  /** Retained memory that stopped growing: a cache, a pool, a set of keys
   *  updated in place (`retained` is its size). */
  SLUICE_PROF_BOUNDED = 2,
  /** Growth that kept going past the horizon, in messages and in time, with
   *  survivors older than the horizon: a leak of `bytes_per_message`. */
  SLUICE_PROF_LEAK = 3
} sluice_prof_state;

/** "ok", "growing", "bounded", "LEAK"; "?" otherwise. \since 0.2 */
SLUICE_EXPORT const char *sluice_prof_state_name(int state);

/** One allocation site in a verdict. */
typedef struct sluice_prof_site {
  const char *function; /**< the function that called the allocator */
  const char *stack;    /**< "leaf <- caller <- ..." (a few frames) */
  uint64_t bytes;       /**< retained bytes from this site (see `share`) */
  uint64_t objects;     /**< retained objects from this site */
  /** The site's share of the group's retained bytes, 0..1: from the blocks
   *  captured at weight 1 (adaptive stacks, rate 1) when there are some,
   *  else from the unbiased samples. `bytes` is this share of the exact
   *  retained bytes. \since 0.2 */
  double share;
} sluice_prof_site;

/** The state of one key value of a queue and outcome, for the one-line
 *  comparison "type=probe: 128 B/message, type=push: 0". \since 0.2 */
typedef struct sluice_prof_kind_summary {
  const char *key; /**< key value, "(other)", or NULL (no key) */
  int state;       /**< sluice_prof_state */
  double bytes_per_message;
  uint64_t messages;
} sluice_prof_kind_summary;

/** A verdict: a group (queue, outcome, key value) became LEAK. */
typedef struct sluice_prof_leak {
  const char *queue;
  int outcome; /**< sluice_outcome */
  /** The key's name ("type", "header:x-kind") and this group's value, or
   *  NULL when the queue has no key. \since 0.2 */
  const char *key_name;
  const char *key;
  int state; /**< sluice_prof_state (LEAK) \since 0.2 */
  /** Slope of the retained memory over the horizon: bytes and objects left
   *  behind per message of this group. */
  double bytes_per_message;
  double objects_per_message;
  uint64_t messages;       /**< messages the slope spans */
  double seconds;          /**< time the slope spans \since 0.2 */
  uint64_t retained_bytes; /**< still live now from this group */
  uint64_t retained_objects;
  /** Age of the oldest memory still live from this group (at least), in
   *  the group's messages and in seconds. \since 0.2 */
  uint64_t oldest_age_messages;
  double oldest_age_seconds;
  size_t n_sites;                /**< entries in `sites` (at most 5) */
  const sluice_prof_site *sites; /**< top sites, biggest first; empty when
                                      no stack was sampled */
  /** Every key value of the same queue and outcome, this one included,
   *  biggest per-message figure first (at most 8). \since 0.2 */
  size_t n_kinds;
  const sluice_prof_kind_summary *kinds;
} sluice_prof_leak;

/** A verdict callback. `v` and everything it points to are borrowed for
 *  the call. */
typedef void (*sluice_prof_leak_fn)(const sluice_prof_leak *v, void *user);

/** Profiler options. Zero-initialise; a zero field means its default. */
typedef struct sluice_prof_opts {
  /** Mean bytes between two sampled allocations (Go's MemProfileRate).
   *  Default 524288 (512 KiB). 1 records every allocation with its stack;
   *  SLUICE_PROF_RATE_NONE records no stack. */
  size_t sample_rate;
  /** Distinct call stacks kept; further stacks are counted under one
   *  "[stack table full]" entry. Default 65536. Fixed at the first start. */
  size_t max_stacks;
  /** Scopes alive at once: open, waiting for their re-check, or retaining
   *  memory (128 bytes each, allocated in chunks of 1024 as needed).
   *  Default 65536. Fixed at the first start. */
  size_t max_scopes;
  /** Ended scopes waiting for their after-grace re-check, at most. The
   *  queue grows as needed up to this; past it a scope ends without a
   *  re-check (counted in `skipped`; its memory still counts in its group):
   *  the grace period is never shortened. Default max_scopes / 2. Fixed at
   *  the first start. */
  size_t max_pending;
  /** Distinct queue names aggregated; the rest go under "(other)".
   *  Default 64. Fixed at the first start. */
  size_t max_queues;
  /** Grace period before a message's residual is re-checked (the
   *  on_residual callback with after_grace = 1, and the cached/leaked
   *  counts), in ms. Default 1000. Negative: re-check at once when the
   *  scope ends. The verdict does not depend on it. */
  long grace_ms;
  /** Verdict: growth in bytes per message that counts (the slope of the
   *  retained memory against messages). Default 1. */
  size_t leak_threshold;
  /** Verdict: messages between two points of a group's growth curve
   *  (more as the curve is thinned to span the horizon). Default 100. */
  unsigned leak_window;
  sluice_prof_residual_fn on_residual; /**< may be NULL */
  void *residual_user;
  /** Called when a group becomes LEAK. NULL: one line on stderr. */
  sluice_prof_leak_fn on_leak;
  void *leak_user;
  /** Monotonic clock in ns for the grace period and the horizon (tests);
   *  NULL: the system's CLOCK_MONOTONIC_COARSE (a few ns to read; it moves
   *  by a kernel tick, 1 to 10 ms, so time spans shorter than a tick read
   *  as 0: a horizon_ms of a few ms is not met by a burst inside one tick).
   */
  uint64_t (*now_ns)(void *user);
  void *clock_user;
  /** Verdict horizon: growth must last this many messages of the group AND
   *  `horizon_ms`, with memory older than both still live, to be called a
   *  leak. Too short convicts caches bigger than the horizon while they
   *  fill; too long delays the verdict (GROWING says how long is left).
   *  Defaults 50000 messages and 120000 ms. \since 0.2 */
  uint64_t horizon_messages;
  long horizon_ms;
  /** Groups (queue, outcome, key value) kept; the rest are counted under
   *  "(other)" rows. Default 1024. Fixed at the first start. \since 0.2 */
  size_t max_groups;
  /** Key values per queue with rows of their own; the others (and values
   *  whose rows retain nothing, evicted to make room) go under "(other)".
   *  Default 32. \since 0.2 */
  size_t max_keys;
  /** Adaptive stacks: when a group turns GROWING, every allocation of the
   *  next this many messages of its queue and key value is recorded with
   *  its stack at weight 1, so that the verdict names its sites at any
   *  sampling rate. Default 1000; negative: off. \since 0.2 */
  long adaptive_messages;
  /** Background re-check: a profiler thread runs the due re-checks and
   *  re-evaluates the verdicts every this many ms, so that they stay
   *  current when traffic stops. It starts with the first scope. Default
   *  250; negative: no thread (call sluice_prof_poll() yourself).
   *  \since 0.2 */
  long poll_ms;
} sluice_prof_opts;

/** Start recording, or change the settings of a running profiler (the
 *  capacities are fixed by the first start). A new `sample_rate` applies
 *  to the calling thread from its next allocation, to the others within
 *  1 MiB of their own allocations. Also done at load time when
 *  the environment has `SLUICE_PROF=1` (with `SLUICE_PROF_RATE`,
 *  `SLUICE_PROF_OUT`; see docs/profiling.md).
 *  \param opts NULL for the defaults; copied.
 *  \return 0; SLUICE_EINVAL for a bad option; SLUICE_ENOMEM. */
SLUICE_EXPORT int sluice_prof_start(const sluice_prof_opts *opts);

/** Stop recording new allocations. Blocks recorded earlier are still
 *  debited when they are freed, so reports stay right; scopes, aggregates
 *  and stacks are kept until the next start. */
SLUICE_EXPORT void sluice_prof_stop(void);

/** 1 while recording, 0 otherwise. */
SLUICE_EXPORT int sluice_prof_running(void);

/** 1 when this build replaces malloc and friends (not under ASan/TSan). */
SLUICE_EXPORT int sluice_prof_interposing(void);

/** The current sampling rate in bytes (SLUICE_PROF_RATE_NONE: no stacks). */
SLUICE_EXPORT size_t sluice_prof_sample_rate(void);

/** Record a block from an allocator sluice cannot see (a pool, an arena):
 *  it is sampled and counted against the calling thread's scope like a
 *  malloc. Blocks at an address already tracked replace that record. No-op
 *  when not running. */
SLUICE_EXPORT void sluice_prof_note_alloc(const void *p, size_t size);
/** Counterpart of sluice_prof_note_alloc(). Unknown pointers are ignored. */
SLUICE_EXPORT void sluice_prof_note_free(const void *p);

/* ------------------------------------------------------------------------ */
/** \name Scopes */

/** A scope handle; 0 means "no scope". */
typedef uint64_t sluice_prof_scope;

/** Open a scope (not entered: see sluice_prof_scope_enter()).
 *  \param queue    aggregation key, typically the queue name; NULL for ""
 *  \param seq      a sequence number reported with the residual
 *  \param tag      a second number reported with the residual
 *  \return the handle, or 0 when not running or when the scope pool is
 *          full even after reclaiming (then nothing is counted). */
SLUICE_EXPORT sluice_prof_scope sluice_prof_scope_begin(const char *queue,
                                                        uint64_t seq,
                                                        uint64_t tag);

/** Open a scope for a message with a key value: its residual is also
 *  kept per key value (bounded: sluice_prof_opts.max_keys per queue).
 *  \param queue    as for sluice_prof_scope_begin()
 *  \param key_name what the key is ("type", "routing_key",
 *                  "header:x-kind"), shown in reports; NULL: "key"
 *  \param key      the value (copied), NULL: no key
 *  \return as sluice_prof_scope_begin(). \since 0.2 */
SLUICE_EXPORT sluice_prof_scope
sluice_prof_scope_begin_key(const char *queue, const char *key_name,
                            const char *key, uint64_t seq, uint64_t tag);

/** Make `s` the calling thread's current scope (0: none).
 *  \return the previous one, to restore with another call. */
SLUICE_EXPORT sluice_prof_scope sluice_prof_scope_enter(sluice_prof_scope s);

/** The calling thread's current scope, or 0. */
SLUICE_EXPORT sluice_prof_scope sluice_prof_scope_current(void);

/** What scope `s` allocated that is still live, exactly, as seen from the
 *  calling thread: a thread that is inside `s` right now keeps its own
 *  recent credits to itself until it leaves the scope (call this from the
 *  scope's thread, or when no thread is inside it).
 *  \return 0; SLUICE_EINVAL if `s` is not an open scope (unknown, ended). */
SLUICE_EXPORT int sluice_prof_scope_usage(sluice_prof_scope s, uint64_t *bytes,
                                          uint64_t *objects);

/** Close scope `s` with a final outcome: its residual is what it allocated
 *  that is still live. Fires on_residual, queues the re-check, and runs the
 *  re-checks that are due. Leaves the scope on the calling thread if it is
 *  current there. A thread still inside it settles what it holds for the
 *  scope when it leaves, against this scope and its group (never another
 *  message); allocations made there after the end are not counted. `s`
 *  must not be used afterwards.
 *  \param outcome a sluice_outcome (SLUICE_ACK ... SLUICE_OUTCOME_ERROR)
 *  \param out     if not NULL, the residual at end
 *  \return 0; SLUICE_EINVAL for an unknown or already ended scope. */
SLUICE_EXPORT int sluice_prof_scope_end(sluice_prof_scope s, int outcome,
                                        sluice_prof_residual *out);

/** Run the re-checks whose grace period has passed and re-evaluate the
 *  verdicts (also done by every scope end, every report and the background
 *  thread, sluice_prof_opts.poll_ms).
 *  \return how many scopes were re-checked. */
SLUICE_EXPORT size_t sluice_prof_poll(void);

/** Hooks for sluice_consumer_opts.hooks: `begin` opens a scope for the
 *  delivery (queue name, key value when the subscription names a key, seq,
 *  delivery tag) and enters it, `resume`/
 *  `suspend` enter and leave it on any thread, `end` closes it with the
 *  outcome, `heap_read` is sluice_prof_heap_read() (the consumer's memory
 *  guard reads its figure there). The hooks do nothing while the profiler
 *  is not running.
 *  \return a static table; never NULL. */
SLUICE_EXPORT const sluice_delivery_hooks *sluice_prof_delivery_hooks(void);

/* ------------------------------------------------------------------------ */
/** \name Residual aggregates */

/** Residual totals and the verdict of one group: queue, outcome and key
 *  value, since the first start. */
typedef struct sluice_prof_residual_stats {
  const char *queue; /**< valid until the process exits */
  int outcome;       /**< sluice_outcome */
  /** The key's name ("type", "header:x-kind"), NULL when the queue has
   *  no key; valid until the process exits. \since 0.2 */
  const char *key_name;
  /** The key value ("" without a key; "(other)" for the values without a
   *  row of their own), cut to 127 bytes. \since 0.2 */
  char key[128];
  uint64_t messages;      /**< scopes ended */
  uint64_t with_residual; /**< ... that had a residual at end */
  uint64_t bytes_at_end;  /**< sum of residual bytes at end */
  uint64_t objects_at_end;
  uint64_t pending;      /**< waiting for their re-check now */
  uint64_t cached;       /**< residual freed within the grace period */
  uint64_t leaked;       /**< residual still live after grace */
  uint64_t bytes_leaked; /**< sum of residual bytes after grace */
  uint64_t objects_leaked;
  /** Ended with a residual but without a re-check (the pending queue was
   *  full): not in cached/leaked, still in retained. \since 0.2 */
  uint64_t skipped;
  /** Still live now from every ended scope of the group, pending ones
   *  included (exact). */
  uint64_t retained_bytes;
  uint64_t retained_objects;
  int state; /**< sluice_prof_state \since 0.2 */
  /** Growth of `retained` per message: over the horizon (LEAK), over the
   *  growth so far (GROWING), over the recent curve (BOUNDED, near 0).
   *  \since 0.2 */
  double bytes_per_message;
  double objects_per_message;
  uint64_t slope_messages; /**< messages that slope spans \since 0.2 */
  double slope_seconds;    /**< \since 0.2 */
  /** GROWING: messages and seconds of further growth before it is called a
   *  leak (both must pass). \since 0.2 */
  uint64_t level_off_messages;
  double level_off_seconds;
  /** Age of the oldest memory still live from the group (at least), in its
   *  messages and in seconds. \since 0.2 */
  uint64_t oldest_age_messages;
  double oldest_age_seconds;
  int leaking; /**< state == SLUICE_PROF_LEAK */
} sluice_prof_residual_stats;

/** Copy the groups that have at least one message, ordered by queue, key
 *  value, then outcome. Runs the due re-checks first.
 *  \param out  up to `cap` entries are written; may be NULL if cap is 0
 *  \return the number of aggregates (may exceed `cap`). */
SLUICE_EXPORT size_t
sluice_prof_residual_stats_get(sluice_prof_residual_stats *out, size_t cap);

/* ------------------------------------------------------------------------ */
/** \name MemStats */

/** Process-wide counters, like Go's runtime.MemStats. */
typedef struct sluice_prof_memstats {
  /** In use per the allocator, exact: glibc's mallinfo2(), the
   *  sanitizer's count under ASan/TSan, mallinfo() under valgrind
   *  (\since 0.2: 0 there before) */
  uint64_t heap_live_bytes;
  uint64_t heap_mapped_bytes;  /**< obtained from the system by malloc */
  uint64_t live_objects;       /**< mallocs - frees (counted since start) */
  uint64_t total_alloc_bytes;  /**< bytes requested since start */
  uint64_t mallocs;            /**< allocations since start */
  uint64_t frees;              /**< frees of non-NULL pointers since start */
  uint64_t rss_bytes;          /**< resident set size */
  uint64_t sampled_live_bytes; /**< in-use estimate from the sampled stacks */
  uint64_t tracked_blocks;     /**< blocks the profiler tracks now */
  uint64_t stacks;             /**< distinct stacks recorded */
  uint64_t stacks_dropped;     /**< samples counted as "[stack table full]" */
  uint64_t scopes_open;
  uint64_t scopes_pending;  /**< ended, waiting for the re-check */
  uint64_t scopes_retained; /**< ended with memory still live */
  uint64_t scopes_refused;  /**< begins refused: scope pool full */
  /** Scopes that ended with a residual but got no after-grace re-check
   *  (max_pending reached), since start. \since 0.2 */
  uint64_t rechecks_skipped;
  uint64_t groups; /**< groups in use \since 0.2 */
  /** Scopes counted in an "(other)" row: group pool full (groups_overflow)
   *  or key values past max_keys (keys_overflow). \since 0.2 */
  uint64_t groups_overflow;
  uint64_t keys_overflow;
  /** Blocks grown by realloc in other scopes than their owner's, followed
   *  per growth layer now; layers merged because a block had too many.
   *  \since 0.2 */
  uint64_t ledgers;
  uint64_t ledger_merges;
  /** Deferred deliveries completed on a thread that never entered them
   *  (sluice_delivery_enter()) and allocated in between. \since 0.2 */
  uint64_t deferred_unentered;
  uint64_t overhead_bytes; /**< the profiler's own memory (approx.) */
  uint64_t sample_rate;
} sluice_prof_memstats;

/** Fill `out` with the current figures. Works (mostly zeros) when the
 *  profiler never started. */
SLUICE_EXPORT void sluice_prof_memstats_read(sluice_prof_memstats *out);

/** The live heap for a consumer's memory guard, a sluice_heap_read_fn
 *  (also the `heap_read` of sluice_prof_delivery_hooks()): the bytes in
 *  use per the allocator, MemStats' `heap_live_bytes` (/debug/vars,
 *  `sluice_heap_live_bytes` on /metrics), so the guard acts on the figure
 *  the dashboards show. Any thread; a few microseconds (an arena walk).
 *  \param user   ignored
 *  \param bytes  receives the figure
 *  \return 0; SLUICE_ESTATE while the profiler is not running (the guard
 *          then takes its own default figure); SLUICE_EINVAL. \since 0.2 */
SLUICE_EXPORT int sluice_prof_heap_read(void *user, uint64_t *bytes);

/* ------------------------------------------------------------------------ */
/** \name Snapshots */

/** A copy of the profile at one instant, or the difference of two. */
typedef struct sluice_prof_snapshot sluice_prof_snapshot;

/** Take a snapshot: per-stack allocation counts, in-use counts, residual
 *  per stack, queue, outcome and message, and the MemStats. Runs the due
 *  re-checks first. Costs a pass over the tracked blocks.
 *  \param out receives the snapshot; free it with sluice_prof_snapshot_free().
 *  \return 0; SLUICE_EINVAL; SLUICE_ENOMEM. */
SLUICE_EXPORT int sluice_prof_snapshot_take(sluice_prof_snapshot **out);

/** What changed from `base` to `cur` (cur - base): allocations made between
 *  them, in-use and residual growth (negative where memory was released).
 *  Every output takes the result like any snapshot.
 *  \return 0; SLUICE_EINVAL; SLUICE_ENOMEM. */
SLUICE_EXPORT int sluice_prof_snapshot_diff(const sluice_prof_snapshot *base,
                                            const sluice_prof_snapshot *cur,
                                            sluice_prof_snapshot **out);

/** Free a snapshot. NULL is a no-op. */
SLUICE_EXPORT void sluice_prof_snapshot_free(sluice_prof_snapshot *s);

/** The MemStats taken with the snapshot (for a diff: cur - base, with
 *  rss and heap_live as signed deltas cast to uint64_t). */
SLUICE_EXPORT void sluice_prof_snapshot_memstats(const sluice_prof_snapshot *s,
                                                 sluice_prof_memstats *out);

/* ------------------------------------------------------------------------ */
/** \name Outputs */

/** Output sink: write `len` bytes. \return 0, or negative to abort (the
 *  writer then returns SLUICE_EIO).
 *  \since 0.2 (`user` was the first argument in 0.1) */
typedef int (*sluice_prof_write_fn)(const void *data, size_t len, void *user);

/** Output formats. */
typedef enum sluice_prof_format {
  SLUICE_PROF_FMT_PPROF = 0, /**< gzipped profile.proto (`go tool pprof`) */
  SLUICE_PROF_FMT_LEGACY,    /**< gperftools heap text (`google-pprof`) */
  SLUICE_PROF_FMT_TOP,       /**< text like `go tool pprof -top` */
  SLUICE_PROF_FMT_FOLDED,    /**< folded stacks for flamegraph.pl */
  SLUICE_PROF_FMT_RESIDUAL   /**< residual report: aggregates and sites */
} sluice_prof_format;

/** The value a report is about. */
typedef enum sluice_prof_value {
  SLUICE_PROF_INUSE_SPACE = 0, /**< live bytes (the default) */
  SLUICE_PROF_INUSE_OBJECTS,
  SLUICE_PROF_ALLOC_SPACE, /**< bytes allocated since start */
  SLUICE_PROF_ALLOC_OBJECTS,
  SLUICE_PROF_RESIDUAL_SPACE, /**< live bytes left by ended scopes */
  SLUICE_PROF_RESIDUAL_OBJECTS
} sluice_prof_value;

/** Name of a value ("inuse_space", ...); "?" otherwise. */
SLUICE_EXPORT const char *sluice_prof_value_name(int value);

/** Bit of an outcome in sluice_prof_output.outcomes. */
#define SLUICE_PROF_OUTCOME_BIT(o) (1u << (unsigned)(o))

/** What to write. Zero-initialised: a gzipped pprof heap profile. */
typedef struct sluice_prof_output {
  sluice_prof_format format;
  /** TOP and FOLDED: the value shown. PPROF and LEGACY: a RESIDUAL_* value
   *  writes the residual profile (with queue/outcome/key/message labels in
   *  pprof), any other the heap profile (all four Go heap sample types). */
  sluice_prof_value value;
  unsigned max_rows; /**< TOP: rows shown; default 30; UINT32_MAX: all */
  const char *queue; /**< RESIDUAL_*: only this queue; NULL: all */
  /** RESIDUAL_*: only these outcomes, a mask of SLUICE_PROF_OUTCOME_BIT();
   *  0: all. */
  unsigned outcomes;
  /** RESIDUAL_*: only this key value; NULL: all. \since 0.2 */
  const char *key;
} sluice_prof_output;

/** Write a report of snapshot `s` (NULL: a snapshot taken now; the
 *  RESIDUAL format always reports the live aggregates).
 *  \param out NULL for the defaults
 *  \return 0; SLUICE_EINVAL; SLUICE_ENOMEM; SLUICE_EIO if `fn` failed. */
SLUICE_EXPORT int sluice_prof_write(const sluice_prof_snapshot *s,
                                    const sluice_prof_output *out,
                                    sluice_prof_write_fn fn, void *user);

/** Write a report to a file (created or truncated; "%p" in `path` becomes
 *  the process id). `out` NULL: the format follows the name (`.pb.gz`/`.pb`
 *  pprof, `.heap` legacy, `.txt` top, `.folded` folded, `.residual`
 *  residual report).
 *  \return as sluice_prof_write(); SLUICE_EIO when the file cannot be
 *          written. */
SLUICE_EXPORT int sluice_prof_write_file(const sluice_prof_snapshot *s,
                                         const sluice_prof_output *out,
                                         const char *path);

/* ------------------------------------------------------------------------ */
/** \name Leak checks for tests
 *  A test runs messages through a handler and fails when the memory they
 *  keep grows with their number. Without a broker:
 *  sluice_prof_check_run() calls the handler itself, one scope per
 *  message; with a broker, sluice_prof_check_mark() before the consumer
 *  runs and sluice_prof_check_since() after it measure the deliveries'
 *  groups (sluice/prof_check.h wraps both, with a cmocka-friendly assertion).
 *  docs/profiling.md, "Leak checks in your tests". */

/** One message of a leak check: handle message `i`, return its outcome. */
typedef int (*sluice_prof_check_fn)(uint64_t i, void *user);

/** \since 0.2 */
typedef struct sluice_prof_check_opts {
  const char *name;  /**< the check's queue name in reports; "check" */
  uint64_t messages; /**< measured messages; default 1000 */
  /** Messages run first and not measured (caches fill, pools warm up);
   *  default messages / 2. */
  uint64_t warmup;
  /** Growth above this fails the check, in bytes per message (the slope of
   *  the retained memory); default 1. */
  double max_bytes_per_message;
} sluice_prof_check_opts;

/** What a leak check measured. \since 0.2 */
typedef struct sluice_prof_check_result {
  int leaked;               /**< growth above the threshold */
  double bytes_per_message; /**< growth of the retained bytes per message */
  double objects_per_message;
  uint64_t messages;       /**< messages measured */
  uint64_t retained_bytes; /**< still live from them at the end */
  uint64_t retained_objects;
  /** One line and the top sites (owned: sluice_prof_check_free()). */
  char *report;
} sluice_prof_check_result;

/** Run `warmup + messages` messages through `fn`, each in a scope of its own
 *  with every allocation's stack recorded, and measure how the memory they
 *  retain grows. Starts the profiler (defaults) if it is not running.
 *  Not thread-safe against other checks of the same name.
 *  \param opts NULL for the defaults
 *  \return 0 (the verdict is in `out->leaked`); SLUICE_EINVAL;
 *          SLUICE_ENOMEM. */
SLUICE_EXPORT int sluice_prof_check_run(const sluice_prof_check_opts *opts,
                                        sluice_prof_check_fn fn, void *user,
                                        sluice_prof_check_result *out);

/** The retained memory and message count of a queue's groups (every key
 *  value and outcome) at one moment. \since 0.2 */
typedef struct sluice_prof_check_point {
  char queue[256];
  uint64_t messages;
  int64_t bytes, objects;
} sluice_prof_check_point;

/** Mark `queue` now (before the deliveries to measure). Thread-safe.
 *  \return 0; SLUICE_EINVAL (no queue name, or longer than 255 bytes);
 *          SLUICE_ESTATE (the profiler never started). */
SLUICE_EXPORT int sluice_prof_check_mark(const char *queue,
                                         sluice_prof_check_point *p);

/** Measure `p`'s queue since `p`: growth per message of its groups,
 *  against `max_bytes_per_message`, and the top sites. Thread-safe.
 *  \return 0; SLUICE_EINVAL; SLUICE_ENOMEM. */
SLUICE_EXPORT int sluice_prof_check_since(const sluice_prof_check_point *p,
                                          double max_bytes_per_message,
                                          sluice_prof_check_result *out);

/** Release a result's report. NULL is a no-op. */
SLUICE_EXPORT void sluice_prof_check_free(sluice_prof_check_result *r);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_PROFILING_H */
