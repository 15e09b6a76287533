/* One read of a layer's batch for every per-batch reduction of the capture (neuronbench.capture.native).

   a: float32 rows [n, W], row-major; the segments (a window's real rows) are rows
   starts[k] .. starts[k] + sizes[k] - 1.  Per segment k and column j (t = row within the segment,
   c = (sizes[k] - 1) / 2):
     seg_sum[k, j] = sum_t a,  seg_moment[k, j] = sum_t (t - c) a,  seg_sq[k, j] = sum_t a^2   (double)
     seg_max[k, j], seg_min[k, j]                                                              (float)
   Over every row (added to the caller's totals):
     abs_sum[j] += |a|;  counts[s, j] += [level > cuts[s]]  with level = |a| if relative else a
     active[row, j] = [level > cuts[0]]                               (when active is not NULL)
   Over the segments with positional[k] != 0 (full windows), per row t of the window:
     pos_active[t, j] += [level > cuts[0]],  pos_sum[t, j] += a   (float; the caller zeroes them)
   Sums are accumulated in double: float32 products are exact in double. NaN compares false
   (inactive), as in torch; it propagates into the sums. A segment is read a strip of CHUNK columns
   at a time, all its rows, so that every accumulator of the strip stays in L1; every inner loop
   runs over the strip's columns, so the compiler vectorises it without reassociating any sum. */
#include <math.h>
#include <stdint.h>

#define CHUNK 64

static inline float level_of(float x, int relative) { return relative ? fabsf(x) : x; }

void reduce_rows(const float *restrict a, int64_t width, int64_t n_segments, const int64_t *starts,
                 const int64_t *sizes, const uint8_t *positional, const float *cuts, int64_t n_cuts,
                 int relative, double *restrict seg_sum, double *restrict seg_moment, double *restrict seg_sq,
                 float *restrict seg_max, float *restrict seg_min, double *restrict abs_sum,
                 int64_t *restrict counts, uint8_t *restrict active, float *restrict pos_active,
                 float *restrict pos_sum) {
    for (int64_t k = 0; k < n_segments; ++k) {
        const double centre = 0.5 * (double)(sizes[k] - 1);
        for (int64_t j0 = 0; j0 < width; j0 += CHUNK) {
            const int64_t cw = width - j0 < CHUNK ? width - j0 : CHUNK;
            double s[CHUNK] = {0}, m[CHUNK] = {0}, q[CHUNK] = {0}, ab[CHUNK] = {0};
            float hi[CHUNK], lo[CHUNK];
            int32_t cnt[n_cuts][CHUNK];
            for (int64_t c = 0; c < n_cuts; ++c)
                for (int64_t j = 0; j < CHUNK; ++j) cnt[c][j] = 0;
            const float *first = a + starts[k] * width + j0;
            for (int64_t j = 0; j < cw; ++j) hi[j] = lo[j] = first[j];
            for (int64_t t = 0; t < sizes[k]; ++t) {
                const int64_t row = starts[k] + t;
                const float *restrict x = a + row * width + j0;
                const double w = (double)t - centre;
                for (int64_t j = 0; j < cw; ++j) {
                    const double v = (double)x[j];
                    s[j] += v;
                    m[j] += w * v;
                    q[j] += v * v;
                    ab[j] += fabs(v);
                    hi[j] = x[j] > hi[j] ? x[j] : hi[j];
                    lo[j] = x[j] < lo[j] ? x[j] : lo[j];
                }
                for (int64_t c = 0; c < n_cuts; ++c) {
                    const float cut = cuts[c];
                    for (int64_t j = 0; j < cw; ++j) cnt[c][j] += level_of(x[j], relative) > cut;
                }
                if (active) {
                    uint8_t *out = active + row * width + j0;
                    for (int64_t j = 0; j < cw; ++j) out[j] = level_of(x[j], relative) > cuts[0];
                }
                if (positional[k]) {
                    float *pa = pos_active + t * width + j0, *ps = pos_sum + t * width + j0;
                    for (int64_t j = 0; j < cw; ++j) {
                        pa[j] += level_of(x[j], relative) > cuts[0];
                        ps[j] += x[j];
                    }
                }
            }
            const int64_t at = k * width + j0;
            for (int64_t j = 0; j < cw; ++j) {
                seg_sum[at + j] = s[j];
                seg_moment[at + j] = m[j];
                seg_sq[at + j] = q[j];
                seg_max[at + j] = hi[j];
                seg_min[at + j] = lo[j];
                abs_sum[j0 + j] += ab[j];
            }
            for (int64_t c = 0; c < n_cuts; ++c)
                for (int64_t j = 0; j < cw; ++j) counts[c * width + j0 + j] += cnt[c][j];
        }
    }
}

/* Sum of squares of each column of a [n, W] (float32, row-major), in double: out[j] = sum_t a[t, j]^2
   (the layer scale's first-batch RMS; float32 squares are exact in double). */
void column_square_sums(const float *restrict a, int64_t n, int64_t width, double *restrict out) {
    for (int64_t j0 = 0; j0 < width; j0 += CHUNK) {
        const int64_t cw = width - j0 < CHUNK ? width - j0 : CHUNK;
        double q[CHUNK] = {0};
        for (int64_t t = 0; t < n; ++t) {
            const float *restrict x = a + t * width + j0;
            for (int64_t j = 0; j < cw; ++j) q[j] += (double)x[j] * (double)x[j];
        }
        for (int64_t j = 0; j < cw; ++j) out[j0 + j] = q[j];
    }
}
