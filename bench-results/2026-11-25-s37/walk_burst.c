// Session 37 experiment: a kernel-like walk whose prefetches come in bursts far ahead instead of two a
// step. Calls B-D found that a thread loses the time it does not issue loads; an interleaved walk issues
// its prefetches between its arithmetic, a burst issues a whole region's back to back.
// Forms (16 slices of 2 GiB, forms in turn round by round; W = extra VNNI ops a 128 bytes):
//   read8               the plain read
//   mix:W:pfK           interleaved: prefetcht0 K KiB ahead, two a step (the shipped kernels' form)
//   burst:W:D:H         every 4 KiB, one prefetch a line for the 4 KiB at D KiB ahead (H: t0 = L1,
//                       t1 = L2), back to back, then the arithmetic over the 4 KiB without prefetches
//   both:W:K:D          mix:W:pfK plus the L2 bursts D KiB ahead
// Build: gcc -O2 -mavx512f -mavx512bw -mavx512vl -mavx512vnni -pthread walk_burst.c -o walk_burst
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

static __m512i read8(const uint8_t* p, size_t n, __m512i a0) {
    __m512i a1 = _mm512_setzero_si512(), a2 = a1, a3 = a1;
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
    return _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
}

struct acc {
    __m512i a0, a1, a2, a3;
};

// The arithmetic over [p, p + n): per 128 bytes, the nibble split and 4 + 2w vpdpbusd; prefetcht0
// `pf` bytes ahead when pf > 0.
static inline void mix(const uint8_t* p, size_t n, int w, size_t pf, struct acc* c) {
    const __m512i m = _mm512_set1_epi8(0x0f);
    const __m512i x0 = _mm512_set1_epi8(1), x1 = _mm512_set1_epi8(2), x2 = _mm512_set1_epi8(3);
    __m512i a0 = c->a0, a1 = c->a1, a2 = c->a2, a3 = c->a3;
    for (size_t o = 0; o < n; o += 2 * LINE) {
        if (pf) {
            _mm_prefetch((const char*)p + o + pf, _MM_HINT_T0);
            _mm_prefetch((const char*)p + o + pf + LINE, _MM_HINT_T0);
        }
        __m512i w0 = _mm512_load_si512(p + o), w1 = _mm512_load_si512(p + o + LINE);
        __m512i l0 = _mm512_and_si512(w0, m), h0 = _mm512_and_si512(_mm512_srli_epi16(w0, 4), m);
        __m512i l1 = _mm512_and_si512(w1, m), h1 = _mm512_and_si512(_mm512_srli_epi16(w1, 4), m);
        a0 = _mm512_dpbusd_epi32(a0, l0, x0);
        a1 = _mm512_dpbusd_epi32(a1, h0, x1);
        a2 = _mm512_dpbusd_epi32(a2, l1, x0);
        a3 = _mm512_dpbusd_epi32(a3, h1, x1);
        for (int k = 0; k < w; ++k) {
            a0 = _mm512_dpbusd_epi32(a0, h0, x2);
            a2 = _mm512_dpbusd_epi32(a2, h1, x2);
            __asm__ volatile("" : "+v"(a0), "+v"(a2));
        }
    }
    c->a0 = a0, c->a1 = a1, c->a2 = a2, c->a3 = a3;
}

// Every 4 KiB: a prefetch for each line of the 4 KiB `ahead` bytes on (into L1 when l1, else L2),
// then the arithmetic over the 4 KiB (with the interleaved prefetch `pf` when pf > 0).
static inline void burst(const uint8_t* p, size_t n, int w, size_t ahead, int l1, size_t pf, struct acc* c) {
    for (size_t o = 0; o < n; o += 4096) {
        const char* q = (const char*)p + o + ahead;
        if (l1)
            for (int i = 0; i < 4096; i += LINE) _mm_prefetch(q + i, _MM_HINT_T0);
        else
            for (int i = 0; i < 4096; i += LINE) _mm_prefetch(q + i, _MM_HINT_T1);
        mix(p + o, n - o < 4096 ? n - o : 4096, w, pf, c);
    }
}

enum kind { READ, MIX, PHASE, BURST };
struct form {
    const char* name;
    enum kind k;
    int w;
    size_t arg;   // MIX: prefetch lead; PHASE: chunk; BURST: the interleaved lead (0: none)
    size_t ahead; // BURST: how far ahead the bursts go
    int l1;       // BURST: bursts into L1
};

static const struct form forms[] = {
    {"read8", READ, 0, 0, 0, 0},
    {"mix:0:pf1k", MIX, 0, 1024, 0, 0},
    {"mix:0:pf2k", MIX, 0, 2048, 0, 0},
    {"burst:0:4k:t0", BURST, 0, 0, 4096, 1},
    {"burst:0:4k:t1", BURST, 0, 0, 4096, 0},
    {"burst:0:8k:t1", BURST, 0, 0, 8192, 0},
    {"burst:0:16k:t1", BURST, 0, 0, 16384, 0},
    {"both:0:2k:8k", BURST, 0, 2048, 8192, 0},
    {"both:0:2k:16k", BURST, 0, 2048, 16384, 0},
    {"mix:2:pf2k", MIX, 2, 2048, 0, 0},
    {"burst:2:4k:t0", BURST, 2, 0, 4096, 1},
    {"burst:2:8k:t1", BURST, 2, 0, 8192, 0},
    {"both:2:2k:8k", BURST, 2, 2048, 8192, 0},
};
#define NF (int)(sizeof forms / sizeof forms[0])

static uint64_t walk(const uint8_t* p, size_t n, const struct form* f) {
    struct acc c = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                    _mm512_setzero_si512()};
    __m512i r = _mm512_setzero_si512();
    if (f->k == READ) r = read8(p, n, r);
    else if (f->k == MIX) mix(p, n, f->w, f->arg, &c);
    else if (f->k == BURST) burst(p, n, f->w, f->ahead, f->l1, f->arg, &c);
    else
        for (size_t o = 0; o < n; o += f->arg) {
            size_t len = n - o < f->arg ? n - o : f->arg;
            r = read8(p + o, len, r);
            mix(p + o, len, f->w, 0, &c);
        }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(c.a0, c.a1), _mm512_add_epi32(c.a2, c.a3));
    return (uint64_t)_mm512_reduce_add_epi32(s) + (uint64_t)_mm512_reduce_add_epi64(r);
}

static uint8_t* buf;
static size_t slice;

struct job {
    int cpu, form;
    atomic_int* go;
    int need;
    double secs;
    uint64_t sink;
};

static void* worker(void* v) {
    struct job* j = v;
    pin(j->cpu);
    atomic_fetch_add(j->go, 1);
    while (atomic_load(j->go) < j->need) {
    }
    double t = now();
    j->sink = walk(buf + (size_t)j->cpu * slice, slice, &forms[j->form]);
    j->secs = now() - t;
    return NULL;
}

static int cmp(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

int main(int argc, char** argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 9;
    int nt = argc > 2 ? atoi(argv[2]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nt > MAXT) nt = MAXT;
    if (rounds > 32) rounds = 32;
    size_t total = (size_t)2 << 30;
    slice = total / nt / (256 << 10) * (256 << 10);
    buf = mmap(NULL, total + 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) return perror("mmap"), 1;
    madvise(buf, total, MADV_HUGEPAGE);
    for (size_t i = 0; i < total + 8192; i += 8) *(uint64_t*)(buf + i) = i * 0x9E3779B97F4A7C15ull;
    static double gbps[NF][32];
    uint64_t sink = 0;
    for (int r = 0; r < rounds; ++r)
        for (int q = 0; q < NF; ++q) {
            int f = (q + r) % NF;
            struct job js[MAXT];
            atomic_int go = 0;
            pthread_t th[MAXT];
            for (int i = 0; i < nt; ++i) {
                js[i] = (struct job){i, f, &go, nt, 0, 0};
                pthread_create(&th[i], NULL, worker, &js[i]);
            }
            double w = 0;
            for (int i = 0; i < nt; ++i) {
                pthread_join(th[i], NULL);
                if (js[i].secs > w) w = js[i].secs;
                sink += js[i].sink;
            }
            gbps[f][r] = (double)slice * nt / w / 1e9;
        }
    printf("%d threads, %.0f MiB a thread, %d rounds; GB/s of the slowest thread's time; 'of read8' = median over "
           "rounds of the form's rate over read8's in the same round; resident = one thread, 256 KiB in L2 (the arithmetic alone)\n",
           nt, slice / 1048576.0, rounds);
    printf("%-13s %7s %7s %7s %8s %9s   per round\n", "form", "median", "min", "max", "of read8", "resident");
    for (int f = 0; f < NF; ++f) {
        double s[32], q[32];
        memcpy(s, gbps[f], sizeof(double) * rounds);
        for (int r = 0; r < rounds; ++r) q[r] = gbps[f][r] / gbps[0][r];
        qsort(s, rounds, sizeof(double), cmp);
        qsort(q, rounds, sizeof(double), cmp);
        const size_t res = 256 << 10;
        struct form fr = forms[f];
        if (fr.k != READ) fr.k = MIX, fr.arg = 0; // resident: the arithmetic alone
        sink += walk(buf, res, &fr);
        double t = now();
        for (int k = 0; k < 40; ++k) sink += walk(buf, res, &fr);
        double rg = 40.0 * res / (now() - t) / 1e9;
        printf("%-13s %7.1f %7.1f %7.1f %8.3f %9.1f  ", forms[f].name, s[rounds / 2], s[0], s[rounds - 1],
               q[rounds / 2], rg);
        for (int r = 0; r < rounds; ++r) printf(" %.1f", gbps[f][r]);
        printf("\n");
    }
    printf("(sink %lu)\n", (unsigned long)(sink & 1));
    return 0;
}
