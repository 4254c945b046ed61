/* SPDX-License-Identifier: MIT */
#include <sluice/reconnect.h>

uint64_t sluice_backoff_next(sluice_backoff *b, uint64_t r) {
  uint64_t cap = b->min_ms ? b->min_ms : 1;
  for (unsigned i = 0; i < b->attempt && cap < b->max_ms; i++) cap *= 2;
  if (cap > b->max_ms) cap = b->max_ms;
  if (cap < b->min_ms) cap = b->min_ms;
  b->attempt++;
  /* Full jitter, never below the minimum: uniform in [min, cap]. */
  uint64_t span = cap - b->min_ms + 1;
  return b->min_ms + r % span;
}

void sluice_backoff_reset(sluice_backoff *b) {
  b->attempt = 0;
}
