// One decode step of a Llama-family decoder (Llama, Mistral, Qwen2 layouts) for one sequence on
// the CPU, in one call: every layer, the final norm and the output head, with the KV cache held
// here. Built by core/models/fused.py through torch.utils.cpp_extension.load_inline.
//
// Why: a 135M-parameter model decodes a token in ~16 ms of memory traffic on two cores, but
// transformers' eager forward + generate spends ~40 ms more per token on Python, dispatch and
// small-tensor overhead (~1,000 torch ops per token). Here a token is one call: a persistent pool
// of worker threads runs the whole step, each thread taking its share of every matrix's rows,
// with spinning barriers between the stages that depend on each other (5 per layer).
//
// Weights are read in place from the model's own tensors (no copy): fp32 row-major, or the int8
// weight-only format of core/models/quant.py (int8 values, an fp32 scale and offset per group).
// LoRA adapters (peft's result + scaling * B(A(x))) are added per linear layer when set.
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ARMADA_X86 1
#endif

namespace {

inline void cpu_relax() {
#ifdef ARMADA_X86
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

inline void prefetch(const void* p) {
#ifdef ARMADA_X86
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
#else
  __builtin_prefetch(p);
#endif
}

// ---------------------------------------------------------------------------------------------
// Threads: a persistent pool (the caller is thread 0) and a spinning barrier.

constexpr int kSpinsBeforeSleep = 1 << 13;  // 0.2-0.5 ms of pause before a worker sleeps
constexpr int kSpinsBeforeYield = 1 << 12;  // inside a step: yield if the other thread is late

class Barrier {
 public:
  // Only while no thread waits (at the start of a step): clears a count a fork left behind.
  void reset() {
    count_.store(0, std::memory_order_relaxed);
  }

  void wait(int n) {
    if (n <= 1) return;
    const int phase = phase_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      count_.store(0, std::memory_order_relaxed);
      phase_.fetch_add(1, std::memory_order_release);
      return;
    }
    int spins = 0;
    while (phase_.load(std::memory_order_acquire) == phase) {
      if (++spins < kSpinsBeforeYield) {
        cpu_relax();
      } else {
        std::this_thread::yield();  // a preempted partner: let it run
      }
    }
  }

 private:
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<int> phase_{0};
};

class Pool {
 public:
  explicit Pool(int n) : n_(n) {}
  int size() const { return n_; }

  // Starts the workers. If a thread cannot be started, the ones already running keep sleeping on
  // this object: the caller must then never free it (pool_for leaks it) and never run it.
  void start() {
    for (int i = 1; i < n_; ++i) std::thread([this, i] { loop(i); }).detach();
  }

  // Runs fn(0) here and fn(1..n-1) on the workers; returns when all have finished. fn must not
  // throw. One run at a time per pool (decoders share pools): callers queue on run_mutex_.
  void run(const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> running(run_mutex_);
    job_ = &fn;
    done_.store(0, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      epoch_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    fn(0);
    int spins = 0;
    while (done_.load(std::memory_order_acquire) != n_ - 1) {
      if (++spins < kSpinsBeforeYield) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  void loop(int i) {
    uint64_t seen = 0;
    for (;;) {
      int spins = 0;
      while (epoch_.load(std::memory_order_acquire) == seen) {
        if (++spins < kSpinsBeforeSleep) {
          cpu_relax();
          continue;
        }
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return epoch_.load(std::memory_order_acquire) != seen; });
      }
      seen = epoch_.load(std::memory_order_acquire);
      (*job_)(i);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  const int n_;
  const std::function<void(int)>* job_ = nullptr;
  alignas(64) std::atomic<uint64_t> epoch_{0};
  alignas(64) std::atomic<int> done_{0};
  std::mutex mutex_;
  std::mutex run_mutex_;
  std::condition_variable cv_;
};

// One pool per thread count, never destroyed (their detached workers sleep between calls); a
// forked child, whose workers did not survive the fork, starts new ones.
Pool* pool_for(int n) {
  static std::mutex m;
  static std::map<int, Pool*> pools;
  static pid_t owner = getpid();
  std::lock_guard<std::mutex> lock(m);
  if (owner != getpid()) {
    pools.clear();  // the parent's pools: their threads do not exist here
    owner = getpid();
  }
  Pool*& pool = pools[n];
  if (pool == nullptr) {
    auto* fresh = new Pool(n);
    fresh->start();  // may throw (no more threads): `fresh` is leaked, never used, as it must be
    pool = fresh;
  }
  return pool;
}

// Rows [begin, end) of thread t among n, in blocks of 4 rows.
inline std::pair<int64_t, int64_t> share(int64_t rows, int t, int n) {
  const int64_t blocks = (rows + 3) / 4;
  const int64_t b0 = blocks * t / n, b1 = blocks * (t + 1) / n;
  return {std::min(rows, 4 * b0), std::min(rows, 4 * b1)};
}

inline std::pair<int64_t, int64_t> share_items(int64_t items, int t, int n) {
  return {items * t / n, items * (t + 1) / n};
}

// ---------------------------------------------------------------------------------------------
// Vector helpers.

#if defined(__AVX512F__)
constexpr int kW = 16;
using vec = __m512;
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline vec vset1(float x) { return _mm512_set1_ps(x); }
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(vec a) { return _mm512_reduce_add_ps(a); }
inline vec vload_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#define ARMADA_SIMD 1
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kW = 8;
using vec = __m256;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline vec vset1(float x) { return _mm256_set1_ps(x); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(vec a) {
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  v = _mm_hadd_ps(v, v);
  v = _mm_hadd_ps(v, v);
  return _mm_cvtss_f32(v);
}
inline vec vload_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
#define ARMADA_SIMD 1
#else
constexpr int kW = 1;
#endif

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t k = 0;
  float r = 0.f;
#ifdef ARMADA_SIMD
  vec acc0 = vzero(), acc1 = vzero();
  for (; k + 2 * kW <= n; k += 2 * kW) {
    acc0 = vfma(vload(a + k), vload(b + k), acc0);
    acc1 = vfma(vload(a + k + kW), vload(b + k + kW), acc1);
  }
  for (; k + kW <= n; k += kW) acc0 = vfma(vload(a + k), vload(b + k), acc0);
  r = vsum(acc0) + vsum(acc1);
#endif
  for (; k < n; ++k) r += a[k] * b[k];
  return r;
}

// y += a * x
inline void axpy(float a, const float* x, float* y, int64_t n) {
  int64_t k = 0;
#ifdef ARMADA_SIMD
  const vec av = vset1(a);
  for (; k + kW <= n; k += kW) {
#if defined(__AVX512F__)
    _mm512_storeu_ps(y + k, vfma(av, vload(x + k), vload(y + k)));
#else
    _mm256_storeu_ps(y + k, vfma(av, vload(x + k), vload(y + k)));
#endif
  }
#endif
  for (; k < n; ++k) y[k] += a * x[k];
}

// ---------------------------------------------------------------------------------------------
// Linear layers.

struct Lora {
  const float* a = nullptr;  // [r, K]
  const float* b = nullptr;  // [N, r]
  int64_t r = 0;
  float scale = 1.f;
};

struct Linear {
  bool int8 = false;
  const float* w = nullptr;   // fp32 [N, K], row-major
  const int8_t* q = nullptr;  // int8 [N, K]
  const float* s = nullptr;   // int8 scales [N, K / G]
  const float* z = nullptr;   // int8 offsets [N, K / G]
  int64_t G = 0;
  const float* bias = nullptr;
  int64_t N = 0, K = 0;
  std::vector<Lora> lora;     // active adapter parts (several for a mixture built elsewhere)
};

// r[i] = w_i . x for the (up to) 4 fp32 rows at w (row stride K); `pf` is prefetched meanwhile.
inline void rows4_f32(const float* w, int64_t K, int64_t nr, const float* x, float* r,
                      const float* pf) {
  const float* wr[4];
  for (int i = 0; i < 4; ++i) wr[i] = w + (i < nr ? i : 0) * K;
  int64_t k = 0;
  float acc_s[4] = {0.f, 0.f, 0.f, 0.f};
#ifdef ARMADA_SIMD
  vec acc[4] = {vzero(), vzero(), vzero(), vzero()};
  for (; k + kW <= K; k += kW) {
    if (pf) {
      // the 4 rows ahead are 4 * K contiguous floats: one line of them per row-step here
      for (int i = 0; i < 4; ++i) prefetch(pf + 4 * k + i * 16);
    }
    const vec xv = vload(x + k);
    for (int i = 0; i < 4; ++i) acc[i] = vfma(vload(wr[i] + k), xv, acc[i]);
  }
  for (int i = 0; i < 4; ++i) acc_s[i] = vsum(acc[i]);
#endif
  for (; k < K; ++k)
    for (int i = 0; i < 4; ++i) acc_s[i] += wr[i][k] * x[k];
  for (int i = 0; i < 4; ++i) r[i] = acc_s[i];
}

// The same for int8 rows with a scale and an offset per group of G weights.
inline void rows4_i8(const int8_t* w, const float* s, const float* z, int64_t K, int64_t G,
                     int64_t nr, const float* x, float* r, const int8_t* pf) {
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
  float acc_s[4] = {0.f, 0.f, 0.f, 0.f};
  int64_t k0 = 0;
#ifdef ARMADA_SIMD
  if (G % kW == 0) {
    vec acc[4] = {vzero(), vzero(), vzero(), vzero()};
    for (int64_t g = 0; g < ng; ++g) {
      vec sv[4], zv[4];
      for (int i = 0; i < 4; ++i) {
        sv[i] = vset1(sr[i][g]);
        zv[i] = vset1(zr[i][g]);
      }
      for (int64_t k = g * G; k < (g + 1) * G; k += kW) {
        if (pf && (k & 15) == 0) prefetch(pf + 4 * k);
        const vec xv = vload(x + k);
        for (int i = 0; i < 4; ++i)
          acc[i] = vfma(vfma(vload_i8(wr[i] + k), sv[i], zv[i]), xv, acc[i]);
      }
    }
    for (int i = 0; i < 4; ++i) acc_s[i] = vsum(acc[i]);
    k0 = K;
  }
#endif
  for (int64_t k = k0; k < K; ++k)
    for (int i = 0; i < 4; ++i)
      acc_s[i] += (sr[i][k / G] * static_cast<float>(wr[i][k]) + zr[i][k / G]) * x[k];
  for (int i = 0; i < 4; ++i) r[i] = acc_s[i];
}

// y[n] (+)= L.w[n] . x + bias[n] + sum over LoRA parts of scale * B[n] . (A x), for n in [n0, n1).
// `t` is scratch of at least sum(r) floats, private to the calling thread.
void matvec(const Linear& L, const float* x, float* y, int64_t n0, int64_t n1, bool accumulate,
            float* t) {
  constexpr int64_t kAhead = 2;  // blocks of 4 rows prefetched ahead
  float r[4];
  for (int64_t n = n0; n < n1; n += 4) {
    const int64_t nr = std::min<int64_t>(4, n1 - n);
    const int64_t ahead = n + 4 * kAhead;
    if (L.int8) {
      const int64_t ng = L.K / L.G;
      const int8_t* pf = ahead + 4 <= n1 ? L.q + ahead * L.K : nullptr;
      rows4_i8(L.q + n * L.K, L.s + n * ng, L.z + n * ng, L.K, L.G, nr, x, r, pf);
    } else {
      const float* pf = ahead + 4 <= n1 ? L.w + ahead * L.K : nullptr;
      rows4_f32(L.w + n * L.K, L.K, nr, x, r, pf);
    }
    for (int64_t i = 0; i < nr; ++i) {
      const float v = r[i] + (L.bias ? L.bias[n + i] : 0.f);
      y[n + i] = accumulate ? y[n + i] + v : v;
    }
  }
  // LoRA: t = A x (every thread computes all r values itself: r * K is tiny next to the
  // weights, and it saves a barrier), then each row adds scale * B[n] . t.
  for (const Lora& part : L.lora) {
    for (int64_t j = 0; j < part.r; ++j) t[j] = dot(part.a + j * L.K, x, L.K);
    for (int64_t n = n0; n < n1; ++n) y[n] += part.scale * dot(part.b + n * part.r, t, part.r);
  }
}

void rmsnorm(const float* x, const float* w, float eps, int64_t n, float* out) {
  const float ms = dot(x, x, n) / static_cast<float>(n);
  const float inv = 1.f / std::sqrt(ms + eps);
  for (int64_t k = 0; k < n; ++k) out[k] = w[k] * (x[k] * inv);
}

// Llama's rotate-half RoPE on one head: v * cos + rotate_half(v) * sin.
void rope(float* v, const float* cos, const float* sin, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = v[i], b = v[i + half];
    v[i] = a * cos[i] - b * sin[i];
    v[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

struct Layer {
  const float* in_norm = nullptr;
  const float* post_norm = nullptr;
  Linear q, k, v, o, gate, up, down;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

class Decoder {
 public:
  Decoder(std::vector<torch::Tensor> tensors, std::vector<int64_t> ints, double eps)
      : keep_(std::move(tensors)) {
    TORCH_CHECK(ints.size() == 7, "ints: layers, hidden, heads, kv_heads, head_dim, inter, vocab");
    L_ = ints[0], H_ = ints[1], nh_ = ints[2], nkv_ = ints[3], hd_ = ints[4], I_ = ints[5];
    V_ = ints[6];
    eps_ = static_cast<float>(eps);
    TORCH_CHECK(nh_ % nkv_ == 0 && hd_ % 2 == 0, "heads must be a multiple of kv heads");
    // keep_: embedding, final norm, head (w | q s z), then per layer: in_norm, post_norm,
    // and for q k v o gate up down: (w | q s z) + bias-or-empty.
    size_t i = 0;
    auto next = [&](const char* what) -> torch::Tensor {
      TORCH_CHECK(i < keep_.size(), "missing tensor: ", what);
      return keep_[i++];
    };
    auto f32 = [](const torch::Tensor& t, const char* what) -> const float* {
      TORCH_CHECK(t.scalar_type() == torch::kFloat && t.is_contiguous(), what, ": contiguous float32");
      return t.data_ptr<float>();
    };
    auto linear = [&](int64_t N, int64_t K, const char* what) {
      Linear lin;
      lin.N = N, lin.K = K;
      torch::Tensor w = next(what);
      if (w.scalar_type() == torch::kChar) {
        TORCH_CHECK(w.is_contiguous() && w.size(0) == N && w.size(1) == K, what, ": int8 [N, K]");
        torch::Tensor s = next(what), z = next(what);
        TORCH_CHECK(s.dim() == 2 && s.size(0) == N && s.size(1) > 0 && K % s.size(1) == 0 &&
                    z.sizes() == s.sizes(), what, ": int8 scales/offsets [N, groups]");
        lin.int8 = true, lin.G = K / s.size(1);
        lin.q = w.data_ptr<int8_t>();
        lin.s = f32(s, what), lin.z = f32(z, what);
      } else {
        TORCH_CHECK(w.size(0) == N && w.size(1) == K, what, ": weight shape");
        lin.w = f32(w, what);
      }
      return lin;
    };
    auto bias = [&](Linear& lin, const char* what) {
      torch::Tensor b = next(what);
      if (b.numel() > 0) {
        TORCH_CHECK(b.numel() == lin.N, what, ": bias size");
        lin.bias = f32(b, what);
      }
    };
    embed_ = next("embedding");
    TORCH_CHECK(embed_.dim() == 2 && embed_.size(0) >= V_ && embed_.size(1) == H_ &&
                embed_.scalar_type() == torch::kFloat, "embedding: float32 [vocab, hidden]");
    final_norm_ = f32(next("final norm"), "final norm");
    head_ = linear(V_, H_, "head");
    const int64_t Q = nh_ * hd_, KV = nkv_ * hd_;
    for (int64_t l = 0; l < L_; ++l) {
      Layer layer;
      layer.in_norm = f32(next("input norm"), "input norm");
      layer.post_norm = f32(next("post-attention norm"), "post-attention norm");
      layer.q = linear(Q, H_, "q_proj"), bias(layer.q, "q_proj bias");
      layer.k = linear(KV, H_, "k_proj"), bias(layer.k, "k_proj bias");
      layer.v = linear(KV, H_, "v_proj"), bias(layer.v, "v_proj bias");
      layer.o = linear(H_, Q, "o_proj"), bias(layer.o, "o_proj bias");
      layer.gate = linear(I_, H_, "gate_proj"), bias(layer.gate, "gate_proj bias");
      layer.up = linear(I_, H_, "up_proj"), bias(layer.up, "up_proj bias");
      layer.down = linear(H_, I_, "down_proj"), bias(layer.down, "down_proj bias");
      layers_.push_back(layer);
    }
    TORCH_CHECK(i == keep_.size(), "unexpected extra tensors");
    x_.assign(H_, 0.f);
    q_.assign(Q, 0.f), k_.assign(KV, 0.f), v_.assign(KV, 0.f), attn_.assign(Q, 0.f);
    gate_.assign(I_, 0.f), up_.assign(I_, 0.f), h_.assign(I_, 0.f);
    logits_ = torch::empty({V_}, torch::kFloat);
  }

  // The KV cache ([layers, kv_heads, capacity, head_dim] each) and the RoPE tables
  // ([capacity, head_dim]) a step reads; positions < capacity.
  void set_cache(torch::Tensor k, torch::Tensor v, torch::Tensor cos, torch::Tensor sin) {
    for (const auto* t : {&k, &v})
      TORCH_CHECK(t->dim() == 4 && t->size(0) == L_ && t->size(1) == nkv_ && t->size(3) == hd_ &&
                  t->scalar_type() == torch::kFloat && t->is_contiguous(),
                  "cache: contiguous float32 [layers, kv_heads, capacity, head_dim]");
    TORCH_CHECK(v.sizes() == k.sizes(), "k and v caches differ in shape");
    for (const auto* t : {&cos, &sin})
      TORCH_CHECK(t->dim() == 2 && t->size(0) >= k.size(2) && t->size(1) == hd_ &&
                  t->scalar_type() == torch::kFloat && t->is_contiguous(),
                  "rope tables: contiguous float32 [>= capacity, head_dim]");
    kc_ = k, vc_ = v, cos_ = cos, sin_ = sin;
    cap_ = k.size(2);
  }

  // LoRA parts for linear `index` (layer * 7 + {q k v o gate up down}, or 7 * layers: the
  // head); an empty list clears it.
  void set_lora(int64_t index, std::vector<torch::Tensor> a, std::vector<torch::Tensor> b,
                std::vector<double> scale) {
    Linear& lin = linear_at(index);
    TORCH_CHECK(a.size() == b.size() && a.size() == scale.size(), "lora: one A, B, scale each");
    std::vector<Lora> parts;
    for (size_t j = 0; j < a.size(); ++j) {
      TORCH_CHECK(a[j].dim() == 2 && a[j].size(1) == lin.K && a[j].is_contiguous() &&
                  a[j].scalar_type() == torch::kFloat, "lora A: contiguous float32 [r, in]");
      TORCH_CHECK(b[j].dim() == 2 && b[j].size(0) == lin.N && b[j].size(1) == a[j].size(0) &&
                  b[j].is_contiguous() && b[j].scalar_type() == torch::kFloat,
                  "lora B: contiguous float32 [out, r]");
      parts.push_back({a[j].data_ptr<float>(), b[j].data_ptr<float>(), a[j].size(0),
                       static_cast<float>(scale[j])});
      lora_keep_.push_back(a[j]), lora_keep_.push_back(b[j]);
    }
    lin.lora = std::move(parts);
    max_rank_ = 0;
    for (int64_t j = 0; j <= 7 * L_; ++j) {
      int64_t r = 0;
      for (const Lora& p : linear_at(j).lora) r += p.r;
      max_rank_ = std::max(max_rank_, r);
    }
  }

  void clear_lora() {
    for (int64_t j = 0; j <= 7 * L_; ++j) linear_at(j).lora.clear();
    lora_keep_.clear();
    max_rank_ = 0;
  }

  // Writes this token's keys/values at `pos` and returns the logits of the next token (a buffer
  // reused by the next step: read it before stepping again).
  torch::Tensor step(int64_t token, int64_t pos, int64_t threads) {
    TORCH_CHECK(cap_ > 0, "no cache: call set_cache first");
    TORCH_CHECK(pos >= 0 && pos < cap_, "position ", pos, " outside the cache (capacity ", cap_, ")");
    TORCH_CHECK(token >= 0 && token < embed_.size(0), "token id ", token, " outside the vocabulary");
    const int n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, 64)));
    const auto e = embed_.accessor<float, 2>();
    for (int64_t k = 0; k < H_; ++k) x_[k] = e[token][k];
    if (static_cast<int>(scratch_.size()) != n) scratch_.assign(n, {});
    for (auto& s : scratch_) {
      const size_t want = H_ + cap_ + max_rank_ + 16;
      if (s.size() < want) s.assign(want, 0.f);
    }
    torch::Tensor logits = logits_;
    barrier_.reset();
    std::function<void(int)> job = [&](int t) { run_step(t, n, pos, logits.data_ptr<float>()); };
    if (n == 1) {
      job(0);
    } else {
      pool_for(n)->run(job);
    }
    return logits;
  }

  void clear_cache() {
    kc_ = vc_ = cos_ = sin_ = torch::Tensor();
    cap_ = 0;
  }

  int64_t capacity() const { return cap_; }

 private:
  Linear& linear_at(int64_t index) {
    TORCH_CHECK(index >= 0 && index <= 7 * L_, "linear index out of range");
    if (index == 7 * L_) return head_;
    Layer& layer = layers_[index / 7];
    Linear* all[7] = {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down};
    return *all[index % 7];
  }

  void run_step(int t, int n, int64_t pos, float* logits) noexcept {
    float* xn = scratch_[t].data();            // [H] this thread's normalised input
    float* scores = xn + H_;                   // [cap] attention scores of one head
    float* lora_t = scores + cap_;             // [max rank] LoRA A x
    float* x = x_.data();
    const int64_t group = nh_ / nkv_;
    const float scale = 1.f / std::sqrt(static_cast<float>(hd_));
    const float* cos = cos_.data_ptr<float>() + pos * hd_;
    const float* sin = sin_.data_ptr<float>() + pos * hd_;
    float* kc = kc_.data_ptr<float>();
    float* vc = vc_.data_ptr<float>();
    const auto [h0, h1] = share(H_, t, n);
    const auto [i0, i1] = share(I_, t, n);
    const auto [qh0, qh1] = share_items(nh_, t, n);
    const auto [kh0, kh1] = share_items(nkv_, t, n);
    for (int64_t l = 0; l < L_; ++l) {
      const Layer& layer = layers_[l];
      // attention block
      rmsnorm(x, layer.in_norm, eps_, H_, xn);
      for (const Linear* lin : {&layer.q, &layer.k, &layer.v}) {
        float* out = lin == &layer.q ? q_.data() : lin == &layer.k ? k_.data() : v_.data();
        const auto [n0, n1] = share(lin->N, t, n);
        matvec(*lin, xn, out, n0, n1, false, lora_t);
      }
      barrier_.wait(n);
      for (int64_t h = qh0; h < qh1; ++h) rope(q_.data() + h * hd_, cos, sin, hd_);
      for (int64_t g = kh0; g < kh1; ++g) {
        float* kv = k_.data() + g * hd_;
        rope(kv, cos, sin, hd_);
        const int64_t at = ((l * nkv_ + g) * cap_ + pos) * hd_;
        std::copy(kv, kv + hd_, kc + at);
        std::copy(v_.data() + g * hd_, v_.data() + (g + 1) * hd_, vc + at);
      }
      barrier_.wait(n);
      for (int64_t h = qh0; h < qh1; ++h) {
        const float* qv = q_.data() + h * hd_;
        const int64_t base = ((l * nkv_ + h / group) * cap_) * hd_;
        float top = -INFINITY;
        for (int64_t p = 0; p <= pos; ++p) {
          scores[p] = dot(qv, kc + base + p * hd_, hd_) * scale;
          top = std::max(top, scores[p]);
        }
        float total = 0.f;
        for (int64_t p = 0; p <= pos; ++p) total += (scores[p] = std::exp(scores[p] - top));
        float* out = attn_.data() + h * hd_;
        std::fill(out, out + hd_, 0.f);
        const float inv = 1.f / total;
        for (int64_t p = 0; p <= pos; ++p) axpy(scores[p] * inv, vc + base + p * hd_, out, hd_);
      }
      barrier_.wait(n);
      matvec(layer.o, attn_.data(), x, h0, h1, true, lora_t);
      barrier_.wait(n);
      // MLP block
      rmsnorm(x, layer.post_norm, eps_, H_, xn);
      matvec(layer.gate, xn, gate_.data(), i0, i1, false, lora_t);
      matvec(layer.up, xn, up_.data(), i0, i1, false, lora_t);
      for (int64_t j = i0; j < i1; ++j) {
        const float g = gate_[j];
        h_[j] = g / (1.f + std::exp(-g)) * up_[j];
      }
      barrier_.wait(n);
      matvec(layer.down, h_.data(), x, h0, h1, true, lora_t);
      barrier_.wait(n);
    }
    rmsnorm(x, final_norm_, eps_, H_, xn);
    const auto [v0, v1] = share(V_, t, n);
    matvec(head_, xn, logits, v0, v1, false, lora_t);
  }

  std::vector<torch::Tensor> keep_, lora_keep_;
  int64_t L_ = 0, H_ = 0, nh_ = 0, nkv_ = 0, hd_ = 0, I_ = 0, V_ = 0, cap_ = 0, max_rank_ = 0;
  float eps_ = 1e-6f;
  torch::Tensor embed_, kc_, vc_, cos_, sin_, logits_;
  const float* final_norm_ = nullptr;
  Linear head_;
  std::vector<Layer> layers_;
  std::vector<float> x_, q_, k_, v_, attn_, gate_, up_, h_;
  std::vector<std::vector<float>> scratch_;
  Barrier barrier_;
};

std::string isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "generic";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Decoder>(m, "Decoder")
      .def(pybind11::init<std::vector<torch::Tensor>, std::vector<int64_t>, double>())
      .def("set_cache", &Decoder::set_cache)
      .def("set_lora", &Decoder::set_lora)
      .def("clear_lora", &Decoder::clear_lora)
      .def("clear_cache", &Decoder::clear_cache)
      .def("step", &Decoder::step, pybind11::call_guard<pybind11::gil_scoped_release>())
      .def("capacity", &Decoder::capacity);
  m.def("isa", &isa);
}
