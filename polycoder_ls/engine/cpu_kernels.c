/* Memory-bound kernels for one decode step on an x86-64 CPU with AVX2, FMA and F16C.
 *
 * A decode step reads every weight matrix once for a single row of activations, and every
 * cached key and value once for a single query. These loops stream each matrix from memory in
 * its storage order, one contiguous block of rows per thread, with several accumulators so the
 * FMA latency stays hidden behind the loads. Threads come from the OpenMP runtime torch already
 * loaded (libgomp.so.1), so these loops and torch's operators share one thread team.
 *
 * A matrix is either float32 or int8 in groups of GROUP consecutive weights of a row, each
 * group with a float16 scale (weight = int8 value * scale, like ggml's q8_0): a quarter of the
 * bytes, converted to float32 in registers.
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

enum { GROUP = 32 };

/* 8 int8 values as 8 floats. */
static inline __m256 int8x8(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

/* One group: the dot product of GROUP int8 values with GROUP floats, 8 lanes left to add. */
static inline __m256 group_dot(const int8_t *q, const float *x) {
    __m256 even = _mm256_mul_ps(int8x8(q), _mm256_loadu_ps(x));
    __m256 odd = _mm256_mul_ps(int8x8(q + 8), _mm256_loadu_ps(x + 8));
    even = _mm256_fmadd_ps(int8x8(q + 16), _mm256_loadu_ps(x + 16), even);
    odd = _mm256_fmadd_ps(int8x8(q + 24), _mm256_loadu_ps(x + 24), odd);
    return _mm256_add_ps(even, odd);
}

/* The dot product of a row of n int8 weights (n a multiple of GROUP) with x[n]. */
static inline float dot_int8(const int8_t *q, const uint16_t *scales, const float *x, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t group = 0, groups = n / GROUP;
    for (; group + 2 <= groups; group += 2) {
        const int64_t at = group * GROUP;
        acc0 = _mm256_fmadd_ps(group_dot(q + at, x + at), _mm256_set1_ps(_cvtsh_ss(scales[group])),
                               acc0);
        acc1 = _mm256_fmadd_ps(group_dot(q + at + GROUP, x + at + GROUP),
                               _mm256_set1_ps(_cvtsh_ss(scales[group + 1])), acc1);
    }
    if (group < groups) {
        const int64_t at = group * GROUP;
        acc0 = _mm256_fmadd_ps(group_dot(q + at, x + at), _mm256_set1_ps(_cvtsh_ss(scales[group])),
                               acc0);
    }
    return sum8(_mm256_add_ps(acc0, acc1));
}

/* out += weight * row, over n floats. */
static inline void axpy(float *out, float weight, const float *row, int64_t n) {
    __m256 w = _mm256_set1_ps(weight);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 sum = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + i), _mm256_loadu_ps(out + i));
        _mm256_storeu_ps(out + i, sum);
    }
    for (; i < n; i++) {
        out[i] += weight * row[i];
    }
}

/* What a row of a matrix-vector product does with its value. */
enum row_output { STORE, STORE_GELU, ADD };

static inline float gelu(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

/* The float32 values of a row of n int8 weights (n a multiple of GROUP). */
static void dequantize_row(const int8_t *q, const uint16_t *scales, float *out, int64_t n) {
    for (int64_t at = 0; at < n; at += 8) {
        __m256 scale = _mm256_set1_ps(_cvtsh_ss(scales[at / GROUP]));
        _mm256_storeu_ps(out + at, _mm256_mul_ps(int8x8(q + at), scale));
    }
}

/* y[t] = weight[out_features, in_features] @ x[t] + bias (bias may be NULL) for each of
 * `tokens` rows of x ([tokens, in_features]) and y ([tokens, out_features]); the weight's rows
 * are shared among the threads of the enclosing parallel region, each read from memory once.
 * STORE_GELU applies the exact GELU, ADD adds to y. Without scales the weight is float32; with
 * them int8 with in_features / GROUP scales a row, which `scratch` (in_features floats of the
 * calling thread) holds as float32 while several tokens use it. */
static void gemm_rows(const void *weight, const uint16_t *scales, const float *x,
                      const float *bias, float *y, int64_t out_features, int64_t in_features,
                      int64_t tokens, enum row_output output, float *scratch) {
    const int64_t groups = in_features / GROUP;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < out_features; row++) {
        const int8_t *quantized = (const int8_t *)weight + row * in_features;
        const float *values = (const float *)weight + row * in_features;
        if (scales && tokens > 1) {
            dequantize_row(quantized, scales + row * groups, scratch, in_features);
            values = scratch;
        }
        for (int64_t t = 0; t < tokens; t++) {
            const float *row_x = x + t * in_features;
            float value = scales && tokens == 1
                              ? dot_int8(quantized, scales + row * groups, row_x, in_features)
                              : dot(values, row_x, in_features);
            value += bias ? bias[row] : 0.0f;
            if (output == STORE_GELU) {
                value = gelu(value);
            }
            float *out = y + t * out_features + row;
            *out = output == ADD ? *out + value : value;
        }
    }
}

void pcls_gemv(const void *weight, const uint16_t *scales, const float *x, const float *bias,
               float *y, int64_t out_features, int64_t in_features, int threads) {
#pragma omp parallel num_threads(threads)
    gemm_rows(weight, scales, x, bias, y, out_features, in_features, 1, STORE, NULL);
}

/* s[i] = exp(s[i] - largest) over `length` scores; returns their sum. */
static float exponentiate(float *s, int64_t length, float largest) {
    float total = 0.0f;
    for (int64_t position = 0; position < length; position++) {
        s[position] = expf(s[position] - largest);
        total += s[position];
    }
    return total;
}

/* Softmax attention of one query q[dim] over `length` rows of k and v; writes o[dim], uses s. */
static void attend_head_any(const float *q, const float *k, const float *v, float *o, float *s,
                            int64_t length, int64_t dim, float scale) {
    float largest = dot(q, k, dim) * scale;
    for (int64_t position = 0; position < length; position++) {
        s[position] = dot(q, k + position * dim, dim) * scale;
        largest = s[position] > largest ? s[position] : largest;
    }
    float total = exponentiate(s, length, largest);
    for (int64_t i = 0; i < dim; i++) {
        o[i] = 0.0f;
    }
    for (int64_t position = 0; position < length; position++) {
        axpy(o, s[position] / total, v + position * dim, dim);
    }
}

enum { MAX_BLOCKS = 16 };

/* attend_head_any for a dim of `blocks` * 8 floats, known when this is inlined: the query and
 * the output stay in registers while the keys and values stream past. */
static inline __attribute__((always_inline)) void attend_head_blocks(
    const float *q, const float *k, const float *v, float *o, float *s, int64_t length,
    const int blocks, float scale) {
    const int64_t dim = 8 * blocks;
    __m256 query[MAX_BLOCKS], out[MAX_BLOCKS];
    for (int b = 0; b < blocks; b++) {
        query[b] = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * b), _mm256_set1_ps(scale));
        out[b] = _mm256_setzero_ps();
    }
    float largest = 0.0f;
    for (int64_t position = 0; position < length; position++) {
        const float *row = k + position * dim;
        __m256 even = _mm256_mul_ps(query[0], _mm256_loadu_ps(row));
        __m256 odd = _mm256_setzero_ps();
        for (int b = 1; b < blocks; b++) {
            if (b % 2) {
                odd = _mm256_fmadd_ps(query[b], _mm256_loadu_ps(row + 8 * b), odd);
            } else {
                even = _mm256_fmadd_ps(query[b], _mm256_loadu_ps(row + 8 * b), even);
            }
        }
        s[position] = sum8(_mm256_add_ps(even, odd));
        largest = position == 0 || s[position] > largest ? s[position] : largest;
    }
    float total = exponentiate(s, length, largest);
    for (int64_t position = 0; position < length; position++) {
        const float *row = v + position * dim;
        __m256 weight = _mm256_set1_ps(s[position]);
        for (int b = 0; b < blocks; b++) {
            out[b] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(row + 8 * b), out[b]);
        }
    }
    __m256 inverse = _mm256_set1_ps(1.0f / total);
    for (int b = 0; b < blocks; b++) {
        _mm256_storeu_ps(o + 8 * b, _mm256_mul_ps(out[b], inverse));
    }
}

static void attend_head(const float *q, const float *k, const float *v, float *o, float *s,
                        int64_t length, int64_t dim, float scale) {
    switch (dim) {
    case 64:
        attend_head_blocks(q, k, v, o, s, length, 8, scale);
        break;
    case 80:
        attend_head_blocks(q, k, v, o, s, length, 10, scale);
        break;
    case 128:
        attend_head_blocks(q, k, v, o, s, length, 16, scale);
        break;
    default:
        attend_head_any(q, k, v, o, s, length, dim, scale);
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

/* One new token's query and key for one head get the rotary embedding in qkv ([query | key |
 * value], dim floats each); its key and value are written at row `position` of the head's
 * cache rows. */
static void neox_cache_token(float *qkv, const float *cos, const float *sin, int64_t rotary_dim,
                             float *key_rows, float *value_rows, int64_t position, int64_t dim) {
    float *q = qkv, *k = qkv + dim;
    const float *v = k + dim;
    rotate(q, cos, sin, rotary_dim);
    rotate(k, cos, sin, rotary_dim);
    for (int64_t i = 0; i < dim; i++) {
        key_rows[position * dim + i] = k[i];
        value_rows[position * dim + i] = v[i];
    }
}

static void layer_norm(const float *x, const float *weight, const float *bias, float *out,
                       int64_t n, float eps) {
    double sum = 0.0, squares = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += x[i];
    }
    float mean = (float)(sum / n);
    for (int64_t i = 0; i < n; i++) {
        squares += (double)(x[i] - mean) * (x[i] - mean);
    }
    float inverse = 1.0f / sqrtf((float)(squares / n) + eps);
    for (int64_t i = 0; i < n; i++) {
        out[i] = (x[i] - mean) * inverse * weight[i] + (bias ? bias[i] : 0.0f);
    }
}

static void add(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        x[i] += y[i];
    }
}

/* The shape of a GPT-NeoX model and of one step; mirrored by NeoXShape in cpu_kernels.py. */
struct neox_shape {
    int64_t layers, hidden, heads, head_dim, intermediate, rotary_dim, vocab, position;
    float eps, scale;
    int64_t parallel_residual;
};

/* Each layer's pointers, in this order, in `layer_pointers`. */
enum layer_pointer {
    INPUT_NORM_WEIGHT, INPUT_NORM_BIAS, QKV_WEIGHT, QKV_BIAS, DENSE_WEIGHT, DENSE_BIAS,
    POST_NORM_WEIGHT, POST_NORM_BIAS, FC_IN_WEIGHT, FC_IN_BIAS, FC_OUT_WEIGHT, FC_OUT_BIAS,
    QKV_SCALES, DENSE_SCALES, FC_IN_SCALES, FC_OUT_SCALES, KEYS, VALUES, LAYER_POINTERS
};

/* Workspace floats pcls_neox_step needs for `tokens` new tokens. */
int64_t pcls_neox_workspace(const struct neox_shape *shape, int64_t tokens) {
    return tokens * (7 * shape->hidden + shape->intermediate) +
           shape->heads * tokens * (shape->position + tokens);
}

/* `tokens` new tokens through a whole GPT-NeoX model (exact GELU, layer norms, rotary
 * embedding), in one parallel region, each weight matrix read once: `embeddings` holds their
 * input embeddings [tokens, hidden]; cos and sin their rotary tables [tokens, rotary_dim]; each
 * layer's caches are [heads][head_strides[layer]] floats with room for rows position ..
 * position + tokens - 1, which are written, and token t attends to rows 0 .. position + t;
 * logits[tokens, vocab] = head_weight @ final_norm(hidden) + head_bias (NULL biases are zero).
 * A matrix whose scales are NULL is float32, else int8 (gemm_rows). */
void pcls_neox_step(const struct neox_shape *shape, int64_t tokens, const float *embeddings,
                    void *const *layer_pointers, const int64_t *head_strides, const float *cos,
                    const float *sin, const float *final_norm_weight,
                    const float *final_norm_bias, const void *head_weight,
                    const uint16_t *head_scales, const float *head_bias, float *workspace,
                    float *logits, int threads) {
    const int64_t hidden = shape->hidden, heads = shape->heads, dim = shape->head_dim;
    const int64_t inter = shape->intermediate, rotary_dim = shape->rotary_dim;
    const int64_t position = shape->position, span = position + tokens;
    const float eps = shape->eps;
    float *x = workspace, *normed = x + tokens * hidden, *qkv = normed + tokens * hidden;
    float *attended = qkv + tokens * 3 * hidden, *projected = attended + tokens * hidden;
    float *expanded = projected + tokens * hidden, *scores = expanded + tokens * inter;
    for (int64_t i = 0; i < tokens * hidden; i++) {
        x[i] = embeddings[i];
    }
#pragma omp parallel num_threads(threads)
    {
        float scratch[inter > hidden ? inter : hidden];
        for (int64_t layer = 0; layer < shape->layers; layer++) {
            void *const *p = layer_pointers + layer * LAYER_POINTERS;
#pragma omp single
            for (int64_t t = 0; t < tokens; t++) {
                layer_norm(x + t * hidden, p[INPUT_NORM_WEIGHT], p[INPUT_NORM_BIAS],
                           normed + t * hidden, hidden, eps);
            }
            gemm_rows(p[QKV_WEIGHT], p[QKV_SCALES], normed, p[QKV_BIAS], qkv, 3 * hidden, hidden,
                      tokens, STORE, scratch);
            float *keys = p[KEYS], *values = p[VALUES];
#pragma omp for schedule(static)
            for (int64_t head = 0; head < heads; head++) {
                for (int64_t t = 0; t < tokens; t++) {
                    neox_cache_token(qkv + t * 3 * hidden + head * 3 * dim, cos + t * rotary_dim,
                                     sin + t * rotary_dim, rotary_dim,
                                     keys + head * head_strides[layer],
                                     values + head * head_strides[layer], position + t, dim);
                }
            }
#pragma omp for schedule(static) collapse(2)
            for (int64_t head = 0; head < heads; head++) {
                for (int64_t t = 0; t < tokens; t++) {
                    attend_head(qkv + t * 3 * hidden + head * 3 * dim,
                                keys + head * head_strides[layer],
                                values + head * head_strides[layer],
                                attended + t * hidden + head * dim,
                                scores + (head * tokens + t) * span, position + t + 1, dim,
                                shape->scale);
                }
            }
            gemm_rows(p[DENSE_WEIGHT], p[DENSE_SCALES], attended, p[DENSE_BIAS], projected,
                      hidden, hidden, tokens, STORE, scratch);
#pragma omp single
            for (int64_t t = 0; t < tokens; t++) {
                float *row = x + t * hidden, *row_normed = normed + t * hidden;
                const float *norm_weight = p[POST_NORM_WEIGHT], *norm_bias = p[POST_NORM_BIAS];
                if (shape->parallel_residual) {
                    layer_norm(row, norm_weight, norm_bias, row_normed, hidden, eps);
                    add(row, projected + t * hidden, hidden);
                } else {
                    add(row, projected + t * hidden, hidden);
                    layer_norm(row, norm_weight, norm_bias, row_normed, hidden, eps);
                }
            }
            gemm_rows(p[FC_IN_WEIGHT], p[FC_IN_SCALES], normed, p[FC_IN_BIAS], expanded, inter,
                      hidden, tokens, STORE_GELU, scratch);
            gemm_rows(p[FC_OUT_WEIGHT], p[FC_OUT_SCALES], expanded, p[FC_OUT_BIAS], x, hidden,
                      inter, tokens, ADD, scratch);
        }
#pragma omp single
        for (int64_t t = 0; t < tokens; t++) {
            layer_norm(x + t * hidden, final_norm_weight, final_norm_bias, normed + t * hidden,
                       hidden, eps);
        }
        gemm_rows(head_weight, head_scales, normed, head_bias, logits, shape->vocab, hidden,
                  tokens, STORE, scratch);
    }
}
