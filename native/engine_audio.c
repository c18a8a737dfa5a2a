/* engine_audio.c: the native audio core of engine.
 *
 * Sample conversion (S16LE, F32LE, G.711 mu-law), per-frame energy and an
 * energy-based voice activity detector, fused into one streaming pass.
 *
 * The loops are written so that the compiler can vectorise them (no
 * hand-written assembly or intrinsics): branch-free selects, no table
 * lookups in the hot loops (G.711 is computed with float-exponent
 * arithmetic, bit-exact with audioop), counters of the same width as the
 * data. On x86-64 with GCC the bulk kernels are also compiled for AVX2 and
 * picked at load time (target_clones); elsewhere the portable build is used.
 */
#include "engine_audio.h"

#include <math.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(ENG_NO_CLONES)
#define ENG_MV __attribute__((target_clones("avx2", "default")))
#define ENG_CLONES 1
#else
#define ENG_MV
#endif

#if defined(__GNUC__)
#define ENG_INLINE static inline __attribute__((always_inline))
#else
#define ENG_INLINE static inline
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define ENG_BIG_ENDIAN 1
#else
#define ENG_BIG_ENDIAN 0
#endif

#define ENG_SILENCE_DB (-120.0f)
/* a block length for the 32-bit counters of non-finite samples */
#define ENG_COUNT_BLOCK ((size_t)1 << 20)

/* ---- little-endian loads and stores (unaligned-safe) ------------------- */

ENG_INLINE int16_t ld_s16(const char *p) {
    uint16_t u;
    memcpy(&u, p, 2);
#if ENG_BIG_ENDIAN
    u = (uint16_t)((u >> 8) | (u << 8));
#endif
    return (int16_t)u;
}

ENG_INLINE void st_s16(char *p, int16_t v) {
    uint16_t u = (uint16_t)v;
#if ENG_BIG_ENDIAN
    u = (uint16_t)((u >> 8) | (u << 8));
#endif
    memcpy(p, &u, 2);
}

ENG_INLINE uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

ENG_INLINE float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

ENG_INLINE float ld_f32(const char *p) {
    uint32_t u;
    memcpy(&u, p, 4);
#if ENG_BIG_ENDIAN
    u = __builtin_bswap32(u);
#endif
    return u2f(u);
}

/* 1 if the float is NaN or +/-Inf (exponent all ones), else 0. */
ENG_INLINE uint32_t nonfinite(float x) { return (f2u(x) & 0x7F800000u) == 0x7F800000u; }

/* NaN -> 0, +/-Inf -> +/-1, finite unchanged (branch-free selects). */
ENG_INLINE float sanitize(float x) {
    x = (x == x) ? x : 0.0f;
    x = (x > 3.402823466e38f) ? 1.0f : x;
    x = (x < -3.402823466e38f) ? -1.0f : x;
    return x;
}

/* float already scaled to the int16 range -> int16: NaN -> 0, saturated to
 * [-32768, 32767], rounded to nearest with ties to even (as numpy.rint).
 * Works on the magnitude's bit pattern, whose integer order is the float
 * order for non-negative floats, so the clamps are integer min operations
 * that vectorise cleanly: NaN (above the +Inf pattern) becomes 0, anything at
 * or above 32768 (including Inf) becomes 32768.0f. Adding 1.5 * 2^23 then
 * rounds the magnitude to an integer in the low mantissa bits (the float
 * spacing there is 1). The sign goes back on and +32768 saturates to 32767.
 * Needs IEEE float semantics, so no -ffast-math for this file. */
ENG_INLINE int32_t to_s16(float v) {
    uint32_t b = f2u(v);
    uint32_t a = b & 0x7FFFFFFFu;
    int32_t sm = -(int32_t)(b >> 31);
    a = a > 0x7F800000u ? 0u : a;
    a = a < 0x47000000u ? a : 0x47000000u;
    int32_t r = (int32_t)(f2u(u2f(a) + 12582912.0f) - 0x4B400000u);
    r = (r ^ sm) - sm;
    return r < 32767 ? r : 32767;
}

/* ---- G.711 mu-law, bit-exact with audioop ------------------------------- */

/* Decode: audioop's (the Sun / CCITT reference) table is
 *   b = ~code; t = ((b & 0x0F) << 3) + 0x84; t <<= (b & 0x70) >> 4;
 *   value = (b & 0x80) ? 0x84 - t : t - 0x84.
 * The shift is a multiplication by 2^e, built as a float with exponent field
 * e + 127; every intermediate is an integer below 2^24, so the float
 * arithmetic is exact. Returns the magnitude |value| and leaves the sign to
 * the caller. */
ENG_INLINE float ulaw_mag(uint32_t code) {
    uint32_t b = ~code & 0xFFu;
    float t = (float)(int32_t)(((b & 0x0Fu) << 3) + 0x84u);
    float p2 = u2f((((b >> 4) & 7u) + 127u) << 23);
    return t * p2 - 132.0f;
}

/* code < 0x80 is a negative value */
ENG_INLINE int32_t ulaw_to_int(uint32_t code) {
    int32_t m = (int32_t)ulaw_mag(code);
    int32_t s = -(int32_t)(((code >> 7) & 1u) ^ 1u); /* -1 for negative */
    return (m ^ s) - s;
}

ENG_INLINE float ulaw_to_float(uint32_t code) {
    float m = ulaw_mag(code) * (1.0f / 32768.0f);
    return (code & 0x80u) ? m : -m;
}

/* Encode, as audioop.lin2ulaw(width=2): p = x >> 2 (14 bits); mask 0x7F if
 * p < 0 else 0xFF; |p| clipped to 8159; |p| += 33; seg = the first of
 * 0x3F, 0x7F, ..., 0x1FFF that |p| does not exceed; code = ((seg << 4) |
 * ((|p| >> (seg + 1)) & 0xF)) ^ mask, or 0x7F ^ mask when |p| = 8192.
 * With |p| + 33 in [33, 8191] (clipping |p| to 8158 gives the same codes as
 * 8159), seg = floor(log2(|p| + 33)) - 5 and the 4 bits below the leading 1
 * are the float's top 4 mantissa bits: both are in bits 19..30 of
 * float(|p| + 33). */
ENG_INLINE uint8_t int_to_ulaw(int32_t x) {
    int32_t p = x >> 2;
    int32_t s = p >> 31; /* -1 if negative */
    int32_t mag = (p ^ s) - s;
    mag = mag < 8158 ? mag : 8158;
    uint32_t code = (f2u((float)(mag + 33)) >> 19) - ((127u + 5u) << 4);
    uint32_t mask = 0xFFu ^ ((uint32_t)s & 0x80u);
    return (uint8_t)(code ^ mask);
}

/* ---- bulk conversions -------------------------------------------------- */

ENG_MV void eng_s16_to_f32(const char *restrict in, size_t n, float *restrict out) {
    const float k = 1.0f / 32768.0f;
    for (size_t i = 0; i < n; i++) out[i] = (float)ld_s16(in + 2 * i) * k;
}

ENG_MV size_t eng_f32_to_s16(const float *restrict in, size_t n, char *restrict out) {
    size_t bad = 0;
    for (size_t b = 0; b < n; b += ENG_COUNT_BLOCK) {
        size_t e = n - b < ENG_COUNT_BLOCK ? n : b + ENG_COUNT_BLOCK;
        uint32_t cnt = 0;
        for (size_t i = b; i < e; i++) {
            float x = in[i];
            cnt += nonfinite(x);
            st_s16(out + 2 * i, (int16_t)to_s16(x * 32768.0f));
        }
        bad += cnt;
    }
    return bad;
}

ENG_MV void eng_ulaw_to_s16(const char *restrict in, size_t n, char *restrict out) {
    const uint8_t *u = (const uint8_t *)in;
    for (size_t i = 0; i < n; i++) st_s16(out + 2 * i, (int16_t)ulaw_to_int(u[i]));
}

ENG_MV void eng_s16_to_ulaw(const char *restrict in, size_t n, char *restrict out) {
    uint8_t *o = (uint8_t *)out;
    for (size_t i = 0; i < n; i++) o[i] = int_to_ulaw(ld_s16(in + 2 * i));
}

ENG_MV void eng_ulaw_to_f32(const char *restrict in, size_t n, float *restrict out) {
    const uint8_t *u = (const uint8_t *)in;
    for (size_t i = 0; i < n; i++) out[i] = ulaw_to_float(u[i]);
}

ENG_MV size_t eng_f32_to_ulaw(const float *restrict in, size_t n, char *restrict out) {
    uint8_t *o = (uint8_t *)out;
    size_t bad = 0;
    for (size_t b = 0; b < n; b += ENG_COUNT_BLOCK) {
        size_t e = n - b < ENG_COUNT_BLOCK ? n : b + ENG_COUNT_BLOCK;
        uint32_t cnt = 0;
        for (size_t i = b; i < e; i++) {
            float x = in[i];
            cnt += nonfinite(x);
            o[i] = int_to_ulaw(to_s16(x * 32768.0f));
        }
        bad += cnt;
    }
    return bad;
}

ENG_MV size_t eng_f32_sanitize(const char *restrict in, size_t n, float *restrict out) {
    size_t bad = 0;
    for (size_t b = 0; b < n; b += ENG_COUNT_BLOCK) {
        size_t e = n - b < ENG_COUNT_BLOCK ? n : b + ENG_COUNT_BLOCK;
        uint32_t cnt = 0;
        for (size_t i = b; i < e; i++) {
            float x = ld_f32(in + 4 * i);
            cnt += nonfinite(x);
            out[i] = sanitize(x);
        }
        bad += cnt;
    }
    return bad;
}

/* Sum of squares in double: exact (the same value in any order) while the sum
 * stays below 2^53, i.e. for fewer than 2^23 full-scale samples, so the
 * result equals audioop.rms's before its truncation to an integer. */
ENG_MV double eng_rms_s16(const char *restrict in, size_t n) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    if (n == 0) return 0.0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            double x = (double)ld_s16(in + 2 * (i + j));
            acc[j] += x * x;
        }
    for (; i < n; i++) {
        double x = (double)ld_s16(in + 2 * i);
        acc[0] += x * x;
    }
    double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    return sqrt(s / (double)n);
}

/* ---- segment kernels ----------------------------------------------------
 * Decode n sample frames (any encoding, `ch` interleaved channels) to
 * float32 and add the squares of their mono mix (the mean of the channels,
 * in double) to 8 lane accumulators. Two vectorisable passes over an L1-sized
 * block: decode into out (or a scratch block when the caller wants no
 * samples), then the energy from the floats. Sample frame k of a VAD frame
 * always goes to lane k % 8 (pos is the index of in[0] within its VAD frame)
 * and each lane is summed in sample order, so a frame's energy is the same
 * number however the stream was cut into chunks. (For S16 and mu-law every
 * square and partial sum is exact in double anyway.) */

#define ENG_SCRATCH 1024 /* floats */

ENG_INLINE uint32_t dec_block(const char *restrict in, size_t m, const int enc, float *restrict dst) {
    uint32_t bad = 0;
    if (enc == ENG_PCM_S16LE) {
        for (size_t i = 0; i < m; i++) dst[i] = (float)ld_s16(in + 2 * i) * (1.0f / 32768.0f);
    } else if (enc == ENG_PCM_F32LE) {
        for (size_t i = 0; i < m; i++) {
            float x = ld_f32(in + 4 * i);
            bad += nonfinite(x);
            dst[i] = sanitize(x);
        }
    } else {
        const uint8_t *u = (const uint8_t *)in;
        for (size_t i = 0; i < m; i++) dst[i] = ulaw_to_float(u[i]);
    }
    return bad;
}

ENG_INLINE double mono_of(const float *restrict x, size_t k, const int ch) {
    if (ch == 1) return (double)x[k];
    if (ch == 2) return ((double)x[2 * k] + (double)x[2 * k + 1]) * 0.5;
    double m = 0.0;
    for (int c = 0; c < ch; c++) m += (double)x[k * (size_t)ch + (size_t)c];
    return m * (1.0 / (double)ch);
}

/* energy of n sample frames of decoded floats, starting at lane pos % 8 */
ENG_INLINE void energy_block(const float *restrict x, size_t n, unsigned pos, const int ch,
                             double *restrict lanes) {
    size_t i = 0;
    for (; i < n && ((pos + i) & 7u); i++) {
        double m = mono_of(x, i, ch);
        lanes[(pos + i) & 7u] += m * m;
    }
    double acc[8];
    for (int j = 0; j < 8; j++) acc[j] = lanes[j];
    const float *restrict y = x + i * (size_t)ch;
    size_t nb = (n - i) / 8;
    for (size_t b = 0; b < nb; b++)
        for (int j = 0; j < 8; j++) {
            double m = mono_of(y, 8 * b + (size_t)j, ch);
            acc[j] += m * m;
        }
    i += 8 * nb;
    for (unsigned j = 0; i < n; i++, j++) {
        double m = mono_of(x, i, ch);
        acc[j] += m * m;
    }
    for (int j = 0; j < 8; j++) lanes[j] = acc[j];
}

ENG_INLINE uint32_t seg_kernel(const char *restrict in, size_t n, unsigned pos, const int enc, const int ch,
                               float *restrict out, double *restrict lanes) {
    const size_t bps = enc == ENG_PCM_S16LE ? 2 : enc == ENG_PCM_F32LE ? 4 : 1;
    float scratch[ENG_SCRATCH];
    const size_t step = ENG_SCRATCH / (size_t)ch;
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        float *dst = out ? out + i * (size_t)ch : scratch;
        bad += dec_block(in + i * (size_t)ch * bps, k * (size_t)ch, enc, dst);
        energy_block(dst, k, (unsigned)(pos + i), ch, lanes);
    }
    return bad;
}

#define SEG_CASES(ENC)                                                        \
    switch (channels) {                                                       \
        case 1:                                                               \
            return seg_kernel(in, n, pos, ENC, 1, out, lanes);                \
        case 2:                                                               \
            return seg_kernel(in, n, pos, ENC, 2, out, lanes);                \
        default:                                                              \
            return seg_kernel(in, n, pos, ENC, channels, out, lanes);         \
    }

/* Returns the number of non-finite input samples (F32 only). */
ENG_MV static uint32_t seg_decode(const char *restrict in, size_t n, unsigned pos, int encoding, int channels,
                                  float *restrict out, double *restrict lanes) {
    if (encoding == ENG_PCM_S16LE) {
        SEG_CASES(ENG_PCM_S16LE)
    } else if (encoding == ENG_PCM_F32LE) {
        SEG_CASES(ENG_PCM_F32LE)
    } else {
        SEG_CASES(ENG_MULAW)
    }
}

static inline double lanes_sum(const double *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* dBFS of a frame: 10 log10(mean square of the mono mix), -120 for silence */
static inline float energy_db(double sumsq, int n) {
    double ms = sumsq / (double)n;
    if (!(ms > 1e-12)) return ENG_SILENCE_DB;
    return (float)(10.0 * log10(ms));
}

static int bytes_per_sample(int encoding) {
    return encoding == ENG_PCM_S16LE ? 2 : encoding == ENG_PCM_F32LE ? 4 : 1;
}

size_t eng_frame_energy(const char *in, size_t nbytes, int encoding, int channels, size_t frame_len,
                        float *out_db, size_t cap) {
    if (encoding < 0 || encoding > 2 || channels < 1 || channels > ENG_MAX_CHANNELS || frame_len == 0)
        return 0;
    int bps = bytes_per_sample(encoding);
    size_t frame_bytes = frame_len * (size_t)channels * (size_t)bps;
    size_t nframes = nbytes / frame_bytes;
    if (nframes > cap) nframes = cap;
    for (size_t f = 0; f < nframes; f++) {
        double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        seg_decode(in + f * frame_bytes, frame_len, 0, encoding, channels, NULL, lanes);
        out_db[f] = energy_db(lanes_sum(lanes), (int)frame_len);
    }
    return nframes;
}

/* ---- streaming decoder + VAD ------------------------------------------ */

int eng_stream_init(eng_stream_t *st, int encoding, int sample_rate, int channels, int frame_ms,
                    float margin_db, float abs_min_db, float floor_init_db, int onset_ms, int hangover_ms,
                    int memory_ms, float rise_tau_ms, float spread_mult, int stationary_ms,
                    float stationary_db) {
    if (encoding < 0 || encoding > 2) return -1;
    if (channels < 1 || channels > ENG_MAX_CHANNELS) return -1;
    if (sample_rate < 8000 || sample_rate > 48000) return -1;
    if (frame_ms != 10 && frame_ms != 20 && frame_ms != 30) return -1;
    if (((long)sample_rate * frame_ms) % 1000 != 0) return -1;
    if (onset_ms < 0 || onset_ms > 10000 || hangover_ms < 0 || hangover_ms > 10000) return -1;
    if (memory_ms < frame_ms || memory_ms > 60000) return -1;
    if (stationary_ms != 0 && (stationary_ms < ENG_STAT_BLOCKS * frame_ms || stationary_ms > 60000)) return -1;
    if (!(rise_tau_ms > 0.0f) || !(spread_mult >= 0.0f) || !(margin_db >= 0.0f) || !(stationary_db >= 0.0f))
        return -1;
    if (!(margin_db < 1e4f) || !(spread_mult < 1e4f) || !(rise_tau_ms < 1e9f) || !(stationary_db < 1e4f)) return -1;
    if (!(fabsf(abs_min_db) < 1e4f) || !(fabsf(floor_init_db) < 1e4f)) return -1;
    memset(st, 0, sizeof *st);
    st->encoding = encoding;
    st->channels = channels;
    st->sample_rate = sample_rate;
    st->frame_ms = frame_ms;
    st->frame_len = (int)(((long)sample_rate * frame_ms) / 1000);
    st->bytes_per_sample = bytes_per_sample(encoding);
    st->bytes_per_frame = st->bytes_per_sample * channels;
    st->margin_db = margin_db;
    st->abs_min_db = abs_min_db;
    st->rise_coef = (float)(1.0 - exp(-(double)frame_ms / (double)rise_tau_ms));
    st->spread_mult = spread_mult;
    st->spread_coef = (float)(1.0 - exp(-(double)frame_ms / 1000.0));
    st->spread_db = 1.0f;
    st->onset_frames = onset_ms <= frame_ms ? 1 : (onset_ms + frame_ms - 1) / frame_ms;
    st->hangover_frames = (hangover_ms + frame_ms - 1) / frame_ms;
    st->n_blocks = ENG_MAX_BLOCKS / 2;
    st->block_frames = memory_ms / frame_ms / st->n_blocks;
    if (st->block_frames < 1) st->block_frames = 1;
    st->floor_db = floor_init_db;
    st->cur_block_min = 1e9f;
    for (int b = 0; b < ENG_MAX_BLOCKS; b++) st->block_min[b] = floor_init_db;
    st->stat_block_frames = stationary_ms / frame_ms / ENG_STAT_BLOCKS; /* 0: detector off */
    st->stationary_db = stationary_db;
    st->stat_cur_min = 1e9f;
    st->stat_cur_max = -1e9f;
    st->last_db = ENG_SILENCE_DB;
    st->last_speech_frame = -1;
    return 0;
}

/* Stationarity detector: the level range (max - min of the frame energies)
 * over the last ENG_STAT_BLOCKS blocks (stationary_ms in all, plus the block
 * being filled). Returns the window's minimum if the window is complete and
 * its range is at most stationary_db, else +1e9. Speech never holds its level
 * that steadily for a second (syllables come and go at 3-8 Hz and words are
 * separated by gaps, a range of 15-30 dB); a stationary noise, hum or tone
 * does. */
static float stationary_min(eng_stream_t *st, float db) {
    if (st->stat_block_frames == 0) return 1e9f;
    if (db < st->stat_cur_min) st->stat_cur_min = db;
    if (db > st->stat_cur_max) st->stat_cur_max = db;
    if (++st->stat_fill >= st->stat_block_frames) {
        st->stat_min[st->stat_idx] = st->stat_cur_min;
        st->stat_max[st->stat_idx] = st->stat_cur_max;
        st->stat_idx = (st->stat_idx + 1) % ENG_STAT_BLOCKS;
        if (st->stat_full < ENG_STAT_BLOCKS) st->stat_full++;
        st->stat_cur_min = 1e9f;
        st->stat_cur_max = -1e9f;
        st->stat_fill = 0;
    }
    if (st->stat_full < ENG_STAT_BLOCKS) return 1e9f;
    float lo = st->stat_cur_min, hi = st->stat_cur_max;
    for (int b = 0; b < ENG_STAT_BLOCKS; b++) {
        if (st->stat_min[b] < lo) lo = st->stat_min[b];
        if (st->stat_max[b] > hi) hi = st->stat_max[b];
    }
    return hi - lo <= st->stationary_db ? lo : 1e9f;
}

/* One complete frame's energy -> speech or not, updating the noise floor. */
static int vad_frame(eng_stream_t *st, float db) {
    /* minimum statistics: the floor follows the quietest frame of the last
     * n_blocks * block_frames frames; it falls at once and rises smoothly. */
    if (db < st->cur_block_min) st->cur_block_min = db;
    if (++st->block_fill >= st->block_frames) {
        st->block_min[st->block_idx] = st->cur_block_min;
        st->block_idx = (st->block_idx + 1) % st->n_blocks;
        st->cur_block_min = 1e9f;
        st->block_fill = 0;
    }
    float target = st->cur_block_min;
    for (int b = 0; b < st->n_blocks; b++)
        if (st->block_min[b] < target) target = st->block_min[b];
    if (target < st->floor_db)
        st->floor_db = target;
    else
        st->floor_db += (target - st->floor_db) * st->rise_coef;

    /* a stationary stretch is noise: the floor jumps up to its minimum at
     * once, and the older, quieter history is forgotten */
    float smin = stationary_min(st, db);
    if (smin < 1e8f && smin > st->floor_db) {
        st->floor_db = smin;
        for (int b = 0; b < st->n_blocks; b++)
            if (st->block_min[b] < smin) st->block_min[b] = smin;
        if (st->cur_block_min < smin) st->cur_block_min = smin;
    }

    /* the margin widens for noise whose level fluctuates (spread) */
    float margin = st->spread_mult * st->spread_db;
    if (margin < st->margin_db) margin = st->margin_db;
    float thr = st->floor_db + margin;
    if (thr < st->abs_min_db) thr = st->abs_min_db;
    if (db > thr)
        st->run_above++;
    else
        st->run_above = 0;
    int speech;
    if (st->run_above >= st->onset_frames) {
        speech = 1;
        st->hang_left = st->hangover_frames;
    } else if (st->hang_left > 0) {
        speech = 1;
        st->hang_left--;
    } else {
        speech = 0;
    }
    if (!speech && db > ENG_SILENCE_DB) {
        float d = db - st->floor_db;
        st->spread_db += (d - st->spread_db) * st->spread_coef;
    }
    st->in_speech = speech;
    st->last_db = db;
    return speech;
}

typedef struct {
    float *out;
    uint8_t *flags;
    float *energies;
    size_t cap;
    size_t nframes;
    size_t speech;
} feed_ctx;

static void process(eng_stream_t *st, const char *p, size_t nsf, feed_ctx *cx) {
    const int bpf = st->bytes_per_frame;
    while (nsf > 0) {
        size_t take = (size_t)(st->frame_len - st->acc_n);
        if (take > nsf) take = nsf;
        st->nonfinite += seg_decode(p, take, (unsigned)st->acc_n, st->encoding, st->channels, cx->out, st->lanes);
        if (cx->out) cx->out += take * (size_t)st->channels;
        st->acc_n += (int)take;
        st->samples += take;
        p += take * (size_t)bpf;
        nsf -= take;
        if (st->acc_n == st->frame_len) {
            float db = energy_db(lanes_sum(st->lanes), st->frame_len);
            int speech = vad_frame(st, db);
            if (cx->nframes < cx->cap) {
                if (cx->flags) cx->flags[cx->nframes] = (uint8_t)speech;
                if (cx->energies) cx->energies[cx->nframes] = db;
            }
            if (speech) {
                st->speech_frames++;
                st->last_speech_frame = (int64_t)st->frames;
                cx->speech++;
            }
            st->frames++;
            cx->nframes++;
            memset(st->lanes, 0, sizeof st->lanes);
            st->acc_n = 0;
        }
    }
}

size_t eng_stream_feed(eng_stream_t *st, const char *in, size_t nbytes, float *out, uint8_t *flags,
                       float *energies, size_t cap) {
    feed_ctx cx = {out, flags, energies, cap, 0, 0};
    const size_t bpf = (size_t)st->bytes_per_frame;
    st->bytes += nbytes;
    if (st->rem_len > 0) {
        size_t need = bpf - (size_t)st->rem_len;
        if (nbytes < need) {
            memcpy(st->rem + st->rem_len, in, nbytes);
            st->rem_len += (int)nbytes;
            return 0;
        }
        memcpy(st->rem + st->rem_len, in, need);
        in += need;
        nbytes -= need;
        st->rem_len = 0;
        process(st, (const char *)st->rem, 1, &cx);
    }
    size_t nsf = nbytes / bpf;
    process(st, in, nsf, &cx);
    size_t tail = nbytes - nsf * bpf;
    memcpy(st->rem, in + nsf * bpf, tail);
    st->rem_len = (int)tail;
    return cx.speech;
}

size_t eng_stream_push(eng_stream_t *st, const char *in, size_t nbytes) {
    return eng_stream_feed(st, in, nbytes, NULL, NULL, NULL, 0);
}

const char *eng_simd_info(void) {
#if defined(ENG_CLONES)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? "avx2 (target_clones avx2/default, picked at load time)"
                                          : "default x86-64 (target_clones avx2/default; no AVX2 on this CPU)";
#else
    return "portable C (no target_clones on this compiler/platform)";
#endif
}
