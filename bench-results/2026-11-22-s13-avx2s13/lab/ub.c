#include <stdio.h>
#include <time.h>
#include <string.h>
static double now(){struct timespec a; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&a); return a.tv_sec+a.tv_nsec*1e-9;}
#define R8(I) I(0) I(1) I(2) I(3) I(4) I(5) I(6) I(7)
#define BODY(name, ins, per) { long n=50000000; double t0=now(); \
  __asm__ volatile("vpxor %%ymm15,%%ymm15,%%ymm15\n vpcmpeqb %%ymm14,%%ymm14,%%ymm14\n 1:\n" ins " sub $1, %0\n jnz 1b" : "+r"(n) :: "ymm0","ymm1","ymm2","ymm3","ymm4","ymm5","ymm6","ymm7","ymm8","ymm9","ymm10","ymm11","ymm12","ymm13","ymm14","ymm15","memory"); \
  double t=now()-t0; printf("%-28s %.3f cyc/iter, %.2f ins/cyc\n", name, t*4.1e9/50000000, per/(t*4.1e9/50000000)); }
#define X(op) #op " %%ymm14, %%ymm15, %%ymm0\n" #op " %%ymm14, %%ymm15, %%ymm1\n" #op " %%ymm14, %%ymm15, %%ymm2\n" #op " %%ymm14, %%ymm15, %%ymm3\n" #op " %%ymm14, %%ymm15, %%ymm4\n" #op " %%ymm14, %%ymm15, %%ymm5\n" #op " %%ymm14, %%ymm15, %%ymm6\n" #op " %%ymm14, %%ymm15, %%ymm7\n"
#define Y(op) #op " %%ymm14, %%ymm15, %%ymm8\n" #op " %%ymm14, %%ymm15, %%ymm9\n" #op " %%ymm14, %%ymm15, %%ymm10\n" #op " %%ymm14, %%ymm15, %%ymm11\n" #op " %%ymm14, %%ymm15, %%ymm12\n" #op " %%ymm14, %%ymm15, %%ymm13\n" #op " %%ymm14, %%ymm15, %%ymm8\n" #op " %%ymm14, %%ymm15, %%ymm9\n"
int main(){
 BODY("vpand", X(vpand), 8)
 BODY("vpmaddubsw", X(vpmaddubsw), 8)
 BODY("vpmaddwd", X(vpmaddwd), 8)
 BODY("vpsignb", X(vpsignb), 8)
 BODY("vpshufb", X(vpshufb), 8)
 BODY("vpunpckldq", X(vpunpckldq), 8)
 BODY("vpaddw", X(vpaddw), 8)
 BODY("vpsrlvd", X(vpsrlvd), 8)
 BODY("vpmullw", X(vpmullw), 8)
 BODY("vpblendvb?", X(vpavgb), 8)
 BODY("maddubs+sign", X(vpmaddubsw) Y(vpsignb), 16)
 BODY("maddubs+shufb", X(vpmaddubsw) Y(vpshufb), 16)
 BODY("sign+shufb", X(vpsignb) Y(vpshufb), 16)
 BODY("maddubs+and", X(vpmaddubsw) Y(vpand), 16)
 BODY("maddubs+srlvd", X(vpmaddubsw) Y(vpsrlvd), 16)
 BODY("shufb+srlvd", X(vpshufb) Y(vpsrlvd), 16)
 BODY("shufb+unpck", X(vpshufb) Y(vpunpckldq), 16)
 BODY("sign+and", X(vpsignb) Y(vpand), 16)
 BODY("maddubs+maddwd", X(vpmaddubsw) Y(vpmaddwd), 16)
 BODY("shufb+and", X(vpshufb) Y(vpand), 16)
 BODY("and+or", X(vpand) Y(vpor), 16)
 return 0;
}
