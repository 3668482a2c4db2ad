"""Full-size SD15 (random weights) through Chisel's engine beside diffusers on one CUDA GPU: seconds per image at batch
1 and 8 for each --compile mode, peak memory, first call, second start, engine overhead. See gpu_bench.py.

    python benchmarks/gpu_sd15.py --json results/gpu_sd15.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("sd15"))
