"""Load a Stable Diffusion checkpoint — single-file (LDM/SGM layout) or a diffusers folder — completely and offline.

Steps for a single file, each of which can fail with an error a user can act on (:mod:`nodes.loading.errors`):

1. Read the header only (safetensors) or the weights-only pickle (:mod:`nodes.loading.weights`): names, shapes, dtypes,
   metadata.
2. Detect the family from names and shapes (:mod:`nodes.loading.detect`); infer each component's config
   (:mod:`nodes.loading.configs`).
3. Build the diffusers/transformers modules on the meta device (no memory, no random init) and work out, with the
   generalised key maps, which file tensor each parameter comes from: a parameter with no tensor fails the load
   (nothing is left random); a file tensor that maps to nothing is reported (``LoadReport.unused``), apart from
   tensors known to carry no weights (noise-schedule buffers, EMA copies, position ids: ``LoadReport.ignored``).
4. Read just the tensors needed, convert them with diffusers' ``single_file_utils`` converters, and assign them to the
   modules (``load_state_dict(assign=True)``: no copy, no second init); verify every parameter was set.

No config, tokenizer or weight is ever fetched: configs come from ``nodes/configs`` and the file itself.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nodes.loading import keymaps as km
from nodes.loading.configs import infer_configs
from nodes.loading.detect import Detection, TextEncoderSpec, detect, not_a_checkpoint
from nodes.loading.errors import (
    CheckpointNotFound,
    CorruptCheckpoint,
    IncompleteCheckpoint,
    UnrecognisedArchitecture,
)
from nodes.loading.libraries import import_model_libraries
from nodes.loading.progress import IMPORTING, READING, Report, Stages
from nodes.loading.weights import PICKLE_SUFFIXES, WeightFile, read_header  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

# What a checkpoint load reports, in order (nodes.loading.progress); the text encoders make one stage each way.
BUILDING = {"unet": "building the UNet", "vae": "building the VAE", "text": "building the text encoders"}
LOADING = {"unet": "loading the UNet weights", "vae": "loading the VAE weights",
           "text": "loading the text encoder weights"}
CHECKPOINT_STAGES = (IMPORTING, READING, *BUILDING.values(), *LOADING.values())
FOLDER_STAGES = (IMPORTING, "loading the UNet", "loading the VAE", "loading the text encoders")


def _part(component: str) -> str:
    return component if component in ("unet", "vae") else "text"


IGNORED_PATTERNS = [re.compile(p) for p in (
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|"
    r"log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|"
    r"posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|logvar|lvlb_weights|v_pred|"
    r"model_ema\.decay|model_ema\.num_updates)$",
    r"^model_ema\.",  # EMA copies of the UNet (the non-EMA weights are used, as diffusers does)
    r"\.position_ids$",
    r"^cond_stage_model\.model\.(text_projection|logit_scale)$",  # SD2 carries OpenCLIP's unused projection
    r"^conditioner\.embedders\.\d+\.model\.logit_scale$",
    r"^denoiser\.(sigmas|log_sigmas)$",  # SGM's copy of the noise schedule
    r"\.attn_mask$",  # OpenCLIP's causal mask buffer, when saved
    r"^embedder\.",  # unCLIP's image encoder: read by unCLIPCheckpointLoader (nodes.vision.clip_vision)
    r"^noise_augmentor\.",  # unCLIP's embedding statistics and noise schedule (nodes.vision.unclip)
)]


def is_ignored(key: str) -> bool:
    return any(p.search(key) for p in IGNORED_PATTERNS)


@dataclass
class LoadReport:
    path: str
    family: str
    description: str
    file_bytes: int = 0
    file_dtypes: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)  # component -> number of parameter tensors set
    ignored: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    metadata_used: bool = False

    def summary(self) -> str:
        total = sum(self.timings.values())
        parts = [f"{self.description} from {self.path} in {total:.2f}s",
                 ", ".join(f"{c}: {n} tensors" for c, n in self.parameters.items())]
        if self.ignored:
            parts.append(f"{len(self.ignored)} non-weight tensors ignored")
        if self.unused:
            parts.append(f"{len(self.unused)} file tensors map to nothing: {', '.join(self.unused[:5])}"
                         + (" ..." if len(self.unused) > 5 else ""))
        return "; ".join(parts)


@dataclass
class LoadedCheckpoint:
    path: Path
    detection: Detection
    configs: dict[str, dict]
    unet: Any
    vae: Any
    text_encoders: dict[str, Any]
    report: LoadReport

    @property
    def family(self) -> str:
        return self.detection.family


# ----------------------------------------------------------------------------------------------- module building


def _empty(factory):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def build_checked(component: str, build, cfg: dict, path: Path, metadata: Mapping[str, str], *args):
    """``build(cfg, *args)``, with a loader error naming the file when the configuration inferred from the tensors'
    shapes cannot be built — typically a small or unusual model whose hyperparameters that shapes cannot tell
    (norm groups, attention heads) differ from the published ones and are not recorded in its metadata."""
    try:
        return build(cfg, *args)
    except Exception as exc:  # noqa: BLE001 - the libraries raise many kinds on a config they cannot build
        # (ValueError, TypeError, ZeroDivisionError for 0 norm groups, huggingface_hub's strict-dataclass errors ...)
        recorded = sorted(k for k in metadata if k.startswith(f"chisel.{component}"))
        why = (f"its metadata records {', '.join(recorded)}" if recorded else
               f"the file has no metadata for them (no chisel.{component} entry), so the published defaults were "
               f"assumed (e.g. norm_num_groups={cfg.get('norm_num_groups', '?')})")
        raise UnrecognisedArchitecture(
            f"{path}: its {component} cannot be built from what the file says ({type(exc).__name__}: {exc}). The "
            f"tensor shapes fix the widths, but not the hyperparameters that shapes cannot tell; {why}. The file is not a standard "
            "SD1.x/SD2.x/SDXL model: load the original file, or one saved with its configuration.", path) from None


def build_unet(cfg: dict):
    import_model_libraries()  # waits for a background import under way rather than importing beside it
    from diffusers import UNet2DConditionModel

    return _empty(lambda: UNet2DConditionModel.from_config(cfg))


def build_vae(cfg: dict):
    import_model_libraries()
    from diffusers import AutoencoderKL

    return _empty(lambda: AutoencoderKL.from_config(cfg))


def build_text_encoder(cfg: dict, with_projection: bool):
    import_model_libraries()
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    conf = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "transformers_version",
                                                                                 "torch_dtype", "dtype")}
    config = CLIPTextConfig(**conf)
    config._attn_implementation = "sdpa"
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _empty(lambda: cls(config))


def _expected_ldm_keys(component: str, module, cfg: dict, spec: TextEncoderSpec | None, prefix: str) -> dict[str, str]:
    """``{ldm_file_key: module_key}`` for every module parameter (several module keys may share one file key)."""
    keys = list(module.state_dict().keys())
    keys = [k for k in keys if not k.endswith("position_ids")]
    if component == "unet":
        m = km.unet_key_map(cfg, keys)
    elif component == "vae":
        m = km.vae_key_map(cfg, keys)
    elif spec is not None and spec.kind == "clip_l":
        m = km.clip_l_key_map(keys)
    else:
        m = km.open_clip_key_map(keys)
    return {prefix + v: k for k, v in m.items()}


def _assign(module, state: dict[str, torch.Tensor], component: str, path: Path) -> int:
    own = module.state_dict()
    own_keys = {k for k in own if not k.endswith("position_ids")}
    given = {k: v for k, v in state.items() if k in own_keys}
    missing = sorted(own_keys - set(given))
    if missing:
        raise IncompleteCheckpoint(
            f"{path}: {len(missing)} {component} parameters were not produced by the conversion "
            f"({', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}); refusing to leave them random.",
            path, missing={component: missing})
    for k, v in given.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UnrecognisedArchitecture(
                f"{path}: {component} tensor {k} has shape {list(v.shape)} in the file but the inferred "
                f"architecture needs {list(own[k].shape)}.", path)
        if v.dtype.is_floating_point != own[k].dtype.is_floating_point or v.is_complex():
            need = "floating-point" if own[k].dtype.is_floating_point else str(own[k].dtype).replace("torch.", "")
            raise CorruptCheckpoint(f"{path}: {component} tensor {k} is {str(v.dtype).replace('torch.', '')} in the "
                                    f"file; the model needs {need} values. The file is corrupt or not a model Chisel "
                                    "reads.", path)
    module.load_state_dict(given, strict=False, assign=True)
    left = [n for n, p in module.named_parameters() if p.is_meta]
    if left:
        raise IncompleteCheckpoint(f"{path}: {component} parameters left unset: {left[:6]}", path,
                                   missing={component: left})
    module.requires_grad_(False)
    module.eval()
    return len(given)


def _sd2_is_v_prediction(src: WeightFile, shapes: Mapping[str, tuple]) -> bool:
    """SD2 512 (epsilon) and 768 (v) share a layout. The v models' last output transformer has markedly larger
    norm1 biases (std above ~0.09, the threshold the community uses); a file with metadata never gets here."""
    cands = sorted((k for k in shapes if k.startswith(km.UNET_PREFIX + "output_blocks.")
                    and k.endswith(".1.transformer_blocks.0.norm1.bias")),
                   key=lambda k: int(k.split(".")[3]))
    if not cands:
        return False
    t = src.get(cands[-1]).float()
    return bool(t.std(unbiased=False) > 0.09)


# ------------------------------------------------------------------------------------------------------ the loader


def load_checkpoint(path: str | Path, *, allow_pickle: bool | None = None, dtype: torch.dtype | None = None,
                    state: Mapping[str, torch.Tensor] | None = None,
                    progress: Report | None = None) -> LoadedCheckpoint:
    """Load a single-file checkpoint. ``dtype`` casts the weights (None keeps the file's); ``allow_pickle`` governs
    ``.ckpt``-style files (:mod:`nodes.loading.weights`; default: allowed, weights only, unless ``CHISEL_NO_PICKLE``).
    ``progress`` (a node's ``ctx.progress``) hears each of :data:`CHECKPOINT_STAGES` start."""
    path = Path(path)
    _require_exists(path)
    if path.is_dir():
        return load_diffusers_folder(path, dtype=dtype, progress=progress)
    stages = Stages(CHECKPOINT_STAGES, progress)
    timings: dict[str, float] = {}
    stages.enter(IMPORTING)
    t0 = time.perf_counter()
    import_model_libraries()
    timings["imports"] = time.perf_counter() - t0
    stages.enter(READING)
    t0 = time.perf_counter()
    source = _open_weights(path, allow_pickle, state)
    timings["header"] = time.perf_counter() - t0

    with source as src:
        t1 = time.perf_counter()
        det = _detect_family(src, path)
        configs = infer_configs(det, src.shapes, src.metadata, where=str(path))
        components = _build_components(det, configs, path, src.metadata, stages)
        owner = _account_for_tensors(components, det, src.shapes, path)
        ignored, unused = _unmapped_tensors(src.shapes, owner, path)
        timings["detect"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        params = {}
        for c in components:
            stages.enter(LOADING[_part(c.name)])
            params[c.name] = _load_component(c, src, owner, dtype, path)
        timings["load"] = time.perf_counter() - t2

    report = LoadReport(path=str(path), family=det.family, description=det.description,
                        file_bytes=path.stat().st_size if path.is_file() else 0,
                        file_dtypes=dict(Counter(source.dtypes.values())), parameters=params, ignored=ignored,
                        unused=unused, timings=timings,
                        metadata_used=any(k.startswith("chisel.") for k in source.metadata))
    log.info("%s", report.summary())
    modules = {c.name: c.module for c in components}
    return LoadedCheckpoint(path=path, detection=det, configs=configs, unet=modules["unet"], vae=modules["vae"],
                            text_encoders={te.name: modules[te.name] for te in det.text_encoders}, report=report)


@dataclass
class _Component:
    """One module of a checkpoint being loaded: its name (``unet``, ``vae``, ``text_encoder[_2]``), the module built
    on the meta device, its config, the file's key prefix for it and, for a text encoder, its spec."""
    name: str
    module: Any
    config: dict
    prefix: str
    spec: TextEncoderSpec | None = None


def _require_exists(path: Path) -> None:
    """A missing file is an error that lists what the folder does have."""
    if path.exists():
        return
    parent = path.parent
    have = sorted(p.name for p in parent.iterdir())[:20] if parent.is_dir() else []
    raise CheckpointNotFound(f"checkpoint {path.name!r} not found: looked for {path}; "
                             f"{parent} {'has: ' + ', '.join(have) if have else 'is empty or missing'}.", path)


def _open_weights(path: Path, allow_pickle: bool | None, state: Mapping[str, torch.Tensor] | None) -> WeightFile:
    """The file's header (names, shapes, dtypes, metadata), or ``state`` already in memory; no tensor data yet."""
    source = WeightFile.from_state(path, state) if state is not None else WeightFile(path, allow_pickle)
    if not source.shapes:
        raise CorruptCheckpoint(f"{path} contains no tensors.", path)
    return source


def _detect_family(src: WeightFile, path: Path) -> Detection:
    """Family, variant and components; an SD2 file that does not say its prediction type is told by its weights."""
    det = detect(src.shapes, src.metadata, path)
    if det.family == "sd2" and det.prediction_type is None:
        det.prediction_type = "v_prediction" if _sd2_is_v_prediction(src, src.shapes) else "epsilon"
    return det


def _build_components(det: Detection, configs: dict[str, dict], path: Path,
                      metadata: Mapping[str, str], stages: Stages) -> list[_Component]:
    """Every module on the meta device (UNet, VAE, then the text encoders), each built from its inferred config."""
    stages.enter(BUILDING["unet"])
    components = [_Component("unet", build_checked("unet", build_unet, configs["unet"], path, metadata),
                             configs["unet"], km.UNET_PREFIX)]
    stages.enter(BUILDING["vae"])
    components.append(_Component("vae", build_checked("vae", build_vae, configs["vae"], path, metadata),
                                 configs["vae"], km.VAE_PREFIX))
    stages.enter(BUILDING["text"])
    for te in det.text_encoders:
        module = build_checked(te.name, build_text_encoder, configs[te.name], path, metadata, te.with_projection)
        components.append(_Component(te.name, module, configs[te.name], te.prefix, te))
    return components


def _component_ldm_keys(c: _Component) -> dict[str, str]:
    """``{file_key: module_key}`` for one component, in the file's layout."""
    if c.spec is not None and c.spec.kind == "clip_l" and not c.prefix.endswith("text_model."):
        # old SD1 layout: cond_stage_model.transformer.embeddings.* (no text_model.)
        full = c.prefix + "text_model."
        return {c.prefix + k[len(full):] if k.startswith(full) else k: v
                for k, v in _expected_ldm_keys(c.name, c.module, c.config, c.spec, full).items()}
    return _expected_ldm_keys(c.name, c.module, c.config, c.spec, c.prefix)


def _account_for_tensors(components: list[_Component], det: Detection, shapes: Mapping[str, tuple],
                         path: Path) -> dict[str, str]:
    """``{file_key: component name}`` for every tensor the modules need, before any data is read; a needed tensor
    the file lacks fails the load (nothing is left random)."""
    owner: dict[str, str] = {}
    for c in components:
        owner.update({k: c.name for k in _component_ldm_keys(c)})
    missing = sorted(k for k in owner if k not in shapes)
    if missing:
        by_comp: dict[str, list[str]] = {}
        for k in missing:
            by_comp.setdefault(owner[k], []).append(k)
        detail = "; ".join(f"{c}: {len(v)} (e.g. {', '.join(v[:3])})" for c, v in by_comp.items())
        raise IncompleteCheckpoint(
            f"{path} looks like {det.description} but lacks {len(missing)} of the {len(owner)} tensors that "
            f"architecture needs — {detail}. Loading it would leave those weights random; the file is "
            "incomplete or from a different model.", path, missing=by_comp)
    return owner


def _unmapped_tensors(shapes: Mapping[str, tuple], owner: Mapping[str, str], path: Path) -> tuple[list[str], list[str]]:
    """File tensors no parameter takes: the known non-weights (ignored) and the rest (unused, logged)."""
    ignored = sorted(k for k in shapes if k not in owner and is_ignored(k))
    unused = sorted(k for k in shapes if k not in owner and not is_ignored(k))
    if unused:
        log.warning("%s: %d tensors map to no model parameter: %s", path, len(unused), ", ".join(unused[:8]))
    return ignored, unused


def _load_component(c: _Component, src: WeightFile, owner: Mapping[str, str], dtype: torch.dtype | None,
                    path: Path) -> int:
    """Read the component's tensors, cast them, convert them to the module's layout and assign them; returns how
    many parameter tensors were set."""
    sub = src.many([k for k, o in owner.items() if o == c.name])
    if dtype is not None:
        sub = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sub.items()}
    converted = _convert(c.name, sub, c.config, c.spec, c.prefix, c.module)
    return _assign(c.module, converted, c.name, path)


def _convert(name: str, sub: dict[str, torch.Tensor], cfg: dict, spec: TextEncoderSpec | None, prefix: str,
             module) -> dict[str, torch.Tensor]:
    from diffusers.loaders import single_file_utils as sfu

    if name == "unet":
        return sfu.convert_ldm_unet_checkpoint(sub, cfg)
    if name == "vae":
        return sfu.convert_ldm_vae_checkpoint(sub, cfg)
    if spec.kind == "clip_l":
        # diffusers knows the SD1 and SDXL prefixes; give it the tensors under SD1's.
        base = "cond_stage_model.transformer."
        renamed = {base + k[len(prefix):] if not prefix.endswith("text_model.") else
                   base + "text_model." + k[len(prefix):]: v for k, v in sub.items()}
        out = sfu.convert_ldm_clip_checkpoint(renamed)
    else:
        # A neutral prefix keeps diffusers' SD2 rule (drop the last layer) from applying: Chisel keeps all layers.
        renamed = {"chisel_te." + k[len(prefix):]: v for k, v in sub.items()}
        out = sfu.convert_open_clip_checkpoint(module, renamed, prefix="chisel_te.")
    if not hasattr(module, "text_model"):
        out = {km.strip_text_model(k): v for k, v in out.items()}
        out.pop("text_projection.weight", None)
    return {k: v for k, v in out.items() if not k.endswith("position_ids")}


# ------------------------------------------------------------------------------------------------ diffusers folders


def is_diffusers_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "model_index.json").is_file() and (p / "unet").is_dir()


def load_diffusers_folder(folder: str | Path, dtype: torch.dtype | None = None,
                          progress: Report | None = None) -> LoadedCheckpoint:
    """Load a diffusers-format pipeline folder (unet/, vae/, text_encoder/[, text_encoder_2/]) offline, checking
    that every parameter came from the weight files. ``progress`` hears each of :data:`FOLDER_STAGES` start."""
    stages = Stages(FOLDER_STAGES, progress)
    stages.enter(IMPORTING)
    import_model_libraries()
    t0 = time.perf_counter()
    folder = Path(folder)
    index = _model_index(folder)
    unet, vae = _load_unet_and_vae(folder, dtype, stages)
    stages.enter(FOLDER_STAGES[3])
    tes, specs = _load_text_encoders(folder, index, dtype)
    ucfg = dict(unet.config)
    family = _diffusers_family(ucfg, tes, specs)
    sched = _scheduler_config(folder)
    det = Detection(family=family, in_channels=int(ucfg["in_channels"]), text_encoders=specs,
                    prediction_type=sched.get("prediction_type", "epsilon"))
    configs = {"unet": ucfg, "vae": dict(vae.config), "scheduler": sched}
    for name, m in tes.items():
        configs[name] = m.config.to_dict()
    unet.requires_grad_(False).eval()
    vae.requires_grad_(False).eval()
    report = LoadReport(path=str(folder), family=family, description=det.description + " (diffusers folder)",
                        parameters={"unet": len(unet.state_dict()), "vae": len(vae.state_dict()),
                                    **{n: len(m.state_dict()) for n, m in tes.items()}},
                        timings={"load": time.perf_counter() - t0})
    return LoadedCheckpoint(path=folder, detection=det, configs=configs, unet=unet, vae=vae, text_encoders=tes,
                            report=report)


def _model_index(folder: Path) -> dict[str, Any]:
    """The folder's model_index.json (which components it has, and their classes)."""
    if not is_diffusers_folder(folder):
        raise UnrecognisedArchitecture(f"{folder} is not a diffusers pipeline folder (needs model_index.json and "
                                       "unet/).", folder)
    index = read_json_object(folder / "model_index.json", "the pipeline's index")
    for name in ("text_encoder", "text_encoder_2"):
        entry = index.get(name)
        if entry is not None and not (isinstance(entry, list) and len(entry) == 2
                                      and all(e is None or isinstance(e, str) for e in entry)):
            raise CorruptCheckpoint(f"{folder / 'model_index.json'}: {name!r} is {json.dumps(entry)[:80]}, not "
                                    "[library, class name]; the file is malformed.", folder / "model_index.json")
    return index


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a model folder's config file: unreadable, not JSON or not an object is a
    :class:`CorruptCheckpoint` naming the file and the fault."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise CorruptCheckpoint(f"{path} ({what}) could not be read: {exc.strerror or exc}.", path) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptCheckpoint(f"{path} ({what}) is not valid JSON ({exc}); the file is malformed.", path) from None
    if not isinstance(data, dict):
        raise CorruptCheckpoint(f"{path} ({what}) holds a JSON {type(data).__name__}, not an object; the file is "
                                "malformed.", path)
    return data


def _load_unet_and_vae(folder: Path, dtype: torch.dtype | None, stages: Stages) -> tuple[Any, Any]:
    """unet/ and vae/, every parameter from their weight files."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    kw: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kw["torch_dtype"] = dtype
    stages.enter(FOLDER_STAGES[1])
    unet, uinfo = _from_pretrained(UNet2DConditionModel, folder, "unet", kw)
    stages.enter(FOLDER_STAGES[2])
    vae, vinfo = _from_pretrained(AutoencoderKL, folder, "vae", kw)
    for comp, info in (("unet", uinfo), ("vae", vinfo)):
        if info.get("missing_keys"):
            raise IncompleteCheckpoint(f"{folder}/{comp} lacks {len(info['missing_keys'])} parameters "
                                       f"({', '.join(info['missing_keys'][:5])})", folder,
                                       missing={comp: info["missing_keys"]})
    return unet, vae


def _from_pretrained(cls: Any, folder: Path, component: str, kw: dict[str, Any]) -> tuple[Any, dict]:
    """``cls.from_pretrained`` of one component folder with its loading info; a config that is not a JSON object,
    or one the library cannot build a model from, is a loader error naming the folder (not the library's raw
    TypeError / KeyError)."""
    config = folder / component / "config.json"
    if config.is_file():
        read_json_object(config, f"the {component.replace('_', ' ')}'s config")
    try:
        return cls.from_pretrained(folder / component, output_loading_info=True, **kw)
    except (OSError, ValueError) as exc:
        raise IncompleteCheckpoint(f"{folder}/{component}: {exc}", folder) from None
    except (TypeError, KeyError, AttributeError, IndexError) as exc:
        raise CorruptCheckpoint(f"{folder}/{component}: its config.json does not describe a model that can be built "
                                f"({type(exc).__name__}: {exc}).", folder) from None


def _load_text_encoders(folder: Path, index: dict[str, Any],
                        dtype: torch.dtype | None) -> tuple[dict[str, Any], list[TextEncoderSpec]]:
    """text_encoder/ and text_encoder_2/ where the folder has them and model_index.json names a class."""
    tes: dict[str, Any] = {}
    specs: list[TextEncoderSpec] = []
    for name in ("text_encoder", "text_encoder_2"):
        if not (folder / name).is_dir() or not index.get(name) or index[name][0] is None:
            continue
        model, with_projection = _load_text_encoder(folder, name, index[name][1], dtype)
        tes[name] = model
        kind = "clip_l" if model.config.hidden_act == "quick_gelu" else "open_clip"
        specs.append(TextEncoderSpec(name, kind, "", with_projection=with_projection))
    return tes, specs


def _load_text_encoder(folder: Path, name: str, cls_name: str, dtype: torch.dtype | None) -> tuple[Any, bool]:
    """One text encoder, every parameter from its weight files (position ids may be missing); and whether it has
    a projection."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if cls_name == "CLIPTextModelWithProjection" else CLIPTextModel
    tkw: dict[str, Any] = {"local_files_only": True, "attn_implementation": "sdpa"}
    if dtype is not None:
        tkw["dtype"] = dtype
    model, info = _from_pretrained(cls, folder, name, tkw)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        raise IncompleteCheckpoint(f"{folder}/{name} lacks {len(missing)} parameters ({', '.join(missing[:5])})",
                                   folder, missing={name: missing})
    model.requires_grad_(False).eval()
    return model, cls is CLIPTextModelWithProjection


def _diffusers_family(unet_config: dict[str, Any], tes: dict[str, Any], specs: list[TextEncoderSpec]) -> str:
    """SDXL's UNet takes text-time embeddings (the refiner without the CLIP-L encoder); SD2 has an OpenCLIP
    encoder; otherwise SD1."""
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl" if "text_encoder" in tes else "sdxl_refiner"
    if specs and specs[0].kind == "open_clip":
        return "sd2"
    return "sd1"


def _scheduler_config(folder: Path) -> dict[str, Any]:
    """The noise schedule's settings from scheduler/scheduler_config.json (empty without one)."""
    sched_file = folder / "scheduler" / "scheduler_config.json"
    sched = read_json_object(sched_file, "the noise schedule's config") if sched_file.is_file() else {}
    return {k: sched[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps",
                                  "prediction_type") if k in sched}


def describe_file(path: str | Path) -> dict[str, Any]:
    """What a model file is, without loading it (for error messages and the server): family or kind, tensors."""
    shapes, dtypes, metadata = read_header(path)
    try:
        not_a_checkpoint(shapes, path)
        det = detect(shapes, metadata, path)
        kind = det.description
    except Exception as exc:  # noqa: BLE001 - reported as text
        kind = str(exc)
    return {"kind": kind, "tensors": len(shapes), "dtypes": dict(Counter(dtypes.values())), "metadata": metadata}
