// Session 37 experiment: can a hyperthread sibling that only reads ahead bring a compute-dense
// stream to a plain read's rate?
// One-token kernels read 85-93% of what a plain read of the same bytes reaches, and session 36
// found the gap in how a compute-dense thread walks its bytes, not in the arithmetic's cost. If
// the device's vCPUs come in host-hyperthread pairs (smt_pairs.c), one thread of a pair could
// compute while its sibling streams the bytes into the caches both share (the decoupled
// access/execute idea), so the stream behaves like a plain read.
// Pairs: detected here the way smt_pairs.c does (vpdpbusd contention, >= 1.6x in 3 of 3 sweeps);
// without 8 disjoint stable pairs the helper modes are skipped.
// Modes, each over the same 2 GiB of bytes (beyond the LLC) in slices, GB/s of bytes computed:
//   read16     16 threads, plain read (one 64-byte load a line, 8 lines in flight per step)
//   comp16:W   16 threads, compute W extra VNNI ops a line, prefetcht0 1 KiB ahead (a kernel's form)
//   comp8:W    the 8 first vCPUs of the pairs computing, the siblings idle
//   help8:W:D  the 8 pairs: one computes (no prefetch), its sibling reads D KiB ahead of it
// Build: gcc -O2 -mavx512f -mavx512bw -mavx512vnni -pthread smt_helper.c -o smt_helper
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
    if (pthread_setaffinity_np(pthread_self(), sizeof s, &s)) {
        perror("pin");
        exit(1);
    }
}

// ---- pair detection (as smt_pairs.c) ----
static __attribute__((noinline)) int burn(long iters) {
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    __m512i c[12];
    for (int i = 0; i < 12; ++i) c[i] = _mm512_setzero_si512();
    for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
        for (int k = 0; k < 12; ++k) c[k] = _mm512_dpbusd_epi32(c[k], a, b);
        __asm__ volatile("" : "+v"(c[0]), "+v"(c[1]), "+v"(c[2]), "+v"(c[3]), "+v"(c[4]), "+v"(c[5]));
        __asm__ volatile("" : "+v"(c[6]), "+v"(c[7]), "+v"(c[8]), "+v"(c[9]), "+v"(c[10]), "+v"(c[11]));
    }
    __m512i s = c[0];
    for (int k = 1; k < 12; ++k) s = _mm512_add_epi32(s, c[k]);
    return _mm512_reduce_add_epi32(s);
}

struct bj {
    int cpu;
    atomic_int* go;
    int need;
    double secs;
    int sink;
};

static void* bworker(void* p) {
    struct bj* j = p;
    pin(j->cpu);
    burn(20000);
    atomic_fetch_add(j->go, 1);
    while (atomic_load(j->go) < j->need) {
    }
    double t = now();
    j->sink = burn(400000);
    j->secs = now() - t;
    return NULL;
}

static double burn_pair(int a, int b) {
    atomic_int go = 0;
    struct bj ja = {a, &go, 2, 0, 0}, jb = {b, &go, 2, 0, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, bworker, &ja);
    pthread_create(&tb, NULL, bworker, &jb);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    return ja.secs > jb.secs ? ja.secs : jb.secs;
}

static double burn_alone(int a) {
    atomic_int go = 0;
    struct bj ja = {a, &go, 1, 0, 0};
    pthread_t ta;
    pthread_create(&ta, NULL, bworker, &ja);
    pthread_join(ta, NULL);
    return ja.secs;
}

// Fills sib[] with each vCPU's stable sibling (-1 when none); returns how many vCPUs have one.
static int detect_pairs(int n, int* sib) {
    static int hits[MAXT][MAXT];
    memset(hits, 0, sizeof hits);
    for (int r = 0; r < 3; ++r) {
        double base = 0;
        for (int c = 0; c < n; ++c) base += burn_alone(c);
        base /= n;
        for (int a = 0; a < n; ++a)
            for (int b = a + 1; b < n; ++b)
                if (burn_pair(a, b) / base >= 1.6) hits[a][b]++;
    }
    int found = 0;
    for (int a = 0; a < n; ++a) {
        sib[a] = -1;
        int cnt = 0;
        for (int b = 0; b < n; ++b) {
            int h = a < b ? hits[a][b] : hits[b][a];
            if (b != a && h == 3) sib[a] = b, cnt++;
        }
        if (cnt != 1) sib[a] = -1; // none, or ambiguous
        found += sib[a] >= 0;
    }
    for (int a = 0; a < n; ++a)
        if (sib[a] >= 0 && sib[sib[a]] != a) sib[a] = -1;
    return found;
}

// ---- the streams ----
static uint8_t* buf;
static size_t total;
static int extra_w; // extra VNNI ops a line

// plain read of [p, p + n): one load a line, 8 lines a step
static __attribute__((noinline)) uint64_t read_plain(const uint8_t* p, size_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t o = 0; o + 8 * LINE <= n; o += 8 * LINE) {
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + LINE));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + o + 2 * LINE));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + o + 3 * LINE));
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o + 4 * LINE));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + 5 * LINE));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + o + 6 * LINE));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + o + 7 * LINE));
    }
    __m512i s = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    return (uint64_t)_mm512_reduce_add_epi64(s);
}

// A kernel-like walk: each line's bytes split into nibbles, two VNNI products with resident
// "activations", W more products; prefetcht0 `pf` bytes ahead (0: none). `pos` (when not NULL)
// is published every 4 KiB for a helper.
static __attribute__((noinline)) uint64_t compute(const uint8_t* p, size_t n, size_t pf,
                                                  atomic_size_t* pos) {
    const __m512i m = _mm512_set1_epi8(0x0f);
    __m512i x0 = _mm512_set1_epi8(1), x1 = _mm512_set1_epi8(2), x2 = _mm512_set1_epi8(3);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t o = 0; o < n; o += 2 * LINE) {
        if (pf) {
            _mm_prefetch((const char*)p + o + pf, _MM_HINT_T0);
            _mm_prefetch((const char*)p + o + pf + LINE, _MM_HINT_T0);
        }
        if (pos && (o & 4095) == 0) atomic_store_explicit(pos, o, memory_order_relaxed);
        __m512i w0 = _mm512_load_si512(p + o), w1 = _mm512_load_si512(p + o + LINE);
        __m512i l0 = _mm512_and_si512(w0, m), h0 = _mm512_and_si512(_mm512_srli_epi16(w0, 4), m);
        __m512i l1 = _mm512_and_si512(w1, m), h1 = _mm512_and_si512(_mm512_srli_epi16(w1, 4), m);
        a0 = _mm512_dpbusd_epi32(a0, l0, x0);
        a1 = _mm512_dpbusd_epi32(a1, h0, x1);
        a2 = _mm512_dpbusd_epi32(a2, l1, x0);
        a3 = _mm512_dpbusd_epi32(a3, h1, x1);
        for (int k = 0; k < extra_w; ++k) {
            a0 = _mm512_dpbusd_epi32(a0, h0, x2);
            a2 = _mm512_dpbusd_epi32(a2, h1, x2);
            __asm__ volatile("" : "+v"(a0), "+v"(a2));
        }
    }
    if (pos) atomic_store_explicit(pos, n, memory_order_relaxed);
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
    return (uint64_t)_mm512_reduce_add_epi32(s);
}

// The helper: demand-loads each line of [p, p + n) while staying `lead` bytes ahead of *pos at
// most (and never behind it).
static __attribute__((noinline)) uint64_t help(const uint8_t* p, size_t n, size_t lead,
                                               atomic_size_t* pos) {
    uint64_t sink = 0;
    size_t o = 0;
    while (o < n) {
        size_t c = atomic_load_explicit(pos, memory_order_relaxed);
        if (c >= n) break;
        size_t lim = c + lead < n ? c + lead : n;
        if (o < c) o = c & ~(size_t)(LINE - 1);
        if (o >= lim) {
            _mm_pause();
            continue;
        }
        for (; o < lim && o < c + lead; o += 4 * LINE) {
            sink += p[o] + p[o + LINE] + p[o + 2 * LINE] + p[o + 3 * LINE];
        }
    }
    return sink;
}

enum { READ, COMP, HELP };

struct sj {
    int cpu, role; // role: READ, COMP (pf), HELP (the helper of a pair)
    const uint8_t* p;
    size_t n, pf;
    atomic_size_t* pos;
    atomic_int* go;
    int need;
    uint64_t sink;
    double secs;
};

static void* sworker(void* v) {
    struct sj* j = v;
    pin(j->cpu);
    atomic_fetch_add(j->go, 1);
    while (atomic_load(j->go) < j->need) {
    }
    double t = now();
    if (j->role == READ) j->sink = read_plain(j->p, j->n);
    else if (j->role == COMP) j->sink = compute(j->p, j->n, j->pf, j->pos);
    else j->sink = help(j->p, j->n, j->pf, j->pos);
    j->secs = now() - t;
    return NULL;
}

// Runs `nt` jobs at once; returns the wall time of the slowest.
static double run(struct sj* js, int nt) {
    atomic_int go = 0;
    pthread_t th[MAXT];
    for (int i = 0; i < nt; ++i) js[i].go = &go, js[i].need = nt, pthread_create(&th[i], NULL, sworker, &js[i]);
    double w = 0;
    for (int i = 0; i < nt; ++i) {
        pthread_join(th[i], NULL);
        if (js[i].secs > w) w = js[i].secs;
    }
    return w;
}

// One pass over the whole buffer, cut into `nc` slices computed by cpus[] (helpers on hcpus[]
// when not NULL); GB/s.
static double pass(int role, int nc, const int* cpus, const int* hcpus, size_t pf, size_t lead) {
    struct sj js[MAXT];
    static atomic_size_t pos[MAXT][16]; // one line each
    size_t slice = total / nc / 4096 * 4096;
    int nt = 0;
    for (int i = 0; i < nc; ++i) {
        atomic_store(&pos[i][0], 0);
        js[nt++] = (struct sj){cpus[i], role, buf + i * slice, slice, pf, hcpus ? &pos[i][0] : NULL};
        if (hcpus)
            js[nt++] = (struct sj){hcpus[i], HELP, buf + i * slice, slice, lead, &pos[i][0]};
    }
    double w = run(js, nt);
    return (double)slice * nc / w / 1e9;
}

int main(int argc, char** argv) {
    int n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n > MAXT) n = MAXT;
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    total = (size_t)2 << 30;
    buf = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) return perror("mmap"), 1;
    madvise(buf, total, MADV_HUGEPAGE);
    for (size_t i = 0; i < total; i += 8) *(uint64_t*)(buf + i) = i * 0x9E3779B97F4A7C15ull;
    int sib[MAXT];
    double t0 = now();
    int have = detect_pairs(n, sib);
    // PAIRS="a:b,c:d" replaces the detection (to check the helper modes' logic anywhere)
    const char* force = getenv("PAIRS");
    if (force) {
        for (int a = 0; a < n; ++a) sib[a] = -1;
        have = 0;
        for (const char* q = force; *q;) {
            int a, b, used;
            if (sscanf(q, "%d:%d%n", &a, &b, &used) != 2 || a < 0 || b < 0 || a >= n || b >= n) break;
            sib[a] = b, sib[b] = a, have += 2;
            q += used;
            if (*q == ',') ++q;
        }
    }
    int first[MAXT], second[MAXT], np = 0;
    for (int a = 0; a < n; ++a)
        if (sib[a] > a) first[np] = a, second[np] = sib[a], np++;
    printf("pairs detected in %.1f s (%d vCPUs with a stable sibling):", now() - t0, have);
    for (int i = 0; i < np; ++i) printf(" (%d,%d)", first[i], second[i]);
    printf("\n");
    int all[MAXT];
    for (int i = 0; i < n; ++i) all[i] = i;
    const int ws[] = {0, 2, 6};
    const size_t leads[] = {4096, 16384, 65536};
    for (int r = 0; r < rounds; ++r) {
        printf("round %d\n", r);
        printf("  read16            %7.1f GB/s\n", pass(READ, n, all, NULL, 0, 0));
        for (int wi = 0; wi < 3; ++wi) {
            extra_w = ws[wi];
            printf("  comp16:%d          %7.1f GB/s\n", extra_w, pass(COMP, n, all, NULL, 1024, 0));
            if (np * 2 == n) {
                printf("  comp8:%d           %7.1f GB/s\n", extra_w, pass(COMP, np, first, NULL, 1024, 0));
                for (int li = 0; li < 3; ++li)
                    printf("  help8:%d:%-3zu       %7.1f GB/s\n", extra_w, leads[li] / 1024,
                           pass(COMP, np, first, second, 0, leads[li]));
            }
        }
        // one thread alone, resident (first 1 MiB, ten passes): the compute's own rate
        for (int wi = 0; wi < 3; ++wi) {
            extra_w = ws[wi];
            compute(buf, 1 << 20, 0, NULL);
            double t = now();
            uint64_t s = 0;
            for (int k = 0; k < 10; ++k) s += compute(buf, 1 << 20, 0, NULL);
            printf("  one thread resident, W=%d: %.1f GB/s (%lu)\n", extra_w, 10.0 * (1 << 20) / (now() - t) / 1e9,
                   (unsigned long)(s & 1));
        }
    }
    return 0;
}
