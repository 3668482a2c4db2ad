"""The `chisel` command line, run as a user would (a subprocess), with the toy nodes as a plug-in folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from toy_nodes import wf

HERE = Path(__file__).resolve().parent


@pytest.fixture
def home(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    shutil.copy(HERE / "toy_nodes.py", tmp_path / "custom_nodes" / "toy_nodes.py")
    w = wf({"1": ("Number", {"value": 2}), "2": ("Add", {"a": ("1", "INT"), "b": 3}),
            "3": ("Show", {"value": ("2", "sum")})})
    (tmp_path / "add.json").write_text(json.dumps(w))
    return tmp_path


def chisel(home, *args, check=None):
    proc = subprocess.run([sys.executable, "-m", "server.cli", *args, "--root", str(home)],
                          capture_output=True, text=True, cwd=home, timeout=120)
    if check is not None:
        assert proc.returncode == check, proc.stderr
    return proc


def reports(proc):
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_run_json_sweep_and_shared_cache(home):
    proc = chisel(home, "run", "add.json", "add.json", "--sweep", "2.b=3,4", "--json", check=0)
    runs = reports(proc)
    assert [r["status"] for r in runs] == ["success"] * 4
    assert [r["set"] for r in runs] == [{"2.b": 3}, {"2.b": 4}] * 2
    assert runs[0]["executed"] == ["1", "2", "3"]
    assert runs[1]["executed"] == ["2", "3"] and runs[1]["cached"] == ["1"]
    assert runs[2]["executed"] == [] and runs[3]["executed"] == []  # the second file: all cached
    assert set(runs[0]["timings"]) == {"1", "2", "3"} and runs[0]["errors"] == []


def test_run_set_explain_and_failure_exit_code(home):
    proc = chisel(home, "run", "add.json", "--set", "1.value=5", "--explain", check=0)
    assert "success" in proc.stdout and "node 1 ran: not cached before" in proc.stdout
    proc = chisel(home, "run", "add.json", "--set", "1.value=5000", "--json", check=1)
    [report] = reports(proc)
    assert report["status"] == "error"
    assert report["errors"][0]["kind"] == "value_out_of_range" and report["errors"][0]["node_id"] == "1"
    proc = chisel(home, "run", "add.json", "--set", "9.value=1", "--json", check=1)
    assert "names node '9'" in reports(proc)[0]["errors"][0]["message"]


def test_validate(home):
    (home / "bad.json").write_text('{"format": "chisel-workflow", "version": 1,\n "nodes": {"1": {"type": "Nope"}}')
    proc = chisel(home, "validate", "bad.json", "--json", check=1)
    out = json.loads(proc.stdout)
    assert out["valid"] is False and out["errors"][0]["kind"] == "invalid_json"
    assert out["errors"][0]["details"]["line"] == 2
    (home / "bad.json").write_text(json.dumps(wf({"1": ("Nope", {}), "2": ("Add", {})})))
    out = json.loads(chisel(home, "validate", "bad.json", "--json", check=1).stdout)
    kinds = sorted(e["kind"] for e in out["errors"])
    assert kinds == ["no_outputs", "required_input_missing", "unknown_node_type"]
    assert chisel(home, "validate", "add.json", check=0).stdout.strip().endswith("valid")


def test_nodes_and_schema(home):
    schemas = json.loads(chisel(home, "nodes", "--json", check=0).stdout)
    add = schemas["Add"]
    assert add["inputs"][0] == {"name": "a", "type": "INT"} and add["outputs"] == [{"name": "sum", "type": "INT"}]
    assert schemas["Scale"]["inputs"][2]["choices"] == ["round", "floor"]
    proc = subprocess.run([sys.executable, "-m", "server.cli", "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(proc.stdout)
    assert schema["title"] == "Chisel workflow" and "nodes" in schema["required"]
    jsonschema.validate(json.loads((home / "add.json").read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"nodes": {}, "surprise": 1}, schema)
