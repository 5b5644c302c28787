// The driver of batched_matmul (matmul_cpu.h), written once and compiled once per ISA.
//
// Included by matmul_cpu.cpp (portable), matmul_avx2.cpp and matmul_avx512.cpp after
// defining FASTLRP_MM_ISA (a namespace name of its own per translation unit) and, in
// fastlrp::cpu::FASTLRP_MM_ISA, a struct Simd with
//     using V;  static constexpr int W, MR, NV;      // vector width, tile rows, tile vectors
//     V zero();  V bcast(const float*);  V load(const float*), store(float*, V) (aligned);  V fma(a, b, c);
//     V mul(V, V);  V load_n(const float*, int n);  void store_n(float*, V, int n);
//     void stream(float*, V) (a non-temporal store, aligned);  void fence() (orders them);
// (load_n / store_n: the first n <= W lanes; load_n zeroes the others).  The tile is MR x NR
// with NR = NV * W: MR * NV accumulators, NV loads of B and one broadcast per row each k.
#include <array>
#include <cstdint>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gemm.h"  // aligned_floats
#include "matmul_cpu.h"

#if defined(__GNUC__) || defined(__clang__)
#define FASTLRP_PREFETCH(p, write) __builtin_prefetch((p), (write), 3)
#else
#define FASTLRP_PREFETCH(p, write) ((void)(p))
#endif

namespace fastlrp {
namespace cpu {
namespace FASTLRP_MM_ISA {

using V = Simd::V;
constexpr int W = Simd::W, MR = Simd::MR, NVMAX = Simd::NV, NR = W * NVMAX;

// One R x (NV * W) tile of C (R <= MR rows, the last vector holding `cols - (NV-1) W` real
// columns) from A in place (AT: A[i, p] = a[p * lda + i], else a[i * lda + p]) and the packed
// B panel bp (k x NR); times M (mp at the tile's corner, strides mrs, mcs) when mp is set.
template <int R, int NV, bool AT>
void tile(int64_t k, const float* __restrict a, int64_t lda, const float* __restrict bp, float* __restrict c,
          int64_t ldc, int cols, const float* mp, int64_t mrs, int64_t mcs) {
    V acc[R][NV];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = Simd::zero();
    // rows of A by groups of 4: a base each, moving along k, and offsets of 0..3 rows (few
    // general registers; with one pointer per row the 12 x 32 tile ran about 8% slower in L1)
    const float* base[(R + 3) / 4];
    for (int q = 0; q < (R + 3) / 4; ++q) base[q] = AT ? a + 4 * q : a + 4 * q * lda;
    const int64_t step = AT ? lda : 1, roff = AT ? 1 : lda;
    for (int64_t p = 0; p < k; ++p) {
        V b[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) b[v] = Simd::load(bp + p * NR + v * W);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const V av = Simd::bcast(base[r / 4] + (r % 4) * roff);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = Simd::fma(av, b[v], acc[r][v]);
        }
#pragma GCC unroll 4
        for (int q = 0; q < (R + 3) / 4; ++q) base[q] += step;
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const int nv = v + 1 < NV ? W : cols - v * W;
            V x = acc[r][v];
            if (mp) {
                const float* mrow = mp + r * mrs + v * W * mcs;
                if (mcs == 1) {
                    x = Simd::mul(x, Simd::load_n(mrow, nv));
                } else {
                    float t[W];
                    for (int j = 0; j < nv; ++j) t[j] = mrow[j * mcs];
                    x = Simd::mul(x, Simd::load_n(t, nv));
                }
            }
            Simd::store_n(c + r * ldc + v * W, x, nv);
        }
}

using TileFn = void (*)(int64_t, const float*, int64_t, const float*, float*, int64_t, int, const float*, int64_t,
                        int64_t);

template <int NV, bool AT, size_t... I>
constexpr std::array<TileFn, MR> rows_table(std::index_sequence<I...>) {
    return {{&tile<int(I) + 1, NV, AT>...}};
}

template <bool AT, size_t... V>
constexpr std::array<std::array<TileFn, MR>, NVMAX> tiles_table(std::index_sequence<V...>) {
    return {{rows_table<int(V) + 1, AT>(std::make_index_sequence<MR>{})...}};
}

// [AT][NV - 1][R - 1]
constexpr std::array<std::array<TileFn, MR>, NVMAX> kTiles[2] = {
    tiles_table<false>(std::make_index_sequence<NVMAX>{}), tiles_table<true>(std::make_index_sequence<NVMAX>{})};

// B's columns j0 .. j0 + cols into one panel (panel[p * NR + j]), zeros up to the used vectors' end.
inline void pack_b_panel(const float* b, int64_t rs, int64_t cs, int64_t k, int64_t j0, int cols,
                         float* __restrict panel) {
    const int used = (cols + W - 1) / W * W;
    if (cs == 1) {  // vector by vector (a memcpy call per row of NR floats took 6% of q k^T)
        for (int64_t p = 0; p < k; ++p)
            for (int j = 0; j < used; j += W)
                Simd::store(panel + p * NR + j, Simd::load_n(b + p * rs + j0 + j, cols - j < W ? cols - j : W));
        return;
    }
    for (int64_t p = 0; p < k; ++p)
        for (int j = cols; j < used; ++j) panel[p * NR + j] = 0.0f;
    // column by column: each source column is contiguous when rs == 1 (a transposed B)
    for (int j = 0; j < cols; ++j) {
        const float* src = b + (j0 + j) * cs;
        for (int64_t p = 0; p < k; ++p) panel[p * NR + j] = src[p * rs];
    }
}

// Software prefetch of `count` runs of `len` floats, `step` apart: one line every 16 floats and
// the run's last, issued a share at a time between tiles.  The next row panel's A, C (for
// writing) and M rows and the next group's B are fetched while the current tiles compute: the
// hardware prefetchers do not follow MR rows at a time (ViT-B/16's q k^T, one core of the 2-vCPU
// Xeon of the benchmarks: 63 -> 78 GF/s, 55 -> 73 for A v, C harness, A and B cold).
struct Lines {
    const float* p = nullptr;
    int64_t count = 0, step = 0, len = 0;
    int64_t per = 0, left = 0, chunk = 0, s = 0, l = 0;  // prefetches per run, to issue, per share; cursor
    Lines() = default;
    Lines(const float* p_, int64_t count_, int64_t step_, int64_t len_) : p(p_), count(count_), step(step_), len(len_) {}
    // in `shares` shares (no division per share: they run between tiles)
    void plan(int64_t shares) {
        per = (len + 15) / 16 + 1;
        left = p && len > 0 ? count * per : 0;
        chunk = (left + shares - 1) / shares;
    }
    template <int Write>
    void fetch() {
        for (int64_t x = chunk < left ? chunk : left; x > 0; --x) {
            FASTLRP_PREFETCH(p + s * step + (16 * l < len ? 16 * l : len - 1), Write);
            if (++l == per) l = 0, ++s;
        }
        left -= chunk < left ? chunk : left;
    }
};

// Rows i0 .. i0 + rows of an operand read along its unit stride (none: no prefetch).
inline Lines rows_of(const float* x, int64_t rs, int64_t cs, int64_t i0, int64_t rows, int64_t cols) {
    if (cs == 1) return Lines{x + i0 * rs, rows, rs, cols};
    if (rs == 1) return Lines{x + i0, cols, cs, rows};
    return Lines{};
}

// Products of at least this many bytes store C with non-temporal stores: far more than the
// caches keep for the next op, so the stores skip reading C's lines first (ViT-B/16's q k^T at
// batch 16 writes 30 MB per call; memory traffic a third lower).
constexpr double kStreamBytes = 8 << 20;

// len floats from src to dst with non-temporal stores, src at dst's offset within 64 bytes.
inline void stream_floats(float* dst, const float* src, int64_t len) {
    int64_t x = int64_t((64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63) / 4;
    if (x > len) x = len;
    for (int64_t i = 0; i < x; ++i) dst[i] = src[i];
    for (; x + W <= len; x += W) Simd::stream(dst + x, Simd::load(src + x));
    for (; x < len; ++x) dst[x] = src[x];
}

// Loop nest: threads take (group, block of row panels) items in order; per item the thread
// packs the group's B into column panels (k x NR each, kept in L2; skipped when its previous
// item was of the same group), then for each MR-row panel of A (read in place, in L1 after
// the first column panel) runs the tiles along the row, writing MR whole rows of C.
inline void batched_matmul_impl(const BatchedMatmulArgs& A, int threads) {
    const int64_t G = A.groups, m = A.m, n = A.n, k = A.k;
    // A by columns (its k steps MR contiguous floats) where it is transposed, or has one row
    const bool at = m == 1 || (A.a.rs == 1 && A.a.cs != 1);
    const int64_t lda = at ? A.a.cs : A.a.rs;
    const int64_t npan = (n + NR - 1) / NR, rpan = (m + MR - 1) / MR;
    if (threads < 1 || double(G) * m * n * k < double(1 << 16)) threads = 1;
    // row blocks only where there are too few groups to share out
    const int64_t splits = G >= 4 * threads ? 1 : (4 * threads + G - 1) / G;
    const int64_t rblock = (rpan + splits - 1) / splits, nrb = (rpan + rblock - 1) / rblock, items = G * nrb;
    if (threads > items) threads = int(items);
    // per thread: the packed B, and where C is streamed, a row panel of C (rows of n, C's alignment)
    const bool stream = double(G) * m * n * sizeof(float) >= kStreamBytes;
    const size_t bsize = size_t(npan * NR * k + 15) / 16 * 16, csize = stream ? size_t(MR * n + 16 + 15) / 16 * 16 : 0;
    AlignedBuf buf = aligned_floats(size_t(threads) * (bsize + csize));
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#ifdef _OPENMP
        float* bpack = buf.get() + size_t(omp_get_thread_num()) * (bsize + csize);
#else
        float* bpack = buf.get();
#endif
        float* const cpanel = bpack + bsize;
        int64_t packed = -1;
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; ++it) {
            const int64_t g = it / nrb, rb = it - g * nrb;
            if (g != packed) {
                for (int64_t jp = 0; jp < npan; ++jp)
                    pack_b_panel(A.b.p + A.b.off[g], A.b.rs, A.b.cs, k, jp * NR, int(n - jp * NR < NR ? n - jp * NR : NR),
                                 bpack + jp * NR * k);
                packed = g;
            }
            const float* ag = A.a.p + A.a.off[g];
            const float* mg = A.mul.p ? A.mul.p + A.mul.off[g] : nullptr;
            float* cg = A.c + g * m * n;
            const int64_t r0 = rb * rblock * MR, r1 = (rb + 1) * rblock * MR < m ? (rb + 1) * rblock * MR : m;
            const int64_t tiles = (r1 - r0 + MR - 1) / MR * npan;
            Lines bnext = rb + 1 == nrb && g + 1 < G ? rows_of(A.b.p + A.b.off[g + 1], A.b.rs, A.b.cs, 0, k, n)
                                                     : Lines{};
            bnext.plan(tiles);
            for (int64_t i0 = r0; i0 < r1; i0 += MR) {
                const int rows = int(m - i0 < MR ? m - i0 : MR);
                const int64_t in = i0 + MR, rn = in < m ? (m - in < MR ? m - in : MR) : 0;
                Lines anext = rn ? rows_of(ag, A.a.rs, A.a.cs, in, rn, k) : Lines{};
                Lines cnext = rn && !stream ? Lines{cg + in * n, 1, 0, rn * n} : Lines{};
                float* const ci = cg + i0 * n;
                float* const co = stream ? cpanel + (reinterpret_cast<uintptr_t>(ci) & 63) / 4 : ci;
                Lines mnext = rn && mg ? rows_of(mg, A.mul.rs, A.mul.cs, in, rn, n) : Lines{};
                anext.plan(npan);
                cnext.plan(npan);
                mnext.plan(npan);
                for (int64_t jp = 0; jp < npan; ++jp) {
                    anext.fetch<0>();
                    cnext.fetch<1>();
                    mnext.fetch<0>();
                    bnext.fetch<0>();
                    const int64_t j0 = jp * NR;
                    const int cols = int(n - j0 < NR ? n - j0 : NR);
                    kTiles[at][(cols + W - 1) / W - 1][rows - 1](
                        k, ag + i0 * (at ? 1 : lda), lda, bpack + jp * NR * k, co + j0, n, cols,
                        mg ? mg + i0 * A.mul.rs + j0 * A.mul.cs : nullptr, A.mul.rs, A.mul.cs);
                }
                if (stream) stream_floats(ci, co, rows * n);
            }
        }
        if (stream) Simd::fence();
    }
}

}  // namespace FASTLRP_MM_ISA
}  // namespace cpu
}  // namespace fastlrp
