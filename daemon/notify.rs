//! Consumer notification: after a credential becomes current, run the account's
//! command and/or signal its consumer process so that it re-reads the secret.
//! The command gets the account, version and secret file path in its environment,
//! never the password. Failures are logged, counted and retried through the ledger's
//! outbox; they never fail a rotation.

use std::path::PathBuf;
use std::process::Stdio;

use tracing::{info, warn};

use crate::inventory::{Account, Inventory, StoreKind};
use crate::telemetry;

/// The file a file store keeps the account's secret in, if it has one.
pub fn secret_file(inventory: &Inventory, account: &Account) -> Option<PathBuf> {
    account
        .stores
        .iter()
        .find_map(|s| match inventory.stores.get(s).map(|s| &s.kind) {
            Some(StoreKind::File { dir, .. }) => Some(dir.join(format!("{}.json", account.name))),
            _ => None,
        })
}

/// Tells the account's consumers that `version` is current. An error (a failed
/// command or signal, without any secret) means the caller should retry.
pub async fn consumers(
    inventory: &Inventory,
    account: &Account,
    version: i64,
) -> Result<(), String> {
    let mut failed: Vec<String> = Vec::new();
    let n = &account.notify;
    let file = secret_file(inventory, account);
    if let Some(argv) = &n.exec {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        // A clean environment: credrotd's own may hold secrets (password_env,
        // store tokens) that the consumer must not see.
        cmd.args(&argv[1..])
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("CREDROTD_ACCOUNT", &account.name)
            .env("CREDROTD_VERSION", version.to_string())
            .env(
                "CREDROTD_FILE",
                file.as_ref()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its output is not captured: a consumer script that prints the secret
            // it re-read must not put it into credrotd's log.
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let outcome = match cmd.spawn() {
            Err(e) => Err(format!("cannot start {}: {e}", argv[0])),
            Ok(mut child) => match tokio::time::timeout(n.timeout, child.wait()).await {
                Err(_) => Err(format!(
                    "{} did not finish within {}",
                    argv[0],
                    humantime::format_duration(n.timeout)
                )),
                Ok(Err(e)) => Err(format!("{}: {e}", argv[0])),
                Ok(Ok(status)) if status.success() => Ok(()),
                Ok(Ok(status)) => Err(format!("{} exited with {status}", argv[0])),
            },
        };
        match outcome {
            Ok(()) => {
                info!(account = %account.name, version, command = %argv[0], "notified consumers (exec)")
            }
            Err(e) => {
                telemetry::notify_failed(&account.name);
                warn!(account = %account.name, version, error = %e, "consumer notification failed; retrying later");
                failed.push(e);
            }
        }
    }
    if let Some((pid_file, signal)) = &n.signal {
        let outcome = std::fs::read_to_string(pid_file)
            .map_err(|e| format!("cannot read pid file {}: {e}", pid_file.display()))
            .and_then(|t| {
                t.trim()
                    .parse::<i32>()
                    .map_err(|_| format!("pid file {} does not hold a pid", pid_file.display()))
            })
            .and_then(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), *signal)
                    .map_err(|e| format!("cannot send {signal} to pid {pid}: {e}"))
            });
        match outcome {
            Ok(()) => {
                info!(account = %account.name, version, signal = %signal, "notified consumers (signal)")
            }
            Err(e) => {
                telemetry::notify_failed(&account.name);
                warn!(account = %account.name, version, error = %e, "consumer notification failed; retrying later");
                failed.push(e);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
