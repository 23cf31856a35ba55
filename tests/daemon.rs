//! `credrotd run` as an operator runs it: the admin socket (every endpoint, a
//! refused peer, malformed requests), signals (reload, a broken inventory, rotate
//! all, terminate during a rotation), systemd readiness, metrics and consumer
//! notification, against the real PostgreSQL started by `./scripts/test`.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_no_secret, version_of, wait_until, TestDb};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

struct Daemon {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(db: &TestDb, inventory: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = db
            .dir
            .path()
            .join(format!("daemon-{}.log", rand::random::<u16>()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credrotd"));
        cmd.arg("-c")
            .arg(inventory)
            .arg("run")
            .env("RUST_LOG", "debug,sqlx=warn,hyper=info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
            socket: db.dir.path().join("admin.sock"),
        }
    }

    fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), s).unwrap();
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One raw HTTP/1.1 request over the socket; returns (status, body).
    fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        raw(&self.socket, format!(
            "{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ).as_bytes())
    }

    fn wait_ready(&mut self) {
        wait_until("readyz", Duration::from_secs(60), || {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "daemon exited:\n{}",
                self.log()
            );
            self.socket.exists() && self.http("GET", "/readyz", "").0 == 200
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raw(socket: &Path, request: &[u8]) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn account(name: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    database: main\n{extra}    grants:\n      - {{ schema: public, privileges: [USAGE] }}\n"
    )
}

fn admin_top(db: &TestDb) -> String {
    format!(
        "admin: {{ socket: {}, allow_uids: [{}] }}\n",
        db.dir.path().join("admin.sock").display(),
        nix::unistd::geteuid().as_raw()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_serves_every_endpoint_and_refuses_strangers() {
    let db = TestDb::new().await;
    let a = db.name("api");
    let path = db.write_inventory_with(&admin_top(&db), &account(&a, "    overlap: 1h\n"));
    let mut d = Daemon::start(&db, &path, &[]);
    d.wait_ready();
    // The file store is written before the ledger marks the version current:
    // wait for what the API reports, not for the file alone.
    wait_until("the first credential", Duration::from_secs(30), || {
        let (_, body) = d.http("GET", "/v1/status", "");
        serde_json::from_str::<Vec<credrotd::api::AccountStatus>>(&body)
            .is_ok_and(|rows| rows.first().is_some_and(|r| r.current.is_some()))
    });
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode");

    assert_eq!(
        d.http("GET", "/healthz", ""),
        (200, "{\"status\":\"ok\"}".into())
    );
    let (code, body) = d.http("GET", "/v1/status", "");
    assert_eq!(code, 200, "{body}");
    let rows: Vec<credrotd::api::AccountStatus> = serde_json::from_str(&body).unwrap();
    assert_eq!(rows[0].current.as_ref().unwrap().version, 1);

    let (code, body) = d.http("POST", &format!("/v1/accounts/{a}/rotate"), "");
    assert_eq!(code, 200, "{body}");
    let r: credrotd::api::RotateResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(r.version, 2);
    let (code, body) = d.http("GET", &format!("/v1/accounts/{a}"), "");
    assert_eq!(code, 200, "{body}");
    let detail: credrotd::api::AccountDetail = serde_json::from_str(&body).unwrap();
    assert_eq!(detail.live.len(), 2, "v1 in its overlap and v2 current");
    assert!(
        !body.contains(db.published(&a).password.expose()),
        "the API never returns the password"
    );

    let (code, body) = d.http(
        "POST",
        &format!("/v1/accounts/{a}/revoke"),
        "{\"previous_only\": true}",
    );
    assert_eq!(code, 200, "{body}");
    let r: credrotd::api::RevokeResponse = serde_json::from_str(&body).unwrap();
    assert_eq!((r.revoked.len(), r.suspended), (1, false));

    let (code, body) = d.http("GET", "/v1/events?since=0", "");
    assert_eq!(code, 200);
    let events: Vec<credrotd::api::EventEntry> = serde_json::from_str(&body).unwrap();
    assert!(events.iter().any(|e| e.kind == "revoked"), "{body}");
    let last = events.last().unwrap().id;
    let (_, body) = d.http("GET", &format!("/v1/events?since={last}"), "");
    assert_eq!(body, "[]");

    // Malformed and unknown requests get a clear error; the daemon survives them.
    for (method, path, body, want) in [
        ("GET", "/v1/accounts/nobody_here", "", 404),
        ("POST", "/v1/accounts/nobody_here/rotate", "", 404),
        (
            "POST",
            &format!("/v1/accounts/{a}/revoke"),
            "{not json",
            400,
        ),
        (
            "POST",
            &format!("/v1/accounts/{a}/revoke"),
            "{\"previous_only\": true, \"extra\": 1}",
            400,
        ),
        ("GET", "/v1/events?since=yesterday", "", 400),
        ("DELETE", "/v1/status", "", 405),
        ("GET", "/v1/accounts/x/rotate", "", 405),
        ("GET", "/nope", "", 404),
    ] {
        let (code, body) = d.http(method, path, body);
        assert_eq!(code, want, "{method} {path}: {body}");
        assert!(body.contains("\"error\""), "{method} {path}: {body}");
    }
    let big = "x".repeat(100_000);
    assert_eq!(d.http("POST", "/v1/reload", &big).0, 413);
    let (code, _) = raw(&d.socket, b"\x00\x01garbage that is not http\r\n\r\n");
    assert!(
        code == 400 || code == 0,
        "garbage gets 400 or a closed connection, got {code}"
    );
    assert_eq!(
        d.http("GET", "/healthz", "").0,
        200,
        "the daemon survives garbage"
    );

    // The client.
    let ctl = Command::new(env!("CARGO_BIN_EXE_credrotd"))
        .args(["-c"])
        .arg(&path)
        .args(["ctl", "status"])
        .output()
        .unwrap();
    assert!(
        ctl.status.success(),
        "{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    assert!(String::from_utf8_lossy(&ctl.stdout).contains(&a));
    let (code, body) = d.http("POST", "/v1/reload", "");
    assert_eq!(code, 200, "{body}");

    // A peer whose uid is not allowed is refused by SO_PEERCRED, even when the
    // file mode would let it in.
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches uid and needs root (CI runs as root)"
    );
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stranger = {
        use std::os::unix::process::CommandExt;
        Command::new(env!("CARGO_BIN_EXE_credrotd"))
            .args(["ctl", "--socket"])
            .arg(&d.socket)
            .arg("health")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    assert_eq!(stranger.status.code(), Some(1));
    let out = String::from_utf8_lossy(&stranger.stdout);
    assert!(out.contains("403") && out.contains("not allowed"), "{out}");
    assert!(d.log().contains("refused a peer"), "refusals are logged");
    assert!(d.alive());

    let socket = d.socket.clone();
    assert!(d.stop().success());
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reload_rotate_and_survive_a_broken_inventory() {
    let db = TestDb::new().await;
    let a = db.name("sa");
    let b = db.name("sb");
    let top = admin_top(&db);
    let path = db.write_inventory_with(&top, &account(&a, ""));
    let mut d = Daemon::start(&db, &path, &[]);
    d.wait_ready();
    wait_until("the first credential", Duration::from_secs(30), || {
        version_of(&db, &a) == 1
    });

    // SIGHUP with an added account: it is issued.
    db.write_inventory_with(&top, &format!("{}{}", account(&a, ""), account(&b, "")));
    d.signal(Signal::SIGHUP);
    wait_until(
        "the added account is issued",
        Duration::from_secs(30),
        || version_of(&db, &b) == 1,
    );

    // A broken inventory: logged, the running one stays, the daemon lives on.
    std::fs::write(
        &path,
        db.inventory_with(&top, &format!("{}    colour: blue\n", account(&a, ""))),
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    wait_until(
        "the failed reload is logged",
        Duration::from_secs(30),
        || d.log().contains("reload failed"),
    );
    assert!(d.alive());
    let (code, body) = d.http("POST", "/v1/reload", "");
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("unknown field `colour`") && body.contains("inventory.yaml:"),
        "{body}"
    );
    let (_, status) = d.http("GET", "/v1/status", "");
    assert!(
        status.contains(&b),
        "the running inventory (with {b}) is kept: {status}"
    );

    // SIGUSR1 rotates every account.
    d.signal(Signal::SIGUSR1);
    wait_until("every account rotated", Duration::from_secs(30), || {
        version_of(&db, &a) == 2 && version_of(&db, &b) == 2
    });

    // Removing an account with `prune: true` revokes its credentials.
    let b_cred = db.published(&b);
    db.write_inventory_with(&format!("{top}prune: true\n"), &account(&a, ""));
    d.signal(Signal::SIGHUP);
    wait_until(
        "the removed account's logins are revoked",
        Duration::from_secs(30),
        || {
            !db_roles_blocking(&db)
                .iter()
                .any(|r| r.starts_with(&format!("{b}_")))
        },
    );
    assert!(db
        .login(&b_cred.username, b_cred.password.expose())
        .await
        .is_err());
    let a_cred = db.published(&a);
    db.login(&a_cred.username, a_cred.password.expose())
        .await
        .expect("the kept account is untouched");
    assert!(d.stop().success());
}

fn db_roles_blocking(db: &TestDb) -> Vec<String> {
    let tag = db.tag.clone();
    let url = common::pg_url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use sqlx::ConnectOptions;
            let mut c = url
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .connect()
                .await
                .unwrap();
            sqlx::query_scalar::<_, String>(
                "SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1",
            )
            .bind(format!("{tag}%"))
            .fetch_all(&mut c)
            .await
            .unwrap()
        })
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_comes_after_recovery_with_listeners_bound_and_metrics_follow_rotations() {
    let db = TestDb::new().await;
    let a = db.name("rdy");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let top = format!(
        "{}metrics: {{ listen: \"127.0.0.1:{port}\" }}\n",
        admin_top(&db)
    );
    let path = db.write_inventory_with(&top, &account(&a, ""));
    let notify_path = db.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let d = Daemon::start(
        &db,
        &path,
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );

    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 ({e}); got {messages:?}\n{}", d.log()));
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        let ready = m.lines().any(|l| l == "READY=1");
        messages.push(m);
        if ready {
            break;
        }
    }
    // At READY=1 start-up recovery is done and both listeners answer. (The first
    // issue runs after it: a database that is down must not keep the service
    // from starting.)
    assert!(
        d.log().contains("scheduler started"),
        "READY=1 before recovery finished"
    );
    assert_eq!(d.http("GET", "/healthz", "").0, 200);
    assert!(http_get(port, "/metrics").starts_with("HTTP/1.1 200"));
    wait_until("the first credential", Duration::from_secs(30), || {
        version_of(&db, &a) == 1
    });
    wait_until("the rotation is counted", Duration::from_secs(10), || {
        http_get(port, "/metrics").contains(&format!(
            "credrotd_rotations_total{{account=\"{a}\",result=\"ok\"}} 1"
        ))
    });
    let metrics = http_get(port, "/metrics");
    for needle in [
        format!("credrotd_rotations_total{{account=\"{a}\",result=\"ok\"}} 1"),
        format!("credrotd_credential_expiry_timestamp_seconds{{account=\"{a}\"}}"),
        "credrotd_up 1".to_owned(),
        "credrotd_rotation_duration_seconds_count".to_owned(),
    ] {
        assert!(
            metrics.contains(&needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
    let (code, _) = d.http("POST", &format!("/v1/accounts/{a}/rotate"), "");
    assert_eq!(code, 200);
    assert!(http_get(port, "/metrics").contains(&format!(
        "credrotd_rotations_total{{account=\"{a}\",result=\"ok\"}} 2"
    )));
    assert!(
        messages.iter().any(|m| m.contains("STATUS=")),
        "{messages:?}"
    );

    let status = d.stop();
    assert!(status.success());
    let mut rest = Vec::new();
    notify
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    while let Ok(n) = notify.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.iter().any(|m| m.contains("STOPPING=1")), "{rest:?}");
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_notified_by_exec_and_signal_without_the_password() {
    let db = TestDb::new().await;
    let a = db.name("ntf");
    let dir = db.dir.path();
    let pid_file = dir.join("consumer.pid");
    let marker = dir.join("consumer.hup");
    let mut consumer = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {pid}; trap 'echo hup >> {marker}' HUP; while :; do sleep 0.1; done",
            pid = pid_file.display(),
            marker = marker.display()
        ))
        .spawn()
        .unwrap();
    wait_until("consumer pid file", Duration::from_secs(10), || {
        pid_file.exists()
    });
    let envdump = dir.join("env.dump");
    let extra = format!(
        "    notify:\n      exec: [/bin/sh, -c, 'env > {env}']\n      signal: {{ pid_file: {pid}, signal: HUP }}\n",
        env = envdump.display(),
        pid = pid_file.display()
    );
    let path = db.write_inventory_with(&admin_top(&db), &account(&a, &extra));
    let mut d = Daemon::start(
        &db,
        &path,
        &[("CREDROTD_TEST_SECRET_ENV", "DaemonOnlySecret-0123456789")],
    );
    d.wait_ready();
    wait_until("the consumer got SIGHUP", Duration::from_secs(20), || {
        marker.exists()
    });
    let env = std::fs::read_to_string(&envdump).unwrap();
    for needle in [
        format!("CREDROTD_ACCOUNT={a}"),
        "CREDROTD_VERSION=1".to_owned(),
        format!(
            "CREDROTD_FILE={}",
            db.secrets_dir().join(format!("{a}.json")).display()
        ),
    ] {
        assert!(
            env.contains(&needle),
            "the command's environment lacks {needle}"
        );
    }
    let password = db.published(&a).password.expose().to_owned();
    assert_no_secret(
        "the notify command's environment",
        env.as_bytes(),
        std::slice::from_ref(&password),
    );
    assert!(
        !env.contains("DaemonOnlySecret"),
        "credrotd's own environment leaked into the hook"
    );
    assert!(
        d.log().contains("notified consumers (exec)")
            && d.log().contains("notified consumers (signal)")
    );
    assert_no_secret("the daemon's debug log", d.log().as_bytes(), &[password]);
    assert!(d.stop().success());
    let _ = consumer.kill();
    let _ = consumer.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_rotation_finishes_it_and_a_restart_resumes_cleanly() {
    let db = TestDb::new().await;
    let a = db.name("term");
    // The notify step holds the rotation open for three seconds.
    let extra = "    notify: { exec: [/bin/sleep, \"3\"] }\n";
    let path = db.write_inventory_with(&admin_top(&db), &account(&a, extra));
    let d = Daemon::start(&db, &path, &[]);
    wait_until(
        "the rotation reaches its notify step",
        Duration::from_secs(30),
        || version_of(&db, &a) == 1,
    );
    let started = Instant::now();
    let log = d.log.clone();
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "SIGTERM waited for the in-flight step"
    );
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("in_flight=1"), "{log}");

    // Restart: nothing in a middle state, the credential works, and the daemon
    // carries on.
    let out = Command::new(env!("CARGO_BIN_EXE_credrotd"))
        .arg("-c")
        .arg(&path)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success());
    let ledger =
        credrotd::ledger::Ledger::open(&format!("sqlite://{}", db.ledger_path().display()))
            .await
            .unwrap();
    assert!(ledger
        .credentials(&a)
        .await
        .unwrap()
        .iter()
        .all(|c| !c.state.is_middle()));
    ledger.close().await;
    let mut d = Daemon::start(&db, &path, &[]);
    d.wait_ready();
    let p = db.published(&a);
    db.login(&p.username, p.password.expose())
        .await
        .expect("the credential finished before exit logs in");
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_down_does_not_hold_up_the_others() {
    let db = TestDb::new().await;
    let up = db.name("up");
    let down = db.name("down");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let accounts = format!(
        "{}  {down}:\n    database: gone\n    grants:\n      - {{ schema: public, privileges: [USAGE] }}\n",
        account(&up, "")
    );
    let yaml = db.inventory_with(&admin_top(&db), &accounts).replace(
        "stores:\n",
        &format!("  gone: {{ engine: postgres, url: \"postgres://nobody@127.0.0.1:{closed}/nowhere\" }}\nstores:\n"),
    );
    let path = db.dir.path().join("inventory.yaml");
    std::fs::write(&path, yaml).unwrap();
    let started = Instant::now();
    let mut d = Daemon::start(&db, &path, &[]);
    d.wait_ready();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "READY took {:?}",
        started.elapsed()
    );
    wait_until(
        "the reachable account is issued",
        Duration::from_secs(30),
        || version_of(&db, &up) == 1,
    );
    assert_eq!(version_of(&db, &down), 0);
    wait_until("the failure is recorded", Duration::from_secs(60), || {
        let (_, body) = d.http("GET", &format!("/v1/accounts/{down}"), "");
        body.contains("\"last_result\":\"failed\"")
    });
    assert!(d.alive());
    assert!(d.stop().success());
}

/// Makes sure this test process may hold `want` open files: the soft
/// RLIMIT_NOFILE is raised with `prlimit(1)` when it is lower (the crate's nix
/// does not enable its `resource` feature).
fn ensure_open_files(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(|s| s.parse::<u64>().unwrap_or(u64::MAX))
        .expect("Max open files in /proc/self/limits");
    if soft >= want {
        return;
    }
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={want}:{want}"))
        .status()
        .expect("prlimit (util-linux) raises RLIMIT_NOFILE");
    assert!(status.success(), "prlimit --nofile={want} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_idle_connections_do_not_starve_a_request() {
    let db = TestDb::new().await;
    let a = db.name("idle");
    let path = db.write_inventory_with(&admin_top(&db), &account(&a, ""));
    let mut d = Daemon::start(&db, &path, &[]);
    d.wait_ready();
    ensure_open_files(1_000 + 512);

    // A thousand connections that never send a byte, far over the cap of 64...
    let idle: Vec<UnixStream> = (0..1_000)
        .map(|i| {
            UnixStream::connect(&d.socket).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    // ...and a few that send half a request head.
    let slow: Vec<UnixStream> = (0..8)
        .map(|_| {
            let mut s = UnixStream::connect(&d.socket).unwrap();
            s.write_all(b"GET /v1/status HTTP/1.1\r\nhost: t\r\n")
                .unwrap();
            s
        })
        .collect();

    // A real request is answered (not after the idle ones time out: `raw`'s
    // 30 s read timeout only keeps a regression from hanging the suite).
    let (code, body) = d.http("GET", "/v1/status", "");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert!(body.contains(&a), "{body}");
    let ctl = Command::new(env!("CARGO_BIN_EXE_credrotd"))
        .args(["ctl", "--socket"])
        .arg(&d.socket)
        .arg("health")
        .output()
        .unwrap();
    assert!(
        ctl.status.success(),
        "{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    assert!(
        d.log()
            .contains("at its connection cap: closed the idlest connection"),
        "the cap was reached and idle connections made room"
    );

    // The daemon does not hold on to them: all but the newest were closed at
    // once (eviction), the rest at the header timeout (EOF on read).
    for s in &idle {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    }
    wait_until(
        "the idle connections are closed",
        Duration::from_secs(30),
        || {
            idle.iter()
                .filter(|s| matches!((&**s).read(&mut [0u8; 1]), Ok(0)))
                .count()
                == idle.len()
        },
    );
    drop(idle);
    drop(slow);
    assert!(d.alive());
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_refuses_oversized_bodies_and_cuts_off_slow_clients() {
    let db = TestDb::new().await;
    let a = db.name("lim");
    let path = db.write_inventory_with(&admin_top(&db), &account(&a, ""));
    let mut d = Daemon::start(&db, &path, &[]);
    d.wait_ready();

    // The slow clients first, in threads: each waits for its timeout.
    let socket = d.socket.clone();
    let slow = |request: &'static [u8]| {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(&socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(request).unwrap();
            let mut out = Vec::new();
            let read = s.read_to_end(&mut out);
            (
                read.map_err(|e| e.kind()),
                String::from_utf8_lossy(&out).into_owned(),
            )
        })
    };
    let idle = slow(b"");
    let slow_head = slow(b"GET /healthz HTTP/1.1\r\nhost: t\r\n");
    let slow_body =
        slow(b"POST /v1/reload HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{\"a\":");

    // Oversized bodies get 413: declared (refused unread), sent, and chunked.
    let (code, body) = raw(
        &d.socket,
        b"POST /v1/reload HTTP/1.1\r\nhost: t\r\ncontent-length: 10000000\r\nconnection: close\r\n\r\n{}",
    );
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("larger than 65536 bytes"), "{body}");
    let (code, body) = d.http("POST", "/v1/reload", &"x".repeat(65_537));
    assert_eq!(code, 413, "{body}");
    let chunk = "x".repeat(40_000);
    let chunked = format!(
        "POST /v1/reload HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{n:x}\r\n{chunk}\r\n{n:x}\r\n{chunk}\r\n0\r\n\r\n",
        n = chunk.len()
    );
    let (code, body) = raw(&d.socket, chunked.as_bytes());
    assert_eq!(code, 413, "{body}");
    // A body of exactly the limit is read (reload ignores it).
    let (code, body) = d.http("POST", "/v1/reload", &"x".repeat(65_536));
    assert_eq!(code, 200, "{body}");

    // An idle client and one stuck in its request head are disconnected without
    // an answer (hyper's header timeout); one stuck in its body gets 408.
    for (what, client) in [("idle", idle), ("slow head", slow_head)] {
        let (read, out) = client.join().unwrap();
        assert_eq!(read, Ok(0), "{what}: not disconnected ({out})");
        assert_eq!(out, "", "{what}");
    }
    let (read, out) = slow_body.join().unwrap();
    assert!(read.is_ok(), "slow body: {read:?} {out}");
    assert!(
        out.starts_with("HTTP/1.1 408") && out.contains("not received within"),
        "{out}"
    );

    // When every held connection has a request in flight (bodies trickling in),
    // a newcomer is answered 503 instead of evicting one. Top up the busy ones
    // until the cap is reached: a probe that arrives before a busy one's head
    // was read may still evict it.
    let mut busy = Vec::new();
    let busy_one = || {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(b"POST /v1/reload HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{")
            .unwrap();
        s
    };
    busy.extend((0..64).map(|_| busy_one()));
    let mut refused = String::new();
    wait_until(
        "a connection refused at the cap",
        Duration::from_secs(8),
        || {
            let (code, body) = d.http("GET", "/healthz", "");
            if code == 503 {
                refused = body;
                return true;
            }
            busy.push(busy_one());
            false
        },
    );
    assert!(refused.contains("too many admin connections"), "{refused}");
    drop(busy);
    wait_until(
        "the busy connections are gone",
        Duration::from_secs(10),
        || d.http("GET", "/healthz", "").0 == 200,
    );

    assert_eq!(d.http("GET", "/healthz", "").0, 200);
    assert!(d.alive());
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_lets_in_a_peer_by_a_supplementary_group() {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    use std::os::unix::process::CommandExt;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches uid and groups and needs root (CI runs as root)"
    );
    let db = TestDb::new().await;
    let a = db.name("grp");
    let top = format!(
        "admin: {{ socket: {}, allow_uids: [{}], allow_gids: [4242] }}\n",
        db.dir.path().join("admin.sock").display(),
        nix::unistd::geteuid().as_raw()
    );
    let path = db.write_inventory_with(&top, &account(&a, ""));
    let mut d = Daemon::start(&db, &path, &[]);
    d.wait_ready();
    // Let anyone reach the socket: only SO_PEERCRED and the groups decide.
    std::fs::set_permissions(db.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    // uid 65534 and primary gid 65534 are not allowed; `groups` are its
    // supplementary groups.
    let ctl_as = |groups: &[u32], what: &str| {
        let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credrotd"));
        cmd.args(["ctl", "--socket"]).arg(&d.socket).arg(what);
        // SAFETY: only async-signal-safe calls (setgroups/setgid/setuid) between
        // fork and exec; `groups` is allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                setgroups(&groups)?;
                setgid(Gid::from_raw(65534))?;
                setuid(Uid::from_raw(65534))?;
                Ok(())
            });
        }
        cmd.output().unwrap()
    };

    for (groups, what) in [(&[4242][..], "health"), (&[27, 4242][..], "status")] {
        let out = ctl_as(groups, what);
        assert!(
            out.status.success(),
            "groups {groups:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
        if what == "status" {
            assert!(String::from_utf8_lossy(&out.stdout).contains(&a));
        }
    }
    assert!(d.log().contains("peer allowed by a supplementary group"));

    for groups in [&[][..], &[4243][..], &[65534, 27][..]] {
        let out = ctl_as(groups, "health");
        assert_eq!(out.status.code(), Some(1), "groups {groups:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("403") && stdout.contains("not allowed"),
            "groups {groups:?}: {stdout}"
        );
    }
    let log = d.log();
    assert!(
        log.contains("refused a peer") && log.contains("groups=Ok([4243])"),
        "refusals are logged with the groups read:\n{log}"
    );
    assert!(d.alive());
    assert!(d.stop().success());
}
