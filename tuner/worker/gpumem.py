"""What NVML says about the GPU a worker runs on: this process's memory, and the SM clock,
temperature, power and throttle reasons. Every read happens outside the timed region, as
llama-bench reads memory outside its timings: an earlier version sampled memory from a thread
during timed decodes, an observer inside the measurement. Absent (None) without an NVIDIA
driver."""

from __future__ import annotations

import os
from typing import Any

from tuner.machine import envvars

# NVML's clock-event reasons that mean the GPU ran slower than it could. GpuIdle, the
# application/user clock settings, display and sync boost are not slowdowns.
THROTTLE_REASONS: dict[str, str] = {
    "nvmlClocksEventReasonSwPowerCap": "sw_power_cap",
    "nvmlClocksEventReasonHwSlowdown": "hw_slowdown",
    "nvmlClocksEventReasonSwThermalSlowdown": "sw_thermal",
    "nvmlClocksEventReasonHwThermalSlowdown": "hw_thermal",
    "nvmlClocksEventReasonHwPowerBrakeSlowdown": "hw_power_brake",
}


def nvml_handle(nv: Any, cuda_index: int) -> Any:
    """NVML's handle of the device CUDA calls ``cuda_index`` in this process: NVML ignores
    ``CUDA_VISIBLE_DEVICES`` and counts in PCI bus order (which the worker also makes CUDA's,
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``), so a worker given GPU 1 reads GPU 1, not GPU 0."""
    visible = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if x.strip()]
    if cuda_index < len(visible):
        v = visible[cuda_index]
        if v.isdigit():
            return nv.nvmlDeviceGetHandleByIndex(int(v))
        return nv.nvmlDeviceGetHandleByUUID(v)  # GPU-... (a UUID)
    return nv.nvmlDeviceGetHandleByIndex(cuda_index)


class GpuMonitor:
    def __init__(self, index: int = 0) -> None:
        self.available = False
        self.total_mib: float | None = None
        self._nvml: Any = None
        self._handle: Any = None
        self._peak = 0.0
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = nvml_handle(pynvml, index)
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

    def reset_peak(self) -> None:
        self._peak = 0.0

    def note_memory(self) -> None:
        """Read memory now (between timed phases) and keep the highest reading."""
        used = self.used_by_me_mib()
        if used is not None and used > self._peak:
            self._peak = used

    def peak_mib(self) -> float | None:
        return self._peak if self.available and self._peak else None

    def clocks(self) -> dict[str, Any] | None:
        """SM and memory clock, temperature, power and active slowdown reasons, now."""
        if not self.available:
            return None
        nv, h = self._nvml, self._handle
        out: dict[str, Any] = {}
        for key, call in (
            ("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            ("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            ("temperature_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            ("power_w", lambda: round(nv.nvmlDeviceGetPowerUsage(h) / 1000.0, 1)),
        ):
            try:
                out[key] = call()
            except Exception:
                out[key] = None
        try:
            mask = nv.nvmlDeviceGetCurrentClocksEventReasons(h)
            out["throttle_reasons"] = [name for attr, name in THROTTLE_REASONS.items()
                                       if mask & getattr(nv, attr, 0)]
        except Exception:
            out["throttle_reasons"] = []
        return out

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


FAKE_FREE_ENV = envvars.VARS["fake_gpu_free_mib"].name  # FAKE (tests): never set on a real run


def free_mib(cuda_index: int = 0) -> float | None:
    """The GPU's free memory now (NVML; no CUDA context is made), or None without a GPU.
    ``TUNER_FAKE_GPU_FREE_MIB`` (FAKE, tests only) replaces the reading."""
    fake = envvars.current().fake_gpu_free_mib  # FAKE (tests): before NVML
    if fake is not None:
        return fake
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return float(pynvml.nvmlDeviceGetMemoryInfo(nvml_handle(pynvml, cuda_index)).free) / 2**20
        finally:
            pynvml.nvmlShutdown()
    except ImportError:
        return _smi_free_mib(cuda_index)
    except Exception:
        return None


def _smi_free_mib(cuda_index: int) -> float | None:
    """nvidia-smi's figure where the NVML bindings (nvidia-ml-py) are not installed."""
    import subprocess

    visible = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if x.strip()]
    index = visible[cuda_index] if cuda_index < len(visible) else str(cuda_index)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free",
                              "--format=csv,noheader,nounits", "-i", index],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def children_mib(cuda_index: int = 0) -> float | None:
    """GPU memory held by this process's child processes (the sweep's own workers, which a
    trial replaces), from NVML's process list; 0 with a FAKE free figure or without a driver.
    None when it cannot be told: NVML lists pids this process cannot see (a container's own
    pid namespace) or none while children run, so a caller must not count on the figure."""
    if envvars.current().fake_gpu_free_mib is not None:
        return 0.0
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(nvml_handle(pynvml, cuda_index))
        finally:
            pynvml.nvmlShutdown()
    except ImportError:
        return None if _children() else 0.0  # no bindings: nvidia-smi's free figure only
    except Exception:
        return 0.0
    parents = {p.pid: _parent_of(p.pid) for p in procs}
    if any(parent is None for parent in parents.values()) or (not procs and _children()):
        return None
    return sum(p.usedGpuMemory / 2**20 for p in procs
               if p.usedGpuMemory and parents[p.pid] == os.getpid())


def _children() -> bool:
    """Whether this process has a live child process (read from /proc)."""
    me = os.getpid()
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return True
    return any(_parent_of(pid) == me for pid in pids)


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
