/* SPDX-License-Identifier: MIT */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "prof_test.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

extern char **environ;

_Atomic uint64_t t_clock_ns = 1000000000ull;

uint64_t t_clock(void *user) {
  (void)user;
  return t_clock_ns;
}

int tbuf_write(const void *data, size_t len, void *user) {
  tbuf *b = user;
  if (b->len + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + len + 1) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = 0;
  return 0;
}

const char *tbuf_str(const tbuf *b) {
  return b->data ? b->data : "";
}

void tbuf_free(tbuf *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

int t_report(tbuf *out, sluice_prof_format fmt, sluice_prof_value value,
             const sluice_prof_snapshot *s) {
  sluice_prof_output o = {.format = fmt, .value = value, .max_rows = 50};
  out->len = 0;
  if (out->data) out->data[0] = 0;
  int rc = sluice_prof_write(s, &o, tbuf_write, out);
  if (!out->data) tbuf_write("", 0, out);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* A minimal protobuf reader. */

typedef struct rd {
  const unsigned char *p, *end;
  int err;
} rd;

static uint64_t rd_varint(rd *r) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) {
      r->err = 1;
      return 0;
    }
    unsigned char c = *r->p++;
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return v;
  }
  r->err = 1;
  return v;
}

/* Next field: returns 0 at the end; wire type 2 sets sub. */
static int rd_field(rd *r, unsigned *field, unsigned *wire, uint64_t *v,
                    rd *sub) {
  if (r->err || r->p >= r->end) return 0;
  uint64_t key = rd_varint(r);
  *field = (unsigned)(key >> 3);
  *wire = (unsigned)(key & 7);
  if (*wire == 0) {
    *v = rd_varint(r);
  } else if (*wire == 2) {
    uint64_t n = rd_varint(r);
    if ((uint64_t)(r->end - r->p) < n) {
      r->err = 1;
      return 0;
    }
    sub->p = r->p;
    sub->end = r->p + n;
    sub->err = 0;
    r->p += n;
  } else {
    r->err = 1;
    return 0;
  }
  return !r->err;
}

#define PUSH(arr, n, item)                                  \
  do {                                                      \
    void *np_ = realloc((arr), ((n) + 1) * sizeof(*(arr))); \
    if (!np_) return -1;                                    \
    (arr) = np_;                                            \
    (arr)[(n)++] = item;                                    \
  } while (0)

static int read_u64s(unsigned wire, uint64_t v, rd *sub, uint64_t **arr,
                     size_t *n) {
  if (wire == 0) {
    PUSH(*arr, *n, v);
    return 0;
  }
  while (sub->p < sub->end && !sub->err) {
    uint64_t x = rd_varint(sub);
    PUSH(*arr, *n, x);
  }
  return sub->err ? -1 : 0;
}

static int parse_sample(rd *r, tsample *s) {
  unsigned f, w;
  uint64_t v;
  rd sub;
  while (rd_field(r, &f, &w, &v, &sub)) {
    if (f == 1) {
      if (read_u64s(w, v, &sub, &s->locs, &s->n_locs)) return -1;
    } else if (f == 2) {
      uint64_t *vals = NULL;
      size_t n = 0;
      if (read_u64s(w, v, &sub, &vals, &n)) return -1;
      for (size_t i = 0; i < n; i++)
        PUSH(s->values, s->n_values, (int64_t)vals[i]);
      free(vals);
    } else if (f == 3 && w == 2) {
      tlabel l = {0};
      int64_t key = 0, str = 0;
      unsigned f2, w2;
      uint64_t v2;
      rd sub2;
      while (rd_field(&sub, &f2, &w2, &v2, &sub2)) {
        if (f2 == 1) key = (int64_t)v2;
        if (f2 == 2) str = (int64_t)v2;
        if (f2 == 3) l.num = (int64_t)v2;
      }
      /* Resolved to strings after the table is read. */
      l.key = (const char *)(intptr_t)key;
      l.str = (const char *)(intptr_t)str;
      PUSH(s->labels, s->n_labels, l);
    }
  }
  return r->err ? -1 : 0;
}

static int gunzip(const void *data, size_t len, unsigned char **out,
                  size_t *out_len) {
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, 15 + 32) != Z_OK) return -1;
  size_t cap = len * 4 + 1024, n = 0;
  unsigned char *buf = malloc(cap);
  z.next_in = (Bytef *)(uintptr_t)data;
  z.avail_in = (uInt)len;
  int zr;
  do {
    if (n == cap) {
      cap *= 2;
      unsigned char *nb = realloc(buf, cap);
      if (!nb) break;
      buf = nb;
    }
    z.next_out = buf + n;
    z.avail_out = (uInt)(cap - n);
    zr = inflate(&z, Z_NO_FLUSH);
    n = cap - z.avail_out;
  } while (zr == Z_OK);
  inflateEnd(&z);
  if (zr != Z_STREAM_END) {
    free(buf);
    return -1;
  }
  *out = buf;
  *out_len = n;
  return 0;
}

int tprofile_parse(const void *data, size_t len, tprofile *p) {
  memset(p, 0, sizeof *p);
  unsigned char *raw = NULL;
  size_t raw_len = 0;
  const unsigned char *d = data;
  if (len >= 2 && d[0] == 0x1f && d[1] == 0x8b) {
    if (gunzip(data, len, &raw, &raw_len)) return -1;
    d = raw;
    len = raw_len;
  }
  rd r = {d, d + len, 0};
  unsigned f, w;
  uint64_t v;
  rd sub;
  int rc = 0;
  while (!rc && rd_field(&r, &f, &w, &v, &sub)) {
    unsigned f2, w2;
    uint64_t v2;
    rd sub2;
    if (f == 1 && w == 2) {
      int64_t t[2] = {0, 0};
      while (rd_field(&sub, &f2, &w2, &v2, &sub2))
        if (f2 == 1 || f2 == 2) t[f2 - 1] = (int64_t)v2;
      p->types = realloc(p->types, (p->n_types + 1) * sizeof(*p->types));
      memcpy(p->types[p->n_types++], t, sizeof t);
    } else if (f == 2 && w == 2) {
      tsample s = {0};
      rc = parse_sample(&sub, &s);
      p->samples = realloc(p->samples, (p->n_samples + 1) * sizeof(tsample));
      p->samples[p->n_samples++] = s;
    } else if (f == 3) {
      p->n_mappings++;
    } else if (f == 4 && w == 2) {
      uint64_t loc[3] = {0, 0, 0};
      tloclines ll = {0};
      while (rd_field(&sub, &f2, &w2, &v2, &sub2)) {
        if (f2 == 1) loc[0] = v2;
        if (f2 == 2) loc[2] = v2;
        if (f2 == 4 && w2 == 2) {
          unsigned f3, w3;
          uint64_t v3, line[2] = {0, 0};
          rd sub3;
          while (rd_field(&sub2, &f3, &w3, &v3, &sub3))
            if (f3 == 1 || f3 == 2) line[f3 - 1] = v3;
          if (!loc[1]) loc[1] = line[0];
          if (ll.n < TPROF_MAX_LINES) {
            memcpy(ll.v[ll.n], line, sizeof line);
            ll.n++;
          }
        }
      }
      p->locs = realloc(p->locs, (p->n_locs + 1) * sizeof(*p->locs));
      p->loc_lines =
          realloc(p->loc_lines, (p->n_locs + 1) * sizeof(*p->loc_lines));
      p->loc_lines[p->n_locs] = ll;
      memcpy(p->locs[p->n_locs++], loc, sizeof loc);
    } else if (f == 5 && w == 2) {
      uint64_t fn[3] = {0, 0, 0};
      while (rd_field(&sub, &f2, &w2, &v2, &sub2)) {
        if (f2 == 1 || f2 == 2) fn[f2 - 1] = v2;
        if (f2 == 4) fn[2] = v2;
      }
      p->funcs = realloc(p->funcs, (p->n_funcs + 1) * sizeof(*p->funcs));
      memcpy(p->funcs[p->n_funcs++], fn, sizeof fn);
    } else if (f == 6 && w == 2) {
      size_t n = (size_t)(sub.end - sub.p);
      char *s = malloc(n + 1);
      memcpy(s, sub.p, n);
      s[n] = 0;
      p->strings = realloc(p->strings, (p->n_strings + 1) * sizeof(char *));
      p->strings[p->n_strings++] = s;
    } else if (f == 12 && w == 0) {
      p->period = (int64_t)v;
    }
  }
  if (r.err) rc = -1;
  free(raw);
  if (!rc && (!p->n_strings || p->strings[0][0])) rc = -1;
  for (size_t i = 0; !rc && i < p->n_samples; i++) {
    tsample *s = &p->samples[i];
    if (s->n_values != p->n_types) rc = -1;
    for (size_t k = 0; k < s->n_labels; k++) {
      size_t key = (size_t)(intptr_t)s->labels[k].key;
      size_t str = (size_t)(intptr_t)s->labels[k].str;
      if (key >= p->n_strings || str >= p->n_strings) {
        rc = -1;
        break;
      }
      s->labels[k].key = p->strings[key];
      s->labels[k].str = p->strings[str];
    }
  }
  if (rc) tprofile_free(p);
  return rc;
}

void tprofile_free(tprofile *p) {
  for (size_t i = 0; i < p->n_strings; i++) free(p->strings[i]);
  for (size_t i = 0; i < p->n_samples; i++) {
    free(p->samples[i].locs);
    free(p->samples[i].values);
    free(p->samples[i].labels);
  }
  free(p->strings);
  free(p->types);
  free(p->samples);
  free(p->locs);
  free(p->loc_lines);
  free(p->funcs);
  memset(p, 0, sizeof *p);
}

int tprofile_type_index(const tprofile *p, const char *type) {
  for (size_t i = 0; i < p->n_types; i++)
    if ((size_t)p->types[i][0] < p->n_strings &&
        !strcmp(p->strings[p->types[i][0]], type))
      return (int)i;
  return -1;
}

const char *tprofile_frame(const tprofile *p, const tsample *s, size_t i) {
  if (i >= s->n_locs) return NULL;
  for (size_t l = 0; l < p->n_locs; l++) {
    if (p->locs[l][0] != s->locs[i]) continue;
    for (size_t f = 0; f < p->n_funcs; f++)
      if (p->funcs[f][0] == p->locs[l][1] && p->funcs[f][1] < p->n_strings)
        return p->strings[p->funcs[f][1]];
  }
  return NULL;
}

size_t tprofile_lines(const tprofile *p, const tsample *s, size_t i, tline *out,
                      size_t max) {
  if (i >= s->n_locs) return 0;
  for (size_t l = 0; l < p->n_locs; l++) {
    if (p->locs[l][0] != s->locs[i]) continue;
    size_t n = 0;
    for (size_t k = 0; k < p->loc_lines[l].n && n < max; k++) {
      tline t = {NULL, NULL, (int64_t)p->loc_lines[l].v[k][1]};
      for (size_t f = 0; f < p->n_funcs; f++) {
        if (p->funcs[f][0] != p->loc_lines[l].v[k][0]) continue;
        if (p->funcs[f][1] < p->n_strings) t.func = p->strings[p->funcs[f][1]];
        if (p->funcs[f][2] && p->funcs[f][2] < p->n_strings)
          t.file = p->strings[p->funcs[f][2]];
      }
      out[n++] = t;
    }
    return n;
  }
  return 0;
}

const tlabel *tsample_label(const tsample *s, const char *key) {
  for (size_t i = 0; i < s->n_labels; i++)
    if (!strcmp(s->labels[i].key, key)) return &s->labels[i];
  return NULL;
}

int64_t tprofile_sum(const tprofile *p, const char *type, const char *fn) {
  int t = tprofile_type_index(p, type);
  if (t < 0) return -1;
  int64_t sum = 0;
  for (size_t i = 0; i < p->n_samples; i++) {
    const char *leaf = tprofile_frame(p, &p->samples[i], 0);
    if (fn && (!leaf || strcmp(leaf, fn))) continue;
    sum += p->samples[i].values[t];
  }
  return sum;
}

const char *tprofile_top_leaf(const tprofile *p, const char *type) {
  int t = tprofile_type_index(p, type);
  if (t < 0) return NULL;
  const char *best = NULL;
  int64_t max = 0;
  for (size_t i = 0; i < p->n_samples; i++) {
    if (p->samples[i].values[t] > max) {
      max = p->samples[i].values[t];
      best = tprofile_frame(p, &p->samples[i], 0);
    }
  }
  return best;
}

/* ------------------------------------------------------------------------ */

char *t_tempfile(const char *suffix, const void *data, size_t len) {
  const char *dir = getenv("TMPDIR");
  if (!dir || !*dir) dir = "/tmp";
  char *path = NULL;
  if (asprintf(&path, "%s/sluice-prof-XXXXXX%s", dir, suffix) < 0) return NULL;
  int fd = mkstemps(path, (int)strlen(suffix));
  if (fd < 0) {
    free(path);
    return NULL;
  }
  const char *p = data;
  while (len) {
    ssize_t w = write(fd, p, len);
    if (w <= 0) break;
    p += w;
    len -= (size_t)w;
  }
  close(fd);
  return path;
}

int t_run(char *const argv[], char *const env_extra[], tbuf *out) {
  int pipefd[2];
  if (pipe(pipefd)) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
  posix_spawn_file_actions_addclose(&fa, pipefd[0]);
  size_t n_env = 0, n_extra = 0;
  while (environ[n_env]) n_env++;
  while (env_extra && env_extra[n_extra]) n_extra++;
  char **env = calloc(n_env + n_extra + 1, sizeof(char *));
  size_t k = 0;
  for (size_t i = 0; i < n_extra; i++) env[k++] = env_extra[i];
  for (size_t i = 0; i < n_env; i++) {
    /* Never hand our own profiler settings to children by accident. */
    if (!strncmp(environ[i], "SLUICE_PROF", 11) ||
        !strncmp(environ[i], "LD_PRELOAD=", 11))
      continue;
    env[k++] = environ[i];
  }
  env[k] = NULL;
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, env);
  posix_spawn_file_actions_destroy(&fa);
  free(env);
  close(pipefd[1]);
  if (rc) {
    close(pipefd[0]);
    return -1;
  }
  char chunk[4096];
  ssize_t r;
  while ((r = read(pipefd[0], chunk, sizeof chunk)) != 0) {
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (out) tbuf_write(chunk, (size_t)r, out);
  }
  close(pipefd[0]);
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  if (out && !out->data) tbuf_write("", 0, out);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

char *t_which(const char *tool) {
  const char *path = getenv("PATH");
  if (!path) path = "/usr/bin:/bin";
  char *copy = strdup(path), *save = NULL;
  for (char *dir = strtok_r(copy, ":", &save); dir;
       dir = strtok_r(NULL, ":", &save)) {
    char *full = NULL;
    if (asprintf(&full, "%s/%s", dir, tool) < 0) break;
    if (!access(full, X_OK)) {
      free(copy);
      return full;
    }
    free(full);
  }
  free(copy);
  return NULL;
}

int t_tools_required(void) {
  const char *v = getenv("SLUICE_REQUIRE_BROKER");
  return v && *v && strcmp(v, "0");
}
