"""One line per kt-bench moe --json file: ms per call, CPU ms, weight GB/s, probe, fraction."""
import json
import sys

for path in sys.argv[1:]:
    try:
        j = json.loads(open(path).read().strip().splitlines()[-1])
    except (IndexError, ValueError, OSError) as e:
        print(f"{path}: no result ({e})")
        continue
    print(
        "%s: %.3f ms (cpu %.3f ms)  %.1f GB/s of %.1f = %.1f%%"
        % (
            path.rsplit("/", 1)[-1],
            j["ms_per_call"],
            j.get("cpu_ms_per_call", 0.0),
            j["weight_gbps"],
            j["dram_gbps"],
            100 * j["bandwidth_fraction"],
        )
    )
