"""Original (LDM/SGM) YAML model configs, as CheckpointLoader takes them: the facts Chisel cannot read from the
tensors — the prediction type (``parameterization: "v"``), the training noise schedule (``linear_start``,
``linear_end``, ``timesteps``) and the latent scale (``scale_factor``). Architecture fields are read from the file's
tensors as always; the config only overrides these."""
from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_EXTENSIONS = (".yaml", ".yml")


class ConfigError(ValueError):
    """A config file that cannot be read or holds values of the wrong kind."""


def read_ldm_config(path: str | Path) -> dict[str, Any]:
    """``{prediction_type?, beta_start?, beta_end?, num_train_timesteps?, scale_factor?}`` from a config file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path.name} is not a readable YAML config: {exc}") from None
    params = (data or {}).get("model", {}).get("params") if isinstance(data, dict) else None
    if not isinstance(params, dict):
        raise ConfigError(f"{path.name} has no model.params section: not a Stable Diffusion model config")
    out: dict[str, Any] = {}
    try:
        if "parameterization" in params:
            p = str(params["parameterization"])
            if p not in ("eps", "v"):
                raise ConfigError(f"{path.name}: parameterization {p!r} is neither 'eps' nor 'v'")
            out["prediction_type"] = "v_prediction" if p == "v" else "epsilon"
        for key, name in (("linear_start", "beta_start"), ("linear_end", "beta_end")):
            if key in params:
                out[name] = float(params[key])
        if "timesteps" in params:
            out["num_train_timesteps"] = int(params["timesteps"])
        if "scale_factor" in params:
            out["scale_factor"] = float(params["scale_factor"])
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path.name}: a model.params value has the wrong type ({exc})") from None
    return out
