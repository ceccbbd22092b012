//! How the C allocator treats tensor buffers.
//!
//! libtorch allocates CPU tensors with `malloc`. glibc serves blocks above its mmap threshold
//! (128 KiB, rising dynamically) with fresh `mmap`s and unmaps them on free, so a training
//! step that allocates the same multi-megabyte activations every time pays for zeroed pages
//! every time. On the W1 workload that made a validation pass (batches of 256 images, 26 MB
//! activations) take 1.75 s instead of 1.05 s.

/// Keep freed blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit) in the heap for
/// reuse, and give heap memory back to the kernel only when 1 GiB is free at its top. Call it
/// once, before training; it affects the whole process.
pub fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
