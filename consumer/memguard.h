/* SPDX-License-Identifier: MIT */
/* The memory guard's hysteresis, and how it and the in-flight bound
 * (bound.h) together decide whether the socket is read. Pure bookkeeping,
 * loop thread only; memguard.c reads the figure and reports the changes,
 * frames.c turns the answer into reading or not.
 *
 * The guard holds reading once the figure is above `high` and lets go once
 * it is below `low` (< high): between the two it keeps its state, so a
 * figure hovering at one mark does not toggle reading at every check.
 * Either hold stops reading between deliveries, and reading resumes only
 * when neither holds it: the bound's release cannot resume what the guard
 * paused, nor the guard's what the bound paused. Like the bound, the guard
 * never stops a delivery halfway: one being assembled is read to its end
 * (bound.h says why). */
#ifndef SLUICE_MEMGUARD_H
#define SLUICE_MEMGUARD_H

#include <stdint.h>

#include "bound.h"

typedef struct sluice__memguard {
  uint64_t high, low; /* the marks; high 0: no guard */
  uint64_t bytes;     /* the last figure */
  uint64_t pauses;    /* times it started holding reading */
  int held;           /* holding reading */
} sluice__memguard;

/* A new figure: SLUICE__BOUND_PAUSE when the guard starts holding reading,
 * SLUICE__BOUND_RESUME when it lets go, SLUICE__BOUND_SAME otherwise. */
static inline int sluice__memguard_update(sluice__memguard *g, uint64_t bytes) {
  g->bytes = bytes;
  if (!g->high) return SLUICE__BOUND_SAME;
  if (!g->held && bytes > g->high) {
    g->held = 1;
    g->pauses++;
    return SLUICE__BOUND_PAUSE;
  }
  if (g->held && bytes < g->low) {
    g->held = 0;
    return SLUICE__BOUND_RESUME;
  }
  return SLUICE__BOUND_SAME;
}

/* 1 if the socket may be read now: while a delivery is being assembled,
 * always; between deliveries, only when neither the bound nor the guard
 * (`guard_holds`: the guard holds reading and applies now) holds it. */
static inline int sluice__may_read(const sluice__bound *b, int guard_holds,
                                   int assembling) {
  return sluice__bound_may_read(b, assembling) && (assembling || !guard_holds);
}

#endif
