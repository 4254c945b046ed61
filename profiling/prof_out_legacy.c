/* SPDX-License-Identifier: MIT */
/* The gperftools heap profile text format, read by google-pprof and by
 * `go tool pprof`:
 *
 *   heap profile: <inuse n>: <inuse b> [<alloc n>: <alloc b>] @ heap_v2/<rate>
 *   <inuse n>: <inuse b> [<alloc n>: <alloc b>] @ 0x<leaf> 0x<caller> ...
 *   ...
 *   MAPPED_LIBRARIES:
 *   <the contents of /proc/self/maps>
 *
 * Counts are raw samples and the header names the rate, so pprof unbiases
 * them itself (the same formula as Go's); at rate 1 the header says
 * "heapprofile" (nothing to unbias). When some blocks were captured at
 * weight 1 (adaptive stacks), raw counts cannot say so: every value is then
 * unbiased here and the header says "heapprofile". Callers are return
 * addresses (pprof subtracts 1), the leaf the address of its call. The
 * format has no labels and no negative
 * numbers: a residual profile is summed per stack, and a difference keeps
 * only what grew. When the allocation totals equal the in-use totals, pprof
 * would ignore the allocation columns, so (like Go) one byte is added. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "prof_internal.h"

typedef struct row {
  uint32_t stack;
  int64_t v[4]; /* inuse n, inuse b, alloc n, alloc b */
} row;

static int64_t pos(int64_t v) {
  return v > 0 ? v : 0;
}

int sluice__write_legacy(const sluice_prof_snapshot *s,
                         const sluice_prof_output *o, sluice__out *out) {
  int residual = o->value == SLUICE_PROF_RESIDUAL_SPACE ||
                 o->value == SLUICE_PROF_RESIDUAL_OBJECTS;
  size_t cap = residual ? s->n_resid : s->n_stacks;
  row *rows = sluice__calloc(cap ? cap : 1, sizeof(row));
  if (!rows) return SLUICE_ENOMEM;
  size_t n = 0;
  /* Weight-1 blocks in what is written: unbias everything here. */
  int mixed = 0;
  if (residual) {
    for (size_t i = 0; i < s->n_resid; i++)
      if ((s->resid[i].key.stack & SLUICE__EXACT) &&
          sluice__resid_match(s, o, &s->resid[i]))
        mixed = 1;
  } else {
    for (size_t i = 0; i < s->n_stacks; i++)
      if (s->stacks[i].x_alloc_n || s->stacks[i].x_inuse_n) mixed = 1;
  }
  if (s->rate <= 1) mixed = 0;
  if (residual) {
    /* Rows are sorted by stack: sum the queues/outcomes/messages. */
    for (size_t i = 0; i < s->n_resid; i++) {
      const sluice__snap_resid *r = &s->resid[i];
      if (!sluice__resid_match(s, o, r)) continue;
      uint32_t id = SLUICE__STACK_ID(r->key.stack);
      if (!n || rows[n - 1].stack != id) rows[n++].stack = id;
      int64_t rn = r->n, rb = r->b;
      if (mixed) sluice__resid_unbias(s, r, &rn, &rb);
      rows[n - 1].v[0] += rn;
      rows[n - 1].v[1] += rb;
    }
    for (size_t i = 0; i < n; i++) {
      rows[i].v[2] = rows[i].v[0];
      rows[i].v[3] = rows[i].v[1];
    }
  } else {
    for (size_t i = 0; i < s->n_stacks; i++) {
      const sluice__snap_stack *e = &s->stacks[i];
      rows[n].stack = e->stack;
      if (mixed) {
        rows[n].v[0] = sluice__stack_value(s, e, SLUICE_PROF_INUSE_OBJECTS);
        rows[n].v[1] = sluice__stack_value(s, e, SLUICE_PROF_INUSE_SPACE);
        rows[n].v[2] = sluice__stack_value(s, e, SLUICE_PROF_ALLOC_OBJECTS);
        rows[n].v[3] = sluice__stack_value(s, e, SLUICE_PROF_ALLOC_SPACE);
      } else {
        rows[n].v[0] = e->inuse_n + e->x_inuse_n;
        rows[n].v[1] = e->inuse_b + e->x_inuse_b;
        rows[n].v[2] = e->alloc_n + e->x_alloc_n;
        rows[n].v[3] = e->alloc_b + e->x_alloc_b;
      }
      n++;
    }
  }
  int64_t tot[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < 4; k++) {
      rows[i].v[k] = pos(rows[i].v[k]);
      tot[k] += rows[i].v[k];
    }
  if (tot[2] == tot[0] && tot[3] == tot[1]) tot[3]++;

  sluice__buf b = {0};
  int unsampled = s->rate <= 1 || s->rate == (uint64_t)SLUICE_PROF_RATE_NONE ||
                  mixed;
  sluice__buf_printf(&b, "heap profile: %lld: %lld [%lld: %lld] @ ",
                     (long long)tot[0], (long long)tot[1], (long long)tot[2],
                     (long long)tot[3]);
  if (unsampled) sluice__buf_puts(&b, "heapprofile\n");
  else sluice__buf_printf(&b, "heap_v2/%llu\n", (unsigned long long)s->rate);
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    const row *r = &rows[i];
    uint32_t nf;
    const uintptr_t *f = sluice__stack_frames(r->stack, &nf);
    if (!nf || (!r->v[0] && !r->v[1] && !r->v[2] && !r->v[3])) continue;
    sluice__buf_printf(&b, "%lld: %lld [%lld: %lld] @", (long long)r->v[0],
                       (long long)r->v[1], (long long)r->v[2],
                       (long long)r->v[3]);
    /* The leaf as the address of the call itself: google-pprof takes the
     * first address as is (subtracting 1 from callers only) and would put
     * the allocation on the line after the call; go tool pprof subtracts
     * 1 from every address, which still lands inside the call. */
    for (uint32_t k = 0; k < nf; k++)
      sluice__buf_printf(&b, " 0x%lx", (unsigned long)(f[k] - (k == 0)));
    sluice__buf_putc(&b, '\n');
    if (b.len >= 16384) {
      rc = b.oom ? SLUICE_ENOMEM : sluice__out_write(out, b.data, b.len);
      b.len = 0;
    }
  }
  sluice__buf_puts(&b, "\nMAPPED_LIBRARIES:\n");
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char chunk[4096];
    ssize_t k;
    while ((k = read(fd, chunk, sizeof chunk)) > 0)
      sluice__buf_put(&b, chunk, (size_t)k);
    close(fd);
  }
  if (!rc) rc = b.oom ? SLUICE_ENOMEM : sluice__out_write(out, b.data, b.len);
  sluice__buf_free(&b);
  sluice__free(rows);
  return rc;
}
