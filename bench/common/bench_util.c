/* SPDX-License-Identifier: MIT */
#include "bench_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>

double bu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double bu_cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static long status_kib(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t kl = strlen(key);
  while (fgets(line, sizeof(line), f))
    if (strncmp(line, key, kl) == 0) {
      v = strtol(line + kl, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

long bu_rss_kib(void) {
  return status_kib("VmRSS:");
}
long bu_hwm_kib(void) {
  return status_kib("VmHWM:");
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

double bu_median(double *v, int n) {
  double *t = malloc(sizeof(double) * (size_t)n);
  memcpy(t, v, sizeof(double) * (size_t)n);
  qsort(t, (size_t)n, sizeof(double), cmp_d);
  double m = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
  free(t);
  return m;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench: %s: %s\n", what, sluice_strerror(rc));
  exit(1);
}

void bu_fill(const char *uri, const char *queue, unsigned long n, size_t size) {
  sluice_publisher_opts po = {.uri = uri,
                              .connection_name = "bench fill",
                              .max_outstanding = 4096};
  sluice_publisher *p;
  int rc = sluice_publisher_new(&po, &p);
  if (rc) die("publisher", rc);
  sluice_queue_decl q = {.name = queue, .durable = 1};
  sluice_publisher_delete_queue(p, queue, NULL);
  if ((rc = sluice_publisher_declare_queue(p, &q))) die("declare", rc);
  char *body = malloc(size ? size : 1);
  memset(body, 'b', size);
  sluice_publish_props pr = {.transient = 1};
  for (unsigned long i = 0; i < n; i++)
    if ((rc = sluice_publisher_publish(p, "", queue, body, size, &pr)))
      die("publish", rc);
  sluice_publish_report rep;
  if ((rc = sluice_publisher_wait(p, &rep))) die("confirms", rc);
  free(body);
  sluice_publisher_free(p);
}

unsigned bu_depth(const char *uri, const char *queue) {
  sluice_publisher_opts po = {.uri = uri};
  sluice_publisher *p;
  if (sluice_publisher_new(&po, &p)) return 0;
  uint32_t d = 0;
  sluice_publisher_queue_depth(p, queue, &d, NULL);
  sluice_publisher_free(p);
  return d;
}

int bu_port_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
  close(fd);
  return ok;
}

int bu_socket_inodes(int pid, unsigned long *ino, int max) {
  char dir[64];
  snprintf(dir, sizeof(dir), "/proc/%d/fd", pid);
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while (n < max && (e = readdir(d))) {
    char path[320], link[128];
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    ssize_t l = readlink(path, link, sizeof(link) - 1);
    if (l <= 0) continue;
    link[l] = 0;
    unsigned long i;
    if (sscanf(link, "socket:[%lu]", &i) == 1) ino[n++] = i;
  }
  closedir(d);
  return n;
}
