"""GPU runners: each on its own CUDA stream, timing the round trip on the host and the engine call
with CUDA events (PyTorch eager, CUDA graphs and torch.compile; ONNX Runtime's CUDA and TensorRT
providers with IO binding)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from pbkit.core.errors import PbkitError
from pbkit.core.runtime import strict_fp32
from pbkit.measure.runner import Runner, RunSpec, dtype_of, load_torch, ort_feed, ort_session
from pbkit.models.outputs import output_tensors


class CudaRunner(Runner):
    """A GPU runner on its own CUDA stream. One query: copy the pinned host input to the device,
    run the engine between two CUDA events, copy the outputs back to pinned host buffers,
    synchronise the stream. Wall clock spans all of it; the events span the engine call."""

    def __init__(self, spec: RunSpec, in_dtype: Any = None) -> None:
        super().__init__()
        import torch

        self.torch = torch
        self.device = torch.device("cuda", spec.device_index)
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.Stream(self.device)
        dtype = in_dtype if in_dtype is not None else dtype_of(spec.precision)
        x = spec.x.to(dtype)
        self.h_in = x.pin_memory()
        self.d_in = torch.empty_like(x, device=self.device)
        if spec.channels_last:
            self.d_in = self.d_in.contiguous(memory_format=torch.channels_last)
        self.ev0 = torch.cuda.Event(enable_timing=True)
        self.ev1 = torch.cuda.Event(enable_timing=True)
        self.h_out: list[Any] = []
        self.flags.update(
            cuda_graph=False,
            io_binding=False,
            data_transfers=True,
            channels_last=spec.channels_last,
            sync="cudaStreamSynchronize",
            tf32=False,
        )

    def _compute(self) -> list[Any]:
        """Enqueue the engine call on ``self.stream``; return the device output tensors."""
        raise NotImplementedError

    def _round_trip(self) -> float | None:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            self.d_in.copy_(self.h_in, non_blocking=True)
            self.ev0.record(self.stream)
            outs = self._compute()
            self.ev1.record(self.stream)
            if not self.h_out:
                self.h_out = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outs]
            for h, o in zip(self.h_out, outs, strict=True):
                h.copy_(o, non_blocking=True)
        self.stream.synchronize()
        return float(self.ev0.elapsed_time(self.ev1))

    def _query(self) -> list[np.ndarray]:
        self._round_trip()
        return [h.float().numpy() for h in self.h_out]

    def __call__(self) -> None:
        self._round_trip()

    def timed(self) -> tuple[float, float | None]:
        t0 = time.perf_counter_ns()
        gpu = self._round_trip()
        return (time.perf_counter_ns() - t0) / 1e6, gpu

    def outputs(self) -> list[np.ndarray]:
        return self._query()

    def close(self) -> None:
        self.stream.synchronize()


class TorchCuda(CudaRunner):
    def __init__(self, spec: RunSpec, mode: str = "eager") -> None:
        super().__init__(spec)
        torch = self.torch
        if spec.precision == "fp32":
            strict_fp32()
        self.model = load_torch(spec, "cuda")
        self.graph: Any = None
        self.flags["mode"] = mode
        if mode == "compile":
            self.model = torch.compile(self.model, mode=spec.compile_mode)
            self.flags["compile_mode"] = spec.compile_mode
        elif mode == "graph":
            self._capture()

    def _eager(self) -> list[Any]:
        with self.torch.inference_mode():
            return output_tensors(self.model(self.d_in))

    def _capture(self) -> None:
        """Warm up on the side stream, then capture one forward into a CUDA graph."""
        torch = self.torch
        self.d_in.copy_(self.h_in)
        with torch.cuda.stream(self.stream):
            for _ in range(3):
                self._eager()
        self.stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph, stream=self.stream):
            self.static_out = output_tensors(self.model(self.d_in))
        self.flags["cuda_graph"] = True

    def _compute(self) -> list[Any]:
        if self.graph is not None:
            self.graph.replay()
            return list(self.static_out)
        return self._eager()


class OrtCuda(CudaRunner):
    """ONNX Runtime on the GPU with IO binding: the input is bound in device memory on our stream
    (the provider runs on it too), the outputs are allocated and kept on the device."""

    def __init__(self, spec: RunSpec, provider: str = "CUDAExecutionProvider") -> None:
        spec = dataclasses.replace(
            spec, channels_last=False
        )  # ONNX Runtime binds a contiguous NCHW input
        super().__init__(spec, in_dtype=dtype_of("fp32"))
        self.d_in.copy_(self.h_in)
        stream = str(self.stream.cuda_stream)
        cuda_opts = {
            "device_id": str(spec.device_index),
            "user_compute_stream": stream,
            "has_user_compute_stream": "1",
        }
        providers: list[Any] = []
        if provider == "TensorrtExecutionProvider":
            cache = Path(spec.cache_dir or spec.path.parent / "trt-cache") / "ort-trt"
            cache.mkdir(parents=True, exist_ok=True)
            self.cache_hit = any(cache.glob("*.engine"))
            name = self._input_name(spec.path)
            shape = "x".join(str(d) for d in spec.x.shape)
            providers.append(
                (
                    "TensorrtExecutionProvider",
                    {
                        "device_id": str(spec.device_index),
                        "user_compute_stream": stream,
                        "has_user_compute_stream": "1",
                        "trt_fp16_enable": spec.precision == "fp16",
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(cache),
                        "trt_profile_min_shapes": f"{name}:{shape}",
                        "trt_profile_opt_shapes": f"{name}:{shape}",
                        "trt_profile_max_shapes": f"{name}:{shape}",
                    },
                )
            )
            self.flags.update(
                trt_fp16_enable=spec.precision == "fp16",
                engine_cache=str(cache),
                engine_cache_hit=self.cache_hit,
                timing_cache=True,
            )
        providers.append(("CUDAExecutionProvider", cuda_opts))
        self.sess = ort_session(spec.path, spec.threads, providers)
        self.flags.update(provider=provider, providers=self.sess.get_providers(), io_binding=True)
        if self.sess.get_providers()[0] != provider:
            raise PbkitError(
                f"onnxruntime did not take {provider} (got {self.sess.get_providers()})"
            )
        self.io = self.sess.io_binding()
        name = next(iter(ort_feed(self.sess, spec.x.numpy(), spec.path)))
        self.io.bind_input(
            name,
            "cuda",
            spec.device_index,
            np.float32,
            list(self.d_in.shape),
            self.d_in.data_ptr(),
        )
        for o in self.sess.get_outputs():
            self.io.bind_output(o.name, "cuda", spec.device_index)

    @staticmethod
    def _input_name(path: Path) -> str:
        import onnx

        return str(onnx.load(str(path), load_external_data=False).graph.input[0].name)

    def _round_trip(self) -> float | None:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            self.d_in.copy_(self.h_in, non_blocking=True)
            self.ev0.record(self.stream)
            self.sess.run_with_iobinding(self.io)
            self.ev1.record(self.stream)
        self._host = self.io.copy_outputs_to_cpu()  # synchronous device-to-host copies
        self.stream.synchronize()
        return float(self.ev0.elapsed_time(self.ev1))

    def _query(self) -> list[np.ndarray]:
        self._round_trip()
        return [np.asarray(h, dtype=np.float32) for h in self._host]
