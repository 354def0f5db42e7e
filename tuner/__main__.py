"""``python -m tuner`` and the ``tuner`` command: the command line, imported only when it runs.

A trial worker is a spawned process, and a spawned process first runs its parent's main module
again, as ``__mp_main__``, unless that module is a package's ``__main__`` (Python's
multiprocessing/spawn.py). Started from here, a worker does not import the command line (click,
rich and every command's modules): 0.72-0.74 instead of 0.76-0.81 CPU-seconds a CPU worker of the
tiny test model, and a GPU sweep starts dozens; the ``tuner`` script, run again in a worker,
imports only this small module.

A signal that comes while the command line is imported (0.2 s and more) ends the command as one
later would: one line, exit 130 or 143."""

from __future__ import annotations

from tuner.machine.interrupt import Interrupted, end_interrupted, raise_on_sigterm


def main() -> None:
    raise_on_sigterm()
    try:
        from tuner.cli import main as cli_main
    except (KeyboardInterrupt, Interrupted) as e:
        end_interrupted(e)
    cli_main()


if __name__ == "__main__":
    main()
