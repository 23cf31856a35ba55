//! SCRAM-SHA-256 verifier cost: credrotd's (`pbkdf2` crate, HMAC keyed once)
//! against `postgres_protocol::password::scram_sha_256` (which it replaced),
//! same passwords, 4,096 iterations each.
//!
//!     cargo run --release --example scram [N]
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let passwords: Vec<String> = (0..n)
        .map(|_| credrotd::secret::Secret::generate().expose().to_owned())
        .collect();
    for round in 0..2 {
        let t = Instant::now();
        for p in &passwords {
            std::hint::black_box(credrotd::engine::postgres::scram::verifier(p.as_bytes()));
        }
        let ours = t.elapsed();
        let t = Instant::now();
        for p in &passwords {
            std::hint::black_box(postgres_protocol::password::scram_sha_256(p.as_bytes()));
        }
        let theirs = t.elapsed();
        println!(
            "round {round}: {n} verifiers: credrotd (pbkdf2) {:.3} ms each, postgres_protocol {:.3} ms each, ratio {:.2}",
            ours.as_secs_f64() * 1000.0 / n as f64,
            theirs.as_secs_f64() * 1000.0 / n as f64,
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
}
