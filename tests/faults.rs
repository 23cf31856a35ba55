//! Fault injection: the real `credrotd run` binary against the real servers (scram
//! PostgreSQL, OpenBao, moto), broken on purpose — `kill -9` at random moments,
//! PostgreSQL restarted with `-m immediate` mid-rotation, a Vault store that
//! refuses writes for longer than a credential lives, the ledger deleted while
//! the daemon is stopped, two daemons with separate ledgers on one account — and
//! checked from outside as a consumer would: log in with what every store holds,
//! count each account's live logins in the catalog, read the ledger after the
//! final recovery, and search every log for every password.
//!
//! Each scenario prints a summary line
//! `faults: kills=N restarts=N pg_restarts=N lockouts=N orphans=N max_live=N leaked=N ...`
//! and fails on any violation. Knobs (environment): `CREDROTD_FAULT_KILLS` (100),
//! `CREDROTD_FAULT_SEED`, `CREDROTD_FAULT_PG_RESTARTS` (5), `CREDROTD_FAULT_OUTAGE`
//! (20 s), `CREDROTD_FAULT_SETTLE` (15 s), `CREDROTD_FAULT_TOLERANCE` (3 s),
//! `CREDROTD_FAULT_STATIC_GRACE` (2 s), `CREDROTD_FAULT_LOG` (trace). See
//! docs/fault-injection.md.

mod common;
#[path = "faults/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{
    delete_ledger, knob, knob_secs, pg_restart_immediate, read_ledger, serial, PgGuard, Spec,
    Strategy, World,
};
use rand::{Rng, SeedableRng};

const S: fn(u64) -> Duration = Duration::from_secs;

fn seeded(scenario: &str) -> rand::rngs::StdRng {
    let seed = knob("CREDROTD_FAULT_SEED", rand::random::<u32>() as u64);
    println!(
        "faults[{scenario}]: seed {seed} (CREDROTD_FAULT_SEED={seed} repeats the random waits)"
    );
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// 1. kill -9 at random moments, restart, check; repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_soak_never_locks_a_consumer_out() {
    let _serial = serial().await;
    let kills = knob("CREDROTD_FAULT_KILLS", 100);
    let mut rng = seeded("kill9");
    let mut w = World::new("kill9").await;
    let margin = S(5);
    w.add(Spec {
        suffix: "eph",
        strategy: Strategy::Ephemeral,
        schedule: "*/3 * * * * *",
        overlap: S(2),
        expiry_margin: margin,
        stores: &["local", "vault", "aws"],
    })
    .await;
    w.add(Spec {
        suffix: "alt",
        strategy: Strategy::Alternating,
        schedule: "*/3 * * * * *",
        overlap: S(2),
        expiry_margin: margin,
        stores: &["local", "vault"],
    })
    .await;
    w.add(Spec {
        suffix: "sta",
        strategy: Strategy::Static,
        schedule: "*/5 * * * * *",
        overlap: S(0),
        expiry_margin: margin,
        stores: &["local", "vault"],
    })
    .await;
    w.add(Spec {
        suffix: "fast",
        strategy: Strategy::Ephemeral,
        schedule: "*/2 * * * * *",
        overlap: S(1),
        expiry_margin: margin,
        stores: &["local"],
    })
    .await;
    let ledger = w.db.dir.path().join("state.db");
    let socket = w.db.dir.path().join("admin.sock");
    let inv = w.write_inventory("inventory.yaml", &ledger, &socket);

    let started = Instant::now();
    let mut d = w.start_ready(&inv, &socket, "first").await;
    w.wait_all_held(&mut d, S(60)).await;
    let mut must_check = false;
    let mut ready_times = Vec::new();
    for i in 1..=kills {
        // Kill at a random moment 0.2–3 s after the start; a kill that comes
        // before the daemon is ready interrupts its recovery, and the next round
        // then waits for readiness and checks before killing again.
        let kill_at = d.started + Duration::from_millis(rng.gen_range(200..=3000));
        let mut checked = false;
        let mut ready = false;
        loop {
            w.expect_alive(&mut d);
            if !ready && d.ready().await {
                ready = true;
                ready_times.push(d.started.elapsed());
            }
            if ready {
                w.pass().await;
                checked = true;
            } else if d.started.elapsed() > S(90) {
                let log = w.tail(&d.log, 40);
                panic!(
                    "round {i}: not ready after 90 s; log {}:\n{log}",
                    d.log.display()
                );
            }
            if Instant::now() >= kill_at && (checked || !must_check) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(if ready { 20 } else { 25 })).await;
        }
        if !checked {
            w.stats.early_kills += 1;
        }
        must_check = !checked;
        w.kill9(d);
        d = w.start(&inv, &socket, &format!("after-kill-{i}"));
        w.stats.restarts += 1;
        if i % 10 == 0 {
            println!(
                "faults[kill9]: {i}/{kills} kills, {:.0} s, lockouts={} max_live={} violations={}",
                started.elapsed().as_secs_f64(),
                w.stats.lockouts,
                w.stats.max_live,
                w.violations.len()
            );
        }
    }
    if let Err(e) = d.wait_ready(S(90)).await {
        panic!("after the last kill: {e}; log:\n{}", w.tail(&d.log, 40));
    }
    w.passes_for(&mut d, S(4)).await;
    w.stop(d).await;
    // One more start: its recovery is the final one.
    let mut d = w.start_ready(&inv, &socket, "final").await;
    w.stats.restarts += 1;
    w.pass().await;
    w.passes_for(&mut d, S(1)).await;
    w.stop(d).await;
    w.final_checks(&ledger).await;
    w.scan_leaks(&[&ledger]);
    ready_times.sort();
    if !ready_times.is_empty() {
        println!(
            "faults[kill9]: {:.0} s; ready after start: median {:?}, max {:?}",
            started.elapsed().as_secs_f64(),
            ready_times[ready_times.len() / 2],
            ready_times[ready_times.len() - 1]
        );
    }
    w.finish();
}

/// 2. PostgreSQL restarted with `-m immediate` while the daemon rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_rotation_never_locks_a_consumer_out() {
    let _serial = serial().await;
    let restarts = knob("CREDROTD_FAULT_PG_RESTARTS", 5);
    let mut rng = seeded("pg-restart");
    let mut w = World::new("pg-restart").await;
    // Declared after the world, so dropped before it: the cluster runs again
    // before the world's clean-up needs it, also when the test fails.
    let _pg = PgGuard;
    for (suffix, strategy, overlap, stores) in [
        (
            "eph",
            Strategy::Ephemeral,
            S(1),
            &["local", "vault", "aws"][..],
        ),
        ("alt", Strategy::Alternating, S(1), &["local"][..]),
        ("sta", Strategy::Static, S(0), &["local"][..]),
    ] {
        w.add(Spec {
            suffix,
            strategy,
            schedule: "*/2 * * * * *",
            overlap,
            expiry_margin: S(5),
            stores,
        })
        .await;
    }
    let ledger = w.db.dir.path().join("state.db");
    let socket = w.db.dir.path().join("admin.sock");
    let inv = w.write_inventory("inventory.yaml", &ledger, &socket);
    let mut d = w.start_ready(&inv, &socket, "run").await;
    w.wait_all_held(&mut d, S(60)).await;
    for i in 1..=restarts {
        // Aim at a rotation: a random 1-4 s of checks, then the next fire of the
        // every-2-s schedule plus 0-250 ms (a rotation takes about that long).
        let wait = Duration::from_millis(rng.gen_range(1000..=4000));
        w.passes_for(&mut d, wait).await;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let fire_in = 2000 - now_ms.rem_euclid(2000) + rng.gen_range(0..=250);
        tokio::time::sleep(Duration::from_millis(fire_in as u64)).await;
        let t = Instant::now();
        tokio::task::spawn_blocking(pg_restart_immediate)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("restart {i}: {e}"));
        w.stats.pg_restarts += 1;
        println!(
            "faults[pg-restart]: restart {i}/{restarts} took {:?}",
            t.elapsed()
        );
    }
    // Rotation resumes: every store of every account gets a credential that
    // none held before the last restart.
    let mark = w.mark();
    let stale = w.wait_fresh(&mut d, &mark, S(30)).await;
    if !stale.is_empty() {
        w.violation(
            "resume",
            format!("no rotation within 30 s of the last PostgreSQL restart for {stale:?}"),
        );
    }
    w.passes_for(&mut d, S(3)).await;
    w.stop(d).await;
    let mut d = w.start_ready(&inv, &socket, "final").await;
    w.stats.restarts += 1;
    w.passes_for(&mut d, S(1)).await;
    w.stop(d).await;
    w.final_checks(&ledger).await;
    w.scan_leaks(&[&ledger]);
    w.finish();
}

/// 3. Vault refuses writes for longer than the credential lives, then comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_longer_than_the_lifetime_keeps_the_credential_alive() {
    let _serial = serial().await;
    let outage = knob_secs("CREDROTD_FAULT_OUTAGE", 20.0);
    let mut w = World::new("store-outage").await;
    let a = w
        .add(Spec {
            suffix: "eph",
            strategy: Strategy::Ephemeral,
            schedule: "*/3 * * * * *",
            overlap: S(1),
            expiry_margin: S(2),
            stores: &["local", "vault"],
        })
        .await;
    let ledger = w.db.dir.path().join("state.db");
    let socket = w.db.dir.path().join("admin.sock");
    let inv = w.write_inventory("inventory.yaml", &ledger, &socket);
    let mut d = w.start_ready(&inv, &socket, "run").await;
    w.wait_all_held(&mut d, S(60)).await;
    w.passes_for(&mut d, S(4)).await;

    // The daemon's token may now only read.
    w.vault_writable(false).await;
    w.pass().await;
    let vault = a.stores.iter().find(|s| s.name == "vault").unwrap().clone();
    let before = w
        .fetch(&a, &vault)
        .await
        .unwrap()
        .map(|doc| (doc.version, doc.username));
    println!(
        "faults[store-outage]: Vault read-only for {outage:?}; it holds {before:?} (lifetime: next fire + 1 s overlap + 2 s margin)"
    );
    w.passes_for(&mut d, outage).await;
    w.pass().await;
    let after = w
        .fetch(&a, &vault)
        .await
        .unwrap()
        .map(|doc| (doc.version, doc.username));
    println!("faults[store-outage]: at the end of the outage Vault holds {after:?}");
    if before != after {
        w.violation(
            "vault changed",
            format!("Vault changed during a read-only outage: {before:?} -> {after:?}"),
        );
    }
    let extended = w.log_lines_with("extend").len();
    println!("faults[store-outage]: daemon log lines mentioning \"extend\": {extended}");

    // Writes allowed again: rotations resume and the new credential logs in.
    let mark = w.mark();
    w.vault_writable(true).await;
    let stale = w.wait_fresh(&mut d, &mark, S(30)).await;
    if !stale.is_empty() {
        w.violation(
            "resume",
            format!("no new credential within 30 s after Vault came back for {stale:?}"),
        );
    }
    w.passes_for(&mut d, S(2)).await;
    w.stop(d).await;
    let mut d = w.start_ready(&inv, &socket, "final").await;
    w.stats.restarts += 1;
    w.passes_for(&mut d, S(1)).await;
    w.stop(d).await;
    w.final_checks(&ledger).await;
    w.scan_leaks(&[&ledger]);
    w.finish();
}

/// 4. The ledger is deleted while the daemon is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ledger_never_drops_a_login_a_store_holds() {
    let _serial = serial().await;
    let settle = knob_secs("CREDROTD_FAULT_SETTLE", 15.0);
    let mut w = World::new("lost-ledger").await;
    for (suffix, strategy, overlap, stores) in [
        ("eph", Strategy::Ephemeral, S(2), &["local", "vault"][..]),
        ("alt", Strategy::Alternating, S(2), &["local"][..]),
        ("sta", Strategy::Static, S(0), &["local"][..]),
    ] {
        w.add(Spec {
            suffix,
            strategy,
            schedule: "*/3 * * * * *",
            overlap,
            expiry_margin: S(20),
            stores,
        })
        .await;
    }
    let ledger = w.db.dir.path().join("state.db");
    let socket = w.db.dir.path().join("admin.sock");
    let inv = w.write_inventory("inventory.yaml", &ledger, &socket);
    let mut d = w.start_ready(&inv, &socket, "run").await;
    w.wait_all_held(&mut d, S(60)).await;
    // At least one rotation after the first issue, so a predecessor exists.
    let first = w.mark();
    let stale = w.wait_fresh(&mut d, &first, S(20)).await;
    assert!(stale.is_empty(), "no second credential for {stale:?}");
    w.stop(d).await;

    let held = w.pass().await;
    let mut names: Vec<String> = held
        .iter()
        .map(|((a, s), doc)| format!("{a}@{s}={}", doc.username))
        .collect();
    names.sort();
    println!("faults[lost-ledger]: stopped; the stores hold {names:?}; deleting the ledger");
    delete_ledger(&ledger);
    let mark = w.mark();

    // Check continuously from the moment it starts, not only once it is ready:
    // whatever it does at start-up must leave the stores' logins working.
    let mut d = w.start(&inv, &socket, "after-loss");
    w.stats.restarts += 1;
    let until = Instant::now() + settle;
    let mut ready_at = None;
    while Instant::now() < until {
        w.expect_alive(&mut d);
        w.pass().await;
        if ready_at.is_none() && d.ready().await {
            ready_at = Some(d.started.elapsed());
        }
    }
    println!("faults[lost-ledger]: ready after {ready_at:?}");
    if ready_at.is_none() {
        w.violation(
            "not ready",
            format!("not ready {settle:?} after a start without a ledger"),
        );
    }
    let stale = w.wait_fresh(&mut d, &mark, S(15)).await;
    if !stale.is_empty() {
        w.violation(
            "resume",
            format!("rotation did not resume after the ledger was lost for {stale:?}"),
        );
    }
    w.passes_for(&mut d, S(4)).await;
    w.stop(d).await;
    let mut d = w.start_ready(&inv, &socket, "final").await;
    w.stats.restarts += 1;
    w.passes_for(&mut d, S(1)).await;
    w.stop(d).await;
    w.final_checks(&ledger).await;
    w.scan_leaks(&[&ledger]);
    w.finish();
}

/// 5. Two daemons with separate ledgers pointed at one account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ledger_refuses_an_account_another_owns() {
    let _serial = serial().await;
    let settle = knob_secs("CREDROTD_FAULT_SETTLE", 15.0);
    let mut w = World::new("two-ledgers").await;
    let a = w
        .add(Spec {
            suffix: "eph",
            strategy: Strategy::Ephemeral,
            schedule: "*/3 * * * * *",
            overlap: S(2),
            expiry_margin: S(10),
            stores: &["local", "vault"],
        })
        .await;
    let ledger_a = w.db.dir.path().join("state-a.db");
    let socket_a = w.db.dir.path().join("admin-a.sock");
    let inv_a = w.write_inventory("inventory-a.yaml", &ledger_a, &socket_a);
    let ledger_b = w.db.dir.path().join("state-b.db");
    let socket_b = w.db.dir.path().join("admin-b.sock");
    let inv_b = w.write_inventory("inventory-b.yaml", &ledger_b, &socket_b);

    let mut da = w.start_ready(&inv_a, &socket_a, "owner").await;
    w.wait_all_held(&mut da, S(60)).await;
    w.passes_for(&mut da, S(2)).await;
    let mut db = w.start(&inv_b, &socket_b, "second");
    let until = Instant::now() + settle;
    let mut second_exit = None;
    while Instant::now() < until {
        w.expect_alive(&mut da);
        if second_exit.is_none() {
            second_exit = db.exited();
        }
        w.pass().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second_log = db.log.clone();
    match second_exit {
        Some(s) => {
            println!("faults[two-ledgers]: the second daemon exited by itself: {s}");
            let _ = w.stop_status(db).await;
        }
        None => w.stop(db).await,
    }
    w.stop(da).await;

    // The second daemon says why it leaves the account alone.
    let text =
        String::from_utf8_lossy(&std::fs::read(&second_log).unwrap_or_default()).to_lowercase();
    let refused = ["owned by", "take over", "take-over", "take_over"]
        .iter()
        .any(|n| text.contains(n));
    if !refused {
        w.violation(
            "no refusal",
            format!(
                "the second daemon's log {} says nothing of the account being owned by another ledger (\"owned by\" / \"take over\")",
                second_log.display()
            ),
        );
    }
    // ... and its ledger manages nothing of it.
    match read_ledger(&ledger_b).await {
        Ok(rows) => {
            let managed: Vec<String> = rows
                .iter()
                .filter(|r| r.account == a.name && !matches!(r.state.as_str(), "aborted"))
                .map(|r| format!("v{} {} {}", r.version, r.username, r.state))
                .collect();
            if !managed.is_empty() {
                w.violation(
                    "second manages",
                    format!("the second ledger manages the owned account: {managed:?}"),
                );
            }
        }
        Err(e) => println!(
            "faults[two-ledgers]: the second ledger cannot be read ({e}); it holds nothing"
        ),
    }
    let mut da = w.start_ready(&inv_a, &socket_a, "final").await;
    w.stats.restarts += 1;
    w.passes_for(&mut da, S(1)).await;
    w.stop(da).await;
    w.final_checks(&ledger_a).await;
    w.scan_leaks(&[&ledger_a, &ledger_b]);
    w.finish();
}

/// The checks themselves: each one fails on a planted fault (a check that
/// cannot fail proves nothing). No daemon runs here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outside_checks_catch_planted_faults() {
    let _serial = serial().await;
    let mut w = World::new("self-check").await;
    let a = w
        .add(Spec {
            suffix: "eph",
            strategy: Strategy::Ephemeral,
            schedule: "0 0 3 * * *",
            overlap: S(2),
            expiry_margin: S(5),
            stores: &["local"],
        })
        .await;
    // Three valid login roles of the account, one of them unknown to the ledger.
    for stamp in ["20990101000001", "20990101000002", "20990101000003"] {
        w.db.exec(&format!(
            "CREATE ROLE \"{n}_{stamp}\" LOGIN; COMMENT ON ROLE \"{n}_{stamp}\" IS 'credrotd:login account={n}'",
            n = a.name
        ))
        .await;
    }
    // The store holds a credential that cannot log in (the role has no password).
    let password = format!(
        "{:016x}{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u64>(),
        rand::random::<u32>()
    );
    std::fs::create_dir_all(w.db.secrets_dir()).unwrap();
    std::fs::write(
        w.db.secrets_dir().join(format!("{}.json", a.name)),
        serde_json::json!({
            "username": format!("{}_20990101000003", a.name),
            "password": password,
            "version": 3,
            "issued_at": chrono::Utc::now().to_rfc3339(),
        })
        .to_string(),
    )
    .unwrap();
    w.pass().await;
    assert_eq!(w.stats.lockouts, 1, "{:?}", w.violations);
    assert_eq!(w.stats.max_live, 3, "{:?}", w.violations);
    // A ledger that knows two of the three, one of them in a middle state.
    let ledger = w.db.dir.path().join("planted.db");
    {
        use sqlx::{ConnectOptions, Connection, Executor};
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&ledger)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        c.execute(
            format!(
                "CREATE TABLE credentials (id INTEGER PRIMARY KEY, account TEXT, version INTEGER, username TEXT, state TEXT);
                 INSERT INTO credentials (account, version, username, state) VALUES
                   ('{n}', 1, '{n}_20990101000001', 'current'),
                   ('{n}', 2, '{n}_20990101000002', 'verified')",
                n = a.name
            )
            .as_str(),
        )
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    w.final_checks(&ledger).await;
    assert_eq!(w.stats.middle, 1, "{:?}", w.violations);
    assert_eq!(w.stats.orphans, 1, "{:?}", w.violations);
    // A password in a daemon log.
    std::fs::write(
        w.logs_dir.join("0001-planted.log"),
        format!("{{\"fields\":{{\"message\":\"oops {password}\"}}}}\n"),
    )
    .unwrap();
    w.scan_leaks(&[&ledger]);
    assert_eq!(w.stats.leaked, 1, "{:?}", w.violations);
    println!("{}", w.summary());
}

/// 7. kill -9 at random moments against MariaDB: the same checks from outside,
/// through a consumer's eyes (log in with what the file store holds), the
/// server's users (at most two live logins per account, none the ledger does not
/// know after the final recovery), the ledger (no middle state) and every log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_on_mariadb_never_locks_a_consumer_out() {
    use common::mysql::MyDb;
    use std::collections::{BTreeMap, HashSet};

    let _serial = serial().await;
    let kills = knob("CREDROTD_FAULT_MYSQL_KILLS", 30);
    // A static user has no overlap: its store lags a password change by up to
    // the rest of the rotation (or a restart and recovery, after a kill).
    let static_grace = knob_secs("CREDROTD_FAULT_STATIC_GRACE", 2.0);
    let mut rng = seeded("kill9-mariadb");
    let db = MyDb::new().await;
    db.exec("CREATE TABLE orders (id INT PRIMARY KEY); INSERT INTO orders VALUES (1)")
        .await;
    let (eph, alt, sta) = (db.name("eph"), db.name("alt"), db.name("sta"));
    let sta_user = db.name("sta_svc");
    db.exec(&format!(
        "CREATE USER '{sta_user}'@'%' IDENTIFIED BY 'Original-Static-Password-0123456789'"
    ))
    .await;
    let grant = format!(
        "    grants:\n      - {{ schema: {}, tables: [orders], privileges: [SELECT] }}\n",
        db.dbname
    );
    let accounts = format!(
        "  {eph}:\n    database: main\n    schedule: \"*/3 * * * * *\"\n    overlap: 2s\n    expiry_margin: 5s\n{grant}\
         \x20 {alt}:\n    database: main\n    strategy: alternating\n    schedule: \"*/3 * * * * *\"\n    overlap: 2s\n    expiry_margin: 5s\n{grant}\
         \x20 {sta}:\n    database: main\n    strategy: static\n    role: {sta_user}\n    schedule: \"*/5 * * * * *\"\n    overlap: 0s\n    expiry_margin: 5s\n{grant}"
    );
    let socket = db.dir.path().join("admin.sock");
    let inv = db.dir.path().join("inventory.yaml");
    std::fs::write(
        &inv,
        format!(
            "{}admin:\n  socket: {}\n",
            db.inventory_with("", &accounts),
            socket.display()
        ),
    )
    .unwrap();
    let names = [eph.clone(), alt.clone(), sta.clone()];
    let mut logs = Vec::new();
    let mut start = |label: &str| {
        let log = db.dir.path().join(format!("daemon-{label}.log"));
        logs.push(log.clone());
        harness::Daemon::start(&inv, &socket, log)
    };

    let mut secrets: HashSet<String> = HashSet::new();
    let mut lockouts = Vec::new();
    let mut max_live = 0usize;
    let mut failing_since: BTreeMap<String, Instant> = BTreeMap::new();
    // One look from outside: every account's stored credential logs in.
    let check = async |secrets: &mut HashSet<String>,
                       lockouts: &mut Vec<String>,
                       failing_since: &mut BTreeMap<String, Instant>| {
        for a in &names {
            let Ok(bytes) = std::fs::read(db.secrets_dir().join(format!("{a}.json"))) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let (user, pw) = (
                v["username"].as_str().unwrap().to_owned(),
                v["password"].as_str().unwrap().to_owned(),
            );
            secrets.insert(pw.clone());
            match db.login(&user, &pw).await {
                Ok(c) => {
                    let _ = sqlx::Connection::close(c).await;
                    failing_since.remove(a);
                }
                Err(e) => {
                    let since = *failing_since.entry(a.clone()).or_insert_with(Instant::now);
                    let grace = if *a == sta {
                        static_grace
                    } else {
                        Duration::ZERO
                    };
                    if since.elapsed() >= grace {
                        lockouts.push(format!(
                            "{a}: {user} v{} does not log in: {e}",
                            v["version"]
                        ));
                    }
                }
            }
        }
    };

    let started = Instant::now();
    let mut d = start("first");
    d.wait_ready(S(90)).await.unwrap();
    let deadline = Instant::now() + S(60);
    while !names
        .iter()
        .all(|a| db.secrets_dir().join(format!("{a}.json")).exists())
    {
        assert!(Instant::now() < deadline, "not every account was issued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 1..=kills {
        let kill_at = d.started + Duration::from_millis(rng.gen_range(200..=3000));
        while Instant::now() < kill_at {
            assert!(
                d.exited().is_none(),
                "round {i}: the daemon exited on its own"
            );
            if d.ready().await {
                check(&mut secrets, &mut lockouts, &mut failing_since).await;
            }
            let live = db
                .users()
                .await
                .into_iter()
                .filter(|u| !u.ends_with('@') && !u.starts_with(&format!("{sta_user}@")))
                .fold(BTreeMap::<String, usize>::new(), |mut m, u| {
                    let account = names
                        .iter()
                        .filter(|a| u.starts_with(&format!("{a}_")))
                        .max_by_key(|a| a.len());
                    if let Some(a) = account {
                        *m.entry(a.clone()).or_default() += 1;
                    }
                    m
                });
            max_live = max_live.max(live.values().copied().max().unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d.kill9();
        d = start(&format!("after-kill-{i}"));
    }
    d.wait_ready(S(90)).await.unwrap();
    let settle = Instant::now() + S(4);
    while Instant::now() < settle {
        check(&mut secrets, &mut lockouts, &mut failing_since).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.stop(S(30)).await.expect("the daemon stops on SIGTERM");
    // One more start: its recovery is the final one.
    let mut d = start("final");
    d.wait_ready(S(90)).await.unwrap();
    check(&mut secrets, &mut lockouts, &mut failing_since).await;
    d.stop(S(30)).await.expect("the daemon stops on SIGTERM");

    let ledger = read_ledger(&db.ledger_path()).await.unwrap();
    let middle: Vec<&harness::LedgerRow> = ledger
        .iter()
        .filter(|r| ["planned", "created", "verified", "published"].contains(&r.state.as_str()))
        .collect();
    let known: HashSet<&str> = ledger
        .iter()
        .filter(|r| ["current", "retiring"].contains(&r.state.as_str()))
        .map(|r| r.username.as_str())
        .collect();
    // A retired alternating twin stays, locked, for its next turn (as on
    // PostgreSQL, where it keeps NOLOGIN); any other login the ledger does not
    // know, or an unknown twin that can still log in, is an orphan.
    let locked: HashSet<String> = db.locked_users().await.into_iter().collect();
    let orphans: Vec<String> = db
        .users()
        .await
        .into_iter()
        .filter(|u| !u.ends_with('@') && !u.starts_with(&format!("{sta_user}@")))
        .filter(|u| !known.contains(u.rsplit_once('@').unwrap().0))
        .filter(|u| !(locked.contains(u) && u.starts_with(&format!("{alt}_"))))
        .map(|u| {
            let state = if locked.contains(&u) {
                "locked"
            } else {
                "can log in"
            };
            format!("{u} ({state})")
        })
        .collect();
    let mut leaks = Vec::new();
    let mut files = logs.clone();
    files.push(db.ledger_path());
    for f in &files {
        for (_, at) in harness::find_secrets(&std::fs::read(f).unwrap_or_default(), &secrets) {
            leaks.push(format!("{} at byte {at}", f.display()));
        }
    }
    println!(
        "faults[kill9-mariadb]: kills={kills} {:.0} s lockouts={} orphans={} middle={} max_live={max_live} leaked={} passwords_checked={}",
        started.elapsed().as_secs_f64(),
        lockouts.len(),
        orphans.len(),
        middle.len(),
        leaks.len(),
        secrets.len()
    );
    assert!(lockouts.is_empty(), "consumers locked out: {lockouts:#?}");
    assert!(
        orphans.is_empty(),
        "logins the ledger does not know: {orphans:?}"
    );
    assert!(
        middle.is_empty(),
        "ledger entries left in a middle state: {middle:?}"
    );
    assert!(
        max_live <= 2,
        "more than two live logins for an account: {max_live}"
    );
    assert!(
        leaks.is_empty(),
        "passwords in logs or the ledger: {leaks:?}"
    );
    assert!(
        secrets.len() > kills as usize / 2,
        "too few rotations were observed"
    );
}
