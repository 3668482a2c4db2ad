"""Full-size SD1.5 through Chisel beside diffusers' eager pipeline, on random weights.

1. Build an SD1.5-shaped model (UNet 860M, VAE, CLIP-L; the published configs shipped in nodes/configs/sd15) with
   random weights — on the GPU when there is one — and save it as one fp16 ``.safetensors`` in the original LDM key
   layout, *without* Chisel metadata (it must load by its layout alone).
2. Load it through Chisel's loader/model manager (timed: from the page cache, and the move to the device).
3. txt2img with Chisel's nodes (CLIPTextEncode x2, EmptyLatentImage, KSampler euler/normal, VAEDecode): 512x512,
   20 steps, CFG 7.5, batch 1, end to end (prompt to image on the host), after one warm-up run; peak device memory.
4. The same with diffusers' StableDiffusionPipeline (eager, fp16, EulerDiscreteScheduler, same modules), same run.

    python benchmarks/gpu_sd15.py                       # on a CUDA machine; prints and writes JSON
    python benchmarks/gpu_sd15.py --device cpu --load-only   # only the file build and load timing (CPU)

On the lent GPU machine diffusers is missing: carry its wheel (see /work/.library/device/README.md):
    pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1
    run: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. \\
         PYTHONUNBUFFERED=1 python3 benchmarks/gpu_sd15.py --json $OUT/gpu_sd15.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def log(*a):
    print(*a, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_file(path: Path, device: torch.device, fast_random: bool) -> tuple:
    """Random SD1.5-shaped modules (on ``device``) and their fp16 LDM single file at ``path``."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.loading.configs import template
    from nodes.testing.export import ldm_state_dict

    te_cfg = {k: v for k, v in template("sd15", "text_encoder").items() if k not in ("architectures",)}
    t0 = time.perf_counter()
    if fast_random:  # CPU: shapes from meta modules, values from a fast fill (only loading is timed)
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(template("sd15", "unet"))
            vae = AutoencoderKL.from_config(template("sd15", "vae"))
            te = CLIPTextModel(CLIPTextConfig(**te_cfg))
        shapes = {k: v.shape for k, v in ldm_state_dict("sd1", unet, vae, te).items()}
        gen = torch.Generator().manual_seed(0)
        sd = {}
        for k, s in shapes.items():
            if k.endswith("position_ids"):
                sd[k] = torch.arange(s[-1], dtype=torch.int64)[None]
            else:
                sd[k] = (torch.rand(s, generator=gen, dtype=torch.float32) * 0.04 - 0.02).to(torch.float16)
        modules = None
    else:
        with torch.device(device):
            unet = UNet2DConditionModel.from_config(template("sd15", "unet"))
            vae = AutoencoderKL.from_config(template("sd15", "vae"))
            te = CLIPTextModel(CLIPTextConfig(**te_cfg))
        for m in (unet, vae, te):
            m.to(torch.float16).eval().requires_grad_(False)
        sd = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
              for k, v in ldm_state_dict("sd1", unet, vae, te).items()}
        modules = (unet, vae, te)
    log(f"built random SD1.5 weights in {time.perf_counter() - t0:.1f}s ({sum(v.numel() for v in sd.values()) / 1e6:.0f}M values)")
    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    log(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f}s")
    return modules


def time_loads(path: Path, device: torch.device, repeats: int = 2) -> dict:
    from safetensors.torch import load_file

    from nodes.loading.checkpoint import load_checkpoint
    from nodes.memory.manager import ModelManager

    out = {}
    _ = path.read_bytes()  # into the page cache
    t0 = time.perf_counter()
    raw = load_file(str(path))
    out["safetensors_load_file_s"] = time.perf_counter() - t0
    del raw
    gc.collect()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lc = load_checkpoint(path)
        times.append(time.perf_counter() - t0)
        rep = lc.report
        del lc
        gc.collect()
    out["chisel_load_s"] = min(times)
    out["chisel_load_all_s"] = times
    out["chisel_load_breakdown_s"] = rep.timings
    out["detected"] = rep.description
    out["metadata_used"] = rep.metadata_used
    out["unused_tensors"] = rep.unused
    # through the manager, including the cast to the compute dtype and (on a GPU) the move to the device
    mgr = ModelManager(device)
    t0 = time.perf_counter()
    bundle = mgr.load_checkpoint(path)
    out["manager_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with mgr.use(bundle.model.unet, bundle.vae.module, *[e.module for e in bundle.clip.encoders]):
        sync(device)
    out["to_device_s"] = time.perf_counter() - t0
    out["compute_dtype"] = str(mgr.compute_dtype()).replace("torch.", "")
    return out, mgr, bundle


def chisel_run(bundle, size: int, steps: int, cfg: float, seed: int, prompt: str):
    from nodes.library.conditioning import CLIPTextEncode
    from nodes.library.latent import EmptyLatentImage, VAEDecode
    from nodes.library.sampling import KSampler

    pos = CLIPTextEncode().run(None, text=prompt, clip=bundle.clip)[0]
    neg = CLIPTextEncode().run(None, text="", clip=bundle.clip)[0]
    lat = EmptyLatentImage().run(None, width=size, height=size, batch_size=1)[0]
    out = KSampler().run(None, model=bundle.model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                         scheduler="normal", positive=pos, negative=neg, latent_image=lat, denoise=1.0)[0]
    return VAEDecode().run(None, samples=out, vae=bundle.vae)[0]  # float32 on the host


def timed(fn, device, runs: int) -> dict:
    fn()  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    res = {"seconds_per_image": statistics.median(times), "all_s": times}
    if device.type == "cuda":
        res["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        res["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--file", default="/tmp/chisel-bench/sd15-random.safetensors")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--load-only", action="store_true")
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "size": args.size, "steps": args.steps, "cfg": args.cfg}
    path = Path(args.file)
    modules = None
    if not path.is_file() or (device.type == "cuda" and not args.load_only):
        modules = build_file(path, device, fast_random=device.type != "cuda")
    if modules is not None:
        for m in modules:
            m.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()

    loads, mgr, bundle = time_loads(path, device)
    result["load"] = loads
    log(json.dumps(loads, indent=1))
    if args.load_only:
        _finish(result, args)
        return 0

    prompt = "a photo of an astronaut riding a horse on mars"
    attn = type(bundle.model.unet.module.down_blocks[0].attentions[0].transformer_blocks[0].attn1.processor).__name__
    result["chisel_attention_processor"] = attn
    result["chisel"] = timed(lambda: chisel_run(bundle, args.size, args.steps, args.cfg, 42, prompt), device,
                             args.runs)
    log("chisel:", json.dumps(result["chisel"]))
    mgr.free(unload=True)
    del bundle
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not args.skip_diffusers:
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
        from transformers import CLIPTokenizer

        from nodes.loading.configs import CONFIG_ROOT, template

        if modules is None:
            lc = __import__("nodes.loading.checkpoint", fromlist=["load_checkpoint"]).load_checkpoint(path)
            modules = (lc.unet, lc.vae, lc.text_encoders["text_encoder"])
        dt = torch.float16 if device.type == "cuda" else torch.float32  # fp16 on a CPU is far slower
        unet, vae, te = (m.to(device, dt) for m in modules)
        tok = CLIPTokenizer.from_pretrained(str(CONFIG_ROOT / "clip_tokenizer"), model_max_length=77)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                       scheduler=EulerDiscreteScheduler.from_config(template("sd15", "scheduler")),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)

        def run_diffusers():
            g = torch.Generator("cpu").manual_seed(42)
            return pipe(prompt, negative_prompt="", height=args.size, width=args.size,
                        num_inference_steps=args.steps, guidance_scale=args.cfg, generator=g,
                        output_type="np").images

        result["diffusers_eager"] = timed(run_diffusers, device, args.runs)
        log("diffusers:", json.dumps(result["diffusers_eager"]))
    _finish(result, args)
    return 0


def _finish(result: dict, args) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
