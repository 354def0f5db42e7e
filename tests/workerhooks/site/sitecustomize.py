"""Run at the startup of every interpreter whose PYTHONPATH holds this folder (tests only:
tests/workerhooks/__init__.py). Does nothing unless a test's hook variable is set."""

import os

if os.environ.get("TUNER_TEST_FAULTS") or os.environ.get("TUNER_TEST_SPAWN_RECORD"):
    from tests.workerhooks import install

    install()
