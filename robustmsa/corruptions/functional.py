"""Pure, deterministic kernels behind the corruptions: arrays and plans in, new arrays out.

No randomness and no knowledge of severities here: a corruption class draws a plan (a drop mask, a
source index, a shift) and passes it to a kernel. Kernels never modify their inputs and allocate
one output array per changed key, so peak memory is one copy of what changes.
"""

from __future__ import annotations

import numpy as np

from ..datasets.split import UNK_ID

__all__ = [
    "word_positions", "bernoulli_drop", "drop_tokens", "zero_rows", "copy_zero_rows", "row_blocks", "gather_tokens", "gather_rows",
    "span_mask", "shift_source", "blur_rows", "add_scaled_noise", "feature_std",
]


def word_positions(text_bert: np.ndarray) -> np.ndarray:
    """Bool (N, L): valid text positions other than [CLS] (first) and [SEP] (last valid)."""
    mask = text_bert[:, 1, :] > 0
    lengths = mask.sum(axis=1)
    positions = np.arange(mask.shape[1])[None, :]
    return mask & (positions > 0) & (positions < (lengths - 1)[:, None])


def bernoulli_drop(uniform: np.ndarray, rate: float | np.ndarray, eligible: np.ndarray,
                   inclusive: bool = False) -> np.ndarray:
    """Drop where ``uniform < rate`` (``<=`` if ``inclusive``, as LNLN's ``keep if U > r``) among ``eligible``.

    ``rate`` is a scalar or per sample, shape (N, 1).
    """
    return ((uniform <= rate) if inclusive else (uniform < rate)) & eligible


def drop_tokens(text_bert: np.ndarray, text: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dropped tokens become [UNK] (id 100) with an all-zero ``text`` row; mask and segments unchanged."""
    new_bert = text_bert.copy()
    new_bert[:, 0, :][drop] = UNK_ID
    return new_bert, zero_rows(text, drop)


_BLOCK_BYTES = 1 << 20  # work in ~1 MiB blocks of output: copied, then masked while still in cache


def row_blocks(x: np.ndarray, block_bytes: int = _BLOCK_BYTES, max_rows: int | None = None) -> list[slice]:
    """Slices over the first axis of ``x`` covering about ``block_bytes`` each (at most ``max_rows`` rows)."""
    per_sample = max(1, x[0].nbytes if len(x) else 1)
    step = max(1, block_bytes // per_sample)
    if max_rows is not None:
        step = max(1, min(step, max_rows))
    return [slice(start, start + step) for start in range(0, x.shape[0], step)]


def _as_rows(x: np.ndarray) -> np.ndarray:
    """(N, L) view of a C-contiguous (N, L, D) array with one opaque item per row (one memcpy per row)."""
    return x.view(np.dtype((np.void, x.shape[2] * x.itemsize)))[..., 0]


def copy_zero_rows(out: np.ndarray, x: np.ndarray, drop: np.ndarray) -> None:
    """Write ``x`` into ``out`` (both (n, L, D)) with the rows where ``drop`` is true set to 0."""
    if x.size and x.flags.c_contiguous and out.flags.c_contiguous:
        target = _as_rows(out)
        target[...] = _as_rows(x)
        target[drop] = np.zeros((), dtype=target.dtype)
    else:
        np.copyto(out, np.where(drop[..., None], np.zeros((), dtype=x.dtype), x))


def zero_rows(x: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Copy of ``x`` (N, L, D) with the rows where ``drop`` (N, L) is true set to 0.

    Blocked copy-then-zero on rows viewed as opaque bytes: about the cost of ``np.copy`` and bit
    exact (zeroed rows are +0.0; NaN and -0.0 elsewhere are kept as they are).
    """
    out = np.empty_like(x)
    for rows in row_blocks(x):
        copy_zero_rows(out[rows], x[rows], drop[rows])
    return out


def gather_tokens(text_bert: np.ndarray, text: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move tokens: position ``t`` receives the id and ``text`` row of position ``source[:, t]``."""
    new_bert = text_bert.copy()
    new_bert[:, 0, :] = np.take_along_axis(text_bert[:, 0, :], source, axis=1)
    return new_bert, gather_rows(text, source)


def gather_rows(x: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``out[n, t] = x[n, source[n, t]]`` for (N, L, D) arrays."""
    return np.take_along_axis(x, source[..., None], axis=1)


def span_mask(lengths: np.ndarray, span: np.ndarray, start: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """Bool (N, length): ``span[n]`` positions from ``offset + start[n]``."""
    positions = np.arange(length)[None, :] - offset - start[:, None]
    return (positions >= 0) & (positions < span[:, None])


def shift_source(lengths: np.ndarray, shift: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index and vacated mask for shifting each valid sequence by ``shift[n]`` frames.

    Position ``t < lengths[n]`` receives frame ``t - shift[n]`` (a positive shift delays the
    sequence); positions whose source falls outside the valid length are vacated (to be zeroed).
    Padding positions map to themselves.
    """
    positions = np.arange(length)[None, :]
    valid = positions < lengths[:, None]
    source = positions - shift[:, None]
    vacated = valid & ((source < 0) | (source >= lengths[:, None]))
    source = np.where(valid & ~vacated, source, positions)
    return source, vacated


def blur_rows(x: np.ndarray, valid: np.ndarray, sigma: float, truncate: float = 3.0) -> np.ndarray:
    """Temporal Gaussian smoothing of (N, L, D) inside each valid length; padding rows unchanged.

    Normalised convolution: ``(g * (x m)) / (g * m)`` with ``m`` the valid mask, so frames near the
    ends average only valid neighbours and no padding leaks in. A sequence of one valid frame is returned
    bit for bit (``x w0 / w0`` in float32 could move it by an ulp although nothing is blurred, and the
    realised statistics already count it as unaffected). A sigma far below one frame (a severity of
    1e-308, say) gives the weights (0, 1, 0), the identity, without overflow warnings; a sigma that
    underflowed to 0 (severity 5e-324 times a max_sigma below 1) is the identity too (it was 0/0 = NaN).
    """
    from scipy.ndimage import correlate1d

    if not sigma > 0:
        return x.copy()
    radius = max(int(truncate * sigma + 0.5), 1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):  # a tiny sigma: (offset/sigma)^2 -> inf, weight 0
        weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    mask = valid.astype(np.float32)
    moving = valid & (valid.sum(axis=1) > 1)[:, None]  # a lone frame has no neighbour: kept bit for bit
    out = np.empty_like(x)
    step = max(1, (1 << 24) // max(1, x.shape[1] * x.shape[2]))  # ~64 MiB float32 blocks
    for start in range(0, x.shape[0], step):
        block = slice(start, start + step)
        m = mask[block]
        numer = correlate1d(x[block] * m[..., None], weights, axis=1, mode="constant", cval=0.0)
        denom = correlate1d(m, weights, axis=1, mode="constant", cval=0.0)
        smoothed = numer / np.maximum(denom, 1e-12)[..., None]
        out[block] = np.where(moving[block][..., None], smoothed, x[block])
    return out


def feature_std(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-feature standard deviation (D,) over the valid rows of (N, L, D) (float64 accumulation)."""
    count = int(valid.sum())
    if count == 0:
        return np.zeros(x.shape[2], dtype=np.float64)
    total = np.zeros(x.shape[2], dtype=np.float64)
    total_sq = np.zeros(x.shape[2], dtype=np.float64)
    step = max(1, (1 << 24) // max(1, x.shape[1] * x.shape[2]))
    for start in range(0, x.shape[0], step):
        rows = x[start:start + step][valid[start:start + step]].astype(np.float64)
        total += rows.sum(axis=0)
        total_sq += (rows * rows).sum(axis=0)
    mean = total / count
    return np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))


def add_scaled_noise(x: np.ndarray, valid: np.ndarray, scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x + scale * N(0, 1)`` on valid rows (``scale`` per feature, (D,)); padding unchanged.

    Noise is drawn in fixed blocks of samples as float32, so memory stays at one output copy and the
    result does not depend on anything but the stream.
    """
    out = np.empty_like(x)
    scale32 = np.asarray(scale, dtype=np.float32)
    step = max(1, (1 << 22) // max(1, x.shape[1] * x.shape[2]))
    for start in range(0, x.shape[0], step):
        block = slice(start, start + step)
        noise = rng.standard_normal(x[block].shape, dtype=np.float32)
        noise *= scale32
        np.add(x[block], noise, out=out[block])
        np.copyto(out[block], x[block], where=~valid[block][..., None])  # padding bit-for-bit
    return out
