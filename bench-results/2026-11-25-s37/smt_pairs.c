// Session 37 experiment: which vCPUs of the device share a physical core?
// The guest shows 16 cores and no SMT siblings, but AMX tile throughput per thread halves from 8 to
// 16 busy threads (session 11), which suggests host hyperthread pairs. For every pair of vCPUs this
// runs a port-bound loop (12 independent vpdpbusd zmm chains: two 512-bit VNNI ops a cycle fill a
// Golden Cove core) on both at once and reports each pair's time against one vCPU alone; siblings
// read ~2x, separate cores ~1x. Rounds repeat the sweep in a shuffled order so that a pairing the
// host moves shows up as disagreement between rounds.
// Build: gcc -O2 -mavx512f -mavx512bw -mavx512vnni -pthread smt_pairs.c -o smt_pairs
// Run:   smt_pairs [rounds] [iters]
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

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

static long ITERS = 400000;

// 12 independent accumulators; returns a value so the work is not dropped.
static __attribute__((noinline)) int burn(long iters) {
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
            c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
    for (long i = 0; i < iters; ++i) {
        c0 = _mm512_dpbusd_epi32(c0, a, b);
        c1 = _mm512_dpbusd_epi32(c1, a, b);
        c2 = _mm512_dpbusd_epi32(c2, a, b);
        c3 = _mm512_dpbusd_epi32(c3, a, b);
        c4 = _mm512_dpbusd_epi32(c4, a, b);
        c5 = _mm512_dpbusd_epi32(c5, a, b);
        c6 = _mm512_dpbusd_epi32(c6, a, b);
        c7 = _mm512_dpbusd_epi32(c7, a, b);
        c8 = _mm512_dpbusd_epi32(c8, a, b);
        c9 = _mm512_dpbusd_epi32(c9, a, b);
        c10 = _mm512_dpbusd_epi32(c10, a, b);
        c11 = _mm512_dpbusd_epi32(c11, a, b);
        __asm__ volatile("" : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4), "+v"(c5));
        __asm__ volatile("" : "+v"(c6), "+v"(c7), "+v"(c8), "+v"(c9), "+v"(c10), "+v"(c11));
    }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                 _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
    return _mm512_reduce_add_epi32(s);
}

struct job {
    int cpu;
    atomic_int* go;
    double secs;
    int sink;
};

static void* worker(void* p) {
    struct job* j = p;
    pin(j->cpu);
    burn(ITERS / 20); // warm: clock and license settle before the timed part
    atomic_fetch_add(j->go, 1);
    while (atomic_load(j->go) < 2) {
    }
    double t = now();
    j->sink = burn(ITERS);
    j->secs = now() - t;
    return NULL;
}

// Both at once; returns the slower thread's time.
static double pair(int a, int b) {
    atomic_int go = 0;
    struct job ja = {a, &go, 0, 0}, jb = {b, &go, 0, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, worker, &ja);
    pthread_create(&tb, NULL, worker, &jb);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    return ja.secs > jb.secs ? ja.secs : jb.secs;
}

static double alone(int a) {
    atomic_int go = 1; // the one worker passes the gate at once
    struct job ja = {a, &go, 0, 0};
    pthread_t ta;
    pthread_create(&ta, NULL, worker, &ja);
    pthread_join(ta, NULL);
    return ja.secs;
}

int main(int argc, char** argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    if (argc > 2) ITERS = atol(argv[2]);
    int n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n > 64) n = 64;
    static double ratio[8][64][64];
    if (rounds > 8) rounds = 8;
    int np = n * (n - 1) / 2;
    int* order = malloc(sizeof(int) * np * 2);
    srand(37);
    for (int r = 0; r < rounds; ++r) {
        double base = 0;
        for (int c = 0; c < n; ++c) base += alone(c);
        base /= n;
        int k = 0;
        for (int a = 0; a < n; ++a)
            for (int b = a + 1; b < n; ++b) order[2 * k] = a, order[2 * k + 1] = b, ++k;
        for (int i = np - 1; i > 0; --i) { // shuffle the pairs
            int j = rand() % (i + 1);
            int ta = order[2 * i], tb = order[2 * i + 1];
            order[2 * i] = order[2 * j], order[2 * i + 1] = order[2 * j + 1];
            order[2 * j] = ta, order[2 * j + 1] = tb;
        }
        double t0 = now();
        for (int i = 0; i < np; ++i) {
            int a = order[2 * i], b = order[2 * i + 1];
            ratio[r][a][b] = ratio[r][b][a] = pair(a, b) / base;
        }
        printf("round %d: one vCPU alone %.3f ms (mean of %d); sweep %.2f s\n", r, base * 1e3, n,
               now() - t0);
        for (int a = 0; a < n; ++a) {
            printf("  %2d:", a);
            for (int b = 0; b < n; ++b)
                if (a == b) printf("    -");
                else printf(" %4.2f", ratio[r][a][b]);
            printf("\n");
        }
    }
    // the pairs slower than 1.5x in every round, and those slower in some rounds only
    printf("pairs >= 1.5x in every round:");
    for (int a = 0; a < n; ++a)
        for (int b = a + 1; b < n; ++b) {
            int hits = 0;
            for (int r = 0; r < rounds; ++r) hits += ratio[r][a][b] >= 1.5;
            if (hits == rounds) printf(" (%d,%d)", a, b);
        }
    printf("\npairs >= 1.5x in some rounds only:");
    for (int a = 0; a < n; ++a)
        for (int b = a + 1; b < n; ++b) {
            int hits = 0;
            for (int r = 0; r < rounds; ++r) hits += ratio[r][a][b] >= 1.5;
            if (hits && hits < rounds) printf(" (%d,%d)x%d", a, b, hits);
        }
    printf("\n");
    return 0;
}
