#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The C sources in the house style (.clang-format, with clang-format 14:
# other versions break lines differently).
#   scripts/format.sh                 reformat every tracked .c and .h file
#   scripts/format.sh --check         list the files that differ; fail if any
#   scripts/format.sh [--check] FILE...   only these files
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
if [ "${1:-}" = --check ]; then
  check=1
  shift
fi

cf=${CLANG_FORMAT:-}
if [ -z "$cf" ]; then
  for c in clang-format-14 clang-format; do
    if command -v "$c" >/dev/null; then cf=$c; break; fi
  done
fi
if [ -z "$cf" ]; then
  echo "format.sh: clang-format not found (scripts/setup.sh installs" \
       "clang-format-14)" >&2
  exit 2
fi
ver=$("$cf" --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
if [ "$ver" != 14 ]; then
  echo "format.sh: warning: $cf is version $ver; the style is defined" \
       "with clang-format 14" >&2
fi

if [ $# -gt 0 ]; then
  files=("$@")
elif git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.c' '*.h')
else
  mapfile -t files < <(find . -path './build*' -prune -o \
                         \( -name '*.c' -o -name '*.h' \) -print | sort)
fi

if [ "$check" = 0 ]; then
  "$cf" -i --style=file "${files[@]}"
  exit 0
fi

bad=0
for f in "${files[@]}"; do
  if ! "$cf" --style=file "$f" | cmp -s "$f" -; then
    echo "$f"
    bad=$((bad + 1))
  fi
done
if [ "$bad" -gt 0 ]; then
  echo "format.sh: $bad of ${#files[@]} files differ from .clang-format;" \
       "run scripts/format.sh (or show the changes with" \
       "'$cf --style=file FILE | diff FILE -')" >&2
  exit 1
fi
echo "format.sh: ${#files[@]} files match .clang-format"
