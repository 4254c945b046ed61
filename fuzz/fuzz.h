/* SPDX-License-Identifier: MIT */
/* The entry point every fuzz target defines (libFuzzer's), called by
 * libFuzzer or by replay_main.c. */
#ifndef SLUICE_FUZZ_H
#define SLUICE_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
