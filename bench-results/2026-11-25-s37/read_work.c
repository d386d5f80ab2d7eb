// Session 37 experiment: what does work that touches no loaded byte cost a plain read?
// Call B (walk_forms.c): a plain read (16 threads, 8 zmm loads a step) with one vpdpbusd a line on
// registers it loads nothing for read 8% slower (16 threads; 4% at 8), though one thread does that
// work 8x faster than its share of DRAM needs; the core clock after the pass did not move. Two
// explanations predict different things here:
//   - the loads' timing (the loop issues them later): any work that lengthens the loop costs,
//     pause included;
//   - the memory system's response to busy cores (power management of the shared uncore): work
//     that executes costs, in proportion to what it burns; pause (the core idles) does not.
// Forms: read8 + N units of work a line of kind K, each over the same 2 GiB in 16 slices, forms in
// turn round by round. Kinds: vw (vpdpbusd, 8 independent accumulators), vc (vpdpbusd, one chain),
// sa (scalar adds, 4 chains), pz/N (one pause every N steps of 8 lines: a pause is ~100+ cycles).
// Build: gcc -O2 -mavx512f -mavx512bw -mavx512vl -mavx512vnni -pthread read_work.c -o read_work
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

enum kind { NONE, VW, VC, SA, PZ };

struct form {
    const char* name;
    enum kind k;
    int n;
};

static uint64_t walk(const uint8_t* p, size_t len, enum kind k, int n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    __m512i c0 = a0, c1 = a0, c2 = a0, c3 = a0, c4 = a0, c5 = a0, c6 = a0, c7 = a0;
    const __m512i x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(2);
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t o = 0; o < len; o += 8 * LINE) {
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + LINE));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + o + 2 * LINE));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + o + 3 * LINE));
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o + 4 * LINE));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + 5 * LINE));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + o + 6 * LINE));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + o + 7 * LINE));
        switch (k) {
        case NONE:
            break;
        case VW: // 8 n ops over 8 accumulators: n a line, no chain longer than n a step
            for (int i = 0; i < n; ++i) {
                c0 = _mm512_dpbusd_epi32(c0, x, y);
                c1 = _mm512_dpbusd_epi32(c1, x, y);
                c2 = _mm512_dpbusd_epi32(c2, x, y);
                c3 = _mm512_dpbusd_epi32(c3, x, y);
                c4 = _mm512_dpbusd_epi32(c4, x, y);
                c5 = _mm512_dpbusd_epi32(c5, x, y);
                c6 = _mm512_dpbusd_epi32(c6, x, y);
                c7 = _mm512_dpbusd_epi32(c7, x, y);
                __asm__ volatile("" : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3));
                __asm__ volatile("" : "+v"(c4), "+v"(c5), "+v"(c6), "+v"(c7));
            }
            break;
        case VC: // 8 n ops on one chain
            for (int i = 0; i < 8 * n; ++i) {
                c0 = _mm512_dpbusd_epi32(c0, x, y);
                __asm__ volatile("" : "+v"(c0));
            }
            break;
        case SA: // 8 n adds over 4 chains
            for (int i = 0; i < 2 * n; ++i)
                __asm__ volatile("add $1, %0\n\tadd $3, %1\n\tadd $5, %2\n\tadd $7, %3"
                                 : "+r"(s0), "+r"(s1), "+r"(s2), "+r"(s3));
            break;
        case PZ: // one pause every n steps of 8 lines
            if ((o / (8 * LINE)) % n == 0) _mm_pause();
            break;
        }
    }
    __m512i c = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                 _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    __m512i a = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    return (uint64_t)_mm512_reduce_add_epi64(a) + (uint64_t)_mm512_reduce_add_epi32(c) + s0 + s1 + s2 + s3;
}

static const struct form forms[] = {
    {"read8", NONE, 0}, {"vw1", VW, 1}, {"vw2", VW, 2}, {"vw4", VW, 4}, {"vw8", VW, 8},
    {"vc1", VC, 1},     {"vc2", VC, 2}, {"sa2", SA, 2}, {"sa8", SA, 8}, {"sa16", SA, 16},
    {"pz/8", PZ, 8},    {"pz/4", PZ, 4}, {"pz/2", PZ, 2}, {"pz/1", PZ, 1},
};
#define NF (int)(sizeof forms / sizeof forms[0])

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
    j->sink = walk(buf + (size_t)j->cpu * slice, slice, forms[j->form].k, forms[j->form].n);
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
    slice = total / nt / 4096 * 4096;
    buf = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) return perror("mmap"), 1;
    madvise(buf, total, MADV_HUGEPAGE);
    for (size_t i = 0; i < total; i += 8) *(uint64_t*)(buf + i) = i * 0x9E3779B97F4A7C15ull;
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
    // one thread, resident (256 KiB, in L2; 40 passes): each form's own rate, and cycles a line
    // at the clock a dependent add chain shows
    // the clock: 64 dependent adds a trip (the loop's own counter runs beside them)
    double ghz;
    {
        const long n = 500000;
        uint64_t x = 1;
        double t = now();
        for (long i = 0; i < n; ++i)
            __asm__ volatile(".rept 64\n\tadd $1, %0\n\t.endr" : "+r"(x));
        ghz = 64.0 * n / (now() - t) / 1e9;
        sink += x;
    }
    printf("%d threads, %.0f MiB a thread, %d rounds; GB/s of the slowest thread's time; 'of read8' = median over "
           "rounds of the form's rate over read8's in the same round; resident = one thread, 256 KiB\n",
           nt, slice / 1048576.0, rounds);
    printf("%-6s %7s %7s %7s %8s %9s %10s   per round\n", "form", "median", "min", "max", "of read8",
           "resident", "cyc/line");
    for (int f = 0; f < NF; ++f) {
        double s[32], q[32];
        memcpy(s, gbps[f], sizeof(double) * rounds);
        for (int r = 0; r < rounds; ++r) q[r] = gbps[f][r] / gbps[0][r];
        qsort(s, rounds, sizeof(double), cmp);
        qsort(q, rounds, sizeof(double), cmp);
        const size_t res = 256 << 10;
        sink += walk(buf, res, forms[f].k, forms[f].n);
        double t = now();
        for (int k = 0; k < 40; ++k) sink += walk(buf, res, forms[f].k, forms[f].n);
        double rg = 40.0 * res / (now() - t) / 1e9;
        printf("%-6s %7.1f %7.1f %7.1f %8.3f %9.1f %10.2f  ", forms[f].name, s[rounds / 2], s[0], s[rounds - 1],
               q[rounds / 2], rg, ghz * 64 / rg);
        for (int r = 0; r < rounds; ++r) printf(" %.1f", gbps[f][r]);
        printf("\n");
    }
    printf("(clock from a dependent add chain %.2f GHz; sink %lu)\n", ghz, (unsigned long)(sink & 1));
    return 0;
}
