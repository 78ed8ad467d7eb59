"""The public API on a real GPU with CuPy arrays, checked against the CPU backend.

Run on a machine with a GPU: ``NUMBA_ENABLE_CUDASIM=0 pytest -m gpu`` (conftest skips these
tests elsewhere). Inputs are large and random; each result is compared with the same call on
NumPy copies (the ``cpu_fallback`` kernels). Also: CuPy in gives CuPy out, work follows CuPy's
current stream, no call synchronises with the host, and ``batch_sum`` gives the same bits on
every run, every launch shape and both backends.
"""

import threading

import numpy as np
import pytest

import gpukernels as gk
from gpukernels.cuda import _cuda

pytestmark = pytest.mark.gpu

TILE = 256


@pytest.fixture
def cp(monkeypatch):
    """CuPy, with the backend chosen from the arrays (the default)."""
    monkeypatch.delenv("GPUKERNELS_BACKEND", raising=False)
    return pytest.importorskip("cupy")


def rng(seed):
    return np.random.default_rng(seed)


def on_gpu(cp, *arrays):
    return [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays]


def check_pair(cp, got, want, dtype, loss_rtol=None):
    """``got`` (CuPy ``(loss, grad)``) against ``want`` (NumPy) within the dtype's precision."""
    (loss, grad), (want_loss, want_grad) = got, want
    assert isinstance(loss, cp.ndarray) and isinstance(grad, cp.ndarray)
    assert grad.dtype == want_grad.dtype and loss.dtype == want_loss.dtype
    assert loss.shape == want_loss.shape and grad.shape == want_grad.shape
    eps = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(
        cp.asnumpy(loss).astype(np.float64),
        want_loss.astype(np.float64),
        rtol=loss_rtol or 20 * eps,
        atol=20 * eps * float(np.nanmax(np.abs(want_loss), initial=1.0)),
    )
    g, wg = cp.asnumpy(grad).astype(np.float64), want_grad.astype(np.float64)
    np.testing.assert_allclose(g, wg, rtol=4 * eps, atol=4 * eps * float(np.abs(wg).max()))


# ---------------------------------------------------------------- softmax cross-entropy

SOFTMAX_CASES = [
    # (N, C, dtype, kwargs)
    (8192, 10, np.float32, {}),
    (4096, 1000, np.float16, {"label_smoothing": 0.1, "weight": True}),
    (1024, 32000, np.float32, {"reduction": "sum"}),
    (64, 131072, np.float32, {"reduction": "none", "grad_output": True}),
    (256, 4096, np.float64, {"label_smoothing": 0.05, "weight": True}),
]


@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2].__name__}")
def test_softmax_cross_entropy_labels(cp, case):
    n, c, dtype, kw = case
    r = rng(c)
    logits = (3 * r.standard_normal((n, c))).astype(dtype)
    labels = r.integers(0, c, n)
    labels[:: max(1, n // 17)] = -100
    kw = dict(kw)
    if kw.pop("weight", False):
        kw["weight"] = r.uniform(0.5, 2, c).astype(np.float32)
    if kw.pop("grad_output", False):
        kw["grad_output"] = r.uniform(0.5, 2, n).astype(np.float32)
    want = gk.softmax_cross_entropy(logits, labels, **kw)
    gpu_kw = {k: on_gpu(cp, v)[0] for k, v in kw.items()}
    got = gk.softmax_cross_entropy(*on_gpu(cp, logits, labels), **gpu_kw)
    check_pair(cp, got, want, dtype)


@pytest.mark.parametrize("shape", [(2048, 100), (128, 50000)])
def test_softmax_cross_entropy_probabilities(cp, shape):
    r = rng(shape[1])
    logits = (2 * r.standard_normal(shape)).astype(np.float32)
    target = r.dirichlet(np.ones(shape[1]), shape[0]).astype(np.float32)
    want = gk.softmax_cross_entropy(logits, target, label_smoothing=0.1)
    got = gk.softmax_cross_entropy(*on_gpu(cp, logits, target), label_smoothing=0.1)
    check_pair(cp, got, want, np.float32)


def test_softmax_cross_entropy_in_place_and_rows_not_in_shared_memory(cp, monkeypatch):
    """``out=logits`` reuses the logits' memory; a row re-read (no shared memory) gives what
    a row kept on chip gives."""
    r = rng(11)
    logits = cp.asarray((2 * r.standard_normal((512, 3000))).astype(np.float32))
    labels = cp.asarray(r.integers(0, 3000, 512))
    loss, grad = gk.softmax_cross_entropy(logits, labels)
    monkeypatch.setattr(_cuda.POLICY, "shared_bytes", 0)
    same = logits.copy()
    loss2, grad2 = gk.softmax_cross_entropy(same, labels, out=same)
    assert grad2.data.ptr == same.data.ptr
    # the same maths from shared memory or from global memory (up to FMA contraction)
    cp.testing.assert_allclose(grad2, grad, rtol=1e-6, atol=1e-12)
    cp.testing.assert_allclose(loss2, loss, rtol=1e-6)


def test_softmax_cross_entropy_non_finite_rows(cp):
    logits = cp.zeros((4, 300), cp.float32)
    logits[0, 5] = cp.nan
    logits[1, 7] = cp.inf
    logits[2, 9] = -cp.inf
    loss, grad = gk.softmax_cross_entropy(logits, cp.asarray([1, 1, 1, 1]), reduction="none")
    loss, grad = cp.asnumpy(loss), cp.asnumpy(grad)
    assert np.isnan(loss[:2]).all() and np.isnan(grad[:2]).all()
    assert np.isfinite(loss[2:]).all() and grad[2, 9] == 0 and np.isfinite(grad[2:]).all()


# ---------------------------------------------------------------- elementwise losses


@pytest.mark.parametrize(
    "dtype, reduction", [(np.float32, "mean"), (np.float16, "sum"), (np.float64, "none")]
)
def test_bce_with_logits(cp, dtype, reduction):
    r = rng(3)
    z = (6 * r.standard_normal((8192, 256))).astype(dtype)
    y = r.uniform(0, 1, z.shape).astype(dtype)
    w = r.uniform(0.5, 2, 256).astype(dtype)
    pw = r.uniform(0.5, 3, 256).astype(dtype)
    want = gk.bce_with_logits(z, y, weight=w, pos_weight=pw, reduction=reduction)
    zg, yg, wg, pwg = on_gpu(cp, z, y, w, pw)
    got = gk.bce_with_logits(zg, yg, weight=wg, pos_weight=pwg, reduction=reduction)
    check_pair(cp, got, want, dtype)


@pytest.mark.parametrize(
    "dtype, reduction", [(np.float32, "mean"), (np.float16, "batchmean"), (np.float64, "none")]
)
def test_mse(cp, dtype, reduction):
    r = rng(4)
    p, t = (r.standard_normal((8192, 1000)).astype(dtype) for _ in range(2))
    check_pair(
        cp,
        gk.mse(*on_gpu(cp, p, t), reduction=reduction),
        gk.mse(p, t, reduction=reduction),
        dtype,
    )


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_sigmoid_family(cp, dtype):
    r = rng(5)
    x = (10 * r.standard_normal(1 << 22)).astype(dtype)
    x[:4] = [-1e4, -100, 100, 1e4]
    g = r.standard_normal(x.size).astype(dtype)
    ulp = 4 * np.finfo(dtype).eps
    for fn in (gk.sigmoid, gk.sigmoid_derivative):
        got = fn(cp.asarray(x))
        assert isinstance(got, cp.ndarray) and got.dtype == dtype
        want = fn(x).astype(np.float64)
        np.testing.assert_allclose(
            cp.asnumpy(got), want, rtol=ulp, atol=float(np.finfo(dtype).tiny)
        )
    y = gk.sigmoid(x)
    got = gk.sigmoid_backward(*on_gpu(cp, g, y))
    np.testing.assert_allclose(cp.asnumpy(got), gk.sigmoid_backward(g, y), rtol=ulp, atol=ulp)


def test_composite_loss(cp):
    r = rng(6)
    n = 8192
    pred = r.standard_normal((n, 85)).astype(np.float32)
    target = np.zeros((n, 6), np.float32)
    target[:, 0] = r.integers(0, 2, n)
    target[:, 1:5] = r.standard_normal((n, 4))
    target[:, 5] = r.integers(0, 80, n)
    terms = [
        gk.LossTerm("bce_with_logits", slice(0, 1)),
        gk.LossTerm("mse", slice(1, 5), weight=5.0, only_where=0),
        gk.LossTerm("softmax_cross_entropy", slice(5, 85), slice(5, 6), only_where=0),
    ]
    want = gk.composite_loss(pred, target, terms)
    got = gk.composite_loss(*on_gpu(cp, pred, target), terms)
    check_pair(cp, got, want, np.float32)


# ---------------------------------------------------------------- batch_sum


def canonical_total(x, acc):
    """docs/BACKENDS.md's canonical sum, emulated level by level in NumPy."""
    v = np.asarray(x, acc).reshape(-1)
    while v.size > 1:
        s = np.zeros((-(-v.size // TILE), TILE), acc)
        s.reshape(-1)[: v.size] = v
        h = TILE // 2
        while h:
            s[:, :h] = s[:, :h] + s[:, h : 2 * h]
            h //= 2
        v = s[:, 0]
    return v.reshape(()) if v.size else np.zeros((), acc)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_batch_sum_is_canonical_on_every_launch_shape(cp, monkeypatch, dtype):
    r = rng(7)
    x = (r.standard_normal((8192, 515)) * 10.0 ** r.integers(-3, 4, (8192, 515))).astype(dtype)
    acc = np.float64 if dtype == np.float64 else np.float32
    xg = cp.asarray(x)
    want = canonical_total(x, acc)
    want_cols = gk.batch_sum(x, axis=0)  # the CPU backend: the same order, the same bits
    assert np.array_equal(gk.batch_sum(x), want)
    for tpb, block in [(128, (32, 8)), (32, (16, 16)), (64, (32, 4)), (256, (8, 32))]:
        monkeypatch.setattr(_cuda.POLICY, "tile_threads", tpb)
        monkeypatch.setattr(_cuda.POLICY, "column_block", block)
        for _ in range(2):  # and run to run
            total = gk.batch_sum(xg)
            assert isinstance(total, cp.ndarray) and total.shape == ()
            assert np.array_equal(cp.asnumpy(total), want), (tpb, block)
            assert np.array_equal(cp.asnumpy(gk.batch_sum(xg, axis=0)), want_cols), (tpb, block)


def test_fused_loss_sum_equals_batch_sum_of_elementwise_losses(cp):
    r = rng(8)
    p, t = (cp.asarray(r.standard_normal(1_000_003).astype(np.float32)) for _ in range(2))
    total, _ = gk.mse(p, t, reduction="sum")
    each, _ = gk.mse(p, t, reduction="none")
    assert cp.array_equal(total, gk.batch_sum(each))


# ---------------------------------------------------------------- streams and synchronisation

_SPIN = r"""
extern "C" __global__ void spin_fill(float* x, long long n, float value, long long cycles) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        long long start = clock64();
        while (clock64() - start < cycles) {}
    }
    __syncthreads();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] = value;
}
"""


def spin_fill(cp, x, value, seconds):
    """Fill ``x`` with ``value`` on the current stream after the GPU spins ``seconds``."""
    kernel = cp.RawKernel(_SPIN, "spin_fill")
    cycles = int(seconds * 2e9)  # SM clocks are below 2 GHz: it spins at least ``seconds``
    kernel((1,), (256,), (x, np.int64(x.size), np.float32(value), np.int64(cycles)))


def test_kernels_run_on_cupys_current_stream(cp):
    """Input written late on a non-blocking stream is seen: the launch follows that stream."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        x = cp.zeros((4096, 100), cp.float32)
        labels = cp.zeros(4096, cp.int64)
        gk.sigmoid(x)  # compile outside the timed region
        gk.softmax_cross_entropy(x, labels, validate=False)
        spin_fill(cp, x, 3.0, 0.3)
        y = gk.sigmoid(x)
        loss, _ = gk.softmax_cross_entropy(x, labels, validate=False)
        total = gk.batch_sum(x)
    stream.synchronize()
    assert cp.allclose(y, 1 / (1 + np.exp(-3.0)))
    assert float(total) == 3.0 * x.size
    assert abs(float(loss) - np.log(100)) < 1e-5  # equal logits: log C


def test_calls_do_not_synchronise(cp):
    """Each call returns while a long kernel before it is still running on the stream."""
    r = rng(9)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        logits = cp.asarray(r.standard_normal((2048, 1000)).astype(np.float32))
        labels = cp.asarray(r.integers(0, 1000, 2048))
        pred = cp.asarray(r.standard_normal((2048, 8)).astype(np.float32))
        target = cp.abs(pred)
        terms = [gk.LossTerm("bce_with_logits", slice(0, 1)), gk.LossTerm("mse", slice(1, 8))]
        calls = [
            lambda: gk.softmax_cross_entropy(logits, labels, validate=False),
            lambda: gk.softmax_cross_entropy(logits, labels, label_smoothing=0.1, validate=False),
            lambda: gk.bce_with_logits(pred, cp.clip(target, 0, 1)),
            lambda: gk.mse(pred, target, reduction="batchmean"),
            lambda: gk.sigmoid_derivative(logits),
            lambda: gk.batch_sum(logits, axis=0),
            lambda: gk.batch_sum(logits),
            lambda: gk.composite_loss(pred, target, terms),
        ]
        for call in calls:  # compile first
            call()
        stream.synchronize()
        for call in calls:
            spin_fill(cp, cp.empty(1, cp.float32), 0.0, 1.0)
            result = call()
            assert not stream.done, "the call waited for the GPU"
            leaves = result if isinstance(result, tuple) else (result,)
            assert all(isinstance(a, cp.ndarray) for a in leaves)
            stream.synchronize()


# ---------------------------------------------------------------- the two launch paths


def _every_launcher_call(cp):
    """Calls that between them launch every kernel family, on odd sizes and strided input."""
    r = rng(10)
    logits = cp.asarray((3 * r.standard_normal((1000, 333))).astype(np.float32))
    labels = cp.asarray(r.integers(0, 333, 1000))
    probs = cp.asarray(r.dirichlet(np.ones(333), 1000).astype(np.float32))
    pred = cp.asarray(r.standard_normal((1001, 9)).astype(np.float32))
    target = cp.abs(pred)
    terms = [gk.LossTerm("bce_with_logits", slice(0, 1)), gk.LossTerm("mse", slice(1, 9))]
    return {
        "ce labels": lambda: gk.softmax_cross_entropy(logits[:, ::3], labels % 111),
        "ce probs": lambda: gk.softmax_cross_entropy(logits, probs, label_smoothing=0.1),
        "ce in place": lambda: _in_place_ce(logits.copy(), labels),
        "bce": lambda: gk.bce_with_logits(pred, cp.clip(target, 0, 1)),
        "mse": lambda: gk.mse(pred, target, reduction="none"),
        "huber": lambda: gk.huber_loss(pred, target),
        "sigmoid": lambda: gk.sigmoid_backward(pred, target),
        "sum": lambda: gk.batch_sum(logits),
        "column sums": lambda: gk.batch_sum(logits, axis=0),
        "composite": lambda: gk.composite_loss(pred, target, terms),
        "shard": lambda: gk.shard_stats(logits, labels, class_start=0),
    }


def _in_place_ce(logits, labels):
    return gk.softmax_cross_entropy(logits, labels, reduction="none", out=logits)


def _leaves(result):
    return result if isinstance(result, tuple) else (result,)


def test_direct_and_numba_launches_agree(cp, monkeypatch):
    """Each kernel family gives the same bits launched through ``cuda.core`` with the
    parameters packed by ``_direct`` and through Numba's own launch, and the direct path is
    the one taken by default (a Numba launch would fail here)."""
    from gpukernels.cuda import _direct

    calls = _every_launcher_call(cp)
    monkeypatch.setenv("GPUKERNELS_CUDA_LAUNCH", "numba")
    want = {name: [cp.asnumpy(a) for a in _leaves(call())] for name, call in calls.items()}
    monkeypatch.delenv("GPUKERNELS_CUDA_LAUNCH")
    monkeypatch.setattr(_cuda, "kernel_arg", _no_numba_launch)
    for name, call in calls.items():
        got = [cp.asnumpy(a) for a in _leaves(call())]
        for g, w in zip(got, want[name], strict=True):
            np.testing.assert_array_equal(g, w, err_msg=name)
    assert _direct._KERNELS and all(_direct._KERNELS.values())


def _no_numba_launch(x):
    raise AssertionError("a kernel went through Numba's launch")


def test_a_new_thread_launches_a_loaded_kernel(cp):
    """A kernel loaded on the main thread runs from a new thread, which has made no CUDA
    call yet: the launch makes the device's context current there first."""
    x = cp.asarray(rng(11).standard_normal(100_003).astype(np.float32))
    want = cp.asnumpy(gk.batch_sum(x))
    cp.cuda.Device().synchronize()
    outcome = {}

    def worker():
        try:
            outcome["sum"] = cp.asnumpy(gk.batch_sum(x))
        except Exception as error:  # re-raised on the main thread below
            outcome["error"] = error

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    np.testing.assert_array_equal(outcome["sum"], want)


# ----------------------------------------------------------------------- PyTorch CUDA tensors


@pytest.fixture
def cuda_torch(monkeypatch):
    """PyTorch with a CUDA device (and CuPy, through which the kernels see its tensors)."""
    monkeypatch.delenv("GPUKERNELS_BACKEND", raising=False)
    pytest.importorskip("cupy")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return torch


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_torch_cuda_tensors_in_and_out(cuda_torch, dtype):
    torch = cuda_torch
    r = rng(21)
    z = r.standard_normal((1000, 257)).astype(dtype)
    y = r.integers(0, 257, 1000)
    loss, grad = gk.softmax_cross_entropy(torch.from_numpy(z).cuda(), torch.from_numpy(y).cuda())
    assert loss.is_cuda and grad.is_cuda and grad.dtype == getattr(torch, dtype)
    want_loss, want_grad = gk.softmax_cross_entropy(z, y)
    tol = {"float16": 2e-3, "float32": 2e-6, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(loss.cpu().numpy(), want_loss, rtol=tol * 10)
    np.testing.assert_allclose(grad.cpu().numpy().astype(np.float64), want_grad, atol=tol)


def test_torch_cuda_out_tensor_and_current_stream(cuda_torch):
    """The kernels follow PyTorch's current stream (input written late on a side stream is
    seen) and out= comes back as the very tensor given."""
    torch = cuda_torch
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = torch.zeros(4096, 100, device="cuda")
        labels = torch.zeros(4096, dtype=torch.int64, device="cuda")
        gk.softmax_cross_entropy(x, labels, validate=False)  # compile first
        torch.cuda._sleep(int(2e8))  # the GPU spins, then the fill runs on the same stream
        x.fill_(3.0)
        out = torch.empty_like(x)
        loss, grad = gk.softmax_cross_entropy(x, labels, validate=False, out=out)
    stream.synchronize()
    assert grad is out
    assert abs(loss.item() - np.log(100)) < 1e-5


def test_torch_cuda_autograd_losses(cuda_torch):
    torch = cuda_torch
    import gpukernels.torch as gkt

    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(512, 1000, device="cuda", generator=gen, requires_grad=True)
    labels = torch.randint(0, 1000, (512,), device="cuda", generator=gen)
    gkt.cross_entropy(logits, labels, label_smoothing=0.1).backward()
    ref = logits.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(ref, labels, label_smoothing=0.1).backward()
    torch.testing.assert_close(logits.grad, ref.grad, rtol=1e-4, atol=1e-7)
    compiled = torch.compile(
        lambda z: gkt.cross_entropy(z * 1.0, labels, inplace_backward=True), fullgraph=True
    )
    z = logits.detach().clone().requires_grad_()
    compiled(z).backward()
    plain = logits.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(plain, labels).backward()
    torch.testing.assert_close(z.grad, plain.grad, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- bfloat16


def bf16_cases(seed):
    """bfloat16 logits and labels, and an MSE pair, as NumPy ``ml_dtypes.bfloat16`` arrays."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    r = rng(seed)
    z = (3 * r.standard_normal((1000, 257))).astype(ml_dtypes.bfloat16)
    y = r.integers(0, 257, 1000)
    p, t = r.standard_normal((2, 4097)).astype(ml_dtypes.bfloat16)
    return z, y, p, t


def assert_bf16_close(got, want):
    """bfloat16 results of two float32 computations: at most one bfloat16 ulp apart."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=2**-7, atol=1e-30)


def test_cupy_bfloat16_arrays(cp):
    """bfloat16 CuPy arrays (CuPy 14 and later) against the CPU kernels on the same input."""
    from gpukernels import _tensors

    z, y, p, t = bf16_cases(31)
    if not _tensors._cupy_has_bfloat16():
        pytest.skip(f"CuPy {cp.__version__} has no bfloat16 arrays")
    loss, grad = gk.softmax_cross_entropy(cp.asarray(z), cp.asarray(y))
    want_loss, want_grad = gk.softmax_cross_entropy(z, y)
    assert grad.dtype == z.dtype and loss.dtype == np.float32
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    assert_bf16_close(cp.asnumpy(grad), want_grad)
    loss, grad = gk.mse(cp.asarray(p), cp.asarray(t))
    want_loss, want_grad = gk.mse(p, t)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    assert_bf16_close(cp.asnumpy(grad), want_grad)


def test_torch_cuda_bfloat16(cuda_torch):
    """bfloat16 CUDA tensors at the array level and through ``gpukernels.torch``: the CPU
    kernels' results on the same input, and PyTorch's gradient; an older CuPy is a clear
    ``TypeError``."""
    torch = cuda_torch
    import gpukernels.torch as gkt
    from gpukernels import _tensors

    z, y, p, t = bf16_cases(32)
    z_cpu = torch.from_numpy(z.view(np.int16)).view(torch.bfloat16)
    y_cpu = torch.from_numpy(y)
    z_gpu, y_gpu = z_cpu.cuda(), y_cpu.cuda()
    if not _tensors._cupy_has_bfloat16():
        with pytest.raises(TypeError, match="CuPy 14"):
            gk.softmax_cross_entropy(z_gpu, y_gpu)
        return
    loss, grad = gk.softmax_cross_entropy(z_gpu, y_gpu)
    assert grad.is_cuda and grad.dtype == torch.bfloat16 and loss.dtype == torch.float32
    want_loss, want_grad = gk.softmax_cross_entropy(z_cpu, y_cpu)
    np.testing.assert_allclose(loss.item(), want_loss.item(), rtol=1e-5)
    assert_bf16_close(grad.float().cpu().numpy(), want_grad.float().numpy())

    ours = z_gpu.clone().requires_grad_()
    gkt.cross_entropy(ours, y_gpu, label_smoothing=0.1).backward()
    theirs = z_gpu.float().requires_grad_()
    torch.nn.functional.cross_entropy(theirs, y_gpu, label_smoothing=0.1).backward()
    assert ours.grad.dtype == torch.bfloat16
    assert_bf16_close(ours.grad.float().cpu().numpy(), theirs.grad.bfloat16().float().cpu().numpy())


# ------------------------------------------ Huber, linear and class-sharded cross-entropy


def test_huber_loss(cp):
    r = rng(31)
    p = (3 * r.standard_normal((4096, 300))).astype(np.float32)
    t = r.standard_normal((4096, 300)).astype(np.float32)
    got = gk.huber_loss(*on_gpu(cp, p, t), delta=0.5)
    check_pair(cp, got, gk.huber_loss(p, t, delta=0.5), np.float32)


def test_sigmoid_backward_reads_a_float32_gradient_beside_float16(cp):
    """Past float16's range but not once multiplied by y (1 - y): no inf."""
    y = np.tile(np.array([0.5, 0.25, 0.875], np.float16), 1000)
    g = np.full(y.size, 70000.0, np.float32)
    got = gk.sigmoid_backward(*on_gpu(cp, g, y))
    assert got.dtype == np.float16
    np.testing.assert_array_equal(cp.asnumpy(got), gk.sigmoid_backward(g, y))
    assert np.all(np.isfinite(cp.asnumpy(got)))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_linear_cross_entropy(cp, dtype):
    """Chunks of rows on cuBLAS through CuPy against the CPU's (float16 there is computed in
    float32: the tolerance is float16's)."""
    r = rng(32)
    n, h, v = 1000, 64, 5000
    x = r.standard_normal((n, h)).astype(dtype)
    w = (r.standard_normal((v, h)) / 8).astype(dtype)
    b = (0.1 * r.standard_normal(v)).astype(dtype)
    y = r.integers(0, v, n)
    y[::7] = -100
    options = {"label_smoothing": 0.1, "z_loss": 1e-4, "chunk_size": 300}
    want = gk.linear_cross_entropy(x, w, y, linear_bias=b, **options)
    xg, wg, yg, bg = on_gpu(cp, x, w, y, b)
    got = gk.linear_cross_entropy(xg, wg, yg, linear_bias=bg, **options)
    tol = 1e-2 if dtype == np.float16 else 1e-4
    for name, mine, theirs in zip(("loss", "input", "weight", "bias"), got, want, strict=True):
        assert isinstance(mine, cp.ndarray), name
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, name
        theirs = theirs.astype(np.float64)
        np.testing.assert_allclose(
            cp.asnumpy(mine).astype(np.float64),
            theirs,
            rtol=tol,
            atol=tol * float(np.abs(theirs).max()),
            err_msg=name,
        )


def test_shard_steps_give_the_whole_rows(cp):
    """Uneven column shards, ignored rows and smoothing: merged stats, then each shard's
    loss and gradient, against the whole rows' softmax_cross_entropy."""
    r = rng(33)
    z = (4 * r.standard_normal((700, 900))).astype(np.float32)
    y = r.integers(0, 900, 700)
    y[::5] = -100
    zg, yg = on_gpu(cp, z, y)
    shards = [(0, 250), (250, 600), (600, 900)]
    stats = [gk.shard_stats(zg[:, a:b], yg, class_start=a, label_smoothing=0.1) for a, b in shards]
    merged = gk.merge_shard_stats(gk.merge_shard_stats(stats[0], stats[1]), stats[2])
    parts = [
        gk.shard_loss_and_grad(
            zg[:, a:b], yg, merged, class_start=a, num_classes=900, label_smoothing=0.1
        )
        for a, b in shards
    ]
    want_loss, want_grad = gk.softmax_cross_entropy(z, y, label_smoothing=0.1)
    for loss, _ in parts:  # every shard computes the same loss from the same stats
        np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    grad = cp.asnumpy(cp.concatenate([g for _, g in parts], axis=1))
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)


def test_torch_cuda_linear_cross_entropy(cuda_torch):
    torch = cuda_torch
    import gpukernels.torch as gkt

    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(512, 64, device="cuda", generator=gen, requires_grad=True)
    w = (torch.randn(3000, 64, device="cuda", generator=gen) / 8).requires_grad_()
    y = torch.randint(0, 3000, (512,), device="cuda", generator=gen)
    gkt.linear_cross_entropy(x, w, y, chunk_size=200).backward()
    ref_x, ref_w = (t.detach().clone().requires_grad_() for t in (x, w))
    torch.nn.functional.cross_entropy(ref_x @ ref_w.T, y).backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-3, atol=1e-5)


def test_torch_cuda_losses_leave_class_indices_unchecked_by_default(cuda_torch):
    """No device-to-host read a step: a bad index makes the loss NaN (validate=True checks)."""
    torch = cuda_torch
    import gpukernels.torch as gkt

    logits = torch.randn(64, 10, device="cuda", requires_grad=True)
    labels = torch.full((64,), 3, device="cuda")
    labels[5] = 10
    assert torch.isnan(gkt.cross_entropy(logits, labels)).item()
    with pytest.raises(ValueError, match="class index 10 at row 5"):
        gkt.cross_entropy(logits, labels, validate=True)
