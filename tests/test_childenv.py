"""The helper processes' command line (tuner.machine.childenv.module_command) must find this tuner
without an install: on the GPU machines tuner runs from a checkout through PYTHONPATH, which the
isolated child (python -I) drops. After the package moved into folders, PACKAGE_ROOT named
tuner/ itself and every sweep there stopped on "No module named 'tuner'" (run 12)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import tuner
from tuner.machine.childenv import PACKAGE_ROOT, module_command


def test_package_root_holds_the_tuner_package() -> None:
    assert Path(PACKAGE_ROOT, "tuner", "__init__.py").resolve() == Path(tuner.__file__).resolve()


def test_isolated_child_imports_tuner_without_site_packages(tmp_path: Path) -> None:
    # -S: no site-packages at all, so no editable install can stand in for PACKAGE_ROOT.
    cmd = module_command("tuner.errors")
    cmd.insert(cmd.index("-I") + 1, "-S")
    cmd[-1] = cmd[-1].replace("runpy.run_module('tuner.errors', run_name='__main__', alter_sys=True)",
                              "import tuner.errors; print(tuner.errors.__file__)")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == Path(tuner.__file__).resolve().parent / "errors.py"
