"""The server-config check: a config read the way ``llama_cpp.server`` reads it (JSON of the
YAML, then its own ``ConfigFileSettings.model_validate_json``), keys its settings do not define
refused, in a child process with a clean, explicit environment (tuner/machine/childenv.py).

The server's settings import llama_cpp, which loads a llama library: that happens in the child,
with the chosen build's ``LLAMA_CPP_LIB_PATH``, never in the caller. One child serves every
check of one environment for the caller's life (a sweep checks the first trial's config before
its trials and the winner's after them): each check is a line of JSON in (the config and the
speed fields to answer with), a line out, and the child holds nothing from one check to the next
but the imported modules."""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import tempfile
from contextlib import suppress
from typing import Any

from tuner.errors import EnvironmentUnfit, TunerError
from tuner.machine.childenv import child_env, module_command
from tuner.machine.children import popen_kwargs

TIMEOUT_S = 300.0  # one check, the child's start and llama_cpp's import included
LIBRARY_UNFIT = 3  # the child's code for a build library that did not load


class _Child:
    """One checking process of one environment."""

    def __init__(self, env: dict[str, str]) -> None:
        # stderr to a file, never a pipe that could fill up; closed by close()
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(module_command("tuner.deploy.configcheck"), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, **popen_kwargs())

    def ask(self, blob: str) -> dict[str, Any]:
        """Send one config, wait for its answer line; EOFError if the child ended first,
        TimeoutError past TIMEOUT_S."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(blob + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise EOFError from None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S)
        if not ready:
            raise TimeoutError
        line = self.proc.stdout.readline()  # the child writes each answer as one whole line
        if not line:
            raise EOFError
        answer: dict[str, Any] = json.loads(line)
        return answer

    def last_words(self) -> str:
        """The last non-empty line the ended child wrote on stderr, if any."""
        self._end()
        self.stderr.seek(0)
        text = self.stderr.read()
        self.stderr.close()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else f"config check exited {self.proc.returncode}"

    def close(self) -> None:
        self._end()
        self.stderr.close()

    def _end(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class ConfigInvalid(TunerError):
    """The server's settings classes refuse the config (exit 1 when tuner wrote it; a caller
    reading a config it did not write makes it bad input)."""


_CHILDREN: dict[tuple[tuple[str, str], ...], _Child] = {}


def check_config(config: dict[str, Any], lib_dir: str | None = None,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """Check ``config`` the way the server reads it, in ``env`` (the service's environment,
    added to the clean one). An invalid config is tuner's bug, hence TunerError (exit 1); a
    build library that does not load is EnvironmentUnfit (exit 3). Returns the effective
    speed-relevant settings of its first model, as the server would run them."""
    # Imported here, on the caller's side only: the child gets the field names with each
    # config and imports none of tuner's settings and specs (0.1 CPU-s less a check child).
    from tuner.evidence.effective import SPEED_FIELDS

    try:
        blob = json.dumps({"config": config, "fields": list(SPEED_FIELDS)})
    except (TypeError, ValueError) as e:
        raise TunerError(f"production config is not plain data: {e}") from None
    full = {**child_env(lib_dir), **(env or {})}
    key = tuple(sorted(full.items()))
    child = _CHILDREN.get(key)
    if child is None or child.proc.poll() is not None:
        child = _CHILDREN[key] = _Child(full)
    try:
        answer = child.ask(blob)
    except TimeoutError:
        _CHILDREN.pop(key).close()
        raise EnvironmentUnfit(f"the server-config check took over {TIMEOUT_S:.0f} s") from None
    except EOFError:
        why = _CHILDREN.pop(key).last_words()
        raise TunerError(f"the server-config check ended: {why}") from None
    if "effective" in answer:
        effective: dict[str, Any] = answer["effective"]
        return effective
    _CHILDREN.pop(key).close()  # a child that failed is not trusted with the next check
    if answer.get("code") == LIBRARY_UNFIT:  # not tuner's bug
        raise EnvironmentUnfit(answer["error"], hint="check the build's library folder "
                               "(`tuner build --list`) and the llama-cpp-python install")
    raise ConfigInvalid(answer["error"])


def close_children() -> None:
    """End every checking child (a sweep's end; also at exit)."""
    while _CHILDREN:
        _CHILDREN.popitem()[1].close()


atexit.register(close_children)


def _check_here(config: Any, speed_fields: list[str]) -> dict[str, Any]:
    """In the child: the server's own settings classes read the config; its first model's
    ``speed_fields`` as the server would run them."""
    from llama_cpp.server.settings import ConfigFileSettings, ModelSettings

    def refuse_unknown(mapping: Any, fields: dict[str, Any], where: str) -> None:
        if not isinstance(mapping, dict):
            raise TunerError(f"{where} must be a mapping, not {type(mapping).__name__}")
        unknown = sorted(set(mapping) - set(fields))
        if unknown:
            raise TunerError(f"{where} has keys the server does not accept: "
                             f"{', '.join(map(str, unknown))}")

    refuse_unknown(config, ConfigFileSettings.model_fields, "production config")
    models = config.get("models")
    if not isinstance(models, list) or not models:
        raise TunerError("production config must list at least one model under 'models'")
    for i, entry in enumerate(models):
        refuse_unknown(entry, ModelSettings.model_fields, f"production config models[{i}]")
    try:
        loaded = ConfigFileSettings.model_validate_json(json.dumps(config))
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        errors = getattr(e, "errors", None)
        if callable(errors) and errors():
            err = errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise TunerError(f"production config is invalid at {where}: {err['msg']}") from None
        raise TunerError(f"production config is invalid: {str(e).splitlines()[0]}") from None
    effective: dict[str, Any] = loaded.models[0].model_dump(include=set(speed_fields))
    return effective


def _serve() -> None:
    """The child's loop: a config per line in, an answer per line out, until stdin ends.
    Answers go to a private copy of stdout; anything else written there (a library printing
    while it loads) goes to stderr, where it cannot break an answer line."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        try:
            request = json.loads(line)
            answer: dict[str, Any] = {"effective": _check_here(request["config"],
                                                               request["fields"])}
        except TunerError as e:
            answer = {"error": e.message, "code": 1}
        except (ImportError, OSError, RuntimeError) as e:  # llama_cpp's library did not load
            answer = {"error": f"llama_cpp could not load its library: {type(e).__name__}: {e}",
                      "code": LIBRARY_UNFIT}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    os._exit(0)  # nothing to tear down; llama_cpp's atexit hooks are not needed here


if __name__ == "__main__":
    _serve()
