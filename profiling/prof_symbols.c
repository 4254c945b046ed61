/* SPDX-License-Identifier: MIT */
/* Names for addresses, resolved only when a report is written.
 *
 * dladdr() sees only exported symbols, and unw_get_proc_name() reads the
 * ELF file on every call (tens of microseconds, and it allocates), so the
 * profiler reads each loaded module's ELF symbol table itself, once: the
 * full .symtab when present (static functions included), else the separate
 * debug file found by build id, else .dynsym. The functions are kept sorted
 * per module and looked up by binary search. The module list comes from
 * dl_iterate_phdr() at each report; modules and their tables are cached
 * across reports.
 *
 * Source lines and inlined calls come from the module's DWARF
 * (prof_lines.c) when it has some. Each view (one report) resolves an
 * address once: its frames are kept in the view, with the strings copied
 * out of libdw, until sluice__sym_close(). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "prof_internal.h"

typedef struct func {
  uintptr_t lo, hi; /* module-relative (st_value) */
  uint32_t name;    /* offset in strs */
} func;

#define MAX_SEGS 4
#define MAX_CACHED 256 /* modules kept once unloaded */

typedef struct module {
  struct module *next;
  char *path;
  uintptr_t base; /* dlpi_addr */
  int nseg;
  uintptr_t seg_lo[MAX_SEGS], seg_hi[MAX_SEGS], seg_off[MAX_SEGS];
  char build_id[84];
  int loaded;
  func *funcs;
  size_t n_funcs;
  char *strs;
  size_t strs_len;
  int seen;
  sluice__dwarf *dw; /* open DWARF session, or NULL */
  int dw_state;      /* 0 not tried, 1 has DWARF, -1 none */
} module;

/* An address resolved in a view: frames[first .. first + n). n == 0: an
 * empty slot. */
typedef struct pc_ent {
  uintptr_t pc;
  uint32_t first;
  int16_t n, map;
} pc_ent;

/* Strings copied into a view, in chunks that never move. */
typedef struct chunk {
  struct chunk *next;
  size_t used, cap;
  char data[];
} chunk;

struct sluice__symtab {
  module **mods; /* seen this time */
  size_t n_mods;
  sluice__mapping *maps;
  size_t n_maps;
  module **map_mod;  /* module of each mapping */
  sluice__buf extra; /* names made up for unknown addresses */
  char **extra_names;
  size_t n_extra, cap_extra;
  /* Frames of the addresses resolved so far (open addressing). */
  pc_ent *pcs;
  size_t n_pcs, cap_pcs;
  sluice__frame *frames;
  size_t n_frames, cap_frames;
  /* Interned copies of libdw's strings. */
  chunk *chunks;
  const char **istr;
  size_t n_istr, cap_istr;
};

static pthread_mutex_t sym_mu = PTHREAD_MUTEX_INITIALIZER;
static module *mods;

void sluice__sym_lock_all(void) {
  pthread_mutex_lock(&sym_mu);
}

void sluice__sym_unlock_all(void) {
  pthread_mutex_unlock(&sym_mu);
}

void sluice__clean_name(char *name) {
  /* gcc clones (".constprop.0", ".isra.0", ".part.0", ".cold") and symbol
   * versions ("@@GLIBC_2.34"): a C or mangled C++ identifier has neither
   * '.' nor '@', so cut at the first one. */
  if (!name[0]) return;
  size_t n = strcspn(name + 1, ".@") + 1;
  name[n] = 0;
}

/* ------------------------------------------------------------------------ */
/* ELF reading. */

typedef struct elf_view {
  const unsigned char *p;
  size_t size;
} elf_view;

static int elf_map(const char *path, elf_view *v) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat st;
  if (fstat(fd, &st) || st.st_size < (off_t)sizeof(ElfW(Ehdr))) {
    close(fd);
    return -1;
  }
  void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) return -1;
  v->p = m;
  v->size = (size_t)st.st_size;
  const ElfW(Ehdr) *eh = m;
  if (memcmp(eh->e_ident, ELFMAG, SELFMAG) ||
      eh->e_ident[EI_CLASS] !=
          (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32) ||
      eh->e_shoff == 0 || eh->e_shentsize != sizeof(ElfW(Shdr)) ||
      eh->e_shoff + (size_t)eh->e_shnum * sizeof(ElfW(Shdr)) > v->size) {
    munmap(m, v->size);
    return -1;
  }
  return 0;
}

static const ElfW(Shdr) *find_section(const elf_view *v, ElfW(Word) type) {
  const ElfW(Ehdr) *eh = (const void *)v->p;
  const ElfW(Shdr) *sh = (const void *)(v->p + eh->e_shoff);
  for (int i = 0; i < eh->e_shnum; i++)
    if (sh[i].sh_type == type && sh[i].sh_size &&
        sh[i].sh_offset + sh[i].sh_size <= v->size)
      return &sh[i];
  return NULL;
}

static int func_cmp(const void *x, const void *y) {
  const func *a = x, *b = y;
  return a->lo < b->lo ? -1 : a->lo > b->lo ? 1 : 0;
}

/* Read the FUNC symbols of section `symsec` into m. */
static int load_syms(module *m, const elf_view *v, const ElfW(Shdr) *symsec) {
  const ElfW(Ehdr) *eh = (const void *)v->p;
  const ElfW(Shdr) *sh = (const void *)(v->p + eh->e_shoff);
  if (symsec->sh_link >= eh->e_shnum) return -1;
  const ElfW(Shdr) *strsec = &sh[symsec->sh_link];
  if (strsec->sh_offset + strsec->sh_size > v->size) return -1;
  const ElfW(Sym) *syms = (const void *)(v->p + symsec->sh_offset);
  size_t nsym = symsec->sh_size / sizeof(ElfW(Sym));
  const char *strtab = (const char *)v->p + strsec->sh_offset;
  size_t strsz = strsec->sh_size;

  size_t nf = 0, bytes = 0;
  for (size_t i = 0; i < nsym; i++) {
    unsigned t = ELF64_ST_TYPE(syms[i].st_info);
    if ((t != STT_FUNC && t != STT_GNU_IFUNC) || !syms[i].st_value ||
        syms[i].st_shndx == SHN_UNDEF || syms[i].st_name >= strsz)
      continue;
    nf++;
    bytes += strnlen(strtab + syms[i].st_name, strsz - syms[i].st_name) + 1;
  }
  if (!nf) return -1;
  func *f = sluice__malloc(nf * sizeof(func));
  char *s = sluice__malloc(bytes);
  if (!f || !s) {
    sluice__free(f);
    sluice__free(s);
    return -1;
  }
  size_t k = 0, off = 0;
  for (size_t i = 0; i < nsym && k < nf; i++) {
    unsigned t = ELF64_ST_TYPE(syms[i].st_info);
    if ((t != STT_FUNC && t != STT_GNU_IFUNC) || !syms[i].st_value ||
        syms[i].st_shndx == SHN_UNDEF || syms[i].st_name >= strsz)
      continue;
    const char *nm = strtab + syms[i].st_name;
    size_t len = strnlen(nm, strsz - syms[i].st_name);
    memcpy(s + off, nm, len);
    s[off + len] = 0;
    sluice__clean_name(s + off);
    f[k].lo = syms[i].st_value;
    f[k].hi = syms[i].st_value + syms[i].st_size;
    f[k].name = (uint32_t)off;
    off += len + 1;
    k++;
  }
  qsort(f, k, sizeof(func), func_cmp);
  /* Symbols without a size run to the next symbol. */
  for (size_t i = 0; i < k; i++)
    if (f[i].hi <= f[i].lo)
      f[i].hi = i + 1 < k && f[i + 1].lo > f[i].lo ? f[i + 1].lo : f[i].lo + 1;
  m->funcs = f;
  m->n_funcs = k;
  m->strs = s;
  m->strs_len = bytes;
  atomic_fetch_add(&sluice__overhead, k * sizeof(func) + bytes);
  return 0;
}

static void load_module(module *m) {
  m->loaded = 1;
  elf_view v;
  if (elf_map(m->path, &v) == 0) {
    const ElfW(Shdr) *sym = find_section(&v, SHT_SYMTAB);
    int ok = sym && load_syms(m, &v, sym) == 0;
    if (!ok && m->build_id[0] && strlen(m->build_id) > 2) {
      char dbg[256];
      snprintf(dbg, sizeof dbg, "/usr/lib/debug/.build-id/%.2s/%s.debug",
               m->build_id, m->build_id + 2);
      elf_view d;
      if (elf_map(dbg, &d) == 0) {
        const ElfW(Shdr) *ds = find_section(&d, SHT_SYMTAB);
        ok = ds && load_syms(m, &d, ds) == 0;
        munmap((void *)(uintptr_t)d.p, d.size);
      }
    }
    if (!ok) {
      const ElfW(Shdr) *dyn = find_section(&v, SHT_DYNSYM);
      if (dyn) load_syms(m, &v, dyn);
    }
    munmap((void *)(uintptr_t)v.p, v.size);
  }
}

/* ------------------------------------------------------------------------ */
/* Modules. */

static void read_build_id(module *m, const struct dl_phdr_info *info) {
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_NOTE) continue;
    const unsigned char *p =
        (const unsigned char *)(info->dlpi_addr + ph->p_vaddr);
    const unsigned char *end = p + ph->p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      const ElfW(Nhdr) *nh = (const void *)p;
      const unsigned char *name = p + sizeof(ElfW(Nhdr));
      const unsigned char *desc = name + ((nh->n_namesz + 3) & ~3u);
      const unsigned char *next = desc + ((nh->n_descsz + 3) & ~3u);
      if (next > end) break;
      if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 &&
          !memcmp(name, "GNU", 4) && nh->n_descsz <= 40) {
        for (ElfW(Word) j = 0; j < nh->n_descsz; j++)
          snprintf(m->build_id + 2 * j, 3, "%02x", desc[j]);
        return;
      }
      p = next;
    }
  }
}

static char exe_path[4096];

static int phdr_cb(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  (void)data;
  const char *path = info->dlpi_name;
  if (!path || !*path) {
    if (!exe_path[0]) {
      ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path - 1);
      exe_path[n > 0 ? n : 0] = 0;
    }
    path = exe_path;
  }
  module *m;
  for (m = mods; m; m = m->next)
    if (m->base == info->dlpi_addr && !strcmp(m->path, path)) break;
  if (!m) {
    m = sluice__calloc(1, sizeof *m);
    if (!m) return 0;
    m->path = sluice__strdup(path);
    if (!m->path) {
      sluice__free(m);
      return 0;
    }
    m->base = info->dlpi_addr;
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < info->dlpi_phnum && m->nseg < MAX_SEGS; i++) {
      const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
      if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
      uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
      m->seg_lo[m->nseg] = lo & ~(uintptr_t)(ps - 1);
      m->seg_hi[m->nseg] = (lo + ph->p_memsz + ps - 1) & ~(uintptr_t)(ps - 1);
      m->seg_off[m->nseg] = ph->p_offset & ~(uintptr_t)(ps - 1);
      m->nseg++;
    }
    read_build_id(m, info);
    m->next = mods;
    mods = m;
  }
  m->seen = 1;
  return 0;
}

static int mod_cmp(const void *x, const void *y) {
  const module *a = *(module *const *)x, *b = *(module *const *)y;
  uintptr_t la = a->nseg ? a->seg_lo[0] : 0, lb = b->nseg ? b->seg_lo[0] : 0;
  return la < lb ? -1 : la > lb ? 1 : 0;
}

sluice__symtab *sluice__sym_open(void) {
  sluice__enter_guard();
  pthread_mutex_lock(&sym_mu);
  for (module *m = mods; m; m = m->next) m->seen = 0;
  dl_iterate_phdr(phdr_cb, NULL);
  /* Bounded: a program that keeps loading and unloading libraries does not
   * make the cache grow; forget what is not loaded any more. */
  size_t cached = 0;
  for (module *m = mods; m; m = m->next) cached++;
  if (cached > MAX_CACHED) {
    for (module **pp = &mods; *pp;) {
      module *m = *pp;
      if (m->seen) {
        pp = &m->next;
        continue;
      }
      *pp = m->next;
      sluice__dwarf_close(&m->dw);
      atomic_fetch_sub(&sluice__overhead,
                       m->n_funcs * sizeof(func) + (m->strs ? m->strs_len : 0));
      sluice__free(m->funcs);
      sluice__free(m->strs);
      sluice__free(m->path);
      sluice__free(m);
    }
  }
  sluice__symtab *st = sluice__calloc(1, sizeof *st);
  size_t n = 0;
  for (module *m = mods; m; m = m->next)
    if (m->seen && m->nseg) n++;
  if (st) {
    st->mods = sluice__calloc(n ? n : 1, sizeof(module *));
    st->maps = sluice__calloc(n ? n * MAX_SEGS : 1, sizeof(sluice__mapping));
    st->map_mod = sluice__calloc(n ? n * MAX_SEGS : 1, sizeof(module *));
    if (!st->mods || !st->maps || !st->map_mod) {
      sluice__free(st->mods);
      sluice__free(st->maps);
      sluice__free(st->map_mod);
      sluice__free(st);
      st = NULL;
    }
  }
  if (st) {
    for (module *m = mods; m; m = m->next)
      if (m->seen && m->nseg) st->mods[st->n_mods++] = m;
    qsort(st->mods, st->n_mods, sizeof(module *), mod_cmp);
    for (size_t i = 0; i < st->n_mods; i++) {
      module *m = st->mods[i];
      for (int j = 0; j < m->nseg; j++) {
        st->map_mod[st->n_maps] = m;
        sluice__mapping *mp = &st->maps[st->n_maps++];
        mp->start = m->seg_lo[j];
        mp->limit = m->seg_hi[j];
        mp->offset = m->seg_off[j];
        mp->path = m->path;
        mp->build_id = m->build_id;
      }
    }
  }
  if (!st) pthread_mutex_unlock(&sym_mu);
  sluice__leave_guard();
  return st;
}

void sluice__sym_close(sluice__symtab *st) {
  if (!st) return;
  sluice__enter_guard();
  for (size_t i = 0; i < st->n_extra; i++) sluice__free(st->extra_names[i]);
  sluice__free(st->extra_names);
  sluice__buf_free(&st->extra);
  sluice__free(st->mods);
  sluice__free(st->maps);
  sluice__free(st->map_mod);
  sluice__free(st->pcs);
  sluice__free(st->frames);
  sluice__free(st->istr);
  for (chunk *c = st->chunks, *next; c; c = next) {
    next = c->next;
    sluice__free(c);
  }
  sluice__free(st);
  pthread_mutex_unlock(&sym_mu);
  sluice__leave_guard();
}

size_t sluice__sym_mappings(sluice__symtab *st, const sluice__mapping **out) {
  *out = st ? st->maps : NULL;
  return st ? st->n_maps : 0;
}

static const char *keep_name(sluice__symtab *st, const char *s) {
  if (st->n_extra == st->cap_extra) {
    size_t cap = st->cap_extra ? st->cap_extra * 2 : 16;
    char **v = sluice__realloc(st->extra_names, cap * sizeof(char *));
    if (!v) return "?";
    st->extra_names = v;
    st->cap_extra = cap;
  }
  char *d = sluice__strdup(s);
  if (!d) return "?";
  st->extra_names[st->n_extra++] = d;
  return d;
}

/* The module holding pc and its mapping index, or NULL. */
static module *find_module(sluice__symtab *st, uintptr_t pc, int *mapping) {
  int mi = 0;
  for (size_t i = 0; i < st->n_mods; i++) {
    module *m = st->mods[i];
    for (int j = 0; j < m->nseg; j++, mi++) {
      if (pc < m->seg_lo[j] || pc >= m->seg_hi[j]) continue;
      if (mapping) *mapping = mi;
      return m;
    }
  }
  return NULL;
}

/* The ELF symbol's name for pc in m (NULL m: none), else a made-up one
 * ("module+0xoffset"; *found is then 0). */
static const char *elf_name(sluice__symtab *st, module *m, uintptr_t pc,
                            int *found) {
  *found = 0;
  char buf[320];
  if (m) {
    if (!m->loaded) {
      sluice__enter_guard();
      load_module(m);
      sluice__leave_guard();
    }
    uintptr_t rel = pc - m->base;
    size_t lo = 0, hi = m->n_funcs;
    while (lo < hi) { /* last func with lo <= rel */
      size_t mid = (lo + hi) / 2;
      if (m->funcs[mid].lo <= rel) lo = mid + 1;
      else hi = mid;
    }
    if (lo && rel < m->funcs[lo - 1].hi) {
      *found = 1;
      return m->strs + m->funcs[lo - 1].name;
    }
    const char *base = strrchr(m->path, '/');
    snprintf(buf, sizeof buf, "%s+0x%lx", base ? base + 1 : m->path,
             (unsigned long)rel);
  } else {
    snprintf(buf, sizeof buf, "0x%lx", (unsigned long)pc);
  }
  sluice__enter_guard();
  const char *r = keep_name(st, buf);
  sluice__leave_guard();
  return r;
}

/* ------------------------------------------------------------------------ */
/* Frames with source lines, resolved once per view. */

int sluice__lines_enabled(void) {
#if SLUICE_PROF_HAVE_LIBDW
  static int lines_on = -1;
  if (lines_on < 0) {
    const char *e = getenv("SLUICE_PROF_LINES");
    lines_on = !(e && e[0] == '0' && !e[1]);
  }
  return lines_on;
#else
  return 0;
#endif
}

static uint64_t mix(uint64_t h) {
  h *= 0x9E3779B97F4A7C15ull;
  return h ^ (h >> 29);
}

static uint64_t str_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* A copy of s that lives as long as the view; NULL when out of memory. */
static const char *intern(sluice__symtab *st, const char *s) {
  if (!s) return NULL;
  if ((st->n_istr + 1) * 2 > st->cap_istr) {
    size_t cap = st->cap_istr ? st->cap_istr * 2 : 64;
    const char **v = sluice__calloc(cap, sizeof(char *));
    if (!v) return NULL;
    for (size_t i = 0; i < st->cap_istr; i++) {
      if (!st->istr[i]) continue;
      size_t j = str_hash(st->istr[i]) & (cap - 1);
      while (v[j]) j = (j + 1) & (cap - 1);
      v[j] = st->istr[i];
    }
    sluice__free(st->istr);
    st->istr = v;
    st->cap_istr = cap;
  }
  size_t j = str_hash(s) & (st->cap_istr - 1);
  while (st->istr[j]) {
    if (!strcmp(st->istr[j], s)) return st->istr[j];
    j = (j + 1) & (st->cap_istr - 1);
  }
  size_t len = strlen(s) + 1;
  chunk *c = st->chunks;
  if (!c || c->cap - c->used < len) {
    size_t cap = len > 16384 ? len : 16384;
    c = sluice__malloc(sizeof(chunk) + cap);
    if (!c) return NULL;
    c->used = 0;
    c->cap = cap;
    c->next = st->chunks;
    st->chunks = c;
  }
  char *d = c->data + c->used;
  memcpy(d, s, len);
  c->used += len;
  st->istr[j] = d;
  st->n_istr++;
  return d;
}

/* Keep frames f[0..n) of pc in the view's cache (best effort). */
static void cache_put(sluice__symtab *st, uintptr_t pc, int map,
                      const sluice__frame *f, int n) {
  if ((st->n_pcs + 1) * 2 > st->cap_pcs) {
    size_t cap = st->cap_pcs ? st->cap_pcs * 2 : 256;
    pc_ent *v = sluice__calloc(cap, sizeof *v);
    if (!v) return;
    for (size_t i = 0; i < st->cap_pcs; i++) {
      if (!st->pcs[i].n) continue;
      size_t j = mix(st->pcs[i].pc) & (cap - 1);
      while (v[j].n) j = (j + 1) & (cap - 1);
      v[j] = st->pcs[i];
    }
    sluice__free(st->pcs);
    st->pcs = v;
    st->cap_pcs = cap;
  }
  if (st->n_frames + (size_t)n > st->cap_frames) {
    size_t cap = st->cap_frames ? st->cap_frames * 2 : 256;
    while (cap < st->n_frames + (size_t)n) cap *= 2;
    sluice__frame *v = sluice__realloc(st->frames, cap * sizeof *v);
    if (!v) return;
    st->frames = v;
    st->cap_frames = cap;
  }
  size_t j = mix(pc) & (st->cap_pcs - 1);
  while (st->pcs[j].n) j = (j + 1) & (st->cap_pcs - 1);
  st->pcs[j] = (pc_ent){pc, (uint32_t)st->n_frames, (int16_t)n, (int16_t)map};
  memcpy(st->frames + st->n_frames, f, (size_t)n * sizeof *f);
  st->n_frames += (size_t)n;
  st->n_pcs++;
}

/* Copy n frames to out[max]: the innermost ones and the outermost. */
static int copy_out(sluice__frame *out, int max, const sluice__frame *f,
                    int n) {
  if (n <= max) {
    memcpy(out, f, (size_t)n * sizeof *f);
    return n;
  }
  memcpy(out, f, (size_t)(max - 1) * sizeof *f);
  out[max - 1] = f[n - 1];
  return max;
}

int sluice__sym_frames(sluice__symtab *st, uintptr_t pc, sluice__frame *out,
                       int max, int *mapping) {
  if (mapping) *mapping = -1;
  if (max < 1) return 0;
  if (!st) {
    out[0] = (sluice__frame){"?", NULL, 0, 0, 0};
    return 1;
  }
  if (st->cap_pcs) {
    size_t j = mix(pc) & (st->cap_pcs - 1);
    while (st->pcs[j].n) {
      if (st->pcs[j].pc == pc) {
        if (mapping) *mapping = st->pcs[j].map;
        return copy_out(out, max, st->frames + st->pcs[j].first, st->pcs[j].n);
      }
      j = (j + 1) & (st->cap_pcs - 1);
    }
  }
  int map = -1;
  module *m = find_module(st, pc, &map);
  int found;
  const char *name = elf_name(st, m, pc, &found);
  sluice__frame f[SLUICE__MAX_INLINE];
  int n = 0;
  if (m && m->dw_state >= 0 && sluice__lines_enabled()) {
    sluice__enter_guard();
    n = sluice__dwarf_frames(&m->dw, &m->dw_state, m->path, m->base,
                             m->build_id, pc, f, SLUICE__MAX_INLINE);
    /* libdw's strings live until its session closes: copy them. */
    for (int i = 0; i < n; i++) {
      f[i].func = intern(st, f[i].func);
      f[i].file = intern(st, f[i].file);
      if (!f[i].file) f[i].line = 0;
    }
    sluice__leave_guard();
  }
  /* The function that holds the code goes by its ELF symbol's name, as
   * without DWARF (and as google-pprof names it): DWARF may know it by an
   * internal alias (glibc's __GI___strdup for strdup). */
  if (n == 0) f[n++] = (sluice__frame){name, NULL, 0, 0, 0};
  else if (!f[n - 1].func || (found && !f[n - 1].inlined)) f[n - 1].func = name;
  for (int i = 0; i < n; i++)
    if (!f[i].func) f[i].func = "?";
  sluice__enter_guard();
  cache_put(st, pc, map, f, n);
  sluice__leave_guard();
  if (mapping) *mapping = map;
  return copy_out(out, max, f, n);
}

int sluice__sym_mapping_has_lines(sluice__symtab *st, size_t i) {
  return st && i < st->n_maps && st->map_mod[i]->dw_state > 0;
}
