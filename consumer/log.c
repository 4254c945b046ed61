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

static const char *const level_names[] = {"?", "error", "warn", "info",
                                          "debug"};

void sluice__log(const sluice_consumer *c, int level, const char *fmt, ...) {
  int max = c ? c->o.log_level : SLUICE_LOG_WARN;
  if (level > max) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  if (c && c->o.log) {
    c->o.log(level, buf, c->o.log_user);
    return;
  }
  const char *ln = level >= 1 && level <= 4 ? level_names[level] : "?";
  /* One fprintf per line keeps lines from different threads whole. */
  fprintf(stderr, "sluice %s: %s\n", ln, buf);
}
