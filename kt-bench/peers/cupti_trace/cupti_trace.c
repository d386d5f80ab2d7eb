// A CUPTI activity tracer for kt's GPU work, loaded by the CUDA driver itself
// (CUDA_INJECTION64_PATH=libkt_cupti_trace.so): it records every kernel, memcpy and memset
// with its GPU start and end (ns, CUPTI's clock), the graph and graph node it ran as (0 when
// launched outside a graph) and the kernel's name, and writes them as CSV to $KT_TRACE_OUT at
// exit. nsys is not on the device; this gives the per-node timeline of a decode graph replay
// (kt-bench/peers/cupti_trace/analyze.py turns it into per-layer gaps).
//
// Built on the device against its CUPTI (build.sh), which defines KT_KERNEL_T / KT_MEMCPY_T /
// KT_MEMSET_T as the newest activity record structs of its cupti_activity.h.
#include <cupti.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_SIZE (8u << 20)
#define ALIGN 8

static FILE* out_file;
static unsigned long long dropped_total;

static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    // aligned_alloc: CUPTI wants 8-byte aligned buffers, and free() takes the same pointer back
    uint8_t* raw = (uint8_t*)aligned_alloc(ALIGN, BUF_SIZE);
    *buffer = raw;
    *size = raw ? BUF_SIZE : 0;
    *max_records = 0;
}

static void write_record(const CUpti_Activity* r) {
    switch (r->kind) {
    case CUPTI_ACTIVITY_KIND_KERNEL:
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const KT_KERNEL_T* k = (const KT_KERNEL_T*)r;
        fprintf(out_file, "kernel,%llu,%llu,%u,%llu,%u,%u,%s\n", (unsigned long long)k->start,
                (unsigned long long)k->end, (unsigned)k->graphId,
                (unsigned long long)k->graphNodeId, (unsigned)k->correlationId,
                (unsigned)k->streamId, k->name ? k->name : "?");
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const KT_MEMCPY_T* m = (const KT_MEMCPY_T*)r;
        fprintf(out_file, "memcpy,%llu,%llu,%u,%llu,%u,%u,kind%u_%llub\n",
                (unsigned long long)m->start, (unsigned long long)m->end, (unsigned)m->graphId,
                (unsigned long long)m->graphNodeId, (unsigned)m->correlationId,
                (unsigned)m->streamId, (unsigned)m->copyKind, (unsigned long long)m->bytes);
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
        const KT_MEMSET_T* m = (const KT_MEMSET_T*)r;
        fprintf(out_file, "memset,%llu,%llu,%u,%llu,%u,%u,%llub\n", (unsigned long long)m->start,
                (unsigned long long)m->end, (unsigned)m->graphId,
                (unsigned long long)m->graphNodeId, (unsigned)m->correlationId,
                (unsigned)m->streamId, (unsigned long long)m->bytes);
        break;
    }
    default:
        break;
    }
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t* buffer, size_t size,
                                      size_t valid) {
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity* record = NULL;
    while (out_file && cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        write_record(record);
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS) {
        dropped_total += dropped;
    }
    free(buffer);
}

static void flush_at_exit(void) {
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    if (out_file) {
        fprintf(out_file, "# dropped %llu\n", dropped_total);
        fclose(out_file);
        out_file = NULL;
    }
}

// The driver calls this once, when it initializes, because of CUDA_INJECTION64_PATH.
int InitializeInjection(void) {
    const char* path = getenv("KT_TRACE_OUT");
    out_file = fopen(path ? path : "kt_trace.csv", "w");
    if (!out_file) return 0;
    fprintf(out_file, "what,start_ns,end_ns,graph,node,corr,stream,name\n");
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET) != CUPTI_SUCCESS) {
        fprintf(out_file, "# CUPTI refused the activity setup\n");
        return 0;
    }
    atexit(flush_at_exit);
    return 1;
}
