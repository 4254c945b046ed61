/* SPDX-License-Identifier: MIT */
/* Built against an installed libsluice_debug: the endpoint starts on a free
 * loopback port and stops. This program calls no allocation function
 * itself: the profiler's malloc must still be the one the libraries use,
 * because linking sluice-debug puts libsluice_prof on the program's own
 * link line. */
#include <stdio.h>

#include <sluice/debug.h>
#include <sluice/profiling.h>

int main(void) {
  sluice_prof_opts po = {.sample_rate = 1};
  if (sluice_prof_start(&po) != 0) return 1;
  sluice_prof_memstats before, after;
  sluice_prof_memstats_read(&before);
  sluice_debug_opts o = {.addr = "127.0.0.1:0"};
  sluice_debug_server *s = NULL;
  int rc = sluice_debug_server_new(&o, &s);
  if (rc != 0) {
    fprintf(stderr, "app_debug: new: %s\n", sluice_strerror(rc));
    return 1;
  }
  int port = sluice_debug_server_port(s);
  sluice_debug_server_free(s);
  sluice_prof_memstats_read(&after);
  sluice_prof_stop();
  if (port <= 0) return 1;
  if (sluice_prof_interposing() && after.mallocs <= before.mallocs) {
    fprintf(stderr, "app_debug: the server's allocations were not seen: "
                    "libsluice_prof is not the program's malloc\n");
    return 1;
  }
  printf("app_debug: listened on port %d, mallocs %llu -> %llu ok\n", port,
         (unsigned long long)before.mallocs, (unsigned long long)after.mallocs);
  return 0;
}
