//! Password hashes for MySQL 8 and MariaDB, computed here so that the plaintext
//! never goes into SQL, the general log, the slow log or the binary log.
//!
//! - MariaDB: [`native_password`], the `mysql_native_password` hash, sent as
//!   `IDENTIFIED BY PASSWORD '*…'`.
//! - MySQL 8: [`caching_sha2_password`], the stored `caching_sha2_password`
//!   authentication string, sent as `IDENTIFIED WITH caching_sha2_password AS 0x…`
//!   ([`hex`]).
//!
//! The functions take a [`Secret`] and return hashes only; nothing here formats or
//! logs a password, and intermediate buffers derived from it are wiped on drop.

use rand::rngs::OsRng;
use rand::Rng;
use sha1::{Digest as _, Sha1};
use sha2::digest::generic_array::GenericArray;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secret::Secret;

/// Length of a `caching_sha2_password` salt. MySQL uses all 20 bytes (glibc's
/// `crypt` would cut a `$5$` salt to 16).
pub const CACHING_SHA2_SALT_LEN: usize = 20;

/// Hash rounds of MySQL's stored `caching_sha2_password` strings: the `005` in
/// `$A$005$` is the count in thousands, written as three hex digits.
const CACHING_SHA2_ROUNDS: u32 = 5_000;

/// crypt(3)'s base-64 alphabet, also used by MySQL's `crypt_genhash_impl.cc`.
const CRYPT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The `mysql_native_password` hash: `*` and the upper-case hex of
/// SHA1(SHA1(password)), 41 characters, as `PASSWORD()` returns it on MariaDB.
///
/// An empty password is hashed by the same formula
/// (`*BE1BDEC0AA74B4DCB079943E70528096CCA985F8`), so the result always has this
/// shape; the server's `PASSWORD('')` returns the empty string instead. Either
/// way the account's password is then empty (a client that sends a scramble for
/// an empty password, as sqlx does, logs in with it), so never hash an empty
/// password: credrotd's passwords come from [`Secret::generate`].
pub fn native_password(password: &Secret) -> String {
    let mut stage1 = Zeroizing::new([0u8; 20]);
    Sha1::new()
        .chain_update(password.expose().as_bytes())
        .finalize_into(GenericArray::from_mut_slice(&mut stage1[..]));
    let stage2 = Sha1::digest(&stage1[..]);
    let mut out = String::with_capacity(41);
    out.push('*');
    push_hex(&mut out, &stage2, b"0123456789ABCDEF");
    out
}

/// MySQL 8's stored `caching_sha2_password` authentication string for `password`
/// with a fresh random salt: `$A$005$`, the 20-byte salt and the 43-character
/// digest (70 bytes, all ASCII). Send it as `IDENTIFIED WITH caching_sha2_password
/// AS` [`hex`]`(…)`.
///
/// The salt is drawn from the OS CSPRNG over crypt's 64-character alphabet
/// `./0-9A-Za-z` (120 bits). MySQL's own salts are any byte in 1..=127 but `$`;
/// this alphabet is a subset of those that needs no quoting anywhere (dumps,
/// `SHOW CREATE USER`, logs) and cannot contain MySQL's `rounds=` marker.
pub fn caching_sha2_password(password: &Secret) -> Vec<u8> {
    let mut salt = [0u8; CACHING_SHA2_SALT_LEN];
    let mut rng = OsRng;
    for byte in &mut salt {
        *byte = CRYPT_ALPHABET[rng.gen_range(0..CRYPT_ALPHABET.len())];
    }
    caching_sha2_password_with_salt(password, &salt)
}

/// [`caching_sha2_password`] with a given salt, for tests and known vectors.
///
/// The salt must be bytes MySQL itself could have produced: 1..=127 except `$`
/// (MySQL reads the salt up to the first `$` or NUL, and the authentication
/// string is stored as text). Other salts yield a string MySQL would not verify.
pub fn caching_sha2_password_with_salt(
    password: &Secret,
    salt: &[u8; CACHING_SHA2_SALT_LEN],
) -> Vec<u8> {
    debug_assert!(
        salt.iter().all(|&b| (1..=0x7f).contains(&b) && b != b'$'),
        "a caching_sha2_password salt must be bytes 1..=127 other than '$'"
    );
    let digest = sha256_crypt(password.expose().as_bytes(), salt, CACHING_SHA2_ROUNDS);
    let mut out = Vec::with_capacity(7 + CACHING_SHA2_SALT_LEN + digest.len());
    // `$A$` is SHA-256, then the rounds in thousands as three hex digits.
    out.extend_from_slice(format!("$A${:03X}$", CACHING_SHA2_ROUNDS / 1000).as_bytes());
    out.extend_from_slice(salt);
    out.extend_from_slice(&digest);
    out
}

/// The SQL hexadecimal literal of `bytes`: `0x` and upper-case hex digits (the
/// whole literal, prefix included), or `X''` for no bytes (`0x` alone is not a
/// literal). Valid on both servers in every `sql_mode`.
pub fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "X''".to_owned();
    }
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("0x");
    push_hex(&mut out, bytes, b"0123456789ABCDEF");
    out
}

fn push_hex(out: &mut String, bytes: &[u8], digits: &[u8; 16]) {
    for &b in bytes {
        out.push(char::from(digits[usize::from(b >> 4)]));
        out.push(char::from(digits[usize::from(b & 0x0f)]));
    }
}

/// Drepper's SHA-256-crypt ("Unix crypt using SHA-256 and SHA-512", the `$5$`
/// algorithm): the 43-character encoded digest of `password` with `salt` and
/// `rounds`, steps numbered as in the specification. Salt and rounds are used as
/// given: truncating the salt to 16 bytes and clamping rounds to 1000..=999999999
/// are the `$5$` string format's rules, not the algorithm's, and MySQL does not
/// truncate its 20-byte salts.
fn sha256_crypt(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 43] {
    const LEN: usize = 32;

    // Steps 4-8: digest B = SHA256(password || salt || password).
    let b = finish(
        Sha256::new()
            .chain_update(password)
            .chain_update(salt)
            .chain_update(password),
    );

    // Steps 1-3 and 9-12: digest A.
    let mut ctx = Sha256::new();
    ctx.update(password);
    ctx.update(salt);
    let mut left = password.len();
    while left > LEN {
        ctx.update(b.as_slice());
        left -= LEN;
    }
    ctx.update(&b[..left]);
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update(b.as_slice());
        } else {
            ctx.update(password);
        }
        bits >>= 1;
    }
    let a = finish(ctx);

    // Steps 13-16: the byte sequence P, as long as the password.
    let mut ctx = Sha256::new();
    for _ in 0..password.len() {
        ctx.update(password);
    }
    let dp = finish(ctx);
    let p = Zeroizing::new(repeat_to(&dp[..], password.len()));

    // Steps 17-20: the byte sequence S, as long as the salt.
    let mut ctx = Sha256::new();
    for _ in 0..16 + usize::from(a[0]) {
        ctx.update(salt);
    }
    let ds = ctx.finalize();
    let s = repeat_to(&ds[..], salt.len());

    // Step 21: the rounds, starting from A.
    let mut c = a;
    for round in 0..rounds {
        let mut ctx = Sha256::new();
        if round % 2 == 1 {
            ctx.update(p.as_slice());
        } else {
            ctx.update(c.as_slice());
        }
        if round % 3 != 0 {
            ctx.update(&s);
        }
        if round % 7 != 0 {
            ctx.update(p.as_slice());
        }
        if round % 2 == 1 {
            ctx.update(c.as_slice());
        } else {
            ctx.update(p.as_slice());
        }
        c = finish(ctx);
    }

    // Step 22: crypt's base-64 of the bytes in the specification's order.
    const ORDER: [(usize, usize, usize); 10] = [
        (0, 10, 20),
        (21, 1, 11),
        (12, 22, 2),
        (3, 13, 23),
        (24, 4, 14),
        (15, 25, 5),
        (6, 16, 26),
        (27, 7, 17),
        (18, 28, 8),
        (9, 19, 29),
    ];
    let mut out = [0u8; 43];
    let mut at = 0;
    let mut encode = |w: u32, n: usize| {
        for i in 0..n {
            // The mask keeps the index below 64.
            out[at] = CRYPT_ALPHABET[((w >> (6 * i)) & 0x3f) as usize];
            at += 1;
        }
    };
    for (b2, b1, b0) in ORDER {
        encode(
            u32::from(c[b2]) << 16 | u32::from(c[b1]) << 8 | u32::from(c[b0]),
            4,
        );
    }
    encode(u32::from(c[31]) << 8 | u32::from(c[30]), 3);
    out
}

/// The digest of `ctx`, in a buffer wiped on drop.
fn finish(ctx: Sha256) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    ctx.finalize_into(GenericArray::from_mut_slice(&mut out[..]));
    out
}

/// `digest` repeated and cut to `len` bytes (steps 16 and 20).
fn repeat_to(digest: &[u8], len: usize) -> Vec<u8> {
    digest.iter().copied().cycle().take(len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.to_owned())
    }

    /// The `$5$` string format around [`sha256_crypt`], as Drepper's test vectors
    /// use it: salt cut to 16 bytes, rounds clamped to 1000..=999999999.
    fn crypt5(password: &str, setting: &str) -> String {
        let rest = setting.strip_prefix("$5$").expect("a $5$ setting");
        let (rounds, salt, custom) = match rest.strip_prefix("rounds=") {
            Some(r) => {
                let (n, salt) = r.split_once('$').expect("rounds=N$salt");
                let n: u32 = n.parse().expect("a round count");
                (n.clamp(1000, 999_999_999), salt, true)
            }
            None => (5000, rest, false),
        };
        let salt = &salt.as_bytes()[..salt.len().min(16)];
        let digest = sha256_crypt(password.as_bytes(), salt, rounds);
        let salt = std::str::from_utf8(salt).expect("ASCII salt");
        let digest = std::str::from_utf8(&digest).expect("ASCII digest");
        if custom {
            format!("$5$rounds={rounds}${salt}${digest}")
        } else {
            format!("$5${salt}${digest}")
        }
    }

    /// The SHA-256 test vectors published with the specification, Ulrich Drepper,
    /// "Unix crypt using SHA-256 and SHA-512" (https://www.akkadia.org/drepper/SHA-crypt.txt),
    /// with its original `morethan` wording; each was also checked against
    /// OpenSSL 3's `openssl passwd -5 -salt …`.
    #[test]
    fn sha256_crypt_matches_drepper_vectors() {
        let vectors = [
            (
                "$5$saltstring",
                "Hello world!",
                "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
            ),
            (
                "$5$rounds=10000$saltstringsaltstring",
                "Hello world!",
                "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
            ),
            (
                "$5$rounds=5000$toolongsaltstring",
                "This is just a test",
                "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5",
            ),
            (
                "$5$rounds=1400$anotherlongsaltstring",
                "a very much longer text to encrypt.  This one even stretches over morethan one line.",
                "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1",
            ),
            (
                "$5$rounds=77777$short",
                "we have a short salt string but not a short password",
                "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/",
            ),
            (
                "$5$rounds=123456$asaltof16chars..",
                "a short string",
                "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD",
            ),
            (
                "$5$rounds=10$roundstoolow",
                "the minimum number is still observed",
                "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC",
            ),
        ];
        for (setting, password, expected) in vectors {
            assert_eq!(crypt5(password, setting), expected, "{setting}");
        }
    }

    /// An empty password and one longer than the 32-byte digest take the loops'
    /// edge branches. Expected values from this machine's libc `crypt(3)`
    /// (libxcrypt, through Python's `crypt.crypt`); the 100-byte one also from
    /// `openssl passwd -5` (OpenSSL 3.0), which refuses an empty password. A salt
    /// over 16 bytes is covered by the MySQL vectors below.
    #[test]
    fn sha256_crypt_long_and_empty_inputs() {
        assert_eq!(
            crypt5("", "$5$saltstring"),
            "$5$saltstring$FdNfA4gXqvCeO6iZs7G/.wwwoywYZqo0l1pwmfWaBA7"
        );
        assert_eq!(
            crypt5(&"x".repeat(100), "$5$saltstring"),
            "$5$saltstring$Oa4FAe3j12NEBjTMwR61FXUth0v2z1HlRVgHK3bteq/"
        );
    }

    /// Known MySQL `caching_sha2_password` authentication strings, from MySQL's own
    /// unit test `unittest/gunit/sha2_password-t.cc`
    /// (`Caching_sha2_password_authenticate_fast_authenticate`, mysql/mysql-server):
    /// each triple of plaintext, 20-byte salt and 43-byte stored digest is
    /// serialized to `$A$005$<salt><digest>` and MySQL's `authenticate()` must
    /// accept the plaintext against it. The digests are the byte arrays of that
    /// test, written here as text. Note the tab characters in two of the salts.
    #[test]
    fn caching_sha2_matches_mysql_unit_test_vectors() {
        let vectors: [(&str, &[u8; 20], &str); 3] = [
            (
                "HahaH0hO1234#$@#%",
                b"AbCd!@#\tEfgH%^&*01@#",
                "dNFegEa4OGDrnEu7M4T.nkmm794xI/QoCR3Z.xpLOW6",
            ),
            (
                ";bCdEF34^i9&*\":({\\56\"",
                b"CVlq))+AC>Q)#4!@# x!",
                "SPMN/L8.noKqe8IXVZ2DpCE6w29b106vCQecap9JKpA",
            ),
            (
                " CQ#$ML CF%IF$#(<#R ()<_q@#(rq",
                b"X#y)+q x2cx3,qr2##3\t",
                "rP8Jn8Mtp6XCMx1QjSDA8NSalfVMSBNMIr2yqcEi6Q8",
            ),
        ];
        for (password, salt, digest) in vectors {
            let mut expected = b"$A$005$".to_vec();
            expected.extend_from_slice(salt);
            expected.extend_from_slice(digest.as_bytes());
            let got = caching_sha2_password_with_salt(&secret(password), salt);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&expected),
                "salt {:?}",
                String::from_utf8_lossy(salt)
            );
            assert_eq!(got.len(), 70);
        }
    }

    #[test]
    fn caching_sha2_random_salt_is_fresh_and_from_the_crypt_alphabet() {
        let pw = secret("correct horse battery staple");
        let a = caching_sha2_password(&pw);
        let b = caching_sha2_password(&pw);
        assert_ne!(a, b, "two hashes must not share a salt");
        for hash in [&a, &b] {
            assert_eq!(hash.len(), 70);
            assert!(hash.starts_with(b"$A$005$"));
            assert!(hash[7..].iter().all(|c| CRYPT_ALPHABET.contains(c)));
            let salt: &[u8; 20] = hash[7..27].try_into().expect("20 bytes");
            assert_eq!(&caching_sha2_password_with_salt(&pw, salt), hash);
        }
    }

    /// Expected values from a real server: `SELECT PASSWORD('…')` on MariaDB
    /// 10.11.19 (the test server of `scripts/lib/mariadb.sh`), over a `utf8mb4`
    /// connection. The empty password is the exception: that server returns ''
    /// for it, and the value here is the formula's, from the same server's
    /// `SELECT CONCAT('*', UPPER(SHA1(UNHEX(SHA1('')))))`.
    #[test]
    fn native_password_matches_mariadb() {
        let vectors = [
            ("password", "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"),
            ("Hello world!", "*0DA3D1CD83EC6FAE79E8E3859E146E74E1CE416A"),
            (
                "pässwörd-日本語-🔑",
                "*8412D9FBC5DDB2FCF7218131AAB2542D3D900363",
            ),
            (
                "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/",
                "*5C8E2C8594FE96AFD60AA85DAA03156CAE973B49",
            ),
            (
                " it's \\ a \"test\" ",
                "*5EC0BE2D8AAAFC0EEE615019BE8D485B2333A650",
            ),
            ("", "*BE1BDEC0AA74B4DCB079943E70528096CCA985F8"),
        ];
        for (password, expected) in vectors {
            assert_eq!(native_password(&secret(password)), expected);
        }
        assert_eq!(vectors[3].0.len(), 64);
    }

    #[test]
    fn hex_is_a_complete_literal() {
        assert_eq!(hex(b"$A$005$"), "0x24412430303524");
        assert_eq!(hex(&[0x00, 0x0f, 0xf0, 0xff]), "0x000FF0FF");
        assert_eq!(hex(b""), "X''");
    }
}
