//! Secret values: a redacting, zeroizing string type and the password generator.
//!
//! Every password credrotd handles lives in a [`Secret`] from the moment it is drawn
//! from the OS CSPRNG until it is dropped. `Debug` and `Display` print `[redacted]`,
//! the buffer is wiped on drop, and the only way to read the value is the explicit
//! [`Secret::expose`], which keeps every use greppable.

use std::fmt;

use rand::rngs::OsRng;
use rand::Rng;
use zeroize::Zeroizing;

/// Length of generated passwords. 40 alphanumeric characters carry about 238 bits
/// of entropy; the alphabet needs no escaping in URLs, shells or connection strings.
pub const PASSWORD_LEN: usize = 40;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A secret string that never prints its value and is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value that is already secret (read from a file or the environment).
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// Draws a fresh password from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut rng = OsRng;
        let mut out = String::with_capacity(PASSWORD_LEN);
        for _ in 0..PASSWORD_LEN {
            let idx = rng.gen_range(0..ALPHABET.len());
            out.push(ALPHABET[idx] as char);
        }
        Secret::new(out)
    }

    /// Returns the plaintext. Call sites are the few places that must send it on:
    /// the SCRAM verifier, the verify-login connection and the store payload.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_distinct_and_alphanumeric() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_eq!(a.expose().len(), PASSWORD_LEN);
        assert!(a.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("hunter2-very-secret".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }
}
