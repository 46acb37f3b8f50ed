/* Memory-bound kernels for one decode step on an x86-64 CPU with AVX2 and FMA.
 *
 * A decode step reads every weight matrix once for a single row of activations, and every
 * cached key and value once for a single query. These loops stream each matrix from memory in
 * its storage order, one contiguous block of rows per thread, with several accumulators so the
 * FMA latency stays hidden behind the loads. Threads come from the OpenMP runtime torch already
 * loaded (libgomp.so.1), so these loops and torch's operators share one thread team.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

static inline float sum8(__m256 v) {
    __m128 low = _mm256_castps256_ps128(v);
    __m128 high = _mm256_extractf128_ps(v, 1);
    low = _mm_add_ps(low, high);
    low = _mm_add_ps(low, _mm_movehl_ps(low, low));
    low = _mm_add_ss(low, _mm_movehdup_ps(low));
    return _mm_cvtss_f32(low);
}

static inline float dot(const float *a, const float *b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    }
    float total = sum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) {
        total += a[i] * b[i];
    }
    return total;
}

/* out += weight * row, over n floats. */
static inline void axpy(float *out, float weight, const float *row, int64_t n) {
    __m256 w = _mm256_set1_ps(weight);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(w, _mm256_loadu_ps(row + i), _mm256_loadu_ps(out + i)));
    }
    for (; i < n; i++) {
        out[i] += weight * row[i];
    }
}

/* y[out_features] = weight[out_features, in_features] @ x + bias (bias may be NULL). */
void pcls_gemv(const float *weight, const float *x, const float *bias, float *y,
               int64_t out_features, int64_t in_features, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < out_features; row++) {
        float value = dot(weight + row * in_features, x, in_features);
        y[row] = bias ? value + bias[row] : value;
    }
}

/* Softmax attention of one query q[dim] over `length` rows of k and v; writes o[dim], uses s. */
static void attend_head(const float *q, const float *k, const float *v, float *o, float *s,
                        int64_t length, int64_t dim, float scale) {
    float largest = dot(q, k, dim) * scale;
    for (int64_t position = 0; position < length; position++) {
        s[position] = dot(q, k + position * dim, dim) * scale;
        largest = s[position] > largest ? s[position] : largest;
    }
    float total = 0.0f;
    for (int64_t position = 0; position < length; position++) {
        s[position] = expf(s[position] - largest);
        total += s[position];
    }
    for (int64_t i = 0; i < dim; i++) {
        o[i] = 0.0f;
    }
    for (int64_t position = 0; position < length; position++) {
        axpy(o, s[position] / total, v + position * dim, dim);
    }
}

/* Attention of one query per head over `length` cached positions.
 * query: [heads, dim]; keys, values: rows of `dim` floats, `head_stride` floats between heads;
 * out: [heads, dim]; scores: scratch of heads * length floats. */
void pcls_attend(const float *query, const float *keys, const float *values, float *out,
                 float *scores, int64_t heads, int64_t length, int64_t dim, int64_t head_stride,
                 float scale, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t head = 0; head < heads; head++) {
        attend_head(query + head * dim, keys + head * head_stride, values + head * head_stride,
                    out + head * dim, scores + head * length, length, dim, scale);
    }
}

/* GPT-NeoX's rotary embedding of x[dim] in place on its first rotary_dim values:
 * x * cos + rotate_half(x) * sin, rotate_half(x) = (-x[half:rotary_dim], x[:half]). */
static void rotate(float *x, const float *cos, const float *sin, int64_t rotary_dim) {
    int64_t half = rotary_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        float first = x[i], second = x[i + half];
        x[i] = first * cos[i] - second * sin[i];
        x[i + half] = second * cos[i + half] + first * sin[i + half];
    }
}

/* One decode step of GPT-NeoX attention after the QKV projection: per head, qkv holds
 * [query | key | value] (dim floats each); the key and query get the rotary embedding, the key
 * and value are written at row `position` of the caches (`head_stride` floats between heads),
 * and the query attends to rows 0..position. out: [heads, dim]; scores: heads * (position + 1). */
void pcls_neox_attend_step(float *qkv, const float *cos, const float *sin, int64_t rotary_dim,
                           float *keys, float *values, int64_t position, float *out,
                           float *scores, int64_t heads, int64_t dim, int64_t head_stride,
                           float scale, int threads) {
    int64_t length = position + 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t head = 0; head < heads; head++) {
        float *q = qkv + head * 3 * dim;
        float *k = q + dim;
        const float *v = k + dim;
        rotate(q, cos, sin, rotary_dim);
        rotate(k, cos, sin, rotary_dim);
        float *key_rows = keys + head * head_stride;
        float *value_rows = values + head * head_stride;
        for (int64_t i = 0; i < dim; i++) {
            key_rows[position * dim + i] = k[i];
            value_rows[position * dim + i] = v[i];
        }
        attend_head(q, key_rows, value_rows, out + head * dim, scores + head * length, length,
                    dim, scale);
    }
}
