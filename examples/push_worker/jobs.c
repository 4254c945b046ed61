/* SPDX-License-Identifier: MIT */
#include "jobs.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[PW_JOB_KINDS_] = {
    "ok", "probe", "bad", "missing", "badtype", "forbidden", "gone", "fail"};

const char *pw_kind_name(pw_kind k) {
  return (unsigned)k < PW_JOB_KINDS_ ? kind_names[k] : "?";
}

int pw_mix_parse(const char *s, pw_mix *out, char *err, size_t errlen) {
  memset(out, 0, sizeof(*out));
  unsigned total = 0;
  int given[PW_JOB_KINDS_] = {0};
  const char *p = s ? s : "";
  while (*p) {
    const char *eq = strchr(p, '=');
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    if (!eq || eq > end) {
      snprintf(err, errlen, "mix: expected kind=percent near \"%s\"", p);
      return -1;
    }
    int k = -1;
    for (int i = 1; i < PW_JOB_KINDS_; i++)
      if ((size_t)(eq - p) == strlen(kind_names[i]) &&
          strncmp(p, kind_names[i], (size_t)(eq - p)) == 0)
        k = i;
    char *num_end;
    double pct = strtod(eq + 1, &num_end);
    /* !(pct >= 0 && pct <= 100) also refuses "nan" */
    if (k < 0 || num_end != end || !(pct >= 0 && pct <= 100)) {
      snprintf(err, errlen, "mix: bad entry \"%.*s\"", (int)(end - p), p);
      return -1;
    }
    /* Twice the same kind would count twice in the total but once in the
     * mix (found by fuzz/fuzz_jobs.c). */
    if (given[k]++) {
      snprintf(err, errlen, "mix: \"%s\" given twice", kind_names[k]);
      return -1;
    }
    out->permille[k] = (unsigned)(pct * 10 + 0.5);
    total += out->permille[k];
    p = *end ? end + 1 : end;
  }
  if (total > 1000) {
    snprintf(err, errlen, "mix: percentages add up to more than 100");
    return -1;
  }
  out->permille[PW_JOB_OK] = 1000 - total;
  return 0;
}

pw_kind pw_mix_kind(const pw_mix *m, uint64_t i) {
  /* Whole percentages repeat every 100 jobs, others every 1000. */
  unsigned period = 100, mult = 61;
  for (int k = 1; k < PW_JOB_KINDS_; k++)
    if (m->permille[k] % 10) period = 1000, mult = 619;
  unsigned slot = (unsigned)((i * mult) % period), acc = 0;
  /* Rare kinds first so that "ok" takes what is left. */
  for (int k = PW_JOB_KINDS_ - 1; k > 0; k--) {
    acc += m->permille[k] / (1000 / period);
    if (slot < acc) return (pw_kind)k;
  }
  return PW_JOB_OK;
}

size_t pw_job_body(pw_kind k, uint64_t i, char *buf, size_t cap) {
  int n;
  switch (k) {
    case PW_JOB_PROBE:
      n = snprintf(buf, cap,
                   "{\"token\": \"probe-%" PRIu64 "\", \"title\": \"probe\", "
                   "\"body\": \"\", \"probe\": true}",
                   i);
      break;
    case PW_JOB_BAD_JSON:
      /* Alternate between truncated JSON and no JSON at all. */
      n = (i & 1) ? snprintf(buf, cap,
                             "{\"token\": \"tok-%" PRIu64 "\", \"title\": ", i)
                  : snprintf(buf, cap, "push this to %" PRIu64 " please", i);
      break;
    case PW_JOB_MISSING:
      n = snprintf(buf, cap,
                   "{\"title\": \"no token %" PRIu64 "\", \"body\": \"x\"}", i);
      break;
    case PW_JOB_BAD_TYPE:
      n = snprintf(buf, cap,
                   "{\"token\": \"tok-%" PRIu64 "\", \"title\": %" PRIu64
                   ", \"body\": \"x\"}",
                   i, i);
      break;
    default: {
      const char *prefix = k == PW_JOB_FORBIDDEN ? "forbidden"
                           : k == PW_JOB_GONE    ? "gone"
                           : k == PW_JOB_FAIL    ? "fail"
                                                 : "tok";
      n = snprintf(buf, cap,
                   "{\"token\": \"%s-%08" PRIx64
                   "\", \"title\": \"Order %" PRIu64
                   " shipped\", \"body\": \"Your parcel is on its way. "
                   "Track it in the app.\"}",
                   prefix, i * 2654435761u, i);
      break;
    }
  }
  return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* Check the job's fields; on failure write why into `reason`. */
static int validate(json_t *root, pw_job_fields *out, char *reason,
                    size_t cap) {
  static const struct {
    const char *name;
    size_t min, max;
  } fields[] = {{"token", 1, 4096}, {"title", 0, 1024}, {"body", 0, 4096}};
  const char **dst[] = {&out->token, &out->title, &out->body};
  if (!json_is_object(root)) {
    snprintf(reason, cap, "not a JSON object");
    return -1;
  }
  for (size_t i = 0; i < 3; i++) {
    json_t *v = json_object_get(root, fields[i].name);
    if (!v) {
      snprintf(reason, cap, "missing field \"%s\"", fields[i].name);
      return -1;
    }
    if (!json_is_string(v)) {
      snprintf(reason, cap, "field \"%s\" is not a string", fields[i].name);
      return -1;
    }
    size_t len = json_string_length(v);
    if (len < fields[i].min || len > fields[i].max) {
      snprintf(reason, cap, "field \"%s\" is %s", fields[i].name,
               len < fields[i].min ? "empty" : "too long");
      return -1;
    }
    if (strlen(json_string_value(v)) != len) {
      snprintf(reason, cap, "field \"%s\" contains a NUL character",
               fields[i].name);
      return -1;
    }
    *dst[i] = json_string_value(v);
  }
  json_t *p = json_object_get(root, "probe");
  if (p && !json_is_boolean(p)) {
    snprintf(reason, cap, "field \"probe\" is not a boolean");
    return -1;
  }
  out->probe = p && json_is_true(p);
  return 0;
}

int pw_job_parse(const void *data, size_t len, pw_job_fields *out, char *reason,
                 size_t cap) {
  memset(out, 0, sizeof(*out));
  json_error_t jerr;
  json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    snprintf(reason, cap, "invalid JSON: %s (line %d, column %d)", jerr.text,
             jerr.line, jerr.column);
    return -1;
  }
  if (validate(root, out, reason, cap)) {
    json_decref(root);
    memset(out, 0, sizeof(*out));
    return -1;
  }
  out->root = root;
  return 0;
}

const char *pw_dlq_name(const char *queue, char *buf, size_t cap) {
  snprintf(buf, cap, "%s.dead", queue);
  return buf;
}

void pw_queue_decl(const char *queue, sluice_queue_decl *out) {
  memset(out, 0, sizeof(*out));
  out->name = queue;
  out->durable = 1;
  out->quorum = 1;
}

void pw_dlq_decl(const char *dlq, sluice_queue_decl *out) {
  memset(out, 0, sizeof(*out));
  out->name = dlq;
  out->durable = 1;
}

int pw_publish_jobs(sluice_publisher *p, const char *queue, const pw_mix *m,
                    uint64_t first, uint64_t n) {
  char body[512], id[32];
  for (uint64_t i = first; i < first + n; i++) {
    pw_kind k = pw_mix_kind(m, i);
    size_t len = pw_job_body(k, i, body, sizeof(body));
    snprintf(id, sizeof(id), "job-%" PRIu64, i);
    sluice_publish_props pr = {.content_type = "application/json",
                               .message_id = id,
                               .type = pw_kind_name(k)};
    int rc = sluice_publisher_publish(p, "", queue, body, len, &pr);
    if (rc) return rc;
  }
  return 0;
}
