/* SPDX-License-Identifier: MIT */
/* Source lines and inlined frames from DWARF (elfutils libdw), at report
 * time only.
 *
 * Each loaded module with debug information gets its own Dwfl session
 * (libdwfl: one module reported with dwfl_report_elf at its load address),
 * so that a module can be closed on its own and everything libdw read for
 * it freed. At most SLUICE__DWARF_OPEN sessions are open at once; opening
 * one more closes the least recently used. A module without DWARF costs
 * nothing after the first look (its symbol-cache entry remembers it).
 *
 * The separate debug file is looked up by build id only
 * (/usr/lib/debug/.build-id/xx/yyyy.debug), like the ELF symbol tables in
 * prof_symbols.c. debuginfod is never asked: a report holds the symbol
 * lock, and a network fetch there would stall every other report.
 *
 * For an address, the line table gives the innermost file:line; the
 * concrete DIE tree above it (dwarf_getscopes, then dwarf_getscopes_die as
 * eu-addr2line -i does) gives the chain of inlined calls, each with the
 * caller's file:line from DW_AT_call_file/DW_AT_call_line. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prof_internal.h"

#if SLUICE_PROF_HAVE_LIBDW

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>

struct sluice__dwarf {
  Dwfl *dwfl;
  Dwfl_Module *mod;
  uint64_t used;              /* LRU tick */
  sluice__dwarf **owner;      /* the symbol cache's pointer to this */
  struct sluice__dwarf *next; /* open sessions */
};

static sluice__dwarf *open_list;
static size_t n_open;
static uint64_t tick;
static sluice__dwarf_stats stats;

static int find_elf(Dwfl_Module *mod, void **userdata, const char *modname,
                    Dwarf_Addr base, char **file_name, Elf **elfp) {
  (void)mod;
  (void)userdata;
  (void)modname;
  (void)base;
  (void)file_name;
  (void)elfp;
  return -1; /* never called: the module is reported with its file */
}

/* The separate debug file, by build id, on the local disk only. */
static int find_debuginfo(Dwfl_Module *mod, void **userdata,
                          const char *modname, Dwarf_Addr base,
                          const char *file_name, const char *debuglink_file,
                          GElf_Word debuglink_crc,
                          char **debuginfo_file_name) {
  (void)userdata;
  (void)modname;
  (void)base;
  (void)file_name;
  (void)debuglink_file;
  (void)debuglink_crc;
  const unsigned char *bits;
  GElf_Addr vaddr;
  int n = dwfl_module_build_id(mod, &bits, &vaddr);
  if (n < 2 || n > 64) return -1;
  char path[64 + 2 * 64 + 16];
  int k = snprintf(path, sizeof path, "/usr/lib/debug/.build-id/%02x/",
                   bits[0]);
  for (int i = 1; i < n; i++)
    k += snprintf(path + k, sizeof path - (size_t)k, "%02x", bits[i]);
  snprintf(path + k, sizeof path - (size_t)k, ".debug");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd >= 0 && debuginfo_file_name) *debuginfo_file_name = strdup(path);
  return fd;
}

static char *no_path;
static const Dwfl_Callbacks callbacks = {
    .find_elf = find_elf,
    .find_debuginfo = find_debuginfo,
    .section_address = dwfl_offline_section_address,
    .debuginfo_path = &no_path,
};

static void dw_close(sluice__dwarf *d) {
  for (sluice__dwarf **pp = &open_list; *pp; pp = &(*pp)->next)
    if (*pp == d) {
      *pp = d->next;
      n_open--;
      break;
    }
  if (d->owner) *d->owner = NULL;
  dwfl_end(d->dwfl);
  sluice__free(d);
  stats.closed++;
}

static void evict_lru(void) {
  sluice__dwarf *old = NULL;
  for (sluice__dwarf *d = open_list; d; d = d->next)
    if (!old || d->used < old->used) old = d;
  if (old) dw_close(old);
}

/* Does the file's build id (from libdwfl) match the loaded module's (hex,
 * read from memory)? A binary rebuilt since it was loaded would give wrong
 * lines: better none. No build id on either side: trust the path. */
static int same_build(Dwfl_Module *mod, const char *hex) {
  const unsigned char *bits;
  GElf_Addr vaddr;
  int n = dwfl_module_build_id(mod, &bits, &vaddr);
  if (n <= 0 || !hex || !*hex) return 1;
  if (strlen(hex) != (size_t)n * 2) return 0;
  for (int i = 0; i < n; i++) {
    char b[3];
    snprintf(b, sizeof b, "%02x", bits[i]);
    if (memcmp(b, hex + 2 * i, 2)) return 0;
  }
  return 1;
}

/* Open the DWARF of the module at `path` loaded at `base`: 1 open, 0 the
 * module has no DWARF (or cannot be read). */
static int dw_open(sluice__dwarf **slot, const char *path, uintptr_t base,
                   const char *build_id) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  Dwfl *dwfl = dwfl_begin(&callbacks);
  if (!dwfl) {
    close(fd);
    return 0;
  }
  const char *name = strrchr(path, '/');
  /* fd is the session's from here on, even on failure. */
  Dwfl_Module *mod =
      dwfl_report_elf(dwfl, name ? name + 1 : path, path, fd, base, false);
  Dwarf_Addr bias;
  if (!mod || dwfl_report_end(dwfl, NULL, NULL) != 0 ||
      !same_build(mod, build_id) || !dwfl_module_getdwarf(mod, &bias)) {
    dwfl_end(dwfl);
    stats.no_dwarf++;
    return 0;
  }
  if (n_open >= SLUICE__DWARF_OPEN) evict_lru();
  sluice__dwarf *d = sluice__calloc(1, sizeof *d);
  if (!d) {
    dwfl_end(dwfl);
    return 0;
  }
  d->dwfl = dwfl;
  d->mod = mod;
  d->owner = slot;
  d->next = open_list;
  open_list = d;
  n_open++;
  stats.opened++;
  *slot = d;
  return 1;
}

void sluice__dwarf_close(sluice__dwarf **slot) {
  if (*slot) dw_close(*slot);
}

/* The name of a subprogram or inlined subroutine (through its abstract
 * origin and specification), or NULL. */
static const char *die_name(Dwarf_Die *die) {
  Dwarf_Attribute a;
  const char *n = dwarf_formstring(
      dwarf_attr_integrate(die, DW_AT_linkage_name, &a));
  if (!n)
    n = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name,
                                              &a));
  return n ? n : dwarf_diename(die);
}

static int decl_line(Dwarf_Die *die) {
  int l = 0;
  Dwarf_Die origin, *d = die;
  Dwarf_Attribute a;
  /* An inlined or out-of-line instance: the declaration is the origin's. */
  if (dwarf_attr(die, DW_AT_abstract_origin, &a) &&
      dwarf_formref_die(&a, &origin))
    d = &origin;
  if (dwarf_decl_line(d, &l) != 0) return 0;
  return l > 0 ? l : 0;
}

static int is_func(int tag) {
  return tag == DW_TAG_subprogram || tag == DW_TAG_inlined_subroutine ||
         tag == DW_TAG_entry_point;
}

int sluice__dwarf_frames(sluice__dwarf **slot, int *state, const char *path,
                         uintptr_t base, const char *build_id, uintptr_t pc,
                         sluice__frame *out, int max) {
  if (*state < 0 || max <= 0) return 0;
  if (!*slot) {
    if (!dw_open(slot, path, base, build_id)) {
      *state = -1; /* not again: the module has no DWARF */
      return 0;
    }
    *state = 1;
  }
  sluice__dwarf *d = *slot;
  d->used = ++tick;
  stats.lookups++;

  int n = 0;
  Dwfl_Line *ln = dwfl_module_getsrc(d->mod, pc);
  int line = 0;
  const char *file = ln ? dwfl_lineinfo(ln, NULL, &line, NULL, NULL, NULL)
                        : NULL;
  Dwarf_Addr bias = 0;
  Dwarf_Die *cu = dwfl_module_addrdie(d->mod, pc, &bias);
  Dwarf_Die *scopes = NULL, *chain = NULL;
  int ns = cu ? dwarf_getscopes(cu, pc - bias, &scopes) : 0;
  int nc = 0;
  if (ns > 0) {
    /* scopes[] follows abstract origins for the variables' sake; the
     * concrete nesting of inlined calls comes from the DIE tree. */
    Dwarf_Die inner;
    Dwarf_Addr b2;
    Dwarf *dw = dwfl_module_getdwarf(d->mod, &b2);
    if (dw && dwarf_offdie(dw, dwarf_dieoffset(&scopes[0]), &inner))
      nc = dwarf_getscopes_die(&inner, &chain);
  }
  Dwarf_Files *files = NULL;
  size_t n_files = 0;
  if (nc > 0 && cu && dwarf_getsrcfiles(cu, &files, &n_files) != 0)
    files = NULL;
  int outer = 0; /* found the function that holds the code */
  for (int i = 0; i < nc; i++) {
    Dwarf_Die *s = &chain[i];
    int tag = dwarf_tag(s);
    if (!is_func(tag)) continue;
    int inl = tag == DW_TAG_inlined_subroutine;
    /* Past max - 1 inlined calls, the middle ones are dropped: the last
     * slot is the function that holds the code. */
    if (!inl || n < max - 1) {
      out[n].func = die_name(s);
      out[n].file = file;
      out[n].line = line > 0 ? (uint32_t)line : 0;
      out[n].start_line = (uint32_t)decl_line(s);
      n++;
    }
    if (!inl) {
      outer = 1;
      break;
    }
    /* The caller's position is the call site of this inlined instance. */
    Dwarf_Attribute a;
    Dwarf_Word idx = 0, cl = 0;
    file = NULL;
    line = 0;
    if (files &&
        dwarf_formudata(dwarf_attr(s, DW_AT_call_file, &a), &idx) == 0 &&
        idx < n_files)
      file = dwarf_filesrc(files, idx, NULL, NULL);
    if (dwarf_formudata(dwarf_attr(s, DW_AT_call_line, &a), &cl) == 0)
      line = (int)cl;
  }
  /* A line but no function DIE (assembly), or inlined calls whose caller
   * has no DIE: the caller is named by its ELF symbol. */
  if (!outer && (n || file) && n < max) {
    out[n].func = NULL;
    out[n].file = file;
    out[n].line = line > 0 ? (uint32_t)line : 0;
    out[n].start_line = 0;
    n++;
  }
  free(scopes); /* libdw's, from malloc */
  free(chain);
  return n;
}

void sluice__dwarf_stats_get(sluice__dwarf_stats *out) {
  *out = stats;
  out->open = n_open;
}

#else /* !SLUICE_PROF_HAVE_LIBDW */

void sluice__dwarf_close(sluice__dwarf **slot) {
  *slot = NULL;
}

int sluice__dwarf_frames(sluice__dwarf **slot, int *state, const char *path,
                         uintptr_t base, const char *build_id, uintptr_t pc,
                         sluice__frame *out, int max) {
  (void)slot;
  (void)path;
  (void)base;
  (void)build_id;
  (void)pc;
  (void)out;
  (void)max;
  *state = -1;
  return 0;
}

void sluice__dwarf_stats_get(sluice__dwarf_stats *out) {
  memset(out, 0, sizeof *out);
}

#endif
