"""Take the README's dashboard screenshots again: docs/dashboard.png (the instance list
of a hub with 10,000 instances: totals, filters, a selection) and
docs/dashboard-timeline.png (a 200-way fan-out's grouped timeline).

They come from the dashboard's browser tests (tests/http/test_dashboard_scale_browser.py),
which write them when DURARAY_UPDATE_DOCS is set, so the pictures show what the tests
check. Needs Debian's Chromium (scripts/ensure-browser.sh).

    python scripts/screenshots.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "http" / "test_dashboard_scale_browser.py"


def main() -> int:
    """Run the two tests that take the screenshots; their exit status."""
    os.environ["DURARAY_UPDATE_DOCS"] = "1"
    os.chdir(ROOT)
    args = [str(TESTS), "-q", "-p", "no:cacheprovider", "-k", "totals_by_status or fan_out"]
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main())
