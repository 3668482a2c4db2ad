"""The limits and policies a person sets for ``chisel serve``: one pydantic model, :class:`Settings`, read from a
settings file (``--settings FILE``, TOML or JSON), then environment variables (``CHISEL_MAX_QUEUE`` ...), then
command-line flags — each later source overriding the earlier. The flags are generated from the model, so a setting
is declared once: its name, default, bounds and help text."""
from __future__ import annotations

import argparse
import json
import os
import tomllib
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MB = 1 << 20


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_queue: int = Field(1000, ge=1, le=10_000_000, description="prompts waiting at once; more are refused (429)")
    max_body_mb: float = Field(16, gt=0, le=4096, description="largest JSON request body, in MiB (413 beyond)")
    max_upload_mb: float = Field(64, gt=0, le=4096, description="largest uploaded file, in MiB (413 beyond)")
    max_upload_pixels: int = Field(64 * MB, ge=1, description="most pixels (width x height) an uploaded image may "
                                                              "have: a decompression bomb is refused (413)")
    max_prompt_nodes: int = Field(2000, ge=1, description="most nodes in one prompt (413 beyond)")
    max_images_per_prompt: int = Field(1000, ge=1, description="most files one prompt may write; the write past it "
                                                               "fails the prompt")
    history_max_entries: int = Field(10_000, ge=0, description="finished prompts kept in the history; the oldest "
                                                               "are dropped")
    history_max_age_days: float = Field(0, ge=0, description="drop finished prompts older than this (0: keep)")
    history_delete_files: bool = Field(False, description="when a prompt leaves the history, delete the output and "
                                                          "temp files it wrote")
    temp_max_age_hours: float = Field(24, ge=0, description="delete files in the temp folder older than this, "
                                                            "checked while running (0: never)")
    temp_clean_on_start: bool = Field(True, description="empty the temp folder when the server starts")
    allow_origin: list[str] = Field(default_factory=list, description="a web origin (scheme://host[:port]) allowed "
                                                                      "to call the API cross-origin (CORS); repeat "
                                                                      "for more")
    max_batch: int = Field(8, ge=1, le=64, description="most queued prompts sampled together as one batch when they "
                                                     "differ only in seeds, prompt texts or file name prefixes (1: "
                                                     "no batching)")
    batch_window_ms: float = Field(20, ge=0, le=10_000, description="how long the worker waits, after taking a "
                                                                    "prompt, for compatible prompts to batch with it "
                                                                    "(0: only those already queued)")
    auth_max_failures: int = Field(10, ge=1, description="failed token checks from one address within "
                                                         "auth_lockout_seconds before it is refused (429) for the "
                                                         "rest of that time")
    auth_lockout_seconds: float = Field(60, gt=0, le=86_400, description="the window and lock-out time for failed "
                                                                         "token checks")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads torch uses within one operation in "
                                                                 "the process that runs nodes (default: torch's "
                                                                 "choice, one per core)")


ENV = {"max_queue": "CHISEL_MAX_QUEUE", "max_body_mb": "CHISEL_MAX_JSON_MB", "max_upload_mb": "CHISEL_MAX_UPLOAD_MB",
       "history_max_entries": "CHISEL_MAX_HISTORY", "allow_origin": "CHISEL_ALLOWED_ORIGINS"}


class SettingsError(ValueError):
    pass


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_type(annotation: Any) -> type:
    """The type a flag's text converts to: ``int`` for ``int`` and for ``int | None``."""
    return next((t for t in get_args(annotation) if t is not type(None)), annotation)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--settings FILE`` and one flag per setting (default: not given, so that the file and environment count)."""
    parser.add_argument("--settings", type=Path, metavar="FILE",
                        help="a TOML or JSON file of the settings below (names with underscores); flags override it")
    group = parser.add_argument_group("limits and policies (also in --settings FILE)")
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        help_text = field.description if default is None else \
            f"{field.description} (default: {default if not isinstance(default, list) else 'none'})"
        if field.annotation is bool:
            group.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif name == "allow_origin":
            group.add_argument(_flag(name), dest=name, action="append", default=None, metavar="ORIGIN", help=help_text)
        else:
            unit = name.rsplit("_", 1)[-1]
            metavar = unit.upper() if unit in ("mb", "days", "hours", "seconds") else "N"
            group.add_argument(_flag(name), dest=name, type=_value_type(field.annotation), default=None,
                               metavar=metavar, help=help_text)


def read_file(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read the settings file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text) if Path(path).suffix.lower() != ".json" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise SettingsError(f"the settings file {path} is not valid {'JSON' if str(path).endswith('.json') else 'TOML'}"
                            f": {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"the settings file {path} must hold a table/object of settings")
    return data


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, var in ENV.items():
        value = environ.get(var)
        if value:
            out[name] = [o.strip() for o in value.split(",") if o.strip()] if name == "allow_origin" else value
    return out


def load(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Settings:
    """File, then environment, then flags. Raises :class:`SettingsError` with every problem named."""
    values: dict[str, Any] = {}
    path = getattr(args, "settings", None)
    if path is not None:
        values.update(read_file(path))
    values.update(_from_env(os.environ if environ is None else environ))
    for name in Settings.model_fields:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid settings: {problems}") from None
