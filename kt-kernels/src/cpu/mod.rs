//! CPU kernels: ISA detection, per-format kernel tables, the thread pool and the matmul.
