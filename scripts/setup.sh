#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Install the Debian 12 packages sluice needs to build, test and benchmark.
# Idempotent: installs only what is missing. Run as root (or with sudo).
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git ca-certificates
  librabbitmq-dev libevent-dev libssl-dev openssl libunwind-dev libcmocka-dev
  zlib1g-dev
  libdw-dev
  libjansson-dev
  rabbitmq-server amqp-tools
  golang-go google-perftools valgrind heaptrack gnuplot-nox
  procps iproute2 curl
  prometheus
  clang libclang-rt-14-dev clang-format-14
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PKGS[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# rabbitmq-server must not be started by the package's init scripts in
# containers without systemd; scripts/broker.sh starts it.
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
