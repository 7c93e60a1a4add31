// Fused loss + gradient of S small SAEs (ReLU "standard" or TopK) over a range of samples.
//
// Built at run time by benchmark/training/fused_kernel.py for one shape:
//   c++ -O3 -march=native -DD_IN=<d_in, multiple of 16> -DWIDTH=<latents> -DTOPK_K=<k, 0 = ReLU>
//       -DSPARSE=<0|1> -shared -fPIC
// and called through ctypes (the GIL is released, so threads may each take a range of samples).
//
// The maths is the analytic gradient of benchmark/training/fast_path.py (checked against autograd by
// tests/training/test_training.py): with pre = enc·x + bias, z = pre where the latent is active
// (ReLU: pre > 0; TopK: pre >= max(k-th largest pre, smallest normal float)), residual
// r = dec^T z + b_dec - x and g = r * grad_scale,
//   g_dec[f] += z_f g,   g_bdec += g,   gp_f = (dec[f]·g + l1_over_B) [f active],
//   g_enc[f] += gp_f x,  g_bias[f] += gp_f,
// summed over samples; stats[s] += (Σ r², number of active latents, Σ z). g_enc / g_bias are taken
// with respect to x and the effective bias; the caller maps them back when the input is centred.
//
// Samples sit in the lanes of the machine's own vectors (8 floats with AVX2, 16 with AVX-512): a
// block of V vectors of samples goes through every product as small register-tiled GEMMs (a weight
// broadcast times a vector of samples), so nothing leaves L1 and every FMA does a full vector of work.
// Tiles are sized for the register file (16 vector registers on AVX2, 32 on AVX-512): an earlier build
// fixed 16-float vectors everywhere, which AVX2 emulates with register pairs; its 4 × 4 tiles then
// spilled, and it ran 4× slower than the torch path there. Scratch lives on the heap, not in
// thread_local statics, whose every access from a shared library went through __tls_get_addr.
// Two ways through a block:
//  * dense (SPARSE=0): decoding, back-propagation and both weight gradients as GEMMs over all latents.
//  * sparse (SPARSE=1): the encoder as above, then per sample only its active latents are decoded and
//    back-propagated (vectors of d_in floats): cheaper when few latents fire (TopK with small k, or a
//    ReLU SAE with a strong sparsity penalty).
// Sums over samples accumulate per chunk of CHUNK samples and are added to the outputs at the end of
// each chunk, as the torch path accumulates per column chunk.
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#if !defined(D_IN) || !defined(WIDTH) || !defined(TOPK_K) || !defined(SPARSE)
#error "define D_IN, WIDTH, TOPK_K and SPARSE"
#endif
#if D_IN % 16 != 0
#error "D_IN must be a multiple of 16"
#endif

#if defined(__AVX512F__)
#define LANE_COUNT 16
#define WIDE_REGISTER_FILE 1
#else
#define LANE_COUNT 8
#define WIDE_REGISTER_FILE 0
#endif

typedef float vf __attribute__((vector_size(LANE_COUNT * 4)));
typedef int32_t vi __attribute__((vector_size(LANE_COUNT * 4)));
typedef uint32_t vu __attribute__((vector_size(LANE_COUNT * 4)));
typedef float vf_u __attribute__((vector_size(LANE_COUNT * 4), aligned(4)));

namespace {
constexpr int L = LANE_COUNT;           // samples per vector
constexpr int D = D_IN, DV = D_IN / L, F = WIDTH, K = TOPK_K, WORDS = (WIDTH + 31) / 32;
constexpr int V = 8;                    // vectors of samples per block: the block's rows stay in L1
constexpr int BLOCK = V * L;            // samples per block
// Register tiles: rows (latents or inputs) × vectors of samples, and latents × inputs. 12 accumulators
// on AVX2 keep both FMA pipes busy through the FMA latency (8 did not) and leave 4 registers for
// operands; AVX-512's 32 registers take 24.
constexpr int TR = 6, TV = WIDE_REGISTER_FILE ? 4 : 2;
constexpr int TWF = WIDE_REGISTER_FILE ? 6 : 3, TWD = 4;
constexpr long CHUNK = 4096;            // samples per flush of the accumulators
constexpr float TINY = 1.17549435e-38f; // smallest normal float: TopK keeps positive values only
static_assert(V % TV == 0 && D % TWD == 0, "tile sizes");
static_assert(CHUNK % BLOCK == 0, "a chunk holds whole blocks");

inline vf load(const float *p) { return *(const vf_u *)p; }
inline void store(float *p, vf v) { *(vf_u *)p = v; }
inline vf splat(float a) { return __builtin_shuffle(vf{a}, vi{}); }  // vf{} + a would cost an add
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline vf keep_if(vi mask, vf v) { return (vf)((vi)v & mask); }  // v where mask lanes are set, else +0
inline float hsum(vf v) {
#if LANE_COUNT == 16
    v = v + __builtin_shuffle(v, vi{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    v = v + __builtin_shuffle(v, vi{4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
    v = v + __builtin_shuffle(v, vi{2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
#else
    v = v + __builtin_shuffle(v, vi{4, 5, 6, 7, 0, 1, 2, 3});
    v = v + __builtin_shuffle(v, vi{2, 3, 0, 1, 2, 3, 0, 1});
#endif
    return v[0] + v[1];
}

struct Seed {  // one seed's parameters
    const float *enc, *bias, *dec, *b_dec;
};

struct Totals {  // one chunk's per-seed sums
    double sq, active, zsum;
};

// The block's samples, feature-major: X[d][v] holds input d of samples n0 + v·L .. n0 + v·L + L-1;
// lanes past the range are zero, and ok[v] masks the lanes that hold samples.
inline void load_block(const float *xT, long B, long n0, long n1, vf (*X)[V], vi *ok) {
    for (int v = 0; v < V; v++) {
        const long s0 = n0 + (long)v * L;
        const long valid = n1 - s0 < 0 ? 0 : (n1 - s0 < L ? n1 - s0 : L);
        vi m;
        for (int l = 0; l < L; l++) m[l] = l < valid ? -1 : 0;
        ok[v] = m;
        if (valid == L) {
            for (int d = 0; d < D; d++) X[d][v] = load(xT + (long)d * B + s0);
        } else {
            for (int d = 0; d < D; d++) {
                X[d][v] = vf{};
                for (int l = 0; l < valid; l++) X[d][v][l] = xT[(long)d * B + s0 + l];
            }
        }
    }
}

// out[r][v] = init[r] + Σ_c W[r·stride + c] · in[c][v] for rows r0 .. r0+R-1 (a register tile of R × TV)
template <int R, int C>
inline void rows_times_block(const float *W, int stride, const float *init, int r0, const vf (*in)[V], vf (*out)[V]) {
    for (int v0 = 0; v0 < V; v0 += TV) {
        vf acc[R][TV];
        for (int i = 0; i < R; i++)
            for (int j = 0; j < TV; j++) acc[i][j] = splat(init ? init[r0 + i] : 0.0f);
        for (int c = 0; c < C; c++) {
            vf col[TV];
            for (int j = 0; j < TV; j++) col[j] = in[c][v0 + j];
            for (int i = 0; i < R; i++) {
                const vf w = splat(W[(r0 + i) * stride + c]);
                for (int j = 0; j < TV; j++) acc[i][j] += w * col[j];
            }
        }
        for (int i = 0; i < R; i++)
            for (int j = 0; j < TV; j++) out[r0 + i][v0 + j] = acc[i][j];
    }
}

// out[r][v] = init[r] + Σ_c W[r·stride + c] · in[c][v] for all ROWS rows
template <int ROWS, int C>
inline void matrix_times_block(const float *W, int stride, const float *init, const vf (*in)[V], vf (*out)[V]) {
    constexpr int FULL = ROWS / TR * TR;
    for (int r = 0; r < FULL; r += TR) rows_times_block<TR, C>(W, stride, init, r, in, out);
    if constexpr (FULL < ROWS) rows_times_block<ROWS - FULL, C>(W, stride, init, FULL, in, out);
}

// Loads samples [n0, n1) into X (see load_block) and encodes them: Z = pre-activations, then the
// activation; returns whether the block is full. The dense path counts active latents and Σ z per lane
// here; the sparse path marks each sample's active latents in `bits` (and counts them later).
inline bool load_and_encode_block(const Seed &p, const float *xT, long B, long n0, long n1, vf (*X)[V], vi *ok,
                                  vf (*Z)[V], vf &active, vf &zsum, vu (*bits)[WORDS]) {
    const bool full = n1 - n0 >= BLOCK;
    load_block(xT, B, n0, n1, X, ok);
    matrix_times_block<F, D>(p.enc, D, p.bias, X, Z);
    for (int v = 0; v < V; v++) {
        vf thr = vf{};
        if (K > 0) {
            vf top[K > 0 ? K : 1];
            for (int j = 0; j < K; j++) top[j] = splat(-INFINITY);
            for (int f = 0; f < F; f++) {  // running top-k per lane (min/max insertion)
                const vf x = Z[f][v];
                for (int j = K - 1; j > 0; j--) top[j] = vmax(top[j], vmin(top[j - 1], x));
                top[0] = vmax(top[0], x);
            }
            thr = vmax(top[K - 1], splat(TINY));
        }
        const vi lane_ok = full ? ~vi{} : ok[v];
#if SPARSE
        for (int w = 0; w < WORDS; w++) bits[v][w] = vu{};
#endif
        for (int f = 0; f < F; f++) {
            const vf x = Z[f][v];
            const vi on = (K > 0 ? (x >= thr) : (x > 0.0f)) & lane_ok;
            Z[f][v] = keep_if(on, x);
#if SPARSE
            bits[v][f >> 5] |= (vu)on & (1u << (f & 31));
#else
            active += keep_if(on, splat(1.0f));
            zsum += Z[f][v];
#endif
        }
    }
    return full;
}

#if SPARSE == 0
struct Acc {  // one chunk's gradient sums, per lane (reduced at the flush)
    vf enc[F][D], dec[F][D], bias[F], bdec[D];
    void clear() { memset(this, 0, sizeof *this); }
};

void flush(const Acc &a, int s, float *g_enc, float *g_bias, float *g_dec, float *g_bdec) {
    float *ge = g_enc + (long)s * F * D, *gd = g_dec + (long)s * F * D;
    for (int f = 0; f < F; f++) {
        for (int d = 0; d < D; d++) {
            ge[f * D + d] += hsum(a.enc[f][d]);
            gd[f * D + d] += hsum(a.dec[f][d]);
        }
        g_bias[(long)s * F + f] += hsum(a.bias[f]);
    }
    for (int d = 0; d < D; d++) g_bdec[(long)s * D + d] += hsum(a.bdec[d]);
}

// out[f][d] += Σ_v rows[f][v] · cols[d][v] (per lane) for latents f0 .. f0+RF-1, all inputs
template <int RF>
inline void weight_rows(const vf (*rows)[V], const vf (*cols)[V], int f0, vf (*out)[D]) {
    for (int d0 = 0; d0 < D; d0 += TWD) {
        vf acc[RF][TWD] = {};
        for (int v = 0; v < V; v++) {
            vf c[TWD];
            for (int j = 0; j < TWD; j++) c[j] = cols[d0 + j][v];
            for (int i = 0; i < RF; i++) {
                const vf r = rows[f0 + i][v];
                for (int j = 0; j < TWD; j++) acc[i][j] += r * c[j];
            }
        }
        for (int i = 0; i < RF; i++)
            for (int j = 0; j < TWD; j++) out[f0 + i][d0 + j] += acc[i][j];
    }
}

inline void weight_block(const vf (*rows)[V], const vf (*cols)[V], vf (*out)[D]) {
    constexpr int FULL = F / TWF * TWF;
    for (int f = 0; f < FULL; f += TWF) weight_rows<TWF>(rows, cols, f, out);
    if constexpr (FULL < F) weight_rows<F - FULL>(rows, cols, FULL, out);
}

struct Work {  // one call's scratch (heap: wide shapes would not fit a thread's stack)
    vf X[D][V], Z[F][V], Gr[D][V], GP[F][V];
    Acc acc;
    float dec_T[D * F];  // dec transposed: the decoder GEMM broadcasts along latents
};

void block_dense(const Seed &p, const float *xT, long B, long n0, long n1, float l1_over_B, float grad_scale,
                 Work &work, Totals &t) {
    vf (*X)[V] = work.X, (*Z)[V] = work.Z, (*Gr)[V] = work.Gr, (*GP)[V] = work.GP;
    const float *dec_T = work.dec_T;
    Acc &a = work.acc;
    vi ok[V];
    vf active = vf{}, zsum = vf{};
    const bool full = load_and_encode_block(p, xT, B, n0, n1, X, ok, Z, active, zsum, nullptr);
    // residual r = dec^T z + b_dec - x (zero on lanes past the range), as one GEMM over latents
    matrix_times_block<D, F>(dec_T, F, p.b_dec, Z, Gr);
    vf e2 = vf{};
    for (int d = 0; d < D; d++) {
        vf bdec = vf{};
        for (int v = 0; v < V; v++) {
            vf r = Gr[d][v] - X[d][v];
            if (!full) r = keep_if(ok[v], r);
            e2 += r * r;
            r *= grad_scale;
            Gr[d][v] = r;
            bdec += r;
        }
        a.bdec[d] += bdec;
    }
    // gp = (dec · g + l1/B) where active
    matrix_times_block<F, D>(p.dec, D, nullptr, Gr, GP);
    const vf l1 = splat(l1_over_B);
    for (int f = 0; f < F; f++) {
        vf bias = vf{};
        for (int v = 0; v < V; v++) {
            const vf gp = keep_if(Z[f][v] > 0.0f, GP[f][v] + l1);
            GP[f][v] = gp;
            bias += gp;
        }
        a.bias[f] += bias;
    }
    weight_block(Z, Gr, a.dec);
    weight_block(GP, X, a.enc);
    t.sq += hsum(e2);
    t.active += hsum(active);
    t.zsum += hsum(zsum);
}
#else
// sparse: the encoder per block as in the dense path, then per sample only its active latents
struct Sparse {  // one chunk's sums, per latent row ([F][D] row-major)
    float enc[F * D], dec[F * D], bias[F];
    vf bdec[DV];
    void clear() { memset(this, 0, sizeof *this); }
};

struct Work {  // one call's scratch (heap: wide shapes would not fit a thread's stack)
    vf X[D][V], Z[F][V];
    vu bits[V][WORDS];
    Sparse acc;
};

void block_sparse(const Seed &p, const float *x, const float *xT, long B, long n0, long n1, float l1_over_B,
                  float grad_scale, Work &work, Totals &t) {
    vf (*X)[V] = work.X, (*Z)[V] = work.Z;
    vu (*bits)[WORDS] = work.bits;
    Sparse &c = work.acc;
    vi ok[V];
    vf active = vf{}, zsum = vf{};  // the dense path's per-lane counts: unused here
    load_and_encode_block(p, xT, B, n0, n1, X, ok, Z, active, zsum, bits);
    long active_count = 0;
    float block_zsum = 0.0f;
    const long count = n1 - n0 < BLOCK ? n1 - n0 : BLOCK;
    // per-block sums stay in registers; per-latent sums go to the chunk's rows
    vf e2 = vf{}, bdec[DV], b_dec[DV];
    for (int u = 0; u < DV; u++) {
        bdec[u] = vf{};
        b_dec[u] = load(p.b_dec + L * u);
    }
    for (long i = 0; i < count; i++) {
        const int v = (int)(i / L), l = (int)(i % L);
        int active_rows[F];
        float active_z[F];
        int n = 0;
        for (int w = 0; w < WORDS; w++) {
            for (uint32_t b = bits[v][w][l]; b; b &= b - 1) {
                const int f = w * 32 + __builtin_ctz(b);
                active_rows[n] = f * D;
                active_z[n++] = Z[f][v][l];
            }
        }
        active_count += n;
        const float *xn = x + (n0 + i) * D;
        vf r[DV], xv[DV];
        for (int u = 0; u < DV; u++) {
            xv[u] = load(xn + L * u);
            r[u] = b_dec[u] - xv[u];
        }
        for (int j = 0; j < n; j++) {
            const vf z = splat(active_z[j]);
            for (int u = 0; u < DV; u++) r[u] += z * load(p.dec + active_rows[j] + L * u);
            block_zsum += active_z[j];
        }
        for (int u = 0; u < DV; u++) {
            e2 += r[u] * r[u];
            r[u] *= grad_scale;
            bdec[u] += r[u];
        }
        for (int j = 0; j < n; j++) {
            const int row = active_rows[j];
            vf dot = vf{};
            for (int u = 0; u < DV; u++) dot += load(p.dec + row + L * u) * r[u];
            const float gp = hsum(dot) + l1_over_B;
            const vf z = splat(active_z[j]), gpv = splat(gp);
            float *dec_row = c.dec + row, *enc_row = c.enc + row;
            for (int u = 0; u < DV; u++) {
                store(dec_row + L * u, load(dec_row + L * u) + z * r[u]);
                store(enc_row + L * u, load(enc_row + L * u) + gpv * xv[u]);
            }
            c.bias[row / D] += gp;
        }
    }
    for (int u = 0; u < DV; u++) c.bdec[u] += bdec[u];
    t.sq += hsum(e2);
    t.active += (double)active_count;
    t.zsum += block_zsum;
}

void flush(const Sparse &c, int s, float *g_enc, float *g_bias, float *g_dec, float *g_bdec) {
    float *ge = g_enc + (long)s * F * D, *gd = g_dec + (long)s * F * D;
    for (int f = 0; f < F; f++) {
        for (int d = 0; d < D; d++) {
            ge[f * D + d] += c.enc[f * D + d];
            gd[f * D + d] += c.dec[f * D + d];
        }
        g_bias[(long)s * F + f] += c.bias[f];
    }
    for (int u = 0; u < DV; u++) store(g_bdec + (long)s * D + L * u, load(g_bdec + (long)s * D + L * u) + c.bdec[u]);
}
#endif
}  // namespace

extern "C" {

// Shape this library was built for (checked by the loader).
int sae_fused_shape(int *out) {
    out[0] = D; out[1] = F; out[2] = K; out[3] = SPARSE;
    return 4;
}

// Adds the gradients of samples [lo, hi) of the batch to g_* and the per-seed sums to stats.
//   x [B, D] and xT [D, B]: the batch, sample-major and feature-major; enc, dec [S, F, D];
//   bias [S, F] (effective encoder bias); b_dec [S, D]; stats [S, 3] (float64).
void sae_fused_step(int S, long B, long lo, long hi, const float *__restrict x, const float *__restrict xT,
                    const float *__restrict enc, const float *__restrict bias, const float *__restrict dec,
                    const float *__restrict b_dec, float l1_over_B, float grad_scale, float *__restrict g_enc,
                    float *__restrict g_bias, float *__restrict g_dec, float *__restrict g_bdec,
                    double *__restrict stats) {
    Work *work = static_cast<Work *>(aligned_alloc(64, (sizeof(Work) + 63) / 64 * 64));
    if (!work) return;  // the caller's stats stay zero: its agreement check rejects the kernel
    auto &acc = work->acc;
#if !SPARSE
    (void)x;
#endif
    for (int s = 0; s < S; s++) {
        const Seed p{enc + (long)s * F * D, bias + (long)s * F, dec + (long)s * F * D, b_dec + (long)s * D};
#if !SPARSE
        for (int f = 0; f < F; f++)
            for (int d = 0; d < D; d++) work->dec_T[d * F + f] = p.dec[f * D + d];
#endif
        double sq = 0.0, active = 0.0, zsum = 0.0;
        for (long c0 = lo; c0 < hi; c0 += CHUNK) {
            const long c1 = c0 + CHUNK < hi ? c0 + CHUNK : hi;
            Totals t{0.0, 0.0, 0.0};
            acc.clear();
            for (long n0 = c0; n0 < c1; n0 += BLOCK) {
                const long n1 = n0 + BLOCK < c1 ? n0 + BLOCK : c1;
#if SPARSE
                block_sparse(p, x, xT, B, n0, n1, l1_over_B, grad_scale, *work, t);
#else
                block_dense(p, xT, B, n0, n1, l1_over_B, grad_scale, *work, t);
#endif
            }
            flush(acc, s, g_enc, g_bias, g_dec, g_bdec);
            sq += t.sq; active += t.active; zsum += t.zsum;
        }
        stats[s * 3 + 0] += sq; stats[s * 3 + 1] += active; stats[s * 3 + 2] += zsum;
    }
    free(work);
}

}  // extern "C"
