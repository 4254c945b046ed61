/* SPDX-License-Identifier: MIT */
/* prof_testlib.c: a shared library that allocates for test_prof_tools. */
#ifndef SLUICE_PROF_TESTLIB_H
#define SLUICE_PROF_TESTLIB_H

#include <stddef.h>

#define TESTLIB_API __attribute__((visibility("default")))

/* Allocates n bytes (the caller frees them with TFREE). */
TESTLIB_API void *prof_testlib_alloc(size_t n);
/* The source line of that allocation (in an inlined helper). */
TESTLIB_API int prof_testlib_line(void);

#endif /* SLUICE_PROF_TESTLIB_H */
