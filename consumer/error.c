/* SPDX-License-Identifier: MIT */
#include <sluice/error.h>

const char *sluice_strerror(int err) {
  switch (err) {
    case 0:
      return "success";
#define XX(name, val, msg) \
  case SLUICE_##name:      \
    return msg;
    SLUICE_ERRNO_MAP(XX)
#undef XX
  }
  return "unknown error";
}

const char *sluice_err_name(int err) {
  switch (err) {
    case 0:
      return "SLUICE_OK";
#define XX(name, val, msg) \
  case SLUICE_##name:      \
    return "SLUICE_" #name;
    SLUICE_ERRNO_MAP(XX)
#undef XX
  }
  return "SLUICE_EUNKNOWN";
}
