"""The command line: parse, call the library, render with rich. The only place that exits.

Exit codes: 0 done; 2 bad input; 3 environment unfit for the request; 1 anything unexpected.
Errors print one line (and a hint), never a traceback unless --debug."""

from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console

from tuner.errors import BadInput, TunerError
from tuner.machine.interrupt import Interrupted, end_interrupted, terminable

if TYPE_CHECKING:  # click.Choice checks these values; the modules load lazily
    from tuner.search.pareto import Objective
    from tuner.search.sampler import SamplerName
    from tuner.specs import Device

M = TypeVar("M")


class Finite(click.FloatRange):
    """A finite float within ``[min, max]`` (``min_open``: above ``min``): every float option's
    type, so ``nan``, ``inf`` and numbers too large for a float are refused one way (exit 2)."""

    name = "finite number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = value if isinstance(value, float) else None
        if number is None:
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number ({self._describe_range()})", param, ctx)
        return super().convert(number, param, ctx)


SECONDS = Finite(min=1, max=604800)  # a duration from 1 s to a week
POSITIVE = Finite(min=0, min_open=True)
NON_NEGATIVE = Finite(min=0)

err = Console(stderr=True, highlight=False)
# Piped output (a log, CI) gets wide lines rather than tables squeezed into 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
DEBUG = {"on": False}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="tuner")
def cli(debug: bool) -> None:
    """Find the fastest llama.cpp settings for a GGUF model, prove they run on the GPU, and
    write the config a llama-cpp-python server loads.

    \b
    Example:
      tuner sweep --model model.gguf
      tuner report
    """
    DEBUG["on"] = debug
    from tuner.machine.envvars import current

    current()  # every TUNER_* variable checked before any work (one line, exit 2)


@cli.command()
@click.option("--model", "model", required=True,
              type=click.Path(path_type=Path, readable=False),
              help="GGUF model file to tune.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu tunes for the CPU on purpose (threads become a dimension).")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Run at most N trials now (the rest stay queued for a later run).")
@click.option("--space", type=click.Path(path_type=Path, readable=False), default=None,
              help="YAML search space (default: a built-in grid for the device).")
@click.option("--prompt-tokens", type=click.IntRange(min=0), default=512, show_default=True)
@click.option("--gen-tokens", type=click.IntRange(min=0), default=128, show_default=True)
@click.option("--n-ctx", type=click.IntRange(min=0), default=0,
              help="Production context size; trials run at it. [default: prompt + gen]")
@click.option("--repetitions", type=click.IntRange(min=1), default=3, show_default=True,
              help="Measured repetitions per trial (after the discarded warm-up runs).")
@click.option("--warmup", type=click.IntRange(min=0, max=100), default=1, show_default=True,
              help="Discarded warm-up runs per trial.")
@click.option("--results", "results_dir", type=click.Path(path_type=Path),
              default=Path("results"), show_default=True)
@click.option("--study", default=None, help="Study name (default: from model, device, workload).")
@click.option("--storage", default=None,
              help="Optuna storage URL (default: sqlite under the results dir).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("configs/production.yaml"),
              show_default=True, help="Production config to write.")
@click.option("--builds", "builds_dir", type=click.Path(path_type=Path), default=Path("builds"),
              show_default=True, help="Folder of kernel builds made by `tuner build`.")
@click.option("--trial-timeout", type=SECONDS, default=600.0, show_default=True,
              help="Seconds before a trial's worker is killed (1 to 604800).")
@click.option("--trials-per-worker", type=click.IntRange(min=1), default=2, show_default=True,
              help="Trials one worker process measures before a fresh one takes over.")
@click.option("--sentinel/--no-sentinel", default=True, show_default=True,
              help="Each worker measures its first trial again when it ends (drift check).")
@click.option("--finalist-rounds", type=click.IntRange(min=0), default=5, show_default=True,
              help="Fresh-worker rounds re-measuring the leading configs (0: none).")
@click.option("--confirm-top", type=click.IntRange(min=0), default=10, show_default=True,
              help="Before the finalists are chosen, the search's best N (those within 8% of "
                   "its best) get 2 of those rounds each, and are ranked on medians over "
                   "processes (0: finalists from the search's figures).")
@click.option("--sampler", type=click.Choice(["auto", "grid", "tpe"]), default="auto",
              show_default=True,
              help="grid: every setting; tpe: optuna's model-based TPE sampler; auto: grid up "
                   "to 16 settings, tpe above.")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Stop after N finished trials without a 1% gain [default: 10 with tpe, "
                   "never with grid; 0: never].")
@click.option("--timeout", "timeout_s", type=Finite(min=1), default=None,
              help="Seconds of search before no new trial starts (finalists still run).")
@click.option("--seed", type=click.IntRange(min=0, max=2**31 - 1), default=0, show_default=True,
              help="The model-based sampler's seed (numpy takes seeds below 2^32; the "
                   "sampler adds the history's size).")
@click.option("--served-requests", type=click.IntRange(min=0, max=1000), default=5,
              show_default=True,
              help="Requests per finalist through a real llama_cpp.server (0: raw figures only).")
@click.option("--gpus", default=None, metavar="0,1,...",
              help="One sweep process per GPU (CUDA_VISIBLE_DEVICES), all on this study.")
@click.option("--prune/--no-prune", default=None,
              help="Stop a trial early when its repetitions are clearly slower than the best "
                   "trial's [default: on with tpe, off with grid].")
@click.option("--max-vram", "max_vram", type=POSITIVE, default=None, metavar="MIB",
              help="GPU memory cap: trials above it are infeasible, never the config.")
@click.option("--objective", type=click.Choice(["request", "pareto"]), default="request",
              show_default=True,
              help="What the search seeks: request: the shortest request at the workload; "
                   "pareto: the front of prompt speed, generation speed and GPU memory (the "
                   "config is still the finalists' fastest request).")
@click.option("--build/--no-build", "build_missing", default=True, show_default=True,
              help="On a CUDA machine, first build the kernel variants that could change what "
                   "its GPUs run and are not built yet (from the installed version's source, "
                   "side by side; a build that cannot be made is named with its command).")
@click.option("--offload-budget", "offload_budget", type=Finite(min=0, max=604800), default=900.0,
              show_default=True, metavar="SECONDS",
              help="When the model does not fit at full offload: the whole sweep's time "
                   "budget (fewer repetitions, finalists and served requests; the trial and "
                   "search timeouts and patience sized from the first trial); options given "
                   "explicitly are kept (0: no budget).")
def sweep(model: Path, device: Device, trials: int | None, space: Path | None, prompt_tokens: int,
          gen_tokens: int, n_ctx: int, repetitions: int, warmup: int, results_dir: Path,
          study: str | None, storage: str | None, out: Path, builds_dir: Path,
          trial_timeout: float, trials_per_worker: int, sentinel: bool,
          sampler: SamplerName, patience: int | None, timeout_s: float | None, seed: int,
          finalist_rounds: int, confirm_top: int, served_requests: int, gpus: str | None, prune: bool | None,
          max_vram: float | None, objective: Objective, build_missing: bool,
          offload_budget: float) -> None:
    """Try llama.cpp settings on MODEL, verify each trial's placement from llama.cpp's load
    log, store every trial, and write the best verified settings to --out.

    \b
    Example:
      tuner sweep --model q4.gguf --prompt-tokens 2048 --gen-tokens 128 --n-ctx 4096
      tuner sweep --model q4.gguf --device cpu --trials 4
    """
    if gpus is not None and device == "cpu":
        raise BadInput("--gpus runs one sweep per GPU: it does not apply to --device cpu",
                       hint="leave out --gpus (sweeps sharing the cores would measure each "
                            "other)")
    if gpus is not None:
        from tuner.sweep.multigpu import gpu_env, parse_gpus, run_per_gpu, without_gpus

        ids = parse_gpus(gpus)
        if len(ids) > 1:
            sys.exit(run_per_gpu(without_gpus(RAW_ARGS), ids))
        os.environ.update(gpu_env(ids[0]))  # this sweep's workers inherit it

    from tuner.models.modelcheck import check_model

    check_model(model)  # a bad model is refused before the sweep's machinery (optuna...) loads
    from tuner.reports.render import SweepProgress, print_sweep_result
    from tuner.search.finalists import FinalistOptions
    from tuner.search.sampler import StopRule
    from tuner.specs import Workload
    from tuner.sweep.offloadbudget import KNOBS
    from tuner.sweep.options import SweepOptions
    from tuner.sweep.run import run_sweep

    wl = _validated(Workload, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, n_ctx=n_ctx,
                    repetitions=repetitions, warmup=warmup)
    opts = SweepOptions(model=model, device=device, trials=trials, space=space, workload=wl,
                        results_dir=results_dir, study=study, storage=storage, out=out,
                        builds_dir=builds_dir, trial_timeout_s=trial_timeout,
                        trials_per_worker=trials_per_worker, sentinel=sentinel,
                        finalists=FinalistOptions(rounds=finalist_rounds,
                                                   max_rounds=2 * finalist_rounds,
                                                   confirm=confirm_top,
                                                   confirm_rounds=min(2, finalist_rounds)),
                        served_requests=served_requests, sampler=sampler, seed=seed,
                        stop=StopRule(patience=patience, timeout_s=timeout_s), prune=prune,
                        max_vram_mib=max_vram, objective=objective,
                        build_missing=build_missing, offload_budget_s=offload_budget,
                        explicit=_given(KNOBS))
    with terminable(), SweepProgress(out) as progress:
        result = run_sweep(opts, progress)
    print_sweep_result(out, result)
    if result.written is None and not result.deferred:
        sys.exit(3)


@cli.command()
@click.option("--results", "results_dir", type=click.Path(path_type=Path),
              default=Path("results"), show_default=True)
@click.option("--storage", default=None,
              help="Optuna storage URL holding the studies (default: the sweep's, "
                   "sqlite under the results dir).")
@click.option("--study", default=None,
              help="Study to show: a name, or a JSONL export / old study folder by path "
                   "(default: every study of the storage).")
@click.option("--format", "fmt",
              type=click.Choice(["table", "trials", "md", "csv", "json", "html", "jsonl"]),
              default="table", show_default=True,
              help="table: the answer and each setting's effect; trials: every trial; "
                   "md/csv/json: every trial as data; html: one self-contained page with plots; "
                   "jsonl: the export, every full trial record one per line.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Write the report to this file instead of the terminal.")
@click.option("--compare", nargs=2, default=None, metavar="A B",
              help="Two studies side by side: names in the storage, or JSONL exports / "
                   "study folders by path.")
@click.option("--peak-bandwidth-gbs", type=POSITIVE, default=None,
              help="Roofline: the device's peak memory bandwidth in GB/s (default: by GPU name).")
@click.option("--peak-tflops", type=POSITIVE, default=None,
              help="Roofline: the device's peak dense FP16 tensor TFLOPS (default: by GPU name).")
@click.option("--model-file", type=click.Path(path_type=Path), default=None,
              help="Roofline: a copy of the GGUF to count parameters from, when the recorded "
                   "model path is gone.")
def report(results_dir: Path, storage: str | None, study: str | None, fmt: str,
           output: Path | None,
           compare: tuple[str, str] | None, peak_bandwidth_gbs: float | None,
           peak_tflops: float | None, model_file: Path | None) -> None:
    """The winner and how sure it is, the runner-up, the gain over llama-cpp-python's
    defaults, whether it was verified, and what each setting did; or every trial, or an HTML
    page with plots, a roofline and the placement proof.

    \b
    Example:
      tuner report
      tuner report --format trials
      tuner report --format html -o report.html
      tuner report --compare h100-study h200-study
      tuner report --study NAME --format jsonl -o NAME.jsonl
      tuner report --compare NAME other-machine.jsonl
    """
    from tuner.machine.writable import check_output_path

    if output is not None:  # before the imports below: a bad path fails at once
        check_output_path(output)
    from tuner.reports.render import print_report
    from tuner.reports.reporting import Peaks
    from tuner.results.studystore import default_storage

    print_report(out, storage or default_storage(results_dir), study, fmt, output, compare,
                 Peaks(peak_bandwidth_gbs, peak_tflops, model_file))


@cli.command()
@click.option("--log", "log_path", default=None, type=click.Path(path_type=Path),
              help="A saved llama.cpp load log. Without it: check this machine.")
@click.option("--n-gpu-layers", type=click.IntRange(min=-1), default=-1, show_default=True,
              help="What was asked (-1 = every layer on the GPU).")
@click.option("--builds", "builds_dir", type=click.Path(path_type=Path), default=Path("builds"),
              show_default=True, help="Folder of kernel builds made by `tuner build`.")
@click.option("--results", "results_dir", type=click.Path(path_type=Path),
              default=Path("results"), show_default=True,
              help="Studies whose every trial died are explained from their stored evidence.")
@click.option("--model", "model", default=None, type=click.Path(path_type=Path),
              help="Also say whether this GGUF fits at full offload on this GPU, and if not "
                   "how many layers fit per KV cache type (its memory plan).")
@click.option("--n-ctx", "n_ctx", type=click.IntRange(min=1), default=640, show_default=True,
              help="With --model: the context the plan is for (a sweep's --n-ctx).")
@click.option("--max-vram", "max_vram", type=POSITIVE,
              default=None, metavar="MIB", help="With --model: a cap on the GPU memory.")
def doctor(log_path: Path | None, n_gpu_layers: int, builds_dir: Path, results_dir: Path,
           model: Path | None, n_ctx: int, max_vram: float | None) -> None:
    """Without --log: check this machine for a CUDA sweep (llama-cpp-python, spawn, each
    build's flags and GPU offload, the CUDA devices llama.cpp and NVML see, the driver), each
    problem with its fix, and the likely cause where every trial of a stored study died alike.
    With --log: say where a llama.cpp load put the model's layers and KV
    cache, what that means, and how to fix it. Exit 0 when fit / on the GPU, 3 when not.

    \b
    Example:
      tuner doctor
      tuner doctor --model q4.gguf --n-ctx 2176
      python app.py 2> load.log; tuner doctor --log load.log
    """
    if log_path is None:
        from tuner.results.deathcauses import study_causes
        from tuner.worker.envdoctor import check_environment

        report = check_environment(builds_dir)
        for line in report.lines:
            out.print(line, markup=False, soft_wrap=True)
        for study, cause in study_causes(results_dir):
            for line in cause.lines():
                out.print(f"study {study}: {line}", markup=False, soft_wrap=True)
        if model is not None:
            from tuner.worker.envdoctor import model_fit_lines

            for line in model_fit_lines(model, n_ctx, max_vram):
                out.print(line, markup=False, soft_wrap=True)
        sys.exit(report.exit_code)
    from tuner.evidence.doctor import diagnose_file

    diagnosis = diagnose_file(log_path, n_gpu_layers=n_gpu_layers)
    for line in diagnosis.lines:
        out.print(line, markup=False)
    sys.exit(diagnosis.exit_code)


@cli.command()
@click.option("--variant", type=click.Choice(["default", "force-cublas", "force-mmq", "cpu"]),
              default=None, help="Kernel build to make.")
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="llama-cpp-python sdist (.tar.gz) of the installed version; no network then.")
@click.option("--cuda-arch", default=None, help="CMAKE_CUDA_ARCHITECTURES, e.g. 90 for H100.")
@click.option("--builds", "builds_dir", type=click.Path(path_type=Path), default=Path("builds"),
              show_default=True)
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None)
@click.option("--dry-run", is_flag=True, help="Print the commands without running them.")
@click.option("--list", "list_", is_flag=True, help="Show each build and its library's flags.")
@click.option("--server", is_flag=True, help="Build llama.cpp's llama-server as well.")
@click.option("--server-only", is_flag=True,
              help="Build the library and llama-server, without llama-bench.")
@click.option("--if-missing", is_flag=True,
              help="Do nothing when the build exists for the installed version with what is asked.")
def build(variant: str | None, source: Path | None, cuda_arch: str | None, builds_dir: Path,
          jobs: int | None, dry_run: bool, list_: bool, server: bool, server_only: bool,
          if_missing: bool) -> None:
    """Build llama.cpp of the installed llama-cpp-python version with one kernel variant into
    its own folder, for `tuner sweep` to use as a dimension.

    \b
    Example:
      tuner build --variant force-cublas --source llama-cpp-python-0.3.36.tar.gz --cuda-arch 90
      tuner build --variant cpu --server-only --if-missing
      tuner build --list
    """
    from tuner.reports.render import print_builds, run_build

    if list_:
        print_builds(out, builds_dir)
        return
    if variant is None:
        raise BadInput("give --variant (default, force-cublas, force-mmq or cpu) or --list")
    run_build(out, variant, source, cuda_arch, builds_dir, jobs, dry_run,
              bench=not server_only, server=server or server_only, if_missing=if_missing)


@cli.command("verify")
@click.argument("config", type=click.Path(path_type=Path), default=Path("configs/production.yaml"))
@click.option("--url", default=None,
              help="Check a service already running at URL instead (speed only).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Loopback port for the server started here [default: a free one].")
@click.option("--tolerance", type=NON_NEGATIVE, default=10.0, show_default=True,
              help="Percent by which served speed may fall below the stored figures.")
@click.option("--requests", type=click.IntRange(min=1), default=5, show_default=True,
              help="Measured requests (after one warm-up).")
@click.option("--timeout", type=SECONDS, default=300.0, show_default=True,
              help="Seconds to wait for the server to load and for each request.")
@click.option("--llama-server", "llama_server", is_flag=True,
              help="Verify the llama-server deployment beside CONFIG (its .llama-server.args; "
                   "implied when CONFIG is one of those files).")
def verify_cmd(config: Path, url: str | None, port: int | None, tolerance: float,
               requests: int, timeout: float, llama_server: bool) -> None:
    """Start the real llama_cpp.server on CONFIG with the sidecar's environment, prove the
    build and placement from its own log, send the sweep's workload over HTTP and compare time
    to first token and generation speed with the sidecar's served figures. Exit 0 when all
    hold, 3 when placement or speed does not.

    \b
    Example:
      tuner verify configs/production.yaml
      tuner verify configs/production.yaml --url http://127.0.0.1:8000
      tuner verify configs/production.llama-server.args
    """
    from tuner.deploy.llamaserver import is_llama_server_file
    from tuner.deploy.llamaserververify import service as llama_server_service
    from tuner.deploy.serververify import service as python_server_service
    from tuner.deploy.verify import failure, result_lines, run_verify

    load = (llama_server_service if llama_server or is_llama_server_file(config)
            else python_server_service)
    with terminable():  # SIGTERM: the server stopped, its folder removed, one line, exit 143
        result = run_verify(config, load, url=url, port=port, tolerance=tolerance / 100,
                            requests=requests, timeout_s=timeout)
    for line in result_lines(result):
        out.print(line, markup=False, soft_wrap=True)
    problem = failure(result)
    if problem is not None:
        raise problem
    out.print("verified: the service runs what was measured, at the measured speed",
              markup=False)


def _validated(model: type[M], **kwargs: object) -> M:
    try:
        return model(**kwargs)
    except ValidationError as e:
        raise BadInput(e.errors()[0]["msg"].removeprefix("Value error, ")) from None


def _given(names: tuple[str, ...]) -> frozenset[str]:
    """The parameters of the running command the user gave (not their defaults)."""
    ctx = click.get_current_context()
    return frozenset(n for n in names
                     if ctx.get_parameter_source(n) not in (click.core.ParameterSource.DEFAULT,
                                                            None))


def _fail(code: int, message: str, hint: str | None = None) -> None:
    err.print(f"error: {_one_line(message)}", markup=False, soft_wrap=True)
    if hint:
        err.print(f"hint: {_one_line(hint)}", markup=False, soft_wrap=True)
    sys.exit(code)


def _one_line(text: str) -> str:
    """A message of several lines (a library's: tarfile's, an HTTP reply) as one."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


RAW_ARGS: list[str] = []  # the command line as given (`sweep --gpus` starts it once per GPU)


def main(argv: list[str] | None = None) -> None:
    RAW_ARGS[:] = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=argv, prog_name="tuner", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:  # bare `tuner`: the help, as --help shows it
        click.echo(e.ctx.get_help())
        sys.exit(0)
    except (click.exceptions.Abort, KeyboardInterrupt, Interrupted) as e:
        end_interrupted(e)
    except click.UsageError as e:
        _fail(2, e.format_message().replace("\n", " "))
    except click.ClickException as e:
        _fail(e.exit_code, e.format_message().replace("\n", " "))
    except TunerError as e:
        if DEBUG["on"]:
            traceback.print_exc()
        _fail(e.exit_code, e.message, e.hint)
    except Exception as e:  # noqa: BLE001 - the contract: one line, exit 1
        if DEBUG["on"]:
            traceback.print_exc()
        _fail(1, f"unexpected {type(e).__name__}: {e}", "rerun with --debug for the traceback")


if __name__ == "__main__":
    main()
