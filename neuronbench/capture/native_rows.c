/* One read of a layer's batch for every per-batch reduction of the capture (neuronbench.capture.native).

   a: float32 rows [n, W], row-major; the segments (a window's real rows) are rows
   starts[k] .. starts[k] + sizes[k] - 1; those with positional[k] != 0 are the full windows (all of
   the same length T). Per full window i (the i-th of them) and column j (t = row within the
   window, c = (T - 1) / 2), in double:
     seg_sum[i, j] = S = sum_t a,  seg_moment[i, j] = sum_t (t - c) a,
     seg_centred[i, j] = max(Q - S^2 / T, 0)  with Q = sum_t a^2  (= sum_t (a - mean)^2)
   and in float seg_max[i, j], seg_min[i, j]; and over the full windows, in double,
     pearson_sum[j] = sum_i r[i, j],  r = seg_moment / sqrt(P * seg_centred)  (0 where seg_max == seg_min;
                      P = sum_t (t - c)^2 = (T - 1) T (T + 1) / 12; the denominator at least DBL_MIN).
   Over every row:
     total[j] = sum a,  total_sq[j] = sum a^2,  abs_sum[j] = sum |a|                    (double)
     max[j], min[j]                                                                     (float)
     counts[s, j] = #[level > cuts[s]]  with level = |a| if relative else a             (int64)
     active[row, j] = [level > cuts[0]]                               (when active is not NULL)
   Over the segments with positional[k] != 0 (full windows), per row t of the window:
     pos_active[t, j] = sum over windows [level > cuts[0]],  pos_sum[t, j] = sum over windows a  (float)
   Every output is written, none read: the caller need not zero them (n_segments >= 1; the seg_
   and pos_ arrays have a row per full window and position; they and pearson_sum are not touched
   without a full window).
   Sums are accumulated in double: float32 products are exact in double. NaN compares false
   (inactive), as in torch; it propagates into the sums.

   Order of the work: a strip of CHUNK columns at a time. Within it, each segment without
   positional statistics row by row, straight into the strip's totals; the full windows GROUP at a time, position by
   position, so that a position's row of the positional tables is read and written once per group
   rather than once per window. A strip's accumulators stay in L1; the rows AHEAD of the one being
   read are prefetched (a strip of a row is a few cache lines, one row width apart: without it the
   loop waits on memory). Each row's level and mask are computed once and reused by every count,
   the bool table and the positional counts. Every inner loop runs over the strip's columns, so
   the compiler vectorises it without reassociating any sum. */
#include <float.h>
#include <math.h>
#include <stdint.h>

#define CHUNK 64
#define GROUP 16
#define AHEAD 8

typedef struct {
    double s[CHUNK], m[CHUNK], q[CHUNK];
    float hi[CHUNK], lo[CHUNK];
} Segment;

typedef struct {
    double ab[CHUNK], s[CHUNK], q[CHUNK], r[CHUNK];
    float hi[CHUNK], lo[CHUNK];
    int32_t on[CHUNK];
} Strip;

typedef struct {
    const float *cuts;
    int64_t n_cuts, width;
    int relative;
    uint8_t *active;
} Rule;

static void prefetch(const void *row, int64_t bytes, int write) {
    for (int64_t b = 0; b < bytes; b += 64) {
        if (write)
            __builtin_prefetch((const char *)row + b, 1);
        else
            __builtin_prefetch((const char *)row + b, 0);
    }
}

static void segment_start(Segment *g, const float *x, int64_t cw) {
    for (int64_t j = 0; j < CHUNK; ++j) g->s[j] = g->m[j] = g->q[j] = 0.0;
    for (int64_t j = 0; j < cw; ++j) g->hi[j] = g->lo[j] = x[j];
}

/* The mask of row x (level = |a| when relative, else a) into on[], the strip's counts at every cut
   and the bool table's row. */
static inline void mask_row(const float *restrict x, const float *restrict level, int64_t cw, int64_t row,
                            int64_t j0, const Rule *rule, Strip *restrict strip, int32_t (*restrict cnt)[CHUNK],
                            uint8_t *restrict on) {
    const float *restrict lv = rule->relative ? level : x;
    const float cut = rule->cuts[0];
    for (int64_t j = 0; j < cw; ++j) {
        on[j] = lv[j] > cut;
        strip->on[j] += on[j];
    }
    for (int64_t c = 0; c + 1 < rule->n_cuts; ++c) {
        const float other = rule->cuts[c + 1];
        for (int64_t j = 0; j < cw; ++j) cnt[c][j] += lv[j] > other;
    }
    if (rule->active) {
        uint8_t *out = rule->active + row * rule->width + j0;
        for (int64_t j = 0; j < cw; ++j) out[j] = on[j];
    }
}

/* Fold row x (a strip of cw columns; flat row `row`, weight w = t - c) of a full window into its
   segment's accumulators and the strip's; on[j] receives the row's mask. */
static inline void add_row(const float *restrict x, int64_t cw, double w, int64_t row, int64_t j0,
                           const Rule *rule, Segment *restrict g, Strip *restrict strip,
                           int32_t (*restrict cnt)[CHUNK], uint8_t *restrict on) {
    float level[CHUNK];
    for (int64_t j = 0; j < cw; ++j) {
        const double v = (double)x[j];
        g->s[j] += v;
        g->m[j] += w * v;
        g->q[j] += v * v;
        g->hi[j] = x[j] > g->hi[j] ? x[j] : g->hi[j];
        g->lo[j] = x[j] < g->lo[j] ? x[j] : g->lo[j];
        level[j] = fabsf(x[j]);
        strip->ab[j] += (double)level[j];
    }
    mask_row(x, level, cw, row, j0, rule, strip, cnt, on);
}

/* Fold row x of a segment without window statistics straight into the strip's totals. */
static inline void add_flat_row(const float *restrict x, int64_t cw, int64_t row, int64_t j0, const Rule *rule,
                                Strip *restrict strip, int32_t (*restrict cnt)[CHUNK], uint8_t *restrict on) {
    float level[CHUNK];
    for (int64_t j = 0; j < cw; ++j) {
        const double v = (double)x[j];
        strip->s[j] += v;
        strip->q[j] += v * v;
        strip->hi[j] = x[j] > strip->hi[j] ? x[j] : strip->hi[j];
        strip->lo[j] = x[j] < strip->lo[j] ? x[j] : strip->lo[j];
        level[j] = fabsf(x[j]);
        strip->ab[j] += (double)level[j];
    }
    mask_row(x, level, cw, row, j0, rule, strip, cnt, on);
}

/* Write the sums of full window k (the k-th positional segment; the centred squares from Q and S)
   and fold them, and the window's Pearson r, into the strip's totals. */
static void segment_store(const Segment *g, int64_t k, int64_t size, int64_t j0, int64_t cw, int64_t width,
                          Strip *strip, double *seg_sum, double *seg_moment, double *seg_centred, float *seg_max,
                          float *seg_min) {
    const int64_t at = k * width + j0;
    const double rows = (double)size, position_ss = (rows - 1.0) * rows * (rows + 1.0) / 12.0;
    for (int64_t j = 0; j < cw; ++j) {
        const double raw = g->q[j] - g->s[j] * g->s[j] / rows, centred = raw < 0.0 ? 0.0 : raw;
        const double spread = sqrt(position_ss * centred);
        seg_sum[at + j] = g->s[j];
        seg_moment[at + j] = g->m[j];
        seg_centred[at + j] = centred;
        strip->r[j] += g->hi[j] > g->lo[j] ? g->m[j] / (spread > DBL_MIN ? spread : DBL_MIN) : 0.0;
        seg_max[at + j] = g->hi[j];
        seg_min[at + j] = g->lo[j];
        strip->s[j] += g->s[j];
        strip->q[j] += g->q[j];
        strip->hi[j] = g->hi[j] > strip->hi[j] ? g->hi[j] : strip->hi[j];
        strip->lo[j] = g->lo[j] < strip->lo[j] ? g->lo[j] : strip->lo[j];
    }
}

void reduce_rows(const float *restrict a, int64_t width, int64_t n_segments, const int64_t *starts,
                 const int64_t *sizes, const uint8_t *positional, const float *cuts, int64_t n_cuts,
                 int relative, double *restrict seg_sum, double *restrict seg_moment,
                 double *restrict seg_centred, float *restrict seg_max, float *restrict seg_min,
                 double *restrict total, double *restrict total_sq, float *restrict max, float *restrict min,
                 double *restrict abs_sum, int64_t *restrict counts, uint8_t *restrict active,
                 float *restrict pos_active, float *restrict pos_sum, double *restrict pearson_sum) {
    const Rule rule = {cuts, n_cuts, width, relative, active};
    int64_t windows[n_segments > 0 ? n_segments : 1], n_windows = 0;
    for (int64_t k = 0; k < n_segments; ++k)
        if (positional[k]) windows[n_windows++] = k;
    const int64_t length = n_windows ? sizes[windows[0]] : 0;
    const double window_centre = 0.5 * (double)(length - 1);
    for (int64_t j0 = 0; j0 < width; j0 += CHUNK) {
        const int64_t cw = width - j0 < CHUNK ? width - j0 : CHUNK;
        Strip strip = {{0}, {0}, {0}, {0}, {0}, {0}, {0}};
        for (int64_t j = 0; j < cw; ++j) strip.hi[j] = strip.lo[j] = a[starts[0] * width + j0 + j];
        int32_t cnt[n_cuts > 1 ? n_cuts - 1 : 1][CHUNK];
        uint8_t on[CHUNK];
        for (int64_t c = 0; c + 1 < n_cuts; ++c)
            for (int64_t j = 0; j < CHUNK; ++j) cnt[c][j] = 0;
        for (int64_t k = 0; k < n_segments; ++k) {
            if (positional[k]) continue;
            const float *x = a + starts[k] * width + j0;
            for (int64_t t = 0; t < sizes[k]; ++t, x += width) {
                if (t + AHEAD < sizes[k]) {
                    prefetch(x + AHEAD * width, cw * 4, 0);
                    if (active) prefetch(active + (starts[k] + t + AHEAD) * width + j0, cw, 1);
                }
                add_flat_row(x, cw, starts[k] + t, j0, &rule, &strip, cnt, on);
            }
        }
        for (int64_t g0 = 0; g0 < n_windows; g0 += GROUP) {
            const int64_t n_group = n_windows - g0 < GROUP ? n_windows - g0 : GROUP;
            Segment group[GROUP];
            for (int64_t i = 0; i < n_group; ++i) segment_start(&group[i], a + starts[windows[g0 + i]] * width + j0, cw);
            for (int64_t t = 0; t < length; ++t) {
                float pa[CHUNK] = {0}, ps[CHUNK] = {0};
                if (t + AHEAD < length) {
                    prefetch(pos_active + (t + AHEAD) * width + j0, cw * 4, 1);
                    prefetch(pos_sum + (t + AHEAD) * width + j0, cw * 4, 1);
                }
                for (int64_t i = 0; i < n_group; ++i) {
                    const int64_t row = starts[windows[g0 + i]] + t;
                    const float *x = a + row * width + j0;
                    if (t + AHEAD < length) prefetch(x + AHEAD * width, cw * 4, 0);
                    if (active && t + AHEAD < length) prefetch(active + (row + AHEAD) * width + j0, cw, 1);
                    add_row(x, cw, (double)t - window_centre, row, j0, &rule, &group[i], &strip, cnt, on);
                    for (int64_t j = 0; j < cw; ++j) {
                        pa[j] += (float)on[j];
                        ps[j] += x[j];
                    }
                }
                float *restrict out_a = pos_active + t * width + j0, *restrict out_s = pos_sum + t * width + j0;
                if (g0 == 0)
                    for (int64_t j = 0; j < cw; ++j) {
                        out_a[j] = pa[j];
                        out_s[j] = ps[j];
                    }
                else
                    for (int64_t j = 0; j < cw; ++j) {
                        out_a[j] += pa[j];
                        out_s[j] += ps[j];
                    }
            }
            for (int64_t i = 0; i < n_group; ++i)
                segment_store(&group[i], g0 + i, length, j0, cw, width, &strip, seg_sum, seg_moment,
                              seg_centred, seg_max, seg_min);
        }
        for (int64_t j = 0; j < cw; ++j) {
            abs_sum[j0 + j] = strip.ab[j];
            total[j0 + j] = strip.s[j];
            total_sq[j0 + j] = strip.q[j];
            max[j0 + j] = strip.hi[j];
            min[j0 + j] = strip.lo[j];
            counts[j0 + j] = strip.on[j];
        }
        if (n_windows)
            for (int64_t j = 0; j < cw; ++j) pearson_sum[j0 + j] = strip.r[j];
        for (int64_t c = 0; c + 1 < n_cuts; ++c)
            for (int64_t j = 0; j < cw; ++j) counts[(c + 1) * width + j0 + j] = cnt[c][j];
    }
}

/* Sum of squares of each column of a [n, W] (float32, row-major), in double: out[j] = sum_t a[t, j]^2
   (the layer scale's first-batch RMS; float32 squares are exact in double). */
void column_square_sums(const float *restrict a, int64_t n, int64_t width, double *restrict out) {
    for (int64_t j0 = 0; j0 < width; j0 += CHUNK) {
        const int64_t cw = width - j0 < CHUNK ? width - j0 : CHUNK;
        double q[CHUNK] = {0};
        const float *x = a + j0;
        for (int64_t t = 0; t < n; ++t, x += width) {
            if (t + AHEAD < n) prefetch(x + AHEAD * width, cw * 4, 0);
            for (int64_t j = 0; j < cw; ++j) q[j] += (double)x[j] * (double)x[j];
        }
        for (int64_t j = 0; j < cw; ++j) out[j0 + j] = q[j];
    }
}

/* The per-token count table's update (neuronbench.capture.tokens): for each of n kept positions i,
   table[slots[i], j] += active[p, j] with p = positions[i] (p = i when positions is NULL), j < width;
   table rows of element_size bytes per count (1: uint8, 2: int16, 4: int32, 8: int64). Exact as
   long as no count passes its tier's range, which the tiers guarantee. */
#define ADD_ROWS(type)                                                                  \
    for (int64_t i = 0; i < n; ++i) {                                                   \
        const uint8_t *restrict src = active + (positions ? positions[i] : i) * width;  \
        type *restrict dst = (type *)table + slots[i] * width;                          \
        for (int64_t j = 0; j < width; ++j) dst[j] += (type)src[j];                     \
    }

void add_token_rows(const uint8_t *restrict active, int64_t width, const int64_t *positions, const int64_t *slots,
                    int64_t n, void *table, int64_t element_size) {
    switch (element_size) {
    case 1: ADD_ROWS(uint8_t); break;
    case 2: ADD_ROWS(int16_t); break;
    case 4: ADD_ROWS(int32_t); break;
    default: ADD_ROWS(int64_t); break;
    }
}

/* Row-major copy of a transposed batch (Mamba's scan output): for b < batches, t < length, j < width,
   out[(b * length + t) * width + j] = a[b * batch_stride + j * width_stride + t]  (float32).
   Tiles of TILE x TILE, so that both the reads (along t) and the writes (along j) stay within a few
   cache lines per tile; a strided copy element by element reads a new cache line per element. */
#define TILE 32

void transpose_rows(const float *restrict a, int64_t batches, int64_t batch_stride, int64_t length, int64_t width,
                    int64_t width_stride, float *restrict out) {
    for (int64_t b = 0; b < batches; ++b) {
        const float *src = a + b * batch_stride;
        float *dst = out + b * length * width;
        for (int64_t j0 = 0; j0 < width; j0 += TILE) {
            const int64_t jw = width - j0 < TILE ? width - j0 : TILE;
            for (int64_t t0 = 0; t0 < length; t0 += TILE) {
                const int64_t tw = length - t0 < TILE ? length - t0 : TILE;
                for (int64_t t = t0; t < t0 + tw; ++t)
                    for (int64_t j = j0; j < j0 + jw; ++j) dst[t * width + j] = src[j * width_stride + t];
            }
        }
    }
}

/* Moments of each column of a [n, W] (float32, row-major) around a per-column pivot c, in double:
   sum[j] = sum_t (a - c_j),  sum_sq[j] = sum_t (a - c_j)^2,  max[j], min[j] of a  (Mamba's log Δ;
   n >= 1). A NaN or inf propagates into sum, which the capture's non-finite check reads; max and min
   are not meaningful then. */
void shifted_moments(const float *restrict a, int64_t n, int64_t width, const float *restrict pivot,
                     double *restrict sum, double *restrict sum_sq, double *restrict max, double *restrict min) {
    for (int64_t j0 = 0; j0 < width; j0 += CHUNK) {
        const int64_t cw = width - j0 < CHUNK ? width - j0 : CHUNK;
        double s[CHUNK] = {0}, q[CHUNK] = {0};
        float hi[CHUNK], lo[CHUNK];
        const float *x = a + j0;
        for (int64_t j = 0; j < cw; ++j) hi[j] = lo[j] = x[j];
        for (int64_t t = 0; t < n; ++t, x += width) {
            if (t + AHEAD < n) prefetch(x + AHEAD * width, cw * 4, 0);
            for (int64_t j = 0; j < cw; ++j) {
                const double d = (double)x[j] - (double)pivot[j0 + j];
                s[j] += d;
                q[j] += d * d;
                hi[j] = x[j] > hi[j] ? x[j] : hi[j];
                lo[j] = x[j] < lo[j] ? x[j] : lo[j];
            }
        }
        for (int64_t j = 0; j < cw; ++j) {
            sum[j0 + j] = s[j];
            sum_sq[j0 + j] = q[j];
            max[j0 + j] = hi[j];
            min[j0 + j] = lo[j];
        }
    }
}

/* The streamed top-k of each column of a [n, W] (float32, row-major, rows in increasing position):
   values [k, W] (float32, descending down each column) and kept [k, W] (int64 positions) hold the k
   largest values seen so far, unfilled slots -inf and -1. A value enters only when strictly above
   its column's k-th and goes after every equal value already held, so equal values keep the lowest
   positions first, exactly as a sort by (value descending, position ascending) of every row seen.
   A group of TOP_GROUP columns is skipped with one vectorised comparison when none enters. */
#define TOP_GROUP 16
void merge_top_rows(const float *restrict a, int64_t n, int64_t width, const int64_t *restrict positions,
                    int64_t k, float *restrict values, int64_t *restrict kept) {
    const float *restrict kth = values + (k - 1) * width;
    for (int64_t t = 0; t < n; ++t) {
        const float *restrict x = a + t * width;
        for (int64_t j0 = 0; j0 < width; j0 += TOP_GROUP) {
            const int64_t cw = width - j0 < TOP_GROUP ? width - j0 : TOP_GROUP;
            int any = 0;
            for (int64_t j = 0; j < cw; ++j) any |= x[j0 + j] > kth[j0 + j];
            if (!any) continue;
            for (int64_t j = j0; j < j0 + cw; ++j) {
                const float v = x[j];
                if (!(v > values[(k - 1) * width + j])) continue;
                int64_t i = k - 1;
                for (; i > 0 && v > values[(i - 1) * width + j]; --i) {
                    values[i * width + j] = values[(i - 1) * width + j];
                    kept[i * width + j] = kept[(i - 1) * width + j];
                }
                values[i * width + j] = v;
                kept[i * width + j] = positions[t];
            }
        }
    }
}
