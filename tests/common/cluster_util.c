/* SPDX-License-Identifier: MIT */
#include "cluster_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SLUICE_CLUSTER_SCRIPT
#error "SLUICE_CLUSTER_SCRIPT must name scripts/cluster.sh"
#endif

static int base_port(void) {
  const char *e = getenv("SLUICE_CLUSTER_PORT");
  int p = e ? atoi(e) : 0;
  return p > 0 && p < 65000 ? p : 5681;
}

static const char *dir(void) {
  const char *e = getenv("SLUICE_CLUSTER_DIR");
  return e && *e ? e : "/tmp/sluice-cluster";
}

int cl_port(int node) {
  return base_port() + node - 1;
}

const char *cl_name(int node) {
  static char names[CL_NODES + 1][32];
  snprintf(names[node], sizeof(names[0]), "sluice%d@localhost", node);
  return names[node];
}

const char *cl_uri(int node) {
  static char uris[CL_NODES + 1][64];
  snprintf(uris[node], sizeof(uris[0]), "amqp://guest:guest@127.0.0.1:%d/",
           cl_port(node));
  return uris[node];
}

uint64_t cl_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void nap_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int cl_node_up(int node) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)cl_port(node))};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
  close(fd);
  return ok;
}

static void on_alarm(int sig) {
  (void)sig;
}

/* flock(LOCK_EX) bounded by SIGALRM: another suite's cluster test may hold
 * the lock for a while; the wait is an event (the lock's release). */
static void take_lock(const char *test, int wait_s) {
  char path[512];
  snprintf(path, sizeof(path), "%s/lock", dir());
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) {
    fprintf(stderr, "%s: cannot open %s: %s\n", test, path, strerror(errno));
    exit(1);
  }
  if (flock(fd, LOCK_EX | LOCK_NB) == 0) return; /* kept open until exit */
  fprintf(stderr,
          "%s: waiting up to %d s for the cluster lock (another "
          "suite's cluster test)\n",
          test, wait_s);
  struct sigaction sa = {.sa_handler = on_alarm}, old;
  sigaction(SIGALRM, &sa, &old); /* no SA_RESTART: flock returns EINTR */
  uint64_t t0 = cl_now_ms();
  alarm((unsigned)wait_s);
  int rc = flock(fd, LOCK_EX);
  alarm(0);
  sigaction(SIGALRM, &old, NULL);
  if (rc == 0)
    fprintf(stderr, "%s: got the cluster lock after %.1f s\n", test,
            (double)(cl_now_ms() - t0) / 1000.0);
  if (rc != 0) {
    fprintf(stderr, "%s: FAIL: cluster lock %s still held after %d s\n", test,
            path, wait_s);
    exit(1);
  }
}

void cl_require(const char *test, int lock_wait_s) {
  int up = 0;
  for (int i = 1; i <= CL_NODES; i++) up += cl_node_up(i);
  if (up == 0) {
    const char *req = getenv("SLUICE_REQUIRE_CLUSTER");
    if (req && strcmp(req, "1") == 0) {
      fprintf(stderr,
              "%s: FAIL: no test cluster on 127.0.0.1:%d-%d and "
              "SLUICE_REQUIRE_CLUSTER=1\n",
              test, cl_port(1), cl_port(CL_NODES));
      exit(1);
    }
    fprintf(stderr,
            "%s: SKIPPED: no test cluster on 127.0.0.1:%d-%d "
            "(start it with scripts/cluster.sh start)\n",
            test, cl_port(1), cl_port(CL_NODES));
    exit(77);
  }
  take_lock(test, lock_wait_s);
  if (up < CL_NODES) {
    fprintf(stderr, "%s: %d of %d cluster nodes up: starting the others\n",
            test, up, CL_NODES);
    if (cl_start() != 0) {
      fprintf(stderr, "%s: FAIL: cannot bring the cluster back\n", test);
      exit(1);
    }
  }
}

/* 1 if `pid` is node `node`'s beam: its distribution port is on its command
 * line (as scripts/cluster.sh starts it). A stale pid file must never make
 * a test kill another process. */
static int is_node_process(long pid, int node) {
  char path[64], needle[64], buf[4096];
  snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  for (size_t i = 0; i < n; i++)
    if (buf[i] == '\0') buf[i] = ' ';
  buf[n] = '\0';
  snprintf(needle, sizeof(needle), "inet_dist_listen_min %d ",
           cl_port(node) + 20000);
  return strstr(buf, needle) != NULL;
}

long cl_pid(int node) {
  char path[512];
  snprintf(path, sizeof(path), "%s/node%d/pid", dir(), node);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  long pid = -1;
  if (fscanf(f, "%ld", &pid) != 1) pid = -1;
  fclose(f);
  return pid > 1 && is_node_process(pid, node) ? pid : -1;
}

/* Alive and not a zombie (a killed node is reparented to init, which reaps
 * it eventually: kill(pid, 0) succeeds on a zombie). */
static int alive(long pid) {
  char path[64], buf[256];
  snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

int cl_kill(int node) {
  long pid = cl_pid(node);
  if (pid <= 1 || !alive(pid)) return -1;
  if (kill((pid_t)pid, SIGKILL) != 0) return -1;
  /* No event tells another process that this one is gone: poll, bounded.
   * The kernel closes its sockets as it dies, so this is quick. */
  uint64_t end = cl_now_ms() + 10000;
  while ((alive(pid) || cl_node_up(node)) && cl_now_ms() < end) nap_ms(2);
  return alive(pid) || cl_node_up(node) ? -1 : 0;
}

/* Close every descriptor above stderr except `keep` in a child: a node
 * started from here must not inherit the test's sockets (the broker would
 * never see those connections close) or its lock. */
static void close_inherited(int keep) {
  long max = sysconf(_SC_OPEN_MAX);
  if (max < 0 || max > 65536) max = 65536;
  for (int fd = 3; fd < max; fd++)
    if (fd != keep) close(fd);
}

int cl_start(void) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    close_inherited(-1);
    dup2(2, 1); /* the script's progress goes to stderr */
    setenv("SLUICE_CLUSTER_LOCK_HELD", "1", 1); /* this process holds it */
    execlp("bash", "bash", SLUICE_CLUSTER_SCRIPT, "start", (char *)NULL);
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

int cl_ctl(int node, char *buf, size_t buflen, const char *fmt, ...) {
  char args[512], cmd[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof(args), fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof(cmd), "rabbitmqctl -s -n %s %s 2>/dev/null",
           cl_name(node), args);
  FILE *f = popen(cmd, "r");
  if (!f) return -1;
  size_t len = 0;
  char tmp[4096];
  size_t n;
  while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0) {
    if (buf && buflen > 1 && len < buflen - 1) {
      size_t k = n < buflen - 1 - len ? n : buflen - 1 - len;
      memcpy(buf + len, tmp, k);
      len += k;
    }
  }
  if (buf && buflen) buf[len] = '\0';
  int st = pclose(f);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int cl_quorum_leader(const char *queue) {
  char out[8192];
  /* Ask a node other than a possibly dead one: any running node knows. */
  for (int via = 1; via <= CL_NODES; via++) {
    if (!cl_node_up(via)) continue;
    if (cl_ctl(via, out, sizeof(out), "list_queues name leader") != 0) continue;
    size_t ql = strlen(queue);
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
      if (strncmp(line, queue, ql) != 0 || line[ql] != '\t') continue;
      for (int i = 1; i <= CL_NODES; i++)
        if (strcmp(line + ql + 1, cl_name(i)) == 0) return i;
    }
    return -1;
  }
  return -1;
}

/* ---- memory alarm guardian ----------------------------------------------- */

static int guard_fd = -1;
static int guard_node;

static void guardian(int rfd) {
  char state = 'C', ch;
  while (read(rfd, &ch, 1) == 1) state = ch;
  if (state == 'A') {
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "rabbitmqctl -q -n %s set_vm_memory_high_watermark 0.4 "
             ">/dev/null 2>&1",
             cl_name(guard_node));
    int rc = system(cmd);
    (void)rc;
  }
  _exit(0);
}

static void start_guardian(int node) {
  if (guard_fd >= 0) return;
  guard_node = node;
  int p[2];
  if (pipe(p) != 0) return;
  pid_t pid = fork();
  if (pid == 0) {
    close_inherited(p[0]);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
      if (null > 2) close(null);
    }
    setsid();
    if (fork() == 0) guardian(p[0]);
    _exit(0);
  }
  close(p[0]);
  if (pid > 0) waitpid(pid, NULL, 0);
  fcntl(p[1], F_SETFD, FD_CLOEXEC);
  guard_fd = p[1];
}

static void tell_guardian(char state) {
  if (guard_fd >= 0) {
    ssize_t w = write(guard_fd, &state, 1);
    (void)w;
  }
}

int cl_alarm_raise(int node) {
  start_guardian(node);
  tell_guardian('A');
  return cl_ctl(node, NULL, 0, "set_vm_memory_high_watermark 0") == 0 ? 0 : -1;
}

int cl_alarm_clear(int node) {
  int rc = cl_ctl(node, NULL, 0, "set_vm_memory_high_watermark 0.4");
  if (rc == 0) tell_guardian('C');
  return rc == 0 ? 0 : -1;
}
