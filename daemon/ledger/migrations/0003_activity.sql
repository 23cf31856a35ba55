-- credrotd ledger, schema version 3: what `audit` learns by watching.

-- Roles seen with a session, per database, from the daemon's samples of the
-- server's session list (pg_stat_activity, the MySQL process list).
CREATE TABLE activity (
    database   TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (database, role)
);

-- When sampling began, per database: nothing is known about use before it.
CREATE TABLE activity_since (
    database TEXT    PRIMARY KEY,
    since    INTEGER NOT NULL
);
