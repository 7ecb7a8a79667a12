/*
 * tensorcodec._native: the blockwise 8-bit and 4-bit (NF4 / FP4) kernels of tensorcodec.kernels in C.
 *
 * numpy runs each step of a block (absmax, scale, grid index, look-up, pack) as its own pass over
 * memory; here each block is done in one pass while it sits in L1. Only the CPython C API and the
 * buffer protocol are used, so building needs nothing but a C compiler, and kernels.py falls back
 * to its numpy code when this module is missing.
 *
 * The results are the numpy kernels' bit for bit: the same float32 operations in the same order
 * (built with -ffp-contract=off and without -ffast-math), float16 rounded as numpy rounds it and
 * bfloat16 as ml_dtypes does. The look-up tables come from kernels.py, which stays their one
 * definition. Every size is checked before memory is touched, and the GIL is released around the
 * loops so that kernels.py's threads run chunks in parallel. Buffers are read and written through
 * memcpy, so they need no alignment.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_SHUFFLE_PATH 1 /* SSSE3 byte shuffles for 4-bit look-ups, chosen at run time (the build stays baseline) */
#endif

#if defined(_MSC_VER)
#define INLINE static __forceinline
#else
#define INLINE static inline __attribute__((always_inline)) /* one specialised copy per element kind */
#endif

enum { F32 = 0, F16 = 1, BF16 = 2 };       /* element kinds, as kernels.py numbers them */
static const Py_ssize_t ITEMSIZE[3] = {4, 2, 2};
#define PIECE 512                          /* elements staged on the stack at a time (even) */
#define GRID4_MIN 32771                    /* grid cells of scaled values in [-1, 1]: up to 1 * 16384 + 16386 */

/* ------------------------------------------------------------------------------------------ scalars */

INLINE float f32_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
INLINE uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
INLINE uint32_t ld32(const unsigned char *p, Py_ssize_t i) { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
INLINE uint16_t ld16(const unsigned char *p, Py_ssize_t i) { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
INLINE float ldf(const unsigned char *p, Py_ssize_t i) { return f32_of(ld32(p, i)); }
INLINE void stf(unsigned char *p, Py_ssize_t i, float v) { memcpy(p + 4 * i, &v, 4); }

/* Exact; a NaN keeps its payload, unquieted, as numpy's conversion does. */
INLINE float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu;
    uint32_t special = (em << 13) | 0x7f800000u;  /* inf, NaN */
    uint32_t normal = (em << 13) + 0x38000000u;   /* exponent rebiased by 127 - 15 */
    uint32_t small = bits_of((float)(int32_t)em * 0x1p-24f);  /* zero and subnormals */
    return f32_of(sign | (em >= 0x7c00u ? special : em >= 0x0400u ? normal : small));
}

/* Round to nearest even, as numpy does; a NaN keeps the top bits of its payload (never becoming inf).
 * Every case is computed and one selected, so that loops of it vectorize. */
INLINE uint16_t f32_to_f16(float f)
{
    uint32_t x = bits_of(f), a = x & 0x7fffffffu;
    uint32_t m = (a & 0x7fffffu) >> 13;
    uint32_t nan = 0x7c00u | (m ? m : 1u);
    uint32_t normal = (a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u) >> 13;
    float v = f32_of(a < 0x38800000u ? a : 0) * 0x1p24f; /* in units of the smallest subnormal: exact */
    v = (v + 0x1p23f) - 0x1p23f;                        /* to an integer, ties to even */
    uint32_t small = (uint32_t)(int32_t)v;
    uint32_t h = a > 0x7f800000u ? nan : a >= 0x477ff000u ? 0x7c00u /* inf, or rounds past 65504 */
               : a >= 0x38800000u ? normal : small;
    return (uint16_t)(((x >> 16) & 0x8000u) | h);
}

/* Round to nearest even, as ml_dtypes does; a NaN becomes the quiet NaN of its sign. */
INLINE uint16_t f32_to_bf16(float f)
{
    uint32_t x = bits_of(f);
    uint32_t nan = ((x >> 16) & 0x8000u) | 0x7fc0u, rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded); /* a select, so that loops vectorize */
}

INLINE float load(const unsigned char *p, Py_ssize_t i, int kind)
{
    if (kind == F32)
        return ldf(p, i);
    if (kind == BF16)
        return f32_of((uint32_t)ld16(p, i) << 16);
    return f16_to_f32(ld16(p, i));
}

INLINE void store(unsigned char *p, Py_ssize_t i, float v, int kind)
{
    if (kind == F32) {
        stf(p, i, v);
    } else {
        uint16_t h = kind == BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        memcpy(p + 2 * i, &h, 2);
    }
}

/* Largest |x| of elements [lo, hi), by an integer max of the magnitude bits: NaN patterns sort above
 * inf, so a NaN propagates (torch's max, for 4-bit) unless ignore_nan (bitsandbytes' 8-bit kernel). */
INLINE float block_absmax(const unsigned char *p, Py_ssize_t lo, Py_ssize_t hi, int kind, int ignore_nan)
{
    /* Magnitudes fit the signed types, whose compares and max SSE2 vectorizes. */
    if (kind == F32) {
        int32_t m = 0;
        for (Py_ssize_t i = lo; i < hi; i++) {
            int32_t a = (int32_t)(ld32(p, i) & 0x7fffffffu);
            if (ignore_nan)
                a = a > 0x7f800000 ? 0 : a;
            m = a > m ? a : m;
        }
        return f32_of((uint32_t)m);
    }
    int16_t inf = kind == BF16 ? 0x7f80 : 0x7c00, m = 0;
    for (Py_ssize_t i = lo; i < hi; i++) {
        int16_t a = (int16_t)(ld16(p, i) & 0x7fffu);
        if (ignore_nan)
            a = a > inf ? 0 : a;
        m = a > m ? a : m;
    }
    return kind == BF16 ? f32_of((uint32_t)m << 16) : f16_to_f32((uint16_t)m);
}

static Py_ssize_t nblocks_of(Py_ssize_t n, Py_ssize_t bs) { return n / bs + (n % bs != 0); }

/* ------------------------------------------------------------------------------------------ 8-bit */

/* The 65536-entry look-up's index of a scaled value: NaN as -1, clamped to [-1, 1], then
 * (c + 1) * 32767.5 + 0.5 truncated, every step rounded in float32. */
INLINE uint16_t lut_index(float c)
{
    c = c != c ? -1.0f : c;
    c = c < -1.0f ? -1.0f : c;
    c = c > 1.0f ? 1.0f : c;
    float v = c + 1.0f;
    v = v * 32767.5f;
    v = v + 0.5f;
    return (uint16_t)(int32_t)v;
}

INLINE void q8_impl(const unsigned char *src, int kind, Py_ssize_t n, Py_ssize_t bs, Py_ssize_t b0, Py_ssize_t b1,
                    const uint8_t *lut, uint8_t *codes, unsigned char *absmax)
{
    uint16_t idx[PIECE];
    for (Py_ssize_t b = b0; b < b1; b++) {
        Py_ssize_t lo = b * bs, hi = n - lo < bs ? n : lo + bs;
        float am = block_absmax(src, lo, hi, kind, 1);
        stf(absmax, b, am);
        if (am == 0.0f) { /* an all-zero (or all-NaN) block: codes 0 */
            memset(codes + lo, 0, (size_t)(hi - lo));
            continue;
        }
        float inv = 1.0f / am;
        for (Py_ssize_t i0 = lo; i0 < hi; i0 += PIECE) {
            int m = (int)(hi - i0 < PIECE ? hi - i0 : PIECE);
            for (int j = 0; j < m; j++)
                idx[j] = lut_index(load(src, i0 + j, kind) * inv);
            for (int j = 0; j < m; j++)
                codes[i0 + j] = lut[idx[j]];
        }
    }
}

static void q8_run(const unsigned char *src, int kind, Py_ssize_t n, Py_ssize_t bs, Py_ssize_t b0, Py_ssize_t b1,
                   const uint8_t *lut, uint8_t *codes, unsigned char *absmax)
{
    switch (kind) { /* one specialised copy of the loops per kind */
    case F32: q8_impl(src, F32, n, bs, b0, b1, lut, codes, absmax); break;
    case F16: q8_impl(src, F16, n, bs, b0, b1, lut, codes, absmax); break;
    default: q8_impl(src, BF16, n, bs, b0, b1, lut, codes, absmax); break;
    }
}

/* The value of each code in a block, stored in the output's format: a table the block's codes index. */
INLINE void block_table(const float *values, int count, float a, int kind, float *tf, uint16_t *th)
{
    for (int k = 0; k < count; k++) {
        tf[k] = values[k] * a; /* the very product the element loop would compute */
        if (kind != F32)
            th[k] = kind == BF16 ? f32_to_bf16(tf[k]) : f32_to_f16(tf[k]);
    }
}

INLINE void dq8_impl(const uint8_t *q, const unsigned char *absmax, Py_ssize_t n, Py_ssize_t bs, Py_ssize_t b0,
                     Py_ssize_t b1, const float *table, unsigned char *out, int kind)
{
    float v[PIECE], tf[256];
    uint16_t th[256];
    for (Py_ssize_t b = b0; b < b1; b++) {
        Py_ssize_t lo = b * bs, hi = n - lo < bs ? n : lo + bs;
        float a = ldf(absmax, b);
        if (hi - lo >= 1024) { /* a table of the 256 results costs less than converting every element */
            block_table(table, 256, a, kind, tf, th);
            if (kind == F32)
                for (Py_ssize_t i = lo; i < hi; i++)
                    stf(out, i, tf[q[i]]);
            else
                for (Py_ssize_t i = lo; i < hi; i++)
                    memcpy(out + 2 * i, &th[q[i]], 2);
            continue;
        }
        for (Py_ssize_t i0 = lo; i0 < hi; i0 += PIECE) {
            int m = (int)(hi - i0 < PIECE ? hi - i0 : PIECE);
            for (int j = 0; j < m; j++)
                v[j] = table[q[i0 + j]] * a;
            for (int j = 0; j < m; j++)
                store(out, i0 + j, v[j], kind);
        }
    }
}

static void dq8_run(const uint8_t *q, const unsigned char *absmax, Py_ssize_t n, Py_ssize_t bs, Py_ssize_t b0,
                    Py_ssize_t b1, const float *table, unsigned char *out, int kind)
{
    switch (kind) {
    case F32: dq8_impl(q, absmax, n, bs, b0, b1, table, out, F32); break;
    case F16: dq8_impl(q, absmax, n, bs, b0, b1, table, out, F16); break;
    default: dq8_impl(q, absmax, n, bs, b0, b1, table, out, BF16); break;
    }
}

/* ------------------------------------------------------------------------------------------ 4-bit */

typedef struct {
    const uint8_t *grid; /* code per grid cell; 0x80 set where a midpoint falls inside the cell */
    float bounds[15];    /* midpoints of the sorted table */
    uint8_t order[16];   /* sorted position -> code */
} Table4;

/* The code of a scaled value by the definition: NaN to the top, else clamp and count the midpoints
 * below; the grid answers unless the cell holds a midpoint. */
INLINE uint8_t code4(float c, const Table4 *t)
{
    if (c != c)
        return t->order[15];
    c = c < -1.0f ? -1.0f : c;
    c = c > 1.0f ? 1.0f : c;
    float v = c * 16384.0f;
    v = v + 16386.0f;
    uint8_t g = t->grid[(int32_t)v];
    if (g & 0x80) {
        int pos = 0;
        for (int k = 0; k < 15; k++)
            pos += t->bounds[k] < c;
        g = t->order[pos];
    }
    return g;
}

/* Blocks [b0, b1) of one tensor of n elements. A full block scales by x * (1 / max(absmax, 1e-38)),
 * the tensor's last, partial block by x / max(absmax, 1e-38) and stores that clamped absmax; an odd
 * count is padded with the code of a scaled 0.0 (all as bitsandbytes does). */
INLINE void q4_impl(const unsigned char *src, int kind, Py_ssize_t n, Py_ssize_t bs, Py_ssize_t b0, Py_ssize_t b1,
                    const Table4 *t, uint8_t *packed, unsigned char *absmax)
{
    int32_t cell[PIECE];
    uint8_t codes[PIECE + 1];
    for (Py_ssize_t b = b0; b < b1; b++) {
        Py_ssize_t lo = b * bs, hi = n - lo < bs ? n : lo + bs;
        int partial = hi - lo < bs;
        float am = block_absmax(src, lo, hi, kind, 0);
        float amc = am != am ? am : am < 1e-38f ? 1e-38f : am;
        float s = 1.0f / amc;
        stf(absmax, b, partial ? amc : am);
        for (Py_ssize_t i0 = lo; i0 < hi; i0 += PIECE) {
            int m = (int)(hi - i0 < PIECE ? hi - i0 : PIECE);
            if (!partial && am <= 3.40282347e38f) { /* finite: no NaN to meet, the grid in bulk */
                uint8_t any = 0;
                for (int j = 0; j < m; j++) {
                    float c = load(src, i0 + j, kind) * s;
                    c = c < -1.0f ? -1.0f : c;
                    c = c > 1.0f ? 1.0f : c;
                    float v = c * 16384.0f;
                    v = v + 16386.0f;
                    cell[j] = (int32_t)v;
                }
                for (int j = 0; j < m; j++) {
                    codes[j] = t->grid[cell[j]];
                    any |= codes[j];
                }
                if (any & 0x80)
                    for (int j = 0; j < m; j++)
                        if (codes[j] & 0x80)
                            codes[j] = code4(load(src, i0 + j, kind) * s, t);
            } else {
                for (int j = 0; j < m; j++) {
                    float x = load(src, i0 + j, kind);
                    codes[j] = code4(partial ? x / amc : x * s, t);
                }
            }
            if (m & 1) /* only at the tensor's end */
                codes[m++] = code4(0.0f, t);
            uint8_t *dst = packed + i0 / 2;
            for (int j = 0; j < m / 2; j++)
                dst[j] = (uint8_t)((codes[2 * j] << 4) | (codes[2 * j + 1] & 15));
        }
    }
}

static void q4_run(const unsigned char *src, int kind, Py_ssize_t n, Py_ssize_t bs, Py_ssize_t b0, Py_ssize_t b1,
                   const Table4 *t, uint8_t *packed, unsigned char *absmax)
{
    switch (kind) {
    case F32: q4_impl(src, F32, n, bs, b0, b1, t, packed, absmax); break;
    case F16: q4_impl(src, F16, n, bs, b0, b1, t, packed, absmax); break;
    default: q4_impl(src, BF16, n, bs, b0, b1, t, packed, absmax); break;
    }
}

#ifdef HAVE_SHUFFLE_PATH
static int use_shuffle; /* set at import: the CPU has SSSE3 */

/* 16-bit results of the 2 * nbytes codes in packed (high nibble first), looked up in th[16], to out; whole
 * groups of 16 bytes only: returns the bytes done. pshufb looks up 16 bytes at once: one shuffle gives the low
 * bytes of the results, one the high bytes, for the high and for the low nibbles; unpacking interleaves them. */
__attribute__((target("ssse3"))) static Py_ssize_t pairs16_shuffle(const uint8_t *packed, Py_ssize_t nbytes,
                                                                   const uint16_t *th, unsigned char *out)
{
    uint8_t lo_bytes[16], hi_bytes[16];
    for (int k = 0; k < 16; k++) {
        lo_bytes[k] = (uint8_t)th[k];
        hi_bytes[k] = (uint8_t)(th[k] >> 8);
    }
    const __m128i tlo = _mm_loadu_si128((const __m128i *)lo_bytes), thi = _mm_loadu_si128((const __m128i *)hi_bytes);
    const __m128i nibble = _mm_set1_epi8(0x0f);
    Py_ssize_t j = 0;
    for (; j + 16 <= nbytes; j += 16) {
        __m128i bytes = _mm_loadu_si128((const __m128i *)(packed + j));
        __m128i first = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble), second = _mm_and_si128(bytes, nibble);
        __m128i f_lo = _mm_shuffle_epi8(tlo, first), f_hi = _mm_shuffle_epi8(thi, first);
        __m128i s_lo = _mm_shuffle_epi8(tlo, second), s_hi = _mm_shuffle_epi8(thi, second);
        __m128i f0 = _mm_unpacklo_epi8(f_lo, f_hi), f1 = _mm_unpackhi_epi8(f_lo, f_hi); /* first elements */
        __m128i s0 = _mm_unpacklo_epi8(s_lo, s_hi), s1 = _mm_unpackhi_epi8(s_lo, s_hi); /* second elements */
        unsigned char *o = out + 4 * j;
        _mm_storeu_si128((__m128i *)o, _mm_unpacklo_epi16(f0, s0));
        _mm_storeu_si128((__m128i *)(o + 16), _mm_unpackhi_epi16(f0, s0));
        _mm_storeu_si128((__m128i *)(o + 32), _mm_unpacklo_epi16(f1, s1));
        _mm_storeu_si128((__m128i *)(o + 48), _mm_unpackhi_epi16(f1, s1));
    }
    return j;
}
#endif

INLINE void dq4_impl(const uint8_t *packed, const unsigned char *absmax, Py_ssize_t n, Py_ssize_t bs, Py_ssize_t b0,
                     Py_ssize_t b1, const float *values, unsigned char *out, int kind)
{
    float tf[16];
    uint16_t th[16];
    for (Py_ssize_t b = b0; b < b1; b++) {
        Py_ssize_t lo = b * bs, hi = n - lo < bs ? n : lo + bs, m = hi - lo;
        block_table(values, 16, ldf(absmax, b), kind, tf, th);
        const uint8_t *p = packed + lo / 2; /* blocks are even: a block starts on a byte */
        if (kind == F32) {
            for (Py_ssize_t j = 0; j < m / 2; j++) {
                stf(out, lo + 2 * j, tf[p[j] >> 4]);
                stf(out, lo + 2 * j + 1, tf[p[j] & 15]);
            }
            if (m & 1)
                stf(out, hi - 1, tf[p[m / 2] >> 4]);
        } else {
            Py_ssize_t j = 0;
#ifdef HAVE_SHUFFLE_PATH
            if (use_shuffle)
                j = pairs16_shuffle(p, m / 2, th, out + 2 * lo);
#endif
            for (; j < m / 2; j++) {
                uint16_t pair[2] = {th[p[j] >> 4], th[p[j] & 15]};
                memcpy(out + 2 * (lo + 2 * j), pair, 4);
            }
            if (m & 1)
                memcpy(out + 2 * (hi - 1), &th[p[m / 2] >> 4], 2);
        }
    }
}

static void dq4_run(const uint8_t *packed, const unsigned char *absmax, Py_ssize_t n, Py_ssize_t bs, Py_ssize_t b0,
                    Py_ssize_t b1, const float *values, unsigned char *out, int kind)
{
    switch (kind) {
    case F32: dq4_impl(packed, absmax, n, bs, b0, b1, values, out, F32); break;
    case F16: dq4_impl(packed, absmax, n, bs, b0, b1, values, out, F16); break;
    default: dq4_impl(packed, absmax, n, bs, b0, b1, values, out, BF16); break;
    }
}

/* ------------------------------------------------------------------------------------------ arguments */

static int check_kind(int kind, const char *what)
{
    if (kind < F32 || kind > BF16) {
        PyErr_Format(PyExc_ValueError, "%s must be 0 (float32), 1 (float16) or 2 (bfloat16), not %d", what, kind);
        return -1;
    }
    return 0;
}

static int check_blocksize(Py_ssize_t bs, int even)
{
    if (bs <= 0 || (even && bs % 2)) {
        PyErr_Format(PyExc_ValueError, "blocksize must be a positive%s integer, not %zd", even ? " even" : "", bs);
        return -1;
    }
    return 0;
}

static int check_len(const Py_buffer *b, Py_ssize_t want, const char *what)
{
    if (b->len != want) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, expected %zd", what, b->len, want);
        return -1;
    }
    return 0;
}

/* Elements in a source or output buffer of the given kind. */
static int count_of(const Py_buffer *b, int kind, const char *what, Py_ssize_t *n)
{
    if (b->len % ITEMSIZE[kind]) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, not whole %zd-byte elements", what, b->len,
                     ITEMSIZE[kind]);
        return -1;
    }
    *n = b->len / ITEMSIZE[kind];
    return 0;
}

static int check_range(Py_ssize_t start, Py_ssize_t stop, Py_ssize_t nblocks)
{
    if (start < 0 || start > stop || stop > nblocks) {
        PyErr_Format(PyExc_ValueError, "block range [%zd, %zd) is not within the %zd blocks", start, stop, nblocks);
        return -1;
    }
    return 0;
}

static int load_table4(Table4 *t, const Py_buffer *grid, const Py_buffer *bounds, const Py_buffer *order)
{
    if (grid->len < GRID4_MIN) {
        PyErr_Format(PyExc_ValueError, "the 4-bit grid holds %zd cells, expected at least %d", grid->len, GRID4_MIN);
        return -1;
    }
    if (check_len(bounds, 15 * 4, "the 4-bit midpoints") || check_len(order, 16, "the 4-bit code order"))
        return -1;
    t->grid = grid->buf;
    memcpy(t->bounds, bounds->buf, sizeof t->bounds);
    memcpy(t->order, order->buf, sizeof t->order);
    return 0;
}

static void release(Py_buffer *views, int count)
{
    for (int i = 0; i < count; i++)
        if (views[i].obj != NULL)
            PyBuffer_Release(&views[i]);
}

/* Buffers of a sequence's items (read-only, C-contiguous); NULL with an exception set on failure. */
static Py_buffer *item_buffers(PyObject *seq, Py_ssize_t count, const char *what)
{
    Py_buffer *views = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_buffer));
    if (views == NULL)
        return (Py_buffer *)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &views[i], PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s[%zd] is not a C-contiguous buffer", what, i);
            for (Py_ssize_t k = 0; k < i; k++)
                PyBuffer_Release(&views[k]);
            PyMem_Free(views);
            return NULL;
        }
    }
    return views;
}

static void free_buffers(Py_buffer *views, Py_ssize_t count)
{
    if (views == NULL)
        return;
    for (Py_ssize_t i = 0; i < count; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}

/* ------------------------------------------------------------------------------------------ layout */

/* Every kernel takes a layout: tensors laid end to end, each starting its own blocks (and, for 4-bit,
 * its own byte: an odd tensor takes one more position, the pad), and a span [start, stop) of the blocks
 * counted across all of them, so that one call does a single tensor, a batch, or a thread's share of
 * either. Outputs are laid out as kernels.py's BlockLayout says: codes (or values) at the tensor's
 * positions, one absmax per block. */
typedef struct {
    Py_ssize_t count, bs, *n; /* tensors, block size, elements of each */
    int pad_odd;
} Layout;

/* Where one tensor's share of a span lies: blocks [b0, b1) of it, its first position and first block. */
typedef struct {
    Py_ssize_t i, n, b0, b1, pos, block;
} Part;

typedef void (*part_fn)(const void *ctx, const Part *part);

/* Calls fn for every tensor with blocks in [start, stop): the one loop over a layout. */
static void for_parts(const Layout *l, Py_ssize_t start, Py_ssize_t stop, part_fn fn, const void *ctx)
{
    Part p = {0};
    for (p.i = 0; p.i < l->count && p.block < stop; p.i++) {
        p.n = l->n[p.i];
        Py_ssize_t nb = nblocks_of(p.n, l->bs);
        p.b0 = start > p.block ? start - p.block : 0;
        p.b1 = stop - p.block < nb ? stop - p.block : nb;
        if (p.b0 < p.b1)
            fn(ctx, &p);
        p.block += nb;
        p.pos += p.n + (l->pad_odd ? p.n % 2 : 0);
    }
}

/* Totals of a layout: positions and blocks, checked against overflow. */
static int layout_totals(const Layout *l, Py_ssize_t *positions, Py_ssize_t *blocks)
{
    *positions = *blocks = 0;
    for (Py_ssize_t i = 0; i < l->count; i++) {
        Py_ssize_t n = l->n[i];
        if (n > PY_SSIZE_T_MAX / 8 - *positions) {
            PyErr_SetString(PyExc_OverflowError, "too many values");
            return -1;
        }
        *positions += n + (l->pad_odd ? n % 2 : 0);
        *blocks += nblocks_of(n, l->bs);
    }
    return 0;
}

/* The buffers of a sequence (srcs, codes or absmaxes) with their count; release with free_buffers. */
typedef struct {
    PyObject *seq;
    Py_buffer *views;
    Py_ssize_t count;
} Buffers;

static int get_buffers(Buffers *b, PyObject *obj, const char *what)
{
    if ((b->seq = PySequence_Fast(obj, "expected a sequence of buffers")) == NULL)
        return -1;
    b->count = PySequence_Fast_GET_SIZE(b->seq);
    if ((b->views = item_buffers(b->seq, b->count, what)) == NULL) {
        b->count = 0;
        return -1;
    }
    return 0;
}

static void drop_buffers(Buffers *b)
{
    free_buffers(b->views, b->count);
    Py_XDECREF(b->seq);
}

/* Element counts of a layout from its sources (each of its kind, whole elements), or from a
 * sequence of ints (counts != NULL); n is PyMem-allocated, to be freed by the caller. */
static int layout_of(Layout *l, const Buffers *src, const Py_buffer *kinds, PyObject *counts, Py_ssize_t bs,
                     int pad_odd)
{
    l->count = src->count;
    l->bs = bs;
    l->pad_odd = pad_odd;
    if ((l->n = PyMem_Calloc((size_t)(l->count ? l->count : 1), sizeof(Py_ssize_t))) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (check_blocksize(bs, pad_odd))
        return -1;
    if (kinds != NULL) {
        if (check_len(kinds, l->count, "kinds"))
            return -1;
        const unsigned char *k = kinds->buf;
        for (Py_ssize_t i = 0; i < l->count; i++)
            if (check_kind(k[i], "kinds[i]") || count_of(&src->views[i], k[i], "a source", &l->n[i]))
                return -1;
        return 0;
    }
    if (counts == NULL) /* the caller fills the counts in */
        return 0;
    PyObject *seq = PySequence_Fast(counts, "counts must be a sequence");
    if (seq == NULL)
        return -1;
    int bad = PySequence_Fast_GET_SIZE(seq) != l->count;
    if (bad)
        PyErr_SetString(PyExc_ValueError, "counts and codes differ in length");
    for (Py_ssize_t i = 0; !bad && i < l->count; i++) {
        l->n[i] = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i), PyExc_OverflowError);
        bad = l->n[i] == -1 && PyErr_Occurred();
        if (!bad && l->n[i] < 0) {
            PyErr_Format(PyExc_ValueError, "counts[%zd] is negative", i);
            bad = 1;
        }
    }
    Py_DECREF(seq);
    return bad ? -1 : 0;
}

/* Each tensor's codes (per_code positions a byte: 1 or 2) and absmax hold what its count needs. */
static int check_codes(const Layout *l, const Buffers *codes, const Buffers *absmax, int per_code)
{
    if (codes->count != l->count || absmax->count != l->count) {
        PyErr_SetString(PyExc_ValueError, "codes, absmaxes and counts differ in length");
        return -1;
    }
    for (Py_ssize_t i = 0; i < l->count; i++) {
        Py_ssize_t n = l->n[i];
        if (check_len(&codes->views[i], n / per_code + n % per_code, "codes") ||
            check_len(&absmax->views[i], 4 * nblocks_of(n, l->bs), "an absmax"))
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ functions */

typedef struct {
    const Py_buffer *src;
    const unsigned char *kinds;
    const void *table; /* the 8-bit lut or a Table4 */
    unsigned char *codes, *absmax;
    Py_ssize_t bs;
} QuantizeJob;

static void q8_part(const void *ctx, const Part *p)
{
    const QuantizeJob *j = ctx;
    q8_run(j->src[p->i].buf, j->kinds[p->i], p->n, j->bs, p->b0, p->b1, j->table, j->codes + p->pos,
           j->absmax + 4 * p->block);
}

static void q4_part(const void *ctx, const Part *p)
{
    const QuantizeJob *j = ctx;
    q4_run(j->src[p->i].buf, j->kinds[p->i], p->n, j->bs, p->b0, p->b1, j->table, j->codes + p->pos / 2,
           j->absmax + 4 * p->block);
}

/* quantize8 and quantize4: sources (srcs, kinds), the table, outputs (codes, absmax), the span. */
static PyObject *quantize(PyObject *args, int four_bit)
{
    PyObject *srcs, *res = NULL;
    Py_buffer kinds = {0}, lut = {0}, t4[3] = {{0}}, out[2] = {{0}};
    Py_ssize_t bs, start, stop, positions, blocks;
    Buffers src = {0};
    Layout l = {0};
    Table4 table;
    int ok = four_bit ? PyArg_ParseTuple(args, "(Oy*)n(y*y*y*)(w*w*)(nn):quantize4", &srcs, &kinds, &bs, &t4[0],
                                         &t4[1], &t4[2], &out[0], &out[1], &start, &stop)
                      : PyArg_ParseTuple(args, "(Oy*)ny*(w*w*)(nn):quantize8", &srcs, &kinds, &bs, &lut, &out[0],
                                         &out[1], &start, &stop);
    if (!ok)
        return NULL;
    if ((four_bit ? load_table4(&table, &t4[0], &t4[1], &t4[2]) : check_len(&lut, 65536, "lut")) ||
        get_buffers(&src, srcs, "srcs") || layout_of(&l, &src, &kinds, NULL, bs, four_bit) ||
        layout_totals(&l, &positions, &blocks) ||
        check_len(&out[0], four_bit ? positions / 2 : positions, four_bit ? "packed" : "codes") ||
        check_len(&out[1], 4 * blocks, "absmax") || check_range(start, stop, blocks))
        goto done;
    QuantizeJob job = {src.views, kinds.buf, four_bit ? (const void *)&table : lut.buf, out[0].buf, out[1].buf, bs};
    Py_BEGIN_ALLOW_THREADS
    for_parts(&l, start, stop, four_bit ? q4_part : q8_part, &job);
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    PyMem_Free(l.n);
    drop_buffers(&src);
    release(&kinds, 1);
    release(&lut, 1);
    release(t4, 3);
    release(out, 2);
    return res;
}

PyDoc_STRVAR(quantize8_doc, "quantize8((srcs, kinds), blocksize, lut, (codes, absmax), (start, stop))\n\n"
                            "8-bit codes and absmax of blocks [start, stop) of the sources laid end to end.");

static PyObject *quantize8(PyObject *self, PyObject *args) { return quantize(args, 0); }

PyDoc_STRVAR(quantize4_doc, "quantize4((srcs, kinds), blocksize, (grid, bounds, order), (packed, absmax), (start, stop))\n\n"
                            "Packed 4-bit codes and absmax of blocks [start, stop) of the sources laid end to end.");

static PyObject *quantize4(PyObject *self, PyObject *args) { return quantize(args, 1); }

typedef struct {
    const Py_buffer *codes, *absmax;
    const float *table;
    unsigned char *out;
    int kind;
    Py_ssize_t bs;
} DequantizeJob;

static void dq8_part(const void *ctx, const Part *p)
{
    const DequantizeJob *j = ctx;
    dq8_run(j->codes[p->i].buf, j->absmax[p->i].buf, p->n, j->bs, p->b0, p->b1, j->table,
            j->out + p->pos * ITEMSIZE[j->kind], j->kind);
}

static void dq4_part(const void *ctx, const Part *p)
{
    const DequantizeJob *j = ctx;
    dq4_run(j->codes[p->i].buf, j->absmax[p->i].buf, p->n, j->bs, p->b0, p->b1, j->table,
            j->out + p->pos * ITEMSIZE[j->kind], j->kind);
}

/* dequantize8 and dequantize4: codes (codes, absmaxes[, counts]), the values, output (out, kind), the span. */
static PyObject *dequantize(PyObject *args, int four_bit)
{
    PyObject *lq, *la, *lc = NULL, *res = NULL;
    Py_buffer values = {0}, out = {0};
    Py_ssize_t bs, start, stop, positions, blocks;
    int kind;
    Buffers q = {0}, am = {0};
    Layout l = {0};
    float table[256];
    int ok = four_bit ? PyArg_ParseTuple(args, "(OOO)ny*(w*i)(nn):dequantize4", &lq, &la, &lc, &bs, &values, &out,
                                         &kind, &start, &stop)
                      : PyArg_ParseTuple(args, "(OO)ny*(w*i)(nn):dequantize8", &lq, &la, &bs, &values, &out, &kind,
                                         &start, &stop);
    if (!ok)
        return NULL;
    Py_ssize_t entries = four_bit ? 16 : 256;
    if (check_kind(kind, "kind") || check_len(&values, 4 * entries, "table") || get_buffers(&q, lq, "codes") ||
        get_buffers(&am, la, "absmaxes"))
        goto done;
    if (four_bit ? layout_of(&l, &q, NULL, lc, bs, 1) : layout_of(&l, &q, NULL, NULL, bs, 0))
        goto done;
    if (!four_bit)
        for (Py_ssize_t i = 0; i < l.count; i++)
            l.n[i] = q.views[i].len;
    if (check_codes(&l, &q, &am, four_bit ? 2 : 1) || layout_totals(&l, &positions, &blocks) ||
        check_len(&out, positions * ITEMSIZE[kind], "out") || check_range(start, stop, blocks))
        goto done;
    memcpy(table, values.buf, (size_t)(4 * entries));
    DequantizeJob job = {q.views, am.views, table, out.buf, kind, bs};
    Py_BEGIN_ALLOW_THREADS
    for_parts(&l, start, stop, four_bit ? dq4_part : dq8_part, &job);
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    PyMem_Free(l.n);
    drop_buffers(&q);
    drop_buffers(&am);
    release(&values, 1);
    release(&out, 1);
    return res;
}

PyDoc_STRVAR(dequantize8_doc, "dequantize8((codes, absmaxes), blocksize, table, (out, kind), (start, stop))\n\n"
                              "Values of blocks [start, stop) of 8-bit codes, laid end to end in out (of the given kind).");

static PyObject *dequantize8(PyObject *self, PyObject *args) { return dequantize(args, 0); }

PyDoc_STRVAR(dequantize4_doc, "dequantize4((packed, absmaxes, counts), blocksize, values, (out, kind), (start, stop))\n\n"
                              "Values of blocks [start, stop) of packed 4-bit codes, laid end to end in out (an odd "
                              "count takes one more position, left unwritten).");

static PyObject *dequantize4(PyObject *self, PyObject *args) { return dequantize(args, 1); }

/* ------------------------------------------------------------------------------------------ hadamard */

/* One piece of p elements in place: butterflies h = 1, 2, ..., p/2, each pair (i, i + h) with i & h == 0
   becoming (v_i + v_{i+h}, v_i - v_{i+h}); the in-place update reads both old values first, so it gives
   the bits of codecs/hadamard.py's ping-pong passes. */
static void butterflies(float *v, Py_ssize_t p)
{
    Py_ssize_t h0 = 1;
    if (p >= 4) { /* stages h = 1 and 2 together, in registers: the same operations in the same order */
        for (Py_ssize_t i = 0; i < p; i += 4) {
            float s0 = v[i] + v[i + 1], d0 = v[i] - v[i + 1], s1 = v[i + 2] + v[i + 3], d1 = v[i + 2] - v[i + 3];
            v[i] = s0 + s1;
            v[i + 1] = d0 + d1;
            v[i + 2] = s0 - s1;
            v[i + 3] = d0 - d1;
        }
        h0 = 4;
    }
    for (Py_ssize_t h = h0; h < p; h *= 2)
        for (Py_ssize_t i = 0; i < p; i += 2 * h)
            for (Py_ssize_t j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
}

static void hadamard_run(const void *src, int kind, float *out, Py_ssize_t n, Py_ssize_t p, const float *d,
                         int inverse)
{
    for (Py_ssize_t s = 0; s < n; s += p) {
        float *v = out + s;
        if (kind == 2) {
            const uint16_t *x = (const uint16_t *)src + s;
            for (Py_ssize_t j = 0; j < p; j++) {
                uint32_t bits = (uint32_t)x[j] << 16;
                memcpy(&v[j], &bits, 4);
            }
        } else {
            memcpy(v, (const float *)src + s, (size_t)p * 4);
        }
        if (!inverse)
            for (Py_ssize_t j = 0; j < p; j++)
                v[j] = v[j] * d[j];
        butterflies(v, p);
        if (inverse)
            for (Py_ssize_t j = 0; j < p; j++)
                v[j] = v[j] * d[j];
    }
}

PyDoc_STRVAR(hadamard_doc, "hadamard(src, kind, out, p, d, inverse)\n\n"
                           "The rotation of codecs/hadamard.py on pieces of p elements: float32 (kind 0) or "
                           "bfloat16 (kind 2) src, float32 out of as many elements, d the p multipliers.");

static PyObject *hadamard(PyObject *self, PyObject *args)
{
    Py_buffer src = {0}, out = {0}, d = {0};
    int kind, inverse;
    Py_ssize_t p;
    PyObject *res = NULL;
    if (!PyArg_ParseTuple(args, "y*iw*ny*p:hadamard", &src, &kind, &out, &p, &d, &inverse))
        return NULL;
    Py_ssize_t width = kind == 2 ? 2 : 4;
    Py_ssize_t n = src.len / width;
    if ((kind != 0 && kind != 2) || p <= 0 || (p & (p - 1)) || src.len % width || n % p || out.len != 4 * n ||
        d.len != 4 * p) {
        PyErr_SetString(PyExc_ValueError, "hadamard: bad kind, piece size or buffer lengths");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    hadamard_run(src.buf, kind, out.buf, n, p, d.buf, inverse);
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    PyBuffer_Release(&d);
    return res;
}

/* ------------------------------------------------------------------ entropy: byte planes and Huffman lanes */
/* The C twins of codecs/entropy.py (split_planes, join_planes, histograms) and codecs/huffman.py
 * (_encode_lanes, _decode_lanes). The codes and decode tables are built in Python and passed in. */

INLINE uint64_t rotl_bits(uint64_t v, int bits, int by) /* by: 1 (left) or bits - 1 (right by one) */
{
    uint64_t mask = bits == 64 ? ~(uint64_t)0 : (((uint64_t)1 << bits) - 1);
    return ((v << by) | (v >> (bits - by))) & mask;
}

INLINE uint64_t load_le(const unsigned char *p, Py_ssize_t w)
{
    uint64_t v = 0;
    for (Py_ssize_t k = 0; k < w; k++)
        v |= (uint64_t)p[k] << (8 * k);
    return v;
}

/* Planes of w-byte elements: plane p holds byte w - 1 - p of each (rotated) element, so plane 0 is the top. */
INLINE void split_w(const unsigned char *src, unsigned char *out, Py_ssize_t n, Py_ssize_t w, int rotate)
{
    int bits = (int)(8 * w);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t v = load_le(src + w * i, w);
        if (rotate)
            v = rotl_bits(v, bits, 1);
        for (Py_ssize_t p = 0; p < w; p++)
            out[p * n + i] = (unsigned char)(v >> (8 * (w - 1 - p)));
    }
}

INLINE void join_w(const unsigned char *const *planes, unsigned char *out, Py_ssize_t n, Py_ssize_t w, int rotate)
{
    int bits = (int)(8 * w);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t v = 0;
        for (Py_ssize_t p = 0; p < w; p++)
            v |= (uint64_t)planes[p][i] << (8 * (w - 1 - p));
        if (rotate)
            v = rotl_bits(v, bits, bits - 1);
        for (Py_ssize_t k = 0; k < w; k++)
            out[w * i + k] = (unsigned char)(v >> (8 * k));
    }
}

static int plane_args(const Py_buffer *a, const Py_buffer *b, Py_ssize_t w, Py_ssize_t *n)
{
    if (w != 1 && w != 2 && w != 4 && w != 8) {
        PyErr_Format(PyExc_ValueError, "itemsize must be 1, 2, 4 or 8, not %zd", w);
        return -1;
    }
    if (a->len % w || b->len != a->len) {
        PyErr_Format(PyExc_ValueError, "buffers of %zd and %zd bytes for %zd-byte elements", a->len, b->len, w);
        return -1;
    }
    *n = a->len / w;
    return 0;
}

PyDoc_STRVAR(split_planes_doc, "split_planes(src, itemsize, rotate, out)\n\n"
                               "Byte planes of the elements (rotated left one bit if rotate), the top byte's plane first.");

static PyObject *split_planes(PyObject *self, PyObject *args)
{
    Py_buffer src = {0}, out = {0};
    Py_ssize_t w, n;
    int rotate;
    PyObject *res = NULL;
    if (!PyArg_ParseTuple(args, "y*npw*:split_planes", &src, &w, &rotate, &out))
        return NULL;
    if (plane_args(&src, &out, w, &n))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    /* one copy per width, so that each loop is unrolled for it */
    if (w == 1) split_w(src.buf, out.buf, n, 1, 0);
    else if (w == 2) split_w(src.buf, out.buf, n, 2, rotate);
    else if (w == 4) split_w(src.buf, out.buf, n, 4, rotate);
    else split_w(src.buf, out.buf, n, 8, rotate);
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    release(&src, 1);
    release(&out, 1);
    return res;
}

PyDoc_STRVAR(join_planes_doc, "join_planes(planes, rotate, out)\n\n"
                              "The inverse of split_planes: elements of len(planes) bytes from their planes into out.");

static PyObject *join_planes(PyObject *self, PyObject *args)
{
    PyObject *seq, *fast = NULL, *res = NULL;
    Py_buffer out = {0};
    Py_buffer *views = NULL;
    Py_ssize_t w = 0;
    int rotate;
    if (!PyArg_ParseTuple(args, "Opw*:join_planes", &seq, &rotate, &out))
        return NULL;
    fast = PySequence_Fast(seq, "planes must be a sequence");
    if (fast == NULL)
        goto done;
    w = PySequence_Fast_GET_SIZE(fast);
    if (w != 1 && w != 2 && w != 4 && w != 8) {
        PyErr_Format(PyExc_ValueError, "1, 2, 4 or 8 planes, not %zd", w);
        goto done;
    }
    views = item_buffers(fast, w, "planes");
    if (views == NULL)
        goto done;
    Py_ssize_t n = out.len / w;
    const unsigned char *p[8];
    for (Py_ssize_t k = 0; k < w; k++) {
        if (views[k].len != n || out.len % w) {
            PyErr_Format(PyExc_ValueError, "plane %zd holds %zd bytes, out %zd", k, views[k].len, out.len);
            goto done;
        }
        p[k] = views[k].buf;
    }
    Py_BEGIN_ALLOW_THREADS
    if (w == 1) join_w(p, out.buf, n, 1, 0);
    else if (w == 2) join_w(p, out.buf, n, 2, rotate);
    else if (w == 4) join_w(p, out.buf, n, 4, rotate);
    else join_w(p, out.buf, n, 8, rotate);
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    if (views != NULL)
        free_buffers(views, w);
    Py_XDECREF(fast);
    release(&out, 1);
    return res;
}

PyDoc_STRVAR(histograms_doc, "histograms(plane, chunk, out)\n\n"
                             "Byte counts (uint32[256]) of each chunk of the plane, laid end to end in out.");

static PyObject *histograms(PyObject *self, PyObject *args)
{
    Py_buffer src = {0}, out = {0};
    Py_ssize_t chunk;
    PyObject *res = NULL;
    if (!PyArg_ParseTuple(args, "y*nw*:histograms", &src, &chunk, &out))
        return NULL;
    if (chunk <= 0 || chunk > (1 << 30)) {
        PyErr_Format(PyExc_ValueError, "chunk must be in 1..2^30, not %zd", chunk);
        goto done;
    }
    Py_ssize_t nchunks = src.len / chunk + (src.len % chunk != 0);
    if (check_len(&out, 4 * 256 * nchunks, "out"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *s = src.buf;
    for (Py_ssize_t c = 0; c < nchunks; c++) {
        uint32_t h[4][256] = {{0}}; /* four counters: a run of one byte does not wait on its own store */
        Py_ssize_t a = c * chunk, b = a + chunk < src.len ? a + chunk : src.len, i = a;
        for (; i + 4 <= b; i += 4) {
            h[0][s[i]]++;
            h[1][s[i + 1]]++;
            h[2][s[i + 2]]++;
            h[3][s[i + 3]]++;
        }
        for (; i < b; i++)
            h[0][s[i]]++;
        for (int k = 0; k < 256; k++) {
            uint32_t v = h[0][k] + h[1][k] + h[2][k] + h[3][k];
            memcpy((unsigned char *)out.buf + 4 * (256 * c + k), &v, 4);
        }
    }
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    release(&src, 1);
    release(&out, 1);
    return res;
}

#define HUFF_BITS 11
#define HUFF_MASK ((1u << HUFF_BITS) - 1)
#define HUFF_GROUP 8 /* lanes decoded side by side */

INLINE void st_le64(unsigned char *p, uint64_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

PyDoc_STRVAR(huff_encode_doc, "huff_encode(symbols, codes, lengths, span, out, lane_bytes) -> bytes written\n\n"
                              "Lanes of span symbols, each an LSB-first stream of the (bit-reversed) codes, end to end in "
                              "out; each lane's length into lane_bytes (uint16).");

static PyObject *huff_encode(PyObject *self, PyObject *args)
{
    Py_buffer sym = {0}, codes = {0}, lens = {0}, out = {0}, lb = {0};
    Py_ssize_t span, total = 0;
    PyObject *res = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*nw*w*:huff_encode", &sym, &codes, &lens, &span, &out, &lb))
        return NULL;
    Py_ssize_t m = sym.len, lanes = span > 0 ? m / span + (m % span != 0) : -1;
    if (span <= 0 || span > 4096 || check_len(&codes, 512, "codes") || check_len(&lens, 256, "lengths") ||
        check_len(&lb, 2 * lanes, "lane_bytes"))
        goto done;
    uint32_t entry[256];
    const unsigned char *ln = lens.buf;
    for (int k = 0; k < 256; k++) {
        if (ln[k] > HUFF_BITS) {
            PyErr_SetString(PyExc_ValueError, "a code length is over 11");
            goto done;
        }
        entry[k] = (uint32_t)ld16(codes.buf, k) | ((uint32_t)ln[k] << 16);
    }
    if (out.len < (m * HUFF_BITS + 7) / 8 + lanes + 8) {
        PyErr_Format(PyExc_ValueError, "out holds %zd bytes, the lanes need up to %zd", out.len,
                     (m * HUFF_BITS + 7) / 8 + lanes + 8);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *s = sym.buf;
    unsigned char *o = out.buf;
    for (Py_ssize_t l = 0; l < lanes; l++) {
        Py_ssize_t a = l * span, b = a + span < m ? a + span : m, i = a, start = total;
        uint64_t acc = 0;
        int n = 0; /* bits held, < 8 after each flush: then four codes (<= 44 bits) fit */
        for (; i + 4 <= b; i += 4) {
            for (int j = 0; j < 4; j++) {
                uint32_t e = entry[s[i + j]];
                acc |= (uint64_t)(e & 0xffff) << n;
                n += (int)(e >> 16);
            }
            st_le64(o + total, acc); /* whole bytes kept; the bytes past them are zeros or overwritten */
            total += n >> 3;
            acc >>= n & ~7;
            n &= 7;
        }
        for (; i < b; i++) {
            uint32_t e = entry[s[i]];
            acc |= (uint64_t)(e & 0xffff) << n;
            n += (int)(e >> 16);
        }
        for (; n > 0; n -= 8, acc >>= 8)
            o[total++] = (unsigned char)acc;
        uint16_t bytes = (uint16_t)(total - start);
        memcpy((unsigned char *)lb.buf + 2 * l, &bytes, 2);
    }
    Py_END_ALLOW_THREADS
    res = PyLong_FromSsize_t(total);
done:
    release(&sym, 1);
    release(&codes, 1);
    release(&lens, 1);
    release(&out, 1);
    release(&lb, 1);
    return res;
}

/* 64 bits from byte i on; bytes beyond the stream read as zeros (as the numpy twin's padding). */
INLINE uint64_t ld64_bounded(const unsigned char *b, Py_ssize_t len, Py_ssize_t i)
{
    if (i + 8 <= len) {
        uint64_t v;
        memcpy(&v, b + i, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
#endif
        return v;
    }
    uint64_t v = 0;
    for (Py_ssize_t k = 0; i + k < len && k < 8; k++)
        v |= (uint64_t)b[i + k] << (8 * k);
    return v;
}

PyDoc_STRVAR(huff_decode_doc, "huff_decode(streams, lane_bytes, table, span, out) -> first bad lane, or -1\n\n"
                              "Decodes lanes of span symbols (lane_bytes: uint32 lengths) with the 2048-entry table "
                              "(symbol | length << 8) into out; a lane is bad unless it ends at its length with zero padding.");

static PyObject *huff_decode(PyObject *self, PyObject *args)
{
    Py_buffer st = {0}, lb = {0}, tb = {0}, out = {0};
    Py_ssize_t span, bad = -1;
    PyObject *res = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*nw*:huff_decode", &st, &lb, &tb, &span, &out))
        return NULL;
    Py_ssize_t m = out.len, lanes = span > 0 ? m / span + (m % span != 0) : -1;
    if (span <= 0 || span > 4096 || check_len(&lb, 4 * lanes, "lane_bytes") || check_len(&tb, 2 << HUFF_BITS, "table"))
        goto done;
    uint16_t table[1 << HUFF_BITS];
    memcpy(table, tb.buf, sizeof table);
    for (int k = 0; k < (1 << HUFF_BITS); k++)
        if ((table[k] >> 8) == 0 || (table[k] >> 8) > HUFF_BITS) {
            PyErr_SetString(PyExc_ValueError, "the table has an entry of no valid length");
            goto done;
        }
    Py_ssize_t *first = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(lanes + 1));
    if (first == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    first[0] = 0;
    for (Py_ssize_t l = 0; l < lanes; l++) {
        uint32_t v;
        memcpy(&v, (const unsigned char *)lb.buf + 4 * l, 4);
        first[l + 1] = first[l] + v;
    }
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *b = st.buf;
    unsigned char *o = out.buf;
    Py_ssize_t len = st.len;
    for (Py_ssize_t l0 = 0; l0 < lanes; l0 += HUFF_GROUP) {
        Py_ssize_t pos[HUFF_GROUP] = {0}, group = lanes - l0 < HUFF_GROUP ? lanes - l0 : HUFF_GROUP;
        for (Py_ssize_t k = 0; k < group; k++)
            pos[k] = 8 * first[l0 + k];
        Py_ssize_t t = 0;
        if (group == HUFF_GROUP && (l0 + HUFF_GROUP) * span <= m) /* full lanes side by side, four symbols a load */
            for (; t + 4 <= span; t += 4)
                for (int k = 0; k < HUFF_GROUP; k++) {
                    uint64_t w = ld64_bounded(b, len, pos[k] >> 3) >> (pos[k] & 7);
                    unsigned char *d = o + (l0 + k) * span + t;
                    int used = 0;
                    for (int j = 0; j < 4; j++) {
                        uint16_t e = table[w & HUFF_MASK];
                        d[j] = (unsigned char)e;
                        w >>= e >> 8;
                        used += e >> 8;
                    }
                    pos[k] += used;
                }
        for (Py_ssize_t k = 0; k < group; k++) {
            Py_ssize_t a = (l0 + k) * span, stop = a + span < m ? a + span : m;
            for (Py_ssize_t i = a + t; i < stop; i++) {
                uint16_t e = table[(ld64_bounded(b, len, pos[k] >> 3) >> (pos[k] & 7)) & HUFF_MASK];
                o[i] = (unsigned char)e;
                pos[k] += e >> 8;
            }
            Py_ssize_t lane = l0 + k, used = pos[k] - 8 * first[lane], bytes = first[lane + 1] - first[lane];
            int tail = (int)(used % 8);
            unsigned char last = bytes > 0 && first[lane + 1] - 1 < len ? b[first[lane + 1] - 1] : 0;
            if (bad < 0 && ((used + 7) / 8 != bytes || (tail && (last >> tail))))
                bad = lane;
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(first);
    res = PyLong_FromSsize_t(bad);
done:
    release(&st, 1);
    release(&lb, 1);
    release(&tb, 1);
    release(&out, 1);
    return res;
}

static PyMethodDef methods[] = {
    {"quantize8", quantize8, METH_VARARGS, quantize8_doc},
    {"dequantize8", dequantize8, METH_VARARGS, dequantize8_doc},
    {"quantize4", quantize4, METH_VARARGS, quantize4_doc},
    {"dequantize4", dequantize4, METH_VARARGS, dequantize4_doc},
    {"hadamard", hadamard, METH_VARARGS, hadamard_doc},
    {"split_planes", split_planes, METH_VARARGS, split_planes_doc},
    {"join_planes", join_planes, METH_VARARGS, join_planes_doc},
    {"histograms", histograms, METH_VARARGS, histograms_doc},
    {"huff_encode", huff_encode, METH_VARARGS, huff_encode_doc},
    {"huff_decode", huff_decode, METH_VARARGS, huff_decode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tensorcodec._native",
    .m_doc = "C kernels for tensorcodec.kernels (8-bit and 4-bit blockwise quantization); see kernels.py.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
#ifdef HAVE_SHUFFLE_PATH
    __builtin_cpu_init();
    use_shuffle = __builtin_cpu_supports("ssse3") && !getenv("TENSORCODEC_NO_SIMD");
#endif
    return PyModuleDef_Init(&module);
}
