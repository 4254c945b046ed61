/* SPDX-License-Identifier: MIT */
/* sluice-soak end to end: a leaking worker (--leak global-map) and a clean
 * one (--leak none) soak side by side for 30 s; the verdict must flag the
 * first and pass the second, and the CSV, the plot and the verdict files
 * must be there. The two runs go in parallel to keep CI at 30 s.
 *
 * Builds that cannot interpose malloc (ASan, TSan) have no residual to
 * judge by: they soak for 10 s, check the outputs, and skip the verdict
 * assertions loudly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "push_util.h"
#include "tests/common/broker_util.h"

static char out[256];

static int exists(const char *name) {
  char p[512];
  struct stat st;
  snprintf(p, sizeof(p), "%s/%s", out, name);
  return stat(p, &st) == 0 && st.st_size > 0;
}

static void test_soak_tells_leak_from_clean(void **state) {
#ifdef SOAK_SANITIZED
  const char *duration = "10";
#else
  const char *duration = "30";
#endif
  snprintf(out, sizeof(out), "soak-test-%ld", (long)getpid());
  const char *args[] = {"--duration", duration,      "--rate",
                        "200",        "--interval",  "1000",
                        "--parallel", "--out",       out,
                        "--compare",  "--leak none", "--leak global-map",
                        NULL};
  pu_proc p;
  assert_int_equal(pu_spawn(&p, SOAK, args, 0), 0);
  assert_int_equal(pu_wait(&p, 120000), 0);
  pu_free(&p);

  assert_true(exists("soak.csv"));
  assert_true(exists("run0.csv"));
  assert_true(exists("run1.csv"));
  assert_true(exists("soak.gp"));
  assert_true(exists("verdict.txt"));
  if (system("command -v gnuplot >/dev/null") == 0) {
    assert_true(exists("soak.svg"));
    assert_true(exists("soak.png"));
  }

  char path[512];
  snprintf(path, sizeof(path), "%s/verdict.json", out);
  json_error_t err;
  json_t *v = json_load_file(path, 0, &err);
  assert_non_null(v);
  json_t *runs = json_object_get(v, "runs");
  assert_int_equal(json_array_size(runs), 2);
  json_t *clean = json_array_get(runs, 0), *leaky = json_array_get(runs, 1);
  assert_string_equal(json_string_value(json_object_get(clean, "label")),
                      "--leak none");
  for (size_t i = 0; i < 2; i++) {
    json_t *r = json_array_get(runs, i);
    assert_int_equal(pu_int(r, "exit_status"), 0);
    assert_true(pu_int(r, "samples") >= 5);
    assert_true(pu_int(r, "messages") > 0);
  }
  if (pu_int(clean, "interposing") != 1) {
    fprintf(stderr, "SKIPPED: verdict assertions: this build cannot "
                    "interpose malloc, the soak has no residual to judge\n");
  } else {
    fprintf(stderr, "soak: clean %.2f B/message, leaky %.2f B/message\n",
            json_real_value(json_object_get(clean, "residual_per_message")),
            json_real_value(json_object_get(leaky, "residual_per_message")));
    assert_false(json_is_true(json_object_get(clean, "leak")));
    assert_true(json_is_true(json_object_get(leaky, "leak")));
    assert_true(
        json_real_value(json_object_get(clean, "residual_per_message")) == 0);
    assert_true(
        json_real_value(json_object_get(leaky, "residual_per_message")) > 8);
    assert_int_equal(pu_int(clean, "retained_bytes"), 0);
  }
  json_decref(v);
  snprintf(path, sizeof(path), "rm -rf '%s'", out);
  assert_int_equal(system(path), 0);
}

int main(void) {
  tb_require_broker("test_soak");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_soak_tells_leak_from_clean),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
