"""Malformed workflows through the real entry points: ``chisel validate``/``run`` exit 1 with structured errors
and no traceback; the HTTP routes answer 400. ``--set`` and the HTTP ``set`` split NODE.INPUT alike."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from malformed_workflows import CASES, DEEP_TEXT, LONG_INT_TEXT
from test_server_support import client, make_root, run
from toy_nodes import wf

HERE = Path(__file__).resolve().parent
CLI_CASES = ["api list class_type", "ui null node", "int huge", "file name NUL", "cycle", "ui self-containing subgraph"]


def chisel(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args, "--root", str(home)], capture_output=True,
                          text=True, cwd=home, timeout=120)


@pytest.fixture
def home(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    shutil.copy(HERE / "toy_nodes.py", tmp_path / "custom_nodes" / "toy_nodes.py")
    return tmp_path


def test_cli_validate_and_run_exit_1_with_structured_errors(home):
    files = {name: home / f"case{i}.json" for i, name in enumerate(CLI_CASES)}
    for name, path in files.items():
        path.write_text(json.dumps(CASES[name]))
    (home / "deep.json").write_text(DEEP_TEXT)
    (home / "long.json").write_text(LONG_INT_TEXT)
    for path in [files["ui null node"], files["cycle"], home / "deep.json"]:
        proc = chisel(home, "validate", str(path), "--json")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (path, proc.stderr)
        report = json.loads(proc.stdout)
        assert not report["valid"] and all(e["kind"] and e["message"] for e in report["errors"])
    proc = chisel(home, "run", *(str(p) for p in files.values()), str(home / "long.json"), "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert all(r["status"] == "error" and r["errors"] for r in map(json.loads, proc.stdout.splitlines()))


def test_cli_set_splits_at_the_last_dot_like_http(home):
    (home / "dotted.json").write_text(json.dumps(wf({"n.1": ("Number", {"value": 1}),
                                                     "show": ("Show", {"value": ("n.1", "INT")})})))
    proc = chisel(home, "run", str(home / "dotted.json"), "--set", "n.1.value=41", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["set"] == {"n.1.value": 41}
    proc = chisel(home, "run", str(home / "dotted.json"), "--set", "nowhere.value=1", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["errors"][0]["kind"] == "unknown_node"

    async def main():
        async with client(make_root(home / "srv")) as c:
            r = await c.post("/v1/validate", json={"workflow": json.loads((home / "dotted.json").read_text()),
                                                   "set": {"n.1.value": 2000, "nowhere.value": 1, "novalue": 2}})
            body = await r.json()
            assert r.status == 200 and not body["valid"]
            assert sorted(e["kind"] for e in body["errors"]) == ["invalid_override", "unknown_node"]
            r = await c.post("/v1/validate", json={"workflow": json.loads((home / "dotted.json").read_text()),
                                                   "set": {"n.1.value": 2000}})
            [err] = (await r.json())["errors"]
            assert (err["kind"], err["node_id"], err["input"]) == ("value_out_of_range", "n.1", "value")
    run(main())


def test_http_routes_answer_400(tmp_path):
    async def main():
        async with client(make_root(tmp_path)) as c:
            for name, case in CASES.items():
                if name in ("native id superscript two", "api id superscript two", "string of digits",
                            "nested 100k"):
                    continue  # valid, or not JSON-encodable (DEEP_TEXT below sends it as text)
                body = json.dumps({"workflow": case})
                for route in ("/v1/validate", "/v1/prompts", "/v1/workflow/convert"):
                    r = await c.post(route, data=body, headers={"Content-Type": "application/json"})
                    assert r.status in (200, 400), (name, route, r.status, await r.text())
                    if route == "/v1/validate":  # 400 when it cannot be read, else the list of problems
                        assert r.status == 400 or not (await r.json())["valid"], name
                        if r.status == 400:
                            assert (await r.json())["errors"], name
                    elif route == "/v1/prompts":
                        assert r.status == 400, (name, route, await r.text())
                r = await c.post("/prompt", data=json.dumps({"prompt": case}),
                                 headers={"Content-Type": "application/json"})
                assert r.status == 400, (name, r.status, await r.text())
            for text in (DEEP_TEXT, LONG_INT_TEXT):
                for route in ("/v1/validate", "/v1/prompts", "/v1/workflow/convert", "/prompt"):
                    r = await c.post(route, data=text, headers={"Content-Type": "application/json"})
                    assert r.status == 400, (route, r.status, await r.text())
    run(main(), timeout=300)
