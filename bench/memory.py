"""How the benchmarks measure host memory, in one place."""

# glibc hands every freed block over 1 MiB back to the OS at once, so RSS follows the live allocations: without
# it, repeated identical runs scatter their peaks by ±30 MiB or ±10% (memory the allocator kept, not live data).
PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**20)}
