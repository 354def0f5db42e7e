"""Peak GPU memory of this worker through NVML, sampled in a background thread while a trial
runs. Absent (None) where there is no NVIDIA driver."""

from __future__ import annotations

import os
import threading
from typing import Any


class GpuMemory:
    def __init__(self, index: int = 0, interval_s: float = 0.01) -> None:
        self.available = False
        self.total_mib: float | None = None
        self._nvml: Any = None
        self._handle: Any = None
        self._interval = interval_s
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.total_mib = pynvml.nvmlDeviceGetMemoryInfo(self._handle).total / 2**20
            self.available = True
        except Exception:
            self.available = False

    def used_by_me_mib(self) -> float | None:
        """This process's memory on the GPU; the device's used memory where the driver cannot
        see our pid (containers with their own pid namespace)."""
        if not self.available:
            return None
        nv = self._nvml
        try:
            for proc in nv.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    return proc.usedGpuMemory / 2**20
            return nv.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
        except Exception:
            return None

    def start(self) -> None:
        if not self.available:
            return
        self._peak = self.used_by_me_mib() or 0.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            used = self.used_by_me_mib()
            if used is not None and used > self._peak:
                self._peak = used

    def stop(self) -> float | None:
        if not self.available or self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        used = self.used_by_me_mib()
        return max(self._peak, used or 0.0)

    def devices(self) -> list[dict[str, Any]]:
        if not self.available:
            return []
        nv = self._nvml
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = nv.nvmlDeviceGetName(h)
            out.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_mib": nv.nvmlDeviceGetMemoryInfo(h).total / 2**20,
            })
        return out

    def driver(self) -> str | None:
        if not self.available:
            return None
        v = self._nvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
