/* SPDX-License-Identifier: MIT */
/* Helpers shared by the profiler's tests: allocation macros that work with
 * and without malloc interposition, an output capture buffer, a small
 * decoder for gzipped profile.proto, and running external tools. */
#ifndef SLUICE_PROF_TEST_H
#define SLUICE_PROF_TEST_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <sluice/profiling.h>

/* Test functions must keep their own frames: no inlining, no cloning. */
#if defined(__clang__)
#define T_NOINLINE __attribute__((noinline))
#else
#define T_NOINLINE __attribute__((noinline, noclone))
#endif

/* Builds with ASan/TSan cannot replace malloc: there the tests announce
 * their blocks with sluice_prof_note_alloc(), which records the caller's
 * stack exactly like the malloc hook. */
#ifdef SLUICE_TEST_NO_INTERPOSE
/* A statement expression, not an inline function: with source lines an
 * inlined helper would be a frame of its own, the leaf of every stack. */
#define TALLOC(n)                       \
  __extension__({                       \
    size_t t_n_ = (n);                  \
    void *t_p_ = malloc(t_n_);          \
    sluice_prof_note_alloc(t_p_, t_n_); \
    t_p_;                               \
  })
#define TFREE(p)                 \
  __extension__({                \
    void *t_q_ = (p);            \
    sluice_prof_note_free(t_q_); \
    free(t_q_);                  \
  })
#else
#define TALLOC(n) malloc(n)
#define TFREE(p) free(p)
#endif

/* A growable capture buffer for sluice_prof_write(). */
typedef struct tbuf {
  char *data;
  size_t len, cap;
} tbuf;
int tbuf_write(const void *data, size_t len, void *user);
void tbuf_free(tbuf *b);
/* The captured text, never NULL. */
const char *tbuf_str(const tbuf *b);
/* Capture one report. */
int t_report(tbuf *out, sluice_prof_format fmt, sluice_prof_value value,
             const sluice_prof_snapshot *s);

/* A decoded profile.proto (only what the tests look at). */
typedef struct tlabel {
  const char *key, *str;
  int64_t num;
} tlabel;

typedef struct tsample {
  uint64_t *locs;
  size_t n_locs;
  int64_t *values;
  size_t n_values;
  tlabel *labels;
  size_t n_labels;
} tsample;

/* The Line entries of a location (innermost inlined call first). */
#define TPROF_MAX_LINES 16
typedef struct tloclines {
  size_t n;
  uint64_t v[TPROF_MAX_LINES][2]; /* function id, line */
} tloclines;

typedef struct tline {
  const char *func, *file; /* NULL when absent */
  int64_t line;
} tline;

typedef struct tprofile {
  char **strings;
  size_t n_strings;
  int64_t (*types)[2]; /* type, unit string indexes */
  size_t n_types;
  tsample *samples;
  size_t n_samples;
  uint64_t (*locs)[3];  /* id, function id of the first line, mapping id */
  tloclines *loc_lines; /* per location */
  size_t n_locs;
  uint64_t (*funcs)[3]; /* id, name, filename string indexes */
  size_t n_funcs;
  size_t n_mappings;
  int64_t period;
} tprofile;

/* Decode gzipped (or plain) profile.proto. 0 on success. */
int tprofile_parse(const void *data, size_t len, tprofile *p);
void tprofile_free(tprofile *p);
int tprofile_type_index(const tprofile *p, const char *type);
/* Name of frame `i` (0 = leaf) of sample `s`, or NULL. With inlined calls
 * it is the innermost one's. */
const char *tprofile_frame(const tprofile *p, const tsample *s, size_t i);
/* The lines of location `i` (0 = leaf) of sample `s`, innermost first, at
 * most max; returns the count. */
size_t tprofile_lines(const tprofile *p, const tsample *s, size_t i, tline *out,
                      size_t max);
const tlabel *tsample_label(const tsample *s, const char *key);
/* Sum of sample type `type` over samples whose leaf is `fn` (any when NULL). */
int64_t tprofile_sum(const tprofile *p, const char *type, const char *fn);
/* Leaf function of the sample with the largest value of `type`. */
const char *tprofile_top_leaf(const tprofile *p, const char *type);

/* Write a buffer to a fresh temporary file; returns a malloc'd path. */
char *t_tempfile(const char *suffix, const void *data, size_t len);
/* Run argv with extra environment entries (NULL-terminated, may be NULL);
 * stdout+stderr captured into out. Returns the exit status or -1. */
int t_run(char *const argv[], char *const env_extra[], tbuf *out);
/* Full path of a tool in PATH, or NULL. */
char *t_which(const char *tool);
/* 1 when missing tools must fail the test (CI), 0 when they may skip. */
int t_tools_required(void);

/* A settable clock for grace periods and horizons (the profiler's thread
 * reads it too). */
#include <stdatomic.h>
extern _Atomic uint64_t t_clock_ns;
uint64_t t_clock(void *user);

#endif /* SLUICE_PROF_TEST_H */
