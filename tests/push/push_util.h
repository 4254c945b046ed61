/* SPDX-License-Identifier: MIT */
/* Helpers for the push-worker and soak tests: run a program as a child with
 * a pipe on its fd 3, read the JSON lines it writes there, and read the
 * dead-letter queue back. */
#ifndef SLUICE_TEST_PUSH_UTIL_H
#define SLUICE_TEST_PUSH_UTIL_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct pu_proc {
  pid_t pid;
  int fd; /* read end of the child's fd 3, -1 at EOF */
  char buf[1 << 16];
  size_t len;
  json_t *final; /* the last {"type":"final"} line seen */
} pu_proc;

/* Start `path` with `args` (NULL-terminated, without argv[0]); its fd 3 is
 * a pipe to us. `no_lsan`: the child leaks on purpose, so turn LeakSanitizer
 * off in it (ASan builds). Returns 0 or -1. */
int pu_spawn(pu_proc *p, const char *path, const char *const *args,
             int no_lsan);
/* The next line of type `type` (and, if not NULL, "event" == event),
 * waiting up to timeout_ms; NULL at EOF or timeout. The caller decrefs. */
json_t *pu_next(pu_proc *p, const char *type, const char *event,
                int timeout_ms);
/* Read to EOF (keeping the final line), reap the child; its exit status,
 * or -1 if it did not exit within timeout_ms (it is then killed). */
int pu_wait(pu_proc *p, int timeout_ms);
void pu_free(pu_proc *p);

/* Integer at a dotted path ("counters.consumer.acked"); -1 if absent. */
long long pu_int(json_t *o, const char *path);

/* One message read from a queue. */
typedef struct pu_msg {
  char type[32];      /* AMQP type property (the job's kind) */
  char reason[256];   /* x-reject-reason or "" */
  char origin[256];   /* x-original-queue or "" */
  long long status;   /* x-reject-status, -1 if absent */
  long long attempts; /* x-attempts, -1 if absent */
} pu_msg;

/* Consume (and ack) up to `n` messages from `queue` into out[], within
 * `seconds`. Returns how many were read. */
size_t pu_drain(const char *queue, pu_msg *out, size_t n, int seconds);

#endif
