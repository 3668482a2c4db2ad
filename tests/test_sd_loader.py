"""Checkpoint loading: detection of every family, completeness, dtypes, every loader error, offline loading,
diffusers folders, configs from the real layout, the exporter and the model manager."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file
from sd_fixtures import *  # noqa: F401,F403
from sd_fixtures import FakeContext, assert_same_weights, tiny_file, tiny_model

from nodes.loading import errors as E
from nodes.loading.checkpoint import load_checkpoint, load_diffusers_folder, read_header

# -- detection and completeness --------------------------------------------------------------------------------

@pytest.mark.parametrize("family, want", [
    ("sd1", ("sd1", "base", "epsilon")),
    ("sd1_inpaint", ("sd1", "inpaint", "epsilon")),
    ("sd2", ("sd2", "base", "epsilon")),
    ("sd2_v", ("sd2", "base", "v_prediction")),
    ("sdxl", ("sdxl", "base", "epsilon")),
    ("sdxl_refiner", ("sdxl_refiner", "base", "epsilon")),
])
def test_every_family_is_detected_and_loads_completely(family, want):
    lc = load_checkpoint(tiny_file(family))
    det = lc.detection
    assert (det.family, det.variant, det.prediction_type) == want
    assert lc.configs["scheduler"]["prediction_type"] == want[2]
    src = tiny_model(family)
    assert_same_weights(src.unet, lc.unet)
    assert_same_weights(src.vae, lc.vae)
    if src.text_encoder is not None:
        assert_same_weights(src.text_encoder, lc.text_encoders["text_encoder"])
    if src.text_encoder_2 is not None:
        assert_same_weights(src.text_encoder_2, lc.text_encoders["text_encoder_2"])
    # every parameter came from the file, nothing is left on the meta device, no file tensor is unaccounted for
    for mod in [lc.unet, lc.vae, *lc.text_encoders.values()]:
        assert not any(p.is_meta for p in mod.parameters())
    assert lc.report.unused == []
    assert lc.report.metadata_used


@pytest.mark.parametrize("dtype, torch_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_fp32_and_bf16_files_load_exactly(dtype, torch_dtype):
    lc = load_checkpoint(tiny_file("sd1", dtype))
    assert next(lc.unet.parameters()).dtype == torch_dtype
    src = tiny_model("sd1")
    assert_same_weights(src.unet, lc.unet, torch_dtype)
    assert_same_weights(src.text_encoder, lc.text_encoders["text_encoder"], torch_dtype)


def test_extra_tensors_are_reported_and_known_buffers_ignored(tmp_path):
    sd = load_file(str(tiny_file("sd1")))
    _, _, meta = read_header(tiny_file("sd1"))
    sd["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model.diffusion_model.mystery.weight"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    save_file(sd, str(path), metadata=meta)
    rep = load_checkpoint(path).report
    assert rep.unused == ["model.diffusion_model.mystery.weight"]
    assert "alphas_cumprod" in rep.ignored and "model_ema.decay" in rep.ignored
    assert "map to nothing" in rep.summary()


def test_old_sd1_text_encoder_layout_without_text_model_prefix(tmp_path):
    sd = load_file(str(tiny_file("sd1")))
    _, _, meta = read_header(tiny_file("sd1"))
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
           for k, v in sd.items()}
    path = tmp_path / "old.safetensors"
    save_file(old, str(path), metadata=meta)
    lc = load_checkpoint(path)
    assert lc.family == "sd1" and lc.report.unused == []
    assert_same_weights(tiny_model("sd1").text_encoder, lc.text_encoders["text_encoder"])


def test_missing_tensor_fails_instead_of_staying_random(tmp_path):
    sd = load_file(str(tiny_file("sd1")))
    _, _, meta = read_header(tiny_file("sd1"))
    gone = "model.diffusion_model.output_blocks.2.1.transformer_blocks.0.attn2.to_v.weight"
    del sd[gone]
    path = tmp_path / "incomplete.safetensors"
    save_file(sd, str(path), metadata=meta)
    with pytest.raises(E.IncompleteCheckpoint) as exc:
        load_checkpoint(path)
    assert gone in str(exc.value) and "random" in str(exc.value)
    assert exc.value.missing == {"unet": [gone]}


# -- errors a user can act on -------------------------------------------------------------------------------

def test_missing_file_says_where_it_looked_and_what_exists(tmp_path):
    from graph.paths import FileNotFoundInFolders, ModelPaths

    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "other.safetensors").write_bytes(b"x")
    paths = ModelPaths(root=tmp_path)
    with pytest.raises(FileNotFoundInFolders) as exc:
        paths.resolve("checkpoints", "sd15.safetensors")
    msg = str(exc.value)
    assert "sd15.safetensors" in msg and str(tmp_path / "models" / "checkpoints") in msg and "other.safetensors" in msg
    # the loader's own message, for a path given directly
    with pytest.raises(E.CheckpointNotFound) as exc2:
        load_checkpoint(tmp_path / "models" / "checkpoints" / "sd15.safetensors")
    assert "other.safetensors" in str(exc2.value) and "looked for" in str(exc2.value)


def test_missing_file_through_the_engine_is_a_structured_validation_error(tmp_path):
    from sd_fixtures import make_engine

    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    eng, _ = make_engine(tmp_path)
    wf = json.loads(open("workflows/txt2img.json").read())
    wf["nodes"]["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    res = eng.run(wf)
    assert res.status == "error"
    err = [e for e in res.errors if e.node_id == "4"][0]
    assert err.input == "ckpt_name" and "looked in" in err.message


def test_unrecognised_architecture_says_what_was_found(tmp_path):
    path = tmp_path / "weird.safetensors"
    save_file({"backbone.layer1.weight": torch.zeros(2, 2), "backbone.layer2.weight": torch.zeros(2)}, str(path))
    with pytest.raises(E.UnrecognisedArchitecture) as exc:
        load_checkpoint(path)
    assert "backbone.layer1" in str(exc.value) and "2 tensors" in str(exc.value)
    # a UNet without a text encoder
    sd = {k: v for k, v in load_file(str(tiny_file("sd1"))).items() if k.startswith("model.diffusion_model.")}
    path2 = tmp_path / "unet_only.safetensors"
    save_file(sd, str(path2))
    with pytest.raises(E.UnrecognisedArchitecture, match="no text encoder"):
        load_checkpoint(path2)


def test_truncated_and_corrupt_files(tmp_path):
    data = tiny_file("sd1").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(E.CorruptCheckpoint, match="truncated"):
        load_checkpoint(cut)
    html = tmp_path / "page.safetensors"
    html.write_bytes(b"<!DOCTYPE html><html><body>Not found</body></html>")
    with pytest.raises(E.CorruptCheckpoint, match="not a safetensors file"):
        load_checkpoint(html)
    bad = tmp_path / "badheader.safetensors"
    bad.write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"\0" * 64)
    with pytest.raises(E.CorruptCheckpoint, match="header"):
        load_checkpoint(bad)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(E.CorruptCheckpoint):
        load_checkpoint(empty)


def _without(family: str, path, drop=(), flatten=()):
    """The tiny ``family`` checkpoint (metadata kept) with tensors dropped or flattened to one dimension."""
    _, _, meta = read_header(tiny_file(family))
    sd = load_file(str(tiny_file(family)))
    sd = {k: v.flatten().contiguous() if k in flatten else v for k, v in sd.items() if k not in drop}
    save_file(sd, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("family, key", [
    ("sd2", "cond_stage_model.model.token_embedding.weight"),
    ("sdxl", "conditioner.embedders.1.model.token_embedding.weight"),
    ("sdxl_refiner", "conditioner.embedders.0.model.token_embedding.weight"),
])
def test_a_text_encoder_without_its_token_embedding_is_a_loader_error(tmp_path, family, key):
    """Detection reads the text width from the token embedding (a raw KeyError / IndexError before)."""
    path = _without(family, tmp_path / "no_tokens.safetensors", drop={key})
    with pytest.raises(E.IncompleteCheckpoint) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and key in str(exc.value)
    assert key in [k for keys in exc.value.missing.values() for k in keys]
    path = _without(family, tmp_path / "flat_tokens.safetensors", flatten={key})
    with pytest.raises(E.UnrecognisedArchitecture, match="needs at least 2 dimensions") as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and key in str(exc.value)


@pytest.mark.parametrize("family, key", [
    ("sd1", "model.diffusion_model.input_blocks.1.0.out_layers.3.weight"),
    ("sd1", "model.diffusion_model.input_blocks.1.1.proj_in.weight"),
    ("sd1", "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"),
    ("sd1", "first_stage_model.decoder.conv_in.weight"),
    ("sd2", "cond_stage_model.model.positional_embedding"),
    ("sd2", "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight"),
])
def test_a_tensor_the_layout_needs_missing_or_flattened_is_a_loader_error_naming_it(tmp_path, family, key):
    """The configs are read from the shapes: a tensor they need that is absent or of the wrong rank is named."""
    assert key in read_header(tiny_file(family))[0]
    path = _without(family, tmp_path / "missing.safetensors", drop={key})
    with pytest.raises(E.IncompleteCheckpoint) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and key in str(exc.value)
    path = _without(family, tmp_path / "flat.safetensors", flatten={key})
    with pytest.raises(E.CheckpointError) as exc:  # the layout's reading, or the final shape check, says so
        load_checkpoint(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("key, value, match", [
    ("chisel.vae", {"norm_num_groups": 0}, "vae cannot be built"),
    ("chisel.text_encoder", {"num_attention_heads": "x"}, "text_encoder cannot be built"),
    ("chisel.text_encoder", {"layer_norm_eps": "x"}, "text_encoder cannot be built"),
])
def test_metadata_of_the_wrong_type_or_value_is_a_loader_error(tmp_path, key, value, match):
    """The chisel.* metadata sets what shapes cannot tell; a value the libraries refuse (a raw ZeroDivisionError or
    huggingface_hub's validation error before) names the file and the entry."""
    _, _, meta = read_header(tiny_file("sd1"))
    path = tmp_path / "bad_meta.safetensors"
    save_file(load_file(str(tiny_file("sd1"))), str(path), metadata={**meta, key: json.dumps(value)})
    with pytest.raises(E.UnrecognisedArchitecture, match=match) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and key in str(exc.value)


@pytest.mark.parametrize("key", ["model.diffusion_model.input_blocks.0.0.weight",
                                 "first_stage_model.decoder.conv_in.weight",
                                 "cond_stage_model.transformer.text_model.final_layer_norm.weight"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_a_weight_of_a_non_float_dtype_is_a_loader_error_naming_it(tmp_path, key, dtype):
    """A raw RuntimeError from load_state_dict before."""
    _, _, meta = read_header(tiny_file("sd1"))
    sd = load_file(str(tiny_file("sd1")))
    sd[key] = sd[key].to(dtype)
    path = tmp_path / "ints.safetensors"
    save_file(sd, str(path), metadata=meta)
    with pytest.raises(E.CorruptCheckpoint, match="needs floating-point values") as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and str(dtype).replace("torch.", "") in str(exc.value)


def test_lora_vae_and_controlnet_given_as_checkpoints(tmp_path):
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}
    path = tmp_path / "style_lora.safetensors"
    save_file(lora, str(path))
    with pytest.raises(E.WrongFileKind) as exc:
        load_checkpoint(path)
    assert exc.value.kind == "lora" and "LoraLoader" in str(exc.value) and "models/loras" in str(exc.value)
    vae = {k[len("first_stage_model."):]: v for k, v in load_file(str(tiny_file("sd1"))).items()
           if k.startswith("first_stage_model.")}
    path2 = tmp_path / "vae.safetensors"
    save_file(vae, str(path2))
    with pytest.raises(E.WrongFileKind) as exc2:
        load_checkpoint(path2)
    assert exc2.value.kind == "vae" and "VAELoader" in str(exc2.value)


def test_a_file_without_metadata_loads_by_its_layout_alone(tmp_path):
    sd = load_file(str(tiny_file("sd1_plain")))
    path = tmp_path / "plain.safetensors"
    save_file(sd, str(path))  # no __metadata__
    lc = load_checkpoint(path)
    assert not lc.report.metadata_used and lc.report.unused == []
    assert lc.configs["unet"]["attention_head_dim"] == 8 and lc.configs["vae"]["scaling_factor"] == 0.18215
    assert_same_weights(tiny_model("sd1_plain").vae, lc.vae)


# -- offline ---------------------------------------------------------------------------------------------------

def test_loading_and_encoding_work_with_networking_disabled(no_network, tmp_path):
    from nodes.memory.manager import ModelManager

    mgr = ModelManager("cpu")
    bundle = mgr.load_checkpoint(tiny_file("sdxl"))
    cond, pooled = bundle.clip.encode("a photo of a cat")
    assert cond.shape == (1, 77, 80) and pooled.shape == (1, 48)
    vae = mgr.load_vae(_write_vae(tmp_path))
    assert vae.decode(torch.zeros(1, 4, 2, 2)).shape == (1, 16, 16, 3)


def _write_vae(tmp_path):
    vae = {k[len("first_stage_model."):]: v for k, v in load_file(str(tiny_file("sd1"))).items()
           if k.startswith("first_stage_model.")}
    _, _, meta = read_header(tiny_file("sd1"))
    path = tmp_path / "vae.safetensors"
    save_file(vae, str(path), metadata={"chisel.vae": meta["chisel.vae"]})
    return path


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_a_vae_file_missing_or_flattening_a_tensor_its_layout_needs_names_it(tmp_path, layout):
    from nodes.loading.vae_file import load_vae_file

    if layout == "ldm":
        sd = load_file(str(_write_vae(tmp_path)))
    else:
        sd = {k: v.contiguous() for k, v in tiny_model("sd1").vae.state_dict().items()}
        path = tmp_path / "diffusers_vae.safetensors"
        save_file(sd, str(path), metadata={"chisel.vae": read_header(tiny_file("sd1"))[2]["chisel.vae"]})
        assert_same_weights(tiny_model("sd1").vae, load_vae_file(path)[0], torch.float32)  # the layout loads
    key = "decoder.conv_in.weight"
    missing, flat = tmp_path / "missing.safetensors", tmp_path / "flat.safetensors"
    meta = {"chisel.vae": read_header(tiny_file("sd1"))[2]["chisel.vae"]}
    save_file({k: v for k, v in sd.items() if k != key}, str(missing), metadata=meta)
    save_file({**sd, key: sd[key].flatten().contiguous()}, str(flat), metadata=meta)
    with pytest.raises(E.IncompleteCheckpoint, match=key) as exc:
        load_vae_file(missing)
    assert str(missing) in str(exc.value)
    with pytest.raises(E.UnrecognisedArchitecture, match=f"{key} has shape") as exc:
        load_vae_file(flat)
    assert str(flat) in str(exc.value)


def test_standalone_vae_file_loads_completely(tmp_path):
    from nodes.loading.vae_file import load_vae_file

    vae, cfg = load_vae_file(_write_vae(tmp_path))
    assert_same_weights(tiny_model("sd1").vae, vae)
    assert cfg["norm_num_groups"] == 4


def test_diffusers_folder_loads_offline_and_completely(tmp_path, no_network):
    src = tiny_model("sd1")
    folder = tmp_path / "tiny-sd1-diffusers"
    src.unet.save_pretrained(folder / "unet")
    src.vae.save_pretrained(folder / "vae")
    src.text_encoder.save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "EulerDiscreteScheduler"]}))
    lc = load_diffusers_folder(folder)
    assert lc.family == "sd1"
    assert_same_weights(src.unet, lc.unet, torch.float32)
    assert_same_weights(src.text_encoder, lc.text_encoders["text_encoder"], torch.float32)
    # chosen in CheckpointLoaderSimple by its model_index.json, and listed among the checkpoints
    from graph.paths import ModelPaths
    from nodes.library.loaders import CheckpointLoaderSimple, checkpoint_choices

    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    moved = tmp_path / "models" / "checkpoints" / "tiny-diffusers"
    folder.rename(moved)
    folder = moved
    assert "tiny-diffusers/model_index.json" in checkpoint_choices(ModelPaths(root=tmp_path))
    from nodes.memory.manager import ModelManager

    ctx = FakeContext(files={"ckpt_name": folder / "model_index.json"})
    ctx.services = type("S", (), {"models": ModelManager("cpu")})()
    model, clip, vae = CheckpointLoaderSimple().run(ctx, ckpt_name="tiny-diffusers/model_index.json")
    assert model.family == "sd1" and clip.encode("a cat")[0].shape == (1, 77, 32)
    # an incomplete folder fails
    sd = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    sd.pop("decoder.conv_out.weight")
    save_file(sd, str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(E.IncompleteCheckpoint):
        load_diffusers_folder(folder)


def _tiny_diffusers_folder(folder):
    src = tiny_model("sd1")
    src.unet.save_pretrained(folder / "unet")
    src.vae.save_pretrained(folder / "vae")
    src.text_encoder.save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}))
    return folder


@pytest.mark.parametrize("file, content, match", [
    ("model_index.json", "{\"unet\": [\"diffusers\", ", "model_index.json .*is not valid JSON"),
    ("model_index.json", "[\"unet\"]", "model_index.json .*holds a JSON list, not an object"),
    ("model_index.json", "{\"text_encoder\": \"CLIPTextModel\"}", "'text_encoder' is \"CLIPTextModel\", not \\[library"),
    ("model_index.json", b"\xff\xfe{}", "model_index.json .*is not valid JSON"),
    ("scheduler/scheduler_config.json", "{\"prediction_type\": ", "scheduler_config.json .*is not valid JSON"),
    ("unet/config.json", "{\"in_channels\": ", "unet"),
    ("text_encoder/config.json", "[]", "text_encoder.*holds a JSON list"),
    ("vae/config.json", "{\"block_out_channels\": 7}", "vae"),
])
def test_a_diffusers_folder_with_a_malformed_config_is_a_loader_error(tmp_path, file, content, match):
    folder = _tiny_diffusers_folder(tmp_path / "pipe")
    target = folder / file
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(E.CheckpointError, match=match) as exc:
        load_diffusers_folder(folder)
    assert str(folder) in str(exc.value)


# -- configs: published layouts load by shape alone -----------------------------------------------------------

def _meta_modules(name):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nodes.loading.configs import template

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(template(name, "unet"))
        vae = AutoencoderKL.from_config(template(name, "vae"))
        tes = {}
        for te in ("text_encoder", "text_encoder_2"):
            try:
                cfg = template(name, te)
            except FileNotFoundError:
                continue
            conf = CLIPTextConfig(**{k: v for k, v in cfg.items() if k not in ("architectures",)})
            cls = CLIPTextModelWithProjection if "WithProjection" in cfg["architectures"][0] else CLIPTextModel
            tes[te] = cls(conf)
    return unet, vae, tes


@pytest.mark.parametrize("name, family, in_channels", [
    ("sd15", "sd1", 4), ("sd15", "sd1", 9), ("sd2", "sd2", 4), ("sdxl", "sdxl", 4), ("sdxl_refiner", "sdxl_refiner", 4),
])
def test_full_size_layouts_give_the_published_configs_without_metadata(name, family, in_channels):
    """A full-size file (built on the meta device, written by the exporter's key maps) has no chisel metadata;
    the configs inferred from its shapes alone must rebuild the published architecture exactly."""
    from diffusers import UNet2DConditionModel

    from nodes.loading.configs import infer_configs, template
    from nodes.loading.detect import detect
    from nodes.testing.export import ldm_state_dict

    unet, vae, tes = _meta_modules(name)
    if in_channels != 4:
        from accelerate import init_empty_weights

        with init_empty_weights():
            unet = UNet2DConditionModel.from_config({**template(name, "unet"), "in_channels": in_channels})
    sd = ldm_state_dict(family, unet, vae, tes.get("text_encoder"), tes.get("text_encoder_2"))
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    det = detect(shapes, {})
    assert det.family == family and det.in_channels == in_channels
    det.prediction_type = det.prediction_type or "epsilon"
    cfgs = infer_configs(det, shapes, {})
    want_unet = dict(unet.config)
    from accelerate import init_empty_weights

    with init_empty_weights():
        got_unet = dict(UNet2DConditionModel.from_config(cfgs["unet"]).config)
    for k in ("_use_default_values", "_name_or_path"):
        want_unet.pop(k, None)
        got_unet.pop(k, None)
    assert got_unet == want_unet
    for k in ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "scaling_factor"):
        assert cfgs["vae"][k] == vae.config[k] or list(cfgs["vae"][k]) == list(vae.config[k])
    for te_name, te in tes.items():
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
                  "vocab_size", "max_position_embeddings"):
            assert cfgs[te_name][k] == getattr(te.config, k), (te_name, k)


def test_shipped_configs_agree_with_their_derivation():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("derive", Path("scripts/derive_sd_configs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.check(mod.derive()) == []


def test_exporter_refuses_what_would_not_load_back(tmp_path):
    from nodes.testing.export import write_sd1_checkpoint

    m = tiny_model("sd1")
    # a text encoder whose width does not match the UNet's cross-attention is not an SD1 layout
    from nodes.testing.tiny import _clip

    with pytest.raises(E.UnrecognisedArchitecture):
        write_sd1_checkpoint(tmp_path / "bad.safetensors", m.unet, m.vae, _clip(48, 1, 4, "quick_gelu"))
    assert not (tmp_path / "bad.safetensors").exists()


# -- model manager -----------------------------------------------------------------------------------------------

class _FakeGpuManager:
    @staticmethod
    def make(budget, low_vram=False):
        from nodes.memory.manager import ModelManager

        class M(ModelManager):
            moves: list = []

            def _move(self, mm, device):
                self.moves.append((mm.name, device.type))

        m = M("cuda", dtype=torch.float32, device_budget=budget, low_vram=low_vram)
        m.moves = []
        return m


def test_manager_moves_least_recently_used_out_when_the_budget_is_short():
    m = _FakeGpuManager.make(budget=3000)
    a = m.register("a", torch.nn.Linear(20, 20, bias=False), "f1", torch.float32)  # 1600 bytes
    b = m.register("b", torch.nn.Linear(20, 20, bias=False), "f2", torch.float32)
    c = m.register("c", torch.nn.Linear(10, 10, bias=False), "f3", torch.float32)  # 400 bytes
    with m.use(a):
        pass
    with m.use(c):
        pass
    assert a.on_device and c.on_device
    with m.use(b):  # needs 1600: a (least recently used) goes back to the CPU, c stays
        assert b.on_device and not a.on_device and c.on_device
        with m.use(a):  # a needs room; b is in use (pinned), so c goes
            assert a.on_device and b.on_device and not c.on_device
    assert ("a", "cpu") in m.moves
    s = m.stats()
    # both in-use modules are on the device even though together they exceed the budget (nothing else to evict)
    assert s["model_bytes_device"] == 3200 and s["device_budget"] == 3000


def test_low_vram_mode_offloads_after_each_use():
    m = _FakeGpuManager.make(budget=10**9, low_vram=True)
    a = m.register("unet", torch.nn.Linear(4, 4), "f", torch.float32)
    with m.use(a):
        assert a.on_device
    assert not a.on_device and m.moves == [("unet", "cuda"), ("unet", "cpu")]


def test_same_file_is_never_loaded_twice(tmp_path):
    from nodes.memory.manager import ModelManager

    mgr = ModelManager("cpu")
    b1 = mgr.load_checkpoint(tiny_file("sd1"))
    b2 = mgr.load_checkpoint(tiny_file("sd1"))
    assert b1 is b2 and mgr.loads == 1
    assert b1.model.__chisel_nbytes__() == {} and b1.clip.__chisel_nbytes__() == {}
    stats = mgr.stats()
    assert stats["files_loaded"] == 1 and stats["model_bytes_ram"] > 0
    assert {m["name"] for m in stats["models"]} == {"unet", "vae", "text_encoder"}
    ctx = FakeContext(files={"ckpt_name": tiny_file("sd1")})
    ctx.services = type("S", (), {"models": mgr})()
    from nodes.library.loaders import CheckpointLoaderSimple

    model, clip, vae = CheckpointLoaderSimple().run(ctx, ckpt_name="x")
    assert model is b1.model and mgr.loads == 1
