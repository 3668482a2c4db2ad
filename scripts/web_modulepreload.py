"""Keep web/index.html's ``<link rel="modulepreload">`` list equal to the ES modules the canvas imports.

Without the list the browser finds the modules one import level at a time (main.js, then app.js, then what app.js
imports, ...): each level is a round trip to the server before the next can start. With it, every module is asked
for at once while the page is parsed.

    python scripts/web_modulepreload.py          # rewrite the list in web/index.html
    python scripts/web_modulepreload.py --check  # exit 1 (and say what differs) when it is out of date
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "web"
ENTRY = "web/js/main.js"
IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["'](\.{1,2}/[^"']+\.js)["']""")
BEGIN, END = "<!-- modulepreload: scripts/web_modulepreload.py -->", "<!-- /modulepreload -->"


def imported_modules(entry: str = ENTRY) -> list[str]:
    """Every module reachable from ``entry`` by static imports, as paths relative to the repository (entry first,
    then in the order found)."""
    seen, todo = [entry], [entry]
    while todo:
        path = todo.pop(0)
        text = (REPO / path).read_text(encoding="utf-8")
        for rel in IMPORT.findall(text):
            target = (REPO / path).parent.joinpath(rel).resolve().relative_to(REPO).as_posix()
            if target not in seen:
                seen.append(target)
                todo.append(target)
    return seen


def preload_block(indent: str = "  ") -> str:
    """The lines between the markers (the entry itself is loaded by its script tag)."""
    links = [f'{indent}<link rel="modulepreload" href="{m}">' for m in imported_modules()[1:]]
    return "\n".join([f"{indent}{BEGIN}", *links, f"{indent}{END}"])


def updated_index(html: str) -> str:
    block = preload_block()
    pattern = re.compile(r"[ \t]*" + re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pattern.search(html):
        return pattern.sub(lambda _: block, html)
    script = re.search(r'[ \t]*<script type="module" src="web/js/main.js"></script>', html)
    if script is None:
        raise SystemExit("web/index.html has no <script type=\"module\" src=\"web/js/main.js\">")
    return html[:script.start()] + block + "\n" + html[script.start():]


def main(argv: list[str]) -> int:
    index = WEB / "index.html"
    html = index.read_text(encoding="utf-8")
    new = updated_index(html)
    if "--check" in argv:
        if new != html:
            print("web/index.html's modulepreload list is out of date: run python scripts/web_modulepreload.py")
            return 1
        return 0
    if new != html:
        index.write_text(new, encoding="utf-8")
        print("web/index.html: modulepreload list updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
