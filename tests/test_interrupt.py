"""Signals during a sweep (tuner/machine/interrupt.py): SIGINT and SIGTERM that arrive during a storage
operation are raised when it ends, never inside it; outside one they are raised at once."""

from __future__ import annotations

import os
import signal

import pytest

from tuner.machine.interrupt import Interrupted, critical, terminable


@pytest.mark.parametrize("sig, raised", [(signal.SIGTERM, Interrupted),
                                         (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_inside_a_storage_operation_waits_for_its_end(sig: int, raised: type) -> None:
    steps = []
    with terminable(), pytest.raises(raised):
        with critical():
            os.kill(os.getpid(), sig)
            steps.append("after the signal")  # still inside: the operation completes
            with critical():  # nested operations too
                steps.append("nested")
            steps.append("outer end")
        steps.append("never")  # raised as the operation ended
    assert steps == ["after the signal", "nested", "outer end"]


def test_outside_a_storage_operation_the_signal_is_raised_at_once() -> None:
    steps = []
    before = signal.getsignal(signal.SIGINT)
    with terminable(), pytest.raises(Interrupted) as e:
        os.kill(os.getpid(), signal.SIGTERM)
        steps.append("never")
    assert steps == [] and e.value.exit_code == 143
    # terminable restores the handlers it replaced
    assert signal.getsignal(signal.SIGINT) is before
