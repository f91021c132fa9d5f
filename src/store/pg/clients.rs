//! Runtime client keys and current spend on Postgres: what
//! [`crate::store::clients`] and [`crate::store::spend::current`] do on
//! SQLite.

use keyrelay_layers::budget::BudgetPeriod;
use postgres::{Client, error::SqlState};

use super::PgError;
use crate::store::{
    clients::{InsertError, StoredClient},
    spend::SpendRow,
    sql_int,
};

/// Stores `client`; its name and its key must be new.
pub fn insert(pg: &mut Client, client: &StoredClient) -> Result<(), InsertError> {
    let inserted = pg.execute(
        "INSERT INTO clients (name, key_sha256, key_prefix, settings, created_ms, expires_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &client.name,
            &client.key_sha256,
            &client.key_prefix,
            &client.settings,
            &client.created_ms,
            &client.expires_ms,
        ],
    );
    match inserted {
        Ok(_) => Ok(()),
        Err(err) => match err.as_db_error() {
            Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => {
                if db.constraint().is_some_and(|c| c.contains("key_sha256")) {
                    Err(InsertError::KeyTaken)
                } else {
                    Err(InsertError::NameTaken)
                }
            }
            _ => Err(InsertError::Shared(err.to_string())),
        },
    }
}

/// Deletes the client `name`; whether there was one.
pub fn delete(pg: &mut Client, name: &str) -> Result<bool, PgError> {
    Ok(pg.execute("DELETE FROM clients WHERE name = $1", &[&name])? > 0)
}

/// Every runtime client, by name.
pub fn load_all(pg: &mut Client) -> Result<Vec<StoredClient>, PgError> {
    let rows = pg.query(
        "SELECT name, key_sha256, key_prefix, settings, created_ms, expires_ms FROM clients ORDER BY name",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| StoredClient {
            name: r.get(0),
            key_sha256: r.get(1),
            key_prefix: r.get(2),
            settings: r.get(3),
            created_ms: r.get(4),
            expires_ms: r.get(5),
        })
        .collect())
}

/// The spend of the periods that hold `now_ms` (and every `total`).
pub fn current_spend(pg: &mut Client, now_ms: u64) -> Result<Vec<SpendRow>, PgError> {
    let select =
        pg.prepare("SELECT kind, name, usd FROM spend WHERE period = $1 AND period_start = $2 ORDER BY kind, name")?;
    let mut out = Vec::new();
    for period in BudgetPeriod::ALL {
        let start = period.start(now_ms);
        for r in pg.query(&select, &[&period.as_str(), &sql_int(start)])? {
            out.push(SpendRow { kind: r.get(0), name: r.get(1), period, period_start: start, usd: r.get(2) });
        }
    }
    Ok(out)
}
