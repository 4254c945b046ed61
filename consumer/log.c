/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "internal.h"

uint64_t sluice__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- callbacks ----------------------------------------------------------- */

_Thread_local sluice__cb_frame *sluice__cb_top SLUICE__TLS_IE;

int sluice__cb_inside(const void *owner) {
  for (const sluice__cb_frame *f = sluice__cb_top; f; f = f->up)
    if (f->owner == owner) return 1;
  return 0;
}

/* ---- logging ------------------------------------------------------------- */

static const char *const level_names[] = {"?", "error", "warn", "info",
                                          "debug"};

void sluice__vlogf(const sluice__logger *lg, int level, const char *fmt,
                   va_list ap) {
  int max = lg ? lg->level : SLUICE_LOG_WARN;
  if (level > max) return;
  char buf[512];
  vsnprintf(buf, sizeof(buf), fmt, ap);
  if (lg && lg->fn) {
    sluice__cb_frame f;
    sluice__cb_enter(&f, lg->owner);
    lg->fn(level, buf, lg->user);
    sluice__cb_leave(&f);
    return;
  }
  const char *ln = level >= 1 && level <= 4 ? level_names[level] : "?";
  /* One fprintf per line keeps lines from different threads whole. */
  fprintf(stderr, "sluice %s: %s\n", ln, buf);
}

void sluice__logf(const sluice__logger *lg, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  sluice__vlogf(lg, level, fmt, ap);
  va_end(ap);
}

void sluice__log(const sluice_consumer *c, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  sluice__vlogf(c ? &c->log : NULL, level, fmt, ap);
  va_end(ap);
}
