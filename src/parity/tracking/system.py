"""System metrics of a run, sampled by a daemon thread.

Each sample is a set of metrics at one step (the sample's number, from 0):

    system/wall_time_s             seconds since the run started
    system/cpu_percent             this process's CPU use since the previous sample (100 = one core)
    system/rss_mb                  this process's resident memory, MiB
    system/host_cpu_percent        the whole machine's CPU use since the previous sample (100 = all cores)
    system/host_memory_percent     the machine's memory in use
    system/gpu<i>/utilization_percent, system/gpu<i>/memory_used_mb, system/gpu<i>/memory_total_mb
                                   for each NVIDIA GPU, read through pynvml (nvidia-ml-py) when it
                                   imports, else `nvidia-smi`; without either, or without a GPU,
                                   these are simply absent

A sample is taken every `interval` seconds and once more when the run ends.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger("parity.tracking")


class GpuReader:
    """Reads (index, utilization %, memory used MiB, memory total MiB) of each GPU."""

    def __init__(self, kind: str, handles=None):
        self.kind = kind  # "pynvml" | "nvidia-smi"
        self._handles = handles

    @classmethod
    def detect(cls) -> GpuReader | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if handles:
                return cls("pynvml", handles)
        except Exception:  # noqa: BLE001 - no pynvml, no driver, no GPU: fall through
            pass
        if shutil.which("nvidia-smi"):
            reader = cls("nvidia-smi")
            if reader.read():
                return reader
        return None

    def read(self) -> list[tuple[int, float, float, float]]:
        try:
            if self.kind == "pynvml":
                import pynvml

                out = []
                for i, h in enumerate(self._handles):
                    util = pynvml.nvmlDeviceGetUtilizationRates(h)
                    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                    out.append((i, float(util.gpu), mem.used / 2**20, mem.total / 2**20))
                return out
            res = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            if res.returncode != 0:
                return []
            out = []
            for line in res.stdout.strip().splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 4:
                    try:
                        out.append((int(parts[0]), float(parts[1]), float(parts[2]), float(parts[3])))
                    except ValueError:  # "[N/A]" on some boards
                        continue
            return out
        except Exception:  # noqa: BLE001 - a failed read is a missing sample, never a failed run
            return []

    def names(self) -> list[str]:
        if self.kind == "pynvml":
            import pynvml

            return [str(pynvml.nvmlDeviceGetName(h)) for h in self._handles]
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


class SystemSampler:
    """Calls `write(step, {name: value})` with a sample every `interval` seconds on a daemon thread,
    and once more from `stop()`.  The thread's database work happens in `write`; `on_exit` runs on
    the thread when it ends (to close its connection)."""

    def __init__(
        self,
        write: Callable[[int, dict[str, float]], None],
        *,
        interval: float = 10.0,
        started: float | None = None,
        gpu: GpuReader | None = None,
        on_exit: Callable[[], None] | None = None,
    ):
        import psutil

        self.write, self.interval, self.gpu, self.on_exit = write, max(0.01, float(interval)), gpu, on_exit
        self.started = time.time() if started is None else started
        self._t0 = time.monotonic() - (time.time() - self.started)
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # the first call only primes the counters
        psutil.cpu_percent(None)
        self._step = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="parity-run-system-metrics", daemon=True)
        self.samples = 0

    def start(self) -> "SystemSampler":
        self._thread.start()
        return self

    def sample(self) -> dict[str, float]:
        import psutil

        values = {
            "system/wall_time_s": time.monotonic() - self._t0,
            "system/cpu_percent": float(self._proc.cpu_percent(None)),
            "system/rss_mb": self._proc.memory_info().rss / 2**20,
            "system/host_cpu_percent": float(psutil.cpu_percent(None)),
            "system/host_memory_percent": float(psutil.virtual_memory().percent),
        }
        if self.gpu is not None:
            for i, util, used, total in self.gpu.read():
                values[f"system/gpu{i}/utilization_percent"] = util
                values[f"system/gpu{i}/memory_used_mb"] = used
                values[f"system/gpu{i}/memory_total_mb"] = total
        return values

    def _take(self) -> None:
        with self._lock:
            step = self._step
            self._step += 1
            values = self.sample()
            try:
                self.write(step, values)
                self.samples += 1
            except Exception as e:  # noqa: BLE001 - a lost sample must not end the run
                log.warning("a system metrics sample was not recorded: %s", e)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._take()
        finally:
            if self.on_exit is not None:
                self.on_exit()

    def stop(self) -> None:
        """Stop the thread and take the final sample (on the calling thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._take()


__all__ = ["GpuReader", "SystemSampler"]
