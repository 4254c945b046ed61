/* SPDX-License-Identifier: MIT */
/* sluice-demo: publish a batch with confirms, consume it with a sluice
 * consumer, print a one-line summary.
 *
 *   sluice-demo [--count N] [--size BYTES] [--ack manual|auto]
 *               [--prefetch N] [--workers N] [--uri URI] [--queue NAME]
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sluice/sluice.h>

static sluice_consumer *g_consumer;
static atomic_ulong g_handled;
static unsigned long g_target;
static atomic_ullong g_bytes;

static int handle(sluice_delivery *d, const sluice_message *m, void *user) {
  (void)d;
  (void)user;
  atomic_fetch_add(&g_bytes, m->body_len);
  if (atomic_fetch_add(&g_handled, 1) + 1 == g_target)
    sluice_consumer_stop(g_consumer);
  return SLUICE_ACK;
}

static void on_signal(int sig) {
  (void)sig;
  sluice_consumer_stop(g_consumer);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "sluice-demo: %s: %s (%s)\n", what, sluice_strerror(rc),
          sluice_err_name(rc));
  exit(1);
}

int main(int argc, char **argv) {
  const char *uri = "amqp://guest:guest@127.0.0.1:5672/";
  const char *queue = "sluice.demo";
  unsigned long count = 10000;
  size_t size = 256;
  sluice_consumer_opts o = {0};
  static const struct option longopts[] = {
      {"count", required_argument, 0, 'n'},
      {"size", required_argument, 0, 's'},
      {"ack", required_argument, 0, 'a'},
      {"prefetch", required_argument, 0, 'p'},
      {"workers", required_argument, 0, 'w'},
      {"uri", required_argument, 0, 'u'},
      {"queue", required_argument, 0, 'q'},
      {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "n:s:a:p:w:u:q:", longopts, NULL)) !=
         -1) {
    switch (ch) {
      case 'n': count = strtoul(optarg, NULL, 10); break;
      case 's': size = strtoul(optarg, NULL, 10); break;
      case 'a':
        if (strcmp(optarg, "auto") == 0) o.ack_mode = SLUICE_ACK_AUTO;
        else if (strcmp(optarg, "manual") == 0) o.ack_mode = SLUICE_ACK_MANUAL;
        else {
          fprintf(stderr, "--ack takes manual or auto\n");
          return 2;
        }
        break;
      case 'p': o.prefetch = (uint16_t)strtoul(optarg, NULL, 10); break;
      case 'w': o.workers = atoi(optarg); break;
      case 'u': uri = optarg; break;
      case 'q': queue = optarg; break;
      default:
        fprintf(stderr,
                "usage: %s [--count N] [--size B] [--ack manual|auto] "
                "[--prefetch N] [--workers N] [--uri URI] [--queue Q]\n",
                argv[0]);
        return 2;
    }
  }
  if (count == 0) return 0;
  g_target = count;

  /* Fill the queue. */
  sluice_publisher_opts po = {.uri = uri, .connection_name = "sluice-demo pub"};
  sluice_publisher *pub;
  int rc = sluice_publisher_new(&po, &pub);
  if (rc) die("publisher", rc);
  sluice_queue_decl q = {.name = queue, .durable = 1};
  uint32_t left = 0;
  if ((rc = sluice_publisher_declare_queue(pub, &q))) die("declare", rc);
  if ((rc = sluice_publisher_delete_queue(pub, queue, &left))) die("reset", rc);
  if ((rc = sluice_publisher_declare_queue(pub, &q))) die("declare", rc);
  char *body = malloc(size ? size : 1);
  memset(body, 'x', size);
  double t0 = now_s();
  for (unsigned long i = 0; i < count; i++)
    if ((rc = sluice_publisher_publish(pub, "", queue, body, size, NULL)))
      die("publish", rc);
  sluice_publish_report rep;
  if ((rc = sluice_publisher_wait(pub, &rep))) die("confirms", rc);
  double t1 = now_s();
  free(body);

  /* Consume it. */
  o.uri = uri;
  o.connection_name = "sluice-demo";
  rc = sluice_consumer_new(&o, &g_consumer);
  if (rc) die("consumer", rc);
  sluice_subscribe_opts so = {.queue = queue, .handler = handle};
  if ((rc = sluice_consumer_subscribe(g_consumer, &so))) die("subscribe", rc);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  double t2 = now_s();
  rc = sluice_consumer_run(g_consumer);
  double t3 = now_s();
  if (rc) die("run", rc);
  sluice_consumer_stats st;
  sluice_consumer_get_stats(g_consumer, &st);
  uint32_t remaining = 0;
  sluice_publisher_queue_depth(pub, queue, &remaining, NULL);
  printf("sluice-demo: published %" PRIu64 " (confirmed %" PRIu64
         ") in %.2fs; consumed %lu in %.2fs (%.0f msg/s, %s ack, prefetch %u, "
         "%d workers); acked %" PRIu64 ", nacked %" PRIu64 ", stale %" PRIu64
         ", max in handler %" PRIu64 ", %u left in queue\n",
         rep.published, rep.confirmed, t1 - t0, (unsigned long)g_handled,
         t3 - t2, g_handled / (t3 - t2),
         o.ack_mode == SLUICE_ACK_AUTO ? "auto" : "manual",
         o.prefetch ? o.prefetch : 100, o.workers, st.acked, st.nacked,
         st.stale, st.max_in_handler, remaining);
  sluice_consumer_free(g_consumer);
  sluice_publisher_free(pub);
  return g_handled == count && remaining == 0 ? 0 : 1;
}
