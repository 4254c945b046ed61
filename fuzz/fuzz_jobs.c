/* SPDX-License-Identifier: MIT */
/* Fuzz target: the push worker's parsers (examples/push_worker/jobs.c),
 * each input through both:
 *  - pw_job_parse(), the job in a message body (JSON): an accepted job has
 *    its three strings within their limits and without a NUL, a refused
 *    one says why, and nothing leaks (ASan);
 *  - pw_mix_parse(), the --mix option: an accepted mix adds up to 1000 per
 *    mille and pw_mix_kind() hands out exactly that mix over every 1000
 *    consecutive jobs, as jobs.h promises. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jobs.h"
#include "fuzz.h"

static void job(const uint8_t *data, size_t size) {
  pw_job_fields f;
  char reason[192];
  if (pw_job_parse(data, size, &f, reason, sizeof(reason)) == 0) {
    if (!f.root || !f.token || !f.title || !f.body) abort();
    size_t t = strlen(f.token), h = strlen(f.title), b = strlen(f.body);
    if (t < 1 || t > 4096 || h > 1024 || b > 4096) abort();
    if (f.probe != 0 && f.probe != 1) abort();
    json_decref(f.root);
  } else if (!reason[0] || f.root) {
    abort(); /* a refusal says why and leaves nothing to free */
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  job(data, size);
  if (size > 4096) return 0;
  char *s = malloc(size + 1);
  if (!s) return 0;
  memcpy(s, data, size);
  s[size] = '\0';
  pw_mix m;
  char err[128];
  if (pw_mix_parse(s, &m, err, sizeof(err)) == 0) {
    unsigned total = 0;
    for (int k = 0; k < PW_JOB_KINDS_; k++) {
      if (m.permille[k] > 1000) abort();
      total += m.permille[k];
    }
    if (total != 1000) abort();
    unsigned seen[PW_JOB_KINDS_] = {0};
    uint64_t first = size ? data[0] * 7919u : 0;
    for (uint64_t i = first; i < first + 1000; i++) {
      pw_kind k = pw_mix_kind(&m, i);
      if ((unsigned)k >= PW_JOB_KINDS_) abort();
      seen[k]++;
    }
    for (int k = 0; k < PW_JOB_KINDS_; k++)
      if (seen[k] != m.permille[k]) abort();
  } else if (!memchr(err, '\0', sizeof(err)) || !err[0]) {
    abort(); /* a refusal says why */
  }
  free(s);
  return 0;
}
