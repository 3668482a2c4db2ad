"""Full-size SD1.5 or SDXL through Chisel's engine beside diffusers, on random weights, on one CUDA GPU.

1. Build a full-size model of the family with random weights (the published configs shipped in nodes/configs) and
   save it as one fp16 ``.safetensors`` in the original key layout, without Chisel metadata.
2. Chisel: the txt2img graph through ``Engine.run`` (load, encode, empty latent, KSampler euler/normal, VAE decode to
   a host tensor), steady state (a new seed each run, so sampling and decoding always run), batch 1 and batch N,
   for each ``--compile`` mode asked; peak device memory; the first call (compiling) timed on its own.
   Batching across prompts: N batch-1 prompts with their own seeds and texts through ``Engine.run_many`` (what the
   server does with compatible queued prompts), images per second (``promptsN_batched``).
3. Second start: a new process, same file and shapes, compile cache kept in the Chisel root: seconds from process
   start to the first image.
4. diffusers in the same run: eager fp16, and compiled with ``mode="reduce-overhead"`` (CUDA graphs), UNet and VAE.
5. Engine overhead: Engine.run's wall time minus the time spent inside the nodes.

    python benchmarks/gpu_sd15.py --json results/gpu_sd15.json
    python benchmarks/gpu_sdxl.py --json results/gpu_sdxl.json

It needs a CUDA machine with torch, diffusers and transformers installed (``pip install -e .`` in a fresh
environment with a CUDA build of torch). Everything else is built here: no download.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

FAMILIES = {  # family -> (shipped config folder, checkpoint family, default size)
    "sd15": ("sd15", "sd1", 512),
    "sdxl": ("sdxl", "sdxl", 1024),
}
PROMPT = "a photo of an astronaut riding a horse on mars"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- the file ---------------------------------------------------------------------------------------------------

def build_modules(family: str, device: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nodes.loading.configs import template

    cfg_dir = FAMILIES[family][0]

    def te_config(name):
        return CLIPTextConfig(**{k: v for k, v in template(cfg_dir, name).items() if k != "architectures"})

    with torch.device(device):
        unet = UNet2DConditionModel.from_config(template(cfg_dir, "unet"))
        vae = AutoencoderKL.from_config(template(cfg_dir, "vae"))
        te = CLIPTextModel(te_config("text_encoder"))
        te2 = CLIPTextModelWithProjection(te_config("text_encoder_2")) if family == "sdxl" else None
    mods = [m for m in (unet, vae, te, te2) if m is not None]
    for m in mods:
        m.to(torch.float16).eval().requires_grad_(False)
    return unet, vae, te, te2


def build_file(family: str, path: Path, device: str) -> None:
    from safetensors.torch import save_file

    from nodes.testing.export import ldm_state_dict

    t0 = time.perf_counter()
    unet, vae, te, te2 = build_modules(family, device)
    sd = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
          for k, v in ldm_state_dict(FAMILIES[family][1], unet, vae, te, te2).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    del unet, vae, te, te2, sd
    gc.collect()
    torch.cuda.empty_cache()
    log(f"built and wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f}s")


# -- Chisel through the engine -------------------------------------------------------------------------------------

def txt2img(ckpt: str, size: int, steps: int, cfg: float, batch: int, seed: int) -> dict:
    return {"nodes": {
        "4": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": {"node": "4", "output": "CLIP"}}},
        "7": {"type": "CLIPTextEncode", "inputs": {"text": "", "clip": {"node": "4", "output": "CLIP"}}},
        "5": {"type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "3": {"type": "KSampler", "inputs": {
            "model": {"node": "4", "output": "MODEL"}, "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": "euler", "scheduler": "normal", "positive": {"node": "6", "output": "CONDITIONING"},
            "negative": {"node": "7", "output": "CONDITIONING"}, "latent_image": {"node": "5", "output": "LATENT"},
            "denoise": 1.0}},
        "8": {"type": "VAEDecode", "inputs": {"samples": {"node": "3", "output": "LATENT"},
                                               "vae": {"node": "4", "output": "VAE"}}},
    }}


def make_engine(root: Path, compile_mode: str, device: str = "cuda"):
    from graph.cache import ResultCache
    from graph.engine import Engine
    from graph.paths import ModelPaths
    from graph.registry import NodeRegistry
    from nodes.services import create_services

    paths = ModelPaths(root=root)
    services = create_services(paths, device=device, compile=compile_mode)
    return Engine(NodeRegistry.discover(), services=services, paths=paths, cache=ResultCache())


def engine_image(engine, ckpt: str, args, batch: int, seed: int) -> tuple[float, float]:
    """One run: (wall seconds, seconds inside nodes); the image ends on the host."""
    t0 = time.perf_counter()
    result = engine.run(txt2img(ckpt, args.size, args.steps, args.cfg, batch, seed), outputs=["8"])
    image = result.values["8"][0]
    image = image.cpu() if image.is_cuda else image
    sync()
    wall = time.perf_counter() - t0
    if result.status != "success":
        raise RuntimeError(f"the run failed: {[e.to_dict() for e in result.errors]}")
    return wall, sum(result.timings.values())


def engine_prompts(engine, ckpt: str, args, seed: int) -> float:
    """``args.batch`` batch-1 prompts (own seeds and texts) as the server batches them (``Engine.run_many``): wall
    seconds until every image is on the host."""
    jobs = []
    for i in range(args.batch):
        wf = txt2img(ckpt, args.size, args.steps, args.cfg, 1, seed + i)
        wf["nodes"]["6"]["inputs"]["text"] = f"{PROMPT}, variation {i}"
        jobs.append(dict(workflow=wf, outputs=["8"]))
    t0 = time.perf_counter()
    results = engine.run_many(jobs)
    for r in results:
        if r.status != "success":
            raise RuntimeError(f"a batched prompt failed: {[e.to_dict() for e in r.errors]}")
        r.values["8"][0].cpu()
    sync()
    return time.perf_counter() - t0


def measure_chisel(root: Path, ckpt: str, args, mode: str) -> dict:
    engine = make_engine(root, mode)
    out: dict = {}
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    engine_image(engine, ckpt, args, 1, 0)
    out["first_image_s"] = time.perf_counter() - t0  # load + compile + run
    for batch in (1, args.batch):
        engine_image(engine, ckpt, args, batch, 1)  # warm-up of this shape (compiles it)
        torch.cuda.reset_peak_memory_stats()
        walls, inside = [], []
        for i in range(args.runs):
            w, n = engine_image(engine, ckpt, args, batch, 100 + i)
            walls.append(w)
            inside.append(n)
        med = statistics.median(walls)
        out[f"batch{batch}"] = {"seconds_per_run": med, "images_per_s": batch / med, "all_s": walls,
                                "engine_overhead_pct": 100 * statistics.median(
                                    [(w - n) / w for w, n in zip(walls, inside)]),
                                "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
    engine_prompts(engine, ckpt, args, 10_000)  # warm-up (the fused batch has batch N's UNet shapes)
    walls = [engine_prompts(engine, ckpt, args, 20_000 + 100 * i) for i in range(args.runs)]
    med = statistics.median(walls)
    out[f"prompts{args.batch}_batched"] = {"seconds_per_run": med, "images_per_s": args.batch / med, "all_s": walls}
    engine.services.models.free(unload=True)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return out


def second_start(root: Path, ckpt: str, args, mode: str) -> float:
    """A new process: seconds from its start to its first image (compile artifacts from the run before)."""
    code = (f"import sys, time; t0 = time.perf_counter(); sys.path.insert(0, {str(ROOT)!r}); "
            f"import argparse; from benchmarks.gpu_bench import make_engine, engine_image; "
            f"a = argparse.Namespace(size={args.size}, steps={args.steps}, cfg={args.cfg}); "
            f"e = make_engine(__import__('pathlib').Path({str(root)!r}), {mode!r}); "
            f"engine_image(e, {ckpt!r}, a, 1, 5); print(time.perf_counter() - t0)")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT))
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - t0


# -- diffusers -----------------------------------------------------------------------------------------------------

def measure_diffusers(family: str, path: Path, args) -> dict:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from nodes.loading.checkpoint import load_checkpoint
    from nodes.loading.configs import CONFIG_ROOT, template

    lc = load_checkpoint(path)
    cfg_dir = FAMILIES[family][0]
    tok = CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77)
    sched = EulerDiscreteScheduler.from_config(template(cfg_dir, "scheduler"))
    kw = dict(vae=lc.vae.to("cuda", torch.float16), unet=lc.unet.to("cuda", torch.float16), scheduler=sched)
    te = lc.text_encoders["text_encoder"].to("cuda", torch.float16)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(text_encoder=te, tokenizer=tok, tokenizer_2=tok,
                                         text_encoder_2=lc.text_encoders["text_encoder_2"].to("cuda", torch.float16),
                                         **kw)
    else:
        pipe = StableDiffusionPipeline(text_encoder=te, tokenizer=tok, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False, **kw)
    pipe.set_progress_bar_config(disable=True)

    def run(batch):
        g = torch.Generator("cpu").manual_seed(1)
        pipe(PROMPT, negative_prompt="", height=args.size, width=args.size, num_inference_steps=args.steps,
             guidance_scale=args.cfg, generator=g, num_images_per_prompt=batch, output_type="np")
        sync()

    out: dict = {}
    for label in ("eager", "compiled_reduce_overhead"):
        if label != "eager":
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
            pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
            pipe.vae.decode = torch.compile(pipe.vae.decode, mode="reduce-overhead", fullgraph=True)
        res: dict = {}
        for batch in (1, args.batch):
            t0 = time.perf_counter()
            run(batch)
            res[f"batch{batch}_first_call_s"] = time.perf_counter() - t0
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                run(batch)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            res[f"batch{batch}"] = {"seconds_per_run": med, "images_per_s": batch / med,
                                    "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
        out[label] = res
        log(f"diffusers {label}:", json.dumps(res))
    pipe = lc = None
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main(family: str, argv=None) -> int:
    ap = argparse.ArgumentParser(description=f"{family} through Chisel's engine beside diffusers (CUDA)")
    ap.add_argument("--size", type=int, default=FAMILIES[family][2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--batch", type=int, default=8, help="the larger batch measured beside batch 1")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--modes", default="off,on,max", help="Chisel --compile modes to measure")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / f"chisel-gpu-bench-{family}")
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        log("this benchmark needs a CUDA GPU")
        return 2
    ckpt = f"random-{family}.safetensors"
    path = args.root / "models" / "checkpoints" / ckpt
    if not path.is_file():
        build_file(family, path, "cuda")
    result: dict = {"family": family, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "size": args.size, "steps": args.steps, "cfg": args.cfg, "batch": args.batch, "chisel": {}}
    for mode in args.modes.split(","):
        result["chisel"][mode] = measure_chisel(args.root, ckpt, args, mode)
        if mode != "off":
            result["chisel"][mode]["second_start_to_first_image_s"] = second_start(args.root, ckpt, args, mode)
        log(f"chisel --compile {mode}:", json.dumps(result["chisel"][mode]))
    if not args.skip_diffusers:
        result["diffusers"] = measure_diffusers(family, path, args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main("sd15"))
