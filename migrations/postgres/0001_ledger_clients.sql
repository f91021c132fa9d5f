-- keyrelay's shared store on Postgres, version 1: the usage ledger, spend
-- per budget period and runtime client keys, as in SQLite's version 1
-- (migrations/sqlite/0001_ledger_clients_state.sql) but for the pool's
-- state, which stays in each replica's own SQLite file. Applied once, in
-- one transaction, under an advisory lock, and recorded in keyrelay_schema.

-- One row per finished request on a proxied route. Times in ms since the
-- Unix epoch; key ids are fingerprints (`openai:3f9a1c2e`), never secrets.
CREATE TABLE ledger (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    unix_ms       BIGINT  NOT NULL,
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
    tokens_in     BIGINT  NOT NULL DEFAULT 0,
    tokens_out    BIGINT  NOT NULL DEFAULT 0,
    tokens_cached BIGINT  NOT NULL DEFAULT 0,
    cost_usd      DOUBLE PRECISION,
    unpriced      BOOLEAN NOT NULL DEFAULT FALSE,
    ttfb_ms       BIGINT,
    duration_ms   BIGINT  NOT NULL DEFAULT 0
);
-- Reports and retention select by time; every further index would be one
-- more b-tree written per request.
CREATE INDEX ledger_by_time ON ledger (unix_ms);

-- What each client and each upstream key spent in each calendar period
-- (day, week, month, total; UTC), kept apart from the ledger so that
-- budgets outlive the ledger's retention. kind is 'client' or 'key'.
CREATE TABLE spend (
    kind         TEXT             NOT NULL,
    name         TEXT             NOT NULL,
    period       TEXT             NOT NULL,
    period_start BIGINT           NOT NULL,
    usd          DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name, period, period_start)
);

-- Client keys made at run time (POST /v1/admin/clients). The key itself is
-- never stored: its SHA-256 (hex) to recognise it, and a short prefix to
-- show. settings is the client's JSON (models, rpm, tpm, max_parallel,
-- budget_usd, budget_period).
CREATE TABLE clients (
    name       TEXT   PRIMARY KEY,
    key_sha256 TEXT   NOT NULL UNIQUE,
    key_prefix TEXT   NOT NULL,
    settings   TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT
);
