"""Evaluate the bundled demo model through Chisel's own graph: every colour x shape over several seeds.

Runs ``workflows/txt2img.json`` (its nodes, the engine, the default sampler) with the demo checkpoint, one run per
prompt with a batch of seeds, and scores prompt adherence with the judge from ``demo_shapes``: the dominant
foreground colour and the shape class. Prints colour and shape accuracy and writes a contact sheet PNG (rows are
prompts, columns seeds; a red frame marks an image the judge did not read as its prompt).

    .venv/bin/python scripts/eval_demo_model.py --seeds 8 --sheet runs/demo/eval_sheet.png
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))
import demo_shapes as ds  # noqa: E402

DEFAULT_CKPT = "chisel-demo-v1.safetensors"
DEFAULT_WORKFLOW = REPO / "workflows" / "txt2img.json"


def make_engine(root: Path = REPO, device: str = "auto"):
    from graph.engine import Engine
    from graph.paths import ModelPaths
    from graph.registry import NodeRegistry
    from nodes.services import create_services

    paths = ModelPaths(root=root)
    return Engine(NodeRegistry.discover(), services=create_services(paths, device=device), paths=paths)


def _nodes_by_type(wf: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for nid, spec in wf["nodes"].items():
        out.setdefault(spec.get("type") or spec.get("class_type"), []).append(nid)
    return out


def _link_target(value: Any) -> str | None:
    if isinstance(value, dict) and "node" in value:
        return str(value["node"])
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        return value[0]
    return None


class Txt2Img:
    """The txt2img workflow with its prompt, seed, batch size and sampler settings made adjustable."""

    def __init__(self, workflow: dict | Path = DEFAULT_WORKFLOW, ckpt: str = DEFAULT_CKPT):
        if not isinstance(workflow, dict):
            workflow = json.loads(Path(workflow).read_text(encoding="utf-8"))
        self.base = copy.deepcopy(workflow)
        by_type = _nodes_by_type(self.base)
        self.loader = by_type["CheckpointLoaderSimple"][0]
        self.sampler = by_type["KSampler"][0]
        self.latent = by_type["EmptyLatentImage"][0]
        self.decode = by_type["VAEDecode"][0]
        ks = self.base["nodes"][self.sampler]["inputs"]
        self.positive = _link_target(ks["positive"])
        self.negative = _link_target(ks["negative"])
        self.base["nodes"][self.loader]["inputs"]["ckpt_name"] = ckpt
        self.base.pop("outputs", None)

    @property
    def defaults(self) -> dict[str, Any]:
        ks = self.base["nodes"][self.sampler]["inputs"]
        return {k: ks.get(k) for k in ("steps", "cfg", "sampler_name", "scheduler", "denoise")}

    def build(self, prompt: str, seed: int, batch: int = 1, steps: int | None = None, cfg: float | None = None,
              sampler_name: str | None = None, scheduler: str | None = None, size: int = ds.SIZE) -> dict:
        wf = copy.deepcopy(self.base)
        n = wf["nodes"]
        n[self.positive]["inputs"]["text"] = prompt
        lat = n[self.latent]["inputs"]
        lat.update(width=size, height=size, batch_size=batch)
        ks = n[self.sampler]["inputs"]
        ks["seed"] = seed
        for k, v in (("steps", steps), ("cfg", cfg), ("sampler_name", sampler_name), ("scheduler", scheduler)):
            if v is not None:
                ks[k] = v
        return wf


def images_to_uint8(images: Any) -> np.ndarray:
    """The IMAGE value of a VAEDecode node ((B,H,W,C) floats in [0,1], ComfyUI's layout) as (B,H,W,3) uint8."""
    import torch

    t = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    t = t.detach().float().cpu()
    if t.ndim == 3:
        t = t[None]
    if t.shape[-1] not in (3, 4) and t.shape[1] in (3, 4):  # (B,C,H,W)
        t = t.permute(0, 2, 3, 1)
    return (t[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def generate(engine, t2i: Txt2Img, prompt: str, seed: int, batch: int, **settings) -> np.ndarray:
    result = engine.run(t2i.build(prompt, seed, batch, **settings), outputs=[t2i.decode])
    if result.status != "success":
        raise RuntimeError(f"txt2img failed for {prompt!r}: " + "; ".join(e.message for e in result.errors))
    return images_to_uint8(result.values[t2i.decode][0])


def randomized_checkpoint(src: Path, dst: Path, seed: int = 0) -> Path:
    """A negative control: ``src`` with every floating tensor replaced by Gaussian noise of that tensor's own mean
    and spread (same architecture, same scales, nothing learned). The judge should score it near chance or lower."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    out = {}
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        for key in f.keys():
            t = f.get_tensor(key)
            if t.is_floating_point() and t.numel() > 1:
                x = t.float()
                t = (torch.randn(x.shape, generator=g) * x.std() + x.mean()).to(t.dtype)
            out[key] = t
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst), metadata=meta)
    return dst


def evaluate(engine=None, t2i: Txt2Img | None = None, seeds: int = 8, base_seed: int = 0,
             combos: list[tuple[str, str]] | None = None, **settings) -> dict[str, Any]:
    """Generate every (colour, shape) combo with ``seeds`` batch entries and judge them."""
    engine = engine or make_engine()
    t2i = t2i or Txt2Img()
    combos = combos or [(c, s) for c in ds.COLOUR_NAMES for s in ds.SHAPES]
    images, targets, verdicts = [], [], []
    per_prompt = {}
    t0 = time.time()
    for i, (colour, shape) in enumerate(combos):
        prompt = ds.caption(colour, shape)
        imgs = generate(engine, t2i, prompt, base_seed + 1000 * i, seeds, **settings)
        vs = [ds.judge(im) for im in imgs]
        images.append(imgs); verdicts += vs; targets += [(colour, shape)] * len(vs)
        per_prompt[prompt] = (sum(v.colour == colour for v in vs) / len(vs), sum(v.shape == shape for v in vs) / len(vs))
    colour_acc, shape_acc = ds.accuracy(verdicts, targets)
    both = sum((v.colour, v.shape) == t for v, t in zip(verdicts, targets)) / len(targets)
    fill_only = sum(v.shape_fill_only == t[1] for v, t in zip(verdicts, targets)) / len(targets)
    return dict(colour=colour_acc, shape=shape_acc, both=both, shape_fill_only=fill_only, n=len(targets),
                seconds=time.time() - t0,
                per_prompt=per_prompt, images=np.concatenate(images), verdicts=verdicts, targets=targets,
                settings={**t2i.defaults, **{k: v for k, v in settings.items() if v is not None}})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=DEFAULT_CKPT, help="checkpoint name (models/checkpoints) or path")
    ap.add_argument("--workflow", default=str(DEFAULT_WORKFLOW))
    ap.add_argument("--seeds", type=int, default=8, help="images per colour x shape (one batch)")
    ap.add_argument("--base-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="default: the workflow's")
    ap.add_argument("--cfg", type=float, default=None, help="default: the workflow's")
    ap.add_argument("--sampler", default=None, help="default: the workflow's")
    ap.add_argument("--scheduler", default=None, help="default: the workflow's")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--control", choices=["random-weights"], help="score a negative control instead: the checkpoint "
                    "with its weights replaced by noise of the same scale (expect chance or lower)")
    ap.add_argument("--sheet", default=str(REPO / "runs" / "demo" / "eval_sheet.png"))
    ap.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = REPO
    if args.control == "random-weights":
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="chisel-control-"))
        src = Path(args.ckpt) if Path(args.ckpt).is_file() else REPO / "models" / "checkpoints" / args.ckpt
        randomized_checkpoint(src, root / "models" / "checkpoints" / src.name)
        args.ckpt = src.name
    engine = make_engine(root, device=args.device)
    t2i = Txt2Img(Path(args.workflow), args.ckpt)
    res = evaluate(engine, t2i, seeds=args.seeds, base_seed=args.base_seed, steps=args.steps, cfg=args.cfg,
                   sampler_name=args.sampler, scheduler=args.scheduler)
    ok = [(v.colour, v.shape) == t for v, t in zip(res["verdicts"], res["targets"])]
    Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
    ds.contact_sheet(res["images"], args.seeds, ok).save(args.sheet)
    summary = {k: res[k] for k in ("colour", "shape", "both", "shape_fill_only", "n", "seconds", "settings")}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"settings: {res['settings']}")
        for prompt, (c, s) in res["per_prompt"].items():
            print(f"  {prompt:<20} colour {c:6.1%}  shape {s:6.1%}")
        print(f"colour accuracy {res['colour']:.1%}  shape accuracy {res['shape']:.1%}  both {res['both']:.1%}  "
              f"({res['n']} images, {res['seconds']:.1f}s); contact sheet: {args.sheet}")
        print(f"(shape by the fill ratio alone, a stricter reading: {res['shape_fill_only']:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
