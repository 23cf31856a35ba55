//! The admin socket: HTTP/1.1 + JSON over a Unix socket (so `curl --unix-socket`
//! works), with the peer's uid/gid (SO_PEERCRED) checked against the inventory's
//! `admin.allow_uids` / `allow_gids` (supplementary groups included, from
//! SO_PEERGROUPS). The handlers live in [`crate::service`]; the wire types
//! in [`crate::api`]; the client (`credrotd ctl`) in [`client`].
//!
//! Limits, so that a local client cannot wedge the socket:
//! - at most [`MAX_CONNECTIONS`] connections are held open at once. When a new
//!   connection arrives at the cap, the connection that has been idle longest (no
//!   request in flight: it has not sent a complete request head, or is between
//!   keep-alive requests) is closed to make room; only when every held connection
//!   has a request in flight is the newcomer answered 503 and closed. Evicting the
//!   idlest rather than refusing the newest is what keeps idle or slow clients from
//!   starving a real request: a client that connects and sends its request at once
//!   is the newest, so a flood of idle connections evicts itself first. (Queueing
//!   the newcomer instead would make it wait for idle connections to time out.)
//! - a request head must arrive within [`HEADER_TIMEOUT`] of the connection being
//!   accepted (or of the previous response on a keep-alive connection);
//! - a request body must arrive within [`BODY_TIMEOUT`] (else 408) and be at most
//!   [`MAX_BODY`] bytes (else 413; a larger `content-length` is refused unread);
//! - a connection lives at most [`CONNECTION_LIFETIME`].

pub mod client;

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::api::{ErrorBody, Health, RevokeRequest};
use crate::service::{ApiError, Service};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Most admin connections held open at once (see the module documentation for
/// what happens at the cap).
pub const MAX_CONNECTIONS: usize = 64;
/// Time allowed for a request head to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a request body to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection is kept, whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Errors setting up the admin socket.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin socket {0} is in use by a running process (another credrotd?)")]
    InUse(PathBuf),
}

/// Who may use the socket.
#[derive(Debug, Clone)]
pub struct Allow {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Allow {
    fn permits(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    fn permits_any_group(&self, groups: &[u32]) -> bool {
        groups.iter().any(|g| self.gids.contains(g))
    }

    /// Checks the peer of an accepted connection; logs a refusal. Returns whether
    /// it may use the socket, and its uid.
    fn check(&self, stream: &UnixStream) -> (bool, u32) {
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "admin socket: refused a peer whose credentials could not be read");
                return (false, u32::MAX);
            }
        };
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
        if self.permits(uid, gid) {
            return (true, uid);
        }
        // SO_PEERCRED carries the primary gid only: the supplementary groups come
        // from SO_PEERGROUPS.
        let groups = if self.gids.is_empty() {
            Err("not looked up (allow_gids is empty)")
        } else {
            peer_groups(stream)
        };
        if groups.as_deref().is_ok_and(|g| self.permits_any_group(g)) {
            debug!(
                uid,
                gid, pid, "admin socket: peer allowed by a supplementary group"
            );
            return (true, uid);
        }
        warn!(
            uid,
            gid,
            pid,
            groups = ?groups,
            "admin socket: refused a peer that is not in admin.allow_uids/allow_gids"
        );
        (false, uid)
    }
}

/// The peer's supplementary groups as they were at `connect()`, from the
/// kernel (`SO_PEERGROUPS`, Linux 4.13): no pid to look up, so no race with a
/// reused pid, and it works where `/proc` hides other users' processes (the
/// unit's `ProtectProc=invisible`). Otherwise why not.
fn peer_groups(stream: &UnixStream) -> Result<Vec<u32>, &'static str> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let size = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size) as libc::socklen_t;
        // SAFETY: `groups` is a live buffer of `len` bytes, into which the
        // kernel writes at most `len` bytes; `len` is a valid out-parameter.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / size);
            return Ok(groups);
        }
        // ERANGE: the buffer was too small; `len` says how large it must be.
        let needed = len as usize / size;
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE)
            && needed > groups.len()
            && needed <= 65_536
        {
            groups.resize(needed, 0);
            continue;
        }
        return Err("SO_PEERGROUPS failed");
    }
}

/// Whether a held connection has a request in flight, and when it was last busy
/// (accepted, or a request finished): what eviction at the cap goes by.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

/// A request in flight; marks the connection idle again when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

type Held = HashMap<tokio::task::Id, (Arc<Activity>, AbortHandle)>;

/// Closes the held connection idle the longest; false when every one has a
/// request in flight.
fn evict_idlest(held: &mut Held) -> bool {
    let idlest = held
        .iter()
        .filter(|(_, (a, _))| a.in_flight.load(Ordering::SeqCst) == 0)
        .min_by_key(|(_, (a, _))| a.last())
        .map(|(id, _)| *id);
    match idlest.and_then(|id| held.remove(&id)) {
        Some((activity, handle)) => {
            debug!(idle = ?activity.last().elapsed(), "admin socket at its connection cap: closed the idlest connection");
            handle.abort();
            true
        }
        None => false,
    }
}

/// Answers 503 on a connection refused at the cap, without waiting for it: one
/// non-blocking read (so that a request already sent is consumed rather than
/// turning the close into a reset) and one non-blocking write, then the close.
fn refuse_busy(stream: UnixStream) {
    use std::io::{Read, Write};
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let _ = stream.read(&mut [0u8; 4096]);
    let body = format!(
        "{{\"error\":\"too many admin connections (at most {MAX_CONNECTIONS}), all busy\"}}"
    );
    let _ = stream.write(
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// Binds the socket: removes a stale one, refuses one a live process listens
/// on, and sets mode 0660.
pub async fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let io = |source| AdminError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(io)?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(AdminError::InUse(path.to_owned()));
        }
        info!(path = %path.display(), "removing stale admin socket");
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

/// Serves the socket until `shutdown` resolves, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    allow: Allow,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()>,
) {
    let allow = Arc::new(allow);
    let mut conns = JoinSet::new();
    let mut held = Held::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = conns.join_next_with_id(), if !conns.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                held.remove(&id);
            }
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        warn!(error = %e, "admin socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if held.len() >= MAX_CONNECTIONS && !evict_idlest(&mut held) {
                    warn!(max = MAX_CONNECTIONS, "admin socket: refused a connection, every held one has a request in flight");
                    refuse_busy(stream);
                    continue;
                }
                let activity = Arc::new(Activity::new());
                let handle = conns.spawn(connection(
                    stream,
                    allow.clone(),
                    service.clone(),
                    activity.clone(),
                ));
                held.insert(handle.id(), (activity, handle));
            }
        }
    }
    // Give in-flight requests a moment, then drop them.
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        conns.shutdown().await;
    }
    let _ = std::fs::remove_file(&path);
}

/// Serves one accepted connection.
async fn connection(
    stream: UnixStream,
    allow: Arc<Allow>,
    service: Arc<Service>,
    activity: Arc<Activity>,
) {
    let (permitted, uid) = allow.check(&stream);
    let svc = hyper::service::service_fn(move |req| {
        let service = service.clone();
        let in_flight = activity.start();
        async move {
            let response = handle(&service, req, permitted, uid).await;
            drop(in_flight);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    // A client that sends nothing useful is cut off, not kept.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = tokio::time::timeout(CONNECTION_LIFETIME, conn)
        .await
        .unwrap_or_else(|_| Ok(()))
    {
        debug!(error = %e, "admin connection ended with an error");
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

fn api_error(e: ApiError) -> Response<Full<Bytes>> {
    let status = match &e {
        ApiError::UnknownAccount(_) => StatusCode::NOT_FOUND,
        ApiError::Busy(_) => StatusCode::CONFLICT,
        ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// What an admin request asks for, decided from its method, path, query and
/// body alone (no I/O): the part of request handling that untrusted input
/// reaches first, kept pure so that it can be fuzzed (`fuzz/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Status,
    Account(String),
    Rotate(String),
    Revoke {
        account: String,
        previous_only: bool,
    },
    Reload,
    Audit,
    Events {
        since: i64,
    },
}

/// A request the router refuses: the status and the message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// The query string's `key=value` pairs (the last of a repeated key wins).
fn query(q: Option<&str>) -> HashMap<&str, &str> {
    q.unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

/// Routes one request. Account names are passed on as written; the service
/// answers 404 for a name the inventory does not have.
pub fn route(
    method: &Method,
    path: &str,
    query_string: Option<&str>,
    body: &[u8],
) -> Result<Route, Refusal> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let q = query(query_string);
    let route = match (method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Route::Health,
        (&Method::GET, ["readyz"]) => Route::Ready,
        (&Method::GET, ["v1", "status"]) => Route::Status,
        (&Method::GET, ["v1", "accounts", name]) => Route::Account((*name).to_owned()),
        (&Method::POST, ["v1", "accounts", name, "rotate"]) => Route::Rotate((*name).to_owned()),
        (&Method::POST, ["v1", "accounts", name, "revoke"]) => {
            let request: RevokeRequest = if body.iter().all(u8::is_ascii_whitespace) {
                RevokeRequest::default()
            } else {
                serde_json::from_slice(body).map_err(|e| {
                    refuse(
                        StatusCode::BAD_REQUEST,
                        format!("malformed revoke request: {e}"),
                    )
                })?
            };
            Route::Revoke {
                account: (*name).to_owned(),
                previous_only: request.previous_only,
            }
        }
        (&Method::POST, ["v1", "reload"]) => Route::Reload,
        (&Method::GET, ["v1", "audit"]) => Route::Audit,
        (&Method::GET, ["v1", "events"]) => {
            let since = match q.get("since").map(|s| s.parse::<i64>()) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "since must be an event id (an integer)",
                    ))
                }
            };
            Route::Events { since }
        }
        (
            _,
            ["healthz"]
            | ["readyz"]
            | ["v1", "status"]
            | ["v1", "accounts", _]
            | ["v1", "events"]
            | ["v1", "audit"],
        )
        | (_, ["v1", "accounts", _, "rotate" | "revoke"] | ["v1", "reload"]) => {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            ))
        }
        _ => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {method} {path}"),
            ))
        }
    };
    Ok(route)
}

async fn handle(
    service: &Service,
    req: Request<Incoming>,
    permitted: bool,
    uid: u32,
) -> Response<Full<Bytes>> {
    if !permitted {
        return error(
            StatusCode::FORBIDDEN,
            format!("uid {uid} is not allowed to use the admin socket"),
        );
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query_string = req.uri().query().map(str::to_owned);
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("request body unreadable: {e}"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {}s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        }
    };
    debug!(%method, %path, uid, "admin request");
    let route = match route(&method, &path, query_string.as_deref(), &body) {
        Ok(r) => r,
        Err(Refusal { status, message }) => return error(status, message),
    };
    fn answer<T: Serialize>(r: Result<T, ApiError>) -> Response<Full<Bytes>> {
        match r {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => api_error(e),
        }
    }
    match route {
        Route::Health => json(
            StatusCode::OK,
            &Health {
                status: "ok".into(),
            },
        ),
        Route::Ready if service.is_ready() => json(
            StatusCode::OK,
            &Health {
                status: "ready".into(),
            },
        ),
        Route::Ready => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &Health {
                status: "starting".into(),
            },
        ),
        Route::Status => answer(service.status().await),
        Route::Account(name) => answer(service.account(&name).await),
        Route::Rotate(name) => answer(service.rotate(&name).await),
        Route::Revoke {
            account,
            previous_only,
        } => answer(service.revoke(&account, previous_only).await),
        Route::Reload => answer(service.reload().await),
        Route::Audit => json(StatusCode::OK, &service.audit().await),
        Route::Events { since } => answer(service.events(since).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_peer_groups_are_the_connecting_process_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut read = peer_groups(&a).expect("SO_PEERGROUPS");
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        read.sort_unstable();
        want.sort_unstable();
        assert_eq!(read, want);
    }

    #[test]
    fn routes_are_decided_from_method_path_query_and_body() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(route(&get, "/healthz", None, b""), Ok(Route::Health));
        assert_eq!(
            route(
                &post,
                "/v1/accounts/etl/revoke",
                None,
                br#"{"previous_only":true}"#
            ),
            Ok(Route::Revoke {
                account: "etl".into(),
                previous_only: true
            })
        );
        assert_eq!(
            route(&post, "/v1/accounts/etl/revoke", None, b" \n"),
            Ok(Route::Revoke {
                account: "etl".into(),
                previous_only: false
            })
        );
        assert_eq!(
            route(&get, "/v1/events", Some("since=42&x=1"), b""),
            Ok(Route::Events { since: 42 })
        );
        let bad =
            |m: &Method, p: &str, q: Option<&str>, b: &[u8]| route(m, p, q, b).unwrap_err().status;
        assert_eq!(
            bad(&get, "/v1/events", Some("since=x"), b""),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            bad(&post, "/v1/accounts/etl/revoke", None, b"{"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            bad(&post, "/v1/status", None, b""),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            bad(&get, "/v1/accounts/etl/rotate", None, b""),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(bad(&get, "/nope", None, b""), StatusCode::NOT_FOUND);
    }

    #[test]
    fn allow_by_uid_primary_gid_or_a_supplementary_group() {
        let allow = Allow {
            uids: vec![0],
            gids: vec![4242],
        };
        assert!(allow.permits(0, 1));
        assert!(allow.permits(7, 4242));
        assert!(!allow.permits(7, 7));
        assert!(allow.permits_any_group(&[27, 4242]));
        assert!(!allow.permits_any_group(&[27]));
        assert!(!allow.permits_any_group(&[]));
    }

    #[test]
    fn eviction_closes_the_idlest_connection_without_a_request_in_flight() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut set = JoinSet::new();
            let mut held = Held::new();
            let mut ids = Vec::new();
            let mut guards = Vec::new();
            for busy in [false, true, false] {
                let activity = Arc::new(Activity::new());
                if busy {
                    guards.push(activity.start());
                }
                let h = set.spawn(std::future::pending::<()>());
                ids.push(h.id());
                held.insert(h.id(), (activity, h));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The oldest idle one goes first, the busy one never.
            assert!(evict_idlest(&mut held));
            assert!(!held.contains_key(&ids[0]));
            assert!(evict_idlest(&mut held));
            assert!(!held.contains_key(&ids[2]));
            assert!(!evict_idlest(&mut held), "only a busy connection is left");
            assert!(held.contains_key(&ids[1]));
            // Its request done, it is idle and may go.
            guards.clear();
            assert!(evict_idlest(&mut held));
            assert!(held.is_empty());
            set.shutdown().await;
        });
    }
}
