/* Memory-bound kernels for one decode step on an x86-64 CPU with AVX2, FMA and F16C.
 *
 * A decode step reads every weight matrix once for a single row of activations, and every
 * cached key and value once for a single query. These loops stream each matrix from memory in
 * its storage order, one contiguous block of rows per thread, with several accumulators so the
 * FMA latency stays hidden behind the loads. Threads come from the OpenMP runtime torch already
 * loaded (libgomp.so.1), so these loops and torch's operators share one thread team.
 *
 * A matrix is float32, or quantized in groups of GROUP consecutive weights of a row, each
 * group with a float16 scale (weight = value * scale): int8 values (like ggml's q8_0, a quarter
 * of float32's bytes) or 4-bit ones (like q4_0, an eighth), stored unsigned and interleaved by
 * blocks of 8 groups (BLOCK_GROUPS below). `bits` says which: 0 (float32), 8 or 4. Cached keys
 * and values are float32, or float16 (`half`), converted to float32 in registers. A quantized
 * matrix multiplies rows of activations quantized the same way (int8 in groups of GROUP, a
 * float32 scale each: the group's largest magnitude / 127), in integers: 32 products a group
 * summed exactly, then scaled (as llama.cpp multiplies q8_0 and q4_0 weights). With
 * AVX512-VNNI one instruction multiplies and adds them (the build for such CPUs defines
 * __AVX512VNNI__), else two (AVX2); that build's attention also works on 16 floats at a time.
 */
#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

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

/* Quantized products work on blocks of BLOCK_GROUPS groups of a row, interleaved so that one
 * vector of 32 bytes holds 4 consecutive values of each of the block's 8 groups: byte 4 i + j
 * of a block's vector k is value 4 k + j of its group i. An integer multiply-add of such a
 * vector of weights with one of activations leaves each group's partial sum in a lane of its
 * own, so 8 of them give the block's 8 group sums in one register, scaled together (instead of
 * scaling each group's 8 partial sums apart). A row's last block may have fewer groups (`lanes`);
 * its vectors are lanes * 4 bytes. Weights are stored unsigned: int8 values + 128 in a byte;
 * 4-bit values + 8 in nibbles, block chunk c's byte holding vector 2 c's value in its low
 * nibble and vector 2 c + 1's in its high one. */
enum { BLOCK_GROUPS = 8, BLOCK_VALUES = BLOCK_GROUPS * GROUP };

static inline int64_t blocks_of(int64_t groups) {
    return (groups + BLOCK_GROUPS - 1) / BLOCK_GROUPS;
}

/* Bytes of one group's values. */
static inline int64_t group_bytes(int bits) {
    return GROUP * bits / 8;
}

/* With AVX512-VNNI, one instruction multiplies unsigned by signed bytes and adds 4 products to
 * a 32-bit lane; with AVX2 two, whose 16-bit middle sums must not saturate: |u * s| < 2^14. */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define VNNI 1
#else
#define VNNI 0
#endif

static inline __m256i multiply_add_bytes(__m256i sums, __m256i u, __m256i s) {
#if VNNI
    return _mm256_dpbusd_epi32(sums, u, s);
#else
    return _mm256_add_epi32(sums, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s),
                                                    _mm256_set1_epi16(1)));
#endif
}

/* What a stored weight exceeds its value by, as the products see it: int8 weights + 128 are
 * multiplied as they are stored with VNNI; without it (where a 16-bit sum of two products of
 * up to 255 * 127 would saturate) as signed values, by their magnitude and the activation
 * given their sign. */
static inline int32_t weight_offset(int bits) {
    return bits == 4 ? 8 : VNNI ? 128 : 0;
}

/* Activations quantized for a quantized matrix, token after token, each in blocks like the
 * weights' (padded with zero groups to whole blocks): int8 values, per group a float32 scale
 * and a start, -weight_offset * the sum of its values (what the offset adds to a product). */
struct quantized_rows {
    int8_t *values;
    float *scales;
    int32_t *starts;
};

/* x[n] (n a multiple of GROUP) quantized as token `token` of `rows`: per group, scale =
 * largest magnitude / 127, value = the nearest integer to x / scale. */
static void quantize_row(const float *x, struct quantized_rows rows, int64_t token, int64_t n,
                         int bits) {
    const int64_t groups = n / GROUP, padded = blocks_of(groups) * BLOCK_GROUPS;
    int8_t *values = rows.values + token * padded * GROUP;
    for (int64_t group = 0; group < padded; group++) {
        const float *in = x + group * GROUP;
        float largest = 0.0f;
        for (int i = 0; group < groups && i < GROUP; i++) {
            largest = fabsf(in[i]) > largest ? fabsf(in[i]) : largest;
        }
        const float scale = largest / 127.0f, inverse = largest > 0.0f ? 127.0f / largest : 0.0f;
        int8_t *block = values + group / BLOCK_GROUPS * BLOCK_VALUES + group % BLOCK_GROUPS * 4;
        int32_t sum = 0;
        for (int i = 0; i < GROUP; i++) {
            const int8_t value = group < groups ? (int8_t)lrintf(in[i] * inverse) : 0;
            block[i / 4 * BLOCK_GROUPS * 4 + i % 4] = value;
            sum += value;
        }
        rows.scales[token * padded + group] = scale;
        rows.starts[token * padded + group] = -weight_offset(bits) * sum;
    }
}

/* A matrix: float32 (bits 0, no scales) or quantized (bits 8 or 4). */
struct matrix {
    const void *weight;
    const uint16_t *scales;
    int bits;
};

/* How far ahead of a stream of weights the products ask for memory, at least. */
enum { PREFETCH_AHEAD = 2048 };

/* Rows of weights and of activations multiplied together in registers: each vector of weights
 * loaded once for TILE_TOKENS tokens, each vector of activations once for TILE_ROWS rows. With
 * VNNI one row: tiles of 4 computed faster from cache but streamed int8 weights from memory
 * slower, for a reason not found (BENCHMARKS.md, "after interleaving"). */
#ifdef __AVX512VL__
enum { TILE_ROWS = 1, TILE_TOKENS = 3 };
#else
enum { TILE_ROWS = 2, TILE_TOKENS = 3 };
#endif

/* 32 bytes (or lanes * 4 where a block has fewer groups) from q. */
static inline __m256i load_lanes(const uint8_t *q, int lanes) {
    if (lanes == BLOCK_GROUPS) {
        return _mm256_loadu_si256((const __m256i *)q);
    }
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_maskload_epi32((const int *)q, mask);
}

/* A block's float16 scales of one row as floats (zero past `lanes`). */
static inline __m256 load_scales(const uint16_t *scales, int lanes) {
    if (lanes == BLOCK_GROUPS) {
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)scales));
    }
    uint16_t some[BLOCK_GROUPS] = {0};
    for (int lane = 0; lane < lanes; lane++) {
        some[lane] = scales[lane];
    }
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)some));
}

/* sums += the products of a vector of stored weights with one of activations, per lane. */
static inline __m256i add_products(__m256i sums, __m256i weights, __m256i activations, int bits) {
    if (bits == 8 && !VNNI) {
        const __m256i signed_weights = _mm256_xor_si256(weights, _mm256_set1_epi8(-128));
        return multiply_add_bytes(sums, _mm256_abs_epi8(signed_weights),
                                  _mm256_sign_epi8(activations, signed_weights));
    }
    return multiply_add_bytes(sums, weights, activations);
}

/* out[r][t] = the dot products of `rows` consecutive rows of quantized m, from `row` on (each
 * `groups` groups long), with the activations of tokens `token` .. token + tokens - 1 of `a`:
 * per group the exact integer sum of its 32 products times both scales. `rows`, `tokens` and
 * m.bits are constants where it is inlined, so the tile's sums stay in registers. */
static inline __attribute__((always_inline)) void quantized_tile(
    struct matrix m, int64_t row, int rows, struct quantized_rows a, int64_t token, int tokens,
    int64_t groups, float out[TILE_ROWS][TILE_TOKENS]) {
    const int64_t block_bytes = BLOCK_GROUPS * group_bytes(m.bits);
    const int64_t row_bytes = groups * group_bytes(m.bits);
    const int64_t blocks = blocks_of(groups), padded = blocks * BLOCK_GROUPS;
    const int chunks = m.bits == 4 ? 4 : 8, vectors_per_chunk = m.bits == 4 ? 2 : 1;
    const uint8_t *weights = (const uint8_t *)m.weight + row * row_bytes;
    const uint16_t *scales = m.scales + row * groups;
    /* The tile's rows are one block of memory, read as `rows` streams too short for the
     * hardware's prefetchers: fetch what follows the tile, at least PREFETCH_AHEAD bytes
     * ahead, as one stream at the tile's pace. */
    const int64_t tile_bytes = rows * row_bytes;
    const uint8_t *ahead = weights + (tile_bytes > PREFETCH_AHEAD ? tile_bytes : PREFETCH_AHEAD);
    __m256 acc[TILE_ROWS][TILE_TOKENS];
    for (int r = 0; r < rows; r++) {
        for (int t = 0; t < tokens; t++) {
            acc[r][t] = _mm256_setzero_ps();
        }
    }
    for (int64_t block = 0; block < blocks; block++) {
        const int lanes = block < groups / BLOCK_GROUPS ? BLOCK_GROUPS
                                                        : (int)(groups % BLOCK_GROUPS);
        const int64_t at = block * BLOCK_GROUPS;
        /* The next tile's scales, a stream of their own. */
        _mm_prefetch((const char *)(scales + rows * groups + at * rows), _MM_HINT_T0);
        __m256i sums[TILE_ROWS][TILE_TOKENS];
        for (int t = 0; t < tokens; t++) {
            const __m256i start =
                _mm256_loadu_si256((const __m256i *)(a.starts + (token + t) * padded + at));
            for (int r = 0; r < rows; r++) {
                sums[r][t] = start;
            }
        }
        for (int chunk = 0; chunk < chunks; chunk++) {
            for (int half = 0; half < vectors_per_chunk; half++) {
                const int vector = chunk * vectors_per_chunk + half;
                __m256i x[TILE_TOKENS];
                for (int t = 0; t < tokens; t++) {
                    x[t] = _mm256_loadu_si256(
                        (const __m256i *)(a.values + ((token + t) * padded + at) * GROUP +
                                          vector * BLOCK_GROUPS * 4));
                }
                for (int r = 0; r < rows; r++) {
                    if (!half) {
                        _mm_prefetch((const char *)ahead + (block * chunks + chunk) * rows * 32 +
                                         r * 32,
                                     _MM_HINT_T0);
                    }
                    __m256i w = load_lanes(weights + r * row_bytes + block * block_bytes +
                                               chunk * lanes * 4,
                                           lanes);
                    if (m.bits == 4) {
                        w = _mm256_and_si256(half ? _mm256_srli_epi16(w, 4) : w,
                                             _mm256_set1_epi8(0x0F));
                    }
                    for (int t = 0; t < tokens; t++) {
                        sums[r][t] = add_products(sums[r][t], w, x[t], m.bits);
                    }
                }
            }
        }
        for (int r = 0; r < rows; r++) {
            const __m256 weight_scales = load_scales(scales + r * groups + at, lanes);
            for (int t = 0; t < tokens; t++) {
                __m256 both = _mm256_mul_ps(
                    weight_scales, _mm256_loadu_ps(a.scales + (token + t) * padded + at));
                /* Opaque to the compiler, so that -ffast-math cannot compute a token's sum in
                 * another order where the tile has other tokens (drafts are checked bit for
                 * bit against single steps). */
                __asm__("" : "+x"(both));
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r][t]), both, acc[r][t]);
                __asm__("" : "+x"(acc[r][t]));
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        for (int t = 0; t < tokens; t++) {
            out[r][t] = sum8(acc[r][t]);
        }
    }
}

/* What a row of a matrix-vector product does with its value: store it, through the exact or
 * the tanh GELU, add it, or (GATED) multiply it by silu of what is there. */
enum row_output { STORE, STORE_GELU, STORE_GELU_TANH, ADD, GATED };

/* The activations are never inlined: where the compiler sees several tokens' values together it
 * would take erf, tanh and exp from the vector math library for them, and the scalar one for a
 * token alone, which differ in the last bit (drafts are checked bit for bit against single
 * steps). */
__attribute__((noinline)) static float gelu(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__attribute__((noinline)) static float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

__attribute__((noinline)) static float silu(float x) {
    return x / (1.0f + expf(-x));
}

/* The value of one output of a product: bias added, then as `output` says. */
static inline void emit(float value, const float *bias, int64_t row, float *out,
                        enum row_output output) {
    value += bias ? bias[row] : 0.0f;
    switch (output) {
    case STORE_GELU:
        *out = gelu(value);
        break;
    case STORE_GELU_TANH:
        *out = gelu_tanh(value);
        break;
    case ADD:
        *out += value;
        break;
    case GATED:
        *out = silu(*out) * value;
        break;
    default:
        *out = value;
    }
}

/* Tile `rows` rows from `row` on of a quantized product for tokens token .. token + tokens - 1
 * (both constants where inlined), each value emitted. */
static inline __attribute__((always_inline)) void quantized_tile_emitted(
    struct matrix m, int64_t row, int rows, struct quantized_rows a, int64_t token, int tokens,
    int64_t groups, const float *bias, float *y, int64_t out_features, enum row_output output) {
    float out[TILE_ROWS][TILE_TOKENS];
    quantized_tile(m, row, rows, a, token, tokens, groups, out);
    for (int r = 0; r < rows; r++) {
        for (int t = 0; t < tokens; t++) {
            emit(out[r][t], bias, row + r, y + (token + t) * out_features + row + r, output);
        }
    }
}

/* One tile of `rows` rows (a constant where inlined) for every token, TILE_TOKENS at a time. */
static inline __attribute__((always_inline)) void quantized_tile_all_tokens(
    struct matrix m, int64_t row, int rows, struct quantized_rows a, int64_t tokens,
    int64_t groups, const float *bias, float *y, int64_t out_features, enum row_output output) {
    int64_t token = 0;
    for (; token + TILE_TOKENS <= tokens; token += TILE_TOKENS) {
        quantized_tile_emitted(m, row, rows, a, token, TILE_TOKENS, groups, bias, y,
                               out_features, output);
    }
    switch (tokens - token) {
    case 1:
        quantized_tile_emitted(m, row, rows, a, token, 1, groups, bias, y, out_features, output);
        break;
    case 2:
        quantized_tile_emitted(m, row, rows, a, token, 2, groups, bias, y, out_features, output);
        break;
    default:
        break;
    }
}

/* Rows begin .. end - 1 of a quantized product with m.bits a constant where inlined: one loop
 * of tiles in one function, so that no call or setup is paid a row. */
static inline __attribute__((always_inline)) void quantized_rows_of_bits(
    struct matrix m, int64_t begin, int64_t end, struct quantized_rows a, int64_t tokens,
    int64_t groups, const float *bias, float *y, int64_t out_features, enum row_output output) {
    int64_t row = begin;
    for (; row + TILE_ROWS <= end; row += TILE_ROWS) {
        quantized_tile_all_tokens(m, row, TILE_ROWS, a, tokens, groups, bias, y, out_features,
                                  output);
    }
    for (; row < end; row++) {
        quantized_tile_all_tokens(m, row, 1, a, tokens, groups, bias, y, out_features, output);
    }
}

static void quantized_product_rows(struct matrix m, int64_t begin, int64_t end,
                                   struct quantized_rows a, int64_t tokens, int64_t groups,
                                   const float *bias, float *y, int64_t out_features,
                                   enum row_output output) {
    struct matrix int4 = m, int8 = m;
    int4.bits = 4;
    int8.bits = 8;
    if (m.bits == 4) {
        quantized_rows_of_bits(int4, begin, end, a, tokens, groups, bias, y, out_features, output);
    } else {
        quantized_rows_of_bits(int8, begin, end, a, tokens, groups, bias, y, out_features, output);
    }
}

/* Each of `tokens` rows of x[tokens, n] quantized into `rows` for matrices of `bits` (0: float32
 * matrices, which multiply x itself: nothing to do). */
static void quantize_rows(const float *x, struct quantized_rows rows, int64_t tokens, int64_t n,
                          int bits) {
    for (int64_t t = 0; bits && t < tokens; t++) {
        quantize_row(x + t * n, rows, t, n, bits);
    }
}

/* y[t] = m.weight[out_features, in_features] @ x[t] + bias (bias may be NULL) for each of
 * `tokens` rows of x ([tokens, in_features]) and y ([tokens, out_features]); the weight's rows
 * are shared among the threads of the enclosing parallel region as schedule(static) would share
 * them (the same rows to the same thread for the same out_features), each read from memory
 * once, with no barrier at the end. STORE_GELU applies the exact GELU, ADD adds to y. A
 * quantized matrix has in_features / GROUP scales a row and multiplies `quantized` (x after
 * quantize_rows), TILE_ROWS rows at a time. */
static void product(struct matrix m, const float *x, struct quantized_rows quantized,
                    const float *bias, float *y, int64_t out_features, int64_t in_features,
                    int64_t tokens, enum row_output output) {
    if (m.bits) {
        const int64_t tiles = (out_features + TILE_ROWS - 1) / TILE_ROWS;
        const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
        const int64_t each = tiles / threads, more = tiles % threads;
        const int64_t first = thread * each + (thread < more ? thread : more);
        const int64_t begin = first * TILE_ROWS;
        int64_t end = (first + each + (thread < more)) * TILE_ROWS;
        end = end < out_features ? end : out_features;
        quantized_product_rows(m, begin, end, quantized, tokens, in_features / GROUP, bias, y,
                               out_features, output);
        return;
    }
#pragma omp for schedule(static) nowait
    for (int64_t row = 0; row < out_features; row++) {
        const float *stored = (const float *)m.weight + row * in_features;
        for (int64_t t = 0; t < tokens; t++) {
            emit(dot(stored, x + t * in_features, in_features), bias, row,
                 y + t * out_features + row, output);
        }
    }
}

/* Floats of the room quantized_rows_in carves for `tokens` tokens of n activations. */
static int64_t quantized_rows_floats(int64_t tokens, int64_t n) {
    const int64_t padded = tokens * blocks_of(n / GROUP) * BLOCK_GROUPS;
    return 2 * padded + padded * GROUP / 4;
}

/* quantized_rows for `tokens` tokens of n activations in `room`. */
static struct quantized_rows quantized_rows_in(float *room, int64_t tokens, int64_t n) {
    const int64_t padded = tokens * blocks_of(n / GROUP) * BLOCK_GROUPS;
    return (struct quantized_rows){(int8_t *)(room + 2 * padded), room,
                                   (int32_t *)(room + padded)};
}

int64_t pcls_gemm_workspace(int64_t tokens, int64_t in_features) {
    return quantized_rows_floats(tokens, in_features);
}

/* product for `tokens` rows of x, in a parallel region of its own; `workspace` holds
 * pcls_gemm_workspace floats. */
void pcls_gemm(const void *weight, const uint16_t *scales, int bits, const float *x,
               const float *bias, float *y, int64_t out_features, int64_t in_features,
               int64_t tokens, float *workspace, int threads) {
    const struct matrix m = {weight, scales, bits};
    const struct quantized_rows quantized = quantized_rows_in(workspace, tokens, in_features);
    quantize_rows(x, quantized, tokens, in_features, m.bits);
#pragma omp parallel num_threads(threads)
    product(m, x, quantized, bias, y, out_features, in_features, tokens, STORE);
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

/* 8 cached keys or values from `at` as floats. */
static inline __m256 load8(const void *rows, int64_t at, int half) {
    if (half) {
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)rows + at)));
    }
    return _mm256_loadu_ps((const float *)rows + at);
}

static inline float load1(const void *rows, int64_t at, int half) {
    return half ? _cvtsh_ss(((const uint16_t *)rows)[at]) : ((const float *)rows)[at];
}

static inline void store1(void *rows, int64_t at, float value, int half) {
    if (half) {
        ((uint16_t *)rows)[at] = _cvtss_sh(value, _MM_FROUND_TO_NEAREST_INT);
    } else {
        ((float *)rows)[at] = value;
    }
}

/* The dot product of q[dim] with a cached row. */
static float dot_cached(const float *q, const void *rows, int64_t at, int64_t dim, int half) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= dim; i += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(rows, at + i, half), acc);
    }
    float total = sum8(acc);
    for (; i < dim; i++) {
        total += q[i] * load1(rows, at + i, half);
    }
    return total;
}

/* Softmax attention of one query q[dim] over `length` cached rows of k and v; writes o[dim],
 * uses s. */
static void attend_head_any(const float *q, const void *k, const void *v, float *o, float *s,
                            int64_t length, int64_t dim, float scale, int half) {
    float largest = dot_cached(q, k, 0, dim, half) * scale;
    for (int64_t position = 0; position < length; position++) {
        s[position] = dot_cached(q, k, position * dim, dim, half) * scale;
        largest = s[position] > largest ? s[position] : largest;
    }
    float total = exponentiate(s, length, largest);
    for (int64_t i = 0; i < dim; i++) {
        o[i] = 0.0f;
    }
    for (int64_t position = 0; position < length; position++) {
        const __m256 weight = _mm256_set1_ps(s[position] / total);
        int64_t i = 0;
        for (; i + 8 <= dim; i += 8) {
            const __m256 row = load8(v, position * dim + i, half);
            _mm256_storeu_ps(o + i, _mm256_fmadd_ps(weight, row, _mm256_loadu_ps(o + i)));
        }
        for (; i < dim; i++) {
            o[i] += s[position] / total * load1(v, position * dim + i, half);
        }
    }
}

/* The sums of 8 vectors: [sum(a[0]), ..., sum(a[7])]. */
static inline __m256 sums_of_8(const __m256 *a) {
    const __m256 h0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 h4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                         _mm256_permute2f128_ps(h0123, h4567, 0x31));
}

static inline float largest8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* The attention's vectors: 16 floats where the build has AVX-512, else 8. */
#ifdef __AVX512F__
enum { LANES = 16 };
typedef __m512 lanes;
static inline lanes load_lanes_of(const void *rows, int64_t at, int half) {
    if (half) {
        return _mm512_cvtph_ps(
            _mm256_loadu_si256((const __m256i *)((const uint16_t *)rows + at)));
    }
    return _mm512_loadu_ps((const float *)rows + at);
}
/* The 8 sums of v's two halves. */
static inline __m256 folded(lanes v) {
    const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return _mm256_add_ps(_mm512_castps512_ps256(v), high);
}
#define LANES_FMA _mm512_fmadd_ps
#define LANES_MUL _mm512_mul_ps
#define LANES_ADD _mm512_add_ps
#define LANES_SET _mm512_set1_ps
#define LANES_LOAD _mm512_loadu_ps
#define LANES_STORE _mm512_storeu_ps
#else
enum { LANES = 8 };
typedef __m256 lanes;
static inline lanes load_lanes_of(const void *rows, int64_t at, int half) {
    return load8(rows, at, half);
}
static inline __m256 folded(lanes v) { return v; }
#define LANES_FMA _mm256_fmadd_ps
#define LANES_MUL _mm256_mul_ps
#define LANES_ADD _mm256_add_ps
#define LANES_SET _mm256_set1_ps
#define LANES_LOAD _mm256_loadu_ps
#define LANES_STORE _mm256_storeu_ps
#endif

enum { MAX_PARTS = 128 / LANES, KEYS_AHEAD_BYTES = 2048 };

/* The dot product of the query's `parts` vectors with the cached row at `row`, folded to 8. */
static inline __attribute__((always_inline)) __m256 dot_row(const lanes *query, const void *k,
                                                            int64_t row, int parts, int half) {
    lanes sum = LANES_MUL(query[0], load_lanes_of(k, row, half));
    for (int part = 1; part < parts; part++) {
        sum = LANES_FMA(query[part], load_lanes_of(k, row + LANES * part, half), sum);
    }
    return folded(sum);
}

/* attend_head_any for a dim of `parts` vectors, known when this is inlined: the query and the
 * output stay in registers while the keys and values stream past. Eight positions' scores are
 * summed together, and while the keys stream in, the values are fetched into the cache ahead of
 * their own pass: one stream at a time read from memory left it idle between requests. */
static inline __attribute__((always_inline)) void attend_head_parts(
    const float *q, const void *k, const void *v, float *o, float *s, int64_t length,
    const int parts, float scale, const int half) {
    const int64_t dim = (int64_t)LANES * parts, row_bytes = dim * (half ? 2 : 4);
    lanes query[MAX_PARTS], out[MAX_PARTS], odd_out[MAX_PARTS];
    for (int part = 0; part < parts; part++) {
        query[part] = LANES_MUL(LANES_LOAD(q + LANES * part), LANES_SET(scale));
        out[part] = odd_out[part] = LANES_SET(0.0f);
    }
    __m256 most = _mm256_set1_ps(-FLT_MAX);
    int64_t position = 0;
    for (; position + 8 <= length; position += 8) {
        const char *keys = (const char *)k + position * row_bytes;
        const char *values = (const char *)v + position * row_bytes;
        for (int64_t line = 0; line < 8 * row_bytes; line += 64) {
            _mm_prefetch(keys + KEYS_AHEAD_BYTES + line, _MM_HINT_T0);
            _mm_prefetch(values + line, _MM_HINT_T1);
        }
        __m256 dots[8];
        for (int j = 0; j < 8; j++) {
            dots[j] = dot_row(query, k, (position + j) * dim, parts, half);
        }
        const __m256 scores = sums_of_8(dots);
        _mm256_storeu_ps(s + position, scores);
        most = _mm256_max_ps(most, scores);
    }
    float largest = largest8(most);
    for (; position < length; position++) {
        s[position] = sum8(dot_row(query, k, position * dim, parts, half));
        largest = s[position] > largest ? s[position] : largest;
    }
    float total = exponentiate(s, length, largest);
    for (position = 0; position + 2 <= length; position += 2) {
        const lanes even_weight = LANES_SET(s[position]), odd_weight = LANES_SET(s[position + 1]);
        for (int part = 0; part < parts; part++) {
            const int64_t at = position * dim + LANES * part;
            out[part] = LANES_FMA(even_weight, load_lanes_of(v, at, half), out[part]);
            odd_out[part] = LANES_FMA(odd_weight, load_lanes_of(v, at + dim, half), odd_out[part]);
        }
    }
    if (position < length) {
        const lanes weight = LANES_SET(s[position]);
        for (int part = 0; part < parts; part++) {
            out[part] = LANES_FMA(weight, load_lanes_of(v, position * dim + LANES * part, half),
                                  out[part]);
        }
    }
    const lanes inverse = LANES_SET(1.0f / total);
    for (int part = 0; part < parts; part++) {
        LANES_STORE(o + LANES * part, LANES_MUL(LANES_ADD(out[part], odd_out[part]), inverse));
    }
}

/* attend_head_parts with its dim and the cache's type known when inlined. */
#define ATTEND_PARTS(dim)                                                                  \
    (half ? attend_head_parts(q, k, v, o, s, length, (dim) / LANES, scale, 1)              \
          : attend_head_parts(q, k, v, o, s, length, (dim) / LANES, scale, 0))

static void attend_head(const float *q, const void *k, const void *v, float *o, float *s,
                        int64_t length, int64_t dim, float scale, int half) {
    switch (dim) {
    case 64:
        ATTEND_PARTS(64);
        break;
    case 80:
        ATTEND_PARTS(80);
        break;
    case 128:
        ATTEND_PARTS(128);
        break;
    default:
        attend_head_any(q, k, v, o, s, length, dim, scale, half);
    }
}

/* Attention of one query per head over `length` cached positions.
 * query: [heads, dim]; keys, values: rows of `dim` values (float16 if `half`, else float32),
 * `head_stride` values between heads; out: [heads, dim]; scores: scratch of heads * length
 * floats. */
void pcls_attend(const float *query, const void *keys, const void *values, float *out,
                 float *scores, int64_t heads, int64_t length, int64_t dim, int64_t head_stride,
                 int half, float scale, int threads) {
    const int64_t stride_bytes = head_stride * (half ? 2 : 4);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t head = 0; head < heads; head++) {
        attend_head(query + head * dim, (const char *)keys + head * stride_bytes,
                    (const char *)values + head * stride_bytes, out + head * dim,
                    scores + head * length, length, dim, scale, half);
    }
}

/* The rotary embedding (GPT-NeoX's and Llama's) of x[dim] in place on its first rotary_dim values:
 * x * cos + rotate_half(x) * sin, rotate_half(x) = (-x[half:rotary_dim], x[:half]). */
static void rotate(float *x, const float *cos, const float *sin, int64_t rotary_dim) {
    int64_t half = rotary_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        float first = x[i], second = x[i + half];
        x[i] = first * cos[i] - second * sin[i];
        x[i + half] = second * cos[i + half] + first * sin[i + half];
    }
}

/* A token's key and value of one head written at row `position` of the head's cache rows
 * (float16 ones if `half`). */
static void cache_row(const float *k, const float *v, void *key_rows, void *value_rows,
                      int64_t position, int64_t dim, int half) {
    for (int64_t i = 0; i < dim; i++) {
        store1(key_rows, position * dim + i, k[i], half);
        store1(value_rows, position * dim + i, v[i], half);
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

/* Llama's RMSNorm: x / sqrt(mean(x^2) + eps) * weight. */
static void rms_norm(const float *x, const float *weight, float *out, int64_t n, float eps) {
    double squares = 0.0;
    for (int64_t i = 0; i < n; i++) {
        squares += (double)x[i] * x[i];
    }
    float inverse = 1.0f / sqrtf((float)(squares / n) + eps);
    for (int64_t i = 0; i < n; i++) {
        out[i] = x[i] * inverse * weight[i];
    }
}

/* The normalization before attention, before the MLP and before the LM head. */
enum norm { LAYER_NORM, RMS_NORM };

/* The MLP: act(fc_in x) through fc_out, or (SILU_GATED) silu(gate x) * (fc_in x) through it. */
enum activation { GELU_EXACT, GELU_TANH, SILU_GATED };

/* The shape of a decoder model and of one step; mirrored by DecoderShape in cpu_kernels.py.
 * kv_heads divides heads (grouped-query attention); fused_qkv: one matrix whose output holds,
 * per head, its query, key and value (GPT-NeoX), else three matrices (Llama's q, k and v). */
struct decoder_shape {
    int64_t layers, hidden, heads, kv_heads, head_dim, intermediate, rotary_dim, vocab, position;
    float eps, scale;
    int64_t parallel_residual, bits, kv_half, norm, activation, fused_qkv;
};

/* Each layer's pointers, in this order, in `layer_pointers` (the fused query-key-value matrix
 * in QUERY_*; GATE_* only with SILU_GATED). */
enum layer_pointer {
    INPUT_NORM_WEIGHT, INPUT_NORM_BIAS, QUERY_WEIGHT, QUERY_BIAS, KEY_WEIGHT, KEY_BIAS,
    VALUE_WEIGHT, VALUE_BIAS, DENSE_WEIGHT, DENSE_BIAS, POST_NORM_WEIGHT, POST_NORM_BIAS,
    FC_IN_WEIGHT, FC_IN_BIAS, GATE_WEIGHT, GATE_BIAS, FC_OUT_WEIGHT, FC_OUT_BIAS,
    QUERY_SCALES, KEY_SCALES, VALUE_SCALES, DENSE_SCALES, FC_IN_SCALES, GATE_SCALES,
    FC_OUT_SCALES, KEYS, VALUES, LAYER_POINTERS
};

/* A matrix of the model: quantized with `bits` where it has scales. */
static inline struct matrix matrix(const void *weight, const uint16_t *scales, int bits) {
    return (struct matrix){weight, scales, scales ? bits : 0};
}

/* Floats of the queries, keys and values of `tokens` tokens. */
static int64_t qkv_floats(const struct decoder_shape *shape, int64_t tokens) {
    return tokens * (shape->heads + 2 * shape->kv_heads) * shape->head_dim;
}

/* Where token t's query of head `head` (which = 0), key (1) or value (2) of kv head `head` is
 * in `qkv`: per token and head [query | key | value] if fused, else all the queries, then all
 * the keys, then all the values, token by token. */
static float *qkv_part(const struct decoder_shape *shape, float *qkv, int64_t tokens, int64_t t,
                       int64_t head, int which) {
    const int64_t dim = shape->head_dim;
    if (shape->fused_qkv) {
        return qkv + (t * shape->heads + head) * 3 * dim + which * dim;
    }
    const int64_t queries = tokens * shape->heads * dim, keys = tokens * shape->kv_heads * dim;
    const int64_t width = which == 0 ? shape->heads * dim : shape->kv_heads * dim;
    return qkv + (which > 0) * queries + (which > 1) * keys + t * width + head * dim;
}

static void normalize(const struct decoder_shape *shape, const float *x, const void *weight,
                      const void *bias, float *out) {
    if (shape->norm == RMS_NORM) {
        rms_norm(x, weight, out, shape->hidden, shape->eps);
    } else {
        layer_norm(x, weight, bias, out, shape->hidden, shape->eps);
    }
}

/* Workspace floats pcls_decoder_step needs for `tokens` new tokens. */
int64_t pcls_decoder_workspace(const struct decoder_shape *shape, int64_t tokens) {
    const int64_t attended = shape->heads * shape->head_dim;
    int64_t widest = shape->intermediate > shape->hidden ? shape->intermediate : shape->hidden;
    widest = attended > widest ? attended : widest;
    return tokens * (3 * shape->hidden + attended + shape->intermediate) +
           qkv_floats(shape, tokens) + shape->heads * tokens * (shape->position + tokens) +
           quantized_rows_floats(tokens, widest) + quantized_rows_floats(tokens, shape->hidden);
}

/* The rotary embedding of token t's query and key of head `head` (which writes the key and value
 * into the cache rows of kv head `head`, if there is one). */
static void rotate_and_cache(const struct decoder_shape *shape, float *qkv, int64_t tokens,
                             int64_t t, int64_t head, const float *cos, const float *sin,
                             char *keys, char *values, int64_t stride) {
    const int64_t rotary_dim = shape->rotary_dim;
    const float *cos_t = cos + t * rotary_dim, *sin_t = sin + t * rotary_dim;
    rotate(qkv_part(shape, qkv, tokens, t, head, 0), cos_t, sin_t, rotary_dim);
    if (head < shape->kv_heads) {
        float *key = qkv_part(shape, qkv, tokens, t, head, 1);
        rotate(key, cos_t, sin_t, rotary_dim);
        cache_row(key, qkv_part(shape, qkv, tokens, t, head, 2), keys + head * stride,
                  values + head * stride, shape->position + t, shape->head_dim,
                  (int)shape->kv_half);
    }
}

/* Token t's attention for head `head` over its key-value head's cache rows, into its part of
 * `attended` ([tokens, heads * head_dim]); its scores in `scores` ([heads, tokens, position +
 * tokens]). */
static void attend_token(const struct decoder_shape *shape, float *qkv, int64_t tokens,
                         int64_t t, int64_t head, const char *keys, const char *values,
                         int64_t stride, float *attended, float *scores) {
    const int64_t dim = shape->head_dim, kv_head = head / (shape->heads / shape->kv_heads);
    attend_head(qkv_part(shape, qkv, tokens, t, head, 0), keys + kv_head * stride,
                values + kv_head * stride, attended + (t * shape->heads + head) * dim,
                scores + (head * tokens + t) * (shape->position + tokens), shape->position + t + 1,
                dim, shape->scale, (int)shape->kv_half);
}

/* `tokens` new tokens through a whole decoder model (GPT-NeoX, Llama, Qwen2, Starcoder2: the
 * shape says which norms, attention and MLP), in one parallel region, each weight matrix read
 * once: token t's input embedding is row ids[t] of `embeddings` [vocab rows, hidden]; cos and
 * sin are the tokens' rotary tables [tokens, rotary_dim]; each layer's caches are
 * [kv_heads][head_strides[layer]] values (float16 if shape->kv_half, else float32) with room for
 * rows position .. position + tokens - 1, which are written, and token t attends to rows 0 ..
 * position + t; logits[tokens, vocab] = head_weight @ final_norm(hidden) + head_bias (NULL
 * biases are zero). A matrix whose scales are NULL is float32, else quantized with shape->bits
 * (product). The threads meet as seldom as
 * what they share allows: with a parallel residual both norms of a layer come first, the
 * attention's projection and the MLP's first matrices run without a barrier between them, and
 * with as many key-value heads as heads each head's rotation, cache rows and attention are one
 * thread's. */
void pcls_decoder_step(const struct decoder_shape *shape, int64_t tokens,
                       const float *embeddings, const int64_t *ids, void *const *layer_pointers,
                       const int64_t *head_strides, const float *cos, const float *sin,
                       const float *final_norm_weight, const float *final_norm_bias,
                       const void *head_weight, const uint16_t *head_scales,
                       const float *head_bias, float *workspace, float *logits, int threads) {
    const int64_t hidden = shape->hidden, heads = shape->heads, dim = shape->head_dim;
    const int64_t kv_heads = shape->kv_heads, group = heads / kv_heads;
    const int64_t inter = shape->intermediate;
    const int64_t attended_width = heads * dim, kv_width = kv_heads * dim;
    const int64_t position = shape->position, span = position + tokens;
    const int bits = (int)shape->bits, kv_half = (int)shape->kv_half;
    float *x = workspace, *normed = x + tokens * hidden, *post_normed = normed + tokens * hidden;
    float *attended = post_normed + tokens * hidden, *expanded = attended + tokens * attended_width;
    float *qkv = expanded + tokens * inter, *scores = qkv + qkv_floats(shape, tokens);
    int64_t widest = inter > hidden ? inter : hidden;
    widest = attended_width > widest ? attended_width : widest;
    float *room = scores + heads * tokens * span;
    /* The quantized input of the next product, and (post_normed quantized) the MLP's. */
    const struct quantized_rows next = quantized_rows_in(room, tokens, widest);
    const struct quantized_rows mlp_input =
        quantized_rows_in(room + quantized_rows_floats(tokens, widest), tokens, hidden);
    const enum row_output activated = shape->activation == GELU_EXACT ? STORE_GELU
                                      : shape->activation == GELU_TANH ? STORE_GELU_TANH
                                                                       : STORE;
    const int parallel = (int)shape->parallel_residual;
    for (int64_t t = 0; t < tokens; t++) {
        memcpy(x + t * hidden, embeddings + ids[t] * hidden, (size_t)hidden * sizeof(float));
    }
#pragma omp parallel num_threads(threads)
    {
        for (int64_t layer = 0; layer < shape->layers; layer++) {
            void *const *p = layer_pointers + layer * LAYER_POINTERS;
            const int64_t cached = kv_half ? 2 : 4, stride = head_strides[layer] * cached;
            char *keys = p[KEYS], *values = p[VALUES];
#pragma omp single
            {
                for (int64_t t = 0; t < tokens; t++) {
                    normalize(shape, x + t * hidden, p[INPUT_NORM_WEIGHT], p[INPUT_NORM_BIAS],
                              normed + t * hidden);
                    if (parallel) {
                        normalize(shape, x + t * hidden, p[POST_NORM_WEIGHT], p[POST_NORM_BIAS],
                                  post_normed + t * hidden);
                    }
                }
                quantize_rows(normed, next, tokens, hidden, bits);
                if (parallel) {
                    quantize_rows(post_normed, mlp_input, tokens, hidden, bits);
                }
            }
            if (shape->fused_qkv) {
                product(matrix(p[QUERY_WEIGHT], p[QUERY_SCALES], bits), normed, next,
                        p[QUERY_BIAS], qkv, 3 * attended_width, hidden, tokens, STORE);
            } else {
                product(matrix(p[QUERY_WEIGHT], p[QUERY_SCALES], bits), normed, next,
                        p[QUERY_BIAS], qkv_part(shape, qkv, tokens, 0, 0, 0), attended_width,
                        hidden, tokens, STORE);
                product(matrix(p[KEY_WEIGHT], p[KEY_SCALES], bits), normed, next, p[KEY_BIAS],
                        qkv_part(shape, qkv, tokens, 0, 0, 1), kv_width, hidden, tokens, STORE);
                product(matrix(p[VALUE_WEIGHT], p[VALUE_SCALES], bits), normed, next,
                        p[VALUE_BIAS], qkv_part(shape, qkv, tokens, 0, 0, 2), kv_width, hidden,
                        tokens, STORE);
            }
#pragma omp barrier
            if (group == 1) {
#pragma omp for schedule(static)
                for (int64_t head = 0; head < heads; head++) {
                    for (int64_t t = 0; t < tokens; t++) {
                        rotate_and_cache(shape, qkv, tokens, t, head, cos, sin, keys, values,
                                         stride);
                    }
                    for (int64_t t = 0; t < tokens; t++) {
                        attend_token(shape, qkv, tokens, t, head, keys, values, stride, attended,
                                     scores);
                    }
                }
            } else {
#pragma omp for schedule(static) collapse(2)
                for (int64_t head = 0; head < heads; head++) {
                    for (int64_t t = 0; t < tokens; t++) {
                        rotate_and_cache(shape, qkv, tokens, t, head, cos, sin, keys, values,
                                         stride);
                    }
                }
#pragma omp for schedule(static) collapse(2)
                for (int64_t head = 0; head < heads; head++) {
                    for (int64_t t = 0; t < tokens; t++) {
                        attend_token(shape, qkv, tokens, t, head, keys, values, stride, attended,
                                     scores);
                    }
                }
            }
#pragma omp single
            quantize_rows(attended, next, tokens, attended_width, bits);
            product(matrix(p[DENSE_WEIGHT], p[DENSE_SCALES], bits), attended, next,
                    p[DENSE_BIAS], x, hidden, attended_width, tokens, ADD);
            if (!parallel) {
#pragma omp barrier
#pragma omp single
                {
                    for (int64_t t = 0; t < tokens; t++) {
                        normalize(shape, x + t * hidden, p[POST_NORM_WEIGHT], p[POST_NORM_BIAS],
                                  post_normed + t * hidden);
                    }
                    quantize_rows(post_normed, mlp_input, tokens, hidden, bits);
                }
            }
            /* The gate's rows and fc_in's are shared out alike: each thread multiplies its
             * rows of the gate by those of fc_in. */
            if (shape->activation == SILU_GATED) {
                product(matrix(p[GATE_WEIGHT], p[GATE_SCALES], bits), post_normed, mlp_input,
                        p[GATE_BIAS], expanded, inter, hidden, tokens, STORE);
            }
            product(matrix(p[FC_IN_WEIGHT], p[FC_IN_SCALES], bits), post_normed, mlp_input,
                    p[FC_IN_BIAS], expanded, inter, hidden, tokens,
                    shape->activation == SILU_GATED ? GATED : activated);
#pragma omp barrier
#pragma omp single
            quantize_rows(expanded, next, tokens, inter, bits);
            product(matrix(p[FC_OUT_WEIGHT], p[FC_OUT_SCALES], bits), expanded, next,
                    p[FC_OUT_BIAS], x, hidden, inter, tokens, ADD);
#pragma omp barrier
        }
#pragma omp single
        {
            for (int64_t t = 0; t < tokens; t++) {
                normalize(shape, x + t * hidden, final_norm_weight, final_norm_bias,
                          normed + t * hidden);
            }
            quantize_rows(normed, next, tokens, hidden, bits);
        }
        product(matrix(head_weight, head_scales, bits), normed, next, head_bias, logits,
                shape->vocab, hidden, tokens, STORE);
    }
}
