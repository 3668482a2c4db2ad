"""Full-size SDXL (random weights) through Chisel's engine beside diffusers on one CUDA GPU: seconds per image at batch
1 and 8 for each --compile mode, peak memory, first call, second start, engine overhead. See gpu_bench.py.

    python benchmarks/gpu_sdxl.py --json results/gpu_sdxl.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("sdxl"))
