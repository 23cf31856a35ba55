-- credrotd ledger, schema version 1. Timestamps are Unix milliseconds (UTC).

-- One row per issued credential. `state` moves planned -> created -> verified ->
-- published -> current -> retiring -> revoked, or to aborted; every move is written
-- before the side effect that depends on it.
CREATE TABLE credentials (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account     TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    database    TEXT    NOT NULL,
    strategy    TEXT    NOT NULL,
    username    TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    retire_at   INTEGER,
    stores      TEXT    NOT NULL DEFAULT '[]',
    updated_at  INTEGER NOT NULL,
    UNIQUE (account, version)
);
CREATE INDEX credentials_account_state ON credentials (account, state);
CREATE INDEX credentials_state ON credentials (state);

-- Append-only log of everything that happened. Never holds a secret.
CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    account  TEXT    NOT NULL,
    version  INTEGER,
    kind     TEXT    NOT NULL,
    detail   TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX events_account ON events (account, id);

-- Per-account scheduling state.
CREATE TABLE accounts (
    account          TEXT PRIMARY KEY,
    next_rotation_at INTEGER,
    last_result      TEXT,
    last_error       TEXT,
    last_attempt_at  INTEGER,
    failures         INTEGER NOT NULL DEFAULT 0,
    retry_at         INTEGER,
    suspended        INTEGER NOT NULL DEFAULT 0
);

-- Who may touch an account right now. A holder is "host:pid:nonce"; a lease ends
-- when released, when it expires, or when its holder's process is gone.
CREATE TABLE leases (
    account     TEXT PRIMARY KEY,
    holder      TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
);
