"""Compiled (numba) inner loops of the multi-tau correlator.

One call of :func:`process_block_u16` (uint16 counts, the camera's dtype) or
:func:`process_block` (any other frames, float64) folds a block of B frames into the
state of every pixel, all multi-tau levels at once. The loops are laid out for one core:

* pixels are taken in tiles of ``tile`` columns; for a tile, the level's series is a
  small row-major array ``R`` (time, pixel) — the pixel's history (its last
  h = n_buffers − 1 values) followed by the new values — so a lag product
  R[t]·R[t − i] is a multiply-add of two contiguous rows, vectorised over the pixels of
  the tile, and the block's rows are read from the frame matrix in order (no
  transposition, no strided gathers);
* float32 series (integer counts: every level of the uint16 kernel, and the float32
  levels of the general one) go through an explicit-vector kernel written in LLVM IR
  (:func:`_vector_lag_group`): eight pixels per register, eight lags per pass, their
  accumulators held in registers over the whole time loop; float64 series through
  :func:`_lag_rows` (eight time steps per pass over the tile). The tile buffers carry
  :data:`_PAD` spare columns so that a pixel column's rows do not all fall in the same
  few L1 sets;
* the levels ≥ 1 (bin-by-2 sums of the level below, built row by row) are correlated
  right after level 0 while the tile is in cache.

Exactness. Values are kept as *sums* (level l holds sums of 2^l frames, never averages),
so integer counts stay integers at every level. A level's lag sums run in float32 when
the data are integers and every partial sum of the block is below 2^24 (B_l·v_max² ≤
2^24, v_max the largest value in the tile's series at that level, history included),
otherwise in float64; either way the block's sums are exact for integer input and are
added to float64 accumulators, exact up to 2^53.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: Partial sums of float32 products of integers are exact up to this bound.
F32_EXACT = float(2**24)

_JIT = {"cache": True, "fastmath": True, "boundscheck": False, "nogil": True}
#: uint16 values per 64-byte cache line.
_LINE_U16 = 32


@intrinsic
def _prefetch_l2(typingctx, arr, i, j):
    """Prefetch the cache line of arr[i, j] into L2 (``llvm.prefetch``, read, locality 2).

    A hint only: no fault on any address, no effect on results.
    """
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = [context.cast(builder, args[1], signature.args[1], types.intp),
               context.cast(builder, args[2], signature.args[2], types.intp)]  # fmt: skip
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


#: float32 lanes of one AVX register: the explicit-vector lag kernel's width.
_LANES = 8
#: Lags accumulated together by the vector lag kernel: eight independent FMA chains hide
#: the FMA latency and stay in registers (8 accumulators + the row x).
_LAG_GROUP = 8
#: Extra columns of the tile buffers. A row of 256 float32 is 1 KiB, so every row of a
#: pixel column falls in the same 4 of L1's 64 sets (4 × 8 ways = 32 lines for a ~80-row
#: series: conflict misses); 8 more columns spread the rows over all sets (measured: the
#: vector kernel 1.9× faster on a padded tile than on an unpadded one).
_PAD = 8


def _vector_lag_group(G: int):
    """An intrinsic adding G lags at a time, eight pixels per ``<8 x float>`` register.

    ``lag_group(R, h, n, i0, n_groups, A, j0, w)``: for each 8-pixel column block of the
    tile (the first ``w // 8`` blocks) and each group g < n_groups of lags
    i + l (i = i0 + gG, l < G),
    A[j0 + gG + l, block] += Σ_{t=h}^{h+n−1} R[t]·R[t − i − l] over the block's lanes — G accumulators in registers across the whole time loop (one
    load of R[t] and G loads of R[t − i − l] per G fused multiply-adds). Written in LLVM
    IR because numba's vectoriser keeps the pixel loop innermost and re-loads and
    re-stores the accumulators at every time step.
    """

    @intrinsic
    def lag_group(typingctx, R, h, n, i0, n_groups, A, j0, w):
        sig = types.void(R, h, n, i0, n_groups, A, j0, w)

        def codegen(context, builder, signature, args):
            intp = context.get_value_type(types.intp)
            r = context.make_array(signature.args[0])(context, builder, args[0])
            a = context.make_array(signature.args[5])(context, builder, args[5])
            h_, n_, i0_, ng_, j0_, w_ = (
                context.cast(builder, args[k], signature.args[k], types.intp)
                for k in (1, 2, 3, 4, 6, 7)
            )
            vec = ir.VectorType(ir.FloatType(), _LANES)
            i8p = ir.IntType(8).as_pointer()
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{_LANES}f32"
            )
            r_base, a_base = builder.bitcast(r.data, i8p), builder.bitcast(a.data, i8p)
            r_row = cgutils.unpack_tuple(builder, r.strides, 2)[0]  # bytes
            a_row = cgutils.unpack_tuple(builder, a.strides, 2)[0]

            def const(v):
                return ir.Constant(intp, v)

            def at(base, stride, row, offset):  # the 8 lanes of base[row, offset/4 …]
                address = builder.gep(base, [builder.add(builder.mul(row, stride), offset)])
                return builder.bitcast(address, vec.as_pointer())

            acc = [cgutils.alloca_once(builder, vec) for _ in range(G)]  # promoted to registers
            with cgutils.for_range(builder, builder.sdiv(w_, const(_LANES))) as blocks:
                offset = builder.mul(blocks.index, const(4 * _LANES))
                with cgutils.for_range(builder, ng_) as groups:
                    first = builder.mul(groups.index, const(G))
                    i = builder.add(i0_, first)
                    j = builder.add(j0_, first)
                    for lag in range(G):
                        row = at(a_base, a_row, builder.add(j, const(lag)), offset)
                        builder.store(builder.load(row, align=4), acc[lag])
                    with cgutils.for_range(builder, n_) as steps:
                        t = builder.add(h_, steps.index)
                        x = builder.load(at(r_base, r_row, t, offset), align=4)
                        for lag in range(G):
                            past = builder.sub(t, builder.add(i, const(lag)))
                            y = builder.load(at(r_base, r_row, past, offset), align=4)
                            total = builder.call(fma, [x, y, builder.load(acc[lag])])
                            builder.store(total, acc[lag])
                    for lag in range(G):
                        row = at(a_base, a_row, builder.add(j, const(lag)), offset)
                        builder.store(builder.load(acc[lag]), row, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return lag_group


_lag_group8 = _vector_lag_group(_LAG_GROUP)
_lag_group4 = _vector_lag_group(4)
_lag_group1 = _vector_lag_group(1)


@njit(**_JIT)
def _lag_rows32(R, h, n, lo, hi, A, w):
    """:func:`_lag_rows` for float32 rows: explicit 8-lane vectors, 8 lags per pass.

    Lags go in groups of eight, then four, then one at a time; pixels beyond the last
    full 8-lane block are added by the scalar loop.
    """
    groups = (hi - lo) // _LAG_GROUP
    _lag_group8(R, h, n, lo, groups, A, 0, w)
    done = groups * _LAG_GROUP
    fours = (hi - lo - done) // 4
    _lag_group4(R, h, n, lo + done, fours, A, done, w)
    done += 4 * fours
    _lag_group1(R, h, n, lo + done, hi - lo - done, A, done, w)
    for q in range((w // _LANES) * _LANES, w):
        for i in range(lo, hi):
            s = A[i - lo, q]
            for t in range(h, h + n):
                s += R[t, q] * R[t - i, q]
            A[i - lo, q] = s


@njit(**_JIT)
def _lag_rows(R, h, n, lo, hi, A, w):
    """A[i − lo, :w] += Σ_{t=h}^{h+n−1} R[t, :w]·R[t − i, :w] for lo ≤ i < hi ≤ h + 1.

    Four lags and eight time steps per pass over the tile: the eight rows R[t … t+7]
    and the eleven rows R[t−i−3 … t+7−i] serve 32 products per accumulator load (more
    lags per pass would need more runtime alias checks than LLVM vectorises with).
    """
    t = h
    stop8 = h + (n // 8) * 8
    while t < stop8:
        i = lo
        while i + 4 <= hi:
            j = i - lo
            for q in range(w):
                x0 = R[t, q]
                x1 = R[t + 1, q]
                x2 = R[t + 2, q]
                x3 = R[t + 3, q]
                x4 = R[t + 4, q]
                x5 = R[t + 5, q]
                x6 = R[t + 6, q]
                x7 = R[t + 7, q]
                y0 = R[t - i - 3, q]
                y1 = R[t - i - 2, q]
                y2 = R[t - i - 1, q]
                y3 = R[t - i, q]
                y4 = R[t - i + 1, q]
                y5 = R[t - i + 2, q]
                y6 = R[t - i + 3, q]
                y7 = R[t - i + 4, q]
                y8 = R[t - i + 5, q]
                y9 = R[t - i + 6, q]
                y10 = R[t - i + 7, q]
                # lag i + l pairs x_u with R[t + u − i − l] = y[u − l + 3]
                A[j, q] += (
                    x0 * y3 + x1 * y4 + x2 * y5 + x3 * y6
                    + x4 * y7 + x5 * y8 + x6 * y9 + x7 * y10
                )  # fmt: skip
                A[j + 1, q] += (
                    x0 * y2 + x1 * y3 + x2 * y4 + x3 * y5
                    + x4 * y6 + x5 * y7 + x6 * y8 + x7 * y9
                )  # fmt: skip
                A[j + 2, q] += (
                    x0 * y1 + x1 * y2 + x2 * y3 + x3 * y4
                    + x4 * y5 + x5 * y6 + x6 * y7 + x7 * y8
                )  # fmt: skip
                A[j + 3, q] += (
                    x0 * y0 + x1 * y1 + x2 * y2 + x3 * y3
                    + x4 * y4 + x5 * y5 + x6 * y6 + x7 * y7
                )  # fmt: skip
            i += 4
        while i < hi:
            j = i - lo
            for q in range(w):
                A[j, q] += (
                    R[t, q] * R[t - i, q]
                    + R[t + 1, q] * R[t + 1 - i, q]
                    + R[t + 2, q] * R[t + 2 - i, q]
                    + R[t + 3, q] * R[t + 3 - i, q]
                    + R[t + 4, q] * R[t + 4 - i, q]
                    + R[t + 5, q] * R[t + 5 - i, q]
                    + R[t + 6, q] * R[t + 6 - i, q]
                    + R[t + 7, q] * R[t + 7 - i, q]
                )
            i += 1
        t += 8
    while t < h + n:
        for i in range(lo, hi):
            j = i - lo
            for q in range(w):
                A[j, q] += R[t, q] * R[t - i, q]
        t += 1


@njit(**_JIT)
def _load_block(dst, X, h, p0, w):
    """dst[h + t, :w] = X[t, p0 : p0 + w] (converted).

    Returns the bitwise OR of the (integer) values: an upper bound of their maximum,
    below twice it, that vectorises where a max does not.
    """
    B = X.shape[0]
    bits = 0
    for t in range(B):
        for q in range(w):
            v = X[t, np.uint64(p0 + q)]
            dst[h + t, q] = v
            bits |= np.int64(v)
    return bits


@njit(**_JIT)
def _load_block_float(dst, X, h, p0, w):
    """dst[h + t, :w] = X[t, p0 : p0 + w] (converted)."""
    B = X.shape[0]
    for t in range(B):
        for q in range(w):
            dst[h + t, q] = X[t, np.uint64(p0 + q)]


@njit(**_JIT)
def _load_history(dst, hist, level, h, p0, w):
    for k in range(h):
        for q in range(w):
            dst[k, q] = hist[level, k, np.uint64(p0 + q)]


@njit(**_JIT)
def _bin_rows(cur, nxt, h, m, nb_prev, nb, w):
    """nxt[h + k] = cur[j] + cur[j + 1], j = 2(nb + k) − nb_prev + h: bin-by-2 sums.

    ``cur`` is the extended series of the level below (index j ↔ its global frame
    nb_prev − h + j); new frame k of this level (global nb + k) sums the frames
    2(nb + k) and 2(nb + k) + 1 below.
    """
    for k in range(m):
        j = 2 * (nb + k) - nb_prev + h
        for q in range(w):
            nxt[h + k, q] = cur[j, q] + cur[j + 1, q]


@njit(**_JIT)
def _add_lag_sums(G, row0, A, n_lags, p0, w):
    for i in range(n_lags):
        for q in range(w):
            G[row0 + i, np.uint64(p0 + q)] += A[i, q]
            A[i, q] = 0.0


@njit(**_JIT)
def _update_state(R, h, m, n_before, level, p0, w, hist, head, S):
    """Sum, first values and history of one level after m new rows R[h : h + m]."""
    for k in range(m):
        for q in range(w):
            S[level, np.uint64(p0 + q)] += R[h + k, q]
    if n_before < h:
        for k in range(n_before, min(h, n_before + m)):
            for q in range(w):
                head[level, k, np.uint64(p0 + q)] = R[h + k - n_before, q]
    for k in range(h):
        for q in range(w):
            hist[level, k, np.uint64(p0 + q)] = R[m + k, q]


@njit(**_JIT)
def process_block(
    X, integer, c_seen, n_before, n_new, n_buffers, col0, hist, head, S, G, tile
):
    """Fold the frames ``X`` into the state of every pixel and level (in place).

    Parameters
    ----------
    X : ndarray, shape (B, P), any real dtype, C-contiguous — the new frames.
    integer : bool — X holds integers (float32 lag sums allowed where exact).
    c_seen : float — largest value of all earlier frames (bounds the history).
    n_before : ndarray, shape (L,), int64 — frames per level before this block.
    n_new : ndarray, shape (L,), int64 — new frames per level in this block
        (n_new[0] = B; n_new[l] = 0 stops the levels there).
    n_buffers : int — even number of buffers; h = n_buffers − 1.
    col0 : ndarray, shape (L,), int64 — row of each level's first lag in G.
    hist, head : ndarray, shape (L_cap, h, P), float64 — last and first h values.
    S : ndarray, shape (L_cap, P), float64 — sum of all values per level.
    G : ndarray, shape (n_cols, P), float64 — lag-product sums.
    tile : int — pixels per tile.
    """
    B, P = X.shape
    h = n_buffers - 1
    half = n_buffers // 2
    L = n_before.shape[0]
    w_max = min(tile, P)
    # extended series (history rows, then new rows) of the current and the next level,
    # float32 while exact, float64 otherwise
    a32 = np.zeros((h + B, w_max + _PAD), dtype=np.float32)
    b32 = np.zeros((h + B // 2 + 1, w_max + _PAD), dtype=np.float32)
    a64 = np.zeros((h + B, w_max + _PAD), dtype=np.float64)
    b64 = np.zeros((h + B // 2 + 1, w_max + _PAD), dtype=np.float64)
    A32 = np.zeros((n_buffers, w_max), dtype=np.float32)
    A64 = np.zeros((n_buffers, w_max), dtype=np.float64)
    for p0 in range(0, P, w_max):
        w = min(P, p0 + w_max) - p0
        # ---- level 0: history rows, then the block's rows (row-major reads of X).
        # vmax bounds every level-0 value of the tile (history: c_seen); level l values
        # are at most 2^l·vmax. Integer frames only: an OR-bound of non-negative integers.
        is32 = False
        vmax = 0.0
        if integer:
            vmax = max(c_seen, np.float64(_load_block(a32, X, h, p0, w)))
            is32 = B * vmax * vmax <= F32_EXACT
        if is32:
            _load_history(a32, hist, 0, h, p0, w)
            _lag_rows32(a32, h, B, 0, n_buffers, A32, w)
            _add_lag_sums(G, col0[0], A32, n_buffers, p0, w)
            _update_state(a32, h, B, n_before[0], 0, p0, w, hist, head, S)
        else:
            _load_block_float(a64, X, h, p0, w)
            _load_history(a64, hist, 0, h, p0, w)
            _lag_rows(a64, h, B, 0, n_buffers, A64, w)
            _add_lag_sums(G, col0[0], A64, n_buffers, p0, w)
            _update_state(a64, h, B, n_before[0], 0, p0, w, hist, head, S)
        # ---- levels >= 1: next <- bin-by-2 sums of current, correlate, swap
        cur32, nxt32, cur64, nxt64 = a32, b32, a64, b64
        for lev in range(1, L):
            m = n_new[lev]
            if m == 0:
                break
            nb_prev = n_before[lev - 1]
            nb = n_before[lev]
            bound = vmax * 2.0**lev
            if is32 and m * bound * bound <= F32_EXACT:
                _load_history(nxt32, hist, lev, h, p0, w)
                _bin_rows(cur32, nxt32, h, m, nb_prev, nb, w)
                _lag_rows32(nxt32, h, m, half, n_buffers, A32, w)
                _add_lag_sums(G, col0[lev], A32, n_buffers - half, p0, w)
                _update_state(nxt32, h, m, nb, lev, p0, w, hist, head, S)
                cur32, nxt32 = nxt32, cur32
                continue
            if is32:
                # float64 from this level on: convert the level below once
                is32 = False
                for k in range(h + n_new[lev - 1]):
                    for q in range(w):
                        cur64[k, q] = cur32[k, q]
            _load_history(nxt64, hist, lev, h, p0, w)
            _bin_rows(cur64, nxt64, h, m, nb_prev, nb, w)
            _lag_rows(nxt64, h, m, half, n_buffers, A64, w)
            _add_lag_sums(G, col0[lev], A64, n_buffers - half, p0, w)
            _update_state(nxt64, h, m, nb, lev, p0, w, hist, head, S)
            cur64, nxt64 = nxt64, cur64


# --------------------------------------------------------------------------- streaming

#: Levels whose values fit float32 exactly for any uint16 frames: 2^l·65535 < 2^24.
U16_F32_LEVELS = 9
#: Rows per chunk at most: their float32 sum is exact, 256·65535 < 2^24.
U16_CHUNK_MAX = 256


@njit(**_JIT)
def _load_rows_u16(E, row0, X, t0, n, p0, w, S, s0, pf_t, pf_p):
    """E[row0 + k, :w] = X[t0 + k, p0 : p0 + w] for k < n; S[0, tile] += their sum.

    The rows are summed in float32 first (``s0``, length >= w, zero on entry and on
    return): exact for n <= 256 rows of uint16 (256·65535 < 2^24), so S, float64 and
    strided across levels, is read and written once per call instead of once per row.
    The n rows at (pf_t, pf_p) — the next chunk of this tile or the first of the next
    tile — are prefetched into L2: the rows of a tile are 64 KB apart in X (one page
    each), beyond what the hardware prefetcher follows.

    Returns the largest value (a uint16 max reduction, vectorised as vpmaxuw).
    """
    mx = np.uint16(0)
    for k in range(n):
        for q in range(w):
            v = X[t0 + k, np.uint64(p0 + q)]
            E[row0 + k, q] = v
            s0[q] += v
            mx = max(mx, v)
    for q in range(w):
        S[0, np.uint64(p0 + q)] += s0[q]
        s0[q] = 0.0
    if pf_t >= 0:
        for k in range(min(n, X.shape[0] - pf_t)):
            for c in range(0, w, _LINE_U16):
                _prefetch_l2(X, pf_t + k, pf_p + c)
    return np.int64(mx)


@njit(**_JIT)
def _emit_pairs(cur, nxt, row0, h, m, done, w):
    """Bin-by-2 sums of the level below into nxt[row0 …]; returns how many, and their max.

    ``cur`` holds the level below: h history rows, then m new rows; its row j is its
    global frame done − h + j. The new frames of this level are the pairs (2k, 2k + 1)
    completed by the m new rows: k from ⌊done/2⌋ to ⌊(done + m)/2⌋ − 1.

    For float32 rows (levels below :data:`U16_F32_LEVELS`: integers < 2^25, exact in
    int32) the maximum is taken over int32 values, which LLVM vectorises; a float max
    reduction stays scalar (measured: the scalar max made levels ≥ 1 cost 2× their
    lag products).
    """
    k0 = done // 2
    k1 = (done + m) // 2
    mx = np.int32(0)
    for k in range(k0, k1):
        j = 2 * k - done + h
        r = row0 + k - k0
        for q in range(w):
            v = cur[j, q] + cur[j + 1, q]
            nxt[r, q] = v
            mx = max(mx, np.int32(v))
    return k1 - k0, np.float64(mx)


@njit(**_JIT)
def _emit_pairs64(cur, nxt, row0, h, m, done, w):
    """:func:`_emit_pairs` for float64 rows (levels whose sums may exceed int32)."""
    k0 = done // 2
    k1 = (done + m) // 2
    mx = 0.0
    for k in range(k0, k1):
        j = 2 * k - done + h
        r = row0 + k - k0
        for q in range(w):
            v = cur[j, q] + cur[j + 1, q]
            nxt[r, q] = v
            mx = max(mx, v)
    return k1 - k0, mx


@njit(**_JIT)
def _finish_rows(E, h, m, done, level, p0, w, head):
    """Head rows of the level, then shift its last h rows to the top."""
    if done < h:
        for k in range(done, min(h, done + m)):
            for q in range(w):
                head[level, k, np.uint64(p0 + q)] = E[h + k - done, q]
    for k in range(h):
        for q in range(w):
            E[k, q] = E[m + k, q]


@njit(**_JIT)
def process_block_u16(X, c_seen, n_before, n_new, n_buffers, col0, hist, head, S, G, tile, chunk):
    """:func:`process_block` for uint16 frames, streaming through each tile in chunks.

    Per tile, level 0 is read from X ``chunk`` rows at a time; every chunk is
    correlated at once and its bin-by-2 sums are appended to the next level, which is
    correlated when it holds a chunk of its own (and at the end of the block): each row
    is touched while it is in L1/L2 cache. Rows are float32 up to level 8 (uint16 sums
    of 2^8 frames are below 2^24) and float64 above. Lag sums are float32 while the
    block's partial sums stay below 2^24 (bounded by rows·v², v the largest value of
    the level's rows in this tile so far, history included — tracked as rows are loaded
    and binned; before the bound would pass 2^24 they are flushed into float64),
    float64 products otherwise — exact either way. ``c_seen`` is not needed here (the
    history's values are read).

    Parameters as :func:`process_block`, plus ``chunk`` (rows correlated together).

    Returns
    -------
    float — the largest value of X (0 for an empty block), so that the caller needs no
    second pass over the frames.
    """
    B, P = X.shape
    h = n_buffers - 1
    half = n_buffers // 2
    L = n_before.shape[0]
    # the level-0 row sums of a chunk are float32: exact for <= 256 rows of uint16
    chunk = max(1, min(chunk, U16_CHUNK_MAX))
    L32 = min(L, U16_F32_LEVELS)
    L64 = max(L - L32, 1)
    w_max = min(tile, P)
    cap = h + 2 * chunk + 2  # a level waits for a chunk, then gets up to chunk/2 + 1 more
    E32 = np.zeros((L32, cap, w_max + _PAD), dtype=np.float32)
    E64 = np.zeros((L64, cap, w_max + _PAD), dtype=np.float64)
    T64 = np.zeros((cap, w_max + _PAD), dtype=np.float64)
    s0 = np.zeros(w_max, dtype=np.float32)
    A32 = np.zeros((L, n_buffers, w_max), dtype=np.float32)
    A64 = np.zeros((L, n_buffers, w_max), dtype=np.float64)
    cnt = np.zeros(L, dtype=np.int64)  # pending new rows per level
    done = np.zeros(L, dtype=np.int64)  # level frames correlated so far (global)
    bound = np.zeros(L, dtype=np.float64)  # worst-case float32 partial sum per level
    used64 = np.zeros(L, dtype=np.bool_)  # the level's float64 lag sums are non-zero
    lmax = np.zeros(L, dtype=np.float64)  # largest value of the level's rows so far
    block_max = 0.0
    for p0 in range(0, P, w_max):
        w = min(P, p0 + w_max) - p0
        active = 1
        for lev in range(1, L):
            if n_new[lev] > 0:
                active = lev + 1
        # A32/A64 are zero here (np.zeros, then cleared when added into G); a level's
        # float64 accumulator is read only if that level used it (used64)
        for lev in range(active):
            cnt[lev] = 0
            done[lev] = n_before[lev]
            bound[lev] = 0.0
            used64[lev] = False
            hmax = np.int32(0)  # float32 levels hold integers < 2^25: an int32 max vectorises
            for k in range(h):
                if lev < L32:
                    for q in range(w):
                        x = hist[lev, k, np.uint64(p0 + q)]
                        E32[lev, k, q] = x
                        hmax = max(hmax, np.int32(x))
                else:
                    for q in range(w):
                        E64[lev - L32, k, q] = hist[lev, k, np.uint64(p0 + q)]
            lmax[lev] = np.float64(hmax)
        t = 0
        while True:
            if t < B:
                n = min(chunk, B - t)
                # prefetch: the next chunk of this tile, else the first of the next tile
                pf_t, pf_p = t + n, p0
                if pf_t >= B:
                    pf_t, pf_p = (0, p0 + w_max) if p0 + w_max < P else (-1, 0)
                top = np.float64(_load_rows_u16(E32[0], h, X, t, n, p0, w, S, s0, pf_t, pf_p))
                lmax[0] = max(lmax[0], top)
                block_max = max(block_max, top)
                cnt[0] = n
                t += n
            final = t >= B
            # correlate every level holding a full chunk (all of them at the end)
            for lev in range(active):
                m = cnt[lev]
                if m == 0 or (m < chunk and not final and lev > 0):
                    continue
                lo = 0 if lev == 0 else half
                # every value of this level's rows (history included) is <= v
                v = lmax[lev]
                if lev < L32:
                    if m * v * v <= F32_EXACT:
                        if bound[lev] + m * v * v > F32_EXACT:
                            for i in range(n_buffers - lo):
                                for q in range(w):
                                    A64[lev, i, q] += A32[lev, i, q]
                                    A32[lev, i, q] = 0.0
                            bound[lev] = 0.0
                            used64[lev] = True
                        bound[lev] += m * v * v
                        _lag_rows32(E32[lev], h, m, lo, n_buffers, A32[lev], w)
                    else:
                        for k in range(h + m):
                            for q in range(w):
                                T64[k, q] = E32[lev, k, q]
                        _lag_rows(T64, h, m, lo, n_buffers, A64[lev], w)
                        used64[lev] = True
                    if lev + 1 < active:
                        if lev + 1 < L32:
                            k, pmax = _emit_pairs(
                                E32[lev], E32[lev + 1], h + cnt[lev + 1], h, m, done[lev], w
                            )
                        else:
                            k, pmax = _emit_pairs(
                                E32[lev], E64[lev + 1 - L32], h + cnt[lev + 1], h, m,
                                done[lev], w,
                            )  # fmt: skip
                        cnt[lev + 1] += k
                        lmax[lev + 1] = max(lmax[lev + 1], pmax)
                    _finish_rows(E32[lev], h, m, done[lev], lev, p0, w, head)
                else:
                    e = E64[lev - L32]
                    _lag_rows(e, h, m, lo, n_buffers, A64[lev], w)
                    used64[lev] = True
                    if lev + 1 < active:
                        k, pmax = _emit_pairs64(
                            e, E64[lev + 1 - L32], h + cnt[lev + 1], h, m, done[lev], w
                        )
                        cnt[lev + 1] += k
                    _finish_rows(e, h, m, done[lev], lev, p0, w, head)
                done[lev] += m
                cnt[lev] = 0
            if final:
                break
        # the sum of level l >= 1 is that of the level below without its unpaired last
        # value (n_l = ⌊n_(l−1)/2⌋): derived once per block, not added row by row
        for lev in range(1, active):
            odd = done[lev - 1] % 2 == 1
            for q in range(w):
                last = 0.0
                if odd:
                    if lev - 1 < L32:
                        last = np.float64(E32[lev - 1, h - 1, q])
                    else:
                        last = E64[lev - 1 - L32, h - 1, q]
                S[lev, np.uint64(p0 + q)] = S[lev - 1, np.uint64(p0 + q)] - last
        # lag sums and history of the block into the state
        for lev in range(active):
            lo = 0 if lev == 0 else half
            for i in range(n_buffers - lo):
                if used64[lev]:
                    for q in range(w):
                        G[col0[lev] + i, np.uint64(p0 + q)] += (
                            np.float64(A32[lev, i, q]) + A64[lev, i, q]
                        )
                        A64[lev, i, q] = 0.0
                        A32[lev, i, q] = 0.0
                else:
                    for q in range(w):
                        G[col0[lev] + i, np.uint64(p0 + q)] += A32[lev, i, q]
                        A32[lev, i, q] = 0.0
            for k in range(h):
                if lev < L32:
                    for q in range(w):
                        hist[lev, k, np.uint64(p0 + q)] = E32[lev, k, q]
                else:
                    for q in range(w):
                        hist[lev, k, np.uint64(p0 + q)] = E64[lev - L32, k, q]
    return block_max
