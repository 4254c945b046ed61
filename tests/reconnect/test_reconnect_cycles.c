/* SPDX-License-Identifier: MIT */
/* Reconnect many times through the proxy, doing what the field failure did:
 * register a close listener on every (re)connect. With generation-scoped
 * listeners the registry count stays flat and so does the heap.
 *
 * SLUICE_RC_CYCLES overrides the number of cycles (default 10000). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/broker_util.h"
#include "proxy.h"
#include "rc_util.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define HEAP_MEASURED 0 /* the sanitizer's allocator: mallinfo2 is empty */
#else
#define HEAP_MEASURED 1
#endif

struct cycles {
  sluice_consumer *c;
  tproxy *p;
  unsigned target;
  unsigned connected;      /* CONNECTED events */
  unsigned listener_calls; /* generation listeners called */
  unsigned persistent_calls;
  unsigned refused; /* sluice_consumer_on_close() errors */
  size_t listeners_first, listeners_last, listeners_max;
  size_t heap_first, heap_100, heap_last;
  uint64_t t_100, t_last;
};

/* Bytes the program has allocated and not freed: chunks in the arenas
 * (uordblks) plus the large ones glibc serves with mmap (hblkhd). Both,
 * because glibc moves its mmap threshold up after the first large free, so
 * the same buffer is counted in one or the other from one cycle to the
 * next. */
static size_t heap_in_use(void) {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

static void gen_listener(sluice_consumer *c, const sluice_event *ev,
                         void *user) {
  struct cycles *x = user;
  x->listener_calls++;
}

static void persistent_listener(sluice_consumer *c, const sluice_event *ev,
                                void *user) {
  struct cycles *x = user;
  x->persistent_calls++;
}

static int ack_all(sluice_delivery *d, const sluice_message *m, void *u) {
  return SLUICE_ACK;
}

static void on_event(sluice_consumer *c, const sluice_event *ev, void *user) {
  struct cycles *x = user;
  if (ev->type != SLUICE_EV_CONNECTED) return;
  x->connected++;
  /* the field failure: one listener per connection */
  sluice_listener h;
  if (sluice_consumer_on_close(c, gen_listener, x, SLUICE_LISTEN_GENERATION,
                               &h) != 0)
    x->refused++;
  size_t n = sluice_consumer_close_listener_count(c);
  if (n > x->listeners_max) x->listeners_max = n;
  if (x->connected == 1) {
    x->listeners_first = n;
    x->heap_first = heap_in_use();
  }
  if (x->connected == 100) {
    x->heap_100 = heap_in_use();
    x->t_100 = rc_now_ms();
  }
  if (x->connected == x->target) {
    x->listeners_last = n;
    x->heap_last = heap_in_use();
    x->t_last = rc_now_ms();
    sluice_consumer_stop(c);
    return;
  }
  tproxy_cut(x->p); /* and around again */
}

static void reconnect_cycles(void **state) {
  unsigned target = 10000;
  const char *env = getenv("SLUICE_RC_CYCLES");
  if (env && atoi(env) > 100) target = (unsigned)atoi(env);
  struct cycles x = {.target = target};
  assert_int_equal(tproxy_start(5672, &x.p), 0);
  const char *q = tb_qname("cycles");
  char uri[128];
  sluice_consumer_opts o = {
      .uri = tproxy_uri(x.p, uri, sizeof(uri)),
      .on_event = on_event,
      .event_user = &x,
      .log_level = SLUICE_LOG_ERROR,
      /* 2,000 failed attempts in a row at 1-2 ms ride out a broker app
       * restart by another suite (seen: stop_app + start_app ~1.1 s) */
      .reconnect = {.enabled = 1,
                    .min_delay_ms = 1,
                    .max_delay_ms = 2,
                    .max_attempts = 2000},
  };
  assert_int_equal(sluice_consumer_new(&o, &x.c), 0);
  sluice_listener ph;
  assert_int_equal(sluice_consumer_on_close(x.c, persistent_listener, &x,
                                            SLUICE_LISTEN_PERSISTENT, &ph),
                   0);
  /* recovery re-declares this queue and re-subscribes every time */
  sluice_queue_decl d = {.name = q, .auto_delete = 1};
  assert_int_equal(sluice_consumer_declare_queue(x.c, &d), 0);
  sluice_subscribe_opts so = {.queue = q, .handler = ack_all};
  assert_int_equal(sluice_consumer_subscribe(x.c, &so), 0);
  int to = 0;
  uint64_t t0 = rc_now_ms();
  int rc = tb_run_bounded(x.c, 600, &to);
  uint64_t t1 = rc_now_ms();
  assert_int_equal(rc, 0);
  assert_false(to);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(x.c, &st);
  printf("  %u cycles in %.1f s (%.2f ms per cycle), %llu reconnects\n",
         x.connected, (double)(t1 - t0) / 1000.0,
         (double)(t1 - t0) / x.connected, (unsigned long long)st.reconnects);
  printf("  close listeners: %zu after cycle 1, %zu after cycle %u, max %zu;"
         " %u generation listener calls, %u persistent\n",
         x.listeners_first, x.listeners_last, x.connected, x.listeners_max,
         x.listener_calls, x.persistent_calls);
  if (HEAP_MEASURED)
    printf("  heap in use (mallinfo2 uordblks + hblkhd): %zu after cycle 1, "
           "%zu after cycle 100, %zu after cycle %u (%+lld bytes since cycle "
           "100)\n",
           x.heap_first, x.heap_100, x.heap_last, x.connected,
           (long long)x.heap_last - (long long)x.heap_100);
  else printf("  heap not measured under a sanitizer\n");
  assert_int_equal(x.connected, target);
  assert_int_equal(st.reconnects, target - 1);
  assert_int_equal(x.refused, 0);
  assert_int_equal(x.listeners_first, 2); /* persistent + this connection's */
  assert_int_equal(x.listeners_last, x.listeners_first);
  assert_int_equal(x.listeners_max, 2);
  /* each generation listener heard its own connection's close, once */
  assert_int_equal(x.listener_calls, target - 1);
  assert_int_equal(x.persistent_calls, target - 1);
  if (HEAP_MEASURED) {
    /* a small constant, whatever the number of cycles */
    long long growth = (long long)x.heap_last - (long long)x.heap_100;
    if (growth > 16 * 1024)
      fail_msg("heap grew by %lld bytes from cycle 100 to %u", growth,
               x.connected);
  }
  sluice_consumer_free(x.c);
  tproxy_free(x.p);
}

int main(void) {
  tb_require_broker("test_reconnect_cycles");
  setvbuf(stdout, NULL, _IONBF, 0);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(reconnect_cycles),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
