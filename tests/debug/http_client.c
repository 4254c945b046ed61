/* SPDX-License-Identifier: MIT */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "http_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int h_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {15, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
    close(fd);
    return -1;
  }
  return fd;
}

int h_send(int fd, const char *data, size_t len) {
  while (len) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

typedef struct buf {
  char *d;
  size_t n, cap;
} buf;

static int buf_add(buf *b, const char *d, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 8192;
    while (cap < b->n + n + 1) cap *= 2;
    char *nd = realloc(b->d, cap);
    if (!nd) return -1;
    b->d = nd;
    b->cap = cap;
  }
  memcpy(b->d + b->n, d, n);
  b->n += n;
  b->d[b->n] = 0;
  return 0;
}

static int chunked(const char *head) {
  for (const char *p = strstr(head, "\r\n"); p; p = strstr(p + 2, "\r\n"))
    if (!strncasecmp(p + 2, "Transfer-Encoding:", 18))
      return strcasestr(p + 20, "chunked") != NULL &&
             strcasestr(p + 20, "chunked") < strstr(p + 2, "\r\n");
  return 0;
}

/* Decode a chunked body in place (read to EOF: requests say Connection:
 * close); returns its length. A malformed or cut body keeps what decoded. */
static size_t dechunk(char *d, size_t n) {
  size_t in = 0, out = 0;
  while (in < n) {
    char *end;
    unsigned long long len = strtoull(d + in, &end, 16);
    char *eol = memmem(d + in, n - in, "\r\n", 2);
    if (end == d + in || !eol) break;
    in = (size_t)(eol - d) + 2;
    if (len == 0 || len > n - in) break;
    memmove(d + out, d + in, (size_t)len);
    out += (size_t)len;
    in += (size_t)len + 2; /* the chunk's CRLF */
  }
  return out;
}

int h_read(int fd, hresp *r) {
  memset(r, 0, sizeof *r);
  buf b = {0};
  char chunk[16384];
  size_t head_end = 0;
  long long clen = -1;
  for (;;) {
    if (!head_end && b.d) {
      char *e = strstr(b.d, "\r\n\r\n");
      if (e) {
        head_end = (size_t)(e - b.d) + 4;
        for (char *p = b.d; p && p < e;) {
          if (!strncasecmp(p, "Content-Length:", 15)) clen = atoll(p + 15);
          p = strstr(p, "\r\n");
          if (p) p += 2;
        }
      }
    }
    if (head_end && clen >= 0 && b.n >= head_end + (size_t)clen) break;
    ssize_t n = recv(fd, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (buf_add(&b, chunk, (size_t)n)) break;
  }
  if (!head_end) {
    free(b.d);
    return -1;
  }
  r->head = strndup(b.d, head_end);
  r->body_len = b.n - head_end;
  if (clen >= 0 && r->body_len > (size_t)clen) r->body_len = (size_t)clen;
  if (clen < 0 && r->head && chunked(r->head))
    r->body_len = dechunk(b.d + head_end, r->body_len);
  r->body = malloc(r->body_len + 1);
  if (r->body) {
    memcpy(r->body, b.d + head_end, r->body_len);
    r->body[r->body_len] = 0;
  }
  free(b.d);
  if (!r->head || !r->body ||
      sscanf(r->head, "HTTP/%*d.%*d %d", &r->status) != 1) {
    h_free(r);
    return -1;
  }
  return 0;
}

int h_request(int port, const char *method, const char *path,
              const char *headers, hresp *r) {
  memset(r, 0, sizeof *r);
  int fd = h_connect(port);
  if (fd < 0) return 0;
  char *req = NULL;
  /* Our Host header unless the caller brings one. */
  char host[64] = "";
  if (!headers ||
      (strncasecmp(headers, "Host:", 5) && !strcasestr(headers, "\nHost:")))
    snprintf(host, sizeof host, "Host: 127.0.0.1:%d\r\n", port);
  int n = asprintf(&req, "%s %s HTTP/1.1\r\n%sConnection: close\r\n%s\r\n",
                   method, path, host, headers ? headers : "");
  if (n > 0 && !h_send(fd, req, (size_t)n)) h_read(fd, r);
  free(req);
  close(fd);
  return r->status;
}

int h_get(int port, const char *path, const char *headers, hresp *r) {
  return h_request(port, "GET", path, headers, r);
}

const char *h_header(const hresp *r, const char *name) {
  static char val[1024];
  if (!r->head) return NULL;
  size_t nl = strlen(name);
  for (const char *p = strstr(r->head, "\r\n"); p && p[2] != '\r';
       p = strstr(p + 2, "\r\n")) {
    const char *line = p + 2;
    if (!strncasecmp(line, name, nl) && line[nl] == ':') {
      const char *v = line + nl + 1;
      while (*v == ' ') v++;
      size_t k = strcspn(v, "\r");
      if (k >= sizeof val) k = sizeof val - 1;
      memcpy(val, v, k);
      val[k] = 0;
      return val;
    }
  }
  return NULL;
}

void h_free(hresp *r) {
  free(r->head);
  free(r->body);
  memset(r, 0, sizeof *r);
}

char *h_which(const char *prog) {
  const char *path = getenv("PATH");
  if (!path) return NULL;
  char *copy = strdup(path), *save = NULL, *found = NULL;
  for (char *dir = strtok_r(copy, ":", &save); dir && !found;
       dir = strtok_r(NULL, ":", &save)) {
    char *p = NULL;
    if (asprintf(&p, "%s/%s", *dir ? dir : ".", prog) < 0) break;
    struct stat st;
    if (!stat(p, &st) && S_ISREG(st.st_mode) && !access(p, X_OK)) found = p;
    else free(p);
  }
  free(copy);
  return found;
}

int h_run(char *const argv[], char *const env_extra[], char **out) {
  return h_run_in(argv, env_extra, NULL, out);
}

int h_run_in(char *const argv[], char *const env_extra[], const char *in,
             char **out) {
  *out = NULL;
  size_t ne = 0, nx = 0;
  while (environ[ne]) ne++;
  while (env_extra && env_extra[nx]) nx++;
  char **env = calloc(ne + nx + 1, sizeof *env);
  if (!env) return -1;
  size_t k = 0;
  for (size_t i = 0; i < nx; i++) env[k++] = env_extra[i];
  for (size_t i = 0; i < ne; i++) {
    /* An extra entry wins over the inherited one of the same name. */
    size_t len = strcspn(environ[i], "=");
    int dup = 0;
    for (size_t j = 0; j < nx; j++)
      if (!strncmp(env_extra[j], environ[i], len) && env_extra[j][len] == '=')
        dup = 1;
    if (!dup) env[k++] = environ[i];
  }
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC)) {
    free(env);
    return -1;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
  posix_spawn_file_actions_addopen(&fa, 0, in ? in : "/dev/null", O_RDONLY, 0);
  pid_t pid;
  int e = posix_spawnp(&pid, argv[0], &fa, NULL, argv, env);
  posix_spawn_file_actions_destroy(&fa);
  free(env);
  close(pfd[1]);
  if (e) {
    close(pfd[0]);
    return -1;
  }
  buf b = {0};
  buf_add(&b, "", 0);
  char chunk[8192];
  ssize_t n;
  while ((n = read(pfd[0], chunk, sizeof chunk)) != 0) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    buf_add(&b, chunk, (size_t)n);
  }
  close(pfd[0]);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  *out = b.d;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------------------ */
/* The Prometheus text exposition format. */

static int name_ok(const char **p) {
  const char *s = *p;
  if (!(*s == '_' || *s == ':' || (*s >= 'a' && *s <= 'z') ||
        (*s >= 'A' && *s <= 'Z')))
    return 0;
  while (*s == '_' || *s == ':' || (*s >= 'a' && *s <= 'z') ||
         (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9'))
    s++;
  *p = s;
  return 1;
}

static char prom_err[512];

static const char *prom_fail(const char *what, const char *line) {
  snprintf(prom_err, sizeof prom_err, "%s: %.400s", what, line);
  return prom_err;
}

static int is_typed(char (*typed)[96], int n, const char *name, size_t len) {
  for (int i = 0; i < n; i++)
    if (strlen(typed[i]) == len && !strncmp(typed[i], name, len)) return 1;
  return 0;
}

/* Well-formed UTF-8 (RFC 3629), as Prometheus requires of the whole text. */
static int utf8_ok(const unsigned char *s) {
  while (*s) {
    unsigned char c = *s;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      s++;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
      if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    s += n;
  }
  return 1;
}

typedef struct prom_state {
  char typed[256][96];
  int n_typed, n_help, samples;
  char **series; /* "name{labels}" of every sample, to find duplicates */
  size_t n_series, cap_series;
} prom_state;

static const char *prom_line(char *line, prom_state *st) {
  if (!strncmp(line, "# HELP ", 7)) {
    const char *p = line + 7;
    if (!name_ok(&p) || *p != ' ') return prom_fail("bad HELP", line);
    st->n_help++;
    return NULL;
  }
  if (!strncmp(line, "# TYPE ", 7)) {
    const char *p = line + 7, *start = p;
    if (!name_ok(&p) || *p != ' ') return prom_fail("bad TYPE", line);
    if (strcmp(p + 1, "counter") && strcmp(p + 1, "gauge"))
      return prom_fail("unexpected type", line);
    if (is_typed(st->typed, st->n_typed, start, (size_t)(p - start)))
      return prom_fail("TYPE twice", line);
    if (st->n_typed == 256) return prom_fail("too many families", line);
    snprintf(st->typed[st->n_typed++], 96, "%.*s", (int)(p - start), start);
    return NULL;
  }
  if (line[0] == '#') return prom_fail("unknown comment", line);
  const char *p = line, *start = line;
  if (!name_ok(&p)) return prom_fail("bad metric name", line);
  if (!is_typed(st->typed, st->n_typed, start, (size_t)(p - start)))
    return prom_fail("sample before its TYPE", line);
  /* A family's samples form one group, right after its TYPE line. */
  const char *cur = st->typed[st->n_typed - 1];
  if (strlen(cur) != (size_t)(p - start) ||
      strncmp(cur, start, (size_t)(p - start)))
    return prom_fail("sample outside its family's group", line);
  if (*p == '{') {
    p++;
    while (*p != '}') {
      if (!name_ok(&p) || *p++ != '=' || *p++ != '"')
        return prom_fail("bad label", line);
      while (*p != '"') {
        if (!*p) return prom_fail("unterminated label value", line);
        if (*p == '\\') {
          p++;
          if (*p != '\\' && *p != '"' && *p != 'n')
            return prom_fail("bad escape", line);
        }
        p++;
      }
      p++;
      if (*p == ',') p++;
      else if (*p != '}') return prom_fail("bad label list", line);
    }
    p++;
  }
  if (st->n_series == st->cap_series) {
    size_t cap = st->cap_series ? 2 * st->cap_series : 256;
    char **v = realloc(st->series, cap * sizeof *v);
    if (!v) return prom_fail("out of memory", line);
    st->series = v;
    st->cap_series = cap;
  }
  st->series[st->n_series++] = strndup(start, (size_t)(p - start));
  if (*p++ != ' ') return prom_fail("no value", line);
  if (strcmp(p, "NaN") && strcmp(p, "+Inf") && strcmp(p, "-Inf")) {
    char *end;
    strtod(p, &end);
    if (end == p || *end) return prom_fail("bad value", line);
  }
  st->samples++;
  return NULL;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

const char *h_prom_check(const char *text) {
  static prom_state st;
  memset(&st, 0, sizeof st);
  size_t len = strlen(text);
  if (!len || text[len - 1] != '\n') return "does not end with a newline";
  if (!utf8_ok((const unsigned char *)text)) return "not UTF-8";
  char *copy = strdup(text), *save = NULL;
  const char *err = NULL;
  for (char *line = strtok_r(copy, "\n", &save); line && !err;
       line = strtok_r(NULL, "\n", &save))
    err = prom_line(line, &st);
  free(copy);
  if (!err && st.n_help != st.n_typed) err = "a family without HELP";
  if (!err && !st.samples) err = "no samples";
  if (!err) {
    qsort(st.series, st.n_series, sizeof *st.series, cmp_str);
    for (size_t i = 1; i < st.n_series && !err; i++)
      if (!strcmp(st.series[i - 1], st.series[i]))
        err = prom_fail("duplicate series", st.series[i]);
  }
  for (size_t i = 0; i < st.n_series; i++) free(st.series[i]);
  free(st.series);
  return err;
}

int h_promtool_check_metrics(const char *promtool, const char *text,
                             const char *tmpdir, char **out) {
  char path[512];
  snprintf(path, sizeof path, "%s/metrics.XXXXXX", tmpdir);
  int fd = mkstemp(path);
  if (fd < 0) return -1;
  size_t len = strlen(text), off = 0;
  while (off < len) {
    ssize_t n = write(fd, text + off, len - off);
    if (n <= 0) {
      close(fd);
      unlink(path);
      return -1;
    }
    off += (size_t)n;
  }
  close(fd);
  char *argv[] = {(char *)promtool, "check", "metrics", NULL};
  int rc = h_run_in(argv, NULL, path, out);
  unlink(path);
  return rc;
}
