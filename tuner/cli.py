"""The command line: parse, call the library, render with rich. The only place that exits.

Exit codes: 0 done; 2 bad input; 3 environment unfit for the request; 1 anything unexpected.
Errors print one line (and a hint), never a traceback unless --debug."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click
from pydantic import ValidationError
from rich.console import Console

from tuner.errors import BadInput, TunerError

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
              help="Measured repetitions per trial (after one discarded warm-up).")
@click.option("--results", "results_dir", type=click.Path(path_type=Path),
              default=Path("results"), show_default=True)
@click.option("--study", default=None, help="Study name (default: from model, device, workload).")
@click.option("--storage", default=None,
              help="Optuna storage URL (default: sqlite under the results dir).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("configs/production.yaml"),
              show_default=True, help="Production config to write.")
@click.option("--builds", "builds_dir", type=click.Path(path_type=Path), default=Path("builds"),
              show_default=True, help="Folder of kernel builds made by `tuner build`.")
@click.option("--trial-timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds before a trial's worker is killed.")
def sweep(model: Path, device: str, trials: int | None, space: Path | None, prompt_tokens: int,
          gen_tokens: int, n_ctx: int, repetitions: int, results_dir: Path, study: str | None,
          storage: str | None, out: Path, builds_dir: Path, trial_timeout: float) -> None:
    """Try llama.cpp settings on MODEL, verify each trial's placement from llama.cpp's load
    log, store every trial, and write the best verified settings to --out.

    \b
    Example:
      tuner sweep --model q4.gguf --prompt-tokens 2048 --gen-tokens 128 --n-ctx 4096
      tuner sweep --model q4.gguf --device cpu --trials 4
    """
    from tuner.render import SweepProgress, print_sweep_result
    from tuner.specs import Workload
    from tuner.sweep import SweepOptions, run_sweep

    wl = _validated(Workload, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, n_ctx=n_ctx,
                    repetitions=repetitions)
    opts = SweepOptions(model=model, device=device, trials=trials, space=space, workload=wl,
                        results_dir=results_dir, study=study, storage=storage, out=out,
                        builds_dir=builds_dir, trial_timeout_s=trial_timeout)
    with SweepProgress(out) as progress:
        result = run_sweep(opts, progress)
    print_sweep_result(out, result)
    if result.written is None:
        sys.exit(3)


@cli.command()
@click.option("--results", "results_dir", type=click.Path(path_type=Path),
              default=Path("results"), show_default=True)
@click.option("--study", default=None, help="Study to show (default: every study found).")
@click.option("--format", "fmt",
              type=click.Choice(["table", "trials", "md", "csv", "json", "html"]),
              default="table", show_default=True,
              help="table: the answer and each setting's effect; trials: every trial; "
                   "md/csv/json: every trial as data; html: one self-contained page with plots.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Write the report to this file instead of the terminal.")
@click.option("--compare", nargs=2, default=None, metavar="A B",
              help="Two studies side by side: names under --results, or study folders.")
@click.option("--peak-bandwidth-gbs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Roofline: the device's peak memory bandwidth in GB/s (default: by GPU name).")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Roofline: the device's peak dense FP16 tensor TFLOPS (default: by GPU name).")
@click.option("--model-file", type=click.Path(path_type=Path), default=None,
              help="Roofline: a copy of the GGUF to count parameters from, when the recorded "
                   "model path is gone.")
def report(results_dir: Path, study: str | None, fmt: str, output: Path | None,
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
    """
    from tuner.render import print_report
    from tuner.reporting import Peaks

    print_report(out, results_dir, study, fmt, output, compare,
                 Peaks(peak_bandwidth_gbs, peak_tflops, model_file))


@cli.command()
@click.option("--log", "log_path", required=True, type=click.Path(path_type=Path),
              help="A saved llama.cpp load log.")
@click.option("--n-gpu-layers", type=int, default=-1, show_default=True,
              help="What was asked (-1 = every layer on the GPU).")
def doctor(log_path: Path, n_gpu_layers: int) -> None:
    """Say where a llama.cpp load put the model's layers and KV cache, what that means, and
    how to fix it. Exit 0 when everything asked for is on the GPU, 3 when not.

    \b
    Example:
      python app.py 2> load.log; tuner doctor --log load.log
    """
    from tuner.doctor import diagnose_file

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
def build(variant: str | None, source: Path | None, cuda_arch: str | None, builds_dir: Path,
          jobs: int | None, dry_run: bool, list_: bool) -> None:
    """Build llama.cpp of the installed llama-cpp-python version with one kernel variant into
    its own folder, for `tuner sweep` to use as a dimension.

    \b
    Example:
      tuner build --variant force-cublas --source llama-cpp-python-0.3.36.tar.gz --cuda-arch 90
      tuner build --list
    """
    from tuner.render import print_builds, run_build

    if list_:
        print_builds(out, builds_dir)
        return
    if variant is None:
        raise BadInput("give --variant (default, force-cublas, force-mmq or cpu) or --list")
    run_build(out, variant, source, cuda_arch, builds_dir, jobs, dry_run)


def _validated(model: type, **kwargs: object) -> object:
    try:
        return model(**kwargs)
    except ValidationError as e:
        raise BadInput(e.errors()[0]["msg"].removeprefix("Value error, ")) from None


def _fail(code: int, message: str, hint: str | None = None) -> None:
    err.print(f"error: {message}", markup=False, soft_wrap=True)
    if hint:
        err.print(f"hint: {hint}", markup=False, soft_wrap=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="tuner", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _fail(130, "interrupted")
    except click.UsageError as e:
        _fail(2, e.format_message().replace("\n", " "))
    except click.ClickException as e:
        _fail(e.exit_code, e.format_message().replace("\n", " "))
    except TunerError as e:
        if DEBUG["on"]:
            traceback.print_exc()
        _fail(e.exit_code, e.message, e.hint)
    except KeyboardInterrupt:
        _fail(130, "interrupted; finished trials are stored, run the same command to resume")
    except Exception as e:  # noqa: BLE001 - the contract: one line, exit 1
        if DEBUG["on"]:
            traceback.print_exc()
        _fail(1, f"unexpected {type(e).__name__}: {e}", "rerun with --debug for the traceback")


if __name__ == "__main__":
    main()
