/* SPDX-License-Identifier: MIT */
/* Built against an installed sluice (find_package and pkg-config): the
 * headers, the generated version.h and libsluice link and run. */
#include <stdio.h>
#include <string.h>

#include <sluice/sluice.h>

int main(void) {
  sluice_consumer_opts o = {.uri = "amqp://guest:guest@127.0.0.1:5672/"};
  sluice_consumer *c = NULL;
  int rc = sluice_consumer_new(&o, &c);
  if (rc != 0) {
    fprintf(stderr, "app_consumer: new: %s\n", sluice_strerror(rc));
    return 1;
  }
  sluice_consumer_free(c);
  if (strcmp(SLUICE_VERSION_STRING, APP_EXPECT_VERSION) != 0) {
    fprintf(stderr, "app_consumer: version.h says %s, expected %s\n",
            SLUICE_VERSION_STRING, APP_EXPECT_VERSION);
    return 1;
  }
  printf("app_consumer: sluice %s ok\n", SLUICE_VERSION_STRING);
  return 0;
}
