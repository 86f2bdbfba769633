"""GPU facts and monitoring through NVML (the ``nvidia-ml-py`` distribution, module ``pynvml``).

- :func:`gpu_record`: the GPU part of the machine record (static facts and a state snapshot);
  every field that cannot be read is null, with the reason under ``unavailable``.
- :func:`state`: clocks, temperature, power and throttle reasons now (start and end of a bench).
- :class:`Sampler`: a background thread that samples NVML used memory, throttle reasons and the
  process RSS, for memory peaks and the stability gate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

# nvmlClocksEventReason* bits (formerly ClocksThrottleReason*), in NVML's order.
REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
BENIGN = {"gpu_idle"}  # measurement.md: any reason other than idle marks a point unstable

_nvml: Any = None
_nvml_error: str | None = None


def decode_reasons(mask: int) -> list[str]:
    names = [name for bit, name in REASONS.items() if mask & bit]
    rest = mask & ~sum(REASONS)
    return names + ([f"other_0x{rest:x}"] if rest else [])


def nvml() -> tuple[Any, str | None]:
    """(the initialised pynvml module, None), or (None, why not)."""
    global _nvml, _nvml_error
    if _nvml is None and _nvml_error is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml = pynvml
        except ImportError:
            _nvml_error = "nvidia-ml-py (pynvml) is not installed"
        except Exception as e:  # NVMLError: no driver, no device, no permission
            _nvml_error = f"NVML could not start: {e}"
    return _nvml, _nvml_error


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def handle_for(uuid: str | None, index: int, unavailable: dict[str, str]) -> Any:
    """The NVML handle of the GPU torch uses: matched by UUID (NVML ignores CUDA_VISIBLE_DEVICES),
    else by index, noted as such."""
    nv, why = nvml()
    if nv is None:
        unavailable["gpu.nvml"] = str(why)
        return None
    try:
        count = nv.nvmlDeviceGetCount()
        if uuid:
            want = uuid.removeprefix("GPU-").lower()
            for i in range(count):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                if _str(nv.nvmlDeviceGetUUID(h)).removeprefix("GPU-").lower() == want:
                    return h
        unavailable["gpu.nvml_match"] = f"matched by index {index}, not by UUID"
        return nv.nvmlDeviceGetHandleByIndex(index)
    except Exception as e:
        unavailable["gpu.nvml"] = f"no NVML handle: {e}"
        return None


def _read(unavailable: dict[str, str], key: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # NVMLError_NotSupported, NoPermission, ...
        unavailable[key] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return None


def state(
    handle: Any, unavailable: dict[str, str] | None = None, prefix: str = "gpu.state"
) -> dict[str, Any]:
    """Clocks (MHz), temperature (C), power (W), used memory and throttle reasons now."""
    nv, _ = nvml()
    miss: dict[str, str] = {} if unavailable is None else unavailable
    if handle is None or nv is None:
        return {}

    def clock(kind: int) -> Callable[[], int]:
        return lambda: int(nv.nvmlDeviceGetClockInfo(handle, kind))

    mask = _read(miss, f"{prefix}.throttle_reasons", lambda: int(_reasons_mask(nv, handle)))
    return {
        "sm_clock_mhz": _read(miss, f"{prefix}.sm_clock_mhz", clock(nv.NVML_CLOCK_SM)),
        "mem_clock_mhz": _read(miss, f"{prefix}.mem_clock_mhz", clock(nv.NVML_CLOCK_MEM)),
        "graphics_clock_mhz": _read(
            miss, f"{prefix}.graphics_clock_mhz", clock(nv.NVML_CLOCK_GRAPHICS)
        ),
        "temperature_c": _read(
            miss,
            f"{prefix}.temperature_c",
            lambda: int(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)),
        ),
        "power_w": _read(
            miss, f"{prefix}.power_w", lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0
        ),
        "memory_used_bytes": _read(
            miss, f"{prefix}.memory_used_bytes", lambda: used_memory(handle)
        ),
        "throttle_reasons": decode_reasons(mask) if mask is not None else None,
    }


def used_memory(handle: Any) -> int | None:
    """NVML used device memory in bytes, or None without NVML or a handle."""
    nv, _ = nvml()
    if nv is None or handle is None:
        return None
    return int(nv.nvmlDeviceGetMemoryInfo(handle).used)


def _reasons_mask(nv: Any, handle: Any) -> int:
    fn = (
        getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        or nv.nvmlDeviceGetCurrentClocksThrottleReasons
    )
    return int(fn(handle))


def _mode(value: Any) -> Any:
    """NVML modes come as 0/1 or [current, pending] pairs: report the current one as a bool."""
    current = value[0] if isinstance(value, list | tuple) else value
    return bool(current) if current in (0, 1) else current


def gpu_record(
    index: int, torch_props: dict[str, Any], unavailable: dict[str, str]
) -> dict[str, Any]:
    """Static facts of the GPU torch sees as ``index``, merged over what torch reported."""
    out: dict[str, Any] = dict(torch_props)
    h = handle_for(torch_props.get("uuid"), index, unavailable)
    nv, _ = nvml()
    fields: dict[str, Callable[[], Any]] = {}
    if h is not None and nv is not None:
        fields = {
            "uuid": lambda: _str(nv.nvmlDeviceGetUUID(h)),
            "nvml_name": lambda: _str(nv.nvmlDeviceGetName(h)),
            "memory_bytes": lambda: int(nv.nvmlDeviceGetMemoryInfo(h).total),
            "driver_version": lambda: _str(nv.nvmlSystemGetDriverVersion()),
            "cuda_driver_version": lambda: _cuda_version(
                int(nv.nvmlSystemGetCudaDriverVersion_v2())
            ),
            "persistence_mode": lambda: _mode(nv.nvmlDeviceGetPersistenceMode(h)),
            "mig_mode": lambda: _mode(nv.nvmlDeviceGetMigMode(h)),
            "ecc_mode": lambda: _mode(nv.nvmlDeviceGetEccMode(h)),
            "power_limit_w": lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
            "max_sm_clock_mhz": lambda: int(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
            "pcie_gen": lambda: int(nv.nvmlDeviceGetCurrPcieLinkGeneration(h)),
            "pcie_width": lambda: int(nv.nvmlDeviceGetCurrPcieLinkWidth(h)),
            "pcie_gen_max": lambda: int(nv.nvmlDeviceGetMaxPcieLinkGeneration(h)),
            "pcie_width_max": lambda: int(nv.nvmlDeviceGetMaxPcieLinkWidth(h)),
        }
        for key, fn in fields.items():
            value = _read(unavailable, f"gpu.{key}", fn)
            if value is not None or key not in out:
                out[key] = value
        out["state_start"] = state(h, unavailable, "gpu.state_start")
    else:
        for key in (
            "driver_version",
            "cuda_driver_version",
            "persistence_mode",
            "mig_mode",
            "ecc_mode",
            "power_limit_w",
            "pcie_gen",
            "pcie_width",
            "state_start",
        ):
            out.setdefault(key, None)
    return out


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


class Sampler:
    """Sample NVML used memory and throttle reasons (when a handle is given) and this process's
    RSS every ``interval_s`` in a background thread. Use as a context manager."""

    def __init__(self, handle: Any = None, interval_s: float = 0.005) -> None:
        import psutil

        self.handle, self.interval = handle, interval_s
        self.proc = psutil.Process()
        self.nv: Any
        self.nv, _ = nvml() if handle is not None else (None, None)
        self.rss_peak = 0
        self.nvml_peak: int | None = None
        self.reasons: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pbkit-sampler", daemon=True)

    def sample(self) -> None:
        self.rss_peak = max(self.rss_peak, self.proc.memory_info().rss)
        if self.nv is not None:
            try:
                used = used_memory(self.handle)
                if used is not None:
                    self.nvml_peak = used if self.nvml_peak is None else max(self.nvml_peak, used)
                self.reasons.update(decode_reasons(_reasons_mask(self.nv, self.handle)))
            except Exception:  # a failed sample is skipped; the fields stay null when none succeed
                pass
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def bad_reasons(self) -> list[str]:
        return sorted(self.reasons - BENIGN)
