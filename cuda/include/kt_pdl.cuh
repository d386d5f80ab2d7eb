// Programmatic dependent launch (compute capability 9.0+; no-ops below, where the host launches
// the ordinary way). A kernel launched with programmatic stream serialization may start while
// the kernel before it on the stream still runs: it does what does not depend on that kernel
// (loads of constant weights, address set-up), then waits for its grid to complete and its
// memory to be visible before reading its outputs or writing anything that kernel may read.
#pragma once

// Lets the next kernel on the stream (if launched programmatically) be scheduled once every
// block of this grid has run this or exited. Safe anywhere: the dependent still waits for this
// grid's completion before it touches its results.
__device__ __forceinline__ void kt_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Waits for the grid before this one on the stream to complete, its writes visible. Returns at
// once in a kernel launched the ordinary way.
__device__ __forceinline__ void kt_wait_prerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
