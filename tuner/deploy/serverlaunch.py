"""llama_cpp.server with the settings its config cannot hold: ``python -m
tuner.deploy.serverlaunch --config_file production.yaml`` (any of the server's own arguments)
applies them from the service's environment, then runs ``python -m llama_cpp.server`` in the
same process. A config whose trial needs none of them is launched as llama_cpp.server itself
(``server_module``), so the usual command stays the usual one.

Held so far: ``TUNER_N_CPU_MOE`` (the setting ``n_cpu_moe``, written into the deployment's
environment file): the first layers' expert weights stay in host memory. Started as plain
llama_cpp.server, such a config would load every expert onto the GPU it was tuned not to fit
on; ``tuner verify`` proves the placement from the server's log either way."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Mapping

from tuner.errors import TunerError
from tuner.machine import envvars
from tuner.worker.llamaparams import hold_experts_on_host

MODULE = "tuner.deploy.serverlaunch"
SERVER = "llama_cpp.server"


def server_module(env: Mapping[str, str]) -> str:
    """The module a service with the environment ``env`` is started as: this launcher when the
    environment asks what only it applies, else llama_cpp.server."""
    var = envvars.VARS["n_cpu_moe"]
    return MODULE if var.parse(var.name, env.get(var.name, var.default)) else SERVER


def main(argv: list[str] | None = None) -> int:
    try:
        n_cpu_moe = envvars.current().n_cpu_moe
    except TunerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    hold_experts_on_host(n_cpu_moe)
    sys.argv = [SERVER, *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module(SERVER, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
