"""`Restorer`: run an exported sei-tf restorer (.onnx) with onnxruntime.

    from serving import Restorer
    r = Restorer("restorer.onnx", device="auto", tile=512)
    out = r.restore("photo.png")        # or a NumPy array: HxW / HxWxC, uint8/uint16/float

The output has the input's dtype and range (uint8 -> uint8, uint16 -> uint16,
float in [0, 1] -> float in [0, 1], clipped) and layout (HxW stays HxW).

Providers: TensorRT, then CUDA, then CPU, among those this onnxruntime build
has (`device="auto"`). `device="cuda"` raises unless a GPU provider is really
loaded (onnxruntime silently falls back to CPU with only a warning when the
CUDA libraries are missing; we check `session.get_providers()`). On a GPU the
tiles go through IO binding (the output stays on the device until copied once).

No TensorFlow import here: serving needs only onnxruntime, NumPy, Pillow and
tifffile. Every error a user can cause is a `sei_tf.errors.SeiTfError`.
"""

from __future__ import annotations

import os

import numpy as np

from sei_tf.errors import SeiTfError
from serving import images, providers, tiling
from serving.metadata import MetadataError, RestorerMetadata
from serving.providers import GpuOptions

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
_SAME = object()


class RestorerError(SeiTfError, RuntimeError):
    """The model cannot be loaded or run as asked."""


class ModelFileError(RestorerError):
    """The .onnx file is missing, corrupt or truncated."""


class DeviceError(RestorerError):
    """The requested device is not available."""


class InputError(SeiTfError, ValueError):
    """The image does not fit the model (channels, dtype, shape)."""


def _import_ort():
    import onnxruntime as ort

    return ort


def select_providers(device: str, available):
    """Providers to request, in priority order, for `device`."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}.")
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "cuda" and not gpu:
        raise DeviceError(
            "device='cuda' was requested but this onnxruntime has no GPU provider "
            f"(available: {', '.join(available)}). Install onnxruntime-gpu *instead of* onnxruntime "
            "(both share one import folder; with both installed the CUDA provider disappears), "
            "or use device='cpu'.")
    return gpu + [CPU_PROVIDER]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_spinning(threads: int | None) -> bool:
    """Spinning on only when the intra-op pool leaves some of this process's cores free."""
    return bool(threads) and int(threads) < usable_cores()


def _input_channels(model_path) -> int:
    """Channels (last dim) of the graph input, from a CPU session without graph optimisation.

    Only TensorRT needs them before the real session exists (its shape profile).
    """
    ort = _import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        shape = ort.InferenceSession(model_path, options, providers=[CPU_PROVIDER]).get_inputs()[0].shape
        return int(shape[-1])
    except Exception:  # a broken file: the real session reports it
        return 3


class Restorer:
    """An exported restorer: metadata, onnxruntime session and tiled inference.

    tile: window size in input pixels fed to the network (None: whole image).
      Exact tiling (bit-identical) for backbones with a known receptive field;
      overlapping tiles blended with linear ramps for global ones (SwinIR).
    overlap: blend overlap in input pixels (global backbones; default tile/8, at least 32, at most tile/2).
    threads: onnxruntime intra-op threads (None: onnxruntime's default, one per
      physical core).
    spinning: whether idle worker threads busy-wait for work
      ("session.intra_op.allow_spinning"). "auto" (default): off when the
      thread pool would use every core this process may run on (onnxruntime's
      default), on when `threads` leaves cores free. Spinning burns the cores
      it waits on, which slows everything else on a shared or oversubscribed
      CPU (benchmarks/results/inference.md; serving/README.md, "Tuning").
      True/False force it; None keeps onnxruntime's default (on).
    gpu: `serving.providers.GpuOptions` for the CUDA/TensorRT providers (cuDNN
      algorithm search, TensorRT profile, engine cache, fp16); ignored on CPU.
      The options handed to the session are kept in `provider_options`.

    The file may hold fp32, fp16 or int8 (static QDQ) weights; `precision`
    says which (from the metadata). I/O is float32 for all of them.
    """

    def __init__(self, model_path, device: str = "auto", tile: int | None = 512,
                 overlap: int | None = None, threads: int | None = None, spinning="auto",
                 gpu: GpuOptions | None = None):
        ort = _import_ort()
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise ModelFileError(f"model file not found: {model_path}")
        self.model_path = model_path
        self.device = device
        requested = select_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.spinning = default_spinning(threads) if spinning == "auto" else spinning
        if self.spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        channels = _input_channels(model_path) if "TensorrtExecutionProvider" in requested else None
        self.provider_options = providers.provider_options(requested, gpu, tile, channels)
        self._device_id = (gpu or GpuOptions()).device_id
        try:
            self.session = ort.InferenceSession(model_path, sess_options=options, providers=requested,
                                                provider_options=self.provider_options)
        except Exception as err:  # onnxruntime raises InvalidProtobuf, Fail, ...
            raise ModelFileError(
                f"{model_path} is not a loadable ONNX model (corrupt or truncated file?): "
                f"{type(err).__name__}: {err}") from err
        self.providers = self.session.get_providers()
        if device == "cuda" and not any(p in self.providers for p in GPU_PROVIDERS):
            raise DeviceError(
                f"device='cuda' was requested but onnxruntime loaded only {self.providers} "
                "(the CUDA provider failed to load: check the CUDA/cuDNN libraries and the warning above).")
        try:
            self.metadata = RestorerMetadata.from_props(
                self.session.get_modelmeta().custom_metadata_map, source=model_path)
        except MetadataError as err:
            raise RestorerError(str(err)) from err
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        if (self.input_name, self.output_name) != (self.metadata.input_name, self.metadata.output_name):
            raise RestorerError(f"{model_path}: graph I/O {self.input_name!r}/{self.output_name!r} do not match "
                                f"the metadata ({self.metadata.input_name!r}/{self.metadata.output_name!r}).")
        self._check_tile(tile)
        self.tile = tile
        self.overlap = overlap
        self.on_gpu = self.providers[0] in GPU_PROVIDERS

    def _check_tile(self, tile):
        if tile is None:
            return
        if int(tile) != tile or tile < 1:
            raise tiling.TilingError(f"tile must be a positive number of pixels or None, got {tile}.")
        ctx = self.metadata.tile_context
        if ctx is not None and tile <= 2 * ctx:
            raise tiling.TilingError(f"tile {tile} is too small for this model: exact tiling reads {ctx} pixels of "
                             f"context on each side, so tile must be at least {2 * ctx + 1}.")

    # -- metadata shortcuts -------------------------------------------------
    @property
    def scale(self) -> int:
        return self.metadata.scale

    @property
    def channels(self) -> int:
        return self.metadata.channels

    @property
    def task(self) -> str:
        return self.metadata.task

    @property
    def precision(self) -> str:
        """Weights of the loaded file: 'fp32', 'fp16' or 'int8'."""
        return self.metadata.precision

    @property
    def exact_tiling(self) -> bool:
        return self.metadata.tile_context is not None

    def __repr__(self):
        m = self.metadata
        return (f"Restorer({self.model_path!r}, task={m.task} x{m.scale}, channels={m.channels}, "
                f"backbone={m.backbone.get('class', '?')}, precision={m.precision}, providers={self.providers}, "
                f"tile={self.tile})")

    # -- inference ------------------------------------------------------------
    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw model call: float32 NHWC in [0, 1] -> float32 NHWC (no clipping)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.on_gpu:
            return self._run_iobinding(x)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def _run_iobinding(self, x):
        """GPU path: input copied to the device once, output fetched once."""
        ort = _import_ort()
        binding = self.session.io_binding()
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", self._device_id)
        binding.bind_ortvalue_input(self.input_name, x_dev)
        binding.bind_output(self.output_name, "cuda", self._device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def restore(self, image, *, dtype=None, tile=_SAME, overlap=_SAME, callback=None) -> np.ndarray:
        """Restores an image (array or file path) tile by tile.

        dtype: output dtype (default: the input's; uint8, uint16 or a float type).
        tile / overlap: override the instance's settings for this call.
        callback: called once per processed tile.
        """
        if isinstance(image, (str, os.PathLike)):
            image = images.read_image(image)
        image = np.asarray(image)
        squeeze = image.ndim == 2
        arr = self._check(image)
        in_kind = _kind(image.dtype, "input")
        final_dtype = np.dtype(dtype) if dtype is not None else image.dtype
        out_dtype = final_dtype
        if out_dtype == np.float16:
            out_dtype = np.dtype(np.float32)  # accumulated in float32; cast at the end
        out_kind = _kind(out_dtype, "output")
        tile = self.tile if tile is _SAME else tile
        self._check_tile(tile)
        overlap = self.overlap if overlap is _SAME else overlap
        out = tiling.tiled_apply(
            self.run, arr, scale=self.scale, channels=self.channels, tile=tile,
            context=self.metadata.tile_context, overlap=overlap,
            to_float=lambda a: _to_float(a, in_kind), from_float=lambda y: _from_float(y, out_kind, out_dtype),
            out_dtype=out_dtype, callback=callback, align=self.metadata.tile_align)
        if out.dtype != final_dtype:
            out = out.astype(final_dtype)
        return out[..., 0] if squeeze else out

    __call__ = restore

    def tiles_for(self, height: int, width: int, tile=_SAME, overlap=_SAME) -> int:
        """Number of tiles an image of this size is split into."""
        tile = self.tile if tile is _SAME else tile
        overlap = self.overlap if overlap is _SAME else overlap
        overlap = overlap if overlap is not None else tiling.default_overlap(tile)
        return tiling.count_tiles(height, width, tile, self.metadata.tile_context, overlap,
                                  self.metadata.tile_align)

    def _check(self, image):
        c = self.channels
        if image.ndim == 2:
            if c != 1:
                raise InputError(f"greyscale image (HxW {image.shape}) but the model restores {c}-channel images.")
            return image[..., None]
        if image.ndim != 3:
            raise InputError(f"expected an HxW or HxWxC image, got shape {image.shape}.")
        if image.shape[-1] != c:
            hint = " (RGBA? drop the alpha channel)" if image.shape[-1] == 4 else ""
            raise InputError(f"image has {image.shape[-1]} channels{hint} but the model restores "
                             f"{c}-channel images ({'greyscale' if c == 1 else 'RGB' if c == 3 else c}).")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise InputError(f"empty image of shape {image.shape}.")
        return image


def _kind(dtype, role):
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return "u8"
    if dtype == np.uint16:
        return "u16"
    if dtype.kind == "f":
        return "float"
    raise InputError(f"unsupported {role} dtype {dtype}: use uint8, uint16 or float (values in [0, 1]).")


def _to_float(a, kind):
    if kind == "u8":
        return a.astype(np.float32) / np.float32(255)
    if kind == "u16":
        return a.astype(np.float32) / np.float32(65535)
    return a.astype(np.float32)


def _from_float(y, kind, dtype):
    y = np.clip(y, 0.0, 1.0)
    if kind == "u8":
        return np.rint(y * 255).astype(np.uint8)
    if kind == "u16":
        return np.rint(y * 65535).astype(np.uint16)
    return y.astype(dtype)
