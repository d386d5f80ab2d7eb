#include <stdio.h>
#include <time.h>
static double now(){struct timespec a; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&a); return a.tv_sec+a.tv_nsec*1e-9;}
static char buf[4096] __attribute__((aligned(64)));
#define BODY(name, ins, per) { long n=50000000; char*p=buf; double t0=now(); \
  __asm__ volatile("vpxor %%ymm15,%%ymm15,%%ymm15\n vpcmpeqb %%ymm14,%%ymm14,%%ymm14\n 1:\n" ins " sub $1, %0\n jnz 1b" : "+r"(n) : "r"(p) : "ymm0","ymm1","ymm2","ymm3","ymm4","ymm5","ymm6","ymm7","ymm8","ymm9","ymm10","ymm11","ymm12","ymm13","ymm14","ymm15","memory"); \
  double t=now()-t0; printf("%-28s %.3f cyc/iter, %.2f ins/cyc\n", name, t*4.1e9/50000000, per/(t*4.1e9/50000000)); }
#define L8(op) #op " 0(%1), %%ymm0\n" #op " 16(%1), %%ymm1\n" #op " 32(%1), %%ymm2\n" #op " 48(%1), %%ymm3\n" #op " 64(%1), %%ymm4\n" #op " 80(%1), %%ymm5\n" #op " 96(%1), %%ymm6\n" #op " 112(%1), %%ymm7\n"
#define X8(op) #op " %%ymm14, %%ymm15, %%ymm8\n" #op " %%ymm14, %%ymm15, %%ymm9\n" #op " %%ymm14, %%ymm15, %%ymm10\n" #op " %%ymm14, %%ymm15, %%ymm11\n" #op " %%ymm14, %%ymm15, %%ymm12\n" #op " %%ymm14, %%ymm15, %%ymm13\n" #op " %%ymm14, %%ymm15, %%ymm8\n" #op " %%ymm14, %%ymm15, %%ymm9\n"
int main(){
 BODY("vpmovzxbw m", L8(vpmovzxbw), 8)
 BODY("vpmovzxbw m + shufb", L8(vpmovzxbw) X8(vpshufb), 16)
 BODY("vpmovzxbw m + maddubs", L8(vpmovzxbw) X8(vpmaddubsw), 16)
 BODY("vpmovzxbw m + and x2", L8(vpmovzxbw) X8(vpand) X8(vpor), 24)
 BODY("vmovdqa m + shufb", L8(vmovdqu) X8(vpshufb), 16)
 BODY("vpbroadcastd m + and x2", L8(vpbroadcastd) X8(vpand) X8(vpor), 24)
 return 0;
}
