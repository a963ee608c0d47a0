#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the dashboard's browser tests.
#
# Idempotent and quiet: does nothing when the browser is already there. Otherwise it
# installs the `chromium` package with apt-get (after `apt-get update`) when running as
# root or when passwordless sudo is available. Test tools' own browser downloads
# (`playwright install`) cannot work on our machines, so Debian's package is the browser.
# When it cannot install, it says so and exits 0: the browser test then fails with a
# clear message of its own instead of the whole test run stopping here.
set -euo pipefail

BROWSER=/usr/bin/chromium
[ -x "$BROWSER" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "ensure-browser: $BROWSER is missing and neither root nor sudo is available;" \
         "install Debian's chromium package to run the browser tests" >&2
    exit 0
fi

echo "ensure-browser: installing Debian's chromium (once)" >&2
# apt's chatter goes to a log that is shown only when something goes wrong.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
       && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
          apt-get install -y -q --no-install-recommends chromium; } >"$log" 2>&1 \
   || [ ! -x "$BROWSER" ]; then
    cat "$log" >&2
    echo "ensure-browser: could not install $BROWSER with apt-get" >&2
    exit 1
fi
