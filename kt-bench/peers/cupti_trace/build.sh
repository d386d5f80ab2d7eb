#!/usr/bin/env bash
# Builds libkt_cupti_trace.so on the device (gcc against the CUPTI found there: the CUDA
# toolkit's extras/CUPTI or targets/*/, else the nvidia-cuda-cupti Python wheel). Prints the
# library's path, then the folder of libcupti (for LD_LIBRARY_PATH) on the next line.
# Usage: build.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
outdir=${1:-/tmp/kt-cupti}
mkdir -p "$outdir"
header=""
for h in /usr/local/cuda/extras/CUPTI/include/cupti.h /usr/local/cuda/targets/*/include/cupti.h \
         /usr/local/cuda*/extras/CUPTI/include/cupti.h; do
    if [ -f "$h" ]; then header=$h; break; fi
done
if [ -z "$header" ]; then
    header=$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
for d in site.getsitepackages():
    for h in glob.glob(os.path.join(d, "nvidia", "**", "include", "cupti.h"), recursive=True):
        print(h); raise SystemExit
PY
)
fi
if [ -z "$header" ]; then echo "build.sh: no cupti.h found" >&2; exit 1; fi
inc=$(dirname "$header")
lib=""
for l in "$inc/../lib64" "$inc/../lib" /usr/local/cuda/extras/CUPTI/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    if ls "$l"/libcupti.so* >/dev/null 2>&1; then lib=$(cd "$l" && pwd); break; fi
done
if [ -z "$lib" ]; then echo "build.sh: no libcupti next to $header" >&2; exit 1; fi
# the newest record structs this CUPTI defines
newest() { grep -ohE "\b$1[0-9]*\b" "$inc"/cupti_activity*.h | sort -V | uniq | tail -1; }
kernel_t=$(newest CUpti_ActivityKernel)
memcpy_t=$(newest CUpti_ActivityMemcpy)
memset_t=$(newest CUpti_ActivityMemset)
so=$(ls "$lib"/libcupti.so* | head -1)
gcc -O2 -shared -fPIC -o "$outdir/libkt_cupti_trace.so" "$here/cupti_trace.c" -I"$inc" \
    -DKT_KERNEL_T="$kernel_t" -DKT_MEMCPY_T="$memcpy_t" -DKT_MEMSET_T="$memset_t" "$so" \
    -Wl,-rpath,"$lib" 1>&2
echo "build.sh: $header, $kernel_t / $memcpy_t / $memset_t, $so" >&2
echo "$outdir/libkt_cupti_trace.so"
echo "$lib"
