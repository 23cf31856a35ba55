-- credrotd ledger, schema version 2: what keeps consumers from being locked out.

-- Facts about the ledger itself. `id` is this ledger's identity, recorded on the
-- scoped roles it owns so that a second ledger refuses to manage them.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Housekeeping that failed and is retried with backoff without blocking issuance:
-- a retired login that cannot be dropped, a grant that cannot be revoked, an
-- object that no longer exists. `subject` names the login or the statement.
CREATE TABLE stuck (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    account   TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    error     TEXT    NOT NULL,
    first_at  INTEGER NOT NULL,
    last_at   INTEGER NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 1,
    retry_at  INTEGER NOT NULL,
    UNIQUE (account, kind, subject)
);

-- Steps that follow a promotion (consumer notification), written in the same
-- transaction as the promotion and retried until done.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account    TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    retry_at   INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX outbox_account ON outbox (account);

-- The expiry guard: the current credential's expiry was extended while rotations
-- failed, until when and why.
ALTER TABLE accounts ADD COLUMN extended_until INTEGER;
ALTER TABLE accounts ADD COLUMN extended_reason TEXT;
-- Another ledger owns the account's scoped role: who, and when it may be taken over.
ALTER TABLE accounts ADD COLUMN foreign_owner TEXT;

-- Fencing tokens: every acquisition by a new holder increments the account's
-- token; saga writes name the token they hold and are refused once it changed.
-- Released leases keep their row (expired) so that tokens never go back.
ALTER TABLE leases ADD COLUMN token INTEGER NOT NULL DEFAULT 0;
