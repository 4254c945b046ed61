/* SPDX-License-Identifier: MIT */
#include "push_util.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/common/broker_util.h"

extern char **environ;

int pu_spawn(pu_proc *p, const char *path, const char *const *args,
             int no_lsan) {
  memset(p, 0, sizeof(*p));
  p->fd = -1;
  int fds[2];
  if (pipe(fds)) return -1;
  const char *argv[64];
  size_t n = 0;
  argv[n++] = path;
  for (size_t i = 0; args[i] && n < 63; i++) argv[n++] = args[i];
  argv[n] = NULL;
  /* The environment, with LeakSanitizer off when the child leaks on
   * purpose. */
  size_t ne = 0;
  while (environ[ne]) ne++;
  char **envp = calloc(ne + 2, sizeof(char *));
  size_t k = 0;
  for (size_t i = 0; i < ne; i++)
    if (!no_lsan || strncmp(environ[i], "ASAN_OPTIONS=", 13) != 0)
      envp[k++] = environ[i];
  char asan[512];
  if (no_lsan) {
    const char *cur = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof(asan), "ASAN_OPTIONS=%s%sdetect_leaks=0",
             cur ? cur : "", cur && *cur ? ":" : "");
    envp[k++] = asan;
  }
  envp[k] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 3);
  int rc = posix_spawn(&p->pid, path, &fa, NULL, (char *const *)argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  free(envp);
  close(fds[1]);
  if (rc) {
    close(fds[0]);
    errno = rc;
    return -1;
  }
  p->fd = fds[0];
  return 0;
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One complete line from the buffer, as JSON; NULL when none is buffered. */
static json_t *take_line(pu_proc *p) {
  char *nl = memchr(p->buf, '\n', p->len);
  if (!nl) return NULL;
  size_t l = (size_t)(nl - p->buf);
  json_error_t err;
  json_t *j = json_loadb(p->buf, l, 0, &err);
  memmove(p->buf, nl + 1, p->len - l - 1);
  p->len -= l + 1;
  if (!j) {
    fprintf(stderr, "push test: unparsable line from child: %s\n", err.text);
    return json_null();
  }
  const char *t = json_string_value(json_object_get(j, "type"));
  if (t && strcmp(t, "final") == 0) {
    json_decref(p->final);
    p->final = json_incref(j);
  }
  return j;
}

/* Read more into the buffer; 0 on data, -1 on EOF or timeout. */
static int fill(pu_proc *p, long long deadline) {
  if (p->fd < 0) return -1;
  long long left = deadline - now_ms();
  if (left < 0) left = 0;
  struct pollfd pf = {p->fd, POLLIN, 0};
  int r = poll(&pf, 1, (int)left);
  if (r <= 0) return -1;
  if (p->len == sizeof(p->buf)) p->len = 0; /* an absurd line: drop it */
  ssize_t n = read(p->fd, p->buf + p->len, sizeof(p->buf) - p->len);
  if (n <= 0) {
    close(p->fd);
    p->fd = -1;
    return -1;
  }
  p->len += (size_t)n;
  return 0;
}

json_t *pu_next(pu_proc *p, const char *type, const char *event,
                int timeout_ms) {
  long long deadline = now_ms() + timeout_ms;
  for (;;) {
    json_t *j;
    while ((j = take_line(p))) {
      const char *t = json_string_value(json_object_get(j, "type"));
      const char *e = json_string_value(json_object_get(j, "event"));
      if (t && strcmp(t, type) == 0 && (!event || (e && strcmp(e, event) == 0)))
        return j;
      json_decref(j);
    }
    if (fill(p, deadline)) return NULL;
  }
}

int pu_wait(pu_proc *p, int timeout_ms) {
  long long deadline = now_ms() + timeout_ms;
  for (;;) {
    json_t *j;
    while ((j = take_line(p))) json_decref(j);
    if (p->fd < 0) break;
    if (fill(p, deadline) && p->fd >= 0) {
      fprintf(stderr,
              "push test: child %d still running after %d ms; "
              "killing it\n",
              (int)p->pid, timeout_ms);
      kill(p->pid, SIGKILL);
      waitpid(p->pid, NULL, 0);
      p->pid = 0;
      return -1;
    }
  }
  int st = 0;
  if (waitpid(p->pid, &st, 0) < 0) return -1;
  p->pid = 0;
  if (WIFSIGNALED(st)) {
    fprintf(stderr, "push test: child killed by signal %d\n", WTERMSIG(st));
    return 128 + WTERMSIG(st);
  }
  return WEXITSTATUS(st);
}

void pu_free(pu_proc *p) {
  if (p->pid > 0) {
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
  }
  if (p->fd >= 0) close(p->fd);
  json_decref(p->final);
  memset(p, 0, sizeof(*p));
  p->fd = -1;
}

long long pu_int(json_t *o, const char *path) {
  char key[128];
  const char *s = path;
  while (o && *s) {
    const char *dot = strchr(s, '.');
    size_t l = dot ? (size_t)(dot - s) : strlen(s);
    if (l >= sizeof(key)) return -1;
    memcpy(key, s, l);
    key[l] = 0;
    o = json_object_get(o, key);
    s = dot ? dot + 1 : s + l;
  }
  return o && json_is_integer(o) ? (long long)json_integer_value(o) : -1;
}

/* ---- reading a queue back ------------------------------------------------ */

typedef struct drain {
  sluice_consumer *c;
  pu_msg *out;
  size_t n, got;
} drain;

static void copy_str(char *dst, size_t cap, const sluice_value *v) {
  dst[0] = 0;
  if (v && v->kind == SLUICE_VAL_STRING)
    snprintf(dst, cap, "%.*s", (int)v->u.s.len, v->u.s.str);
}

static int on_msg(sluice_delivery *d, const sluice_message *m, void *user) {
  drain *dr = user;
  if (dr->got < dr->n) {
    pu_msg *o = &dr->out[dr->got++];
    snprintf(o->type, sizeof(o->type), "%s",
             m->props.type ? m->props.type : "");
    copy_str(o->reason, sizeof(o->reason),
             sluice_message_header(m, "x-reject-reason"));
    copy_str(o->origin, sizeof(o->origin),
             sluice_message_header(m, "x-original-queue"));
    const sluice_value *v = sluice_message_header(m, "x-reject-status");
    o->status = v && v->kind == SLUICE_VAL_INT ? v->u.i : -1;
    v = sluice_message_header(m, "x-attempts");
    o->attempts = v && v->kind == SLUICE_VAL_INT ? v->u.i : -1;
    if (dr->got == dr->n) sluice_consumer_stop(dr->c);
  }
  return SLUICE_ACK;
}

size_t pu_drain(const char *queue, pu_msg *out, size_t n, int seconds) {
  drain dr = {.out = out, .n = n};
  sluice_consumer_opts o = {.uri = TEST_URI,
                            .connection_name = "push drain",
                            .log_level = -1};
  if (sluice_consumer_new(&o, &dr.c)) return 0;
  sluice_subscribe_opts s = {.queue = queue, .handler = on_msg, .user = &dr};
  if (n && sluice_consumer_subscribe(dr.c, &s) == 0)
    tb_run_bounded(dr.c, seconds, NULL);
  sluice_consumer_free(dr.c);
  return dr.got;
}
