/* SPDX-License-Identifier: MIT */
/* The 3-node test cluster of scripts/cluster.sh, seen from a test: where its
 * nodes listen, killing and restarting them, rabbitmqctl, and a lock that
 * lets concurrent suites take turns. Shared with bench/reconnect. */
#ifndef SLUICE_TEST_CLUSTER_UTIL_H
#define SLUICE_TEST_CLUSTER_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define CL_NODES 3

/* Node i is 1..3. Settings come from SLUICE_CLUSTER_PORT (first AMQP port,
 * default 5681) and SLUICE_CLUSTER_DIR (default /tmp/sluice-cluster), as in
 * the script. */
int cl_port(int node);
const char *cl_name(int node); /* "sluice<i>@localhost" */
const char *cl_uri(int node);  /* "amqp://guest:guest@127.0.0.1:<port>/" */

uint64_t cl_now_ms(void);

/* 1 if the node's AMQP port accepts a TCP connection. */
int cl_node_up(int node);

/* Call first in main(). When no node is up: exits 77 (skipped, loudly), or
 * fails when SLUICE_REQUIRE_CLUSTER=1 (CI). When some are down (a crashed
 * earlier run), starts them with the script. Then takes the cluster lock
 * (waiting up to `lock_wait_s` for a concurrent suite), held until exit. */
void cl_require(const char *test, int lock_wait_s);

/* The pid in the node's pid file if it is that node's process, or -1. */
long cl_pid(int node);
/* kill -9 the node's process and wait (bounded) until its AMQP port refuses.
 * 0 or -1. */
int cl_kill(int node);
/* scripts/cluster.sh start: start the nodes that are down and wait until
 * they are running members again. 0 or -1. */
int cl_start(void);

/* rabbitmqctl -q -n <node> <args>; stdout into buf (may be NULL).
 * Returns the exit status, -1 if it could not run. */
int cl_ctl(int node, char *buf, size_t buflen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The node that leads quorum queue `queue` (1..3), or -1. */
int cl_quorum_leader(const char *queue);

/* Memory alarm on `node`: vm_memory_high_watermark 0 raises it, the default
 * 0.4 clears it. A guardian process clears it if the test dies in between:
 * an alarm left behind would block every publisher on the cluster. */
int cl_alarm_raise(int node);
int cl_alarm_clear(int node);

#endif
