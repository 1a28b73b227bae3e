"""reshape_and_cache and paged_attention vs the numpy reference."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyserve.kernels import reference as R
from cyserve.kernels.cpu import attention
from kernel_data import ATTN_ATOL, ATTN_RTOL, NAN_F16, PagedBatch, rng


# ---- reshape_and_cache ----

@pytest.mark.parametrize("Hkv,Dh", [(3, 64), (1, 6), (2, 40)])
def test_reshape_and_cache_same_bits_as_numpy_fp16(simd, Hkv, Dh):
    r = rng(Dh)
    NB, BS, T = 5, 4, 9
    k = (r.standard_normal((T, Hkv * Dh)) * 10).astype(np.float32)
    v = r.standard_normal((T, Hkv * Dh)).astype(np.float32)
    # rounding ties, subnormals, overflow to inf, signed zero
    k[0, :6] = [65520.0, 1e6, -1e-7, 2.0 ** -25, -0.0, 1.0 + 2.0 ** -11]
    slots = np.array([0, 5, -1, 19, 7, 8, -1, 1, 12], np.int32)
    caches = [np.full((NB, Hkv, BS, Dh), 0x3C00, np.uint16) for _ in range(4)]
    attention.reshape_and_cache(k, v, caches[0], caches[1], slots)
    R.reshape_and_cache(k, v, caches[2], caches[3], slots)
    np.testing.assert_array_equal(caches[0], caches[2])
    np.testing.assert_array_equal(caches[1], caches[3])
    # slots 2, 3, 4 and 6 (block 1, offset 2) were never named: they keep the fill
    assert (caches[0][0, :, 2:] == 0x3C00).all() and (caches[0][1, :, 2] == 0x3C00).all()


def test_reshape_and_cache_rejects_bad_slots():
    kc, vc = np.zeros((2, 1, 4, 8), np.uint16), np.zeros((2, 1, 4, 8), np.uint16)
    k = np.ones((2, 8), np.float32)
    for bad in (8, -2):
        with pytest.raises(ValueError, match=rf"slot_mapping\[1\]={bad} must be -1"):
            attention.reshape_and_cache(k, k, kc, vc, np.array([0, bad], np.int32))
    with pytest.raises(ValueError, match=r"k and v must both be float32\[T, 8\]"):
        attention.reshape_and_cache(np.ones((2, 16), np.float32), k, kc, vc, np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="same shape"):
        attention.reshape_and_cache(k, k, kc, np.zeros((3, 1, 4, 8), np.uint16), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="separate arrays"):
        attention.reshape_and_cache(k, k, kc, kc, np.zeros(2, np.int32))
    with pytest.raises(ValueError, match=r"slot_mapping must be int32\[2\]"):
        attention.reshape_and_cache(k, k, kc, vc, np.zeros(3, np.int32))
    with pytest.raises(ValueError, match=r"k_cache must be the fp16 cache viewed as uint16"):
        attention.reshape_and_cache(k, k, kc.view(np.float16), vc, np.zeros(2, np.int32))
    assert not kc.any() and not vc.any()


# ---- paged_attention ----

def _run(batch):
    out = np.full_like(batch.q, np.nan)
    attention.paged_attention(*batch.args(), out)
    return out


def _check(batch):
    out = _run(batch)
    assert np.isfinite(out).all(), "read a slot outside the causal context (NaN-filled)"
    np.testing.assert_allclose(out, R.paged_attention(*batch.args()), rtol=ATTN_RTOL, atol=ATTN_ATOL)
    return out


@pytest.mark.parametrize("Hq,Hkv", [(9, 3), (4, 1), (8, 8)])
@pytest.mark.parametrize("Dh", [64, 40, 6])
def test_decode_batch(simd, Hq, Hkv, Dh):
    """One new token per sequence, contexts on both sides of block boundaries."""
    seqs = [(1, 1), (15, 1), (16, 1), (17, 1), (33, 1), (50, 1)]
    _check(PagedBatch(rng(Hq * Dh), seqs, Hq, Hkv, Dh, BS=16))


@pytest.mark.parametrize("Hq,Hkv", [(9, 3), (4, 1)])
@pytest.mark.parametrize("BS", [1, 16, 5])
def test_mixed_batch_with_chunked_prefill(simd, Hq, Hkv, BS):
    """Decodes, a fresh prefill, and prefill chunks that continue earlier context, in one batch."""
    seqs = [(40, 1), (7, 7), (64, 17), (100, 64), (3, 2), (29, 1)]
    _check(PagedBatch(rng(BS), seqs, Hq, Hkv, 64, BS))


def test_long_context(simd):
    """2000 cached tokens: a decode step and a 33-token chunk at the end of the context."""
    _check(PagedBatch(rng(2000), [(2000, 1), (2000, 33)], 9, 3, 64, BS=16))


def test_sequence_without_queries_is_skipped(simd):
    """A sequence with q_len 0 (nothing scheduled this step) reads nothing and writes nothing."""
    batch = PagedBatch(rng(4), [(20, 3), (9, 0), (5, 2)], 4, 2, 64, BS=4)
    batch.block_tables[1] = -1  # would be out of range if it were read
    _check(batch)


@pytest.mark.parametrize("seed, seqs, Hq, Hkv", [
    (6, [(300, 40), (77, 1), (5, 5)], 9, 3),
    (12, [(2100, 64), (900, 1), (33, 33)], 16, 2),  # long contexts
], ids=["short", "long"])
def test_same_bits_for_any_thread_count(simd, num_threads, seed, seqs, Hq, Hkv):
    batch = PagedBatch(rng(seed), seqs, Hq, Hkv, 64, BS=16)
    num_threads(1)
    one = _run(batch)
    num_threads(2)
    np.testing.assert_array_equal(one, _run(batch))


def test_attention_paths_agree():
    """The AVX2 and scalar kernels agree with each other (not only with the reference)."""
    from cyserve.kernels.cpu import threads
    if not threads.simd_supported():
        pytest.skip("CPU lacks AVX2+FMA+F16C")
    batch = PagedBatch(rng(7), [(70, 9), (18, 1)], 8, 2, 64, BS=16)
    fast = _run(batch)
    threads.set_simd(False)
    try:
        slow = _run(batch)
    finally:
        threads.set_simd(True)
    np.testing.assert_allclose(fast, slow, rtol=ATTN_RTOL, atol=ATTN_ATOL)


# Grouped heads: every q head of a kv head is served by one work item over shared key chunks.
GQA = [(4, 4), (9, 3), (8, 2), (16, 2)]  # G = 1, 3, 4, 8


@pytest.mark.parametrize("Hq,Hkv", GQA)
@pytest.mark.parametrize("BS", [16, 7])
@pytest.mark.parametrize("threads", [1, 2])
def test_grouped_heads_mixed_batch(simd, num_threads, Hq, Hkv, BS, threads):
    """q_len 1..64 over contexts on both sides of block and 64-key chunk boundaries."""
    num_threads(threads)
    seqs = [(1, 1), (64, 64), (65, 2), (130, 64), (47, 17), (16, 16), (129, 33), (200, 1), (63, 5)]
    _check(PagedBatch(rng(Hq * BS + threads), seqs, Hq, Hkv, 64, BS))


@pytest.mark.parametrize("q_len", list(range(1, 65, 9)) + [64])
def test_every_query_length_up_to_64(simd, q_len):
    """Fresh prefills (q_len == context) and chunks after earlier context, one tile or several."""
    seqs = [(q_len, q_len), (q_len + 50, q_len)]
    _check(PagedBatch(rng(q_len), seqs, 9, 3, 64, BS=16))


@pytest.mark.parametrize("Hq,Hkv", [(9, 3), (16, 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_long_context_grouped(simd, num_threads, Hq, Hkv, threads):
    """More than 2048 keys: decodes and a 64-row chunk at the end, odd block size."""
    num_threads(threads)
    _check(PagedBatch(rng(2300 + Hq), [(2300, 1), (2049, 64), (2111, 3)], Hq, Hkv, 64, BS=13))


def test_large_scores_stay_finite(simd):
    """Scores in the hundreds (exp would overflow f32 without the running max) stay finite.

    An f32 dot product of scores ~500 carries an absolute error ~1e-4 that the softmax turns into
    a relative error of the same size, so the tolerance here is wider than ATTN_*.
    """
    batch = PagedBatch(rng(11), [(300, 1), (150, 40)], 9, 3, 64, BS=16)
    batch.q *= 100.0
    out = _run(batch)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, R.paged_attention(*batch.args()), rtol=1e-3, atol=1e-3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), group=st.sampled_from([1, 3, 4, 8]), Hkv=st.integers(1, 3),
       Dh=st.sampled_from([8, 24, 64, 6]), BS=st.sampled_from([1, 5, 16]))
def test_random_batches(simd, data, group, Hkv, Dh, BS):
    q_lens = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=5))
    seqs = [(q + data.draw(st.integers(0 if q else 1, 150)), q) for q in q_lens]
    batch = PagedBatch(rng(sum(q_lens) + Dh), seqs, group * Hkv, Hkv, Dh, BS)
    if batch.T:
        _check(batch)


def test_paged_attention_rejects_malformed_batches():
    batch = PagedBatch(rng(8), [(20, 3), (5, 2)], 4, 2, 8, BS=4)
    q, kc, vc, bt, qsl, ctx, scale = batch.args()
    out = np.zeros_like(q)

    def call(**kw):
        a = dict(q=q, k_cache=kc, v_cache=vc, block_tables=bt, query_start_loc=qsl,
                 context_lens=ctx, scale=scale, out=out)
        a.update(kw)
        attention.paged_attention(*a.values())

    bad_bt = bt.copy()
    bad_bt[0, 2] = kc.shape[0]
    with pytest.raises(ValueError, match=r"block_tables\[0, 2\]=\d+ is not a block id"):
        call(block_tables=bad_bt)
    bad_bt[0, 2] = -1
    with pytest.raises(ValueError, match=r"block_tables\[0, 2\]=-1"):
        call(block_tables=bad_bt)
    with pytest.raises(ValueError, match="needs 7 blocks of 4, but block_tables has only 6 columns"):
        call(context_lens=np.array([28, 5], np.int32))
    with pytest.raises(ValueError, match="shorter than its 3 query rows"):
        call(context_lens=np.array([2, 5], np.int32))
    with pytest.raises(ValueError, match="end at T=5"):
        call(query_start_loc=np.array([0, 3, 4], np.int32))
    with pytest.raises(ValueError, match="non-decreasing"):
        call(query_start_loc=np.array([0, 6, 5], np.int32))
    with pytest.raises(ValueError, match=r"query_start_loc int32\[3\]"):
        call(query_start_loc=np.array([0, 5], np.int32))
    with pytest.raises(ValueError, match="Hq a positive multiple of Hkv=2"):
        call(q=np.ones((5, 24), np.float32), out=np.zeros((5, 24), np.float32))
    with pytest.raises(ValueError, match=r"out must be float32\[5, 32\]"):
        call(out=np.zeros((5, 31), np.float32))
    with pytest.raises(ValueError, match="must not overlap q"):
        call(out=q)
    with pytest.raises(ValueError, match="same shape"):
        call(v_cache=vc[:-1].copy())
    with pytest.raises(ValueError, match="scale must be finite"):
        call(scale=float("nan"))
    with pytest.raises(ValueError, match="dtype mismatch"):
        call(block_tables=bt.astype(np.int64))
    with pytest.raises(ValueError, match=r"v_cache must be the fp16 cache viewed as uint16"):
        call(v_cache=vc.view(np.float16))
    assert not out.any()


# ---- sliding window (the local layers of Gemma 3): a query at p reads keys [p - window + 1, p] ----

def _run_window(batch, window, q=None, qsl=None, ctx=None):
    args = list(batch.args())
    if q is not None:
        args[0], args[4], args[5] = q, qsl, ctx
    out = np.full_like(args[0], np.nan)
    attention.paged_attention(*args, out, window=window)
    return out, R.paged_attention(*args, window=window)


def _poison_outside_windows(batch, window):
    """NaN into every cached key and value no query of the batch may read under `window`, so a
    kernel that reads one (instead of only masking its score) produces NaN."""
    for s, (ctx, q_len) in enumerate(batch.seqs):
        first = max(ctx - q_len - window + 1, 0)  # the first row's first key
        if first:
            slots = batch.slots(s, np.arange(first))
            for cache in (batch.k_cache, batch.v_cache):
                cache.reshape(-1, batch.Hkv, batch.BS, batch.Dh)[slots // batch.BS, :, slots % batch.BS] = NAN_F16


@pytest.mark.parametrize("window", [1, 5, 16, 20, 64, 65, 100])
@pytest.mark.parametrize("BS", [16, 7])
def test_window_decode_and_chunks(simd, window, BS):
    """Windows smaller than a block, equal to one, crossing block and 64-key chunk boundaries,
    larger than some contexts; decodes and prefill chunks after earlier context in one batch."""
    seqs = [(1, 1), (15, 1), (33, 1), (200, 1), (130, 64), (70, 9), (47, 47), (300, 33)]
    batch = PagedBatch(rng(window * BS), seqs, 9, 3, 64, BS)
    _poison_outside_windows(batch, window)
    out, want = _run_window(batch, window)
    assert np.isfinite(out).all(), "read a key outside the sliding window (NaN-poisoned)"
    np.testing.assert_allclose(out, want, rtol=ATTN_RTOL, atol=ATTN_ATOL)


@pytest.mark.parametrize("Dh", [6, 40, 256])
def test_window_odd_head_widths(simd, Dh):
    """The scalar tail (Dh % 8) and Gemma 3's 256-wide heads, one kv head for four q heads."""
    batch = PagedBatch(rng(Dh), [(90, 1), (40, 40), (75, 20)], 4, 1, Dh, BS=16)
    _poison_outside_windows(batch, 11)
    out, want = _run_window(batch, 11)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, want, rtol=ATTN_RTOL, atol=ATTN_ATOL)


def test_window_changes_the_result_only_past_the_window(simd):
    """Rows whose context fits the window equal plain causal attention; later rows differ."""
    batch = PagedBatch(rng(5), [(40, 40)], 4, 2, 64, BS=16)
    windowed, _ = _run_window(batch, 10)
    full = _run(batch)
    np.testing.assert_array_equal(windowed[:10], full[:10])
    assert np.abs(windowed[10:] - full[10:]).max(axis=1).min() > 1e-4
    wide, _ = _run_window(batch, 40)  # a window as long as the context is no window
    np.testing.assert_array_equal(wide, full)


@pytest.mark.parametrize("window", [3, 16, 29])
@pytest.mark.parametrize("split", [1, 16, 23, 50])
def test_window_chunked_prefill_equals_one_shot(simd, window, split):
    """A 60-token prompt prefilled in one step or as [split] + [60 - split] gives the same rows."""
    batch = PagedBatch(rng(window + split), [(60, 60)], 8, 2, 64, BS=16)
    one_shot, _ = _run_window(batch, window)
    first, _ = _run_window(batch, window, batch.q[:split], np.array([0, split], np.int32),
                           np.array([split], np.int32))
    rest, _ = _run_window(batch, window, batch.q[split:], np.array([0, 60 - split], np.int32),
                          np.array([60], np.int32))
    np.testing.assert_allclose(np.concatenate([first, rest]), one_shot, rtol=ATTN_RTOL, atol=ATTN_ATOL)


def test_window_same_bits_for_any_thread_count(simd, num_threads):
    batch = PagedBatch(rng(21), [(2100, 64), (900, 1), (33, 33)], 16, 2, 64, BS=16)
    num_threads(1)
    one, _ = _run_window(batch, 512)
    num_threads(2)
    two, want = _run_window(batch, 512)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, want, rtol=ATTN_RTOL, atol=ATTN_ATOL)


def test_window_must_not_be_negative():
    batch = PagedBatch(rng(2), [(5, 2)], 2, 1, 8, BS=4)
    out = np.zeros_like(batch.q)
    with pytest.raises(ValueError, match="window must be 0"):
        attention.paged_attention(*batch.args(), out, window=-1)
    assert not out.any()
