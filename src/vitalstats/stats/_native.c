/* Fused statistics kernels for the CPU, compiled at first use by vitalstats.stats.native.
 *
 * Raw summary of n values x (any order; contiguous storage):
 *     K = float(sum(x) / n)                   the shift (compute dtype: float, double for f64)
 *     r = sum(x - K),  q = sum((x - K)^2)     one fused second pass, with
 *     min, max (NaN if any NaN), NaN/Inf count
 * Adam sums of moments m, v (float32) and eps e, in one pass (and sum theta^2 in another):
 *     sum |m|,  sum sqrt(v),  sum (m / (sqrt(v) + e))^2
 *
 * Accuracy: sums run in LANES independent accumulators (so the compiler vectorises them
 * without reassociating anything: no -ffast-math) that are folded into a double every
 * BLOCK values; a float32 accumulator therefore adds at most BLOCK / LANES = 64 terms
 * before the fold. NaN and Inf propagate as IEEE arithmetic says (no finite-math flags).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 32
#define BLOCK 2048

enum { F32 = 0, F64 = 1, BF16 = 2 };
enum { EXTREMES = 1, COUNT_NONFINITE = 2 };

static inline float bf16_value(const uint16_t *p, int64_t i) {
    uint32_t bits = (uint32_t)p[i] << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#define LOAD_F32(p, i) (((const float *)(p))[i])
#define LOAD_F64(p, i) (((const double *)(p))[i])
#define LOAD_BF16(p, i) bf16_value((const uint16_t *)(p), (i))

/* sum over x in blocks: LANES accumulators of type ACC per block, folded into a double */
#define DEFINE_SUM(NAME, ACC, LOAD)                                                         \
    static double NAME(const void *x, int64_t n) {                                          \
        double total = 0.0;                                                                 \
        for (int64_t start = 0; start < n; start += BLOCK) {                                \
            int64_t end = start + BLOCK < n ? start + BLOCK : n, i = start;                 \
            ACC acc[LANES] = {0};                                                           \
            for (; i + LANES <= end; i += LANES)                                            \
                for (int j = 0; j < LANES; j++) acc[j] += LOAD(x, i + j);                   \
            double block = 0.0;                                                             \
            for (; i < end; i++) block += LOAD(x, i);                                       \
            for (int j = 0; j < LANES; j++) block += acc[j];                                \
            total += block;                                                                 \
        }                                                                                   \
        return total;                                                                       \
    }

/* the centred pass: out[0..3] = r, q, min, max (min/max only with `extremes`) */
#define DEFINE_CENTRED(NAME, ACC, LOAD)                                                     \
    static void NAME(const void *x, int64_t n, ACC k, int extremes, double *out) {          \
        double r = 0.0, q = 0.0;                                                            \
        ACC low = INFINITY, high = -INFINITY;                                               \
        for (int64_t start = 0; start < n; start += BLOCK) {                                \
            int64_t end = start + BLOCK < n ? start + BLOCK : n, i = start;                 \
            ACC rs[LANES] = {0}, qs[LANES] = {0}, lows[LANES], highs[LANES];                \
            for (int j = 0; j < LANES; j++) lows[j] = INFINITY, highs[j] = -INFINITY;       \
            if (extremes)                                                                   \
                for (; i + LANES <= end; i += LANES)                                        \
                    for (int j = 0; j < LANES; j++) {                                       \
                        ACC v = LOAD(x, i + j), d = v - k;                                  \
                        rs[j] += d;                                                         \
                        qs[j] += d * d;                                                     \
                        lows[j] = v < lows[j] ? v : lows[j];                                \
                        highs[j] = v > highs[j] ? v : highs[j];                             \
                    }                                                                       \
            else                                                                            \
                for (; i + LANES <= end; i += LANES)                                        \
                    for (int j = 0; j < LANES; j++) {                                       \
                        ACC d = LOAD(x, i + j) - k;                                         \
                        rs[j] += d;                                                         \
                        qs[j] += d * d;                                                     \
                    }                                                                       \
            for (; i < end; i++) {                                                          \
                ACC v = LOAD(x, i), d = v - k;                                              \
                r += d;                                                                     \
                q += (double)d * d;                                                         \
                low = v < low ? v : low;                                                    \
                high = v > high ? v : high;                                                 \
            }                                                                               \
            for (int j = 0; j < LANES; j++) {                                               \
                r += rs[j];                                                                 \
                q += qs[j];                                                                 \
                low = lows[j] < low ? lows[j] : low;                                        \
                high = highs[j] > high ? highs[j] : high;                                   \
            }                                                                               \
        }                                                                                   \
        out[0] = r, out[1] = q, out[2] = low, out[3] = high;                                \
    }

/* NaN and NaN/Inf counts: a second look, taken only when the sums came out non-finite */
#define DEFINE_NONFINITE(NAME, LOAD)                                                        \
    static void NAME(const void *x, int64_t n, double *nan, double *bad) {                  \
        int64_t nans = 0, bads = 0;                                                         \
        for (int64_t i = 0; i < n; i++) {                                                   \
            double v = LOAD(x, i);                                                          \
            nans += v != v;                                                                 \
            bads += !(v - v == 0);                                                          \
        }                                                                                   \
        *nan = (double)nans, *bad = (double)bads;                                           \
    }

DEFINE_SUM(sum_f32, float, LOAD_F32)
DEFINE_SUM(sum_f64, double, LOAD_F64)
DEFINE_SUM(sum_bf16, float, LOAD_BF16)
DEFINE_CENTRED(centred_f32, float, LOAD_F32)
DEFINE_CENTRED(centred_f64, double, LOAD_F64)
DEFINE_CENTRED(centred_bf16, float, LOAD_BF16)
DEFINE_NONFINITE(nonfinite_f32, LOAD_F32)
DEFINE_NONFINITE(nonfinite_f64, LOAD_F64)
DEFINE_NONFINITE(nonfinite_bf16, LOAD_BF16)

/* One tensor's centred pass about a proposed shift `hint`, kept only if it was close to
 * the mean: (mean - K)^2 <= var, i.e. r^2 <= n M2, so M2 = q - r^2 / n loses under a third
 * of a digit. Returns 0 (and the caller takes the two-pass route) otherwise. */
#define TRY_HINT(CENTRED, TYPE)                                                             \
    {                                                                                       \
        k = (TYPE)hint;                                                                     \
        CENTRED(x, n, (TYPE)k, extremes, c);                                                \
        double m2 = c[1] - c[0] * c[0] / (double)n;                                         \
        accepted = isfinite(c[0]) && isfinite(c[1]) && c[0] * c[0] <= (double)n * m2;       \
    }

/* out: count rows of [n, K, r, q, min, max, nonfinite] (vitalstats' RAW_FIELDS). `hints`
 * (NULL, or one per tensor, NaN for none) proposes each shift K, e.g. the mean this tensor
 * had last time: one pass instead of two where it is close (see TRY_HINT); on return it
 * holds each tensor's mean, K + r / n, the next call's hint. */
void vs_raw_summaries(int64_t count, const void *const *data, const int64_t *numel,
                      const int32_t *dtype, int32_t flags, double *hints, double *out) {
    const int extremes = flags & EXTREMES;
    for (int64_t t = 0; t < count; t++) {
        double *row = out + 7 * t, c[4], nan = 0.0, bad = 0.0, k = 0.0;
        double hint = hints != NULL ? hints[t] : NAN;
        const void *x = data[t];
        int64_t n = numel[t];
        int accepted = 0;
        if (n == 0) {
            row[0] = row[1] = row[2] = row[3] = row[6] = 0.0;
            row[4] = INFINITY, row[5] = -INFINITY;
            continue;
        }
        if (isfinite(hint)) {
            if (dtype[t] == F64)
                TRY_HINT(centred_f64, double)
            else if (dtype[t] == F32)
                TRY_HINT(centred_f32, float)
            else
                TRY_HINT(centred_bf16, float)
        }
        if (!accepted) {
            if (dtype[t] == F64) {
                k = sum_f64(x, n) / (double)n;
                centred_f64(x, n, k, extremes, c);
            } else if (dtype[t] == F32) {
                k = (float)(sum_f32(x, n) / (double)n);
                centred_f32(x, n, (float)k, extremes, c);
            } else {
                k = (float)(sum_bf16(x, n) / (double)n);
                centred_bf16(x, n, (float)k, extremes, c);
            }
        }
        if (!isfinite(c[0]) || !isfinite(c[1])) {  /* a NaN/Inf value (or a float overflow) */
            if (dtype[t] == F64)
                nonfinite_f64(x, n, &nan, &bad);
            else if (dtype[t] == F32)
                nonfinite_f32(x, n, &nan, &bad);
            else
                nonfinite_bf16(x, n, &nan, &bad);
        }
        row[0] = (double)n, row[1] = k, row[2] = c[0], row[3] = c[1];
        row[4] = !extremes ? INFINITY : nan > 0 ? NAN : c[2];
        row[5] = !extremes ? -INFINITY : nan > 0 ? NAN : c[3];
        row[6] = (flags & COUNT_NONFINITE) ? bad : 0.0;
        if (hints != NULL) hints[t] = k + c[0] / (double)n;
    }
}

/* out: count rows of [sum |m|, sum sqrt(v), sum (m / (sqrt(v) + eps))^2, sum theta^2]
 * for float32 m, v, theta (theta may be NULL: its sum is then NaN) */
void vs_adam_sums(int64_t count, const float *const *ms, const float *const *vs,
                  const float *const *thetas, const int64_t *numel, const float *eps,
                  double *out) {
    for (int64_t t = 0; t < count; t++) {
        const float *m = ms[t], *v = vs[t], *theta = thetas[t];
        const float e = eps[t];
        int64_t n = numel[t];
        double a = 0.0, s = 0.0, q = 0.0;
        for (int64_t start = 0; start < n; start += BLOCK) {
            int64_t end = start + BLOCK < n ? start + BLOCK : n, i = start;
            float as[LANES] = {0}, ss[LANES] = {0}, qs[LANES] = {0};
            for (; i + LANES <= end; i += LANES)
                for (int j = 0; j < LANES; j++) {
                    float root = sqrtf(v[i + j]), step = m[i + j] / (root + e);
                    as[j] += fabsf(m[i + j]);
                    ss[j] += root;
                    qs[j] += step * step;
                }
            for (; i < end; i++) {
                float root = sqrtf(v[i]), step = m[i] / (root + e);
                a += fabsf(m[i]);
                s += root;
                q += (double)step * step;
            }
            for (int j = 0; j < LANES; j++) a += as[j], s += ss[j], q += qs[j];
        }
        out[4 * t] = a, out[4 * t + 1] = s, out[4 * t + 2] = q;
        if (theta == NULL) {
            out[4 * t + 3] = NAN;
            continue;
        }
        double p = 0.0;
        for (int64_t start = 0; start < n; start += BLOCK) {
            int64_t end = start + BLOCK < n ? start + BLOCK : n, i = start;
            float ps[LANES] = {0};
            for (; i + LANES <= end; i += LANES)
                for (int j = 0; j < LANES; j++) ps[j] += theta[i + j] * theta[i + j];
            for (; i < end; i++) p += (double)theta[i] * theta[i];
            for (int j = 0; j < LANES; j++) p += ps[j];
        }
        out[4 * t + 3] = p;
    }
}

/* out: count rows of `bins` counts of a sample of tensor t: layout[3t..3t+2] = run, runs,
 * step: `runs` runs of `run` consecutive values, one starting every `step` values; binned
 * in equal bins over [low, high], in float32 as vitalstats.monitor.probes.histograms
 * computes them: values outside the range and +-Inf in the end bins, NaN left out;
 * `log10_abs` bins log10 |value| (zero: -Inf, the first bin). */
void vs_histograms(int64_t count, const void *const *data, const int64_t *numel,
                   const int32_t *dtype, const int64_t *layout, int32_t bins, double low,
                   double high, int32_t log10_abs, float *out) {
    const float lo = (float)low, hi = (float)high, scale = (float)(bins / (high - low));
    /* log10 |v| bins: |v| >= 10^(lo + b / scale) starts bin b, so count the edges below |v|
     * (float bit patterns of non-negative values order as the values: integer compares) */
    uint32_t edges[256];
    const int32_t inner = bins - 1 < 256 ? bins - 1 : 0;
    for (int32_t b = 0; b < inner; b++) {
        float edge = (float)pow(10.0, (double)lo + (b + 1) / (double)scale);
        memcpy(&edges[b], &edge, sizeof edge);
    }
    int32_t top = 1;
    while (top * 2 <= inner) top *= 2;
    for (int64_t t = 0; t < count; t++) {
        float *row = out + (int64_t)bins * t;
        for (int32_t b = 0; b < bins; b++) row[b] = 0.0f;
        const int64_t run = layout[3 * t], runs = layout[3 * t + 1], step = layout[3 * t + 2];
        for (int64_t j = 0; j < runs; j++) {
            const int64_t first = j * step, last = first + run < numel[t] ? first + run : numel[t];
            for (int64_t i = first; i < last; i++) {
                float v = dtype[t] == F32   ? LOAD_F32(data[t], i)
                          : dtype[t] == F64 ? (float)LOAD_F64(data[t], i)
                                            : LOAD_BF16(data[t], i);
                if (v != v) continue;
                int32_t b;
                if (log10_abs && inner > 0) {
                    uint32_t bits;
                    v = fabsf(v);
                    memcpy(&bits, &v, sizeof bits);
                    b = 0; /* edges at or below |v|: a branchless binary search */
                    for (int32_t half = top; half > 0; half >>= 1)
                        b += (b + half <= inner && edges[b + half - 1] <= bits) ? half : 0;
                } else {
                    if (log10_abs) v = log10f(fabsf(v));
                    v = v < lo ? lo : v > hi ? hi : v;
                    float position = floorf((v - lo) * scale);
                    b = position < 0 ? 0 : position > bins - 1 ? bins - 1 : (int32_t)position;
                }
                row[b] += 1.0f;
            }
        }
    }
}

/* Per-feature raw summaries of x viewed as [outer][features][inner] (dense), F = features:
 * out rows 0..F-1 hold each feature's [n, K, r, q, min, max, nonfinite] over its
 * outer * inner values, row F the whole tensor's, merged exactly (Chan et al.) and written
 * as [n, mean, 0, M2, min, max, nonfinite]. Two passes (the shifts K = feature means, then
 * the centred sums), vectorised across features when inner == 1, and by the whole-tensor
 * kernels on each run of `inner` values otherwise. Returns 0, or -1 when out of memory. */
#define DEFINE_FEATURES(NAME, ACC, LOAD, AT, SUM, CENTRED)                                  \
    static int NAME(const void *x, int64_t outer, int64_t F, int64_t inner, double *out) {  \
        double *sum = calloc((size_t)F * 7, sizeof(double));                                \
        ACC *part = calloc((size_t)F * 5, sizeof(ACC));                                     \
        if (sum == NULL || part == NULL) {                                                  \
            free(sum), free(part);                                                          \
            return -1;                                                                      \
        }                                                                                   \
        double *r = sum + F, *q = sum + 2 * F, *lo = sum + 3 * F, *hi = sum + 4 * F;        \
        double *nan = sum + 5 * F, *bad = sum + 6 * F;                                      \
        ACC *k = part, *pr = part + F, *pq = part + 2 * F, *plo = part + 3 * F,             \
            *phi = part + 4 * F;                                                            \
        const int64_t fold = inner == 1 ? BLOCK / LANES : 1; /* rows per float partial */   \
        for (int64_t f = 0; f < F; f++) lo[f] = INFINITY, hi[f] = -INFINITY;                \
        /* pass 1: per-feature sums */                                                      \
        for (int64_t o = 0; o < outer; o++) {                                               \
            const int64_t base = o * F * inner;                                             \
            if (inner == 1) {                                                               \
                for (int64_t f = 0; f < F; f++) pr[f] += LOAD(x, base + f);                 \
                if ((o + 1) % fold == 0 || o + 1 == outer)                                  \
                    for (int64_t f = 0; f < F; f++) sum[f] += pr[f], pr[f] = 0;             \
            } else {                                                                        \
                for (int64_t f = 0; f < F; f++)                                             \
                    sum[f] += SUM(AT(x, base + f * inner), inner);                          \
            }                                                                               \
        }                                                                                   \
        const double n = (double)(outer * inner);                                           \
        for (int64_t f = 0; f < F; f++) k[f] = (ACC)(sum[f] / n);                           \
        for (int64_t f = 0; f < F; f++) plo[f] = INFINITY, phi[f] = -INFINITY, pr[f] = 0;   \
        /* pass 2: centred sums, extremes */                                                \
        for (int64_t o = 0; o < outer; o++) {                                               \
            const int64_t base = o * F * inner;                                             \
            if (inner == 1) {                                                               \
                for (int64_t f = 0; f < F; f++) {                                           \
                    ACC v = LOAD(x, base + f), d = v - k[f];                                \
                    pr[f] += d;                                                             \
                    pq[f] += d * d;                                                         \
                    plo[f] = v < plo[f] ? v : plo[f];                                       \
                    phi[f] = v > phi[f] ? v : phi[f];                                       \
                }                                                                           \
                if ((o + 1) % fold == 0 || o + 1 == outer)                                  \
                    for (int64_t f = 0; f < F; f++) r[f] += pr[f], q[f] += pq[f],           \
                                                    pr[f] = 0, pq[f] = 0;                   \
            } else {                                                                        \
                for (int64_t f = 0; f < F; f++) {                                           \
                    double c[4];                                                            \
                    CENTRED(AT(x, base + f * inner), inner, k[f], 1, c);                    \
                    r[f] += c[0], q[f] += c[1];                                             \
                    plo[f] = c[2] < plo[f] ? (ACC)c[2] : plo[f];                            \
                    phi[f] = c[3] > phi[f] ? (ACC)c[3] : phi[f];                            \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        int any_bad = 0;                                                                    \
        for (int64_t f = 0; f < F; f++) {                                                   \
            lo[f] = plo[f], hi[f] = phi[f];                                                 \
            any_bad |= !isfinite(r[f]) || !isfinite(q[f]);                                  \
        }                                                                                   \
        if (any_bad) /* NaN/Inf somewhere: count them per feature */                        \
            for (int64_t o = 0; o < outer; o++)                                             \
                for (int64_t f = 0; f < F; f++)                                             \
                    for (int64_t i = 0; i < inner; i++) {                                   \
                        double v = LOAD(x, (o * F + f) * inner + i);                        \
                        nan[f] += v != v;                                                   \
                        bad[f] += !(v - v == 0);                                            \
                    }                                                                       \
        double total = 0.0, mean = 0.0, m2 = 0.0, low = INFINITY, high = -INFINITY;         \
        double nans = 0.0, bads = 0.0;                                                      \
        for (int64_t f = 0; f < F; f++) {                                                   \
            double *row = out + 7 * f;                                                      \
            row[0] = n, row[1] = k[f], row[2] = r[f], row[3] = q[f];                        \
            row[4] = nan[f] > 0 ? NAN : lo[f];                                              \
            row[5] = nan[f] > 0 ? NAN : hi[f];                                              \
            row[6] = bad[f];                                                                \
            /* Chan's merge of the feature into the running total */                        \
            double fm = k[f] + r[f] / n, fm2 = q[f] - r[f] * r[f] / n;                      \
            double merged = total + n, delta = fm - mean;                                   \
            mean += delta * n / merged;                                                     \
            m2 += (fm2 > 0 ? fm2 : 0) + delta * delta * total * n / merged;                 \
            total = merged;                                                                 \
            low = row[4] < low || row[4] != row[4] ? row[4] : low;                          \
            high = row[5] > high || row[5] != row[5] ? row[5] : high;                       \
            nans += nan[f], bads += bad[f];                                                 \
        }                                                                                   \
        double *row = out + 7 * F;                                                          \
        row[0] = total, row[1] = mean, row[2] = 0.0, row[3] = m2;                           \
        row[4] = nans > 0 ? NAN : low, row[5] = nans > 0 ? NAN : high, row[6] = bads;       \
        free(sum), free(part);                                                              \
        return 0;                                                                           \
    }

#define AT_F32(p, i) ((const void *)((const float *)(p) + (i)))
#define AT_F64(p, i) ((const void *)((const double *)(p) + (i)))
#define AT_BF16(p, i) ((const void *)((const uint16_t *)(p) + (i)))
DEFINE_FEATURES(features_f32, float, LOAD_F32, AT_F32, sum_f32, centred_f32)
DEFINE_FEATURES(features_f64, double, LOAD_F64, AT_F64, sum_f64, centred_f64)
DEFINE_FEATURES(features_bf16, float, LOAD_BF16, AT_BF16, sum_bf16, centred_bf16)

int vs_feature_summaries(const void *x, int32_t dtype, int64_t outer, int64_t features,
                         int64_t inner, double *out) {
    if (dtype == F64) return features_f64(x, outer, features, inner, out);
    if (dtype == F32) return features_f32(x, outer, features, inner, out);
    return features_bf16(x, outer, features, inner, out);
}

/* Raw summaries (no extremes, no NaN/Inf count) of float32 parameter-sized tensors in the
 * monitor's two fused forms. `minus` != NULL: of a - minus elementwise (an optimiser's
 * update, w_before - w_after, without writing it out), and into partner_sq[t] (if not NULL)
 * sum(minus^2), the new weights' squared norm, in the same pass; `copy` != NULL: of a,
 * copying a into copy[t] during the first pass (the weight snapshot taken with the weight
 * summary). `hints` as in vs_raw_summaries (required here, NaN for none). */
static void pass_f32(const float *a, const float *minus, float *copy, int64_t n, float k,
                     double *r_out, double *q_out, double *partner_sq) {
    double r = 0.0, q = 0.0, p = 0.0;
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t end = start + BLOCK < n ? start + BLOCK : n, i = start;
        float rs[LANES] = {0}, qs[LANES] = {0}, ps[LANES] = {0};
        if (minus != NULL && partner_sq != NULL)
            for (; i + LANES <= end; i += LANES)
                for (int j = 0; j < LANES; j++) {
                    float b = minus[i + j], d = (a[i + j] - b) - k;
                    rs[j] += d, qs[j] += d * d, ps[j] += b * b;
                }
        else if (minus != NULL)
            for (; i + LANES <= end; i += LANES)
                for (int j = 0; j < LANES; j++) {
                    float d = (a[i + j] - minus[i + j]) - k;
                    rs[j] += d, qs[j] += d * d;
                }
        else if (copy != NULL)
            for (; i + LANES <= end; i += LANES)
                for (int j = 0; j < LANES; j++) {
                    float v = a[i + j], d = v - k;
                    copy[i + j] = v;
                    rs[j] += d, qs[j] += d * d;
                }
        else
            for (; i + LANES <= end; i += LANES)
                for (int j = 0; j < LANES; j++) {
                    float d = a[i + j] - k;
                    rs[j] += d, qs[j] += d * d;
                }
        for (; i < end; i++) {
            float v = minus != NULL ? a[i] - minus[i] : a[i], d = v - k;
            if (copy != NULL) copy[i] = a[i];
            if (minus != NULL) p += (double)minus[i] * minus[i];
            r += d, q += (double)d * d;
        }
        for (int j = 0; j < LANES; j++) r += rs[j], q += qs[j], p += ps[j];
    }
    *r_out = r, *q_out = q;
    if (partner_sq != NULL) *partner_sq = p;
}

void vs_fused_summaries(int64_t count, const float *const *a, const float *const *minus,
                        float *const *copy, const int64_t *numel, double *hints, double *out,
                        double *partner_sq) {
    for (int64_t t = 0; t < count; t++) {
        double *row = out + 7 * t, r = 0.0, q = 0.0, hint = hints[t];
        double *psq = minus != NULL && partner_sq != NULL ? partner_sq + t : NULL;
        const float *b = minus != NULL ? minus[t] : NULL;
        float *c = copy != NULL ? copy[t] : NULL;
        int64_t n = numel[t];
        float k = 0.0f;
        int accepted = 0;
        if (psq != NULL) *psq = 0.0;
        if (n > 0 && isfinite(hint)) {
            k = (float)hint;
            pass_f32(a[t], b, c, n, k, &r, &q, psq);
            c = NULL, psq = NULL; /* copied, summed */
            double m2 = q - r * r / (double)n;
            accepted = isfinite(r) && isfinite(q) && r * r <= (double)n * m2;
        }
        if (n > 0 && !accepted) {
            double total = 0.0;
            for (int64_t start = 0; start < n; start += BLOCK) {
                int64_t end = start + BLOCK < n ? start + BLOCK : n, i = start;
                float acc[LANES] = {0};
                double block = 0.0;
                if (b != NULL)
                    for (; i + LANES <= end; i += LANES)
                        for (int j = 0; j < LANES; j++) acc[j] += a[t][i + j] - b[i + j];
                else
                    for (; i + LANES <= end; i += LANES)
                        for (int j = 0; j < LANES; j++) acc[j] += a[t][i + j];
                for (; i < end; i++) block += b != NULL ? a[t][i] - b[i] : a[t][i];
                for (int j = 0; j < LANES; j++) block += acc[j];
                total += block;
            }
            k = (float)(total / (double)n);
            pass_f32(a[t], b, c, n, k, &r, &q, psq);
        }
        row[0] = (double)n, row[1] = n > 0 ? k : 0.0, row[2] = r, row[3] = q;
        row[4] = INFINITY, row[5] = -INFINITY, row[6] = 0.0;
        if (n > 0) hints[t] = k + r / (double)n;
    }
}

/* ---- BatchNorm over rows (vitalstats.nn: float32 2-D and channels-last input) -----------
 * x is (rows, C) row-major: an (N, C) input, or channels-last (N, *spatial, C). Per channel
 * c, over its n = rows values, in double: the shift K = x[0, c], s = sum(x - K) and
 * q = sum((x - K)^2). Their rounding error in M2 is at most about n * 2^-53 * (1 + R),
 * R = (mean - K)^2 / var; where some channel's R exceeds 2^23 / n (that bound would pass
 * 1e-9, a poor shift) a second pass sums about the mean instead, so the statistics are
 * exact to float32 either way. mean = K + s / n, M2 = q - s^2 / n, var = M2 / n,
 * unbiased = M2 / (n - 1), invstd = 1 / sqrt(var + eps); then, in float32,
 * y = (x - m) * a + t with m = float(mean), a = invstd * w and t = b - (mean - m) * a
 * (w, b may be NULL): x - m is exact near the mean, so y keeps float32 accuracy even where
 * |mean| >> std (torch's CPU kernel forms x * a + (b - mean * a), which cancels there). */
/* s[c] += sum_r (x[r, c] - k[c]),  q[c] += sum_r (x[r, c] - k[c])^2, row by row (the C
 * accumulators stay in L1; narrow C streams memory once, where column blocks would not) */
static void shifted_column_sums(const float *restrict x, int64_t rows, int64_t C,
                                const double *restrict k, double *restrict s,
                                double *restrict q) {
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict row = x + r * C;
        for (int64_t c = 0; c < C; c++) {
            double d = (double)row[c] - k[c];
            s[c] += d, q[c] += d * d;
        }
    }
}

/* g[c] += sum_r dy[r, c],  h[c] += sum_r dy[r, c] * (x[r, c] - mean[c]) */
static void gradient_column_sums(const float *restrict dy, const float *restrict x,
                                 int64_t rows, int64_t C, const float *restrict mean,
                                 double *restrict g, double *restrict h) {
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict grad = dy + r * C, *restrict row = x + r * C;
        for (int64_t c = 0; c < C; c++) {
            double d = (double)grad[c];
            g[c] += d, h[c] += d * ((double)row[c] - (double)mean[c]);
        }
    }
}

/* stats: mean, var, unbiased, invstd, C floats each. Returns 0, or -1 when out of memory. */
int vs_batch_norm_rows_forward(const float *x, int64_t rows, int64_t C, const float *w,
                               const float *b, double eps, float *y, float *mean_out,
                               float *var_out, float *unbiased_out, float *invstd_out) {
    double *k = malloc(3 * (size_t)C * sizeof(double));
    float *coef = malloc(2 * (size_t)C * sizeof(float));
    if (k == NULL || coef == NULL) {
        free(k), free(coef);
        return -1;
    }
    double *s = k + C, *q = k + 2 * C, n = (double)rows;
    float *a = coef, *t = coef + C;
    float *m = mean_out;
    for (int64_t c = 0; c < C; c++) k[c] = x[c], s[c] = 0.0, q[c] = 0.0;
    shifted_column_sums(x + C, rows - 1, C, k, s, q); /* row 0 would add zeros */
    int poor = 0;
    const double limit = n < 8388608.0 ? 8388608.0 / n : 1.0; /* R above: 2^23 / n, >= 1 */
    for (int64_t c = 0; c < C; c++) /* (mean - K)^2 = s^2 / n^2 > limit * M2 / n */
        poor |= s[c] * s[c] > limit * n * (q[c] - s[c] * s[c] / n);
    if (poor) {
        for (int64_t c = 0; c < C; c++) k[c] += s[c] / n, s[c] = 0.0, q[c] = 0.0;
        shifted_column_sums(x, rows, C, k, s, q);
    }
    for (int64_t c = 0; c < C; c++) {
        double mean = k[c] + s[c] / n, m2 = q[c] - s[c] * s[c] / n;
        m2 = m2 > 0.0 ? m2 : (m2 == m2 ? 0.0 : m2); /* rounding below zero -> 0, NaN kept */
        double invstd = 1.0 / sqrt(m2 / n + eps);
        double scale = invstd * (w != NULL ? (double)w[c] : 1.0);
        mean_out[c] = (float)mean, var_out[c] = (float)(m2 / n);
        unbiased_out[c] = (float)(m2 / (n - 1.0)), invstd_out[c] = (float)invstd;
        a[c] = (float)scale;
        t[c] = (float)((b != NULL ? (double)b[c] : 0.0) - (mean - (double)m[c]) * scale);
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * C;
        float *out = y + r * C;
        for (int64_t c = 0; c < C; c++) out[c] = (row[c] - m[c]) * a[c] + t[c];
    }
    free(k), free(coef);
    return 0;
}

/* The backward of vs_batch_norm_rows_forward, given the mean and invstd it returned. Per
 * channel, in double: g = sum(dy), h = sum(dy * (x - mean)); db = g, dw = h * invstd, and in
 * float32 dx = (dy - g / n - (x - mean) * invstd^2 * h / n) * invstd * w (torch's formula).
 * dx, dw and db may each be NULL (not wanted); w may be NULL (no affine weight). */
int vs_batch_norm_rows_backward(const float *dy, const float *x, int64_t rows, int64_t C,
                                const float *mean, const float *invstd, const float *w,
                                float *dx, float *dw, float *db) {
    double *g = calloc(2 * (size_t)C, sizeof(double));
    float *coef = malloc(3 * (size_t)C * sizeof(float));
    if (g == NULL || coef == NULL) {
        free(g), free(coef);
        return -1;
    }
    double *h = g + C, n = (double)rows;
    gradient_column_sums(dy, x, rows, C, mean, g, h);
    for (int64_t c = 0; c < C; c++) {
        if (db != NULL) db[c] = (float)g[c];
        if (dw != NULL) dw[c] = (float)(h[c] * invstd[c]);
    }
    if (dx != NULL) {
        float *k1 = coef, *mean_dy = coef + C, *k2 = coef + 2 * C;
        for (int64_t c = 0; c < C; c++) {
            double scale = (double)invstd[c] * (w != NULL ? (double)w[c] : 1.0);
            k1[c] = (float)scale, mean_dy[c] = (float)(g[c] / n);
            k2[c] = (float)(scale * (double)invstd[c] * (double)invstd[c] * h[c] / n);
        }
        for (int64_t r = 0; r < rows; r++) {
            const float *grad = dy + r * C, *row = x + r * C;
            float *out = dx + r * C;
            for (int64_t c = 0; c < C; c++)
                out[c] = (grad[c] - mean_dy[c]) * k1[c] - (row[c] - mean[c]) * k2[c];
        }
    }
    free(g), free(coef);
    return 0;
}

/* float32 -> bfloat16 -> float32, rounding to nearest even as c10::BFloat16 does (NaN
 * kept); branch-free, so that loops over it vectorise */
static inline float bf16_rounded(float f) {
    uint32_t bits, rounded;
    memcpy(&bits, &f, sizeof bits);
    rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
    bits = f != f ? bits : rounded;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* max(v, 0), NaN kept */
static inline float clamped_variance(float v) { return v > 0.0f ? v : (v == v ? 0.0f : v); }

/* vitalstats.nn BatchNorm around torch's own training kernel (which updates the running
 * buffers in place): the biased batch variance, as float32, from the kernel's saved invstd
 * (float32, or bfloat16 for a bfloat16 layer: dtype F32 or BF16),
 *     var[c] = max(invstd[c]^-2 - eps, 0)     (NaN kept)
 * rounded as ATen rounds invstd.pow(-2).sub_(eps).clamp_min_(0) in the invstd's dtype
 * (float32: 1 / (s * s), then the subtraction, no fused operation; bfloat16: each of s * s,
 * its reciprocal, eps and the difference rounded to bfloat16), so the values are the same
 * bit for bit. Returns 1 and adds 1 to *count (when not NULL) if every var is finite, or if
 * !require_finite; else returns 0 and leaves *count alone. */
int vs_batch_norm_variance_from_invstd(const void *invstd, int32_t dtype, int64_t C, float eps,
                                       int32_t require_finite, float *var, int64_t *count) {
    if (dtype == BF16) {
        const uint16_t *s = invstd;
        const float e = bf16_rounded(eps);
        for (int64_t c = 0; c < C; c++) {
            float v = bf16_value(s, c);
            var[c] = clamped_variance(bf16_rounded(bf16_rounded(1.0f / bf16_rounded(v * v)) - e));
        }
    } else {
        const float *s = invstd;
        for (int64_t c = 0; c < C; c++) var[c] = clamped_variance(1.0f / (s[c] * s[c]) - eps);
    }
    int finite = 1;
    for (int64_t c = 0; c < C; c++) finite &= (var[c] - var[c]) == 0.0f; /* NaN/Inf: NaN */
    if (require_finite && !finite) return 0;
    if (count != NULL) *count += 1;
    return 1;
}

/* out[0:n] = a[0:n], out[n:2n] = b[0:n], n bytes each (the running buffers' snapshot) */
void vs_copy_pair(const void *a, const void *b, int64_t n, void *out) {
    memcpy(out, a, (size_t)n);
    memcpy((char *)out + n, b, (size_t)n);
}
