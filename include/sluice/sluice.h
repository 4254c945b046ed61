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
#include <sluice/version.h> /* generated: SLUICE_VERSION_* */

#endif /* SLUICE_SLUICE_H */
