/* SPDX-License-Identifier: MIT */
#include "tally.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static int parse_id(const sluice_message *m, unsigned n, unsigned *id) {
  if (!m->props.message_id) return -1;
  char *end;
  unsigned long v = strtoul(m->props.message_id, &end, 10);
  size_t l = strlen(m->props.message_id);
  if (*end || v >= n || m->body_len < l ||
      memcmp(m->body, m->props.message_id, l) != 0)
    return -1;
  *id = (unsigned)v;
  return 0;
}

unsigned tb_tally_record(tb_tally *t, const sluice_message *m, unsigned *call) {
  unsigned k = atomic_fetch_add(&t->calls, 1) + 1;
  if (call) *call = k;
  unsigned id;
  if (parse_id(m, t->n, &id) != 0) {
    atomic_fetch_add(&t->bad_body, 1);
    return 0;
  }
  if (m->redelivered) atomic_fetch_add(&t->redelivered_calls, 1);
  unsigned char prev = atomic_fetch_add(&t->seen[id], 1);
  if (prev) {
    if (!m->redelivered) atomic_fetch_add(&t->dup_fresh, 1);
    return 0;
  }
  return atomic_fetch_add(&t->distinct, 1) + 1;
}

unsigned tb_tally_missing(tb_tally *t) {
  unsigned missing = 0;
  for (unsigned i = 0; i < t->n; i++)
    if (!atomic_load(&t->seen[i])) missing++;
  return missing;
}

void tb_cond_init_monotonic(pthread_cond_t *cv) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
}

void tb_log_quiet(int level, const char *msg, void *user) {
  (void)level;
  (void)msg;
  (void)user;
}
