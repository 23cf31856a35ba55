//! The floor of a rotation's server work, for `benches/compare.sh`: a minimal
//! client that does on PostgreSQL what a credrotd rotation cannot avoid, with
//! nothing else (no ledger, no store, no reconciliation).
//!
//! Per account and round: `CREATE ROLE <login> LOGIN PASSWORD '<SCRAM
//! verifier computed here>' VALID UNTIL … IN ROLE <scoped>` (the first round
//! also creates the scoped role as a member of one privilege role holding the
//! grants, as credrotd's first issue does), then a fresh connection that logs
//! in with the new password and runs `SELECT 1` (credrotd's verify login).
//!
//!     cargo run --release --example floor -- URL TAG N CONCURRENCY ROUND
//!
//! URL: a superuser (or CREATEROLE admin) URL with password, of the database
//! to work in; TAG: role-name prefix; ROUND: 1 (first issue) or more. Prints
//! one line: `floor round R: N rotations in S s = X/s`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, tag, n, concurrency, round] = args.as_slice() else {
        eprintln!("usage: floor URL TAG N CONCURRENCY ROUND");
        std::process::exit(2);
    };
    let n: usize = n.parse()?;
    let concurrency: usize = concurrency.parse()?;
    let round: u32 = round.parse()?;
    let options = PgConnectOptions::from_str(url)?.log_statements(log::LevelFilter::Off);
    let pool = PgPoolOptions::new()
        .max_connections(concurrency as u32)
        .connect_with(options.clone())
        .await?;
    let privileges = format!("{tag}_floor_p");
    if round == 1 {
        sqlx::raw_sql(&format!(
            "CREATE ROLE {privileges} NOLOGIN;
             GRANT USAGE ON SCHEMA app TO {privileges};
             GRANT SELECT, INSERT ON app.items TO {privileges}"
        ))
        .execute(&pool)
        .await?;
    }
    let until = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 1..=n {
        let slot = slots.clone().acquire_owned().await?;
        let pool = pool.clone();
        let options = options.clone();
        let privileges = privileges.clone();
        let until = until.clone();
        let tag = tag.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let scoped = format!("{tag}_floor{i}");
            let login = format!("{scoped}_{round}");
            let password = credrotd::secret::Secret::generate();
            let verifier =
                credrotd::engine::postgres::scram::verifier(password.expose().as_bytes());
            let mut sql = String::new();
            if round == 1 {
                sql.push_str(&format!("CREATE ROLE {scoped} NOLOGIN IN ROLE {privileges};"));
            }
            sql.push_str(&format!(
                "CREATE ROLE {login} LOGIN PASSWORD '{verifier}' VALID UNTIL '{until}' IN ROLE {scoped}"
            ));
            sqlx::raw_sql(&sql).execute(&pool).await?;
            let mut c = options
                .clone()
                .username(&login)
                .password(password.expose())
                .connect()
                .await?;
            sqlx::query("SELECT 1").execute(&mut c).await?;
            c.close().await?;
            Ok::<(), sqlx::Error>(())
        });
    }
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "floor round {round}: {n} rotations in {secs:.2} s = {:.1}/s ({failed} failed)",
        n as f64 / secs
    );
    pool.close().await;
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
