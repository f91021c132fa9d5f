-- keyrelay's durable store, version 1: the usage ledger, spend per budget
-- period, runtime client keys and the pool's state. Applied once, in one
-- transaction, when PRAGMA user_version is below 1.

-- One row per finished request on a proxied route. Times in ms since the
-- Unix epoch; key ids are fingerprints (`openai:3f9a1c2e`), never secrets.
CREATE TABLE ledger (
    id            INTEGER PRIMARY KEY,
    unix_ms       INTEGER NOT NULL,
    request_id    TEXT    NOT NULL,
    client        TEXT,
    route         TEXT    NOT NULL,
    provider      TEXT,
    model         TEXT,
    key_id        TEXT,
    status        INTEGER,
    outcome       TEXT    NOT NULL,
    error_code    TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    tokens_in     INTEGER NOT NULL DEFAULT 0,
    tokens_out    INTEGER NOT NULL DEFAULT 0,
    tokens_cached INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL,
    unpriced      INTEGER NOT NULL DEFAULT 0,
    ttfb_ms       INTEGER,
    duration_ms   INTEGER NOT NULL DEFAULT 0
);
-- Reports and retention select by time; every further index would be one
-- more b-tree written per request.
CREATE INDEX ledger_by_time ON ledger (unix_ms);

-- What each client and each upstream key spent in each calendar period
-- (day, week, month, total; UTC), kept apart from the ledger so that
-- budgets outlive the ledger's retention. kind is 'client' or 'key'.
CREATE TABLE spend (
    kind         TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    period_start INTEGER NOT NULL,
    usd          REAL    NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name, period, period_start)
) WITHOUT ROWID;

-- Client keys made at run time (POST /v1/admin/clients). The key itself is
-- never stored: its SHA-256 (hex) to recognise it, and a short prefix to
-- show. settings is the client's JSON (models, rpm, tpm, max_parallel,
-- budget_usd, budget_period).
CREATE TABLE clients (
    name       TEXT    PRIMARY KEY,
    key_sha256 TEXT    NOT NULL UNIQUE,
    key_prefix TEXT    NOT NULL,
    settings   TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER
);

-- The key pool's state (cooldowns, invalid marks, counters, response
-- owners): one JSON document, as the state file held it.
CREATE TABLE pool_state (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot TEXT    NOT NULL,
    saved_ms INTEGER NOT NULL
);
