/* SPDX-License-Identifier: MIT */
/* Small helpers shared by every file of libsluice (consumer, publisher,
 * reconnect): time, strings, logging, and the record of callbacks in
 * progress. Not installed. */
#ifndef SLUICE_CONSUMER_UTIL_H
#define SLUICE_CONSUMER_UTIL_H

#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <sluice/consumer.h>

#if defined(__GNUC__)
#define SLUICE__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SLUICE__PRINTF(a, b)
#endif

/* ---- time ---------------------------------------------------------------- */

/* Monotonic clock in ms (log.c). */
uint64_t sluice__now_ms(void);

static inline struct timeval sluice__tv_ms(uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
  return tv;
}

/* 1 if `fd` can be written to now (poll(2) with a zero timeout). */
static inline int sluice__fd_writable(int fd) {
  struct pollfd p = {fd, POLLOUT, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
}

/* ---- strings ------------------------------------------------------------- */

/* strdup() that passes NULL through. */
static inline char *sluice__strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

/* ---- callbacks in progress ----------------------------------------------- */

/* Callbacks running on this thread, innermost first: lets free() refuse to
 * destroy the object whose callback is running (log.c). */
typedef struct sluice__cb_frame {
  const void *owner; /* the consumer or publisher whose callback runs */
  struct sluice__cb_frame *up;
} sluice__cb_frame;

/* Initial-exec: a thread pointer offset instead of a __tls_get_addr() call
 * per access (twice per delivery). The 8 bytes come from the static TLS
 * block, which glibc keeps room in for libraries opened later (dlopen). */
#define SLUICE__TLS_IE __attribute__((tls_model("initial-exec")))
extern _Thread_local sluice__cb_frame *sluice__cb_top SLUICE__TLS_IE;

static inline void sluice__cb_enter(sluice__cb_frame *f, const void *owner) {
  f->owner = owner;
  f->up = sluice__cb_top;
  sluice__cb_top = f;
}

static inline void sluice__cb_leave(sluice__cb_frame *f) {
  sluice__cb_top = f->up;
}

/* 1 if a callback of `owner` is running on this thread. */
int sluice__cb_inside(const void *owner);

/* ---- logging ------------------------------------------------------------- */

/* A log sink with its level; `owner` is the handle its callback belongs to.
 * A NULL logger writes to stderr at SLUICE_LOG_WARN. */
typedef struct sluice__logger {
  sluice_log_fn fn;
  void *user;
  int level;
  const void *owner;
} sluice__logger;

void sluice__vlogf(const sluice__logger *lg, int level, const char *fmt,
                   va_list ap);
void sluice__logf(const sluice__logger *lg, int level, const char *fmt, ...)
    SLUICE__PRINTF(3, 4);

#endif
