/* SPDX-License-Identifier: MIT */
/* A shared library that allocates on test_prof_tools' behalf: source lines
 * and inlined frames from a module other than the executable. */
#include <string.h>

#include "prof_test.h"
#include "prof_testlib.h"

static int alloc_line;

/* Inlined into prof_testlib_alloc: a frame of its own in the profile. */
__attribute__((always_inline)) static inline void *lib_make(size_t n) {
  alloc_line = __LINE__ + 1;
  void *p = TALLOC(n);
  memset(p, 7, n);
  return p;
}

T_NOINLINE void *prof_testlib_alloc(size_t n) {
  return lib_make(n);
}

/* The line of the allocation in lib_make. */
int prof_testlib_line(void) {
  return alloc_line;
}
