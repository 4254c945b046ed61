#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Install a built tree into a temporary prefix and build small programs
# against it, as a user would: with find_package(sluice) and with pkg-config
# (libsluice, libsluice_prof, libsluice_debug), then run them. Also
# configures sluice as a subproject and builds a program against it.
#   check_install.sh BUILD_DIR SOURCE_DIR C_COMPILER VERSION WITH_PROFILING
set -euo pipefail
build=$1 src=$2 cc=$3 version=$4 with_prof=$5
here=$src/tests/install
tmp=$(mktemp -d /tmp/sluice-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
step() { echo "--- $*"; }

step "cmake --install into $prefix"
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log"
libdir=$(dirname "$(find "$prefix" -name pkgconfig -type d | head -n 1)")
test -f "$prefix/include/sluice/version.h"

if [ "$with_prof" = 1 ]; then
  step "layering: libsluice_prof stands alone (docs/architecture.md)"
  needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
  prof_needs=$(needed "$libdir/libsluice_prof.so")
  if echo "$prof_needs" | grep -E '^lib(sluice|rabbitmq|event)'; then
    echo "libsluice_prof.so must not need libsluice, rabbitmq-c or libevent"
    exit 1
  fi
  if needed "$libdir/libsluice.so" | grep -E '^lib(sluice_prof|jansson)'; then
    echo "libsluice.so must not need the profiler or jansson"; exit 1
  fi
  # profiling.h must not bring in the consumer's API: a program may name
  # its own sluice_consumer.
  printf '#include <sluice/profiling.h>\ntypedef int sluice_consumer;\n' |
    "$cc" -std=c11 -fsyntax-only -Werror -I"$prefix/include" -x c -
fi

step "pkg-config"
export PKG_CONFIG_PATH=$libdir/pkgconfig
pcs=(sluice)
[ "$with_prof" = 1 ] && pcs+=(sluice-prof sluice-debug)
for pc in "${pcs[@]}"; do
  got=$(pkg-config --modversion "$pc")
  [ "$got" = "$version" ] || { echo "$pc.pc: version $got, want $version"; exit 1; }
done
build_pc() { # app pc
  # shellcheck disable=SC2046 # word splitting of pkg-config's flags
  "$cc" -std=c11 -Wall -Wextra -Werror -DAPP_EXPECT_VERSION="\"$version\"" \
    "$here/$1.c" -o "$tmp/pc_$1" $(pkg-config --cflags --libs "$2")
  LD_LIBRARY_PATH=$libdir "$tmp/pc_$1"
}
build_pc app_consumer sluice
if [ "$with_prof" = 1 ]; then
  build_pc app_prof sluice-prof
  build_pc app_debug sluice-debug
fi
unset PKG_CONFIG_PATH

step "find_package(sluice), private dependencies not findable"
cmake -S "$here/consumer" -B "$tmp/cmake-consumer" \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_PREFIX_PATH="$prefix" \
  -DSLUICE_EXPECT_VERSION="$version" -DWITH_PROFILING="$with_prof" \
  -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_Threads=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_ZLIB=ON --no-warn-unused-cli >"$tmp/consumer-configure.log" ||
  { cat "$tmp/consumer-configure.log"; exit 1; }
cmake --build "$tmp/cmake-consumer" >"$tmp/consumer-build.log" ||
  { cat "$tmp/consumer-build.log"; exit 1; }
"$tmp/cmake-consumer/app_consumer"
if [ "$with_prof" = 1 ]; then
  "$tmp/cmake-consumer/app_prof"
  "$tmp/cmake-consumer/app_debug"
fi

step "add_subdirectory(sluice): no build type forced, sluice::sluice links"
cmake -S "$here/subproject" -B "$tmp/subproject" -DCMAKE_C_COMPILER="$cc" \
  -DSLUICE_SOURCE_DIR="$src" -DSLUICE_EXPECT_VERSION="$version" \
  -DSLUICE_BUILD_PROFILING=OFF >"$tmp/sub-configure.log" ||
  { cat "$tmp/sub-configure.log"; exit 1; }
if grep -q '^CMAKE_BUILD_TYPE:STRING=.' "$tmp/subproject/CMakeCache.txt"; then
  echo "subproject: CMAKE_BUILD_TYPE was set in the cache"; exit 1
fi
cmake --build "$tmp/subproject" --target app_consumer -j2 \
  >"$tmp/sub-build.log" || { cat "$tmp/sub-build.log"; exit 1; }
"$tmp/subproject/app_consumer"
echo "install check: ok"
