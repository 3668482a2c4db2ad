"""Write tiny random-weight checkpoints of the real Stable Diffusion architectures in their real single-file layout.

    python scripts/make_tiny_checkpoint.py sd1 models/checkpoints/tiny-sd1.safetensors
    python scripts/make_tiny_checkpoint.py --all /tmp/tiny            # one file per family
    python scripts/make_tiny_checkpoint.py sdxl out.safetensors --dtype fp32 --seed 3
    python scripts/make_tiny_checkpoint.py sd1 models/checkpoints/tiny-sd1.safetensors \
        --gligen models/gligen/tiny-gligen.safetensors                 # plus a GLIGEN model for it

Families: sd1, sd1_inpaint, sd2, sd2_v, sdxl, sdxl_refiner. The files have the key names and tensor layouts of the
published checkpoints (model.diffusion_model.*, first_stage_model.*, cond_stage_model.* / conditioner.embedders.*)
with small widths; what shapes cannot tell (head counts, norm groups, prediction type) is in the header's chisel.*
metadata. Images they make are noise: they exist to exercise loading and the pipeline.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"fp16": "float16", "fp32": "float32", "bf16": "bfloat16"}


def main(argv=None) -> int:
    from nodes.testing import tiny

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", nargs="?", choices=tiny.FAMILIES)
    ap.add_argument("output", nargs="?", help="the .safetensors file to write (a folder with --all)")
    ap.add_argument("--all", metavar="FOLDER", help="write every family to FOLDER/tiny-<family>.safetensors")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gligen", metavar="FILE", help="also write a tiny GLIGEN text-box model for FAMILY's UNet (in "
                    "the published single-file layout)")
    args = ap.parse_args(argv)

    if args.gligen and not args.family:
        ap.error("--gligen needs FAMILY OUTPUT")
    import torch

    dtype = getattr(torch, DTYPES[args.dtype])
    jobs = []
    if args.all:
        jobs = [(f, Path(args.all) / f"tiny-{f}.safetensors") for f in tiny.FAMILIES]
    elif args.family and args.output:
        jobs = [(args.family, Path(args.output))]
    else:
        ap.error("give FAMILY OUTPUT, or --all FOLDER")
    for family, out in jobs:
        path, _ = tiny.write(family, out, seed=args.seed, dtype=dtype)
        print(f"{family}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.gligen:
        from nodes.testing import gligen

        path = gligen.write(args.gligen, gligen.build(tiny.build(args.family, args.seed).unet, args.seed), dtype=dtype)
        print(f"GLIGEN for {args.family}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
