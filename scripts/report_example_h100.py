"""Make docs/report-h100-7b.html and .png from the H100 study of docs/benchmarks/run4-h100
(Qwen2.5-7B-shaped Q4_0: trials, finalists, drift sentinel):

    .venv/bin/python scripts/report_example_h100.py

The parameter count for the prompt roofline comes from the header of a sparse file of the same
shape (tuner.modelgen's qwen2.5-7b with ``sparse=True``); the screenshot from headless Chromium."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cli_run import tuner  # noqa: E402
from tests.headless import page_of  # noqa: E402
from tuner.modelgen import SHAPES, write_llama  # noqa: E402

RUN = REPO / "docs" / "benchmarks" / "run4-h100" / "qwen2.5-7b-q4_0"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tuner-report-h100-") as tmp:
        first = json.loads((RUN / "trials.jsonl").read_text().splitlines()[0])
        study = Path(tmp) / "results" / first["study"]
        study.mkdir(parents=True)
        for name in ("trials.jsonl", "finalists.json", "drift.jsonl"):
            shutil.copy(RUN / name, study / name)
        shape = write_llama(Path(tmp) / "qwen2.5-7b-shape.f16.gguf", **SHAPES["qwen2.5-7b"],
                            sparse=True)
        out = REPO / "docs" / "report-h100-7b.html"
        proc = tuner("report", "--results", Path(tmp) / "results", "--format", "html", "-o",
                     out, "--model-file", shape)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        out.write_text(out.read_text().replace(str(Path(tmp)), "/tmp"))
        run = page_of(out)
        if run.errors or run.console:
            print("browser reported:", run.errors + run.console, file=sys.stderr)
            return 1
        (REPO / "docs" / "report-h100-7b.png").write_bytes(run.screenshot)
        print(f"wrote {out} and docs/report-h100-7b.png; requests: {len(run.requests)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
