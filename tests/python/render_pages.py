"""Renders ewtune's report pages in a real browser, headless Chromium (Debian's package, which
scripts/test.sh installs), driven by Playwright, for tests/pages.rs.

Usage: render_pages.py CHROMIUM OUT_DIR PAGE.html...

For each page prints, as one JSON document: every console message and page error, every URL it
requested, the size of each <svg> and the boxes of its drawn elements (polyline, rect, text) as
the browser laid them out, relative to the chart, and the path of a full-page PNG screenshot
written into OUT_DIR.
"""

import json
import pathlib
import sys

from playwright.sync_api import sync_playwright

MEASURE = """() => Array.from(document.querySelectorAll('svg')).map(svg => {
  const r = svg.getBoundingClientRect();
  // Where the browser put each element (its transforms applied), relative to its chart.
  const boxes = sel => Array.from(svg.querySelectorAll(sel)).map(e => {
    const b = e.getBoundingClientRect();
    return [b.x - r.x, b.y - r.y, b.width, b.height];
  });
  return {
    width: r.width, height: r.height,
    viewbox: [svg.viewBox.baseVal.width, svg.viewBox.baseVal.height],
    polylines: boxes('polyline'), rects: boxes('rect'), texts: boxes('text'),
  };
})"""


def main():
    chromium, out_dir, pages = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for i, page_path in enumerate(pages):
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            console, errors, failed, requests = [], [], [], []
            page.on("console", lambda m: console.append({"type": m.type, "text": m.text}))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(pathlib.Path(page_path).resolve().as_uri(), wait_until="load")
            png = out_dir / f"page-{i}.png"
            page.screenshot(path=str(png), full_page=True)
            results.append({
                "page": page_path,
                "title": page.title(),
                "console": console,
                "errors": errors,
                "failed_requests": failed,
                "requests": requests,
                "svgs": page.evaluate(MEASURE),
                "png": str(png),
            })
            page.close()
        browser.close()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
