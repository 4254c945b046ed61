/* SPDX-License-Identifier: MIT */
/* sluice-bench-consume: consume throughput of sluice against a minimal raw
 * rabbitmq-c loop, in the same invocation, on the same broker, each from a
 * pre-filled queue. Prints msg/s, client CPU per message and the ratio.
 *
 *   sluice-bench-consume [--count N] [--size B] [--rounds R]
 *                        [--only per-message|coalesced|prefetch|auto|
 *                                default|tls|ceiling]
 *                        [--prefetch P] [--side raw|sluice|none]
 *                        [--no-fill] [--queue NAME] [--heartbeat S]
 *                        [--broker-pid PID]
 *
 * --prefetch runs only the variants with that prefetch (with --only: of
 * that group). "per-message" is ack each at prefetch 1, 10 and 100 on
 * both sides (sluice ack_batch 1); "default" is sluice as configured by
 * default (MANUAL, prefetch 250, coalesced acks) against the raw loop in
 * autoAck, the fastest the raw loop can consume. "ceiling" runs the raw
 * loop's autoAck against its fastest manual-ack variants (no prefetch
 * limit, multiple acks every 100 to 10,000, two channels), for what manual
 * acknowledgement costs the broker whatever the client, with sluice's
 * default and sluice at prefetch 100 and 1000 in the same rotation.
 *
 * --side runs one client only (the queue is filled all the same): for
 * profiling one side (`strace -c`, `valgrind --tool=callgrind`), with
 * `none` as the filling alone to subtract. --no-fill consumes what the
 * queue holds (filled by a `--side none` run before): with --side and one
 * round, `strace -c` then counts the client's consuming alone.
 *
 * Columns: the medians over the rounds of each side's rate and client CPU
 * per message, the rate ratio of those medians, "cpu x" the median of
 * sluice's CPU over the raw loop's in the same round, and each side's
 * context switches per message, voluntary/involuntary (getrusage). At
 * prefetch 1 every message is a sleep (about one voluntary switch), and
 * the involuntary ones are mostly the broker's thread, woken by the ack
 * on the client's CPU, preempting the client as its send returns: they
 * vary from run to run by more than the two clients differ and carry
 * their CPU with them (docs/benchmarks.md, "Prefetch 1: where the kernel
 * time goes").
 *
 * Then the broker's side of each span: "br us" the broker's CPU per message
 * (the run time of its OS process's threads, /proc/PID/task/TID/schedstat,
 * read just outside each side's timed span: it counts every client of the
 * broker, so run it alone); "busy" the CPUs busy on the whole machine
 * during the span (/proc/stat, 0 to the CPU count: 2.00 is both CPUs
 * saturated; more than "cl+br" is other processes' work);
 * "cl+br" the client's and broker's CPU alone over the span's wall time, in
 * CPUs. "pred x" is the raw side's client+broker CPU per message over
 * sluice's, by round: the rate ratio to expect if the CPUs, not waiting,
 * were the limit. "bound x" is the rate sluice would reach were its own CPU
 * zero and the broker's work per message to fill every CPU, over the raw
 * side's rate. The broker is the beam.smp process holding the socket
 * listening on 5672 (found through its descriptors: that needs root or the
 * broker's user), else the only beam.smp on the machine; --broker-pid PID
 * names it. The "tls" variants read the TLS node's process, found the same
 * way by its plaintext port. "ceiling" prints the same for each variant,
 * "pred x" and "bound x" there against the autoAck run of the round.
 *
 * --heartbeat S negotiates S-second heartbeats on both sides (0: off on
 * both); by default the raw loop runs without and sluice with its default
 * 30 s, which costs rabbitmq-c two clock reads per socket read.
 *
 * The "tls" variants run against the TLS node of scripts/tls-broker.sh
 * (SLUICE_TLS_PORT, SLUICE_TLS_AMQP_PORT, SLUICE_TLS_DIR as there): sluice
 * over amqps:// against rabbitmq-c's SSL socket in the same loop, both with
 * the node's client certificate, the queue filled through the node's
 * plaintext port; they are skipped when the node is not up.
 */
#include <dirent.h>
#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include <sluice/sluice.h>

#include "../common/bench_util.h"

static const char *URI = "amqp://guest:guest@127.0.0.1:5672/";
/* One queue for every run; --queue names another, so that two benchmarks
 * on one broker do not consume each other's messages. */
static const char *QUEUE = "sluice.bench.consume";
/* --heartbeat: -1 (unset) leaves the raw loop without heartbeats and
 * sluice at its default (30 s); S > 0 gives both S seconds, 0 neither. */
static int heartbeat = -1;

/* The TLS node (scripts/tls-broker.sh). */
static int tls_port = 5671, tls_amqp_port = 5691;
static char tls_uri[128], tls_fill_uri[128];
static char ca[512], cert[512], key[512];

static void tls_setup(void) {
  const char *v = getenv("SLUICE_TLS_PORT");
  if (v) tls_port = atoi(v);
  if ((v = getenv("SLUICE_TLS_AMQP_PORT"))) tls_amqp_port = atoi(v);
  const char *dir = getenv("SLUICE_TLS_DIR");
  if (!dir) dir = "/tmp/sluice-tls";
  snprintf(ca, sizeof(ca), "%s/certs/ca.pem", dir);
  snprintf(cert, sizeof(cert), "%s/certs/client.pem", dir);
  snprintf(key, sizeof(key), "%s/certs/client.key", dir);
  snprintf(tls_uri, sizeof(tls_uri), "amqps://guest:guest@localhost:%d/",
           tls_port);
  snprintf(tls_fill_uri, sizeof(tls_fill_uri),
           "amqp://guest:guest@127.0.0.1:%d/", tls_amqp_port);
}

/* ---- the broker's CPU and the machine's ---------------------------------- */

/* The broker's OS process (beam.smp): --broker-pid PID, or found at start
 * (broker_find()); 0: none (the broker columns read 0). tls_broker_pid:
 * the TLS node's, found by its plaintext port; span_pid: the one read by
 * the span being timed. */
static int broker_pid, tls_broker_pid, span_pid;
static double clk_tck = 100;
static int ncpu = 1;

/* Inodes of the sockets listening on TCP `port` (/proc/net/tcp, tcp6). */
static int listen_inodes(int port, unsigned long *ino, int max) {
  static const char *files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
  int n = 0;
  for (int f = 0; f < 2; f++) {
    FILE *fp = fopen(files[f], "r");
    if (!fp) continue;
    char line[512];
    while (fgets(line, sizeof(line), fp) && n < max) {
      char local[80];
      unsigned st;
      unsigned long inode;
      /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
      if (sscanf(line, " %*s %79s %*s %x %*s %*s %*s %*s %*s %lu", local, &st,
                 &inode) != 3)
        continue;
      const char *colon = strrchr(local, ':');
      if (st == 0x0A && colon && strtol(colon + 1, NULL, 16) == port)
        ino[n++] = inode;
    }
    fclose(fp);
  }
  return n;
}

static int comm_is(int pid, const char *name) {
  char path[64], comm[64] = "";
  snprintf(path, sizeof(path), "/proc/%d/comm", pid);
  FILE *fp = fopen(path, "r");
  if (!fp) return 0;
  int ok = fgets(comm, sizeof(comm), fp) != NULL;
  fclose(fp);
  comm[strcspn(comm, "\n")] = 0;
  return ok && !strcmp(comm, name);
}

/* 1 if `pid` holds one of the sockets `ino`; -1 if its descriptors cannot
 * be read (another user's process, not root). */
static int holds_socket(int pid, const unsigned long *ino, int n) {
  static unsigned long held[8192]; /* a broker's sockets, clients included */
  int m = bu_socket_inodes(pid, held, 8192);
  if (m < 0) return -1;
  for (int j = 0; j < m; j++)
    for (int k = 0; k < n; k++)
      if (held[j] == ino[k]) return 1;
  return 0;
}

/* The beam.smp process listening on `port`, matched by the listening
 * socket's inode among its descriptors; when the descriptors cannot be
 * read, the only beam.smp on the machine. 0 if neither. `how` says which. */
static int broker_find(int port, const char **how) {
  unsigned long ino[8];
  int ni = listen_inodes(port, ino, 8);
  int only = 0, beams = 0, unreadable = 0;
  DIR *d = opendir("/proc");
  if (!d) return 0;
  struct dirent *e;
  int pid = 0;
  while (!pid && (e = readdir(d))) {
    int p = atoi(e->d_name);
    if (p <= 0 || !comm_is(p, "beam.smp")) continue;
    beams++;
    only = p;
    int h = ni ? holds_socket(p, ino, ni) : -1;
    if (h == 1) pid = p;
    else if (h < 0) unreadable++;
  }
  closedir(d);
  if (pid) {
    *how = "the beam.smp holding the listening socket";
    return pid;
  }
  if (beams == 1 && unreadable) {
    *how = "the only beam.smp (its sockets not readable)";
    return only;
  }
  *how = beams ? "no beam.smp seen listening on the port (--broker-pid)"
               : "no beam.smp process";
  return 0;
}

/* The broker's CPU seconds so far: the run time of its threads summed
 * (/proc/PID/task/TID/schedstat, in ns), else user+system from
 * /proc/PID/stat (in clock ticks, 10 ms). */
static double broker_cpu(void) {
  if (span_pid <= 0) return 0;
  char path[320], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/task", span_pid);
  DIR *d = opendir(path);
  double ns = 0;
  int threads = 0;
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof(path), "/proc/%d/task/%s/schedstat", span_pid,
             e->d_name);
    FILE *fp = fopen(path, "r");
    unsigned long long run;
    if (!fp) continue;
    if (fscanf(fp, "%llu", &run) == 1) ns += (double)run, threads++;
    fclose(fp);
  }
  if (d) closedir(d);
  if (threads) return ns / 1e9;
  snprintf(path, sizeof(path), "/proc/%d/stat", span_pid);
  FILE *fp = fopen(path, "r");
  if (!fp) return 0;
  size_t len = fread(buf, 1, sizeof(buf) - 1, fp);
  fclose(fp);
  buf[len] = 0;
  /* after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt
   * majflt cmajflt utime stime */
  const char *p = strrchr(buf, ')');
  unsigned long long ut, st;
  if (!p || sscanf(p + 1,
                   " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu "
                   "%llu",
                   &ut, &st) != 2)
    return 0;
  return (double)(ut + st) / clk_tck;
}

/* The machine's busy and total CPU time so far, in ticks summed over the
 * CPUs (/proc/stat: busy is everything but idle and iowait). */
static void machine_cpu(double *busy, double *total) {
  unsigned long long v[8] = {0};
  *busy = *total = 0;
  FILE *fp = fopen("/proc/stat", "r");
  if (!fp) return;
  int n = fscanf(fp, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
                 &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
  fclose(fp);
  if (n < 4) return;
  for (int i = 0; i < 8; i++) *total += (double)v[i];
  *busy = *total - (double)v[3] - (double)v[4];
}

/* Everything read at each end of a timed span. */
struct mark {
  double t, cpu;      /* wall clock, this process's CPU */
  long cs[2];         /* context switches, voluntary and involuntary */
  double broker;      /* broker CPU seconds */
  double busy, total; /* machine CPU ticks */
};

static void switches(long cs[2]);

/* The clocks innermost: the /proc reads stay out of the client's span. */
static void mark_start(struct mark *m) {
  switches(m->cs);
  m->broker = broker_cpu();
  machine_cpu(&m->busy, &m->total);
  m->t = bu_now();
  m->cpu = bu_cpu();
}

static void mark_end(struct mark *m) {
  m->t = bu_now();
  m->cpu = bu_cpu();
  machine_cpu(&m->busy, &m->total);
  m->broker = broker_cpu();
  switches(m->cs);
}

struct result {
  double rate;   /* msg/s */
  double cpu_us; /* client CPU per message, microseconds */
  /* context switches per message (getrusage): the process went to sleep
   * (voluntary) or was preempted (involuntary, at prefetch 1 mostly by the
   * broker's thread that its ack woke on the same CPU) */
  double vcs, ics;
  double broker_us; /* the broker's CPU per message, microseconds */
  /* CPUs busy during the span (0 to the machine's CPU count): the whole
   * machine (/proc/stat), and the client and broker alone */
  double busy, cb_busy;
};

/* The process's context switches so far: [0] voluntary, [1] involuntary. */
static void switches(long cs[2]) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  cs[0] = ru.ru_nvcsw;
  cs[1] = ru.ru_nivcsw;
}

static struct result result_of(unsigned long n, const struct mark *a,
                               const struct mark *b) {
  double wall = b->t - a->t, client = b->cpu - a->cpu,
         broker = b->broker - a->broker, total = b->total - a->total;
  struct result r = {n / wall,
                     client * 1e6 / n,
                     (double)(b->cs[0] - a->cs[0]) / n,
                     (double)(b->cs[1] - a->cs[1]) / n,
                     broker * 1e6 / n,
                     total > 0 ? (b->busy - a->busy) / total * ncpu : 0,
                     (client + broker) / wall};
  return r;
}

/* ---- the reference: a blocking rabbitmq-c loop -------------------------- */

static void check(amqp_rpc_reply_t r, const char *what) {
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    fprintf(stderr, "raw: %s failed\n", what);
    exit(1);
  }
}

/* ack_every: 0 = autoAck; 1 = ack each; k = ack multiple every k */
static struct result raw_loop(unsigned long n, unsigned prefetch,
                              unsigned ack_every, int tls) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *s;
  if (tls == 1) {
    /* rabbitmq-c's SSL socket as its documentation sets it up. */
    s = amqp_ssl_socket_new(conn);
    if (!s || amqp_ssl_socket_set_cacert(s, ca) ||
        amqp_ssl_socket_set_key(s, cert, key) ||
        amqp_socket_open(s, "localhost", tls_port)) {
      fprintf(stderr, "raw: TLS connect to localhost:%d failed\n", tls_port);
      exit(1);
    }
  } else {
    s = amqp_tcp_socket_new(conn);
    if (amqp_socket_open(s, "127.0.0.1", tls ? tls_amqp_port : 5672)) exit(1);
  }
  check(amqp_login(conn, "/", 0, 131072, heartbeat > 0 ? heartbeat : 0,
                   AMQP_SASL_METHOD_PLAIN, "guest", "guest"),
        "login");
  amqp_channel_open(conn, 1);
  check(amqp_get_rpc_reply(conn), "channel");
  if (ack_every) {
    amqp_basic_qos(conn, 1, 0, (uint16_t)prefetch, 0);
    check(amqp_get_rpc_reply(conn), "qos");
  }
  amqp_basic_consume(conn, 1, amqp_cstring_bytes(QUEUE), amqp_empty_bytes, 0,
                     ack_every == 0, 0, amqp_empty_table);
  check(amqp_get_rpc_reply(conn), "consume");
  struct mark m0, m1;
  mark_start(&m0);
  unsigned long got = 0;
  while (got < n) {
    amqp_envelope_t env;
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t r = amqp_consume_message(conn, &env, NULL, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      fprintf(stderr, "raw: consume_message failed\n");
      exit(1);
    }
    got++;
    if (ack_every == 1) amqp_basic_ack(conn, 1, env.delivery_tag, 0);
    else if (ack_every > 1 && (got % ack_every == 0 || got == n))
      amqp_basic_ack(conn, 1, env.delivery_tag, 1);
    amqp_destroy_envelope(&env);
  }
  mark_end(&m1);
  amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
  return result_of(n, &m0, &m1);
}

/* ---- the raw loop's own ceiling ------------------------------------------ */

/* The raw loop in manual mode on `channels` channels of one connection,
 * each a consumer of the queue with basic.qos `prefetch` (0: no limit) and
 * a multiple ack every `ack_every` deliveries of that channel; or autoAck
 * (ack_every 0, one channel). For what manual acknowledgement costs the
 * broker, whatever the client: --only ceiling. */
static struct result raw_manual(unsigned long n, unsigned prefetch,
                                unsigned ack_every, int channels) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *s = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(s, "127.0.0.1", 5672)) exit(1);
  check(amqp_login(conn, "/", 0, 131072, heartbeat > 0 ? heartbeat : 0,
                   AMQP_SASL_METHOD_PLAIN, "guest", "guest"),
        "login");
  uint64_t last[8] = {0};
  unsigned pending[8] = {0};
  for (int ch = 1; ch <= channels; ch++) {
    amqp_channel_open(conn, (amqp_channel_t)ch);
    check(amqp_get_rpc_reply(conn), "channel");
    if (ack_every) {
      amqp_basic_qos(conn, (amqp_channel_t)ch, 0, (uint16_t)prefetch, 0);
      check(amqp_get_rpc_reply(conn), "qos");
    }
    amqp_basic_consume(conn, (amqp_channel_t)ch, amqp_cstring_bytes(QUEUE),
                       amqp_empty_bytes, 0, ack_every == 0, 0,
                       amqp_empty_table);
    check(amqp_get_rpc_reply(conn), "consume");
  }
  struct mark m0, m1;
  mark_start(&m0);
  unsigned long got = 0;
  while (got < n) {
    amqp_envelope_t env;
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t r = amqp_consume_message(conn, &env, NULL, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      fprintf(stderr, "raw: consume_message failed\n");
      exit(1);
    }
    got++;
    int ch = env.channel;
    if (ack_every && ch >= 1 && ch <= channels) {
      last[ch] = env.delivery_tag;
      if (++pending[ch] >= ack_every) {
        amqp_basic_ack(conn, (amqp_channel_t)ch, last[ch], 1);
        pending[ch] = 0;
      }
    }
    amqp_destroy_envelope(&env);
  }
  for (int ch = 1; ack_every && ch <= channels; ch++)
    if (pending[ch]) amqp_basic_ack(conn, (amqp_channel_t)ch, last[ch], 1);
  mark_end(&m1);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
  return result_of(n, &m0, &m1);
}

/* ---- sluice -------------------------------------------------------------- */

static sluice_consumer *g_c;
static unsigned long g_n;
static atomic_ulong g_got;

static int noop(sluice_delivery *d, const sluice_message *m, void *u) {
  if (atomic_fetch_add_explicit(&g_got, 1, memory_order_relaxed) + 1 == g_n)
    sluice_consumer_stop(g_c);
  return SLUICE_ACK;
}

static struct result sluice_run(unsigned long n, sluice_consumer_opts o,
                                int tls) {
  o.uri = tls == 2 ? tls_fill_uri : URI;
  if (heartbeat >= 0) o.heartbeat_s = heartbeat > 0 ? heartbeat : -1;
  if (tls == 1) {
    o.uri = tls_uri;
    o.tls.ca_file = ca;
    o.tls.cert_file = cert;
    o.tls.key_file = key;
  }
  g_n = n;
  atomic_store(&g_got, 0);
  if (sluice_consumer_new(&o, &g_c)) exit(1);
  sluice_subscribe_opts so = {.queue = QUEUE, .handler = noop};
  if (sluice_consumer_subscribe(g_c, &so)) exit(1);
  if (sluice_consumer_connect(g_c)) exit(1);
  struct mark m0, m1;
  mark_start(&m0);
  int rc = sluice_consumer_run(g_c);
  mark_end(&m1);
  if (rc || atomic_load(&g_got) != n) {
    fprintf(stderr, "sluice: run %s, %lu of %lu\n", sluice_strerror(rc),
            (unsigned long)atomic_load(&g_got), n);
    exit(1);
  }
  sluice_consumer_free(g_c);
  return result_of(n, &m0, &m1);
}

struct ceiling {
  const char *name;
  unsigned prefetch, ack_every;
  int channels;
  int sluice; /* 1: sluice with `prefetch` and its default coalescing */
};

/* Every variant once per round, the order rotating each round, the queue
 * filled before each run; medians, and each variant's rate against the
 * autoAck run of the same round. sluice's default (MANUAL, prefetch 250,
 * coalesced acks), and sluice at prefetch 100 and 1000, run in the same
 * rotation, so what a manual-ack client can reach on this broker is read
 * beside them. */
static void ceiling_run(unsigned long n, size_t size, int rounds) {
  static const struct ceiling cs[] = {
      {"raw autoAck (reference)", 0, 0, 1, 0},
      {"prefetch 1000, multiple every 100", 1000, 100, 1, 0},
      {"prefetch 1000, multiple every 500", 1000, 500, 1, 0},
      {"no prefetch limit, multiple every 1000", 0, 1000, 1, 0},
      {"no prefetch limit, multiple every 10000", 0, 10000, 1, 0},
      {"2 channels, prefetch 1000, multiple every 100", 1000, 100, 2, 0},
      {"2 channels, no limit, multiple every 1000", 0, 1000, 2, 0},
      {"sluice default (prefetch 250, coalesced)", 0, 0, 1, 1},
      {"sluice prefetch 100, coalesced", 100, 0, 1, 1},
      {"sluice prefetch 1000, coalesced", 1000, 0, 1, 1},
  };
  enum { NC = sizeof(cs) / sizeof(cs[0]) };
  double rate[NC][15], cpu[NC][15], ratio[NC][15];
  double br[NC][15], cb[NC][15], busy[NC][15], cbb[NC][15], pred[NC][15],
      bound[NC][15];
  for (int r = 0; r < rounds; r++) {
    for (int k = 0; k < NC; k++) {
      int v = (k + r) % NC;
      bu_fill(URI, QUEUE, n, size);
      sluice_consumer_opts o = {.prefetch = (uint16_t)cs[v].prefetch};
      struct result x =
          cs[v].sluice
              ? sluice_run(n, o, 0)
              : raw_manual(n, cs[v].prefetch, cs[v].ack_every, cs[v].channels);
      rate[v][r] = x.rate;
      cpu[v][r] = x.cpu_us;
      br[v][r] = x.broker_us;
      cb[v][r] = x.cpu_us + x.broker_us;
      busy[v][r] = x.busy;
      cbb[v][r] = x.cb_busy;
    }
    for (int v = 0; v < NC; v++) {
      ratio[v][r] = rate[v][r] / rate[0][r];
      pred[v][r] = cb[v][r] > 0 ? cb[0][r] / cb[v][r] : 0;
      bound[v][r] = br[v][r] > 0 ? ncpu * 1e6 / br[v][r] / rate[0][r] : 0;
    }
  }
  printf("%-46s %12s %9s %10s %9s %9s %6s %6s %7s %7s\n", "variant", "msg/s",
         "vs auto", "us/msg", "broker us", "cl+br us", "busy", "cl+br",
         "pred x", "bound x");
  for (int v = 0; v < NC; v++)
    printf("%-46s %12.0f %8.2fx %10.2f %9.2f %9.2f %6.2f %6.2f %6.2fx "
           "%6.2fx\n",
           cs[v].name, bu_median(rate[v], rounds), bu_median(ratio[v], rounds),
           bu_median(cpu[v], rounds), bu_median(br[v], rounds),
           bu_median(cb[v], rounds), bu_median(busy[v], rounds),
           bu_median(cbb[v], rounds), bu_median(pred[v], rounds),
           bu_median(bound[v], rounds));
}

/* ---- driver -------------------------------------------------------------- */

struct variant {
  const char *name;
  const char *group;
  unsigned prefetch;
  unsigned raw_ack_every; /* 0 = autoAck */
  sluice_consumer_opts o;
  int tls; /* 1: both over TLS, on the TLS node; 2: on the TLS node's
              plaintext port (what TLS costs) */
};

int main(int argc, char **argv) {
  unsigned long n = 200000;
  size_t size = 256;
  int rounds = 3;
  const char *only = NULL, *side = NULL;
  long only_prefetch = -1;
  int fill_queue = 1;
  static const struct option lo[] = {
      {"count", 1, 0, 'n'},      {"side", 1, 0, 'S'},  {"size", 1, 0, 's'},
      {"rounds", 1, 0, 'r'},     {"only", 1, 0, 'o'},  {"prefetch", 1, 0, 'p'},
      {"no-fill", 0, 0, 'F'},    {"queue", 1, 0, 'Q'}, {"heartbeat", 1, 0, 'H'},
      {"broker-pid", 1, 0, 'B'}, {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "n:s:r:o:S:p:FQ:H:B:", lo, NULL)) !=
         -1) {
    if (ch == 'n') n = strtoul(optarg, NULL, 10);
    else if (ch == 'B') broker_pid = atoi(optarg);
    else if (ch == 'p') only_prefetch = strtol(optarg, NULL, 10);
    else if (ch == 'F') fill_queue = 0;
    else if (ch == 'Q') QUEUE = optarg;
    else if (ch == 'H') heartbeat = atoi(optarg) < 0 ? -1 : atoi(optarg);
    else if (ch == 's') size = strtoul(optarg, NULL, 10);
    else if (ch == 'r') rounds = atoi(optarg);
    else if (ch == 'o') only = optarg;
    else if (ch == 'S') side = optarg;
    else return 2;
  }
  if (rounds < 1 || rounds > 15 || n == 0) return 2;

  struct variant vs[] = {
      {"prefetch 100, ack each",
       "per-message",
       100,
       1,
       {.prefetch = 100, .ack_batch = 1},
       0},
      {"prefetch 10, ack each",
       "per-message",
       10,
       1,
       {.prefetch = 10, .ack_batch = 1},
       0},
      {"prefetch 1, ack each",
       "per-message",
       1,
       1,
       {.prefetch = 1, .ack_batch = 1},
       0},
      {"sluice default (manual) vs raw autoAck", "default", 100, 0, {}, 0},
      {"prefetch 100, coalesced (sluice default)",
       "coalesced",
       100,
       1,
       {.prefetch = 100},
       0},
      {"prefetch 1000, coalesced vs raw multiple/100",
       "coalesced",
       1000,
       100,
       {.prefetch = 1000},
       0},
      {"prefetch 1", "prefetch", 1, 1, {.prefetch = 1}, 0},
      {"prefetch 10", "prefetch", 10, 1, {.prefetch = 10}, 0},
      {"prefetch 1000, ack each",
       "prefetch",
       1000,
       1,
       {.prefetch = 1000, .ack_batch = 1},
       0},
      {"autoAck", "auto", 0, 0, {.ack_mode = SLUICE_ACK_AUTO}, 0},
      {"TLS node, plaintext port: prefetch 100, ack each",
       "tls",
       100,
       1,
       {.prefetch = 100, .ack_batch = 1},
       2},
      {"TLS: prefetch 100, ack each",
       "tls",
       100,
       1,
       {.prefetch = 100, .ack_batch = 1},
       1},
      {"TLS: prefetch 100, coalesced (sluice default)",
       "tls",
       100,
       1,
       {.prefetch = 100},
       1},
  };
  tls_setup();
  printf("# %lu x %zu B messages per run, %d round(s), medians; client CPU "
         "is this process only (the broker runs beside it)\n",
         n, size, rounds);
  clk_tck = (double)sysconf(_SC_CLK_TCK);
  ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (ncpu < 1) ncpu = 1;
  const char *how = "--broker-pid";
  if (!broker_pid) broker_pid = broker_find(5672, &how);
  if (broker_pid > 0)
    printf("# broker: pid %d (%s), CPU from /proc/%d/task/*/schedstat; %d "
           "CPUs (/proc/stat)\n",
           broker_pid, how, broker_pid, ncpu);
  else printf("# broker: not found (%s): broker columns read 0\n", how);
  span_pid = broker_pid;
  if (only && !strcmp(only, "ceiling")) {
    ceiling_run(n, size, rounds);
    return 0;
  }
  printf("%-46s %12s %12s %7s %10s %10s %7s %11s %11s %9s %9s %8s %7s %9s "
         "%8s %7s %7s\n",
         "variant", "raw msg/s", "sluice msg/s", "ratio", "raw us/msg",
         "sluice us/msg", "cpu x", "raw cs v/i", "sl cs v/i", "raw br us",
         "sl br us", "raw busy", "sl busy", "raw cl+br", "sl cl+br", "pred x",
         "bound x");
  for (size_t v = 0; v < sizeof(vs) / sizeof(*vs); v++) {
    if (only && strcmp(only, vs[v].group) != 0) continue;
    if (only_prefetch >= 0 && vs[v].prefetch != (unsigned long)only_prefetch)
      continue;
    if (vs[v].tls && !bu_port_open(tls_port)) {
      printf("%-46s skipped: no TLS node on port %d (scripts/tls-broker.sh "
             "start)\n",
             vs[v].name, tls_port);
      continue;
    }
    const char *fill = vs[v].tls ? tls_fill_uri : URI;
    if (vs[v].tls && !tls_broker_pid) {
      const char *thow;
      tls_broker_pid = broker_find(tls_amqp_port, &thow);
      printf("# TLS node: pid %d (%s)\n", tls_broker_pid, thow);
      if (!tls_broker_pid) tls_broker_pid = -1;
    }
    span_pid = vs[v].tls ? tls_broker_pid : broker_pid;
    /* rates, CPU per message, context switches per message (voluntary,
     * involuntary) of each side per round; cx: sluice's CPU over the raw
     * loop's in the same round */
    double rr[15], sr[15], rc[15], sc[15], cx[15];
    double rv[15], ri[15], sv[15], si[15];
    /* the broker's CPU per message, CPUs busy (machine; client and broker)
     * while each side ran; pred: the raw side's client+broker CPU per
     * message over sluice's, the rate ratio if the CPUs were the limit;
     * bound: sluice's rate, were its own CPU zero and the broker's alone
     * to fill every CPU, over the raw side's */
    double rb[15], sb[15], rbu[15], sbu[15], rcb[15], scb[15], pred[15],
        bound[15];
    for (int r = 0; r < rounds; r++) {
      /* alternate which goes first: the broker warms up too */
      for (int k = 0; k < 2; k++) {
        int do_raw = (r + k) % 2 == 0;
        if (side && strcmp(side, do_raw ? "raw" : "sluice")) {
          if (!strcmp(side, "none") && do_raw) bu_fill(fill, QUEUE, n, size);
          if (do_raw)
            rr[r] = rc[r] = rv[r] = ri[r] = rb[r] = rbu[r] = rcb[r] = 1;
          else sr[r] = sc[r] = sv[r] = si[r] = sb[r] = sbu[r] = scb[r] = 1;
          continue;
        }
        if (fill_queue) bu_fill(fill, QUEUE, n, size);
        if (do_raw) {
          struct result x =
              raw_loop(n, vs[v].prefetch, vs[v].raw_ack_every, vs[v].tls);
          rr[r] = x.rate;
          rc[r] = x.cpu_us;
          rv[r] = x.vcs;
          ri[r] = x.ics;
          rb[r] = x.broker_us;
          rbu[r] = x.busy;
          rcb[r] = x.cb_busy;
        } else {
          struct result x = sluice_run(n, vs[v].o, vs[v].tls);
          sr[r] = x.rate;
          sc[r] = x.cpu_us;
          sv[r] = x.vcs;
          si[r] = x.ics;
          sb[r] = x.broker_us;
          sbu[r] = x.busy;
          scb[r] = x.cb_busy;
        }
      }
      cx[r] = sc[r] / rc[r];
      pred[r] = (rc[r] + rb[r]) / (sc[r] + sb[r]);
      bound[r] = sb[r] > 0 ? ncpu * 1e6 / sb[r] / rr[r] : 0;
    }
    double mr = bu_median(rr, rounds), ms = bu_median(sr, rounds);
    double mcx = bu_median(cx, rounds);
    printf("%-46s %12.0f %12.0f %6.2fx %10.2f %10.2f %6.2fx %5.2f/%5.2f "
           "%5.2f/%5.2f %9.2f %9.2f %8.2f %7.2f %9.2f %8.2f %6.2fx %6.2fx\n",
           vs[v].name, mr, ms, ms / mr, bu_median(rc, rounds),
           bu_median(sc, rounds), mcx, bu_median(rv, rounds),
           bu_median(ri, rounds), bu_median(sv, rounds), bu_median(si, rounds),
           bu_median(rb, rounds), bu_median(sb, rounds), bu_median(rbu, rounds),
           bu_median(sbu, rounds), bu_median(rcb, rounds),
           bu_median(scb, rounds), bu_median(pred, rounds),
           bu_median(bound, rounds));
    fflush(stdout);
  }
  return 0;
}
