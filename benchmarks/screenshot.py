"""A screenshot of an HTML report, taken in the system's chromium (for the README).

python benchmarks/screenshot.py report.html report.png [--at plots] [--width 1400 --height 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import browser  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument(
        "--at", help="the id of the section to scroll to first (e.g. plots, machines, runs)"
    )
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args()
    found = browser.find()
    if isinstance(found, str):
        print(f"screenshot: {found}", file=sys.stderr)
        return 2
    if not args.page.is_file():
        print(f"screenshot: no page at {str(args.page)!r}", file=sys.stderr)
        return 2
    driver = browser.start(args.width, args.height)
    try:
        driver.get(args.page.resolve().as_uri())
        if args.at:
            driver.execute_script(
                "var e = document.getElementById(arguments[0]); if (e) { e.scrollIntoView(); }",
                args.at,
            )
        time.sleep(0.3)
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            print(f"screenshot: the page logged errors: {errors[0]}", file=sys.stderr)
            return 1
        tmp = args.png.with_name(f".{args.png.name}.tmp.png")
        driver.save_screenshot(str(tmp))
        tmp.replace(args.png)  # whole or not at all
    finally:
        driver.quit()
    print(f"screenshot written to {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
