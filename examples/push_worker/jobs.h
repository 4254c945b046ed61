/* SPDX-License-Identifier: MIT */
/* What the push worker, its publisher, the soak runner and the tests share:
 * the queue layout and the jobs they exchange.
 *
 * Queues: the work queue `Q` is a durable quorum queue (the broker counts
 * failed deliveries in `x-delivery-count`, which bounds retries without any
 * state in the worker); its dead-letter queue `Q.dead` is a durable classic
 * queue that the worker fills itself, by republishing with a reason header,
 * so each dead letter says why it is there. */
#ifndef PW_JOBS_H
#define PW_JOBS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <sluice/sluice.h>

/* Kinds of job a publisher can produce. */
typedef enum pw_kind {
  PW_JOB_OK = 0,    /* a valid job the gateway accepts */
  PW_JOB_PROBE,     /* "probe": true: a health probe, never sent */
  PW_JOB_BAD_JSON,  /* not JSON at all, or truncated */
  PW_JOB_MISSING,   /* valid JSON without "token" */
  PW_JOB_BAD_TYPE,  /* "title" is a number */
  PW_JOB_FORBIDDEN, /* token "forbidden-*": the gateway answers 403 */
  PW_JOB_GONE,      /* token "gone-*": the gateway answers 410 */
  PW_JOB_FAIL,      /* token "fail-*": the gateway answers 500, always */
  PW_JOB_KINDS_
} pw_kind;

/* Name used in mixes and reports: "ok", "probe", "bad", "missing",
 * "badtype", "forbidden", "gone", "fail". */
const char *pw_kind_name(pw_kind k);

/* A job mix: per-mille of each kind; "ok" gets the rest. */
typedef struct pw_mix {
  unsigned permille[PW_JOB_KINDS_];
} pw_mix;

/* Parse "probe=10,bad=5,forbidden=2.5" (percentages). An empty string is
 * all "ok". Returns 0, or -1 with a message in `err`. */
int pw_mix_parse(const char *s, pw_mix *out, char *err, size_t errlen);

/* The kind of the i-th job of a mix. Deterministic and exact over every
 * 100 consecutive jobs when the percentages are whole (every 1000
 * otherwise): i*61 mod 100 (i*619 mod 1000) visits each residue once and
 * spreads each kind evenly (61 and 619 are close to 100 and 1000 over the
 * golden ratio). */
pw_kind pw_mix_kind(const pw_mix *m, uint64_t i);

/* Write the body of job `i` of kind `k` into buf (NUL-terminated); returns
 * its length. `cap` must be at least 256. */
size_t pw_job_body(pw_kind k, uint64_t i, char *buf, size_t cap);

/* A job as the worker reads it from a message body: a JSON object with the
 * strings "token" (1 to 4096 bytes), "title" (up to 1024), "body" (up to
 * 4096), none with a NUL, and an optional boolean "probe". */
typedef struct pw_job_fields {
  const char *token, *title, *body; /* inside `root`: valid until it goes */
  int probe;
  json_t *root; /* the parsed document; json_decref() when done */
} pw_job_fields;

/* Parse and check a message body as a job. 0, or -1 with why in `reason`
 * (then nothing is to be freed). Untrusted input: fuzz/fuzz_jobs.c. */
int pw_job_parse(const void *data, size_t len, pw_job_fields *out, char *reason,
                 size_t cap);

/* Name of the dead-letter queue of `queue` ("<queue>.dead") into buf. */
const char *pw_dlq_name(const char *queue, char *buf, size_t cap);

/* The work queue's declaration (durable quorum queue, no dead-letter
 * exchange). Every program that declares it must use this one, or the
 * broker answers PRECONDITION_FAILED. */
void pw_queue_decl(const char *queue, sluice_queue_decl *out);
/* The dead-letter queue's declaration (durable classic queue). */
void pw_dlq_decl(const char *dlq, sluice_queue_decl *out);

/* Publish jobs [first, first + n) of mix `m` to `queue` with `p`
 * (persistent, content type application/json, message id "job-<i>").
 * Returns 0 or a SLUICE_E* code. Does not wait for confirms. */
int pw_publish_jobs(sluice_publisher *p, const char *queue, const pw_mix *m,
                    uint64_t first, uint64_t n);

#endif
