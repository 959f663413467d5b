#!/usr/bin/env bash
# Debian chromium for the end-to-end page test (Playwright drives it through executable_path).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; browser tests will be skipped" >&2
  else
    echo "warning: not root, cannot apt-get install chromium; browser tests will be skipped" >&2
  fi
fi
