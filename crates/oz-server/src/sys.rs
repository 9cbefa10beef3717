//! The one module of oz-server that calls libc directly.
#![allow(unsafe_code)]

/// Heap memory glibc keeps after a free instead of returning it to the
/// kernel (its default starts at 128 KiB).
const TRIM_THRESHOLD: libc::c_int = 32 << 20;
/// Allocations at least this large get their own mapping (default 128 KiB,
/// adjusted by glibc unless a threshold is set, as here).
const MMAP_THRESHOLD: libc::c_int = 8 << 20;

/// Tells glibc's allocator to keep up to [`TRIM_THRESHOLD`] of freed heap.
///
/// With its defaults, SQLite's and the server's allocations made glibc
/// shrink the heap after nearly every statement and grow it again on the
/// next, each time faulting fresh pages in: about a fifth of the server's
/// CPU per run (bench/REPORT.md). The cost is that the server's resident
/// memory stays at its high-water mark, plus at most these 32 MiB.
///
/// Left alone when the operator tunes glibc's allocator through the
/// environment (`GLIBC_TUNABLES`, `MALLOC_TRIM_THRESHOLD_`,
/// `MALLOC_MMAP_THRESHOLD_`). Call it before any other thread starts.
pub fn keep_freed_memory() {
    let tuned = [
        "GLIBC_TUNABLES",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some());
    if tuned {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is called
        // before the runtime starts any thread, and both values are within
        // the documented ranges (the mmap threshold at most 32 MiB on 64-bit).
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        };
        if !ok {
            tracing::debug!("glibc refused the allocator settings; keeping its defaults");
        }
    }
}
