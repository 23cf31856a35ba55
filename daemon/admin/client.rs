//! The admin socket's client, used by `credrotd ctl`: one HTTP/1.1 request over
//! the Unix socket, JSON in and out.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // The OS error is the source: `{:#}` prints it once, after this.
    #[error("cannot connect to the admin socket {path} (is `credrotd run` running, and may this user use it?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("admin socket request failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("admin socket request failed: {0}")]
    Request(#[from] hyper::http::Error),
}

/// Sends one request; returns the status and the body.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection future must be polled while the request is in flight; it
    // ends with the request, inside this function.
    let conn = async move {
        let _ = conn.await;
    };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "credrotd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let exchange = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, ClientError>((status, bytes))
    };
    tokio::select! {
        r = exchange => r,
        _ = conn => Err(ClientError::Connect {
            path: socket.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the daemon closed the connection"),
        }),
    }
}
