"""Fused Triton kernels for the DiCache cache arithmetic.

Four kernels, one launch each, implementing the ops specified in
``dicache/ops/reference.py`` (the launchers, argument checks and workspace
management live in ``dicache/ops/triton_backend.py``):

``probe_decide_kernel``
    One pass over ``p``, ``p_prev``, ``x``, ``p_old`` and ``x_prev`` that
    writes ``p_prev <- p`` and ``x_prev <- x`` while it reads them, reduces the
    per-sample sums into an fp32 workspace with atomics, and lets the *last*
    program to finish (an atomic ticket counter) run the decision epilogue:
    error per policy, guards, ``acc += err``, the reuse flag and ``gamma``.
``reconstruct_kernel``
    ``out = x + r_old + gamma[b] * (r_new - r_old)`` (or ``x + r_new``), with
    ``gamma`` read from device memory.
``refresh_kernel``
    ``r_slot <- h - x``, ``p_slot <- p - x`` and
    ``den[b] = sum |stored p_slot - p_other|`` (atomics + ticket epilogue),
    ``acc <- 0``.
``quad_blend_kernel``
    The reconstruction weights of ``alignment_order="auto"``: optionally fits
    how far to bend the line towards the quadratic on a strided subsample of
    the probe (two sums per sample, atomics + ticket epilogue), then writes
    ``w``, ``c0``, ``c2`` from ``gamma`` and the three entries' steps.

Layout: every ``[B, ...]`` tensor is contiguous and seen as ``[B, S]`` with
``S = numel / B``. The grid is ``(chunks, B)``: program ``(c, b)`` handles
elements ``[c * iters * BLOCK, (c + 1) * iters * BLOCK)`` of sample ``b`` in
``iters`` tiles of ``BLOCK`` elements (the tail is masked, so any ``S`` works).
All arithmetic is fp32; every value is upcast with ``.to(tl.float32)`` right
after its load (the Triton interpreter stores bf16 as raw uint16 bits, so
arithmetic on un-cast bf16 values would be wrong there).

Workspace protocol (``probe_decide`` and ``refresh``): ``ws`` is an fp32
buffer of at least ``B * NUM_SUMS`` elements and ``ticket`` an int32 counter,
both all-zero when a launch starts. Each program adds its partial sums to
``ws`` (relaxed atomics), then takes a ticket (``acq_rel`` atomic, after a CTA
barrier so that its sum atomics are ordered before the release). The program
that draws ticket ``num_programs - 1`` knows every other program has already
published its sums; it reads them with ``atomic_xchg(ws, 0)`` (reading at the
coherence point and resetting them in the same instruction), resets the
ticket to 0, and writes the caller-visible outputs. The workspace is therefore
all-zero again when the launch ends, ready for the next launch on the same
stream, without a memset launch. Launches that share a workspace must be
ordered (same CUDA stream); the launcher keeps one workspace per stream.

In the Triton interpreter the programs of a grid run one after another, so
the ticket protocol is trivially correct there as well (the last program in
grid order draws the last ticket).

Nothing here imports the rest of dicache.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Columns of the per-sample sums (same order as ``dicache.ops.reference.SUM_*``).
SUM_PROBE_DIFF = 0
SUM_PROBE_PREV = 1
SUM_ALIGN = 2
SUM_INPUT_DIFF = 3
SUM_INPUT_PREV = 4
NUM_SUMS = 5
#: Columns of the epilogue's ``[BLOCK_B, SUMS_PAD]`` tile (a power of two >= NUM_SUMS).
SUMS_PAD = 8


@triton.jit
def _safe_ratio(num, den, fallback):
    """``num / den`` where ``den > 0`` and the quotient is finite, else ``fallback``."""
    ok = den > 0.0
    ratio = tl.math.div_rn(num, tl.where(ok, den, 1.0))
    ok = ok & (ratio == ratio) & (tl.abs(ratio) < float("inf"))
    return tl.where(ok, ratio, fallback)


@triton.jit
def _take(ptrs, mask):
    """Read fp32 workspace values and reset them to 0 in one atomic exchange.

    The exchange is done on the int32 bit pattern (the Triton interpreter
    implements ``atomic_xchg`` for integers only); masked lanes read as 0.
    """
    bits = tl.atomic_xchg(ptrs.to(tl.pointer_type(tl.int32)), 0, mask=mask, sem="acq_rel")
    return tl.where(mask, bits.to(tl.float32, bitcast=True), 0.0)


@triton.jit
def _column(tile, cols, k: tl.constexpr):
    """Column ``k`` of a ``[BLOCK_B, SUMS_PAD]`` tile, as a ``[BLOCK_B]`` vector."""
    return tl.sum(tl.where(cols[None, :] == k, tile, 0.0), axis=1)


@triton.jit
def _pool(v, rmask):
    """Sum of the valid rows of ``v`` broadcast back to every row (POLICY_GLOBAL)."""
    total = tl.sum(tl.where(rmask, v, 0.0), axis=0)
    return tl.zeros_like(v) + total


@triton.jit
def probe_decide_kernel(
    p_ptr,
    x_ptr,
    p_prev_ptr,
    p_old_ptr,
    x_prev_ptr,
    acc_ptr,
    den_ptr,
    sums_ptr,
    flag_ptr,
    gamma_ptr,
    ws_ptr,
    ticket_ptr,
    S,
    B,
    iters,
    num_programs,
    threshold,
    gamma_lo,
    gamma_hi,
    HAS_OLD: tl.constexpr,
    HAS_XPREV: tl.constexpr,
    DELTA_MINUS: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Probe statistics + decision, see the module docstring.

    ``HAS_OLD``: ``p_old`` (P[-2]) is given. ``HAS_XPREV``: ``x_prev`` is given
    (it is then overwritten with ``x``). ``DELTA_MINUS``: error mode
    ``|rel_l1(p) - rel_l1(x)|`` (needs ``HAS_XPREV``). ``PER_SAMPLE``: policy
    "max" (per-sample error and gamma) instead of "global" (batch-pooled).
    ``BLOCK_B``: a power of two >= B for the epilogue tile.
    """
    pid_c = tl.program_id(0)
    b = tl.program_id(1)
    base = b.to(tl.int64) * S
    start = pid_c.to(tl.int64) * iters * BLOCK
    lane = tl.arange(0, BLOCK)

    s_diff = tl.zeros([BLOCK], dtype=tl.float32)
    s_prev = tl.zeros([BLOCK], dtype=tl.float32)
    s_align = tl.zeros([BLOCK], dtype=tl.float32)
    s_xdiff = tl.zeros([BLOCK], dtype=tl.float32)
    s_xprev = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(iters):
        idx = start + lane
        start += BLOCK  # int64: no overflow for samples of more than 2**31 elements
        m = idx < S
        off = base + idx
        pv = tl.load(p_ptr + off, mask=m, other=0.0).to(tl.float32)
        ppv = tl.load(p_prev_ptr + off, mask=m, other=0.0).to(tl.float32)
        s_diff += tl.abs(pv - ppv)
        s_prev += tl.abs(ppv)
        # Next call's baseline, written in the same pass (each element is read
        # above before this program overwrites it).
        tl.store(p_prev_ptr + off, pv.to(p_prev_ptr.dtype.element_ty), mask=m)
        if HAS_OLD or HAS_XPREV:
            xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
            if HAS_OLD:
                pov = tl.load(p_old_ptr + off, mask=m, other=0.0).to(tl.float32)
                s_align += tl.abs((pv - xv) - pov)
            if HAS_XPREV:
                if DELTA_MINUS:
                    xpv = tl.load(x_prev_ptr + off, mask=m, other=0.0).to(tl.float32)
                    s_xdiff += tl.abs(xv - xpv)
                    s_xprev += tl.abs(xpv)
                tl.store(x_prev_ptr + off, xv.to(x_prev_ptr.dtype.element_ty), mask=m)

    # Publish this program's partial sums (unused columns stay 0). The
    # literals 5 and 8 below are NUM_SUMS and SUMS_PAD (jit code cannot read
    # plain module globals).
    row = ws_ptr + b * 5
    tl.atomic_add(row + 0, tl.sum(s_diff, axis=0), sem="relaxed")
    tl.atomic_add(row + 1, tl.sum(s_prev, axis=0), sem="relaxed")
    if HAS_OLD:
        tl.atomic_add(row + 2, tl.sum(s_align, axis=0), sem="relaxed")
    if DELTA_MINUS:
        tl.atomic_add(row + 3, tl.sum(s_xdiff, axis=0), sem="relaxed")
        tl.atomic_add(row + 4, tl.sum(s_xprev, axis=0), sem="relaxed")
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")

    if ticket == num_programs - 1:
        # ---- epilogue: only the last program gets here ----
        rows = tl.arange(0, BLOCK_B)
        cols = tl.arange(0, 8)
        rmask = rows < B
        m2 = rmask[:, None] & (cols[None, :] < 5)
        offs2 = rows[:, None] * 5 + cols[None, :]
        tile = _take(ws_ptr + offs2, m2)
        tl.atomic_xchg(ticket_ptr, 0, sem="relaxed")  # ready for the next launch
        tl.store(sums_ptr + offs2, tile.to(sums_ptr.dtype.element_ty), mask=m2)

        diff = _column(tile, cols, 0)
        prev = _column(tile, cols, 1)
        align = _column(tile, cols, 2)
        den = tl.load(den_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        if not PER_SAMPLE:
            diff = _pool(diff, rmask)
            prev = _pool(prev, rmask)
            align = _pool(align, rmask)
            den = _pool(den, rmask)

        # Padding rows (>= B) get a harmless 0/1 so that no inf - inf is computed for them.
        prev = tl.where(rmask, prev, 1.0)
        err = _safe_ratio(diff, prev, float("inf"))
        if DELTA_MINUS:
            xdiff = _column(tile, cols, 3)
            xprev = _column(tile, cols, 4)
            if not PER_SAMPLE:
                xdiff = _pool(xdiff, rmask)
                xprev = _pool(xprev, rmask)
            xprev = tl.where(rmask, xprev, 1.0)
            err_x = _safe_ratio(xdiff, xprev, float("inf"))
            err = tl.abs(err - err_x)
            err = tl.where((err == err) & (err < float("inf")), err, float("inf"))

        acc = tl.load(acc_ptr + rows, mask=rmask, other=0.0).to(tl.float32) + err
        tl.store(acc_ptr + rows, acc.to(acc_ptr.dtype.element_ty), mask=rmask)
        # NaN compares false, so a NaN accumulator counts as "over the threshold".
        over = tl.where(rmask & (tl.where(acc < threshold, 0, 1) == 1), 1, 0)
        reuse = tl.where(tl.sum(over, axis=0) == 0, 1, 0)
        tl.store(flag_ptr, reuse.to(flag_ptr.dtype.element_ty))

        if HAS_OLD:
            g = _safe_ratio(align, den, 1.0)
            g = tl.minimum(tl.maximum(g, gamma_lo), gamma_hi)
        else:
            g = tl.full([BLOCK_B], 1.0, dtype=tl.float32)
        tl.store(gamma_ptr + rows, g.to(gamma_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def reconstruct_kernel(
    x_ptr,
    r_new_ptr,
    r_old_ptr,
    gamma_ptr,
    out_ptr,
    r_oldest_ptr,
    c_oldest_ptr,
    S,
    HAS_OLD: tl.constexpr,
    HAS_OLDEST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``out = x + r_old + gamma[b] * (r_new - r_old)``; ``x + r_new`` without ``r_old``; plus
    ``c_oldest[b] * (r_oldest - r_old)`` with ``HAS_OLDEST`` (which needs ``HAS_OLD``).

    One ``BLOCK`` tile per program, grid ``(cdiv(S, BLOCK), B)``. ``out`` may
    alias ``x`` (each element is loaded before it is stored).
    """
    pid_c = tl.program_id(0)
    b = tl.program_id(1)
    idx = pid_c.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = idx < S
    off = b.to(tl.int64) * S + idx
    xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    rn = tl.load(r_new_ptr + off, mask=m, other=0.0).to(tl.float32)
    if HAS_OLD:
        g = tl.load(gamma_ptr + b).to(tl.float32)
        ro = tl.load(r_old_ptr + off, mask=m, other=0.0).to(tl.float32)
        h = (xv + ro) + g * (rn - ro)
        if HAS_OLDEST:
            c = tl.load(c_oldest_ptr + b).to(tl.float32)
            r3 = tl.load(r_oldest_ptr + off, mask=m, other=0.0).to(tl.float32)
            h = h + c * (r3 - ro)
    else:
        h = xv + rn
    tl.store(out_ptr + off, h.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def refresh_kernel(
    h_ptr,
    p_ptr,
    x_ptr,
    r_slot_ptr,
    p_slot_ptr,
    p_other_ptr,
    den_ptr,
    acc_ptr,
    ws_ptr,
    ticket_ptr,
    S,
    B,
    iters,
    num_programs,
    HAS_OTHER: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``r_slot <- h - x``, ``p_slot <- p - x``, ``den[b] = sum|p_slot - p_other|``, ``acc <- 0``.

    ``den`` is computed from the value *as stored* in ``p_slot`` (rounded to
    the slot dtype), exactly like the reference. Without ``p_other`` no
    reduction is needed: program ``(0, b)`` writes ``den[b] = 0`` and
    ``acc[b] = 0``. With it, the sums go through the workspace/ticket
    protocol of the module docstring (one fp32 slot per sample).
    """
    pid_c = tl.program_id(0)
    b = tl.program_id(1)
    base = b.to(tl.int64) * S
    start = pid_c.to(tl.int64) * iters * BLOCK
    lane = tl.arange(0, BLOCK)
    s_den = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(iters):
        idx = start + lane
        start += BLOCK  # int64: no overflow for samples of more than 2**31 elements
        m = idx < S
        off = base + idx
        xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        hv = tl.load(h_ptr + off, mask=m, other=0.0).to(tl.float32)
        pv = tl.load(p_ptr + off, mask=m, other=0.0).to(tl.float32)
        tl.store(r_slot_ptr + off, (hv - xv).to(r_slot_ptr.dtype.element_ty), mask=m)
        stored = (pv - xv).to(p_slot_ptr.dtype.element_ty)
        tl.store(p_slot_ptr + off, stored, mask=m)
        if HAS_OTHER:
            pov = tl.load(p_other_ptr + off, mask=m, other=0.0).to(tl.float32)
            # Masked lanes: stored = 0 and pov = 0, so they add nothing.
            s_den += tl.abs(stored.to(tl.float32) - pov)

    if HAS_OTHER:
        tl.atomic_add(ws_ptr + b, tl.sum(s_den, axis=0), sem="relaxed")
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
        if ticket == num_programs - 1:
            rows = tl.arange(0, BLOCK_B)
            rmask = rows < B
            zero = tl.zeros([BLOCK_B], dtype=tl.float32)
            tot = _take(ws_ptr + rows, rmask)
            tl.atomic_xchg(ticket_ptr, 0, sem="relaxed")
            tl.store(den_ptr + rows, tot.to(den_ptr.dtype.element_ty), mask=rmask)
            tl.store(acc_ptr + rows, zero.to(acc_ptr.dtype.element_ty), mask=rmask)
    else:
        if pid_c == 0:
            tl.store(den_ptr + b, 0.0)
            tl.store(acc_ptr + b, 0.0)


@triton.jit
def _lagrange(g, t0, t1, t2):
    """Weights ``(c0, c2)`` of the oldest and newest of three entries at ``t1 + g·(t2 − t1)``."""
    tau = t1 + g * (t2 - t1)
    c0 = tl.math.div_rn((tau - t1) * (tau - t2), (t0 - t1) * (t0 - t2))
    c2 = tl.math.div_rn((tau - t0) * (tau - t1), (t2 - t0) * (t2 - t1))
    return c0, c2


@triton.jit
def quad_blend_kernel(
    p_ptr,
    x_ptr,
    p0_ptr,
    p1_ptr,
    p2_ptr,
    gamma_ptr,
    w_ptr,
    c0_ptr,
    c2_ptr,
    ws_ptr,
    ticket_ptr,
    S,
    inner,
    row_step,
    n_sub,
    B,
    iters,
    num_programs,
    t0,
    t1,
    t2,
    FIT: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``dicache.ops.reference.quad_blend``: the weights ``c0, c2`` of the line bent towards the quadratic.

    ``FIT``: fit ``w`` on the probe first. Each sample's subsample is ``n_sub`` elements: index ``j`` is
    element ``(j // inner) * row_step + j % inner`` of the sample's ``S`` (every ``stride``-th index of
    dim 1). The two sums per sample (Σ miss·bend, Σ bend²) go through the workspace/ticket protocol
    (columns 0 and 1 of the sample's row of 5); the last program pools them (policy "global"), fits
    ``w`` and writes ``w``, ``c0``, ``c2``. Without ``FIT`` the grid is one program that reads ``w``.
    """
    if FIT:
        pid_c = tl.program_id(0)
        b = tl.program_id(1)
        gb = tl.load(gamma_ptr + b).to(tl.float32)
        l0b, l2b = _lagrange(gb, t0, t1, t2)
        a = l2b - gb
        base = b.to(tl.int64) * S
        start = pid_c.to(tl.int64) * iters * BLOCK
        lane = tl.arange(0, BLOCK)
        s_num = tl.zeros([BLOCK], dtype=tl.float32)
        s_den = tl.zeros([BLOCK], dtype=tl.float32)
        for _ in range(iters):
            j = start + lane
            start += BLOCK
            m = j < n_sub
            off = base + (j // inner) * row_step + j % inner
            pv = tl.load(p_ptr + off, mask=m, other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
            v0 = tl.load(p0_ptr + off, mask=m, other=0.0).to(tl.float32)
            v1 = tl.load(p1_ptr + off, mask=m, other=0.0).to(tl.float32)
            v2 = tl.load(p2_ptr + off, mask=m, other=0.0).to(tl.float32)
            d21 = v2 - v1
            miss = ((pv - xv) - v1) - gb * d21
            bend = a * d21 + l0b * (v0 - v1)  # masked lanes: 0
            s_num += miss * bend
            s_den += bend * bend
        row = ws_ptr + b * 5
        tl.atomic_add(row + 0, tl.sum(s_num, axis=0), sem="relaxed")
        tl.atomic_add(row + 1, tl.sum(s_den, axis=0), sem="relaxed")
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
        last = ticket == num_programs - 1
    else:
        last = tl.program_id(0) == 0

    if last:
        rows = tl.arange(0, BLOCK_B)
        rmask = rows < B
        g = tl.load(gamma_ptr + rows, mask=rmask, other=1.0).to(tl.float32)
        if FIT:
            num = _take(ws_ptr + rows * 5, rmask)
            den = _take(ws_ptr + rows * 5 + 1, rmask)
            tl.atomic_xchg(ticket_ptr, 0, sem="relaxed")  # ready for the next launch
            if not PER_SAMPLE:
                num = _pool(num, rmask)
                den = _pool(den, rmask)
            ok = den > 0.0
            r = tl.where(ok, tl.math.div_rn(num, tl.where(ok, den, 1.0)), 0.0)
            r = tl.where(r == r, r, 0.0)
            w = tl.minimum(tl.maximum(r, 0.0), 1.0)
            tl.store(w_ptr + rows, w.to(w_ptr.dtype.element_ty), mask=rmask)
        else:
            w = tl.load(w_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        l0, l2 = _lagrange(g, t0, t1, t2)
        tl.store(c0_ptr + rows, (w * l0).to(c0_ptr.dtype.element_ty), mask=rmask)
        tl.store(c2_ptr + rows, (g + w * (l2 - g)).to(c2_ptr.dtype.element_ty), mask=rmask)
