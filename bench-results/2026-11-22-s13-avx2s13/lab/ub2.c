#include <stdio.h>
#include <time.h>
static double now(){struct timespec a; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&a); return a.tv_sec+a.tv_nsec*1e-9;}
static char buf[4096] __attribute__((aligned(64)));
#define BODY(name, ins, per) { long n=50000000; char*p=buf; double t0=now(); \
  __asm__ volatile("vpxor %%ymm15,%%ymm15,%%ymm15\n vpcmpeqb %%ymm14,%%ymm14,%%ymm14\n 1:\n" ins " sub $1, %0\n jnz 1b" : "+r"(n) : "r"(p) : "ymm0","ymm1","ymm2","ymm3","ymm4","ymm5","ymm6","ymm7","ymm8","ymm9","ymm10","ymm11","ymm12","ymm13","ymm14","ymm15","memory"); \
  double t=now()-t0; printf("%-28s %.3f cyc/iter, %.2f ins/cyc\n", name, t*4.1e9/50000000, per/(t*4.1e9/50000000)); }
#define L(op, d) #op " " #d "(%1), %%ymm%=\n"
#define L8(op) #op " 0(%1), %%ymm0\n" #op " 16(%1), %%ymm1\n" #op " 32(%1), %%ymm2\n" #op " 48(%1), %%ymm3\n" #op " 70(%1), %%ymm4\n" #op " 86(%1), %%ymm5\n" #op " 102(%1), %%ymm6\n" #op " 118(%1), %%ymm7\n"
#define I8(op) #op " $1, 0(%1), %%ymm15, %%ymm0\n" #op " $1, 16(%1), %%ymm15, %%ymm1\n" #op " $1, 32(%1), %%ymm15, %%ymm2\n" #op " $1, 48(%1), %%ymm15, %%ymm3\n" #op " $1, 70(%1), %%ymm15, %%ymm4\n" #op " $1, 86(%1), %%ymm15, %%ymm5\n" #op " $1, 102(%1), %%ymm15, %%ymm6\n" #op " $1, 118(%1), %%ymm15, %%ymm7\n"
#define X8(op) #op " %%ymm14, %%ymm15, %%ymm8\n" #op " %%ymm14, %%ymm15, %%ymm9\n" #op " %%ymm14, %%ymm15, %%ymm10\n" #op " %%ymm14, %%ymm15, %%ymm11\n" #op " %%ymm14, %%ymm15, %%ymm12\n" #op " %%ymm14, %%ymm15, %%ymm13\n" #op " %%ymm14, %%ymm15, %%ymm8\n" #op " %%ymm14, %%ymm15, %%ymm9\n"
int main(){
 BODY("vmovdqu ymm", L8(vmovdqu), 8)
 BODY("vbroadcasti128", L8(vbroadcasti128), 8)
 BODY("vpbroadcastd", L8(vpbroadcastd), 8)
 BODY("vpbroadcastq", L8(vpbroadcastq), 8)
 BODY("vinserti128 m", I8(vinserti128), 8)
 BODY("vbroadcasti128+shufb", L8(vbroadcasti128) X8(vpshufb), 16)
 BODY("vbroadcasti128+and x2", L8(vbroadcasti128) X8(vpand) X8(vpor), 24)
 BODY("vpbroadcastd+and x2", L8(vpbroadcastd) X8(vpand) X8(vpor), 24)
 BODY("vmovdqu+and x2", L8(vmovdqu) X8(vpand) X8(vpor), 24)
 BODY("vinserti128+and x2", I8(vinserti128) X8(vpand) X8(vpor), 24)
 return 0;
}
