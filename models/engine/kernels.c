#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <omp.h>

static inline float bf16_in(uint16_t h) { union { uint32_t u; float f; } x; x.u = ((uint32_t)h) << 16; return x.f; }
static inline uint16_t bf16_out(float f) {
    union { uint32_t u; float f; } x; x.f = f;
    return (uint16_t)((x.u + 0x7FFFu + ((x.u >> 16) & 1u)) >> 16);  /* round to nearest even */
}
static inline float f32_in(float f) { return f; }
static inline float f32_out(float f) { return f; }

/* ---- work split over OpenMP threads (torch's own runtime: the kernels share its thread team) ---- */
typedef void (*task_fn)(void* ctx, int start, int end);

static void parallel_for(int n, int threads, task_fn fn, void* ctx) {
    if (threads <= 1 || n <= 1) { fn(ctx, 0, n); return; }
    #pragma omp parallel num_threads(threads)
    {
        const int parts = omp_get_num_threads(), part = omp_get_thread_num();
        const int chunk = (n + parts - 1) / parts, s = part * chunk, e = s + chunk < n ? s + chunk : n;
        if (s < e) fn(ctx, s, e);
    }
}

/* ---- decode attention: q [B, KV, G, D]; k, v [slots, KV, cap, D]; out [B, KV, G, D] ---------------
   row b sees positions 0..pos[b]; one task per (row, KV head). DIM: a compile-time head size (64,
   128: the dot products unroll) or the runtime D (0). */
typedef struct {
    const void *q, *k, *v; const int64_t* pos; void* out;
    int B, KV, G, D, cap; float scale;
} attn_ctx;

#define ATTENTION(NAME, T, IN, OUT, DIM)                                                        \
static void NAME##_task(void* p, int start, int end) {                                          \
    const attn_ctx* c = (const attn_ctx*)p;                                                     \
    const int D = DIM ? DIM : c->D, G = c->G;                                                   \
    const T* q = (const T*)c->q; const T* k = (const T*)c->k; const T* v = (const T*)c->v;      \
    T* out = (T*)c->out;                                                                        \
    for (int item = start; item < end; item++) {                                                \
        const int b = item / c->KV;                                                             \
        const int n = (int)c->pos[b] + 1;                                                       \
        const size_t head = (size_t)item;                                                       \
        const T* kh = k + head * c->cap * D;                                                    \
        const T* vh = v + head * c->cap * D;                                                    \
        float* qf = (float*)malloc(sizeof(float) * G * D);                                      \
        float* s = (float*)malloc(sizeof(float) * (size_t)G * n);                               \
        for (int g = 0; g < G; g++)                                                             \
            for (int d = 0; d < D; d++) qf[g * D + d] = IN(q[(head * G + g) * D + d]) * c->scale; \
        for (int g = 0; g < G; g++) {  /* the query head stays in registers */                  \
            float qg[DIM ? DIM : 256];                                                          \
            for (int d = 0; d < D; d++) qg[d] = qf[g * D + d];                                  \
            float* sg = s + (size_t)g * n;                                                      \
            for (int t = 0; t < n; t++) {                                                       \
                const T* kt = kh + (size_t)t * D;                                               \
                float dot = 0.f;                                                                \
                for (int d = 0; d < D; d++) dot += qg[d] * IN(kt[d]);                           \
                sg[t] = dot;                                                                    \
            }                                                                                   \
        }                                                                                       \
        for (int g = 0; g < G; g++) {                                                           \
            float* sg = s + (size_t)g * n;                                                      \
            float mx = sg[0];                                                                   \
            for (int t = 1; t < n; t++) mx = sg[t] > mx ? sg[t] : mx;                           \
            float sum = 0.f;                                                                    \
            for (int t = 0; t < n; t++) { sg[t] = expf(sg[t] - mx); sum += sg[t]; }             \
            const float inv = 1.f / sum;                                                        \
            for (int t = 0; t < n; t++) sg[t] *= inv;                                           \
        }                                                                                       \
        /* one query head at a time: its accumulator stays in registers (V is re-read from cache) */ \
        for (int g = 0; g < G; g++) {                                                           \
            float a[DIM ? DIM : 256];                                                           \
            for (int d = 0; d < D; d++) a[d] = 0.f;                                             \
            const float* sg = s + (size_t)g * n;                                                \
            for (int t = 0; t < n; t++) {                                                       \
                const T* vt = vh + (size_t)t * D;                                               \
                const float pr = sg[t];                                                         \
                for (int d = 0; d < D; d++) a[d] += pr * IN(vt[d]);                             \
            }                                                                                   \
            for (int d = 0; d < D; d++) out[(head * G + g) * D + d] = OUT(a[d]);                \
        }                                                                                       \
        free(qf); free(s);                                                                      \
    }                                                                                           \
}                                                                                               \
void NAME(const T* q, const T* k, const T* v, const int64_t* pos, T* out,                       \
          int B, int KV, int G, int D, int cap, float scale, int threads) {                     \
    attn_ctx c = {q, k, v, pos, out, B, KV, G, D, cap, scale};                                  \
    parallel_for(B * KV, threads, NAME##_task, &c);                                             \
}

ATTENTION(attention_bf16, uint16_t, bf16_in, bf16_out, 0)
ATTENTION(attention_f32, float, f32_in, f32_out, 0)
ATTENTION(attention_bf16_64, uint16_t, bf16_in, bf16_out, 64)
ATTENTION(attention_f32_64, float, f32_in, f32_out, 64)
ATTENTION(attention_bf16_128, uint16_t, bf16_in, bf16_out, 128)
ATTENTION(attention_f32_128, float, f32_in, f32_out, 128)

/* ---- next-token choice per row of float32 logits [B, V] ------------------------------------------
   temp[b] == 0: argmax; else inverse-CDF sampling of softmax(logits / temp) at uniform[b] (one pass for
   the max, one for the normaliser, one partial scan). logprob[b]: the raw log-softmax of the choice. */
typedef struct { const float* logits; const float* temp; const float* uniform; int64_t* token; float* logprob; int V, want; } pick_ctx;

static void pick_task(void* p, int start, int end) {
    const pick_ctx* c = (const pick_ctx*)p;
    const int V = c->V;
    for (int b = start; b < end; b++) {
        const float* l = c->logits + (size_t)b * V;
        float mx = l[0]; int arg = 0;
        for (int i = 1; i < V; i++) if (l[i] > mx) { mx = l[i]; arg = i; }
        int tok = arg;
        const float t = c->temp[b];
        if (t > 0.f) {
            const float inv = 1.f / t;
            float sum = 0.f;
            for (int i = 0; i < V; i++) sum += expf((l[i] - mx) * inv);
            const float target = c->uniform[b] * sum;
            float acc = 0.f;
            tok = V - 1;
            for (int i = 0; i < V; i++) {
                acc += expf((l[i] - mx) * inv);
                if (acc > target) { tok = i; break; }
            }
        }
        c->token[b] = tok;
        if (c->want) {
            float sum = 0.f;
            for (int i = 0; i < V; i++) sum += expf(l[i] - mx);
            c->logprob[b] = l[tok] - mx - logf(sum);
        }
    }
}

void pick_rows(const float* logits, const float* temp, const float* uniform, int64_t* token, float* logprob,
               int B, int V, int want, int threads) {
    pick_ctx c = {logits, temp, uniform, token, logprob, V, want};
    parallel_for(B, threads, pick_task, &c);
}

/* ---- y [M, N] = x [M, K] @ (w [N, K] int8 * scale [N])^T (+ bias), M <= 4 -------------------------
   weight-bound: each int8 row is read once for all M rows; bf16 in and out, float accumulation */
typedef struct { const float* xf; const int8_t* w; const float* scale; const uint16_t* bias; uint16_t* y; int M, N, K; } gemv_ctx;

static void gemv_task(void* p, int start, int end) {
    const gemv_ctx* c = (const gemv_ctx*)p;
    for (int n = start; n < end; n++) {
        const int8_t* wn = c->w + (size_t)n * c->K;
        const float b = c->bias ? bf16_in(c->bias[n]) : 0.f;
        for (int m = 0; m < c->M; m++) {
            const float* xm = c->xf + (size_t)m * c->K;
            float s = 0.f;
            for (int k = 0; k < c->K; k++) s += (float)wn[k] * xm[k];
            c->y[(size_t)m * c->N + n] = bf16_out(s * c->scale[n] + b);
        }
    }
}

void gemv_i8_bf16(const uint16_t* x, const int8_t* w, const float* scale, const uint16_t* bias, uint16_t* y,
                  int M, int N, int K, int threads) {
    float* xf = (float*)malloc(sizeof(float) * (size_t)M * K);
    for (int i = 0; i < M * K; i++) xf[i] = bf16_in(x[i]);
    gemv_ctx c = {xf, w, scale, bias, y, M, N, K};
    parallel_for(N, threads, gemv_task, &c);
    free(xf);
}

/* Llama RMSNorm on bf16 rows: out = w * bf16(x * rsqrt(mean(x^2) + eps)), as transformers rounds it */
void rmsnorm_bf16(const uint16_t* x, const uint16_t* w, uint16_t* out, int N, int H, float eps) {
    for (int n = 0; n < N; n++) {
        const uint16_t* xr = x + (size_t)n * H;
        uint16_t* o = out + (size_t)n * H;
        float ss = 0.f;
        for (int h = 0; h < H; h++) { const float v = bf16_in(xr[h]); ss += v * v; }
        const float r = 1.f / sqrtf(ss / H + eps);
        for (int h = 0; h < H; h++) o[h] = bf16_out(bf16_in(w[h]) * bf16_in(bf16_out(bf16_in(xr[h]) * r)));
    }
}

/* rotate q and k of one decode step (rotate-half rope), write k and v at each row's position, and
   attend: qkv [B, (H + 2KV) * D]; cos/sin [B, D] float; caches [slots, KV, cap, D]; out [B, H * D] */
typedef struct {
    const uint16_t* qkv; const float *cos, *sin; uint16_t *kc, *vc, *q; const int64_t* pos;
    int H, KV, D, cap;
} rope_ctx;

static void rope_task(void* p, int start, int end) {
    const rope_ctx* c = (const rope_ctx*)p;
    const int H = c->H, KV = c->KV, D = c->D, half = D / 2, stride = (H + 2 * KV) * D;
    for (int item = start; item < end; item++) {
        const int b = item / (H + KV), h = item % (H + KV);  /* the H query heads, then the KV key heads */
        const uint16_t* src = c->qkv + (size_t)b * stride + (size_t)h * D;
        const float* cs = c->cos + (size_t)b * D;
        const float* sn = c->sin + (size_t)b * D;
        uint16_t* dst = h < H ? c->q + ((size_t)b * H + h) * D
                              : c->kc + (((size_t)b * KV + (h - H)) * c->cap + c->pos[b]) * D;
        for (int i = 0; i < D; i++) {
            const float rot = i < half ? -bf16_in(src[i + half]) : bf16_in(src[i - half]);
            dst[i] = bf16_out(bf16_in(src[i]) * cs[i] + rot * sn[i]);
        }
        if (h >= H) {
            const uint16_t* vs = c->qkv + (size_t)b * stride + (size_t)(H + KV + (h - H)) * D;
            uint16_t* vd = c->vc + (((size_t)b * KV + (h - H)) * c->cap + c->pos[b]) * D;
            for (int i = 0; i < D; i++) vd[i] = vs[i];
        }
    }
}

void rope_attend_bf16(const uint16_t* qkv, const float* cos, const float* sin, uint16_t* kc, uint16_t* vc,
                      const int64_t* pos, uint16_t* out, int B, int H, int KV, int D, int cap,
                      float scale, int threads) {
    uint16_t* q = (uint16_t*)malloc(sizeof(uint16_t) * (size_t)B * H * D);
    rope_ctx c = {qkv, cos, sin, kc, vc, q, pos, H, KV, D, cap};
    parallel_for(B * (H + KV), threads, rope_task, &c);
    const int G = H / KV;
    if (D == 64) attention_bf16_64(q, kc, vc, pos, out, B, KV, G, D, cap, scale, threads);
    else if (D == 128) attention_bf16_128(q, kc, vc, pos, out, B, KV, G, D, cap, scale, threads);
    else attention_bf16(q, kc, vc, pos, out, B, KV, G, D, cap, scale, threads);
    free(q);
}
