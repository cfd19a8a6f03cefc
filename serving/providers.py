"""GPU execution-provider options for onnxruntime (CUDA, TensorRT), and their CLI flags.

`GpuOptions` holds the settings that matter for a restorer on a GPU;
`provider_options(providers, gpu, tile, channels)` turns them into the
per-provider option dicts that `onnxruntime.InferenceSession(...,
providers=..., provider_options=...)` takes. The CPU provider gets none.

* CUDA, `cudnn_conv_algo_search`: onnxruntime's default, EXHAUSTIVE, benchmarks
  every cuDNN algorithm the first time a convolution sees a new input shape,
  and again for each new shape (onnxruntime #12880): a service that restores
  images of many sizes pays that search per size. HEURISTIC (our default) asks
  cuDNN for its pick without timing; EXHAUSTIVE pays off only when all inputs
  have one shape (e.g. fixed tiles of large images); DEFAULT uses the first
  algorithm that fits.
* TensorRT builds an engine per optimisation profile: a dynamic input needs
  min/opt/max shapes (`trt_profile_min_shapes` etc., "input:NxHxWxC"); inputs
  outside [min, max] fail or rebuild. Our tiles are all `tile` x `tile` except
  for images smaller than a tile, so the default profile is min 1x32x32xC,
  opt = max = 1 x tile x tile x C. Building takes minutes: `trt_cache` keeps
  engines (and timing caches) on disk between runs.
* fp16 (`trt_fp16`) is for GPUs only: TensorRT then runs layers in half
  precision. CPUs have no fast fp16 convolutions (an fp16 .onnx runs slower
  than fp32 there), and half precision can overflow to NaN (black images, as
  Real-ESRGAN users reported); check the output on your own images.

None of this can run without a GPU; on CPU the tests check the dicts built here
and handed to the session (onnxruntime reports `session.get_provider_options()`
only for providers it has loaded).
"""

from __future__ import annotations

import dataclasses

from absl import flags

from sei_tf.errors import SeiTfError

CONV_ALGO_SEARCH = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")
TRT_MIN_SIDE = 32


class ProviderOptionsError(SeiTfError, ValueError):
    """GPU provider options that cannot work (bad search mode, inverted profile)."""


@dataclasses.dataclass(frozen=True)
class GpuOptions:
    """Settings for the CUDA and TensorRT providers (ignored on CPU).

    cudnn_conv_algo_search: HEURISTIC, EXHAUSTIVE or DEFAULT (see the module docstring).
    trt_min_side / trt_opt_side / trt_max_side: TensorRT profile, input pixels per side
      (batch 1); None: 32, tile, tile (max and opt are required when there is no tile).
    trt_cache: folder for TensorRT engines and timing caches (None: no cache).
    trt_fp16: let TensorRT run layers in float16.
    device_id: GPU index.
    """

    cudnn_conv_algo_search: str = "HEURISTIC"
    trt_min_side: int | None = None
    trt_opt_side: int | None = None
    trt_max_side: int | None = None
    trt_cache: str | None = None
    trt_fp16: bool = False
    device_id: int = 0

    def __post_init__(self):
        if self.cudnn_conv_algo_search not in CONV_ALGO_SEARCH:
            raise ProviderOptionsError(f"cudnn_conv_algo_search must be one of {', '.join(CONV_ALGO_SEARCH)}, "
                                       f"got {self.cudnn_conv_algo_search!r}.")


def trt_profile(gpu: GpuOptions, tile: int | None, channels: int, input_name: str = "input") -> dict:
    """TensorRT min/opt/max shape options for a dynamic NHWC input."""
    sides = [gpu.trt_min_side or TRT_MIN_SIDE, gpu.trt_opt_side or tile, gpu.trt_max_side or tile]
    if sides[1] is None or sides[2] is None:
        raise ProviderOptionsError("TensorRT needs a shape profile: without a tile, give trt_opt_side and "
                                   "trt_max_side (the largest image side you will send).")
    if not sides[0] <= sides[1] <= sides[2]:
        raise ProviderOptionsError(f"TensorRT profile must satisfy min <= opt <= max, got {sides}.")
    return {f"trt_profile_{k}_shapes": f"{input_name}:1x{s}x{s}x{channels}"
            for k, s in zip(("min", "opt", "max"), sides)}


def provider_options(providers, gpu: GpuOptions | None, tile: int | None, channels: int,
                     input_name: str = "input") -> list:
    """One options dict per provider in `providers` (same order), for InferenceSession."""
    gpu = gpu or GpuOptions()
    out = []
    for name in providers:
        if name == "CUDAExecutionProvider":
            out.append({"device_id": str(gpu.device_id), "cudnn_conv_algo_search": gpu.cudnn_conv_algo_search})
        elif name == "TensorrtExecutionProvider":
            opts = {"device_id": str(gpu.device_id), "trt_fp16_enable": "1" if gpu.trt_fp16 else "0",
                    **trt_profile(gpu, tile, channels, input_name)}
            if gpu.trt_cache:
                opts.update({"trt_engine_cache_enable": "1", "trt_engine_cache_path": gpu.trt_cache,
                             "trt_timing_cache_enable": "1", "trt_timing_cache_path": gpu.trt_cache})
            out.append(opts)
        else:
            out.append({})
    return out


def define_flags(flag_values=flags.FLAGS):
    """The GPU flags shared by `serving.restore` and `serving.http`."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum("cudnn_conv_algo_search", "HEURISTIC", list(CONV_ALGO_SEARCH),
                      "CUDA: cuDNN convolution algorithm search. EXHAUSTIVE times every algorithm again for "
                      "each new input shape (onnxruntime #12880): only for inputs of one size.", **fv)
    flags.DEFINE_integer("trt_min_side", None, f"TensorRT profile: smallest input side (default {TRT_MIN_SIDE}).",
                         **fv)
    flags.DEFINE_integer("trt_opt_side", None, "TensorRT profile: the side to optimise for (default: --tile).", **fv)
    flags.DEFINE_integer("trt_max_side", None, "TensorRT profile: largest input side (default: --tile).", **fv)
    flags.DEFINE_string("trt_cache", None, "TensorRT: folder that keeps built engines between runs.", **fv)
    flags.DEFINE_bool("trt_fp16", False, "TensorRT: allow float16 layers (GPU only; check outputs for NaN).", **fv)


def from_flags(flag_values=flags.FLAGS) -> GpuOptions:
    """GpuOptions from the flags of `define_flags`."""
    f = flag_values
    return GpuOptions(cudnn_conv_algo_search=f.cudnn_conv_algo_search, trt_min_side=f.trt_min_side,
                      trt_opt_side=f.trt_opt_side, trt_max_side=f.trt_max_side, trt_cache=f.trt_cache,
                      trt_fp16=f.trt_fp16)
