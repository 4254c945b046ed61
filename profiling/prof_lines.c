/* SPDX-License-Identifier: MIT */
/* Source lines and inlined frames from DWARF (elfutils libdw), at report
 * time only.
 *
 * Each loaded module with debug information gets its own Dwfl session
 * (libdwfl: one module reported with dwfl_report_elf at its load address),
 * so that a module can be closed on its own and everything libdw read for
 * it freed. The open sessions are bounded: at most SLUICE__DWARF_OPEN, and
 * about SLUICE__DWARF_BYTES of heap between them (estimated: inflated
 * compressed sections, line tables, our CU indexes), least recently used
 * closed first. A module without DWARF costs nothing after the first look
 * (its symbol-cache entry remembers it).
 *
 * The separate debug file is looked up by build id only
 * (/usr/lib/debug/.build-id/xx/yyyy.debug), like the ELF symbol tables in
 * prof_symbols.c. debuginfod is never asked: a report holds the symbol
 * lock, and a network fetch there would stall every other report.
 *
 * For an address, the line table gives the innermost file:line; the
 * nesting of subprograms and inlined calls around it gives the chain of
 * inlined calls, each with its caller's file:line (DW_AT_call_file and
 * DW_AT_call_line). That nesting comes from an index of each CU's
 * function-like DIEs and their pc ranges, built on the CU's first lookup
 * (one walk of its DIE tree) and kept with the session. */
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
#include <gelf.h>

/* A function-like DIE of a CU: a subprogram or an inlined call. */
typedef struct fdie {
  const char *name;   /* libdw's, valid while the session is open */
  uint32_t parent;    /* enclosing function-like DIE, or NONE */
  uint32_t call_file; /* inlined: where it was called (file index, line) */
  uint32_t call_line;
  uint32_t decl_line; /* the function's declaration line */
  int inlined;
} fdie;

/* A pc range of one of those DIEs (DWARF addresses, before the bias). */
typedef struct frange {
  uint64_t lo, hi;
  uint32_t die;
  uint32_t depth; /* nesting of function-like DIEs */
} frange;

#define NONE UINT32_MAX
#define MAX_NEST 64

/* The index of one CU, built on its first lookup by walking its DIE tree
 * once; each lookup is then a binary search and a short scan instead of
 * libdw's walk of the CU per address (dwarf_getscopes). */
typedef struct cuidx {
  struct cuidx *next;
  Dwarf_Off off; /* of the CU DIE */
  fdie *dies;
  size_t n_dies, cap_dies;
  frange *ranges;
  uint64_t *maxhi; /* maxhi[i] = max(ranges[0..i].hi) */
  size_t n_ranges, cap_ranges;
  int oom;
} cuidx;

#define CU_BUCKETS 64

struct sluice__dwarf {
  Dwfl *dwfl;
  Dwfl_Module *mod;
  uint64_t used;              /* LRU tick */
  size_t bytes;               /* estimated heap held, see account_elf() */
  sluice__dwarf **owner;      /* the symbol cache's pointer to this */
  struct sluice__dwarf *next; /* open sessions */
  cuidx *cus[CU_BUCKETS];
};

static sluice__dwarf *open_list;
static size_t n_open, open_bytes;
static uint64_t tick;

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
                          GElf_Word debuglink_crc, char **debuginfo_file_name) {
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
  int k =
      snprintf(path, sizeof path, "/usr/lib/debug/.build-id/%02x/", bits[0]);
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

static void cu_free(cuidx *x) {
  sluice__free(x->dies);
  sluice__free(x->ranges);
  sluice__free(x->maxhi);
  sluice__free(x);
}

static void dw_close(sluice__dwarf *d) {
  for (sluice__dwarf **pp = &open_list; *pp; pp = &(*pp)->next)
    if (*pp == d) {
      *pp = d->next;
      n_open--;
      break;
    }
  if (d->owner) *d->owner = NULL;
  for (int b = 0; b < CU_BUCKETS; b++)
    for (cuidx *x = d->cus[b], *next; x; x = next) {
      next = x->next;
      cu_free(x);
    }
  open_bytes -= d->bytes;
  atomic_fetch_sub(&sluice__overhead, d->bytes);
  dwfl_end(d->dwfl);
  sluice__free(d);
}

/* Close the least recently used sessions, never `keep`, until at most
 * `max_n` are open and they hold at most `max_bytes`. */
static void evict(const sluice__dwarf *keep, size_t max_n, size_t max_bytes) {
  while (n_open > max_n || open_bytes > max_bytes) {
    sluice__dwarf *old = NULL;
    for (sluice__dwarf *d = open_list; d; d = d->next)
      if (d != keep && (!old || d->used < old->used)) old = d;
    if (!old) return;
    dw_close(old);
  }
}

static void add_bytes(sluice__dwarf *d, size_t n) {
  d->bytes += n;
  open_bytes += n;
  atomic_fetch_add(&sluice__overhead, n);
}

/* What libdw holds for the DWARF's ELF file: the debug sections are read
 * through the file's mapping (page cache, not heap), except compressed ones
 * (gcc -gz, Debian's debug packages), which libelf inflates into the heap
 * whole when libdw opens them. Count those. */
static void account_elf(sluice__dwarf *d, Dwarf *dw) {
  Elf *elf = dw ? dwarf_getelf(dw) : NULL;
  size_t raw_len = 0, shstrndx;
  char *raw = elf ? elf_rawfile(elf, &raw_len) : NULL;
  if (!elf || elf_getshdrstrndx(elf, &shstrndx) != 0) return;
  for (Elf_Scn *scn = NULL; (scn = elf_nextscn(elf, scn));) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh)) continue;
    const char *name = elf_strptr(elf, shstrndx, sh.sh_name);
    if (!name || strncmp(name, ".debug_", 7)) continue;
    Elf_Data *data = elf_getdata(scn, NULL);
    if (!data || !data->d_buf) continue;
    const char *b = data->d_buf;
    if (!raw || b < raw || b >= raw + raw_len) add_bytes(d, data->d_size);
  }
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
  Dwarf *dw = NULL;
  if (!mod || dwfl_report_end(dwfl, NULL, NULL) != 0 ||
      !same_build(mod, build_id) || !(dw = dwfl_module_getdwarf(mod, &bias))) {
    dwfl_end(dwfl);
    return 0;
  }
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
  account_elf(d, dw);
  /* libdw and libdwfl keep about 1 kB per CU once an address is looked up
   * (measured: libc's 2,083 CUs, 2.2 MB); the aranges count them. */
  Dwarf_Aranges *ar;
  size_t n_ar = 0;
  if (dwarf_getaranges(dw, &ar, &n_ar) == 0) add_bytes(d, n_ar * 1100);
  *slot = d;
  return 1;
}

void sluice__dwarf_close(sluice__dwarf **slot) {
  if (*slot) dw_close(*slot);
}

/* ------------------------------------------------------------------------ */
/* CU indexes. */

/* The name of a subprogram or inlined call (through its abstract origin
 * and specification), NULL when it has none. C: the name (a linkage name
 * there is an asm label, glibc's __GI___strdup); other languages: the
 * linkage name when there is one (C++'s mangled name, what the ELF symbol
 * says and pprof demangles), else the name. */
static const char *die_name(Dwarf_Die *die, int is_c) {
  Dwarf_Attribute a;
  const char *n = is_c ? dwarf_diename(die) : NULL;
  if (!n)
    n = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_linkage_name, &a));
  if (!n)
    n = dwarf_formstring(
        dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name, &a));
  return n ? n : dwarf_diename(die);
}

static int lang_is_c(Dwarf_Die *cu) {
  switch (dwarf_srclang(cu)) {
    case DW_LANG_C:
    case DW_LANG_C89:
    case DW_LANG_C99:
    case DW_LANG_C11:
#ifdef DW_LANG_C17
    case DW_LANG_C17:
#endif
      return 1;
    default: return 0;
  }
}

static uint32_t decl_line(Dwarf_Die *die) {
  int l = 0;
  Dwarf_Die origin, *d = die;
  Dwarf_Attribute a;
  /* An inlined or out-of-line instance: the declaration is the origin's. */
  if (dwarf_attr(die, DW_AT_abstract_origin, &a) &&
      dwarf_formref_die(&a, &origin))
    d = &origin;
  if (dwarf_decl_line(d, &l) != 0 || l < 0) return 0;
  return (uint32_t)l;
}

static uint32_t udata(Dwarf_Die *die, unsigned at) {
  Dwarf_Attribute a;
  Dwarf_Word v = 0;
  if (dwarf_formudata(dwarf_attr(die, at, &a), &v) != 0 || v > UINT32_MAX)
    return 0;
  return (uint32_t)v;
}

static int add_range(cuidx *x, uint64_t lo, uint64_t hi, uint32_t die,
                     uint32_t depth) {
  if (x->n_ranges == x->cap_ranges) {
    size_t cap = x->cap_ranges ? x->cap_ranges * 2 : 64;
    frange *v = sluice__realloc(x->ranges, cap * sizeof *v);
    if (!v) return -1;
    x->ranges = v;
    x->cap_ranges = cap;
  }
  x->ranges[x->n_ranges++] = (frange){lo, hi, die, depth};
  return 0;
}

/* Walk the children of a DIE: function-like DIEs with code are recorded
 * (with their ranges) and descended into; lexical blocks and namespaces
 * are descended into; everything else (types, variables, declarations,
 * abstract instances) is skipped with its subtree. */
static void walk(cuidx *x, Dwarf_Die *first, uint32_t parent, uint32_t depth,
                 int is_c) {
  if (depth >= MAX_NEST) return;
  Dwarf_Die d = *first;
  do {
    int tag = dwarf_tag(&d);
    uint32_t inner = parent, inner_depth = depth;
    if (tag == DW_TAG_subprogram || tag == DW_TAG_inlined_subroutine ||
        tag == DW_TAG_entry_point) {
      Dwarf_Addr base, lo, hi;
      ptrdiff_t off = 0;
      size_t first_range = x->n_ranges;
      uint32_t id = (uint32_t)x->n_dies;
      while ((off = dwarf_ranges(&d, off, &base, &lo, &hi)) > 0)
        if (hi > lo && add_range(x, lo, hi, id, depth + 1)) x->oom = 1;
      if (x->n_ranges == first_range) continue; /* no code: skip */
      if (x->n_dies == x->cap_dies) {
        size_t cap = x->cap_dies ? x->cap_dies * 2 : 32;
        fdie *v = sluice__realloc(x->dies, cap * sizeof *v);
        if (!v) {
          x->oom = 1;
          x->n_ranges = first_range;
          return;
        }
        x->dies = v;
        x->cap_dies = cap;
      }
      int inl = tag == DW_TAG_inlined_subroutine;
      x->dies[x->n_dies++] = (fdie){
          die_name(&d, is_c),
          parent,
          inl ? udata(&d, DW_AT_call_file) : 0,
          inl ? udata(&d, DW_AT_call_line) : 0,
          decl_line(&d),
          inl,
      };
      inner = id;
      inner_depth = depth + 1;
    } else if (tag != DW_TAG_lexical_block && tag != DW_TAG_namespace &&
               tag != DW_TAG_try_block && tag != DW_TAG_catch_block) {
      continue;
    }
    Dwarf_Die child;
    if (dwarf_haschildren(&d) > 0 && dwarf_child(&d, &child) == 0)
      walk(x, &child, inner, inner_depth, is_c);
  } while (!x->oom && dwarf_siblingof(&d, &d) == 0);
}

static int range_cmp(const void *a, const void *b) {
  const frange *x = a, *y = b;
  if (x->lo != y->lo) return x->lo < y->lo ? -1 : 1;
  return x->depth < y->depth ? -1 : x->depth > y->depth;
}

/* The index of the CU whose DIE is `cu`, built on first use; NULL when
 * out of memory. */
static cuidx *cu_index(sluice__dwarf *d, Dwarf_Die *cu) {
  Dwarf_Off off = dwarf_dieoffset(cu);
  unsigned b = (unsigned)((off * 0x9E3779B97F4A7C15ull) >> 58);
  for (cuidx *x = d->cus[b]; x; x = x->next)
    if (x->off == off) return x;
  cuidx *x = sluice__calloc(1, sizeof *x);
  if (!x) return NULL;
  x->off = off;
  Dwarf_Die child;
  if (dwarf_child(cu, &child) == 0) walk(x, &child, NONE, 0, lang_is_c(cu));
  if (!x->oom && x->n_ranges) {
    qsort(x->ranges, x->n_ranges, sizeof *x->ranges, range_cmp);
    x->maxhi = sluice__malloc(x->n_ranges * sizeof *x->maxhi);
    if (!x->maxhi) x->oom = 1;
    for (size_t i = 0; x->maxhi && i < x->n_ranges; i++)
      x->maxhi[i] = i && x->maxhi[i - 1] > x->ranges[i].hi ? x->maxhi[i - 1]
                                                           : x->ranges[i].hi;
  }
  if (x->oom) {
    cu_free(x);
    return NULL;
  }
  /* The index, and libdw's line table of the CU (about 64 B a row: the
   * rows and their sorted copy). */
  size_t rows = 0;
  Dwarf_Lines *lines;
  if (dwarf_getsrclines(cu, &lines, &rows) != 0) rows = 0;
  add_bytes(d, sizeof *x + x->cap_dies * sizeof(fdie) +
                   x->cap_ranges * sizeof(frange) +
                   x->n_ranges * sizeof(uint64_t) + rows * 64);
  x->next = d->cus[b];
  d->cus[b] = x;
  return x;
}

/* The innermost function-like DIE whose ranges hold `pc`, or NONE. */
static uint32_t innermost(const cuidx *x, uint64_t pc) {
  size_t lo = 0, hi = x->n_ranges;
  while (lo < hi) { /* first range with lo > pc */
    size_t mid = (lo + hi) / 2;
    if (x->ranges[mid].lo <= pc) lo = mid + 1;
    else hi = mid;
  }
  uint32_t best = NONE, best_depth = 0;
  for (size_t i = lo; i-- > 0 && x->maxhi[i] > pc;) {
    const frange *r = &x->ranges[i];
    if (pc < r->hi && (best == NONE || r->depth > best_depth)) {
      best = r->die;
      best_depth = r->depth;
    }
  }
  return best;
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

  int n = 0;
  Dwfl_Line *ln = dwfl_module_getsrc(d->mod, pc);
  int line = 0;
  const char *file = ln ? dwfl_lineinfo(ln, NULL, &line, NULL, NULL, NULL)
                        : NULL;
  Dwarf_Addr bias = 0;
  Dwarf_Die *cu = dwfl_module_addrdie(d->mod, pc, &bias);
  cuidx *x = cu ? cu_index(d, cu) : NULL;
  uint32_t at = x ? innermost(x, pc - bias) : NONE;
  Dwarf_Files *files = NULL;
  size_t n_files = 0;
  if (at != NONE && dwarf_getsrcfiles(cu, &files, &n_files) != 0) files = NULL;
  int outer = 0; /* reached the function that holds the code */
  for (uint32_t k = at; k != NONE; k = x->dies[k].parent) {
    const fdie *f = &x->dies[k];
    /* Past max - 1 inlined calls, the middle ones are dropped: the last
     * slot is the function that holds the code. */
    if (!f->inlined || n < max - 1) {
      out[n].func = f->name;
      out[n].file = file;
      out[n].line = line > 0 ? (uint32_t)line : 0;
      out[n].start_line = f->decl_line;
      out[n].inlined = f->inlined;
      n++;
    }
    if (!f->inlined) {
      outer = 1;
      break;
    }
    /* The caller's position is the call site of this inlined instance. */
    file = files && f->call_file < n_files
               ? dwarf_filesrc(files, f->call_file, NULL, NULL)
               : NULL;
    line = (int)f->call_line;
  }
  /* A line but no function DIE (assembly), or inlined calls whose caller
   * has no DIE: the caller is named by its ELF symbol. */
  if (!outer && (n || file) && n < max) {
    out[n].func = NULL;
    out[n].file = file;
    out[n].line = line > 0 ? (uint32_t)line : 0;
    out[n].start_line = 0;
    out[n].inlined = 0;
    n++;
  }
  /* Keep within the bounds; this session stays (its strings are in use
   * until the caller copies them). */
  evict(d, SLUICE__DWARF_OPEN, SLUICE__DWARF_BYTES);
  return n;
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

#endif
