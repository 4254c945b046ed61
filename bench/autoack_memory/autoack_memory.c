/* SPDX-License-Identifier: MIT */
/* sluice-bench-autoack-memory: peak RSS of an autoAck consumer with a slow
 * handler (1 ms per message, 4 workers) over a deep queue, for two queue
 * depths. The reference, in the same run, is the eager client of the field
 * failure (streadway/amqp#272): a raw rabbitmq-c autoAck reader that hands
 * every delivery to an unbounded in-memory queue for the same 4 workers.
 * Each run is a fresh child process, so VmHWM is its own.
 *
 *   sluice-bench-autoack-memory [--seconds S] [--depths 20000,100000]
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#include <sluice/sluice.h>

#include "../common/bench_util.h"

static const char *URI = "amqp://guest:guest@127.0.0.1:5672/";
static const char *QUEUE = "sluice.bench.autoack";
static int g_seconds = 10;

struct report {
  long hwm_kib;
  unsigned long handled;
  unsigned long held_max; /* deliveries held in process memory, peak */
};

static void work_1ms(void) {
  struct timespec ts = {0, 1000 * 1000};
  nanosleep(&ts, NULL);
}

/* ---- sluice: AUTO mode, bounded in-flight ----------------------------- */

static atomic_ulong s_handled;

static int slow(sluice_delivery *d, const sluice_message *m, void *u) {
  work_1ms();
  atomic_fetch_add(&s_handled, 1);
  return SLUICE_ACK;
}

static void *stopper(void *arg) {
  sleep((unsigned)g_seconds);
  sluice_consumer_stop(arg);
  return NULL;
}

static struct report run_sluice(void) {
  sluice_consumer_opts o = {.uri = URI,
                            .ack_mode = SLUICE_ACK_AUTO,
                            .workers = 4};
  sluice_consumer *c;
  if (sluice_consumer_new(&o, &c)) exit(1);
  sluice_subscribe_opts so = {.queue = QUEUE, .handler = slow};
  if (sluice_consumer_subscribe(c, &so)) exit(1);
  pthread_t t;
  pthread_create(&t, NULL, stopper, c);
  if (sluice_consumer_run(c)) exit(1);
  pthread_join(t, NULL);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(c, &st);
  struct report r = {bu_hwm_kib(), atomic_load(&s_handled), st.max_in_flight};
  sluice_consumer_free(c);
  return r;
}

/* ---- reference: eager reader, unbounded queue ---------------------------- */

struct node {
  struct node *next;
  amqp_envelope_t env;
};
static pthread_mutex_t e_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t e_cv = PTHREAD_COND_INITIALIZER;
static struct node *e_head, *e_tail;
static unsigned long e_held, e_held_max;
static atomic_ulong e_handled;
static atomic_int e_quit;

static void *eager_worker(void *arg) {
  while (!atomic_load(&e_quit)) {
    pthread_mutex_lock(&e_mu);
    while (!e_head && !atomic_load(&e_quit)) pthread_cond_wait(&e_cv, &e_mu);
    struct node *n = e_head;
    if (n) {
      e_head = n->next;
      if (!e_head) e_tail = NULL;
      e_held--;
    }
    pthread_mutex_unlock(&e_mu);
    if (!n) continue;
    work_1ms();
    amqp_destroy_envelope(&n->env);
    free(n);
    atomic_fetch_add(&e_handled, 1);
  }
  return NULL;
}

static struct report run_eager(void) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *s = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(s, "127.0.0.1", 5672)) exit(1);
  amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
  amqp_channel_open(conn, 1);
  amqp_basic_consume(conn, 1, amqp_cstring_bytes(QUEUE), amqp_empty_bytes, 0, 1,
                     0, amqp_empty_table);
  pthread_t w[4];
  for (int i = 0; i < 4; i++) pthread_create(&w[i], NULL, eager_worker, NULL);
  double end = bu_now() + g_seconds;
  while (bu_now() < end) {
    amqp_envelope_t env;
    amqp_maybe_release_buffers(conn);
    struct timeval tv = {0, 100 * 1000};
    amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) continue; /* timeout */
    struct node *n = malloc(sizeof(*n));
    n->env = env;
    n->next = NULL;
    pthread_mutex_lock(&e_mu);
    if (e_tail) e_tail->next = n;
    else e_head = n;
    e_tail = n;
    if (++e_held > e_held_max) e_held_max = e_held;
    pthread_cond_signal(&e_cv);
    pthread_mutex_unlock(&e_mu);
  }
  struct report rep = {bu_hwm_kib(), atomic_load(&e_handled), e_held_max};
  atomic_store(&e_quit, 1);
  pthread_mutex_lock(&e_mu);
  pthread_cond_broadcast(&e_cv);
  pthread_mutex_unlock(&e_mu);
  for (int i = 0; i < 4; i++) pthread_join(w[i], NULL);
  /* what is still queued in memory is lost: that is the failure */
  return rep;
}

static struct report in_child(struct report (*fn)(void)) {
  int p[2];
  if (pipe(p)) exit(1);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    struct report r = fn();
    if (write(p[1], &r, sizeof(r)) != sizeof(r)) _exit(1);
    _exit(0);
  }
  close(p[1]);
  struct report r = {0};
  if (read(p[0], &r, sizeof(r)) != sizeof(r)) {
    fprintf(stderr, "child failed\n");
    exit(1);
  }
  close(p[0]);
  int st;
  waitpid(pid, &st, 0);
  return r;
}

int main(int argc, char **argv) {
  unsigned long depths[4] = {20000, 100000};
  int nd = 2;
  static const struct option lo[] = {{"seconds", 1, 0, 's'},
                                     {"depths", 1, 0, 'd'},
                                     {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "s:d:", lo, NULL)) != -1) {
    if (ch == 's') {
      g_seconds = atoi(optarg);
    } else if (ch == 'd') {
      nd = 0;
      for (char *t = strtok(optarg, ","); t && nd < 4; t = strtok(NULL, ","))
        depths[nd++] = strtoul(t, NULL, 10);
    } else {
      return 2;
    }
  }
  printf("# autoAck, 1 KiB messages, handler 1 ms, 4 workers, %d s per run\n",
         g_seconds);
  printf("%-8s %-22s %12s %10s %14s\n", "depth", "client", "peak RSS MiB",
         "handled", "held in memory");
  long sl[4] = {0};
  for (int i = 0; i < nd; i++) {
    bu_fill(URI, QUEUE, depths[i], 1024);
    struct report s = in_child(run_sluice);
    sl[i] = s.hwm_kib;
    printf("%-8lu %-22s %12.1f %10lu %14lu\n", depths[i], "sluice AUTO",
           s.hwm_kib / 1024.0, s.handled, s.held_max);
    bu_fill(URI, QUEUE, depths[i], 1024);
    struct report e = in_child(run_eager);
    printf("%-8lu %-22s %12.1f %10lu %14lu\n", depths[i],
           "eager rabbitmq-c ref", e.hwm_kib / 1024.0, e.handled, e.held_max);
    printf("%-8lu %-22s %11.2fx\n", depths[i], "sluice / eager",
           (double)s.hwm_kib / (double)e.hwm_kib);
    fflush(stdout);
  }
  if (nd >= 2)
    printf("sluice peak at depth %lu vs %lu: %.3fx (target within 10%%, "
           "under 64 MiB)\n",
           depths[nd - 1], depths[0], (double)sl[nd - 1] / (double)sl[0]);
  return 0;
}
