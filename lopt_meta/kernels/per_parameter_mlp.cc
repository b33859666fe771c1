// Fused per-parameter MLP of the learned optimizers, as XLA FFI custom calls on CPU.
//
// For every row r (one parameter) and batch element b (one particle):
//   h1 = relu(x[r] @ w1 + c)          c [H1]: time-feature contribution plus first bias
//   h2 = relu(h1 @ w2 + b2)
//   d, m = h2 @ w3 + b3               w3 [H2, 2]
//   step[r] = d * exp(m * exp_mult) * step_mult
// XLA's matmuls run these thin shapes (K = 8..32, N = 2..32) far below the CPU's peak; here
// each block of 8 rows goes through all three layers in registers, with no intermediate tensor
// in memory. Work is split over XLA's intra-op thread pool (the calling thread takes part).
//
// Entry points:
//  * LoptPerParameterMlp: features x [B, R, F] given (any learned optimizer).
//  * LoptMlpLoptUpdate: MLPLOpt's whole update. Phase 1 updates the momenta (stored feature-major,
//    m [B, K, R]) and takes each tensor's second moments of [g, p, m'_1..m'_K]; phase 2 folds the
//    resulting normalizer scales into a per-tensor copy of w1 and feeds the features straight from
//    g, p and m', so no [R, F] feature matrix is ever written to memory.
// The arithmetic is written once (RowsOf, MomentaOf) over a struct of vector operations; it is
// compiled for AVX-512 and for AVX2 + FMA (H1 = H2 = 32; the best the CPU has is chosen at load
// time) and as a portable loop for other shapes and other CPUs. Python uses these kernels only on
// CPU, where they are registered.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMaxFeatures = 64;
constexpr int64_t kMaxHidden = 256;

// The MLP's weights for one batch element. For MLPLOpt, w1 is the per-tensor copy with the
// normalizer scales folded in (w1s[s][k][:] = scale[s][k] * w1[k][:]).
struct Net {
  const float* c;   // [H1]
  const float* w1;  // [F, H1]
  const float* w2;  // [H1, H2]
  const float* b2;  // [H2]
  const float* w3;  // [H2, 2]
  const float* b3;  // [2]
  int64_t features, hidden1, hidden2;
  float exp_mult, step_mult;
};

// The rows' features: feature k of row r is feature[k][r * stride] (Dense: x rows, stride F;
// MLPLOpt: the g, p and m'_k vectors, stride 1).
struct Columns {
  const float* feature[kMaxFeatures];
  int64_t stride;
  float at(int64_t k, int64_t r) const { return feature[k][r * stride]; }
};

float Finish(const Net& n, float d, float m) {
  return d * std::exp(m * n.exp_mult) * n.step_mult;
}

// ----- The arithmetic, written once over a vector width --------------------------------------
// An instruction-set level is a struct of vector operations on kWidth floats: Scalar (one float,
// the portable path, any sizes), Avx2 (8) and Avx512 (16, both for H1 = H2 = 32). RowsOf and
// MomentaOf take one. Every rounding is the level's own: Fma rounds once with AVX2 and AVX-512 and
// twice in the portable path (plain C++, built without FMA), and Dot keeps each level's order of
// summation, so that every level gives the same bits as before the paths were merged.

struct Scalar {
  using Reg = float;
  static constexpr int kWidth = 1;
  static constexpr int kRows = 1;        // rows per block
  static constexpr int64_t kHidden = 0;  // the hidden sizes it is written for (0: any)
  static Reg Load(const float* p) { return *p; }
  static void Store(float* p, Reg v) { *p = v; }
  static Reg Set1(float v) { return v; }
  static Reg Zero() { return 0.0f; }
  static Reg Fma(Reg a, Reg b, Reg c) { return a * b + c; }
  static Reg Max(Reg a, Reg b) { return std::max(a, b); }
  // bias + h . w over `regs` registers, starting from the bias.
  static float Dot(const Reg* h, const float* w, int64_t regs, float bias) {
    float s = bias;
    for (int64_t q = 0; q < regs; ++q) s += h[q] * w[q];
    return s;
  }
};

void RowsGeneric(const Net& n, const Columns& x, int64_t r0, int64_t r1, float* out);

// Rows [r0, r1) in blocks of V::kRows rows, each row's activations held in H / kWidth registers
// through all three layers; the rows left after the last block take the portable path.
template <class V>
void RowsOf(const Net& n, const Columns& x, int64_t r0, int64_t r1, float* out) {
  using Reg = typename V::Reg;
  constexpr int W = V::kWidth, kRows = V::kRows;
  constexpr int64_t kMax = V::kHidden ? V::kHidden : kMaxHidden;
  const int64_t F = n.features;
  const int64_t H1 = V::kHidden ? V::kHidden : n.hidden1, H2 = V::kHidden ? V::kHidden : n.hidden2;
  alignas(64) float w3d[kMax], w3m[kMax], h1[kRows][kMax];
  for (int64_t k = 0; k < H2; ++k) { w3d[k] = n.w3[2 * k]; w3m[k] = n.w3[2 * k + 1]; }
  int64_t r = r0;
  for (; r + kRows <= r1; r += kRows) {
    Reg acc[kRows][kMax / W];
    for (int i = 0; i < kRows; ++i)  // layer 1: c + x w1
      for (int64_t q = 0; q < H1 / W; ++q) acc[i][q] = V::Load(n.c + W * q);
    for (int64_t k = 0; k < F; ++k) {
      const float* wk = n.w1 + k * H1;
      const float* col = x.feature[k] + r * x.stride;
      Reg xv[kRows];
      for (int i = 0; i < kRows; ++i) xv[i] = V::Set1(col[i * x.stride]);
      for (int64_t q = 0; q < H1 / W; ++q) {
        const Reg w = V::Load(wk + W * q);
        for (int i = 0; i < kRows; ++i) acc[i][q] = V::Fma(xv[i], w, acc[i][q]);
      }
    }
    for (int i = 0; i < kRows; ++i) {  // h1 = relu(.); layer 2: b2 + h1 w2
      for (int64_t q = 0; q < H1 / W; ++q) V::Store(h1[i] + W * q, V::Max(acc[i][q], V::Zero()));
      for (int64_t q = 0; q < H2 / W; ++q) acc[i][q] = V::Load(n.b2 + W * q);
    }
    for (int64_t k = 0; k < H1; ++k) {
      const float* wk = n.w2 + k * H2;
      Reg hv[kRows];
      for (int i = 0; i < kRows; ++i) hv[i] = V::Set1(h1[i][k]);
      for (int64_t q = 0; q < H2 / W; ++q) {
        const Reg w = V::Load(wk + W * q);
        for (int i = 0; i < kRows; ++i) acc[i][q] = V::Fma(hv[i], w, acc[i][q]);
      }
    }
    for (int i = 0; i < kRows; ++i) {  // h2 = relu(.); layer 3: d, m = b3 + h2 w3
      for (int64_t q = 0; q < H2 / W; ++q) acc[i][q] = V::Max(acc[i][q], V::Zero());
      out[r + i] = Finish(n, V::Dot(acc[i], w3d, H2 / W, n.b3[0]),
                          V::Dot(acc[i], w3m, H2 / W, n.b3[1]));
    }
  }
  if (r < r1) RowsGeneric(n, x, r, r1, out);
}

// Sum of squares of v[r0, r1), in double (the vector levels sum whole vectors in float first).
template <class V>
double SumSquares(const float* v, int64_t r0, int64_t r1) {
  double total = 0.0;
  int64_t r = r0;
  if constexpr (V::kWidth > 1) {
    typename V::Reg acc = V::Zero();
    for (; r + V::kWidth <= r1; r += V::kWidth) {
      const typename V::Reg x = V::Load(v + r);
      acc = V::Fma(x, x, acc);
    }
    total = V::Sum(acc);
  }
  for (; r < r1; ++r) total += double(v[r]) * v[r];
  return total;
}

// Phase 1 of MLPLOpt on rows [r0, r1) of one tensor: m'_k = d_k m_k + (1 - d_k) g for every
// decay, and the sums of squares of g, p and every m'_k added to sums[0 .. K + 2).
template <class V>
void MomentaOf(const float* g, const float* p, const float* m, float* m_new, int64_t R,
               const float* decays, int64_t K, int64_t r0, int64_t r1, double* sums) {
  sums[0] += SumSquares<V>(g, r0, r1);
  sums[1] += SumSquares<V>(p, r0, r1);
  for (int64_t k = 0; k < K; ++k) {
    const float* mk = m + k * R;
    float* nk = m_new + k * R;
    double total = 0.0;
    int64_t r = r0;
    if constexpr (V::kWidth > 1) {
      using Reg = typename V::Reg;
      const Reg d = V::Set1(decays[k]), e = V::Set1(1.0f - decays[k]);
      Reg acc = V::Zero();
      for (; r + V::kWidth <= r1; r += V::kWidth) {
        const Reg v = V::Fma(d, V::Load(mk + r), V::Mul(e, V::Load(g + r)));
        V::Store(nk + r, v);
        acc = V::Fma(v, v, acc);
      }
      total = V::Sum(acc);
    }
    for (; r < r1; ++r) {
      const float v = decays[k] * mk[r] + (1.0f - decays[k]) * g[r];
      nk[r] = v;
      total += double(v) * v;
    }
    sums[k + 2] += total;
  }
}

// The portable path, kept out of line: the vector paths call it for their last rows, and it must
// not be compiled into them with their FMA.
__attribute__((noinline)) void RowsGeneric(const Net& n, const Columns& x, int64_t r0, int64_t r1,
                                           float* out) {
  RowsOf<Scalar>(n, x, r0, r1, out);
}

#if defined(__x86_64__)
bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return has;
}

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

#define LOPT_AVX2 __attribute__((target("avx2,fma")))
#define LOPT_AVX512 __attribute__((target("avx512f,avx512dq,fma")))

struct Avx2 {
  using Reg = __m256;
  static constexpr int kWidth = 8;
  static constexpr int kRows = 3;  // 3 rows x 4 registers: 12 accumulators of the 16 registers
  static constexpr int64_t kHidden = 32;
  LOPT_AVX2 static Reg Load(const float* p) { return _mm256_loadu_ps(p); }
  LOPT_AVX2 static void Store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  LOPT_AVX2 static Reg Set1(float v) { return _mm256_set1_ps(v); }
  LOPT_AVX2 static Reg Zero() { return _mm256_setzero_ps(); }
  LOPT_AVX2 static Reg Mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  LOPT_AVX2 static Reg Fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  LOPT_AVX2 static Reg Max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  LOPT_AVX2 static float Sum(Reg v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
  // bias + h . w: lanes summed from the first register up, then across.
  LOPT_AVX2 static float Dot(const Reg* h, const float* w, int64_t regs, float bias) {
    Reg s = Zero();
    for (int64_t q = 0; q < regs; ++q) s = Fma(h[q], Load(w + kWidth * q), s);
    return Sum(s) + bias;
  }
};

struct Avx512 {
  using Reg = __m512;
  static constexpr int kWidth = 16;
  static constexpr int kRows = 8;  // 8 rows x 2 registers
  static constexpr int64_t kHidden = 32;
  LOPT_AVX512 static Reg Load(const float* p) { return _mm512_loadu_ps(p); }
  LOPT_AVX512 static void Store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  LOPT_AVX512 static Reg Set1(float v) { return _mm512_set1_ps(v); }
  LOPT_AVX512 static Reg Zero() { return _mm512_setzero_ps(); }
  LOPT_AVX512 static Reg Mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  LOPT_AVX512 static Reg Fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  LOPT_AVX512 static Reg Max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  LOPT_AVX512 static float Sum(Reg v) { return _mm512_reduce_add_ps(v); }
  // bias + h . w: lanes summed from the last register down, then across.
  LOPT_AVX512 static float Dot(const Reg* h, const float* w, int64_t regs, float bias) {
    Reg s = Mul(h[regs - 1], Load(w + kWidth * (regs - 1)));
    for (int64_t q = regs - 2; q >= 0; --q) s = Fma(h[q], Load(w + kWidth * q), s);
    return Sum(s) + bias;
  }
};

// Each level's entry points: the templates compiled for its instruction set (flatten inlines
// every operation, so the whole path is built with that target).
LOPT_AVX2 __attribute__((flatten)) void RowsAvx2(const Net& n, const Columns& x, int64_t r0,
                                                 int64_t r1, float* out) {
  RowsOf<Avx2>(n, x, r0, r1, out);
}
LOPT_AVX512 __attribute__((flatten)) void RowsAvx512(const Net& n, const Columns& x, int64_t r0,
                                                     int64_t r1, float* out) {
  RowsOf<Avx512>(n, x, r0, r1, out);
}
LOPT_AVX2 __attribute__((flatten)) void MomentaAvx2(const float* g, const float* p, const float* m,
                                                    float* m_new, int64_t R, const float* decays,
                                                    int64_t K, int64_t r0, int64_t r1,
                                                    double* sums) {
  MomentaOf<Avx2>(g, p, m, m_new, R, decays, K, r0, r1, sums);
}
LOPT_AVX512 __attribute__((flatten)) void MomentaAvx512(const float* g, const float* p,
                                                        const float* m, float* m_new, int64_t R,
                                                        const float* decays, int64_t K, int64_t r0,
                                                        int64_t r1, double* sums) {
  MomentaOf<Avx512>(g, p, m, m_new, R, decays, K, r0, r1, sums);
}
#endif

// The instruction set the kernels use: the best this CPU has, unless lowered with LoptSetIsa.
enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

int BestIsa() {
#if defined(__x86_64__)
  if (HasAvx512()) return kAvx512;
  if (HasAvx2()) return kAvx2;
#endif
  return kGeneric;
}

std::atomic<int> isa_in_use{BestIsa()};

void Rows(const Net& n, const Columns& x, int64_t r0, int64_t r1, float* out) {
#if defined(__x86_64__)
  if (n.hidden1 == 32 && n.hidden2 == 32) {
    const int isa = isa_in_use.load(std::memory_order_relaxed);
    if (isa == kAvx512) return RowsAvx512(n, x, r0, r1, out);
    if (isa == kAvx2) return RowsAvx2(n, x, r0, r1, out);
  }
#endif
  RowsGeneric(n, x, r0, r1, out);
}

void Momenta(const float* g, const float* p, const float* m, float* m_new, int64_t R,
             const float* decays, int64_t K, int64_t r0, int64_t r1, double* sums) {
#if defined(__x86_64__)
  const int isa = isa_in_use.load(std::memory_order_relaxed);
  if (isa == kAvx512) return MomentaAvx512(g, p, m, m_new, R, decays, K, r0, r1, sums);
  if (isa == kAvx2) return MomentaAvx2(g, p, m, m_new, R, decays, K, r0, r1, sums);
#endif
  MomentaOf<Scalar>(g, p, m, m_new, R, decays, K, r0, r1, sums);
}

// Runs fn(0) .. fn(n - 1) on the calling thread and on XLA's intra-op threads. Tasks are claimed
// from a shared counter and the caller claims them too, so all of them run even if no pool
// thread ever does; late helpers find nothing left and return without touching fn.
void ParallelFor(ffi::ThreadPool& pool, int64_t n, std::function<void(int64_t)> fn) {
  struct State {
    std::function<void(int64_t)> fn;
    int64_t n;
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  state->fn = std::move(fn);
  state->n = n;
  auto work = [](State& st) {
    for (int64_t t; (t = st.next.fetch_add(1)) < st.n;) {
      st.fn(t);
      st.done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([state, work]() { work(*state); });
  work(*state);
  while (state->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

// The rows of every batch element in chunks of about 4096, several per thread.
struct Chunks {
  int64_t size, per_batch, count;
  Chunks(ffi::ThreadPool& pool, int64_t batch, int64_t rows) {
    const int64_t threads = std::max<int64_t>(1, pool.num_threads());
    size = std::max<int64_t>(512, std::min<int64_t>(4096, batch * rows / (4 * threads) + 1));
    per_batch = (rows + size - 1) / size;
    count = batch * per_batch;
  }
  int64_t batch_of(int64_t t) const { return t / per_batch; }
  int64_t start(int64_t t) const { return (t % per_batch) * size; }
};

int64_t LeadingSize(ffi::Span<const int64_t> dims, int64_t trailing) {
  int64_t size = 1;
  for (int64_t i = 0; i + trailing < static_cast<int64_t>(dims.size()); ++i) size *= dims[i];
  return size;
}

ffi::Error CheckSizes(int64_t features, int64_t hidden1, int64_t hidden2) {
  if (features > kMaxFeatures || hidden1 > kMaxHidden || hidden2 > kMaxHidden)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "per-parameter MLP too large for kernel");
  return ffi::Error::Success();
}

// x [..., R, F] -> step [..., R].
ffi::Error Dense(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> c,
                 ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2,
                 ffi::Buffer<ffi::F32> w3, ffi::Buffer<ffi::F32> b3, float exp_mult,
                 float step_mult, ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions();
  auto w2d = w2.dimensions();
  const int64_t R = xd[xd.size() - 2], F = xd[xd.size() - 1];
  const int64_t H1 = w2d[w2d.size() - 2], H2 = w2d[w2d.size() - 1];
  if (ffi::Error e = CheckSizes(F, H1, H2); !e.success()) return e;
  const int64_t batch = LeadingSize(xd, 2);
  const Chunks ch(pool, batch, R);
  ParallelFor(pool, ch.count, [&](int64_t t) {
    const int64_t b = ch.batch_of(t), r0 = ch.start(t);
    const Net n{c.typed_data() + b * H1, w1.typed_data() + b * F * H1,
                w2.typed_data() + b * H1 * H2, b2.typed_data() + b * H2,
                w3.typed_data() + b * H2 * 2, b3.typed_data() + b * 2, F, H1, H2, exp_mult,
                step_mult};
    Columns cols;
    cols.stride = F;
    for (int64_t k = 0; k < F; ++k) cols.feature[k] = x.typed_data() + b * R * F + k;
    Rows(n, cols, r0, std::min(R, r0 + ch.size), out->typed_data() + b * R);
  });
  return ffi::Error::Success();
}

// MLPLOpt's update. g, p [..., R]; m [..., K, R] (feature-major); decays [..., K]; offsets: the
// S + 1 row offsets of the tensors. Results: step [..., R], m' [..., K, R].
ffi::Error Lopt(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> p,
                ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> decays, ffi::Buffer<ffi::F32> c,
                ffi::Buffer<ffi::F32> w1, ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2,
                ffi::Buffer<ffi::F32> w3, ffi::Buffer<ffi::F32> b3,
                ffi::Span<const int64_t> offsets, float exp_mult, float step_mult,
                ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> m_new) {
  auto gd = g.dimensions();
  auto md = m.dimensions();
  auto w2d = w2.dimensions();
  const int64_t R = gd[gd.size() - 1], K = md[md.size() - 2], F = K + 2;
  const int64_t H1 = w2d[w2d.size() - 2], H2 = w2d[w2d.size() - 1];
  if (ffi::Error e = CheckSizes(F, H1, H2); !e.success()) return e;
  const int64_t batch = LeadingSize(gd, 1), S = static_cast<int64_t>(offsets.size()) - 1;
  const float *gp = g.typed_data(), *pp = p.typed_data(), *mp = m.typed_data();
  float* mn = m_new->typed_data();

  // Phase 1, by (batch element, tensor, chunk of the tensor's rows).
  struct Piece { int64_t b, s, r0, r1; };
  std::vector<Piece> pieces;
  const int64_t piece = 8192;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t r = offsets[s]; r < offsets[s + 1]; r += piece)
        pieces.push_back({b, s, r, std::min(offsets[s + 1], r + piece)});
  std::vector<double> sums(pieces.size() * F, 0.0);
  ParallelFor(pool, pieces.size(), [&](int64_t i) {
    const Piece& q = pieces[i];
    Momenta(gp + q.b * R, pp + q.b * R, mp + q.b * K * R, mn + q.b * K * R, R,
            decays.typed_data() + q.b * K, K, q.r0, q.r1, sums.data() + i * F);
  });

  // Normalizer scales, folded into a copy of w1 for every (batch element, tensor).
  std::vector<double> total(batch * S * F, 0.0);
  for (size_t i = 0; i < pieces.size(); ++i)
    for (int64_t f = 0; f < F; ++f)
      total[(pieces[i].b * S + pieces[i].s) * F + f] += sums[i * F + f];
  std::vector<float> w1s(batch * S * F * H1);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < S; ++s) {
      const double size = double(std::max<int64_t>(1, offsets[s + 1] - offsets[s]));
      for (int64_t f = 0; f < F; ++f) {
        const float scale = float(1.0 / std::sqrt(1e-5 + total[(b * S + s) * F + f] / size));
        const float* src = w1.typed_data() + (b * F + f) * H1;
        float* dst = w1s.data() + ((b * S + s) * F + f) * H1;
        for (int64_t j = 0; j < H1; ++j) dst[j] = scale * src[j];
      }
    }
  }

  // Phase 2, by (batch element, chunk of rows); a chunk is cut at tensor boundaries.
  const Chunks ch(pool, batch, R);
  ParallelFor(pool, ch.count, [&](int64_t t) {
    const int64_t b = ch.batch_of(t), r0 = ch.start(t), r1 = std::min(R, r0 + ch.size);
    Columns cols;
    cols.stride = 1;
    cols.feature[0] = gp + b * R;
    cols.feature[1] = pp + b * R;
    for (int64_t k = 0; k < K; ++k) cols.feature[k + 2] = mn + (b * K + k) * R;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t lo = std::max(r0, offsets[s]), hi = std::min(r1, offsets[s + 1]);
      if (lo >= hi) continue;
      const Net n{c.typed_data() + b * H1, w1s.data() + (b * S + s) * F * H1,
                  w2.typed_data() + b * H1 * H2, b2.typed_data() + b * H2,
                  w3.typed_data() + b * H2 * 2, b3.typed_data() + b * 2, F, H1, H2, exp_mult,
                  step_mult};
      Rows(n, cols, lo, hi, out->typed_data() + b * R);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// The instruction set the kernels use (0: portable loop, 1: AVX2 + FMA, 2: AVX-512), for tests and
// comparisons. LoptSetIsa lowers it to at most what the CPU has and returns the level now in use.
extern "C" int LoptIsa() { return isa_in_use.load(); }
extern "C" int LoptSetIsa(int isa) {
  const int level = std::max(0, std::min(isa, BestIsa()));
  isa_in_use.store(level);
  return level;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptPerParameterMlp, Dense,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w3
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b3
                                  .Attr<float>("exp_mult")
                                  .Attr<float>("step_mult")
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptMlpLoptUpdate, Lopt,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Arg<ffi::Buffer<ffi::F32>>()  // p
                                  .Arg<ffi::Buffer<ffi::F32>>()  // m
                                  .Arg<ffi::Buffer<ffi::F32>>()  // decays
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w3
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b3
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<float>("exp_mult")
                                  .Attr<float>("step_mult")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // step
                                  .Ret<ffi::Buffer<ffi::F32>>());  // m'
