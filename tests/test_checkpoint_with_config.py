"""CheckpointLoader: the tensors give the architecture, an original LDM YAML config gives the prediction type, the
training noise schedule and the latent scale (checked against the schedule's formula); the plain loader's MODEL
is left as it was; a broken config is a clear error."""
from __future__ import annotations

import math

import pytest
import torch
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, tiny_file

from nodes.library.loaders import CheckpointLoader, CheckpointLoaderSimple
from nodes.loading.ldm_config import ConfigError

V_CONFIG = """
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.001
    linear_end: 0.02
    timesteps: 1000
    scale_factor: 0.2
    unet_config:
      params:
        use_linear_in_transformer: true
"""


def test_config_sets_prediction_schedule_and_scale(tmp_path):
    cfg = tmp_path / "v2-inference-v.yaml"
    cfg.write_text(V_CONFIG)
    ckpt = tiny_file("sd1", "fp32")
    ctx = FakeContext(files={"config_name": cfg, "ckpt_name": ckpt})
    model, clip, vae = CheckpointLoader().run(ctx, cfg.name, ckpt.name)
    plain = CheckpointLoaderSimple().run(FakeContext(files={"ckpt_name": ckpt}), ckpt.name)[0]
    ms = model.model_sampling
    assert ms.prediction_type == "v_prediction" and model.latent_format.scale_factor == 0.2
    betas = [(math.sqrt(0.001) + (math.sqrt(0.02) - math.sqrt(0.001)) * i / 999) ** 2 for i in range(1000)]
    ac, sig = 1.0, []
    for b in betas:
        ac *= 1 - b
        sig.append(math.sqrt((1 - ac) / ac))
    assert torch.allclose(ms.sigmas.double(), torch.tensor(sig, dtype=torch.float64), rtol=1e-5)
    # the same modules, and the plain loader's MODEL keeps the file's own settings
    assert model.unet is plain.unet
    assert plain.model_sampling.prediction_type == "epsilon" and plain.latent_format.scale_factor != 0.2


def test_prediction_only_config_keeps_the_schedule(tmp_path):
    cfg = tmp_path / "v.yaml"
    cfg.write_text('model:\n  params:\n    parameterization: "v"\n')
    ckpt = tiny_file("sd1", "fp32")
    model = CheckpointLoader().run(FakeContext(files={"config_name": cfg, "ckpt_name": ckpt}), "v.yaml",
                                   ckpt.name)[0]
    plain = CheckpointLoaderSimple().run(FakeContext(files={"ckpt_name": ckpt}), ckpt.name)[0]
    assert model.model_sampling.prediction_type == "v_prediction"
    assert torch.equal(model.model_sampling.sigmas, plain.model_sampling.sigmas)


@pytest.mark.parametrize("text, match", [("model: [1, 2", "not a readable YAML"), ("just: text", "model.params"),
                                         ("model:\n  params:\n    parameterization: x0", "neither"),
                                         ("model:\n  params:\n    timesteps: many", "wrong type")])
def test_broken_configs_are_clear_errors(tmp_path, text, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    ckpt = tiny_file("sd1", "fp32")
    with pytest.raises(ConfigError, match=match):
        CheckpointLoader().run(FakeContext(files={"config_name": cfg, "ckpt_name": ckpt}), "bad.yaml", ckpt.name)
