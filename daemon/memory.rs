//! Memory hygiene for a long-running daemon on glibc.
//!
//! glibc's malloc gives each thread that allocates an arena of its own (up to
//! eight per core) and keeps what is freed for reuse: after the burst of a
//! start-up (issuing a thousand accounts) the daemon idles on memory it no
//! longer uses. Two arenas are enough for its few threads, and the freed
//! memory goes back to the system when the scheduler has nothing in flight.
//! Elsewhere (musl, other systems) both are no-ops.

/// Caps malloc's arenas at two, unless the operator set `MALLOC_ARENA_MAX`.
/// Call before any other thread starts.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap memory to the system, at most once a minute: a trim
/// walks and locks the arenas, and staggered schedules end a "burst" after
/// nearly every saga.
pub fn release_freed() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 60
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it takes
    // no pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
