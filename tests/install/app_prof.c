/* SPDX-License-Identifier: MIT */
/* Built against an installed libsluice_prof: linking it is enough for its
 * malloc to replace glibc's (when the build interposes), so an allocation
 * made here is counted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/profiling.h>

int main(void) {
  sluice_prof_opts o = {.sample_rate = 1};
  if (sluice_prof_start(&o) != 0) return 1;
  sluice_prof_memstats before, after;
  sluice_prof_memstats_read(&before);
  char *volatile p = malloc(12345);
  if (!p) return 1;
  memset(p, 1, 12345);
  sluice_prof_memstats_read(&after);
  free(p);
  sluice_prof_stop();
  if (sluice_prof_interposing() && after.mallocs <= before.mallocs) {
    fprintf(stderr, "app_prof: malloc was not replaced (mallocs %llu)\n",
            (unsigned long long)after.mallocs);
    return 1;
  }
  printf("app_prof: interposing=%d mallocs %llu -> %llu ok\n",
         sluice_prof_interposing(), (unsigned long long)before.mallocs,
         (unsigned long long)after.mallocs);
  return 0;
}
