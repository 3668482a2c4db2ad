"""PNGs written in place (the CLI: no server file writer) appear under their final name only when complete.

The fault is real: a child process whose file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails
with EFBIG, as on a full disk) stops PIL's PNG writer part-way through the file."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from graph.atomic_files import write_atomically

REPO = Path(__file__).resolve().parent.parent
LIMIT = 32 << 10  # bytes a file of the child may reach

CHILD = """
import json, sys
from pathlib import Path
import torch
from nodes.imaging.files import save_images

folder, prefix = Path(sys.argv[1]), sys.argv[2]
g = torch.Generator().manual_seed(0)
small = torch.full((1, 16, 16, 3), 0.5)                # a few hundred bytes of PNG
noisy = torch.rand((1, 128, 128, 3), generator=g)      # ~49 KB of pixels that do not compress
out = {"small": save_images(small, folder, prefix, "output", None, 4)}
try:
    save_images(noisy, folder, prefix, "output", None, 4)
except OSError as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_a_png_write_that_fails_midway_leaves_no_file_under_its_final_name(tmp_path):
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "shot"], cwd=REPO, capture_output=True,
                       text=True, timeout=120, preexec_fn=_limited)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # the small picture was written whole (the limit does not stop every write) ...
    assert out["small"] == [{"filename": "shot_00001_.png", "subfolder": "", "type": "output"}]
    with Image.open(tmp_path / "shot_00001_.png") as im:
        im.load()
        assert im.size == (16, 16)
    # ... the large one failed part-way, and left nothing: not under its final name, not as a temporary file
    assert "File too large" in out.get("error", ""), out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot_00001_.png"]


def test_an_atomic_write_never_replaces_a_file_and_cleans_up_after_a_failing_writer(tmp_path):
    taken = tmp_path / "x_00001_.png"
    taken.write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError):
        write_atomically(taken, lambda tmp: tmp.write_bytes(b"mine"))
    assert taken.read_bytes() == b"someone else's file"

    def fails_midway(tmp):
        with open(tmp, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n half a picture")
        raise RuntimeError("the encoder stopped")

    with pytest.raises(RuntimeError, match="the encoder stopped"):
        write_atomically(tmp_path / "x_00002_.png", fails_midway)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_00001_.png"]
    # and a writer that finishes gives the file under its name, nothing else
    assert write_atomically(tmp_path / "x_00003_.png", lambda tmp: tmp.write_bytes(b"whole")).read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_00001_.png", "x_00003_.png"]
