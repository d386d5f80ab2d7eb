// Session 37 experiment: which part of a kernel-like walk keeps 16 threads below a plain read?
// Call A (smt_helper.c) found the gap in a synthetic: 16 threads each streaming a slice of 2 GiB,
// a plain read (8 zmm loads a step, xor) 103-118 GB/s, the lightest kernel-like walk (two lines a
// step, prefetcht0 1 KiB ahead, nibble split, four vpdpbusd) 93-100 GB/s, resident on one thread
// 28-46 GB/s (six times what each of 16 threads needs). This takes the walk apart, one change at a
// time, every form over the same slices, forms taking turns round by round (the device drifts).
// After each pass every thread times a dependent add chain: the clock its core ran the form at.
// Build: gcc -O2 -mavx512f -mavx512bw -mavx512vl -mavx512vnni -pthread walk_forms.c -o walk_forms
// Run:   walk_forms [rounds] [threads]
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LINE 64
#define MAXT 64

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

// GHz from a chain of dependent adds (one a cycle).
static double clock_ghz(void) {
    const long n = 2000000;
    uint64_t x = 1;
    double t = now();
    for (long i = 0; i < n; ++i) __asm__ volatile("add $1, %0" : "+r"(x));
    double s = now() - t;
    return n / s / 1e9;
}

typedef uint64_t (*walk_fn)(const uint8_t*, size_t);

#define PF(o, d)                                                                                   \
    do {                                                                                           \
        _mm_prefetch((const char*)p + (o) + (d), _MM_HINT_T0);                                     \
        _mm_prefetch((const char*)p + (o) + (d) + LINE, _MM_HINT_T0);                              \
    } while (0)

static uint64_t red(__m512i a) { return (uint64_t)_mm512_reduce_add_epi64(a); }

// 1. the plain read: 8 loads a step, xor
static uint64_t read8(const uint8_t* p, size_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t o = 0; o < n; o += 8 * LINE) {
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + LINE));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + o + 2 * LINE));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + o + 3 * LINE));
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o + 4 * LINE));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + 5 * LINE));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + o + 6 * LINE));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + o + 7 * LINE));
    }
    return red(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
}

// 2-3. two lines a step, with or without the prefetch
#define READ2(NAME, D)                                                                             \
    static uint64_t NAME(const uint8_t* p, size_t n) {                                             \
        __m512i a0 = _mm512_setzero_si512(), a1 = a0;                                              \
        for (size_t o = 0; o < n; o += 2 * LINE) {                                                 \
            if (D) PF(o, D);                                                                       \
            a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o));                                   \
            a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + LINE));                            \
        }                                                                                          \
        return red(_mm512_xor_si512(a0, a1));                                                      \
    }
READ2(read2, 0)
READ2(read2_pf1k, 1024)

// 4-8. the kernel-like step: nibble split, then OP on each half (light: vpaddd; vnni: vpdpbusd)
#define STEP512(OP)                                                                                \
    __m512i w0 = _mm512_load_si512(p + o), w1 = _mm512_load_si512(p + o + LINE);                  \
    __m512i l0 = _mm512_and_si512(w0, m), h0 = _mm512_and_si512(_mm512_srli_epi16(w0, 4), m);      \
    __m512i l1 = _mm512_and_si512(w1, m), h1 = _mm512_and_si512(_mm512_srli_epi16(w1, 4), m);      \
    a0 = OP(a0, l0, x0);                                                                           \
    a1 = OP(a1, h0, x1);                                                                           \
    a2 = OP(a2, l1, x0);                                                                           \
    a3 = OP(a3, h1, x1);
#define LIGHT(a, b, c) _mm512_add_epi32(a, _mm512_add_epi32(b, c))
#define VNNI(a, b, c) _mm512_dpbusd_epi32(a, b, c)
#define WALK512(NAME, OP, D)                                                                       \
    static uint64_t NAME(const uint8_t* p, size_t n) {                                             \
        const __m512i m = _mm512_set1_epi8(0x0f);                                                  \
        __m512i x0 = _mm512_set1_epi8(1), x1 = _mm512_set1_epi8(2);                                \
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;                            \
        for (size_t o = 0; o < n; o += 2 * LINE) {                                                 \
            if (D) PF(o, D);                                                                       \
            STEP512(OP)                                                                            \
        }                                                                                          \
        return red(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));          \
    }
WALK512(light_pf1k, LIGHT, 1024)
WALK512(vnni_nopf, VNNI, 0)
WALK512(vnni_pf1k, VNNI, 1024)
WALK512(vnni_pf2k, VNNI, 2048)
WALK512(vnni_pf4k, VNNI, 4096)

// 9. the same on 256-bit registers: 512-bit loads split in halves, ymm VNNI (AVX512-VL)
static uint64_t vnni256_pf1k(const uint8_t* p, size_t n) {
    const __m256i m = _mm256_set1_epi8(0x0f);
    __m256i x0 = _mm256_set1_epi8(1), x1 = _mm256_set1_epi8(2);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t o = 0; o < n; o += 2 * LINE) {
        PF(o, 1024);
        for (int h = 0; h < 2; ++h) {
            __m256i w0 = _mm256_load_si256((const __m256i*)(p + o + 32 * h));
            __m256i w1 = _mm256_load_si256((const __m256i*)(p + o + LINE + 32 * h));
            __m256i l0 = _mm256_and_si256(w0, m), h0 = _mm256_and_si256(_mm256_srli_epi16(w0, 4), m);
            __m256i l1 = _mm256_and_si256(w1, m), h1 = _mm256_and_si256(_mm256_srli_epi16(w1, 4), m);
            a0 = _mm256_dpbusd_epi32(a0, l0, x0);
            a1 = _mm256_dpbusd_epi32(a1, h0, x1);
            a2 = _mm256_dpbusd_epi32(a2, l1, x0);
            a3 = _mm256_dpbusd_epi32(a3, h1, x1);
        }
    }
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3));
    return (uint64_t)_mm256_extract_epi64(s, 0) + (uint64_t)_mm256_extract_epi64(s, 3);
}

// 10. eight lines a step (four kernel steps unrolled), prefetch 1 KiB
static uint64_t vnni8_pf1k(const uint8_t* p0, size_t n) {
    const __m512i m = _mm512_set1_epi8(0x0f);
    __m512i x0 = _mm512_set1_epi8(1), x1 = _mm512_set1_epi8(2);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t q = 0; q < n; q += 8 * LINE) {
        const uint8_t* p = p0;
        for (int k = 0; k < 4; ++k) {
            size_t o = q + 2 * LINE * k;
            PF(o, 1024);
            STEP512(VNNI)
        }
    }
    return red(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
}

// 11. the plain read with four vpdpbusd a step on registers it loads nothing for (the ops, not
// their inputs)
static uint64_t read8_vnni_regs(const uint8_t* p, size_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, c0 = a0, c1 = a0;
    __m512i x0 = _mm512_set1_epi8(1), x1 = _mm512_set1_epi8(2);
    for (size_t o = 0; o < n; o += 8 * LINE) {
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + LINE));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + o + 2 * LINE));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + o + 3 * LINE));
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o + 4 * LINE));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + 5 * LINE));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + o + 6 * LINE));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + o + 7 * LINE));
        for (int k = 0; k < 4; ++k) {
            c0 = _mm512_dpbusd_epi32(c0, x0, x1);
            c1 = _mm512_dpbusd_epi32(c1, x1, x0);
            __asm__ volatile("" : "+v"(c0), "+v"(c1));
        }
    }
    return red(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3))) +
           red(_mm512_add_epi32(c0, c1));
}

static const struct {
    const char* name;
    walk_fn f;
} forms[] = {
    {"read8", read8},
    {"read2", read2},
    {"read2_pf1k", read2_pf1k},
    {"light_pf1k", light_pf1k},
    {"vnni_nopf", vnni_nopf},
    {"vnni_pf1k", vnni_pf1k},
    {"vnni_pf2k", vnni_pf2k},
    {"vnni_pf4k", vnni_pf4k},
    {"vnni256_pf1k", vnni256_pf1k},
    {"vnni8_pf1k", vnni8_pf1k},
    {"read8_vnni_regs", read8_vnni_regs},
};
#define NF (int)(sizeof forms / sizeof forms[0])

static uint8_t* buf;
static size_t total, slice;

struct job {
    int cpu, form;
    atomic_int* go;
    int need;
    double secs, ghz;
    uint64_t sink;
};

static void* worker(void* v) {
    struct job* j = v;
    pin(j->cpu);
    atomic_fetch_add(j->go, 1);
    while (atomic_load(j->go) < j->need) {
    }
    double t = now();
    j->sink = forms[j->form].f(buf + (size_t)j->cpu * slice, slice);
    j->secs = now() - t;
    j->ghz = clock_ghz();
    return NULL;
}

static int cmp(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

int main(int argc, char** argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 7;
    int nt = argc > 2 ? atoi(argv[2]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nt > MAXT) nt = MAXT;
    if (rounds > 32) rounds = 32;
    total = (size_t)2 << 30;
    slice = total / nt / 4096 * 4096;
    buf = mmap(NULL, total + 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) return perror("mmap"), 1;
    madvise(buf, total, MADV_HUGEPAGE);
    for (size_t i = 0; i < total + 8192; i += 8) *(uint64_t*)(buf + i) = i * 0x9E3779B97F4A7C15ull;
    static double gbps[NF][32], ghz[NF][32];
    uint64_t sink = 0;
    for (int r = 0; r < rounds; ++r)
        for (int k = 0; k < NF; ++k) {
            int f = (k + r) % NF; // each round starts one form later: no form always follows the same
            struct job js[MAXT];
            atomic_int go = 0;
            pthread_t th[MAXT];
            for (int i = 0; i < nt; ++i) {
                js[i] = (struct job){i, f, &go, nt, 0, 0, 0};
                pthread_create(&th[i], NULL, worker, &js[i]);
            }
            double w = 0, g = 0;
            for (int i = 0; i < nt; ++i) {
                pthread_join(th[i], NULL);
                if (js[i].secs > w) w = js[i].secs;
                g += js[i].ghz / nt;
                sink += js[i].sink;
            }
            gbps[f][r] = (double)slice * nt / w / 1e9;
            ghz[f][r] = g;
        }
    printf("%d threads, %.0f MiB a thread, %d rounds (GB/s of the slowest thread's time; clock after the pass)\n", nt,
           slice / 1048576.0, rounds);
    printf("%-16s %8s %8s %8s   %s\n", "form", "median", "min", "max", "GHz median   per round GB/s");
    double base = 0;
    for (int f = 0; f < NF; ++f) {
        double s[32], c[32];
        memcpy(s, gbps[f], sizeof(double) * rounds);
        memcpy(c, ghz[f], sizeof(double) * rounds);
        qsort(s, rounds, sizeof(double), cmp);
        qsort(c, rounds, sizeof(double), cmp);
        if (f == 0) base = s[rounds / 2];
        printf("%-16s %8.1f %8.1f %8.1f   %5.2f (%3.0f%%)  ", forms[f].name, s[rounds / 2], s[0], s[rounds - 1],
               c[rounds / 2], 100 * s[rounds / 2] / base);
        for (int r = 0; r < rounds; ++r) printf(" %.1f", gbps[f][r]);
        printf("\n");
    }
    // per round, each form against read8 of the same round
    printf("of read8 in the same round (median over rounds):");
    for (int f = 1; f < NF; ++f) {
        double q[32];
        for (int r = 0; r < rounds; ++r) q[r] = gbps[f][r] / gbps[0][r];
        qsort(q, rounds, sizeof(double), cmp);
        printf(" %s %.3f", forms[f].name, q[rounds / 2]);
    }
    printf("\n(sink %lu)\n", (unsigned long)(sink & 1));
    // one thread, resident (1 MiB, ten passes): each form's own rate
    for (int f = 0; f < NF; ++f) {
        forms[f].f(buf, 1 << 20);
        double t = now();
        for (int k = 0; k < 10; ++k) sink += forms[f].f(buf, 1 << 20);
        printf("  one thread resident %-16s %6.1f GB/s\n", forms[f].name, 10.0 * (1 << 20) / (now() - t) / 1e9);
    }
    return (int)(sink & 0);
}
