"""Page load to an interactive canvas: ``chisel serve`` on a temporary root with the bundled demo model, the page
opened in Debian's Chromium (Playwright) N times, each in a fresh browser context (empty storage, empty cache).

    python benchmarks/canvas_load.py [--repeat 10] [--target 1.0] [--json]

"Interactive" is what the canvas tests wait for: the page's ``chisel.ready`` (node types loaded, the default
workflow on the canvas, the queue and history asked for), with the Queue button enabled and the graph's nodes
there; the page marks it with ``performance.mark("chisel:ready")``, and ``chisel:drawn`` for the first frame drawn
after it. Both are read as milliseconds from navigation start. Prints, per figure, the median and the maximum,
the requests per load, and the requests to any origin other than the server's (there must be none). Exit status 1
when the median time to interactive exceeds ``--target`` seconds or anything was fetched from elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = ("() => window.chisel && window.chisel.ready === true && !document.querySelector('#queue-btn').disabled"
         " && chisel.nodes().length > 0 && performance.getEntriesByName('chisel:drawn').length > 0")


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--root", str(root), "--port", "0",
                             "--device", "cpu"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        m = re.search(r"serving on (http://\S+)", line)
        if m:
            return proc, m.group(1).replace("[", "").replace("]", "").replace("0.0.0.0", "127.0.0.1") + "/"
    raise RuntimeError("chisel serve did not start")


def one_load(browser, url: str) -> dict:
    context = browser.new_context(viewport={"width": 1800, "height": 1000})
    try:
        page = context.new_page()
        server = urlsplit(url).netloc
        requests, foreign, errors = [], [], []

        def seen(r):  # data: and blob: URLs are the page's own; anything else must go to the server (ws: too)
            requests.append(r.url)
            parts = urlsplit(r.url)
            if parts.scheme not in ("data", "blob") and parts.netloc != server:
                foreign.append(r.url)

        page.on("request", seen)
        page.on("websocket", seen)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function(READY, timeout=60000)
        marks = page.evaluate("""() => ({
            ready: performance.getEntriesByName('chisel:ready')[0].startTime,
            drawn: performance.getEntriesByName('chisel:drawn')[0].startTime,
            dom: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd })""")
        if errors:
            raise RuntimeError(f"console errors: {errors}")
        return {"ready_s": marks["ready"] / 1000, "drawn_s": marks["drawn"] / 1000,
                "dom_content_loaded_s": marks["dom"] / 1000, "requests": len(requests), "foreign": foreign}
    finally:
        context.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--target", type=float, default=1.0, help="seconds to an interactive canvas (median)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chisel-canvas-load-") as tmp:
        root = Path(tmp)
        name = next(n["inputs"]["ckpt_name"] for n in json.loads((REPO / "workflows" / "txt2img.json").read_text())
                    ["nodes"].values() if n["type"] == "CheckpointLoaderSimple")
        (root / "models" / "checkpoints").mkdir(parents=True)
        shutil.copyfile(REPO / "models" / "checkpoints" / name, root / "models" / "checkpoints" / name)
        proc, url = start_server(root)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
                try:
                    one_load(browser, url)  # the server's first answers (imports, file lists) are not the page's
                    runs = [one_load(browser, url) for _ in range(args.repeat)]
                finally:
                    browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    report = {k: {"median": statistics.median(r[k] for r in runs), "max": max(r[k] for r in runs)}
              for k in ("ready_s", "drawn_s", "dom_content_loaded_s", "requests")}
    foreign = sorted({u for r in runs for u in r["foreign"]})
    report["foreign_requests"] = len([u for r in runs for u in r["foreign"]])
    report["target_s"] = args.target
    if args.json:
        print(json.dumps(report))
    else:
        for k in ("ready_s", "drawn_s", "dom_content_loaded_s"):
            print(f"{k}: median {report[k]['median']:.3f} s, max {report[k]['max']:.3f} s")
        print(f"requests per load: median {report['requests']['median']:g}, max {report['requests']['max']}")
        print(f"requests to other origins: {report['foreign_requests']}" + (f" {foreign}" if foreign else ""))
        print(f"{args.repeat} loads, target {args.target:g} s to interactive (median)")
    missed = report["ready_s"]["median"] > args.target or report["foreign_requests"] > 0
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
