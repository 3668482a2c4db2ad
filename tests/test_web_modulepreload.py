"""web/index.html asks for every ES module of the canvas up front (``<link rel="modulepreload">``), so the browser
does not find them one import level at a time: the list must be exactly the modules main.js reaches."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("web_modulepreload", REPO / "scripts" / "web_modulepreload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_index_preloads_exactly_the_modules_main_js_imports():
    script = load_script()
    modules = script.imported_modules()
    html = (REPO / "web" / "index.html").read_text()
    preloaded = re.findall(r'<link rel="modulepreload" href="([^"]+)">', html)
    assert modules[0] == "web/js/main.js"
    missing = sorted(set(modules[1:]) - set(preloaded))
    extra = sorted(set(preloaded) - set(modules[1:]))
    assert not missing and not extra, (f"not preloaded: {missing}; preloaded but not imported: {extra} "
                                       "(python scripts/web_modulepreload.py rewrites the list)")
    assert len(preloaded) == len(set(preloaded))
    # the graph really was followed: LiteGraph and modules that only other modules import are in it
    assert {"web/vendor/litegraph/litegraph.es.js", "web/js/fuzzy.js", "web/js/markdown.js"} <= set(preloaded)
    # and every file it names exists
    assert all((REPO / m).is_file() for m in modules)
    # the check mode agrees
    assert script.main(["--check"]) == 0
