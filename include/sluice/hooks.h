/* SPDX-License-Identifier: MIT */
/** \file
 * What a consumer tells an observer about each delivery: the outcomes, a
 * plain description of the delivery, and the per-delivery hooks. The
 * allocation profiler (sluice/profiling.h) implements the hooks and reads
 * the outcomes; this header is all it shares with the consumer, so the
 * profiler serves any C program and `libsluice_prof` does not depend on
 * `libsluice`. Types and macros only: nothing here needs a library.
 *
 * \since 0.2 (these were part of sluice/consumer.h in 0.1)
 */
#ifndef SLUICE_HOOKS_H
#define SLUICE_HOOKS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The outcomes: XX(name, value, text). Values are stable and dense from 0;
 *  `text` is what sluice_outcome_name() and the profiler's reports print.
 *  \since 0.2 */
#define SLUICE_OUTCOME_MAP(XX)                                             \
  XX(ACK, 0, "ack")             /* processed: basic.ack */                 \
  XX(NACK, 1, "nack")           /* failed, try again: requeue */           \
  XX(REJECT, 2, "reject")       /* poison: requeue=false (dead-letter) */  \
  XX(DEFER, 3, "defer")         /* finished later: sluice_delivery_done */ \
  XX(OUTCOME_STALE, 4, "stale") /* completed after its connection died */  \
  XX(OUTCOME_ERROR, 5, "error") /* invalid handler return; requeued */

/** Initializer of a C array of outcome names indexed by outcome:
 *  `static const char *const names[] = SLUICE_OUTCOME_NAMES;` (C only).
 *  \since 0.2 */
#define SLUICE_OUTCOME_NAMES \
  { SLUICE_OUTCOME_MAP(SLUICE_OUTCOME_NAME_) }
#define SLUICE_OUTCOME_NAME_(name, value, text) [value] = text,

/** What a handler returns, and what sluice_delivery_done() takes. */
typedef enum sluice_outcome {
  SLUICE_ACK = 0,    /**< processed: basic.ack */
  SLUICE_NACK = 1,   /**< failed, try again: basic.nack requeue=true */
  SLUICE_REJECT = 2, /**< poison: basic.reject requeue=false (dead-letter) */
  SLUICE_DEFER = 3,  /**< finished later by sluice_delivery_done() */
  /* Outcomes reported to hooks and statistics only, never returned: */
  SLUICE_OUTCOME_STALE = 4, /**< completed after its connection died */
  SLUICE_OUTCOME_ERROR = 5, /**< invalid handler return; nacked (requeue) */
/** How many outcomes there are (derived from SLUICE_OUTCOME_MAP). */
#define SLUICE_OUTCOME_ONE_(name, value, text) +1
  SLUICE_OUTCOME_COUNT_ = 0 SLUICE_OUTCOME_MAP(SLUICE_OUTCOME_ONE_)
#undef SLUICE_OUTCOME_ONE_
} sluice_outcome;

/** Plain description of a delivery handed to hooks; no accessor needed. */
typedef struct sluice_delivery_info {
  const char *queue;
  uint64_t delivery_tag;
  uint64_t generation;
  uint64_t seq; /**< process-wide delivery sequence number, from 1 */
  size_t body_len;
  /** The subscription's key (sluice_subscribe_opts.key, e.g. "type") and
   *  this delivery's value of it ("(none)" when the message has none);
   *  both NULL when the subscription names no key. Borrowed like `info`.
   *  \since 0.2 */
  const char *key_name;
  const char *key;
} sluice_delivery_info;

/** Reads the process's memory figure in bytes, for a consumer's memory
 *  guard (sluice_consumer_opts.memory_guard, docs/consumer.md, "The memory
 *  guard"): writes it to `*bytes` and returns 0, or returns a negative
 *  SLUICE_E* code when it has no figure now, and the consumer then takes
 *  its default one (sluice_memory_read()). Called on the consumer's loop
 *  thread every `interval_ms`: it must be quick and must not block.
 *  \since 0.2 */
typedef int (*sluice_heap_read_fn)(void *user, uint64_t *bytes);

/** Per-delivery hooks. `begin` runs on the handler's thread just before the
 *  handler and returns a token kept with the delivery; `resume`/`suspend`
 *  bracket every stretch of code that works for the delivery on some thread
 *  (the handler itself is bracketed by begin/suspend); `end` runs when the
 *  delivery is completed, on the completing thread, with the final outcome
 *  (a sluice_outcome). All hooks must be thread-safe. Any of them may be
 *  NULL. `info` is borrowed for the call.
 *
 *  Unlike the other callbacks, which take `(handle, payload, user)`, the
 *  hooks are a table of methods on the object `user`, so `user` comes
 *  first, as `this` would. */
typedef struct sluice_delivery_hooks {
  void *(*begin)(void *user, const sluice_delivery_info *info);
  void (*resume)(void *user, void *token);
  void (*suspend)(void *user, void *token);
  void (*end)(void *user, void *token, const sluice_delivery_info *info,
              int outcome);
  void *user;
  /** The observer's figure of the process's live heap, for the consumer's
   *  memory guard when its options name no reader of their own (the
   *  profiler's: sluice_prof_heap_read()). May be NULL. \since 0.2 */
  sluice_heap_read_fn heap_read;
} sluice_delivery_hooks;

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_HOOKS_H */
