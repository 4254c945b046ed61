#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# docs/prometheus/sluice-rules.yml: `promtool check rules` (syntax, PromQL,
# templates) and `promtool test rules` (the alert fires for the leaking
# queue only, the recording rule's bytes per message). Skips (77) without
# promtool, fails instead when SLUICE_REQUIRE_BROKER=1 (CI).
set -euo pipefail
src=${1:?usage: check_rules.sh SOURCE_DIR}
if ! command -v promtool >/dev/null; then
  if [ "${SLUICE_REQUIRE_BROKER:-0}" = 1 ]; then
    echo "check_rules: FAIL: promtool not found and SLUICE_REQUIRE_BROKER=1" \
         "(scripts/setup.sh installs prometheus)" >&2
    exit 1
  fi
  echo "check_rules: SKIPPED: promtool not found (apt-get install prometheus)" >&2
  exit 77
fi
promtool check rules "$src/docs/prometheus/sluice-rules.yml"
cd "$src/tests/debug/prometheus"
promtool test rules sluice-rules.test.yml
