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
// Two ways through a block of samples, chosen by the caller per shape:
//  * dense (SPARSE=0): 16 samples per vector ("lanes"); every product is a broadcast-FMA over lanes,
//    everything stays in L1. FLOPs as the dense GEMMs, none of the memory traffic.
//  * sparse (SPARSE=1, TopK only): the encoder and the top-k selection in lanes as above, then per
//    sample only the k active latents are decoded and back-propagated (vectors of d_in floats).
// Sums over samples accumulate per chunk of CHUNK samples and are added to the outputs at the end of
// each chunk, as the torch path accumulates per column chunk.
#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(D_IN) || !defined(WIDTH) || !defined(TOPK_K) || !defined(SPARSE)
#error "define D_IN, WIDTH, TOPK_K and SPARSE"
#endif
#if D_IN % 16 != 0
#error "D_IN must be a multiple of 16"
#endif

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef float vf_u __attribute__((vector_size(64), aligned(4)));

namespace {
constexpr int L = 16;                   // samples per vector
constexpr int D = D_IN, DV = D_IN / 16, F = WIDTH, K = TOPK_K, WORDS = (WIDTH + 31) / 32;
constexpr int G = 8;                    // lane groups per block in the dense path (128 samples)
constexpr long CHUNK = 4096;            // samples per flush of the accumulators
constexpr float TINY = 1.17549435e-38f; // smallest normal float: TopK keeps positive values only

inline vf load(const float *p) { return *(const vf_u *)p; }
inline void store(float *p, vf v) { *(vf_u *)p = v; }
inline vf splat(float a) { return vf{} + a; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline float hsum(vf v) {
    vf s = v + __builtin_shuffle(v, vi{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    s = s + __builtin_shuffle(s, vi{4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
    s = s + __builtin_shuffle(s, vi{2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
    return s[0] + s[1];
}

struct Seed {  // one seed's parameters
    const float *enc, *bias, *dec, *b_dec;
};

// x of samples n0 .. n0+15 as D lane vectors; lanes past `valid` are zero
inline void load_lanes(const float *xT, long B, long n0, int valid, vf *X) {
    if (valid == L) {
        for (int d = 0; d < D; d++) X[d] = load(xT + (long)d * B + n0);
    } else {
        for (int d = 0; d < D; d++) {
            X[d] = vf{};
            for (int l = 0; l < valid; l++) X[d][l] = xT[(long)d * B + n0 + l];
        }
    }
}

// pre-activations of 16 samples, then z and the 0/1 activity mask (zero for lanes past `valid`)
inline void encode_lanes(const Seed &p, const vf *X, int valid, vf *Z, vf *M) {
    vf xs[D];  // in registers while D is small
    for (int d = 0; d < D; d++) xs[d] = X[d];
    for (int f = 0; f < F; f++) {
        vf acc = splat(p.bias[f]);
        for (int d = 0; d < D; d++) acc += p.enc[f * D + d] * xs[d];
        Z[f] = acc;
    }
    vf lane_ok;
    for (int l = 0; l < L; l++) lane_ok[l] = l < valid ? 1.0f : 0.0f;
    vf thr = vf{};
    if (K > 0) {
        vf top[K > 0 ? K : 1];
        for (int j = 0; j < K; j++) top[j] = splat(-INFINITY);
        for (int f = 0; f < F; f++) {  // running top-k per lane (min/max insertion)
            const vf v = Z[f];
            for (int j = K - 1; j > 0; j--) top[j] = vmax(top[j], vmin(top[j - 1], v));
            top[0] = vmax(top[0], v);
        }
        thr = vmax(top[K - 1], splat(TINY));
    }
    for (int f = 0; f < F; f++) {
        const vf v = Z[f];
        vf m = K > 0 ? (v >= thr ? splat(1.0f) : vf{}) : (v > 0.0f ? splat(1.0f) : vf{});
        m *= lane_ok;
        M[f] = m;
        Z[f] = v * m;
    }
}

struct Totals {  // one chunk's per-seed sums
    double sq, active, zsum;
};

#if SPARSE == 0
// dense: G groups of 16 samples per block
struct Acc {  // one chunk's gradient sums in the dense path, per lane (reduced at the flush)
    vf enc[F][D], dec[F][D], bias[F], bdec[D];
    void clear() { memset(this, 0, sizeof *this); }
};

void flush_dense(const Acc &a, int s, float *g_enc, float *g_bias, float *g_dec, float *g_bdec) {
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

// out[f][d] += Σ_g rows[g][f] · cols[g][d] (per lane) over `groups` lane groups
inline void weight_tiles(const vf (*rows)[F], const vf (*cols)[D], int groups, vf (*out)[D]) {
    static_assert(D % 4 == 0, "");
    int f = 0;
    for (; f + 4 <= F; f += 4) {
        for (int d = 0; d < D; d += 4) {
            vf acc[4][4] = {};
            for (int g = 0; g < groups; g++) {
                const vf r0 = rows[g][f], r1 = rows[g][f + 1], r2 = rows[g][f + 2], r3 = rows[g][f + 3];
                for (int j = 0; j < 4; j++) {
                    const vf c = cols[g][d + j];
                    acc[0][j] += r0 * c; acc[1][j] += r1 * c; acc[2][j] += r2 * c; acc[3][j] += r3 * c;
                }
            }
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) out[f + i][d + j] += acc[i][j];
        }
    }
    for (; f < F; f++)
        for (int d = 0; d < D; d++) {
            vf acc = vf{};
            for (int g = 0; g < groups; g++) acc += rows[g][f] * cols[g][d];
            out[f][d] += acc;
        }
}

void block_dense(const Seed &p, const float *xT, long B, long n0, long n1, float l1_over_B,
                 float grad_scale, Acc &a, Totals &t) {
    static thread_local vf X[G][D], Z[G][F], M[G][F], Gr[G][D], GP[G][F];
    const int groups = (int)((n1 - n0 + L - 1) / L);
    for (int g = 0; g < groups; g++) {
        const long s0 = n0 + (long)g * L;
        const int valid = (int)(n1 - s0 < L ? n1 - s0 : L);
        load_lanes(xT, B, s0, valid, X[g]);
        encode_lanes(p, X[g], valid, Z[g], M[g]);
        vf lane_ok;
        for (int l = 0; l < L; l++) lane_ok[l] = l < valid ? 1.0f : 0.0f;
        vf r[D];
        for (int d = 0; d < D; d++) r[d] = (splat(p.b_dec[d]) - X[g][d]) * lane_ok;
        for (int f = 0; f < F; f++) {
            const vf z = Z[g][f];
            for (int d = 0; d < D; d++) r[d] += p.dec[f * D + d] * z;
        }
        vf e2 = vf{};
        for (int d = 0; d < D; d++) {
            e2 += r[d] * r[d];
            r[d] *= grad_scale;
            Gr[g][d] = r[d];
            a.bdec[d] += r[d];
        }
        t.sq += hsum(e2);
        int f = 0;
        for (; f + 4 <= F; f += 4) {  // four independent FMA chains
            vf g0 = splat(l1_over_B), g1 = g0, g2 = g0, g3 = g0;
            for (int d = 0; d < D; d++) {
                g0 += p.dec[(f + 0) * D + d] * r[d];
                g1 += p.dec[(f + 1) * D + d] * r[d];
                g2 += p.dec[(f + 2) * D + d] * r[d];
                g3 += p.dec[(f + 3) * D + d] * r[d];
            }
            GP[g][f + 0] = g0 * M[g][f + 0];
            GP[g][f + 1] = g1 * M[g][f + 1];
            GP[g][f + 2] = g2 * M[g][f + 2];
            GP[g][f + 3] = g3 * M[g][f + 3];
        }
        for (; f < F; f++) {
            vf acc = splat(l1_over_B);
            for (int d = 0; d < D; d++) acc += p.dec[f * D + d] * r[d];
            GP[g][f] = acc * M[g][f];
        }
        vf act = vf{}, zs = vf{};
        for (f = 0; f < F; f++) {
            a.bias[f] += GP[g][f];
            act += M[g][f];
            zs += Z[g][f];
        }
        t.active += hsum(act);
        t.zsum += hsum(zs);
    }
    // weight gradients: sums over the block's samples, per lane, in 4 × 4 register tiles (latents ×
    // inputs), one product at a time: 8 vector loads per 16 FMAs
    weight_tiles(Z, Gr, groups, a.dec);
    weight_tiles(GP, X, groups, a.enc);
}
#else
// sparse (TopK): per sample, only the active latents
struct Sparse {  // one chunk's sums, per latent row
    vf enc[F][DV], dec[F][DV], bdec[DV];
    float bias[F];
    void clear() { memset(this, 0, sizeof *this); }
};

void block_sparse(const Seed &p, const float *x, const float *xT, long B, long n0, int valid, float l1_over_B,
                  float grad_scale, Sparse &c, Totals &a) {
    static thread_local vf X[D], Z[F], M[F];
    static thread_local vu bits[WORDS];
    load_lanes(xT, B, n0, valid, X);
    encode_lanes(p, X, valid, Z, M);
    for (int w = 0; w < WORDS; w++) bits[w] = vu{};
    for (int f = 0; f < F; f++) bits[f >> 5] |= (vu)(M[f] > 0.0f) & (1u << (f & 31));
    for (int l = 0; l < valid; l++) {
        const float *xn = x + (n0 + l) * D;
        vf r[DV], xv[DV];
        for (int v = 0; v < DV; v++) {
            xv[v] = load(xn + 16 * v);
            r[v] = load(p.b_dec + 16 * v) - xv[v];
        }
        int count = 0;
        for (int w = 0; w < WORDS; w++) {
            uint32_t b = bits[w][l];
            count += __builtin_popcount(b);
            while (b) {
                const int f = w * 32 + __builtin_ctz(b);
                b &= b - 1;
                const float z = Z[f][l];
                for (int v = 0; v < DV; v++) r[v] += z * load(p.dec + f * D + 16 * v);
            }
        }
        vf e2 = vf{};
        for (int v = 0; v < DV; v++) {
            e2 += r[v] * r[v];
            r[v] *= grad_scale;
            c.bdec[v] += r[v];
        }
        a.sq += hsum(e2);
        a.active += count;
        for (int w = 0; w < WORDS; w++) {
            uint32_t b = bits[w][l];
            while (b) {
                const int f = w * 32 + __builtin_ctz(b);
                b &= b - 1;
                const float z = Z[f][l];
                vf dot = vf{};
                for (int v = 0; v < DV; v++) dot += load(p.dec + f * D + 16 * v) * r[v];
                const float gp = hsum(dot) + l1_over_B;
                for (int v = 0; v < DV; v++) {
                    c.dec[f][v] += z * r[v];
                    c.enc[f][v] += gp * xv[v];
                }
                c.bias[f] += gp;
                a.zsum += z;
            }
        }
    }
}

void flush_rows(const Sparse &c, int s, float *g_enc, float *g_bias, float *g_dec, float *g_bdec) {
    float *ge = g_enc + (long)s * F * D, *gd = g_dec + (long)s * F * D;
    for (int f = 0; f < F; f++) {
        for (int v = 0; v < DV; v++) {
            store(ge + f * D + 16 * v, load(ge + f * D + 16 * v) + c.enc[f][v]);
            store(gd + f * D + 16 * v, load(gd + f * D + 16 * v) + c.dec[f][v]);
        }
        g_bias[(long)s * F + f] += c.bias[f];
    }
    for (int v = 0; v < DV; v++) store(g_bdec + (long)s * D + 16 * v, load(g_bdec + (long)s * D + 16 * v) + c.bdec[v]);
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
#if SPARSE
    static thread_local Sparse rows;
#else
    static thread_local Acc lanes;
    (void)x;
#endif
    for (int s = 0; s < S; s++) {
        const Seed p{enc + (long)s * F * D, bias + (long)s * F, dec + (long)s * F * D, b_dec + (long)s * D};
        double sq = 0.0, active = 0.0, zsum = 0.0;
        for (long c0 = lo; c0 < hi; c0 += CHUNK) {
            const long c1 = c0 + CHUNK < hi ? c0 + CHUNK : hi;
            Totals t{0.0, 0.0, 0.0};
#if SPARSE
            rows.clear();
            for (long n0 = c0; n0 < c1; n0 += L)
                block_sparse(p, x, xT, B, n0, (int)(c1 - n0 < L ? c1 - n0 : L), l1_over_B, grad_scale, rows, t);
            flush_rows(rows, s, g_enc, g_bias, g_dec, g_bdec);
#else
            lanes.clear();
            for (long n0 = c0; n0 < c1; n0 += (long)G * L)
                block_dense(p, xT, B, n0, n0 + (long)G * L < c1 ? n0 + (long)G * L : c1, l1_over_B, grad_scale, lanes, t);
            flush_dense(lanes, s, g_enc, g_bias, g_dec, g_bdec);
#endif
            sq += t.sq; active += t.active; zsum += t.zsum;
        }
        stats[s * 3 + 0] += sq; stats[s * 3 + 1] += active; stats[s * 3 + 2] += zsum;
    }
}

}  // extern "C"
