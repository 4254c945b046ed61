/* SPDX-License-Identifier: MIT */
#include <sluice/error.h>

/* The table is dense from -1 down to SLUICE_ERR_MIN_ (its length): every
 * value in range, and no two alike (the switches below would not compile). */
#define IN_RANGE(name, val, msg)                        \
  _Static_assert((val) < 0 && (val) >= SLUICE_ERR_MIN_, \
                 "SLUICE_E" #name " outside -1 .. SLUICE_ERR_MIN_");
SLUICE_ERRNO_MAP(IN_RANGE)
#undef IN_RANGE

const char *sluice_strerror(int err) {
  switch (err) {
    case 0: return "success";
#define XX(name, val, msg) \
  case SLUICE_##name: return msg;
      SLUICE_ERRNO_MAP(XX)
#undef XX
  }
  return "unknown error";
}

const char *sluice_err_name(int err) {
  switch (err) {
    case 0: return "SLUICE_OK";
#define XX(name, val, msg) \
  case SLUICE_##name: return "SLUICE_" #name;
      SLUICE_ERRNO_MAP(XX)
#undef XX
  }
  return "SLUICE_EUNKNOWN";
}
