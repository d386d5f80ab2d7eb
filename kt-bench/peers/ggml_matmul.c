// Peer harness: times ggml's own CPU matmul (ggml_mul_mat through a ggml threadpool) on the
// same shapes, formats and threads as `kt-bench matmul`, so both are measured in one run.
// Weights: 64 distinct rows of N(0, 0.05) quantized by ggml_quantize_chunk, repeated to the
// full shape; for GEMV the calls cycle through enough copies to exceed CYCLE_BYTES (default 1 GiB;
// kt-bench's `cycled_bytes`, 16 x the last-level cache, at least 1 GiB), as kt-bench does.
// Output: one JSON object per case.
//   ggml_matmul FORMAT ROWSxCOLS TOKENS THREADS [SECONDS]
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml.h"
#include "ggml-cpu.h"

static uint64_t rng_state = 1;
static uint64_t next_u64(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float normal(void) {
    double u1 = ((next_u64() >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (next_u64() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int cmp_double(const void * a, const void * b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static enum ggml_type parse_type(const char * s) {
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char * n = ggml_type_name((enum ggml_type)t);
        if (n && strcasecmp(n, s) == 0) return (enum ggml_type)t;
    }
    fprintf(stderr, "unknown ggml type %s\n", s);
    exit(2);
}

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: ggml_matmul FORMAT ROWSxCOLS TOKENS THREADS [SECONDS [CYCLE_BYTES]]\n");
        return 2;
    }
    enum ggml_type type = parse_type(argv[1]);
    long rows = 0, cols = 0;
    if (sscanf(argv[2], "%ldx%ld", &rows, &cols) != 2) { fprintf(stderr, "bad shape\n"); return 2; }
    int tokens = atoi(argv[3]), threads = atoi(argv[4]);
    double seconds = argc > 5 ? atof(argv[5]) : 1.0;
    unsigned long long cycle = argc > 6 ? strtoull(argv[6], NULL, 10) : (1ull << 30);

    size_t row_bytes = ggml_row_size(type, cols);
    size_t mat_bytes = row_bytes * rows;
    int copies = 1;
    if (tokens <= 8) copies = (int)((cycle + mat_bytes - 1) / mat_bytes);

    // 64 distinct quantized rows, repeated.
    long distinct = rows < 64 ? rows : 64;
    float * f = malloc(sizeof(float) * distinct * cols);
    for (long i = 0; i < distinct * cols; i++) f[i] = 0.05f * normal();
    uint8_t * base = malloc(row_bytes * distinct);
    ggml_quantize_chunk(type, f, base, 0, distinct, cols, NULL);

    size_t mem = copies * (mat_bytes + ggml_tensor_overhead()) + (size_t)tokens * cols * 4 +
                 copies * ((size_t)tokens * rows * 4 + ggml_tensor_overhead()) + ggml_graph_overhead() * copies +
                 (64u << 20);
    struct ggml_init_params ip = { mem, NULL, false };
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cols, tokens);
    for (long i = 0; i < (long)tokens * cols; i++) ((float *)x->data)[i] = normal();
    struct ggml_cgraph ** graphs = malloc(sizeof(*graphs) * copies);
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
    struct ggml_threadpool * tp = ggml_threadpool_new(&tpp);
    struct ggml_cplan * plans = malloc(sizeof(*plans) * copies);
    for (int c = 0; c < copies; c++) {
        struct ggml_tensor * w = ggml_new_tensor_2d(ctx, type, cols, rows);
        for (long r = 0; r < rows; r++) memcpy((uint8_t *)w->data + r * row_bytes, base + (r % distinct) * row_bytes, row_bytes);
        struct ggml_tensor * y = ggml_mul_mat(ctx, w, x);
        graphs[c] = ggml_new_graph(ctx);
        ggml_build_forward_expand(graphs[c], y);
        plans[c] = ggml_graph_plan(graphs[c], threads, tp);
        plans[c].work_data = plans[c].work_size ? malloc(plans[c].work_size) : NULL;
    }
    for (int i = 0; i < (copies > 3 ? copies : 3); i++) ggml_graph_compute(graphs[i % copies], &plans[i % copies]);
    int cap = 10000, n = 0;
    double * times = malloc(sizeof(double) * cap);
    double start = now();
    while ((now() - start < seconds || n < 5) && n < cap) {
        double t = now();
        ggml_graph_compute(graphs[n % copies], &plans[n % copies]);
        times[n++] = now() - t;
    }
    qsort(times, n, sizeof(double), cmp_double);
    double secs = times[n / 2];
    printf("{\"peer\":\"ggml\",\"format\":\"%s\",\"rows\":%ld,\"cols\":%ld,\"tokens\":%d,\"threads\":%d,"
           "\"ms_per_call\":%.6f,\"weight_gbps\":%.3f,\"gops\":%.3f}\n",
           ggml_type_name(type), rows, cols, tokens, threads, secs * 1e3, mat_bytes / secs / 1e9,
           2.0 * rows * cols * tokens / secs / 1e9);
    ggml_threadpool_free(tp);
    ggml_free(ctx);
    return 0;
}
