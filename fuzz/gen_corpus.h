/* SPDX-License-Identifier: MIT */
/* The seed generator's parts (gen_corpus.c, gen_frames.c). */
#ifndef SLUICE_FUZZ_GEN_CORPUS_H
#define SLUICE_FUZZ_GEN_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include <amqp.h>

/* Write one seed file: <corpus dir>/<target>/<name>. */
void gen_write(const char *target, const char *name, const void *data,
               size_t len);
/* Encode basic properties as on the wire; returns the length. */
size_t gen_props(amqp_basic_properties_t *p, uint8_t *buf, size_t cap);
/* The seeds of the frames target (gen_frames.c). */
void gen_frames_seeds(void);

#endif
