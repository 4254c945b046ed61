/* SPDX-License-Identifier: MIT */
/* Helpers for tests that talk to the real broker on 127.0.0.1:5672. */
#ifndef SLUICE_TEST_BROKER_UTIL_H
#define SLUICE_TEST_BROKER_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/sluice.h>

#define TEST_URI "amqp://guest:guest@127.0.0.1:5672/"

/* 1 if the broker accepts TCP connections. */
int tb_broker_up(void);
/* Call first in main(): exits 77 (skipped, loudly) when the broker is down,
 * or fails when SLUICE_REQUIRE_BROKER=1 (CI). */
void tb_require_broker(const char *test);
/* A queue name unique to this process: "<prefix>.<pid>.<n>". */
const char *tb_qname(const char *prefix);
/* Delete and declare a queue. */
void tb_fresh_queue(const sluice_queue_decl *d);
void tb_delete_queue(const char *name);
/* Publish n messages "i" (message_id = i, body padded to `size`). */
void tb_fill(const char *queue, unsigned n, size_t size);
/* Ready messages in a queue, waiting up to `ms` for it to equal `want`
 * (the broker requeues asynchronously after a close). */
uint32_t tb_depth_eventually(const char *queue, uint32_t want, int ms);

/* How much slower than normal this run is allowed to be:
 * SLUICE_TEST_TIME_SCALE (an integer, 1 to 100; default 1). scripts/test.sh
 * sets it for the runs under valgrind. A test whose outcome depends on a
 * configured time budget (a stop timeout against handlers that sleep)
 * scales the budget and the sleeps alike, so the proportions it checks
 * hold on a slow run too. */
int tb_time_scale(void);

/* Run a consumer with a watchdog: stop() after `seconds`. Returns run()'s
 * result; *timed_out says whether the watchdog fired. */
int tb_run_bounded(sluice_consumer *c, int seconds, int *timed_out);

#endif
