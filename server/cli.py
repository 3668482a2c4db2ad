"""The ``chisel`` command line: run, validate, export, nodes, schema, serve."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from graph.comfy_format import export
from graph.registry import NodeRegistry
from graph.engine import RunResult
from graph.errors import WorkflowError
from graph.events import EXECUTED, EXECUTING, PROGRESS, Event
from graph.overrides import apply_overrides, split_target
from graph.paths import ModelPaths
from graph.validate import all_errors
from graph.workflow import Workflow, json_schema, load_file

from .runtime import build_runtime
from .settings import add_flags as add_settings_flags


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_assignment(text: str, flag: str) -> tuple[str, str, str]:
    """NODE.INPUT=VALUE, split at the first "=" and then, like the HTTP ``set``, at the last dot."""
    target, sep, value = text.partition("=")
    parts = split_target(target)
    if not sep or parts is None:
        raise SystemExit(f"chisel: {flag} expects NODE.INPUT=VALUE, got {text!r}")
    return parts[0], parts[1], value


def with_inputs(workflow: Workflow, values: dict[tuple[str, str], Any]) -> Workflow:
    """A copy of the workflow with literal inputs set (``--set`` / ``--sweep``)."""
    return apply_overrides(workflow, {f"{node}.{name}": value for (node, name), value in values.items()})


class _Progress:
    """Progress on stderr: a bar per node that reports progress (sampling steps, a loader's stages) on a terminal, a
    line per node otherwise."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bar = None

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if event.type == EXECUTING:
            self._close()
            if not self.tty:
                print(f"[{event.node_id}] {event.data.get('node_type')}: {event.data.get('reason')}", file=sys.stderr)
        elif event.type == PROGRESS and self.tty:
            from tqdm import tqdm
            if self.bar is None:
                self.bar = tqdm(total=event.data["max"], desc=f"node {event.node_id}", file=sys.stderr, leave=False)
            if event.data.get("stage"):  # a loader's stage: "node 4 loading: building the UNet"
                self.bar.set_description(f"node {event.node_id} {event.data.get('activity', 'running')}: "
                                         f"{event.data['stage']}", refresh=False)
            self.bar.n = event.data["value"]
            self.bar.refresh()
        elif event.type == EXECUTED:
            self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _files_written(result: RunResult, paths: ModelPaths) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for nid, ui in result.outputs.items():
        files = []
        for item in ui.get("images", []) if isinstance(ui, dict) else []:
            base = paths.dirs(item.get("type", "output"))[0]
            files.append(str(base / item.get("subfolder", "") / item["filename"]))
        if files:
            out[nid] = files
    return out


def cmd_run(args: argparse.Namespace) -> int:
    registry, services, engine = build_runtime(args)
    sets = {(n, i): _parse_value(v) for n, i, v in (_parse_assignment(s, "--set") for s in args.set or [])}
    sweeps = [(n, i, [_parse_value(x) for x in v.split(",")])
              for n, i, v in (_parse_assignment(s, "--sweep") for s in args.sweep or [])]
    combos = list(itertools.product(*[[((n, i), x) for x in values] for n, i, values in sweeps])) or [()]
    progress = _Progress(args.json)
    jobs: list[tuple[Path, dict, Workflow | None, RunResult | None]] = []
    for path in args.workflows:
        for combo in combos:
            values = dict(sets)
            values.update(dict(combo))
            try:
                workflow = with_inputs(load_file(path, registry), values) if values else load_file(path, registry)
                jobs.append((path, values, workflow, None))
            except WorkflowError as exc:
                jobs.append((path, values, None, RunResult("-", "error", errors=exc.errors)))
    if getattr(args, "cluster", None):  # every run fanned out over the cluster's workers first
        from .cluster.batch import run_on_cluster

        results = iter(run_on_cluster(args, registry, engine.paths, [w for _, _, w, r in jobs if r is None]))
        jobs = [(p, v, w, r if r is not None else next(results)) for p, v, w, r in jobs]
    failures = 0
    for path, values, workflow, result in jobs:
        if result is None:
            result = engine.run(workflow, on_event=progress)
        report = {"workflow": str(path), "set": {f"{n}.{i}": v for (n, i), v in values.items()},
                  **result.to_dict(), "outputs": _files_written(result, services.paths)}
        if not args.explain:
            report.pop("explain")
        if result.status != "success":
            failures += 1
        if args.json:
            print(json.dumps(report), flush=True)
        else:
            _print_human(report, result)
    return 1 if failures else 0


def _print_human(report: dict[str, Any], result: RunResult) -> None:
    label = report["workflow"] + (" " + " ".join(f"{k}={v}" for k, v in report["set"].items()) if report["set"] else "")
    print(f"{label}: {result.status} ({len(result.executed)} executed, {len(result.cached)} cached, "
          f"{sum(result.timings.values()):.2f}s)")
    for nid, seeds in result.resolved.items():
        print(f"  node {nid}: chose " + ", ".join(f"{k}={v}" for k, v in seeds.items()))
    for nid, files in report["outputs"].items():
        for f in files:
            print(f"  node {nid} wrote {f}")
    if "explain" in report:
        for nid, why in report["explain"].items():
            print(f"  node {nid} ran: {why}")
    for err in result.errors:
        print(f"  error: {err}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    registry, services, engine = build_runtime(args)
    try:
        workflow = load_file(args.workflow, registry)
        errors = all_errors(workflow, registry, services.paths)
    except WorkflowError as exc:
        errors = exc.errors
    if args.json:
        print(json.dumps({"valid": not errors, "errors": [e.to_dict() for e in errors]}))
    else:
        print(f"{args.workflow}: " + ("valid" if not errors else f"{len(errors)} error(s)"))
        for err in errors:
            print(f"  {err}")
    return 1 if errors else 0


def cmd_export(args: argparse.Namespace) -> int:
    paths = ModelPaths.from_mapping(getattr(args, "root", None))
    registry = NodeRegistry.discover(plugin_folders=paths.dirs("custom_nodes"))
    try:
        text = json.dumps(export(load_file(args.workflow, registry), args.format, registry), indent=1)
    except WorkflowError as exc:
        print(f"{args.workflow}: cannot export", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    registry, services, _ = build_runtime(args)
    schemas = registry.schemas(services.paths)
    if args.json:
        print(json.dumps(schemas, indent=1))
        return 0
    for name, schema in schemas.items():
        ins = ", ".join(f"{i['name']}:{i['type']}" for i in schema["inputs"])
        outs = ", ".join(f"{o['name']}:{o['type']}" for o in schema["outputs"])
        print(f"{name:28} [{schema['category']}] ({ins}) -> ({outs})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=1))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from server.app import serve  # imported late: only `serve` needs aiohttp's app

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chisel", description="Chisel: node-based Stable Diffusion workflows")
    sub = ap.add_subparsers(dest="command", required=True)

    def runtime_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", help="folder holding models/, input/, output/ (default: $CHISEL_HOME or .)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="compute dtype (default: per device)")
        p.add_argument("--low-vram", action="store_true", help="offload models while sampling")
        p.add_argument("--no-pickle", action="store_true",
                       help="refuse pickle-based weight files (.ckpt/.pt/.pth/.bin) altogether; by default they load "
                            "weights-only (plain tensors, no code). Also: CHISEL_NO_PICKLE=1")
        p.add_argument("--compile", default="auto", choices=["auto", "off", "on", "max"],
                       help="the UNet through torch.compile: on (CUDA's default), max (also CUDA graphs), off "
                            "(the CPU's default); artifacts are kept in <root>/.cache/torch-compile")
        p.add_argument("--cache-ram-gb", type=float, default=8.0, help="result cache budget in RAM (GiB)")
        p.add_argument("--cache-device-gb", type=float, default=4.0,
                       help="result cache budget in device memory (GiB)")

    def cluster_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cluster", metavar="ray|auto|ray://HOST:PORT",
                       help="run prompts on Ray workers: ray starts a local Ray instance, auto or ray://HOST:PORT "
                            "joins a running cluster (needs chisel[ray])")
        p.add_argument("--cluster-workers", type=int, metavar="N",
                       help="number of workers (default: one per GPU in the cluster, else one CPU worker)")
        p.add_argument("--cluster-shared-output", action="store_true",
                       help="workers write images into the output folder themselves (shared storage at the same path "
                            "on every machine); default: images come back through Ray's object store")

    p = sub.add_parser("run", help="run workflows")
    p.add_argument("workflows", nargs="+", type=Path)
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="set a literal input (JSON or text)")
    p.add_argument("--sweep", action="append", metavar="NODE.INPUT=V1,V2,...", help="run once per value")
    p.add_argument("--output-dir", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON report per run")
    p.add_argument("--explain", action="store_true", help="say why each node ran")
    cluster_flags(p)
    runtime_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a workflow and list every problem")
    p.add_argument("workflow", type=Path)
    p.add_argument("--json", action="store_true")
    runtime_flags(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("export", help="write a workflow (any format) in ComfyUI's UI or API format")
    p.add_argument("workflow", type=Path)
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--comfy-ui", dest="format", action="store_const", const="comfy_ui",
                     help="ComfyUI's UI format (opens in ComfyUI's frontend: positions, groups, notes kept)")
    fmt.add_argument("--comfy-api", dest="format", action="store_const", const="comfy_api",
                     help="ComfyUI's API format (what /prompt takes)")
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of standard output")
    p.add_argument("--root", help="folder holding custom_nodes/ (default: $CHISEL_HOME or .)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("nodes", help="list node types")
    p.add_argument("--json", action="store_true", help="every node's schema as JSON")
    runtime_flags(p)
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("schema", help="print the workflow JSON Schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("serve", help="start the HTTP/WebSocket server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--token", help="require this bearer token (or set CHISEL_TOKEN)")
    p.add_argument("--debug", action="store_true", help="include tracebacks in error replies")
    p.add_argument("--preview-method", default="none", choices=["none", "auto", "latent2rgb", "taesd"],
                   help="binary previews on ComfyUI's /ws (default none, as ComfyUI); Chisel's previews are "
                        "latent2rgb, which auto and taesd also give")
    p.add_argument("--frontend", default="chisel", choices=["chisel", "comfyui"],
                   help="the page at /: Chisel's canvas, or ComfyUI's frontend (needs comfyui-frontend-package)")
    cluster_flags(p)
    runtime_flags(p)
    add_settings_flags(p)
    p.set_defaults(func=cmd_serve)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
