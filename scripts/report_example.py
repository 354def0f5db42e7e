"""Make the committed example reports from real GPU studies in docs/benchmarks/:

    .venv/bin/python scripts/report_example.py            # both
    .venv/bin/python scripts/report_example.py h100-7b    # one

- ``h200``: docs/benchmarks/h200-trials.jsonl -> docs/report-example.html/.png
- ``h100-7b``: docs/benchmarks/run4-h100/qwen2.5-7b-q4_0 (trials, finalists, drift sentinel)
  -> docs/report-h100-7b.html/.png

The studies' model files are not kept, so the parameter count for the prompt roofline is read
from the header of a sparse file of the same shape (tuner.models.modelgen with ``sparse=True``: a
full-size file whose data section is a hole; same tensors, same count). The screenshots come
from headless Chromium (apt-get install -y chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.headless import page_of  # noqa: E402
from tuner.models.modelgen import SHAPES, write_llama  # noqa: E402

RUN4_7B = REPO / "docs" / "benchmarks" / "run4-h100" / "qwen2.5-7b-q4_0"
H200_TRIALS = REPO / "docs" / "benchmarks" / "h200-trials.jsonl"


def tuner(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def _h100_7b(results: Path) -> Path:
    first = json.loads((RUN4_7B / "trials.jsonl").read_text().splitlines()[0])
    study = results / first["study"]
    study.mkdir(parents=True)
    for name in ("trials.jsonl", "finalists.json", "drift.jsonl"):
        shutil.copy(RUN4_7B / name, study / name)
    return study


def _h200(results: Path) -> Path:
    """The H200 sweep's records as the JSONL export of its study, read through its path."""
    study = json.loads(H200_TRIALS.read_text().splitlines()[0])["study"]
    results.mkdir(parents=True)
    return Path(shutil.copy(H200_TRIALS, results / f"{study}.jsonl"))


EXAMPLES = {  # name -> (fill a results folder, model shape, output stem)
    "h200": (_h200, "llama3-8b", "report-example"),
    "h100-7b": (_h100_7b, "qwen2.5-7b", "report-h100-7b"),
}


def make(name: str) -> int:
    fill, shape_name, stem = EXAMPLES[name]
    with tempfile.TemporaryDirectory(prefix="tuner-report-example-") as tmp:
        results = Path(tmp) / "results"
        folder = fill(results)  # a study's export or an older version's folder, by its path
        shape = write_llama(Path(tmp) / f"{shape_name}-shape.f16.gguf", **SHAPES[shape_name],
                            sparse=True)
        out = REPO / "docs" / f"{stem}.html"
        proc = tuner("report", "--study", folder, "--format", "html", "-o", out,
                     "--model-file", shape)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        out.write_text(out.read_text().replace(str(Path(tmp)), "/tmp"))  # no random temp names
        run = page_of(out)
        if run.errors or run.console:
            print("browser reported:", run.errors + run.console, file=sys.stderr)
            return 1
        (REPO / "docs" / f"{stem}.png").write_bytes(run.screenshot)
        print(f"wrote {out} and docs/{stem}.png; requests: {len(run.requests)}")
    return 0


def main(argv: list[str]) -> int:
    names = argv or list(EXAMPLES)
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        print(f"error: unknown example {unknown[0]!r} (known: {', '.join(EXAMPLES)})",
              file=sys.stderr)
        return 2
    return max(make(n) for n in names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
