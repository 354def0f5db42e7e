"""llama_cpp.server with the settings its config cannot hold: ``python -m
tuner.deploy.serverlaunch --config_file production.yaml`` (any of the server's own arguments)
applies them from the service's environment, then runs ``python -m llama_cpp.server`` in the
same process. A config whose trial needs none of them is launched as llama_cpp.server itself
(``server_module``), so the usual command stays the usual one.

Held so far: ``TUNER_N_CPU_MOE`` (the setting ``n_cpu_moe``, written into the deployment's
environment file): the first layers' expert weights stay in host memory; ``TUNER_FFN_ON_HOST``
(the setting ``ffn_on_host``, as ``<layer>:<matrices>``): that layer's FFN matrices do.
Started as plain llama_cpp.server, such a config would load onto the GPU what it was tuned
not to fit there; ``tuner verify`` proves the placement from the server's log either way."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Mapping

from tuner.errors import TunerError
from tuner.machine import envvars
from tuner.worker.llamaparams import hold_on_host

MODULE = "tuner.deploy.serverlaunch"
SERVER = "llama_cpp.server"


def server_module(env: Mapping[str, str]) -> str:
    """The module a service with the environment ``env`` is started as: this launcher when the
    environment asks what only it applies, else llama_cpp.server."""
    asks = (envvars.VARS[name] for name in ("n_cpu_moe", "ffn_on_host"))
    return MODULE if any(v.parse(v.name, env.get(v.name, v.default)) for v in asks) else SERVER


def main(argv: list[str] | None = None) -> int:
    try:
        env = envvars.current()
    except TunerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    hold_on_host(env.n_cpu_moe, env.ffn_on_host)
    sys.argv = [SERVER, *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module(SERVER, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
