/* engine_audio.c: the native audio core of engine.
 *
 * Sample conversion (S16LE, F32LE, G.711 mu-law), per-frame energy and an
 * energy-based voice activity detector, fused into one streaming pass.
 *
 * The loops are written so that the compiler can vectorise them (no
 * hand-written assembly or intrinsics). On x86-64 with GCC the bulk kernels
 * are also compiled for AVX2 and picked at load time (target_clones).
 */
#include "engine_audio.h"

#include <math.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define ENG_MV __attribute__((target_clones("avx2", "default")))
#else
#define ENG_MV
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define ENG_BIG_ENDIAN 1
#else
#define ENG_BIG_ENDIAN 0
#endif

#define ENG_SILENCE_DB (-120.0f)

/* ---- little-endian loads and stores (unaligned-safe) ------------------- */

static inline int16_t ld_s16(const char *p) {
    uint16_t u;
    memcpy(&u, p, 2);
#if ENG_BIG_ENDIAN
    u = (uint16_t)((u >> 8) | (u << 8));
#endif
    return (int16_t)u;
}

static inline void st_s16(char *p, int16_t v) {
    uint16_t u = (uint16_t)v;
#if ENG_BIG_ENDIAN
    u = (uint16_t)((u >> 8) | (u << 8));
#endif
    memcpy(p, &u, 2);
}

static inline float ld_f32(const char *p) {
    uint32_t u;
    float f;
    memcpy(&u, p, 4);
#if ENG_BIG_ENDIAN
    u = __builtin_bswap32(u);
#endif
    memcpy(&f, &u, 4);
    return f;
}

/* NaN -> 0, +/-Inf -> +/-1, finite unchanged (branch-free selects). */
static inline float sanitize(float x) {
    x = (x == x) ? x : 0.0f;
    x = (x > 3.402823466e38f) ? 1.0f : x;
    x = (x < -3.402823466e38f) ? -1.0f : x;
    return x;
}

static inline int nonfinite(float x) { return !(x - x == 0.0f); }

/* float (already scaled to the int16 range) -> int16, round half to even,
 * saturating, NaN -> 0. The magic constant rounds exactly for |v| < 2^22. */
static inline int16_t to_s16(float v) {
    v = (v == v) ? v : 0.0f;
    v = v > 32767.0f ? 32767.0f : v;
    v = v < -32768.0f ? -32768.0f : v;
    v = (v + 12582912.0f) - 12582912.0f;
    return (int16_t)(int32_t)v;
}

/* ---- G.711 mu-law tables (audioop's algorithm, so bit-exact) ----------- */

static int16_t ulaw_dec[256];
static float ulaw_dec_f[256];
static uint8_t ulaw_enc[16384]; /* indexed by the top 14 bits of the sample */

static uint8_t ulaw_encode14(int pcm) { /* audioop st_14linear2ulaw */
    static const int seg_uend[8] = {0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF};
    int mask, seg;
    if (pcm < 0) {
        pcm = -pcm;
        mask = 0x7F;
    } else {
        mask = 0xFF;
    }
    if (pcm > 8159) pcm = 8159;
    pcm += (0x84 >> 2);
    for (seg = 0; seg < 8; seg++)
        if (pcm <= seg_uend[seg]) break;
    if (seg >= 8) return (uint8_t)(0x7F ^ mask);
    return (uint8_t)((((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask) & 0xFF);
}

static int16_t ulaw_decode(uint8_t u) { /* G.711, as audioop's table */
    int t;
    u = (uint8_t)~u;
    t = ((u & 0x0F) << 3) + 0x84;
    t <<= (u & 0x70) >> 4;
    return (int16_t)((u & 0x80) ? (0x84 - t) : (t - 0x84));
}

__attribute__((constructor)) static void eng_tables_init(void) {
    for (int i = 0; i < 256; i++) {
        ulaw_dec[i] = ulaw_decode((uint8_t)i);
        ulaw_dec_f[i] = (float)ulaw_dec[i] * (1.0f / 32768.0f);
    }
    for (int i = 0; i < 16384; i++) ulaw_enc[i] = ulaw_encode14(i < 8192 ? i : i - 16384);
}

/* ---- bulk conversions -------------------------------------------------- */

ENG_MV void eng_s16_to_f32(const char *restrict in, size_t n, float *restrict out) {
    const float k = 1.0f / 32768.0f;
    for (size_t i = 0; i < n; i++) out[i] = (float)ld_s16(in + 2 * i) * k;
}

ENG_MV size_t eng_f32_to_s16(const float *restrict in, size_t n, char *restrict out) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        bad += (size_t)nonfinite(x);
        st_s16(out + 2 * i, to_s16(x * 32768.0f));
    }
    return bad;
}

void eng_ulaw_to_s16(const char *restrict in, size_t n, char *restrict out) {
    const uint8_t *u = (const uint8_t *)in;
    for (size_t i = 0; i < n; i++) st_s16(out + 2 * i, ulaw_dec[u[i]]);
}

void eng_s16_to_ulaw(const char *restrict in, size_t n, char *restrict out) {
    for (size_t i = 0; i < n; i++) out[i] = (char)ulaw_enc[(uint16_t)ld_s16(in + 2 * i) >> 2];
}

void eng_ulaw_to_f32(const char *restrict in, size_t n, float *restrict out) {
    const uint8_t *u = (const uint8_t *)in;
    for (size_t i = 0; i < n; i++) out[i] = ulaw_dec_f[u[i]];
}

size_t eng_f32_to_ulaw(const float *restrict in, size_t n, char *restrict out) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        bad += (size_t)nonfinite(x);
        out[i] = (char)ulaw_enc[(uint16_t)to_s16(x * 32768.0f) >> 2];
    }
    return bad;
}

ENG_MV size_t eng_f32_sanitize(const char *restrict in, size_t n, float *restrict out) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float x = ld_f32(in + 4 * i);
        bad += (size_t)nonfinite(x);
        out[i] = sanitize(x);
    }
    return bad;
}

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

/* ---- segment kernels: decode n sample frames, return the sum of squares
 * of the mono mix (normalised to +/-1), optionally writing float32 out. ---- */

#define LANES 8

static inline __attribute__((always_inline)) double seg_s16_mono(const char *restrict in, size_t n,
                                                                  float *restrict out, int write) {
    const float k = 1.0f / 32768.0f;
    float acc[LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            float x = (float)ld_s16(in + 2 * (i + j)) * k;
            if (write) out[i + j] = x;
            acc[j] += x * x;
        }
    for (; i < n; i++) {
        float x = (float)ld_s16(in + 2 * i) * k;
        if (write) out[i] = x;
        acc[0] += x * x;
    }
    return (double)(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
}

static inline __attribute__((always_inline)) double seg_f32_mono(const char *restrict in, size_t n,
                                                                  float *restrict out, int write,
                                                                  uint64_t *bad_out) {
    float acc[LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    uint32_t bad = 0;
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            float x = ld_f32(in + 4 * (i + j));
            bad += (uint32_t)nonfinite(x);
            x = sanitize(x);
            if (write) out[i + j] = x;
            acc[j] += x * x;
        }
    for (; i < n; i++) {
        float x = ld_f32(in + 4 * i);
        bad += (uint32_t)nonfinite(x);
        x = sanitize(x);
        if (write) out[i] = x;
        acc[0] += x * x;
    }
    *bad_out += bad;
    return (double)(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
}

static inline __attribute__((always_inline)) double seg_ulaw_mono(const char *restrict in, size_t n,
                                                                   float *restrict out, int write) {
    const uint8_t *u = (const uint8_t *)in;
    float acc[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) {
            float x = ulaw_dec_f[u[i + j]];
            if (write) out[i + j] = x;
            acc[j] += x * x;
        }
    for (; i < n; i++) {
        float x = ulaw_dec_f[u[i]];
        if (write) out[i] = x;
        acc[0] += x * x;
    }
    return (double)((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

static inline float decode_one(const char *p, int encoding, uint64_t *bad) {
    switch (encoding) {
        case ENG_PCM_S16LE:
            return (float)ld_s16(p) * (1.0f / 32768.0f);
        case ENG_PCM_F32LE: {
            float x = ld_f32(p);
            *bad += (uint64_t)nonfinite(x);
            return sanitize(x);
        }
        default:
            return ulaw_dec_f[(uint8_t)*p];
    }
}

/* Any channel count: averaged to mono for the energy. */
static double seg_multi(const char *in, size_t n, int encoding, int channels, int bps, float *out,
                        uint64_t *bad) {
    double acc = 0.0;
    const float inv = 1.0f / (float)channels;
    for (size_t i = 0; i < n; i++) {
        float m = 0.0f;
        for (int c = 0; c < channels; c++) {
            float x = decode_one(in + ((size_t)i * (size_t)channels + (size_t)c) * (size_t)bps, encoding, bad);
            if (out) out[i * (size_t)channels + (size_t)c] = x;
            m += x;
        }
        m *= inv;
        acc += (double)(m * m);
    }
    return acc;
}

ENG_MV static double seg_decode(const char *in, size_t n, int encoding, int channels, int bps,
                                float *out, uint64_t *bad) {
    if (channels != 1) return seg_multi(in, n, encoding, channels, bps, out, bad);
    switch (encoding) {
        case ENG_PCM_S16LE:
            return out ? seg_s16_mono(in, n, out, 1) : seg_s16_mono(in, n, NULL, 0);
        case ENG_PCM_F32LE:
            return out ? seg_f32_mono(in, n, out, 1, bad) : seg_f32_mono(in, n, NULL, 0, bad);
        default:
            return out ? seg_ulaw_mono(in, n, out, 1) : seg_ulaw_mono(in, n, NULL, 0);
    }
}

static inline float energy_db(double sumsq, int n) {
    double ms = sumsq / (double)n;
    if (ms <= 1e-12) return ENG_SILENCE_DB;
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
    uint64_t bad = 0;
    if (nframes > cap) nframes = cap;
    for (size_t f = 0; f < nframes; f++)
        out_db[f] = energy_db(seg_decode(in + f * frame_bytes, frame_len, encoding, channels, bps, NULL, &bad),
                              (int)frame_len);
    return nframes;
}

/* ---- streaming decoder + VAD ------------------------------------------ */

int eng_stream_init(eng_stream_t *st, int encoding, int sample_rate, int channels, int frame_ms,
                    float margin_db, float abs_min_db, float floor_init_db, int onset_ms, int hangover_ms,
                    int memory_ms, float rise_tau_ms, float spread_mult) {
    if (encoding < 0 || encoding > 2) return -1;
    if (channels < 1 || channels > ENG_MAX_CHANNELS) return -1;
    if (sample_rate < 8000 || sample_rate > 48000) return -1;
    if (frame_ms != 10 && frame_ms != 20 && frame_ms != 30) return -1;
    if (((long)sample_rate * frame_ms) % 1000 != 0) return -1;
    if (onset_ms < 0 || hangover_ms < 0 || memory_ms < frame_ms || memory_ms > 60000) return -1;
    if (!(rise_tau_ms > 0.0f) || !(spread_mult >= 0.0f) || !(margin_db >= 0.0f)) return -1;
    if (!(abs_min_db == abs_min_db) || !(floor_init_db == floor_init_db)) return -1;
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
    st->n_blocks = 8;
    st->block_frames = memory_ms / frame_ms / st->n_blocks;
    if (st->block_frames < 1) st->block_frames = 1;
    st->floor_db = floor_init_db;
    st->cur_block_min = 1e9f;
    for (int b = 0; b < ENG_MAX_BLOCKS; b++) st->block_min[b] = floor_init_db;
    st->last_db = ENG_SILENCE_DB;
    st->last_speech_frame = -1;
    return 0;
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
        st->acc += seg_decode(p, take, st->encoding, st->channels, st->bytes_per_sample, cx->out, &st->nonfinite);
        if (cx->out) cx->out += take * (size_t)st->channels;
        st->acc_n += (int)take;
        st->samples += take;
        p += take * (size_t)bpf;
        nsf -= take;
        if (st->acc_n == st->frame_len) {
            float db = energy_db(st->acc, st->frame_len);
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
            st->acc = 0.0;
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
