//! The admin socket: HTTP/1.1 + JSON over a Unix socket (so `curl --unix-socket`
//! works), with the peer's uid/gid (SO_PEERCRED) checked against the inventory's
//! `admin.allow_uids` / `allow_gids`. The handlers live in [`crate::service`]; the
//! wire types in [`crate::api`]; the client (`credrotd ctl`) in [`client`].

pub mod client;

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::api::{ErrorBody, Health, RevokeRequest};
use crate::service::{ApiError, Service};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

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
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "admin socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let cred = stream.peer_cred();
                let (uid, gid) = match &cred {
                    Ok(c) => (c.uid(), c.gid()),
                    Err(_) => (u32::MAX, u32::MAX),
                };
                let permitted = cred.is_ok() && allow.permits(uid, gid);
                if !permitted {
                    warn!(uid, gid, "admin socket: refused a peer that is not in admin.allow_uids/allow_gids");
                }
                let service = service.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let service = service.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&service, req, permitted, uid).await) }
                    });
                    // A client that sends nothing useful is cut off, not kept.
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = tokio::time::timeout(Duration::from_secs(300), conn)
                        .await
                        .unwrap_or_else(|_| Ok(()))
                    {
                        debug!(error = %e, "admin connection ended with an error");
                    }
                });
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

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
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
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let q = query(&req);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or unreadable",
            )
        }
    };
    debug!(%method, %path, uid, "admin request");
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => json(
            StatusCode::OK,
            &Health {
                status: "ok".into(),
            },
        ),
        (&Method::GET, ["readyz"]) => {
            if service.is_ready() {
                json(
                    StatusCode::OK,
                    &Health {
                        status: "ready".into(),
                    },
                )
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &Health {
                        status: "starting".into(),
                    },
                )
            }
        }
        (&Method::GET, ["v1", "status"]) => match service.status().await {
            Ok(s) => json(StatusCode::OK, &s),
            Err(e) => api_error(e),
        },
        (&Method::GET, ["v1", "accounts", name]) => match service.account(name).await {
            Ok(a) => json(StatusCode::OK, &a),
            Err(e) => api_error(e),
        },
        (&Method::POST, ["v1", "accounts", name, "rotate"]) => match service.rotate(name).await {
            Ok(r) => json(StatusCode::OK, &r),
            Err(e) => api_error(e),
        },
        (&Method::POST, ["v1", "accounts", name, "revoke"]) => {
            let request: RevokeRequest = if body.iter().all(u8::is_ascii_whitespace) {
                RevokeRequest::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("malformed revoke request: {e}"),
                        )
                    }
                }
            };
            match service.revoke(name, request.previous_only).await {
                Ok(r) => json(StatusCode::OK, &r),
                Err(e) => api_error(e),
            }
        }
        (&Method::POST, ["v1", "reload"]) => match service.reload().await {
            Ok(r) => json(StatusCode::OK, &r),
            Err(e) => api_error(e),
        },
        (&Method::GET, ["v1", "audit"]) => json(StatusCode::OK, &service.audit().await),
        (&Method::GET, ["v1", "events"]) => {
            let since = match q.get("since").map(|s| s.parse::<i64>()) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "since must be an event id (an integer)",
                    )
                }
            };
            match service.events(since).await {
                Ok(e) => json(StatusCode::OK, &e),
                Err(e) => api_error(e),
            }
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
        | (_, ["v1", "accounts", _, "rotate" | "revoke"] | ["v1", "reload"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        ),
    }
}
