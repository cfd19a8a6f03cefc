"""Static int8 quantisation of an exported restorer, checked against its fp32 graph.

`quantize(fp32_proto, calibration, channels, ...)` returns an int8 ModelProto
and a report, or raises `Int8Error` when the int8 graph strays too far from
the fp32 one. It uses onnxruntime's own tools (`onnxruntime.quantization`):

* QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantised
  node), per-channel int8 weights, uint8 activations with one static scale per
  tensor (calibrated min/max);
* calibration data: measurements read with the project's readers
  (`sei_tf.data.load_images`), split by name into a calibration set and a
  held-back set (the last `holdback` images in sorted order). The calibration
  images are cut into `crop` x `crop` windows on a regular grid (at most
  `crops_per_image` per image, deterministic: no random draws);
* agreement: each held-back image is restored by both graphs (whole image,
  centre crop of at most `check_size` pixels) and compared on [0, 1]:

      PSNR(int8, fp32) = 10 log10(1 / mean((clip(y_int8) - clip(y_fp32))^2))   [dB]

  The worst (lowest) held-back value must reach `threshold` dB.

Why a PSNR against fp32 and not against ground truth: the export only has
measurements. If the int8 error is independent of the fp32 model's own error,
MSE adds, so a model at PSNR P (vs the truth) loses
10 log10(1 + 10^((P - A) / 10)) dB when its int8 agreement is A dB: 0.1 dB at
32 dB needs A >= 48.3 dB, 1 dB needs A >= 37.9 dB.

Tiling: activation scales are static and per tensor, so every output pixel of
the int8 graph still depends only on its receptive field through the same
integer arithmetic; exact tiles stay exact (tests/test_int8.py checks tiles ==
whole image).
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np

from sei_tf.errors import SeiTfError

# Default agreement threshold (dB, worst held-back image), from benchmarks/results/inference.md:
# the trained 32x8 cnn restorers measured 50.4 dB (SR x2) and 46.2 dB (Gaussian blur 2) on
# their held-back measurements and lost 0.07 and 0.09 dB on the quality benchmark's test
# images. 40 dB leaves 6 dB of margin below the lowest (two held-back images are a small
# sample), while a graph below it loses about 0.6 dB on a 32 dB model by the estimate above,
# far more than a good calibration costs; a broken one (activation ranges from the wrong
# data, clipped or NaN activations) falls far below it. For the 0.1 dB goal, ask ~46 dB.
DEFAULT_THRESHOLD_DB = 40.0
DEFAULT_CROP = 128
DEFAULT_CROPS_PER_IMAGE = 4
DEFAULT_CHECK_SIZE = 256
QUANTIZATION = {"format": "QDQ", "weights": "int8, per channel (symmetric)",
                "activations": "uint8, per tensor, static (calibrated min/max)",
                "tool": "onnxruntime.quantization.quantize_static"}


class Int8Error(SeiTfError, RuntimeError):
    """The int8 graph could not be built or does not agree with fp32; nothing was written."""


def split_calibration(names, holdback: int):
    """(calibration indices, held-back indices): the last `holdback` names in sorted order are held back."""
    order = sorted(range(len(names)), key=lambda i: os.path.basename(str(names[i])))
    if holdback < 1 or len(order) <= holdback:
        raise Int8Error(f"int8 calibration needs at least {holdback + 1} measurement images "
                        f"({holdback} held back to check the result), got {len(order)}.")
    return order[:-holdback], order[-holdback:]


def grid_crops(image: np.ndarray, crop: int, limit: int):
    """Up to `limit` crop x crop windows of an HxWxC image, evenly spread over a regular grid.

    An image smaller than `crop` on a side gives one window of its own size on that side.
    """
    h, w = image.shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    starts = [(y, x) for y in range(0, h - ch + 1, ch) for x in range(0, w - cw + 1, cw)]
    picks = np.unique(np.linspace(0, len(starts) - 1, min(limit, len(starts))).round().astype(int))
    return [image[y:y + ch, x:x + cw] for y, x in (starts[i] for i in picks)]


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[y:y + size, x:x + size]


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) between two outputs clipped to [0, 1] (peak 1); inf when identical."""
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


class CropReader:
    """onnxruntime `CalibrationDataReader` over measurement crops, one crop (batch of 1) per call."""

    def __init__(self, crops, input_name: str):
        self._feeds = iter([{input_name: np.ascontiguousarray(c[None], np.float32)} for c in crops])

    def get_next(self):
        return next(self._feeds, None)


def load_calibration(calibration, channels: int, holdback: int, crop: int, crops_per_image: int):
    """Reads the measurements and returns (calibration crops, held-back images, their names)."""
    from sei_tf import data

    try:
        images, names = data.load_images(calibration, channels)
    except data.DataError as err:
        raise Int8Error(f"int8 calibration data: {err}") from err
    cal_idx, held_idx = split_calibration(names, holdback)
    crops = [c for i in cal_idx for c in grid_crops(images[i], crop, crops_per_image)]
    return crops, [images[i] for i in held_idx], [names[i] for i in held_idx], len(cal_idx)


def quantize(fp32_proto, calibration, channels: int, input_name: str = "input", output_name: str = "output",
             holdback: int = 2, threshold_db: float = DEFAULT_THRESHOLD_DB, crop: int = DEFAULT_CROP,
             crops_per_image: int = DEFAULT_CROPS_PER_IMAGE, check_size: int = DEFAULT_CHECK_SIZE, log=print):
    """Quantises `fp32_proto` (ModelProto) and checks it; returns (int8 ModelProto, report dict).

    calibration: folder, file or list of measurement files (as `sei_tf.data.list_images` takes).
    Raises `Int8Error` when there are too few images, when quantisation fails, or when
    the worst held-back PSNR(int8, fp32) is below `threshold_db` (the message gives both).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime import quantization as q

    crops, held, held_names, n_cal = load_calibration(calibration, channels, holdback, crop, crops_per_image)
    log(f"int8: calibrating on {len(crops)} crops of {crop} px from {n_cal} images; "
        f"checking on {len(held)} held-back images")
    with tempfile.TemporaryDirectory(prefix="sei-int8-") as tmp:
        fp32_path, int8_path = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(fp32_proto, fp32_path)  # quantize_static rewrites a ModelProto it is given
        try:
            q.quantize_static(fp32_path, int8_path, CropReader(crops, input_name),
                              quant_format=q.QuantFormat.QDQ, per_channel=True,
                              weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
                              calibrate_method=q.CalibrationMethod.MinMax)
            int8_proto = onnx.load(int8_path)
        except Exception as err:
            raise Int8Error(f"onnxruntime could not quantise the model: {type(err).__name__}: {err}") from err

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    fp32 = ort.InferenceSession(fp32_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(int8_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    scores = []
    for image in held:
        x = np.ascontiguousarray(centre_crop(image, check_size)[None], np.float32)
        ref = fp32.run([output_name], {input_name: x})[0]
        got = int8.run([output_name], {input_name: x})[0]
        scores.append(psnr_db(got, ref))
    worst = min(scores)
    report = {"calibration_images": n_cal, "calibration_crops": len(crops), "crop": crop,
              "holdback_images": len(held), "holdback_names": [os.path.basename(str(n)) for n in held_names],
              "psnr_vs_fp32_db": [round(s, 2) for s in scores], "psnr_vs_fp32_min_db": worst,
              "psnr_vs_fp32_mean_db": float(np.mean(scores)), "threshold_db": threshold_db}
    log(f"int8: PSNR vs fp32 on held-back images: worst {worst:.2f} dB, mean {report['psnr_vs_fp32_mean_db']:.2f} dB "
        f"(threshold {threshold_db:g} dB)")
    if not worst >= threshold_db:  # NaN fails too
        raise Int8Error(f"int8 output disagrees with fp32: PSNR {worst:.2f} dB on the worst held-back image "
                        f"({report['holdback_names'][scores.index(worst)] if scores else '?'}), below the "
                        f"threshold {threshold_db:g} dB; no file written. Calibrate on more or more typical "
                        "measurements, lower --int8_threshold (each dB of agreement below ~45 dB costs "
                        "quality), or export fp32.")
    return int8_proto, report


def metadata(report: dict) -> dict:
    """The metadata_props that an int8 export adds (strings)."""
    return {
        "precision": "int8",
        "quantization": json.dumps(QUANTIZATION),
        "int8_calibration_images": str(report["calibration_images"]),
        "int8_calibration_crops": str(report["calibration_crops"]),
        "int8_holdback_images": str(report["holdback_images"]),
        "int8_psnr_vs_fp32_db": f"{report['psnr_vs_fp32_min_db']:.2f}",
        "int8_psnr_vs_fp32_mean_db": f"{report['psnr_vs_fp32_mean_db']:.2f}",
        "int8_threshold_db": f"{report['threshold_db']:g}",
    }
