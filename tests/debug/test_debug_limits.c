/* SPDX-License-Identifier: MIT */
/* The debug endpoint under attack: a client trickling its request a byte at
 * a time is cut at timeout_s however often it sends (not an idle timeout);
 * connections past max_connections evict the oldest unfinished one, so
 * /healthz is still answered; at the fd limit (RLIMIT_NOFILE lowered in a
 * child process) a failing accept() pauses with a backoff, logged once,
 * without libevent's per-failure warnings or a spinning loop, and accepting
 * resumes when descriptors free up; and a consumer in the same process
 * still connects to the broker while the endpoint is flooded. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include <sluice/debug.h>

#include "common/broker_util.h"
#include "http_client.h"

#define MAX_CLIENTS 256

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* 1 if the server closed `fd` (EOF or reset) within `ms`. */
static int closed_within(int fd, int ms) {
  struct pollfd p = {fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, ms) != 1) return 0;
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* A client that opens a connection and sends the start of a request. */
static int half_request(int port) {
  int fd = h_connect(port);
  if (fd >= 0 && h_send(fd, "GET /healthz HTTP/1.1\r\n", 23) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* ------------------------------------------------------------------------ */

/* One header byte every 100 ms keeps evhttp's idle timer (1 s here) from
 * ever firing; the whole-request deadline still cuts the client, long
 * before it could finish its 300-byte header. */
static void trickling_client_is_cut(void **state) {
  (void)state;
  sluice_debug_server *s;
  sluice_debug_opts o = {.addr = "127.0.0.1:0", .timeout_s = 1};
  assert_int_equal(sluice_debug_server_new(&o, &s), 0);
  int port = sluice_debug_server_port(s);
  int fd = half_request(port);
  assert_true(fd >= 0);
  int sent = 0, cut = 0;
  for (; sent < 300 && !cut; sent++) {
    if (h_send(fd, "x", 1) != 0 || closed_within(fd, 100)) cut = 1;
  }
  printf("  trickling client cut after %d bytes (100 ms apart)\n", sent);
  assert_true(cut);
  assert_true(sent < 300);
  close(fd);
  hresp r;
  assert_int_equal(h_get(port, "/healthz", NULL, &r), 200);
  h_free(&r);
  /* Kept alive, a connection gets timeout_s again for its next request,
   * from its previous answer. */
  fd = h_connect(port);
  assert_true(fd >= 0);
  for (int i = 0; i < 3; i++) {
    const char *req = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    assert_int_equal(h_send(fd, req, strlen(req)), 0);
    assert_int_equal(h_read(fd, &r), 0);
    assert_int_equal(r.status, 200);
    h_free(&r);
  }
  assert_true(closed_within(fd, 10000)); /* idle: cut at the deadline */
  close(fd);
  sluice_debug_server_free(s);
}

/* Ten unfinished requests against a cap of four: the six oldest are
 * closed as newer ones arrive, and /healthz is answered at once. */
static void connection_cap_evicts_oldest(void **state) {
  (void)state;
  sluice_debug_server *s;
  sluice_debug_opts o = {.addr = "127.0.0.1:0",
                         .timeout_s = 60,
                         .max_connections = 4};
  assert_int_equal(sluice_debug_server_new(&o, &s), 0);
  int port = sluice_debug_server_port(s);
  int fds[10];
  for (int i = 0; i < 10; i++) {
    fds[i] = half_request(port);
    assert_true(fds[i] >= 0);
    /* in order: wait until the server has it, so "oldest" is defined */
    sleep_ms(20);
  }
  int closed = 0;
  for (int i = 0; i < 10; i++)
    closed += closed_within(fds[i], i < 6 ? 5000 : 0);
  printf("  10 unfinished requests, cap 4: %d closed by the server\n", closed);
  assert_int_equal(closed, 6);
  for (int i = 0; i < 6; i++) assert_true(closed_within(fds[i], 0));
  hresp r;
  assert_int_equal(h_get(port, "/healthz", NULL, &r), 200);
  h_free(&r);
  for (int i = 0; i < 10; i++) close(fds[i]);
  sluice_debug_server_free(s);
}

/* ------------------------------------------------------------------------ */
/* At the fd limit, in a child process. */

static atomic_int log_warn, log_info;
static void count_log(int level, const char *msg, void *user) {
  (void)user;
  if (level <= SLUICE_LOG_WARN) atomic_fetch_add(&log_warn, 1);
  else atomic_fetch_add(&log_info, 1);
  fprintf(stderr, "  child log (%d): %s\n", level, msg);
}

static atomic_int libevent_warnings;
static void count_libevent(int severity, const char *msg) {
  (void)severity;
  (void)msg;
  atomic_fetch_add(&libevent_warnings, 1);
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

#define CHILD_FAIL(...)                       \
  do {                                        \
    fprintf(stderr, "  child: " __VA_ARGS__); \
    fputc('\n', stderr);                      \
    _exit(1);                                 \
  } while (0)

enum { PHASE_FLOOD = 'f', PHASE_DONE = 'd' };

/* The child: an endpoint (and a consumer when `with_consumer`) under a
 * low RLIMIT_NOFILE. It tells the parent its port, waits for the flood,
 * fills its remaining descriptors, checks, frees them, checks again. */
static void child(int to_parent, int from_parent, int with_consumer) {
  struct rlimit rl = {64, 64};
  if (setrlimit(RLIMIT_NOFILE, &rl))
    CHILD_FAIL("setrlimit: %s", strerror(errno));
  event_set_log_callback(count_libevent);
  sluice_debug_server *s;
  sluice_debug_opts o = {.addr = "127.0.0.1:0",
                         .timeout_s = 30,
                         .max_connections = 16,
                         .log = count_log};
  if (sluice_debug_server_new(&o, &s)) CHILD_FAIL("server_new");
  int port = sluice_debug_server_port(s);
  if (write(to_parent, &port, sizeof port) != sizeof port) _exit(1);
  char phase;
  if (read(from_parent, &phase, 1) != 1 || phase != PHASE_FLOOD) _exit(1);
  sleep_ms(300); /* the flood lands: at most 16 kept */

  if (with_consumer) {
    /* The endpoint holds at most 17 descriptors of the 64: a consumer
     * connects while it is flooded. */
    sluice_consumer_opts co = {.uri = TEST_URI, .log_level = -1};
    sluice_consumer *c;
    if (sluice_consumer_new(&co, &c)) CHILD_FAIL("consumer_new");
    int rc = sluice_consumer_connect(c);
    if (rc)
      CHILD_FAIL("consumer connect under attack: %s", sluice_err_name(rc));
    sluice_consumer_stats st;
    sluice_consumer_get_stats(c, &st);
    if (!st.connected) CHILD_FAIL("not connected");
    sluice_consumer_free(c);
    hresp r;
    if (h_get(port, "/healthz", NULL, &r) != 200)
      CHILD_FAIL("/healthz under attack: %d", r.status);
    h_free(&r);
    fprintf(stderr,
            "  child: consumer connected and /healthz answered "
            "with %d descriptors and the endpoint flooded\n",
            (int)rl.rlim_cur);
  }

  /* The cap kept the flood far from the limit: no accept() failed. */
  if (atomic_load(&log_warn) != 0)
    CHILD_FAIL("accept() failed during the flood, below the fd limit");

  /* Take every descriptor left: accept() fails with EMFILE from now on. */
  int hog[64], n_hog = 0;
  while (n_hog < 64) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) break;
    hog[n_hog++] = fd;
  }
  char hogged = 'h';
  if (write(to_parent, &hogged, 1) != 1) _exit(1);
  if (read(from_parent, &phase, 1) != 1) _exit(1); /* more clients came */
  double c0 = cpu_s();
  uint64_t t0 = mono_ms();
  sleep_ms(2000);
  double used = cpu_s() - c0;
  uint64_t wall = mono_ms() - t0;
  fprintf(stderr,
          "  child: at the fd limit for %llu ms: %.3f s CPU, %d libevent "
          "warnings, %d warnings logged\n",
          (unsigned long long)wall, used, atomic_load(&libevent_warnings),
          atomic_load(&log_warn));
  if (atomic_load(&libevent_warnings) != 0)
    CHILD_FAIL("libevent logged %d accept() failures",
               atomic_load(&libevent_warnings));
  if (atomic_load(&log_warn) != 1)
    CHILD_FAIL("%d warnings logged, want exactly 1", atomic_load(&log_warn));
  if (atomic_load(&log_info) != 0)
    CHILD_FAIL("the episode ended while at the limit");
  /* A spinning accept loop burns the whole window on one core. */
  if (used > 0.5 * (double)wall / 1000.0) CHILD_FAIL("%.3f s CPU", used);

  /* Descriptors free again: accepting resumes (after at most the longest
   * backoff) and a request is answered. */
  while (n_hog) close(hog[--n_hog]);
  hresp r;
  int status = 0;
  for (int i = 0; i < 50 && status != 200; i++) {
    status = h_get(port, "/healthz", NULL, &r);
    h_free(&r);
    if (status != 200) sleep_ms(100);
  }
  if (status != 200) CHILD_FAIL("/healthz after the limit: %d", status);
  /* ... and the episode ends once accept() keeps working (CALM_MS, 5 s). */
  for (int i = 0; i < 100 && !atomic_load(&log_info); i++) {
    if (h_get(port, "/healthz", NULL, &r) != 200) CHILD_FAIL("/healthz");
    h_free(&r);
    sleep_ms(100);
  }
  if (atomic_load(&log_info) != 1) CHILD_FAIL("no 'accepting again' line");
  sluice_debug_server_free(s);
  _exit(0);
}

static void run_child(int with_consumer) {
  int up[2], down[2];
  assert_int_equal(pipe(up), 0);
  assert_int_equal(pipe(down), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(up[0]);
    close(down[1]);
    child(up[1], down[0], with_consumer);
  }
  close(up[1]);
  close(down[0]);
  int port = 0;
  assert_int_equal(read(up[0], &port, sizeof port), sizeof port);
  /* The flood: 100 clients that never finish their request. */
  static int fds[MAX_CLIENTS];
  int n = 0;
  for (; n < 100; n++) fds[n] = half_request(port);
  char phase = PHASE_FLOOD;
  assert_int_equal(write(down[1], &phase, 1), 1);
  /* More clients once the child holds every descriptor. */
  char hogged;
  assert_int_equal(read(up[0], &hogged, 1), 1);
  for (; n < 140; n++) fds[n] = h_connect(port);
  phase = PHASE_DONE;
  assert_int_equal(write(down[1], &phase, 1), 1);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  for (int i = 0; i < n; i++)
    if (fds[i] >= 0) close(fds[i]);
  close(up[0]);
  close(down[1]);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

static void accept_backs_off_at_fd_limit(void **state) {
  (void)state;
  run_child(0);
}

static void consumer_connects_while_flooded(void **state) {
  (void)state;
  if (!tb_broker_up()) {
    const char *req = getenv("SLUICE_REQUIRE_BROKER");
    if (req && strcmp(req, "1") == 0) fail_msg("the broker is required");
    printf("  SKIPPED: no broker on 127.0.0.1:5672\n");
    skip();
  }
  run_child(1);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(trickling_client_is_cut),
      cmocka_unit_test(connection_cap_evicts_oldest),
      cmocka_unit_test(accept_backs_off_at_fd_limit),
      cmocka_unit_test(consumer_connects_while_flooded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
