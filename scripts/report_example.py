"""Make docs/report-example.html and docs/report-example.png from the real H200 study in
docs/benchmarks/h200-trials.jsonl:

    .venv/bin/python scripts/report_example.py

The study's model file is not kept, so the parameter count for the prompt roofline is read from
the header of a sparse file of the same shape (tuner.modelgen's llama3-8b, written with
``sparse=True``: a full-size file whose data section is a hole; same tensors, same count). The
screenshot comes from headless Chromium (apt-get install -y chromium)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cli_run import tuner  # noqa: E402
from tests.headless import page_of  # noqa: E402
from tests.report_data import h200_results  # noqa: E402
from tuner.modelgen import SHAPES, write_llama  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tuner-report-example-") as tmp:
        study = h200_results(Path(tmp) / "results")
        shape = write_llama(Path(tmp) / "llama3-8b-shape.f16.gguf", **SHAPES["llama3-8b"],
                            sparse=True)
        out = REPO / "docs" / "report-example.html"
        proc = tuner("report", "--results", study["results"], "--format", "html", "-o", out,
                     "--model-file", shape)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        html = out.read_text().replace(str(Path(tmp)), "/tmp")  # no random temp names
        out.write_text(html)
        run = page_of(out)
        if run.errors or run.console:
            print("browser reported:", run.errors + run.console, file=sys.stderr)
            return 1
        (REPO / "docs" / "report-example.png").write_bytes(run.screenshot)
        print(f"wrote {out} and docs/report-example.png; requests: {len(run.requests)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
