"""Tiled inference for images of any size, independent of the inference engine.

Two modes, chosen by the model's receptive field (`tile_context` metadata):

* exact (convolutional backbones, context `r` known): every tile is a window
  of `tile` input pixels that reads at least `r` pixels of context around its
  *core*; only the core's output is kept. Cores partition the image, so the
  result is bit-identical to whole-image inference (each output pixel sees the
  same inputs through the same arithmetic). At the image border the window
  starts at the border, exactly as the whole image does.
* blend (global receptive field, e.g. SwinIR): overlapping windows of `tile`
  pixels, overlapping by at least `overlap` pixels. In each overlap the outer
  quarter next to a tile's edge (where a global model errs most) gets no
  weight and the middle half is cross-faded with linear ramps (the weights of
  neighbouring tiles sum to one). The result differs slightly from
  whole-image inference near the seams: measure it (tests report it).

For streaming (`serving.large_images`), `aligned_plan` / `iter_aligned_tiles`
put exact cores on a fixed grid, so that each core's output is one tile of a
tiled TIFF, yielded in file order.

All windows have the same size (the last one is shifted back inside the
image), which suits engines that specialise on shapes (TensorRT). Peak memory
is the output array (plus float accumulators in blend mode) and one tile's
activations: the input is converted to float tile by tile.
"""

from __future__ import annotations

import numpy as np

from sei_tf.errors import SeiTfError


class TilingError(SeiTfError, ValueError):
    """A tile or overlap size that cannot work with the model (e.g. smaller than its context)."""


def exact_plan(n: int, tile: int | None, context: int):
    """1-D exact tiling: [(window_start, window_end, core_start, core_end)]."""
    if tile is None or n <= tile:
        return [(0, n, 0, n)]
    if tile <= 2 * context:
        raise TilingError(f"tile {tile} must exceed twice the receptive-field radius ({context}): "
                         f"use tile >= {2 * context + 1}.")
    plan, c0 = [], 0
    while c0 < n:
        ws = max(0, min(c0 - context, n - tile))
        we = ws + tile
        c1 = n if we >= n else we - context
        plan.append((ws, we, c0, c1))
        c0 = c1
    return plan


def aligned_plan(n: int, core: int, context: int):
    """1-D exact tiling with cores on a fixed grid: [(window_start, window_end, core_start, core_end)].

    Cores are [k*core, (k+1)*core) (the last one ends at n), so each core's
    output is one tile of a tiled TIFF with `core * scale` output pixels per
    side. Every window has min(n, core + 2*context) pixels and contains its core
    plus `context` pixels on each side (or reaches the border), so the result is
    bit-identical to whole-image inference, as with `exact_plan`.
    """
    if core < 1:
        raise TilingError(f"core {core} must be at least 1 pixel.")
    window = min(n, core + 2 * context)
    plan = []
    for c0 in range(0, n, core):
        c1 = min(n, c0 + core)
        ws = max(0, min(c0 - context, n - window))
        plan.append((ws, ws + window, c0, c1))
    return plan


def iter_aligned_tiles(run, read, height: int, width: int, *, core_y: int, core_x: int, context: int,
                       scale: int, channels: int, to_float, from_float, callback=None):
    """Yields the restored image as output tiles, row by row (the order a tiled TIFF stores them).

    read(y0, y1, x0, x1): the input window, (y1-y0, x1-x0, C) of any dtype
    (e.g. from a file, read lazily); run, to_float, from_float as in
    `tiled_apply`. Each tile is the output of one input core of core_y x core_x
    pixels (smaller at the right and bottom borders), i.e. (core_y*scale,
    core_x*scale, C) output pixels. Only one window is in memory at a time.
    """
    s = scale
    plan_x = aligned_plan(width, core_x, context)
    for ys, ye, cy0, cy1 in aligned_plan(height, core_y, context):
        for xs, xe, cx0, cx1 in plan_x:
            y = _run_checked(run, to_float(read(ys, ye, xs, xe)), s, channels)
            yield from_float(y[(cy0 - ys) * s:(cy1 - ys) * s, (cx0 - xs) * s:(cx1 - xs) * s])
            del y
            if callback:
                callback()


def blend_plan(n: int, tile: int | None, overlap: int, align: int = 1):
    """1-D overlapping tiling: [(window_start, window_end)].

    Window starts are multiples of `align` (SwinIR's attention-window size:
    a window grid that moved with the tile would change every output pixel,
    not just those near the seams); `tile` and the step are rounded down to
    multiples of `align`. Every window has `tile` pixels except the last,
    which ends at the border and may be up to `align - 1` pixels longer.
    """
    if tile is None or n <= tile:
        return [(0, n)]
    align = max(1, int(align))
    tile = max(align, tile // align * align)
    if not 0 < overlap < tile:
        raise TilingError(f"overlap {overlap} must be in (0, tile={tile}).")
    step = max(align, (tile - overlap) // align * align)
    starts, s = [], 0
    while s + tile < n:
        starts.append(s)
        s += step
    last = (n - tile) // align * align
    if starts and starts[-1] >= last:
        starts.pop()
    starts.append(last)
    return [(s, s + tile) for s in starts[:-1]] + [(last, n)]


def _ramp(length: int) -> np.ndarray:
    """0 over the first quarter, linear over the middle half, 1 over the last quarter.

    Tile edges are where a global-receptive-field model errs most, so each
    tile's outer quarter of an overlap gets no weight; `_ramp(L) + _ramp(L)[::-1]`
    is 1 everywhere (a cross-fade).
    """
    margin = length // 4
    core = length - 2 * margin
    ramp = np.ones(length, np.float32)
    ramp[:margin] = 0.0
    ramp[margin:margin + core] = (np.arange(core, dtype=np.float32) + 0.5) / core
    return ramp


def blend_weights(plan, index: int, scale: int) -> np.ndarray:
    """Cross-fade weights (output pixels) of window `index` along one axis."""
    ws, we = plan[index]
    length = (we - ws) * scale
    w = np.ones(length, np.float32)
    if index > 0:  # fade in over the overlap with the previous window
        n = (plan[index - 1][1] - ws) * scale
        w[:n] = _ramp(n)
    if index + 1 < len(plan):  # fade out over the overlap with the next window
        n = (we - plan[index + 1][0]) * scale
        w[length - n:] = np.minimum(w[length - n:], _ramp(n)[::-1])
    return w


def count_tiles(h, w, tile, context, overlap, align=1):
    if context is not None:
        return len(exact_plan(h, tile, context)) * len(exact_plan(w, tile, context))
    return len(blend_plan(h, tile, overlap, align)) * len(blend_plan(w, tile, overlap, align))


def tiled_apply(run, image, *, scale: int, channels: int, tile: int | None, context: int | None,
                overlap: int | None, to_float, from_float, out_dtype, callback=None,
                align: int = 1) -> np.ndarray:
    """Applies `run` tile by tile to `image` (HxWxC, any dtype).

    run(x): float32 (1, h, w, C) -> float32 (1, h*scale, w*scale, C).
    to_float(a): a slice of `image` -> float32 in [0, 1];
    from_float(y): float32 tile -> `out_dtype` (clipping, rounding).
    callback(): called once per tile (progress bars).
    align: blended windows start at multiples of it (see `blend_plan`).
    """
    h, w = image.shape[:2]
    s = scale
    if context is not None:
        out = np.empty((h * s, w * s, channels), out_dtype)
        plan_y, plan_x = exact_plan(h, tile, context), exact_plan(w, tile, context)
        for ys, ye, cy0, cy1 in plan_y:
            for xs, xe, cx0, cx1 in plan_x:
                y = _run_checked(run, to_float(image[ys:ye, xs:xe]), s, channels)
                core = y[(cy0 - ys) * s:(cy1 - ys) * s, (cx0 - xs) * s:(cx1 - xs) * s]
                out[cy0 * s:cy1 * s, cx0 * s:cx1 * s] = from_float(core)
                if callback:
                    callback()
        return out

    if overlap is None:
        overlap = default_overlap(tile)
    plan_y, plan_x = blend_plan(h, tile, overlap, align), blend_plan(w, tile, overlap, align)
    if len(plan_y) * len(plan_x) == 1:
        y = _run_checked(run, to_float(image), s, channels)
        if callback:
            callback()
        return from_float(y)
    acc = np.zeros((h * s, w * s, channels), np.float32)
    weight = np.zeros((h * s, w * s, 1), np.float32)
    for iy, (ys, ye) in enumerate(plan_y):
        wy = blend_weights(plan_y, iy, s)
        for ix, (xs, xe) in enumerate(plan_x):
            wx = blend_weights(plan_x, ix, s)
            wt = (wy[:, None] * wx[None, :])[..., None]
            y = _run_checked(run, to_float(image[ys:ye, xs:xe]), s, channels)
            acc[ys * s:ye * s, xs * s:xe * s] += wt * y
            weight[ys * s:ye * s, xs * s:xe * s] += wt
            if callback:
                callback()
    out = np.empty((h * s, w * s, channels), out_dtype)
    rows = max(1, (1 << 22) // max(1, w * s * channels))  # convert ~4M values at a time
    for r in range(0, h * s, rows):
        out[r:r + rows] = from_float(acc[r:r + rows] / weight[r:r + rows])
    return out


def default_overlap(tile: int | None) -> int:
    """Overlap for blended tiles: tile/8, at least 32 input pixels, at most tile/2."""
    if tile is None:
        return 32
    return max(1, min(max(32, tile // 8), tile // 2))


def _run_checked(run, x, scale, channels):
    y = run(np.ascontiguousarray(x[None], dtype=np.float32))
    expected = (1, x.shape[0] * scale, x.shape[1] * scale, channels)
    if tuple(y.shape) != expected:
        raise RuntimeError(f"model returned shape {tuple(y.shape)} for a {x.shape} tile; expected {expected}.")
    return y[0]
