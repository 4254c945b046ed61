/* SPDX-License-Identifier: MIT */
/** \file
 * Umbrella header: everything in sluice's public API except the allocation
 * profiler, which is a separate library (sluice/profiling.h, sluice::profiling).
 */
#ifndef SLUICE_SLUICE_H
#define SLUICE_SLUICE_H

#include <sluice/error.h>
#include <sluice/consumer.h>
#include <sluice/publisher.h>
#include <sluice/reconnect.h>

#define SLUICE_VERSION_MAJOR 0
#define SLUICE_VERSION_MINOR 1
#define SLUICE_VERSION_PATCH 0
#define SLUICE_VERSION_STRING "0.1.0"

#endif /* SLUICE_SLUICE_H */
