"""Weight-only int8 linear layers for CPU decoding: int8 weights, fp32 activations and results.

Decoding one token on a CPU is a chain of matrix-vector products whose speed is the memory
bandwidth divided by the bytes of weights read, so storing the ``nn.Linear`` weights as int8 (one
byte instead of four) is worth up to ×4 there. The packaged SmolLM2 comes from a Q4_1 GGUF (4-bit
values, a scale and a minimum per block of 32), so its fp32 copy holds no more than ~4.5 bits per
weight (its tied embedding/head is Q8_0: int8 and a scale per block of 32). Int8 with an fp32
scale and offset per 32 weights (``quantize_groups``; 1.25 B/weight) reproduces both block formats
exactly, so the int8 model has the GGUF's own weights, bit for bit up to fp32 rounding, and its
greedy outputs equal fp32's. (One scale per output row instead, 1.03 B/weight, is not lossless:
on SmolLM2 2/10 greedy replies stayed identical and top-1 agreement was 96.6%.)

Torch has no fast kernel for this on the CPU with fp32 activations: ``aten._weight_int8pack_mm``
is fast only with bf16 inputs (~15× slower than fp32 ``F.linear`` with fp32 inputs here) and
``torch.ao`` dynamic quantization also quantizes the activations (larger errors, deprecated). So
this module carries a small C++ kernel (AVX-512, AVX2 or plain C++ chosen at compile time, with
software prefetch: without it one core only reaches ~8 GB/s of int8 instead of ~18), built once
with the system C++ compiler through ``torch.utils.cpp_extension.load_inline`` (a few tens of
seconds, then cached by torch under ``TORCH_EXTENSIONS_DIR`` / ``~/.cache/torch_extensions``). It
handles up to ``KERNEL_MAX_ROWS`` activation rows (decode steps, small batches); longer inputs
(prefill) dequantize the weight and use torch's fp32 matmul, so prefill costs about as before.

``Int8Linear`` subclasses ``nn.Linear`` (``weight`` holds the int8 values, ``weight_scale`` the
row scales), so peft wraps it like any linear layer: LoRA adapters attach, run in fp32 on top of
the int8 base and mix per row with ``adapter_names=``. Merging an adapter into the weights
(``merge_and_unload``) is not supported on int8 layers; the backend only ever unloads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.models.extension import LazyExtension

if TYPE_CHECKING:
    import torch


KERNEL_MAX_ROWS = 16
"""Inputs with at most this many rows use the int8 kernel; longer ones dequantize + fp32 matmul."""

_EXTENSION_NAME = "armada_int8_linear_v3"

_KERNEL_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// y[m, n] = sum_k x[m, k] * (s[n, k / G] * w[n, k] + z[n, k / G]) (+ b[n]), computed for a block
// of 4 weight rows and MR <= 4 activation rows at once: each weight vector is loaded, converted
// and dequantized once and used MR times. `pf` points at a later block of weight rows (or is
// null): it is prefetched meanwhile, so the next loads find their cache lines already in flight.
template <int MR>
static void block(const float* x, int64_t ldx, const int8_t* w, int64_t K, int64_t G,
                  const float* s, const float* z, const float* b, float* y, int64_t ldy,
                  int64_t nr, const int8_t* pf) {
  const int64_t ng = K / G;
  const int8_t* wr[4];
  const float* sr[4];
  const float* zr[4];
  for (int i = 0; i < 4; ++i) {
    const int64_t row = i < nr ? i : 0;
    wr[i] = w + row * K;
    sr[i] = s + row * ng;
    zr[i] = z + row * ng;
  }
  float r[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < 4; ++i) r[m][i] = 0.f;
  int64_t k0 = 0;
#if defined(__AVX512F__)
  if (G % 16 == 0) {
    __m512 acc[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) acc[m][i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      __m512 sv[4], zv[4];
      for (int i = 0; i < 4; ++i) {
        sv[i] = _mm512_set1_ps(sr[i][g]);
        zv[i] = _mm512_set1_ps(zr[i][g]);
      }
      for (int64_t k = g * G; k < (g + 1) * G; k += 16) {
        if (pf) _mm_prefetch(reinterpret_cast<const char*>(pf + 4 * k), _MM_HINT_T0);
        __m512 wv[4];
        for (int i = 0; i < 4; ++i)
          wv[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                                      reinterpret_cast<const __m128i*>(wr[i] + k)))),
                                  sv[i], zv[i]);
        for (int m = 0; m < MR; ++m) {
          const __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
          for (int i = 0; i < 4; ++i) acc[m][i] = _mm512_fmadd_ps(wv[i], xv, acc[m][i]);
        }
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) r[m][i] = _mm512_reduce_add_ps(acc[m][i]);
    k0 = K;
  }
#elif defined(__AVX2__)
  if (G % 8 == 0) {
    __m256 acc[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) acc[m][i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      __m256 sv[4], zv[4];
      for (int i = 0; i < 4; ++i) {
        sv[i] = _mm256_set1_ps(sr[i][g]);
        zv[i] = _mm256_set1_ps(zr[i][g]);
      }
      for (int64_t k = g * G; k < (g + 1) * G; k += 8) {
        if (pf && (k & 15) == 0) _mm_prefetch(reinterpret_cast<const char*>(pf + 4 * k), _MM_HINT_T0);
        __m256 wv[4];
        for (int i = 0; i < 4; ++i)
          wv[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                      reinterpret_cast<const __m128i*>(wr[i] + k)))),
                                  sv[i], zv[i]);
        for (int m = 0; m < MR; ++m) {
          const __m256 xv = _mm256_loadu_ps(x + m * ldx + k);
          for (int i = 0; i < 4; ++i) acc[m][i] = _mm256_fmadd_ps(wv[i], xv, acc[m][i]);
        }
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) {
        __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[m][i]), _mm256_extractf128_ps(acc[m][i], 1));
        v = _mm_hadd_ps(v, v);
        v = _mm_hadd_ps(v, v);
        r[m][i] = _mm_cvtss_f32(v);
      }
    k0 = K;
  }
#endif
  (void)pf;
  for (int64_t k = k0; k < K; ++k)
    for (int i = 0; i < 4; ++i) {
      const float wk = sr[i][k / G] * static_cast<float>(wr[i][k]) + zr[i][k / G];
      for (int m = 0; m < MR; ++m) r[m][i] += x[m * ldx + k] * wk;
    }
  for (int m = 0; m < MR; ++m)
    for (int64_t i = 0; i < nr; ++i) y[m * ldy + i] = r[m][i] + (b ? b[i] : 0.f);
}

torch::Tensor int8_linear(torch::Tensor x, torch::Tensor w, torch::Tensor s, torch::Tensor z,
                          c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(),
              "x: contiguous 2-D float32");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kChar && w.is_contiguous(),
              "w: contiguous 2-D int8");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K, "x and w disagree on in_features");
  TORCH_CHECK(s.dim() == 2 && s.size(0) == N && s.size(1) > 0 && K % s.size(1) == 0 &&
              s.scalar_type() == torch::kFloat && s.is_contiguous(), "s: float32 [out, groups]");
  TORCH_CHECK(z.sizes() == s.sizes() && z.scalar_type() == torch::kFloat && z.is_contiguous(),
              "z: like s");
  const int64_t G = K / s.size(1);
  const float* bp = nullptr;
  torch::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == torch::kFloat && b.numel() == N, "bias: float32 [out]");
    bp = b.data_ptr<float>();
  }
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = s.data_ptr<float>();
  const float* zp = z.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t ng = K / G, blocks = (N + 3) / 4;
  constexpr int64_t kAhead = 2;  // blocks of 4 rows prefetched ahead (measured: 2-4 best)
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n = blk * 4, nr = std::min<int64_t>(4, N - n);
      const int8_t* pf = (n + 4 * kAhead + 4 <= N) ? wp + (n + 4 * kAhead) * K : nullptr;
      const int8_t* wn = wp + n * K;
      const float *sn = sp + n * ng, *zn = zp + n * ng, *bn = bp ? bp + n : nullptr;
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) {
        block<4>(xp + m * K, K, wn, K, G, sn, zn, bn, yp + m * N + n, N, nr, pf);
        pf = nullptr;
      }
      switch (M - m) {
        case 3: block<3>(xp + m * K, K, wn, K, G, sn, zn, bn, yp + m * N + n, N, nr, pf); break;
        case 2: block<2>(xp + m * K, K, wn, K, G, sn, zn, bn, yp + m * N + n, N, nr, pf); break;
        case 1: block<1>(xp + m * K, K, wn, K, G, sn, zn, bn, yp + m * N + n, N, nr, pf); break;
        default: break;
      }
    }
  });
  return y;
}

// The fp32 weight w[n, k] = s[n, k / G] * q[n, k] + z[n, k / G], in one parallel pass.
torch::Tensor dequantize(torch::Tensor w, torch::Tensor s, torch::Tensor z) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kChar && w.is_contiguous(), "w: int8");
  TORCH_CHECK(s.dim() == 2 && s.size(0) == w.size(0) && w.size(1) % s.size(1) == 0 &&
              s.scalar_type() == torch::kFloat && s.is_contiguous() && z.sizes() == s.sizes() &&
              z.scalar_type() == torch::kFloat && z.is_contiguous(), "s, z: float32 [out, groups]");
  const int64_t N = w.size(0), K = w.size(1), ng = s.size(1), G = K / ng;
  auto out = torch::empty({N, K}, s.options());
  const int8_t* wp = w.data_ptr<int8_t>();
  const float *sp = s.data_ptr<float>(), *zp = z.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N * ng, 256, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const float sg = sp[g], zg = zp[g];
      const int8_t* src = wp + g * G;
      float* dst = op + g * G;
      for (int64_t k = 0; k < G; ++k) dst[k] = sg * static_cast<float>(src[k]) + zg;
    }
  });
  return out;
}

std::string isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "generic";
#endif
}
"""

_EXTENSION = LazyExtension(
    _EXTENSION_NAME, "int8 CPU", lambda: _KERNEL_SOURCE, ["int8_linear", "dequantize", "isa"]
)


def kernel() -> Any:
    """The compiled int8 kernel module (built on first call, then cached); ModelError if it can't be.

    The build uses ``-march=native``: the cached binary is for this machine's CPU. Its module has
    ``int8_linear(x, w, s, z, bias)``, ``dequantize(w, s, z)`` and ``isa()`` ("avx512", "avx2" or "generic").
    """
    return _EXTENSION.load()


def kernel_available() -> bool:
    """Whether the int8 kernel builds/loads here (builds it on the first call)."""
    return _EXTENSION.available()


GROUP_SIZE = 32
"""Weights per scale along ``in_features``: the block size of GGUF's Q4_1 and Q8_0."""


def quantize_groups(
    weight: torch.Tensor, group: int = GROUP_SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Int8 with an fp32 scale and offset per ``group`` weights of a row: ``(q, scale, zero)``.

    ``weight[n, k] ≈ scale[n, k // g] * q[n, k] + zero[n, k // g]``. Each group takes whichever of
    two grids reconstructs it better: symmetric (``zero = 0``, ``scale = absmax / 127``: exact for
    GGUF Q8_0 blocks) or asymmetric over ``[min, max]`` in 255 steps (exact for Q4_1 blocks, whose
    16 levels fall on every 17th step). When ``in_features`` is not a multiple of ``group``, a
    whole row is one group.
    """
    import torch

    w = weight.detach().to(torch.float32)
    n, k = w.shape
    g = group if k % group == 0 else k
    blocks = w.reshape(n, k // g, g)
    lo, hi = blocks.amin(dim=2), blocks.amax(dim=2)

    def grid(scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant groups
        q = torch.round((blocks - zero[..., None]) / scale[..., None]).clamp_(-128, 127)
        err = (q * scale[..., None] + zero[..., None] - blocks).abs().amax(dim=2)
        return q, scale, zero, err

    sym = grid(torch.maximum(hi, -lo) / 127.0, torch.zeros_like(lo))
    step = (hi - lo) / 255.0
    asym = grid(step, lo + 128.0 * torch.where(step > 0, step, torch.ones_like(step)))
    pick = asym[3] < sym[3]
    q = torch.where(pick[..., None], asym[0], sym[0]).to(torch.int8).reshape(n, k)
    scale = torch.where(pick, asym[1], sym[1])
    zero = torch.where(pick, asym[2], sym[2])
    return q.contiguous(), scale.contiguous(), zero.contiguous()


def _int8_linear_class() -> type:
    import torch
    import torch.nn.functional as F

    class Int8Linear(torch.nn.Linear):
        """``nn.Linear`` with int8 weights, an fp32 scale and offset per group (inference only)."""

        def __init__(self, linear: torch.nn.Linear, group: int = GROUP_SIZE) -> None:
            torch.nn.Module.__init__(self)
            self.in_features, self.out_features = linear.in_features, linear.out_features
            q, scale, zero = quantize_groups(linear.weight, group)
            self.weight = torch.nn.Parameter(q, requires_grad=False)
            self.register_buffer("weight_scale", scale)
            self.register_buffer("weight_zero", zero)
            self.bias = (
                None
                if linear.bias is None
                else torch.nn.Parameter(linear.bias.detach().float(), requires_grad=False)
            )

        def dequantized_weight(self) -> torch.Tensor:
            """The fp32 weight these int8 values stand for (a new tensor each call)."""
            return (_EXTENSION.module or kernel()).dequantize(
                self.weight, self.weight_scale, self.weight_zero
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dtype != torch.float32:
                raise TypeError(f"Int8Linear computes in float32, got {x.dtype} input")
            rows = x.numel() // self.in_features
            if rows > KERNEL_MAX_ROWS or x.requires_grad:
                return F.linear(x, self.dequantized_weight(), self.bias)
            flat = x.reshape(rows, self.in_features).contiguous()
            out = (_EXTENSION.module or kernel()).int8_linear(
                flat, self.weight, self.weight_scale, self.weight_zero, self.bias
            )
            return out.view(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return f"{super().extra_repr()}, int8 weights, group={self.in_features // self.weight_scale.shape[1]}"

    return Int8Linear


_int8_linear_cls: type | None = None


def int8_linear_class() -> type:
    """The ``Int8Linear`` class (defined on first use, so importing this module stays cheap)."""
    global _int8_linear_cls
    if _int8_linear_cls is None:
        _int8_linear_cls = _int8_linear_class()
    return _int8_linear_cls


def quantize_linears_int8(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` (output head included) with an ``Int8Linear``.

    A tied output head gets its own int8 copy; the input embedding keeps its fp32 table (a decode
    step reads one row of it). Raises ModelError when the kernel can't be built, before changing
    anything. Returns the number of layers replaced. Call it before attaching adapters.
    """
    import torch

    kernel()
    cls = int8_linear_class()
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
    ]
    with torch.no_grad():
        for name, module in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, cls(module))
    if targets and getattr(model.config, "tie_word_embeddings", False):
        # The head is no longer the embedding's weight: keep transformers from re-tying them.
        model.config.tie_word_embeddings = False
        if isinstance(getattr(model, "all_tied_weights_keys", None), dict):
            model.all_tied_weights_keys = {}
    return len(targets)


def bytes_read_per_token(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers one decode step of one row reads.

    Every weight counts once (shared storage once), except input embedding tables that are not
    also the output head: of those a step reads a single row. A tied head counts in full.
    """
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ptr = head.weight.data_ptr() if head is not None else None
    total = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.weight.data_ptr() != head_ptr:
            seen.add(module.weight.data_ptr())
            total += module.weight.shape[1] * module.weight.element_size()
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen or tensor.dtype not in (torch.float32, torch.int8):
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total
