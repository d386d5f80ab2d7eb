// Programmatic dependent launch (compute capability 9.0+; no-ops below, where the host launches
// the dependent kernel the ordinary way). A kernel the host launches with programmatic stream
// serialization may start while the kernel before it on the stream still runs, once every
// block of that kernel ran kt_launch_dependents (or exited): it does what depends on nothing
// the earlier kernels write (loads of weights, plans from host-set lengths), then
// kt_wait_prerequisites, which returns when the earlier grids are complete and their writes
// visible. A kernel launched the ordinary way returns from kt_wait_prerequisites at once.
#pragma once

__device__ __forceinline__ void kt_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void kt_wait_prerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
