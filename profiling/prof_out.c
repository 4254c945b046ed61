/* SPDX-License-Identifier: MIT */
/* Output dispatch, files, and what the writers share: unbiased values,
 * filters, number formatting, symbolized stacks. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prof_internal.h"

static const char *const value_names[] = {"inuse_space",    "inuse_objects",
                                          "alloc_space",    "alloc_objects",
                                          "residual_space", "residual_objects"};

const char *sluice_prof_value_name(int v) {
  return v >= 0 && v <= SLUICE_PROF_RESIDUAL_OBJECTS ? value_names[v] : "?";
}

int sluice__value_is_bytes(int v) {
  return v == SLUICE_PROF_INUSE_SPACE || v == SLUICE_PROF_ALLOC_SPACE ||
         v == SLUICE_PROF_RESIDUAL_SPACE;
}

int sluice__out_write(sluice__out *o, const void *d, size_t n) {
  if (o->err) return o->err;
  if (!n) return 0;
  /* The sink is the caller's code: let its allocations be profiled. */
  sluice__leave_guard();
  int r = o->fn(d, n, o->user);
  sluice__enter_guard();
  if (r < 0) o->err = SLUICE_EIO;
  return o->err;
}

int64_t sluice__stack_value(const sluice_prof_snapshot *s,
                            const sluice__snap_stack *st, int value) {
  int64_t n, b;
  switch (value) {
    case SLUICE_PROF_INUSE_SPACE:
    case SLUICE_PROF_INUSE_OBJECTS:
      sluice__unbias(st->inuse_n, st->inuse_b, s->rate, &n, &b);
      return value == SLUICE_PROF_INUSE_SPACE ? b + st->x_inuse_b
                                              : n + st->x_inuse_n;
    case SLUICE_PROF_ALLOC_SPACE:
    case SLUICE_PROF_ALLOC_OBJECTS:
      sluice__unbias(st->alloc_n, st->alloc_b, s->rate, &n, &b);
      return value == SLUICE_PROF_ALLOC_SPACE ? b + st->x_alloc_b
                                              : n + st->x_alloc_n;
    default: return 0;
  }
}

int64_t sluice__resid_value(const sluice_prof_snapshot *s,
                            const sluice__snap_resid *r, int value) {
  int64_t n, b;
  sluice__resid_unbias(s, r, &n, &b);
  if (value == SLUICE_PROF_RESIDUAL_SPACE) return b;
  if (value == SLUICE_PROF_RESIDUAL_OBJECTS) return n;
  return 0;
}

int sluice__resid_match(const sluice_prof_snapshot *s,
                        const sluice_prof_output *o,
                        const sluice__snap_resid *r) {
  if (o->outcomes && !(o->outcomes & SLUICE_PROF_OUTCOME_BIT(r->key.outcome)))
    return 0;
  if (o->queue && strcmp(o->queue, sluice__queue_name(r->key.queue))) return 0;
  if (o->key) {
    const char *k = sluice__snap_key(s, &r->key, NULL);
    if (!k || strcmp(o->key, k)) return 0;
  }
  return 1;
}

void sluice__fmt_value(char *buf, size_t n, int64_t v, int bytes) {
  if (!bytes) {
    snprintf(buf, n, "%lld", (long long)v);
    return;
  }
  static const char *const units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
  double x = (double)v, ax = x < 0 ? -x : x;
  int u = 0;
  while (ax >= 1024 && u < 5) {
    x /= 1024;
    ax /= 1024;
    u++;
  }
  char num[64];
  snprintf(num, sizeof num, "%.2f", x);
  size_t len = strlen(num);
  if (len > 3 && !strcmp(num + len - 3, ".00")) num[len - 3] = 0;
  snprintf(buf, n, "%s%s", num, units[u]);
}

uint32_t sluice__stack_sframes(sluice__symtab *st, uint32_t id,
                               sluice__frame *out, uint32_t max) {
  if (!max) return 0;
  id = SLUICE__STACK_ID(id);
  if (id == SLUICE__STACK_FULL) {
    out[0] = (sluice__frame){"[stack table full]", NULL, 0, 0, 0};
    return 1;
  }
  uint32_t n, k = 0;
  const uintptr_t *f = sluice__stack_frames(id, &n);
  if (n > SLUICE__MAX_DEPTH) n = SLUICE__MAX_DEPTH;
  for (uint32_t i = 0; i < n && k < max; i++) {
    int room = max - k < SLUICE__MAX_INLINE ? (int)(max - k)
                                            : SLUICE__MAX_INLINE;
    k += (uint32_t)sluice__sym_frames(st, f[i] - 1, out + k, room, NULL);
  }
  return k;
}

void sluice__put_frame(sluice__buf *b, const sluice__frame *f) {
  sluice__buf_puts(b, f->func);
  if (!f->file) return;
  const char *base = strrchr(f->file, '/');
  sluice__buf_printf(b, " (%s", base ? base + 1 : f->file);
  if (f->line) sluice__buf_printf(b, ":%u", f->line);
  sluice__buf_puts(b, f->inlined ? ", inlined)" : ")");
}

void sluice__put_chain(sluice__buf *b, sluice__symtab *st, uint32_t id,
                       uint32_t max) {
  sluice__frame f[SLUICE__MAX_FRAMES];
  uint32_t n = sluice__stack_sframes(st, id, f, SLUICE__MAX_FRAMES);
  if (!n) sluice__buf_puts(b, "?");
  for (uint32_t i = 0; i < n && i < max; i++) {
    if (i) sluice__buf_puts(b, " <- ");
    sluice__put_frame(b, &f[i]);
  }
}

/* ------------------------------------------------------------------------ */

static sluice_prof_format format_from_path(const char *path) {
  size_t n = strlen(path);
#define ENDS(s) (n >= sizeof(s) - 1 && !strcmp(path + n - (sizeof(s) - 1), s))
  if (ENDS(".heap")) return SLUICE_PROF_FMT_LEGACY;
  if (ENDS(".txt") || ENDS(".top")) return SLUICE_PROF_FMT_TOP;
  if (ENDS(".folded")) return SLUICE_PROF_FMT_FOLDED;
  if (ENDS(".residual")) return SLUICE_PROF_FMT_RESIDUAL;
#undef ENDS
  return SLUICE_PROF_FMT_PPROF;
}

int sluice_prof_write(const sluice_prof_snapshot *s,
                      const sluice_prof_output *out, sluice_prof_write_fn fn,
                      void *user) {
  sluice_prof_output o;
  if (out) o = *out;
  else memset(&o, 0, sizeof o);
  if (!fn || (unsigned)o.format > SLUICE_PROF_FMT_RESIDUAL ||
      (unsigned)o.value > SLUICE_PROF_RESIDUAL_OBJECTS)
    return SLUICE_EINVAL;
  if (!o.max_rows) o.max_rows = 30;
  sluice__out w = {fn, user, 0};
  if (o.format == SLUICE_PROF_FMT_RESIDUAL) {
    sluice__enter_guard();
    int rc = sluice__write_residual(&o, &w);
    sluice__leave_guard();
    return rc;
  }
  sluice_prof_snapshot *own = NULL;
  if (!s) {
    int rc = sluice_prof_snapshot_take(&own);
    if (rc) return rc;
    s = own;
  }
  sluice__enter_guard();
  int rc;
  switch (o.format) {
    case SLUICE_PROF_FMT_PPROF: rc = sluice__write_pprof(s, &o, &w); break;
    case SLUICE_PROF_FMT_LEGACY: rc = sluice__write_legacy(s, &o, &w); break;
    case SLUICE_PROF_FMT_TOP: rc = sluice__write_top(s, &o, &w); break;
    default: rc = sluice__write_folded(s, &o, &w); break;
  }
  sluice__leave_guard();
  sluice_prof_snapshot_free(own);
  return rc ? rc : w.err;
}

static int fd_write(const void *d, size_t n, void *user) {
  int fd = *(int *)user;
  const char *p = d;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int sluice_prof_write_file(const sluice_prof_snapshot *s,
                           const sluice_prof_output *out, const char *path) {
  if (!path || !*path) return SLUICE_EINVAL;
  char real[4096];
  size_t k = 0;
  for (const char *p = path; *p && k + 24 < sizeof real; p++) {
    if (p[0] == '%' && p[1] == 'p') {
      k += (size_t)snprintf(real + k, sizeof real - k, "%ld", (long)getpid());
      p++;
    } else {
      real[k++] = *p;
    }
  }
  real[k] = 0;
  sluice_prof_output o;
  if (out) {
    o = *out;
  } else {
    memset(&o, 0, sizeof o);
    o.format = format_from_path(real);
  }
  int fd = open(real, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return SLUICE_EIO;
  int rc = sluice_prof_write(s, &o, fd_write, &fd);
  if (close(fd) && !rc) rc = SLUICE_EIO;
  return rc;
}
