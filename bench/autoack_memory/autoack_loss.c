/* SPDX-License-Identifier: MIT */
/* sluice-bench-autoack-loss: how many messages an autoAck consumer loses
 * when its process is killed (kill -9) mid-stream, and where they were.
 *
 * For each message size and socket_rcvbuf: fill a queue with numbered
 * messages, start a consumer child (autoAck, one worker, a 10 ms handler:
 * the broker pushes far faster than it handles), wait until the stream is in
 * back-pressure and the broker's send queue has stopped growing, note
 * where the unhandled messages sit, kill the child, and count:
 *   lost = published - handled - still in the queue
 * (the broker settles an autoAck delivery when it writes it, so nothing
 * comes back). Where they were at the kill: held by sluice (in_flight,
 * bounded by max_inflight), in the client's kernel receive buffer (its
 * Recv-Q: socket_rcvbuf), and in the broker's kernel send buffer (the
 * broker socket's Send-Q, autotuned up to net.ipv4.tcp_wmem's max), read
 * from /proc/net/tcp; the rest is inside the broker process. The reference
 * in the same run is the same consumer in MANUAL mode (prefetch 100),
 * which loses nothing: unacknowledged deliveries are requeued. Rounds are
 * interleaved (every configuration once per round); the table gives the
 * medians.
 *
 *   sluice-bench-autoack-loss [--sizes 64,1024,16384]
 *                             [--rcvbufs 0,16384,-1] [--mib 40] [--rounds 3]
 *                             [--handler-ms 10]
 */
#include <ctype.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>

#include "../common/bench_util.h"

static const char *URI = "amqp://guest:guest@127.0.0.1:5672/";
static char g_queue[64];
static int g_handler_ms = 10;

/* What the child tells the parent, in shared memory. */
struct shared {
  _Atomic unsigned long handled;
  _Atomic unsigned long dup;
  _Atomic uint64_t in_flight, in_flight_bytes, read_pauses;
  _Atomic int connected;
  unsigned long n;
  _Atomic unsigned char seen[]; /* n entries */
};

static struct shared *g_sh;

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- the queue ----------------------------------------------------------- */

static void die(const char *what, int rc) {
  fprintf(stderr, "%s: %s\n", what, sluice_strerror(rc));
  exit(1);
}

/* n messages of `size` bytes (at least 8), message i carrying i in its
 * first 8 bytes. 0, or the error (the queue is then incomplete). */
static int fill_once(unsigned long n, size_t size) {
  sluice_publisher_opts po = {.uri = URI,
                              .connection_name = "bench fill",
                              .max_outstanding = 4096};
  sluice_publisher *p;
  int rc = sluice_publisher_new(&po, &p);
  if (rc) return rc;
  sluice_publisher_delete_queue(p, g_queue, NULL);
  sluice_queue_decl q = {.name = g_queue};
  if ((rc = sluice_publisher_declare_queue(p, &q))) goto out;
  char *body = malloc(size);
  memset(body, 'b', size);
  sluice_publish_props pr = {.transient = 1};
  for (unsigned long i = 0; !rc && i < n; i++) {
    uint64_t id = i;
    memcpy(body, &id, sizeof(id));
    rc = sluice_publisher_publish(p, "", g_queue, body, size, &pr);
  }
  free(body);
  sluice_publish_report rep;
  if (!rc) rc = sluice_publisher_wait(p, &rep);
out:
  sluice_publisher_free(p);
  return rc;
}

/* The shared broker is used by other tests at the same time: a connection
 * of ours may be closed under us. Fill again then. */
static void fill(unsigned long n, size_t size) {
  int rc = 0;
  for (int attempt = 0; attempt < 5; attempt++) {
    if (!(rc = fill_once(n, size))) return;
    fprintf(stderr, "# fill: %s; again\n", sluice_strerror(rc));
    sleep_ms(1000);
  }
  die("fill", rc);
}

static void delete_queue(void) {
  sluice_publisher_opts po = {.uri = URI};
  sluice_publisher *p;
  if (sluice_publisher_new(&po, &p)) return;
  sluice_publisher_delete_queue(p, g_queue, NULL);
  sluice_publisher_free(p);
}

/* Ready messages once the broker has dropped the dead consumer. */
static uint32_t settled_depth(void) {
  sluice_publisher_opts po = {.uri = URI};
  sluice_publisher *p;
  if (sluice_publisher_new(&po, &p)) exit(1);
  uint32_t d = 0, consumers = 1;
  for (int i = 0; i < 200 && consumers; i++) {
    if (sluice_publisher_queue_depth(p, g_queue, &d, &consumers)) exit(1);
    if (consumers) sleep_ms(50);
  }
  sleep_ms(500); /* the channel process ends after its consumer */
  sluice_publisher_queue_depth(p, g_queue, &d, &consumers);
  sluice_publisher_free(p);
  return d;
}

/* ---- the child: a consumer that only marks what it handled ---------------- */

static int handler(sluice_delivery *d, const sluice_message *m, void *u) {
  uint64_t id = UINT64_MAX;
  if (m->body_len >= sizeof(id)) memcpy(&id, m->body, sizeof(id));
  if (id < g_sh->n && atomic_fetch_add(&g_sh->seen[id], 1))
    atomic_fetch_add(&g_sh->dup, 1);
  atomic_fetch_add(&g_sh->handled, 1);
  sleep_ms(g_handler_ms);
  return SLUICE_ACK;
}

static void *publish_stats(void *arg) {
  sluice_consumer *c = arg;
  for (;;) {
    sluice_consumer_stats st;
    sluice_consumer_get_stats(c, &st);
    atomic_store(&g_sh->in_flight, st.in_flight);
    atomic_store(&g_sh->in_flight_bytes, st.in_flight_bytes);
    atomic_store(&g_sh->read_pauses, st.read_pauses);
    atomic_store(&g_sh->connected, st.connected);
    sleep_ms(2);
  }
  return NULL;
}

static void child(int manual, int rcvbuf) {
  sluice_consumer_opts o = {.uri = URI,
                            .ack_mode = manual ? SLUICE_ACK_MANUAL
                                               : SLUICE_ACK_AUTO,
                            .workers = 1,
                            .socket_rcvbuf = rcvbuf};
  sluice_consumer *c;
  if (sluice_consumer_new(&o, &c)) _exit(1);
  sluice_subscribe_opts so = {.queue = g_queue, .handler = handler};
  if (sluice_consumer_subscribe(c, &so)) _exit(1);
  pthread_t t;
  pthread_create(&t, NULL, publish_stats, c);
  sluice_consumer_run(c); /* until killed */
  _exit(0);
}

/* ---- the sockets of the child's connection -------------------------------- */

/* The child's TCP socket to the broker: its local port and Recv-Q, and the
 * broker's socket facing it: its Send-Q. From /proc/net/tcp (inode of the
 * child's socket, then the peer with the ports swapped). */
struct queues {
  unsigned port;
  unsigned long client_rx, broker_tx;
};

static int child_socket_inodes(pid_t pid, unsigned long *ino, int max) {
  int n = bu_socket_inodes((int)pid, ino, max);
  return n < 0 ? 0 : n;
}

static int read_queues(pid_t pid, struct queues *q) {
  unsigned long ino[64];
  int ni = child_socket_inodes(pid, ino, 64);
  FILE *f = fopen("/proc/net/tcp", "r");
  if (!f) return -1;
  char line[512];
  struct row {
    unsigned lport, rport;
    unsigned long tx, rx, inode;
  } rows[4096];
  int nr = 0;
  if (!fgets(line, sizeof(line), f)) {
    fclose(f);
    return -1;
  }
  while (nr < 4096 && fgets(line, sizeof(line), f)) {
    unsigned la, lp, ra, rp, st;
    unsigned long tx, rx, inode;
    if (sscanf(line, " %*d: %x:%x %x:%x %x %lx:%lx %*x:%*x %*x %*u %*u %lu",
               &la, &lp, &ra, &rp, &st, &tx, &rx, &inode) == 8)
      rows[nr++] = (struct row){lp, rp, tx, rx, inode};
  }
  fclose(f);
  memset(q, 0, sizeof(*q));
  for (int i = 0; i < nr && !q->port; i++)
    for (int k = 0; k < ni; k++)
      if (rows[i].inode == ino[k] && rows[i].rport == 5672) {
        q->port = rows[i].lport;
        q->client_rx = rows[i].rx;
      }
  if (!q->port) return -1;
  for (int i = 0; i < nr; i++)
    if (rows[i].lport == 5672 && rows[i].rport == q->port)
      q->broker_tx = rows[i].tx;
  return 0;
}

/* ---- one run ---------------------------------------------------------------- */

struct result {
  size_t size;
  int rcvbuf, manual;
  unsigned long n, handled, left, lost, dup;
  uint64_t in_flight, in_flight_bytes;
  struct queues at_kill;
};

/* Bytes a delivery of `size` takes on the wire: basic.deliver (tag, exchange
 * "", routing key = queue), content header (delivery mode), body frame. */
static double wire_bytes(size_t size) {
  double deliver = 8 + 4 + (1 + 40) + 8 + 1 + 1 + (1 + strlen(g_queue));
  double header = 8 + 12 + 2 + 1;
  double body = 8 + (double)size;
  return deliver + header + body;
}

static struct result run(size_t size, int rcvbuf, int manual, unsigned long n) {
  fill(n, size);
  memset(g_sh, 0, sizeof(*g_sh) + n);
  g_sh->n = n;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) exit(1);
  if (pid == 0) child(manual, rcvbuf);

  /* Steady state: handling, reading paused on the bound (AUTO), and the
   * broker's send queue no longer growing. */
  double end = bu_now() + 30;
  while (bu_now() < end && (atomic_load(&g_sh->handled) < 100 ||
                            (!manual && atomic_load(&g_sh->read_pauses) == 0)))
    sleep_ms(20);
  struct queues q = {0}, prev = {0};
  int stable = 0;
  while (bu_now() < end && stable < 5) {
    sleep_ms(200);
    if (read_queues(pid, &q)) continue;
    unsigned long grew =
        q.broker_tx > prev.broker_tx ? q.broker_tx - prev.broker_tx : 0;
    stable = grew <= 4096 + prev.broker_tx / 50 ? stable + 1 : 0;
    prev = q;
  }
  struct result r = {.size = size, .rcvbuf = rcvbuf, .manual = manual, .n = n};
  read_queues(pid, &r.at_kill);
  r.in_flight = atomic_load(&g_sh->in_flight);
  r.in_flight_bytes = atomic_load(&g_sh->in_flight_bytes);
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
  r.handled = atomic_load(&g_sh->handled);
  r.dup = atomic_load(&g_sh->dup);
  /* Counted once each: in MANUAL mode a delivery handled whose ack had
   * not left is requeued and counted in the queue too (never lost). */
  unsigned long distinct = 0;
  for (unsigned long i = 0; i < n; i++) distinct += g_sh->seen[i] != 0;
  r.handled = distinct;
  r.left = settled_depth();
  unsigned long accounted = r.handled + r.left;
  r.lost = accounted < n ? n - accounted : 0;
  delete_queue();
  return r;
}

static const char *rcvbuf_name(const struct result *r, char *b, size_t n) {
  if (r->manual) snprintf(b, n, "-");
  else if (r->rcvbuf == 0) snprintf(b, n, "128 KiB (dflt)");
  else if (r->rcvbuf < 0) snprintf(b, n, "kernel (auto)");
  else snprintf(b, n, "%d KiB", r->rcvbuf / 1024);
  return b;
}

/* One row: `r` is a configuration's median of each column. */
static void print(const struct result *r, const char *prefix) {
  double w = wire_bytes(r->size);
  char rb[32];
  printf("%s%-6s %7zu  %-15s %8lu %8lu %8lu %8lu %8.2f | %6llu %8.0f %8.0f ",
         prefix, r->manual ? "MANUAL" : "AUTO", r->size,
         rcvbuf_name(r, rb, sizeof(rb)), r->n, r->handled, r->left, r->lost,
         r->lost * w / 1048576.0, (unsigned long long)r->in_flight,
         r->at_kill.client_rx / w, r->at_kill.broker_tx / w);
  if (r->manual) /* what was held comes back: nothing to account for */
    printf("%8s\n", "-");
  else
    printf("%8.0f\n", r->lost - (double)r->in_flight -
                          r->at_kill.client_rx / w - r->at_kill.broker_tx / w);
  fflush(stdout);
}

static int parse_list(char *s, long *out, int max) {
  int n = 0;
  for (char *t = strtok(s, ","); t && n < max; t = strtok(NULL, ","))
    out[n++] = strtol(t, NULL, 10);
  return n;
}

#define MAX_CONFIGS 40
#define MAX_ROUNDS 9

static double med(double *v, int n) {
  return bu_median(v, n);
}

/* The median of each column over the rounds of one configuration. */
static struct result median_of(struct result *r, int n) {
  double v[MAX_ROUNDS];
  struct result m = r[0];
#define MED(field)                                         \
  do {                                                     \
    for (int i = 0; i < n; i++) v[i] = (double)r[i].field; \
    m.field = (__typeof__(m.field))med(v, n);              \
  } while (0)
  MED(handled);
  MED(left);
  MED(lost);
  MED(in_flight);
  MED(at_kill.client_rx);
  MED(at_kill.broker_tx);
#undef MED
  return m;
}

int main(int argc, char **argv) {
  long sizes[8] = {64, 1024, 16384}, rcvbufs[8] = {0, 16384, -1};
  int ns = 3, nr = 3, rounds = 3;
  double mib = 40;
  static const struct option lo[] = {
      {"sizes", 1, 0, 's'},  {"rcvbufs", 1, 0, 'r'},    {"mib", 1, 0, 'm'},
      {"rounds", 1, 0, 'n'}, {"handler-ms", 1, 0, 'h'}, {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "s:r:m:n:h:", lo, NULL)) != -1) {
    if (ch == 's') ns = parse_list(optarg, sizes, 8);
    else if (ch == 'r') nr = parse_list(optarg, rcvbufs, 7);
    else if (ch == 'm') mib = atof(optarg);
    else if (ch == 'n') rounds = atoi(optarg);
    else if (ch == 'h') g_handler_ms = atoi(optarg);
    else return 2;
  }
  if (rounds < 1) rounds = 1;
  if (rounds > MAX_ROUNDS) rounds = MAX_ROUNDS;
  snprintf(g_queue, sizeof(g_queue), "sluice.bench.autoack-loss.%d",
           (int)getpid());
  unsigned long max_n = 0;
  unsigned long ns_n[8];
  for (int i = 0; i < ns; i++) {
    if (sizes[i] < 8) sizes[i] = 8;
    ns_n[i] = (unsigned long)(mib * 1048576.0 / wire_bytes((size_t)sizes[i]));
    if (ns_n[i] > 300000) ns_n[i] = 300000;
    if (ns_n[i] > max_n) max_n = ns_n[i];
  }
  g_sh = mmap(NULL, sizeof(*g_sh) + max_n, PROT_READ | PROT_WRITE,
              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_sh == MAP_FAILED) return 1;
  FILE *f = fopen("/proc/sys/net/ipv4/tcp_wmem", "r");
  char wmem[64] = "?";
  if (f) {
    if (!fgets(wmem, sizeof(wmem), f)) wmem[0] = 0;
    wmem[strcspn(wmem, "\n")] = 0;
    fclose(f);
  }
  printf("# kill -9 of a consumer mid-stream: 1 worker, %d ms handler, "
         "max_inflight 256; queue of ~%.0f MiB on the wire; tcp_wmem %s; "
         "%d interleaved rounds, medians\n",
         g_handler_ms, mib, wmem, rounds);
  printf("# lost = published - handled - left in the queue; at the kill, "
         "in messages: held by sluice, client Recv-Q, broker Send-Q, rest "
         "(rabbitmq-c's read buffer and inside the broker)\n");
  const char *head = "%s%-6s %7s  %-15s %8s %8s %8s %8s %8s | %6s %8s %8s "
                     "%8s\n";
  printf(head, "# ", "mode", "size", "socket_rcvbuf", "sent", "handled", "left",
         "LOST", "lost MiB", "held", "client", "broker", "rest");
  static struct result res[MAX_CONFIGS][MAX_ROUNDS];
  int nc = 0;
  for (int round = 0; round < rounds; round++) {
    nc = 0;
    for (int i = 0; i < ns; i++) {
      for (int k = -1; k < nr && nc < MAX_CONFIGS; k++) {
        struct result r =
            run((size_t)sizes[i], k < 0 ? 0 : (int)rcvbufs[k], k < 0, ns_n[i]);
        print(&r, "# ");
        if (r.dup) printf("# %lu handled twice\n", r.dup);
        if (!r.left)
          printf("# the queue emptied: the loss is a lower bound (--mib)\n");
        res[nc++][round] = r;
      }
    }
  }
  printf(head, "", "mode", "size", "socket_rcvbuf", "sent", "handled", "left",
         "LOST", "lost MiB", "held", "client", "broker", "rest");
  for (int c = 0; c < nc; c++) {
    struct result m = median_of(res[c], rounds);
    print(&m, "");
  }
  return 0;
}
