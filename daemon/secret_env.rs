//! Secrets passed in environment variables (`password_env`, `token_env`, the
//! AWS SDK's keys), taken out of the environment before any thread starts.
//!
//! The values move into this process's memory; the variables are removed from
//! the environment (so no child, no library that reads the environment later
//! and no crash report sees them) and their bytes in the initial environment
//! block are overwritten, which is what `/proc/<pid>/environ` shows. The
//! process is also non-dumpable (see `main.rs`): this is defence in depth for
//! root-level readers and for whatever the kernel exposes of that block.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use crate::secret::Secret;

static TAKEN: OnceLock<HashMap<String, Secret>> = OnceLock::new();

/// The AWS SDK's secret environment variables, taken when present and handed
/// to the SDK explicitly (see `store::aws`).
pub const AWS_VARS: [&str; 3] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

extern "C" {
    static mut environ: *mut *mut c_char;
}

/// Moves `names` out of the environment into memory. Call once, before any
/// other thread exists (`main`, before the async runtime): changing the
/// environment while another thread reads it is undefined behaviour. Later
/// calls do nothing. Returns the names that were present.
pub fn take<I, S>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut taken = HashMap::new();
    for name in names {
        let name = name.as_ref();
        if name.is_empty() || name.contains('=') || taken.contains_key(name) {
            continue;
        }
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        let Ok(value) = value.into_string() else {
            // Not UTF-8: leave it where it is; reading it reports the error.
            continue;
        };
        wipe_initial_value(name);
        std::env::remove_var(name);
        taken.insert(name.to_owned(), Secret::new(value));
    }
    let mut names: Vec<String> = taken.keys().cloned().collect();
    names.sort();
    if TAKEN.set(taken).is_err() {
        return Vec::new();
    }
    names
}

/// A secret environment variable: the taken value, or (for a variable not
/// known at start-up, e.g. one a reload added) the environment's.
pub fn var(name: &str) -> Option<Secret> {
    if let Some(s) = TAKEN.get().and_then(|t| t.get(name)) {
        return Some(s.clone());
    }
    std::env::var(name).ok().map(Secret::new)
}

/// Whether `name` was taken out of the environment at start-up.
pub fn was_taken(name: &str) -> bool {
    TAKEN.get().is_some_and(|t| t.contains_key(name))
}

/// Overwrites the value bytes of `name=value` wherever the C environment
/// holds it. For the variables the process started with, that memory is the
/// initial block `/proc/<pid>/environ` reads.
fn wipe_initial_value(name: &str) {
    let prefix: OsString = format!("{name}=").into();
    let prefix = prefix.as_bytes();
    // SAFETY: single-threaded (the caller's contract); `environ` is a
    // NULL-terminated array of NUL-terminated strings owned by the C runtime,
    // and the bytes overwritten lie within one such string, before its NUL.
    unsafe {
        let mut p = environ;
        if p.is_null() {
            return;
        }
        while !(*p).is_null() {
            let entry = *p;
            let bytes = CStr::from_ptr(entry).to_bytes();
            if bytes.starts_with(prefix) {
                let value = entry.add(prefix.len());
                for i in 0..bytes.len() - prefix.len() {
                    std::ptr::write_volatile(value.add(i), 0);
                }
            }
            p = p.add(1);
        }
    }
}
