/* SPDX-License-Identifier: MIT */
/* Every error code has a distinct name and a message (rabbitmq-c's
 * test_status_enum.c does the same for its status codes). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <sluice/error.h>

static void every_code_has_name_and_message(void **state) {
  (void)state;
  int n = 0;
#define XX(name, val, msg)                                              \
  assert_string_equal(sluice_err_name(SLUICE_##name), "SLUICE_" #name); \
  assert_string_equal(sluice_strerror(SLUICE_##name), msg);             \
  assert_true(strlen(msg) > 5);                                         \
  n++;
  SLUICE_ERRNO_MAP(XX)
#undef XX
  assert_int_equal(n, -SLUICE_ERR_MIN_);
}

static void codes_are_dense_and_distinct(void **state) {
  (void)state;
  for (int e = SLUICE_ERR_MIN_; e < 0; e++) {
    assert_string_not_equal(sluice_err_name(e), "SLUICE_EUNKNOWN");
    assert_string_not_equal(sluice_strerror(e), "unknown error");
    for (int f = e + 1; f < 0; f++)
      assert_string_not_equal(sluice_err_name(e), sluice_err_name(f));
  }
}

static void out_of_range(void **state) {
  (void)state;
  assert_string_equal(sluice_strerror(0), "success");
  assert_string_equal(sluice_err_name(0), "SLUICE_OK");
  assert_string_equal(sluice_strerror(SLUICE_ERR_MIN_ - 1), "unknown error");
  assert_string_equal(sluice_err_name(1), "SLUICE_EUNKNOWN");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_code_has_name_and_message),
      cmocka_unit_test(codes_are_dense_and_distinct),
      cmocka_unit_test(out_of_range),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
