/* engine_audio.h: the native audio core of engine (conversion, energy, VAD).
 *
 * All byte buffers are little-endian sample data of any length (including 0).
 * Counts named n are in samples (not bytes) unless named nbytes.
 * This header is also fed to cffi's cdef (lines starting with '#' are dropped
 * there), so it holds only plain declarations.
 */
#ifndef ENGINE_AUDIO_H
#define ENGINE_AUDIO_H
#include <stddef.h>
#include <stdint.h>

/* encodings */
#define ENG_PCM_S16LE 0
#define ENG_PCM_F32LE 1
#define ENG_MULAW 2

#define ENG_MAX_CHANNELS 8
#define ENG_MAX_BLOCKS 16
#define ENG_STAT_BLOCKS 5

/* --- conversions ------------------------------------------------------- */
void eng_s16_to_f32(const char *in, size_t n, float *out);
/* float32 -> S16LE: x * 32768 rounded to nearest (ties to even), saturated to
 * [-32768, 32767] (so +/-Inf too); NaN -> 0. Returns the
 * number of non-finite inputs. */
size_t eng_f32_to_s16(const float *in, size_t n, char *out);
/* G.711 mu-law, bit-exact with audioop.ulaw2lin / lin2ulaw (width 2). */
void eng_ulaw_to_s16(const char *in, size_t n, char *out);
void eng_s16_to_ulaw(const char *in, size_t n, char *out);
void eng_ulaw_to_f32(const char *in, size_t n, float *out);
size_t eng_f32_to_ulaw(const float *in, size_t n, char *out);
/* F32LE bytes -> float32: NaN -> 0, +/-Inf -> +/-1.0, finite values kept.
 * Returns the number of non-finite inputs. */
size_t eng_f32_sanitize(const char *in, size_t n, float *out);
/* sqrt(mean(x^2)) of S16LE samples in integer units, like audioop.rms. */
double eng_rms_s16(const char *in, size_t n);

/* --- per-frame energy -------------------------------------------------- */
/* One dBFS value per complete frame of frame_len sample frames (each sample
 * frame = channels interleaved samples, averaged to mono). 0 dBFS is a
 * full-scale square wave; silence is floored at -120. Returns the number of
 * frames written (at most cap). */
size_t eng_frame_energy(const char *in, size_t nbytes, int encoding, int channels,
                        size_t frame_len, float *out_db, size_t cap);

/* --- streaming decoder + VAD ------------------------------------------ */
typedef struct {
    /* configuration (set by eng_stream_init) */
    int encoding;
    int channels;
    int sample_rate;
    int frame_len;          /* sample frames per VAD frame */
    int frame_ms;
    int bytes_per_sample;   /* of one channel */
    int bytes_per_frame;    /* bytes of one sample frame (all channels) */
    float margin_db;        /* speech threshold above the noise floor */
    float abs_min_db;       /* ... and above this absolute level */
    float rise_coef;        /* per-frame fraction of the gap the floor rises by */
    float spread_mult;      /* threshold >= floor + spread_mult * spread */
    float spread_coef;      /* per-frame smoothing of the spread */
    int onset_frames;       /* frames above threshold before speech starts */
    int hangover_frames;    /* speech kept this many frames after it stops */
    int block_frames;       /* frames per minimum-statistics block */
    int n_blocks;           /* blocks in the floor's memory */
    int stat_block_frames;  /* frames per block of the stationarity window (0: off) */
    float stationary_db;    /* a window whose level range is at most this is noise */
    /* carried between calls */
    uint8_t rem[32];        /* bytes of an incomplete sample frame */
    int rem_len;
    double lanes[8];        /* sum of squares of the incomplete VAD frame, by lane */
    int acc_n;              /* sample frames in it */
    float floor_db;
    float spread_db;        /* mean height of non-speech frames above the floor */
    float cur_block_min;
    int block_fill;
    int block_idx;
    float block_min[16];
    float stat_cur_min;     /* stationarity window: the block being filled ... */
    float stat_cur_max;
    int stat_fill;
    int stat_idx;
    int stat_full;          /* complete blocks so far (at most ENG_STAT_BLOCKS) */
    float stat_min[5];      /* ... and the last ENG_STAT_BLOCKS complete blocks */
    float stat_max[5];
    int run_above;
    int hang_left;
    int in_speech;
    float last_db;
    /* totals */
    uint64_t bytes;         /* bytes received */
    uint64_t samples;       /* complete sample frames decoded (billing basis) */
    uint64_t frames;        /* complete VAD frames */
    uint64_t speech_frames;
    uint64_t nonfinite;     /* NaN/Inf samples replaced (F32 input) */
    int64_t last_speech_frame; /* index of the last speech frame, -1 if none */
} eng_stream_t;

/* Returns 0, or -1 for a bad configuration. */
int eng_stream_init(eng_stream_t *st, int encoding, int sample_rate, int channels,
                    int frame_ms, float margin_db, float abs_min_db, float floor_init_db,
                    int onset_ms, int hangover_ms, int memory_ms, float rise_tau_ms,
                    float spread_mult, int stationary_ms, float stationary_db);

/* Decode nbytes of input (any length) and run energy + VAD over the complete
 * frames, in one pass. If out is not NULL it receives the decoded float32
 * interleaved samples of every sample frame completed by this call (the
 * caller sizes it: (rem_len + nbytes) / bytes_per_frame * channels). If
 * flags / energies are not NULL they receive up to cap per-frame decisions
 * and dBFS values. Returns the number of speech frames in this call. */
size_t eng_stream_feed(eng_stream_t *st, const char *in, size_t nbytes, float *out,
                       uint8_t *flags, float *energies, size_t cap);
/* eng_stream_feed without outputs (the session hot path: fewer arguments to
 * convert per call from Python). */
size_t eng_stream_push(eng_stream_t *st, const char *in, size_t nbytes);

/* Which SIMD variant of the bulk kernels this process uses (for reports). */
const char *eng_simd_info(void);

#endif
