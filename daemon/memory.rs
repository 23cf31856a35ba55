//! Memory hygiene for a long-running daemon on glibc.
//!
//! glibc's malloc gives each thread that allocates an arena of its own (up to
//! eight per core) and keeps what is freed for reuse: after the burst of a
//! start-up (issuing a thousand accounts) the daemon idles on memory it no
//! longer uses. Two arenas are enough for its few threads, and the freed
//! memory goes back to the system when the scheduler has nothing in flight.
//! Elsewhere (musl, other systems) both are no-ops.

/// Caps malloc's arenas at two. Call before any other thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap memory to the system.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it takes
    // no pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
