//! The admin API's request routing: method, path, query and JSON body from
//! untrusted local clients. Any input gives a route or a 4xx refusal, never a
//! panic, and account names reach the service exactly as written.
#![no_main]

use credrotd::admin::{route, Route};
use hyper::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // method \n path \n query \n body
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let query = parts.next();
    let body = parts.next().unwrap_or_default();
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let query = query.and_then(|q| std::str::from_utf8(q).ok());
    match route(&method, path, query, body) {
        Ok(Route::Account(name) | Route::Rotate(name)) => {
            assert!(!name.contains('/'), "{name:?}");
        }
        Ok(Route::Revoke { account, .. }) => assert!(!account.contains('/')),
        Ok(_) => {}
        Err(refusal) => assert!(refusal.status.is_client_error(), "{refusal:?}"),
    }
});
