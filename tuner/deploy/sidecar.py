"""What ``tuner verify`` reads besides the server's config, each through one typed model and
checked before anything starts: the sidecar (``production.tuner.json``), the service's
environment file (``production.env``), the model path the config names, and ``--url``. Bad
input is one ``BadInput`` line (exit 2) naming the file and the field, never a validation
error of several lines and never after a server was started."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from tuner.errors import BadInput
from tuner.results.records import ServedFigures
from tuner.specs import TrialSpec, Workload

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REWRITE = "write the config again with tuner sweep, or restore the .bak files beside it"


class _Part(BaseModel):
    """A section of the sidecar: the fields verify reads are typed, others are kept as they are
    (the sidecar also holds provenance and notes for people)."""

    model_config = ConfigDict(frozen=True, extra="allow")


class SidecarBuild(_Part):
    name: str | None = None
    lib_dir: str | None = None
    rebuild: str | None = None


class SidecarEnvironment(_Part):
    system_info: str | None = None


class Summary(_Part):
    """A raw figure as the sidecar keeps it: the finalists' mean with its interval (``value``,
    ``low``, ``high``), or a search trial's median and range (a prompt speed of a
    generation-only workload is 0)."""

    value: float | None = None
    low: float | None = None
    high: float | None = None
    median: float | None = None
    min: float | None = None
    max: float | None = None

    @field_validator("value", "low", "high", "median", "min", "max")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ValueError("must be a finite number, 0 or above")
        return v

    @model_validator(mode="after")
    def _central(self) -> Summary:
        if self.value is None and self.median is None:
            raise ValueError("holds neither a value nor a median")
        return self


class RawFigures(_Part):
    pp_tps: Summary | None = None
    tg_tps: Summary | None = None


class SidecarServed(ServedFigures):
    """The served figures the sweep measured, with the line that names their kind."""

    kind: str = ""

    @model_validator(mode="after")
    def _finite(self) -> SidecarServed:
        for name in ("ttft_s", "request_s", "gen_tps"):
            stat = getattr(self, name)
            if stat is not None and not (math.isfinite(stat.median) and stat.median > 0):
                raise ValueError(f"{name} median {stat.median} is not a finite number above 0")
        return self


class ServedError(BaseModel):
    """A served phase that failed: why, in place of the figures."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str = ""
    error: str


_TAG = "served-"  # the union's tags, left out of the field path an error names


def _served_kind(v: Any) -> str:
    """A failed served phase holds why (``error``) in place of the figures."""
    failed = isinstance(v, ServedError) or (isinstance(v, dict) and "error" in v)
    return _TAG + ("error" if failed else "figures")


class Sidecar(_Part):
    """``production.tuner.json`` as far as ``tuner verify`` depends on it."""

    format: str | None = None
    build: SidecarBuild | None = None
    env: dict[str, str] = {}
    env_file: str | None = None
    spec: TrialSpec
    workload: Workload
    figures: RawFigures | None = None
    served: Annotated[Annotated[ServedError, Tag(_TAG + "error")]
                      | Annotated[SidecarServed, Tag(_TAG + "figures")],
                      Discriminator(_served_kind)] | None = None
    environment: SidecarEnvironment | None = None

    @field_validator("env")
    @classmethod
    def _variables(cls, v: dict[str, str]) -> dict[str, str]:
        bad = next((k for k, x in v.items() if not _ENV_NAME.fullmatch(k) or "\x00" in x), None)
        if bad is not None:
            raise ValueError(f"{bad!r} is not a variable an environment can hold")
        return v


def _where(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"] if not str(x).startswith(_TAG)) or "the top level"
    return f"{where}: {err['msg']}"


def read_sidecar(path: Path) -> Sidecar:
    """The sidecar at ``path``, typed; one ``BadInput`` line naming the field otherwise."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise BadInput(f"no readable sidecar {path} beside the config ({e.strerror or e})",
                       hint="verify compares with the build and figures the sweep stored "
                            "there; write the config with tuner sweep") from None
    except (ValueError, RecursionError) as e:
        raise BadInput(f"sidecar {path} is not JSON: {str(e).splitlines()[0]}",
                       hint=_REWRITE) from None
    if not isinstance(data, dict):
        raise BadInput(f"sidecar {path} holds a JSON {type(data).__name__}, not an object",
                       hint=_REWRITE)
    try:
        return Sidecar.model_validate(data)
    except ValidationError as e:
        raise BadInput(f"sidecar {path} is damaged at {_where(e)}", hint=_REWRITE) from None


def read_env(path: Path) -> dict[str, str]:
    """The variables of the service's environment file (``KEY=value`` lines, values quoted the
    way a shell reads them); a line that is not one is refused with its number."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read the environment file {path}: {e}", hint=_REWRITE) from None
    env: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        try:
            parts = shlex.split(value) if value else [""]
        except ValueError as e:
            parts, bad = [], str(e)
        else:
            bad = "" if len(parts) <= 1 else "more than one word (quote the value)"
        if not sep or not _ENV_NAME.fullmatch(key):
            bad = "not a KEY=value line"
        elif "\x00" in value:
            bad = "a NUL byte in the value (no environment can hold one)"
        if bad:
            raise BadInput(f"environment file {path} line {n}: {bad}", hint=_REWRITE)
        env[key] = parts[0] if parts else ""
    return env


def service_environment(env_file: Path, side: Sidecar) -> dict[str, str]:
    """The service's environment: its file; a sidecar older than the file (no ``env_file``)
    gives its own copy. A sidecar that names the file while the file is missing is refused:
    the deployment lost a part."""
    if env_file.is_file():
        return read_env(env_file)
    if env_file.exists():
        raise BadInput(f"environment file {env_file} is not a regular file", hint=_REWRITE)
    if side.env_file is not None:
        raise BadInput(f"no environment file {env_file} beside the config (the sidecar names "
                       "it: the service's LLAMA_CPP_LIB_PATH and other variables)",
                       hint=_REWRITE)
    return dict(side.env)


def check_model_path(model: str, config_path: Path) -> None:
    """The model must be an absolute path to a file: a service resolves a relative one against
    its own working directory, which nothing in the config fixes."""
    if not model:
        raise BadInput(f"{config_path} names no model under models[0].model")
    if not Path(model).is_absolute():
        raise BadInput(f"model path {model!r} in {config_path} is relative: the server "
                       "resolves it against its working directory, which the config does not "
                       "fix", hint="write the absolute path of the model file")
    if not Path(model).is_file():
        raise BadInput(f"model {model} named in {config_path} not found",
                       hint="the config holds an absolute path: copy the model there, or "
                            "rerun the sweep on this host")


def check_url(url: str) -> str:
    """An http(s) URL with a host (``--url``), without a trailing slash."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError as e:
        raise BadInput(f"--url {url!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"--url {url!r} is not an http(s) URL with a host",
                       hint="for example --url http://127.0.0.1:8000")
    return url.rstrip("/")


def config_entry(config: Any, config_path: Path) -> dict[str, Any]:
    """The config's first model entry (the one the sweep wrote)."""
    models = config.get("models") if isinstance(config, dict) else None
    if not isinstance(models, list) or not models or not isinstance(models[0], dict):
        raise BadInput(f"{config_path} lists no model under 'models'")
    return models[0]
