//! `/v1/admin/clients`: client keys made, listed and revoked at run time
//! (admin key). A new key is answered once and stored only as its SHA-256;
//! listings show a short prefix, never the key.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use keyrelay_layers::{
    BoxError, ProxyBody,
    client::{ClientDirectory, Origin, budget_of, key_digest},
    error::{BodyTooLarge, ClientConflict, InvalidClient, StoreFailed, UnknownClient},
};
use serde_json::{Value, json};

use crate::{
    config::clients::ClientLimits,
    status::json,
    store::{
        Store,
        clients::{InsertError, StoredClient},
        now_ms,
        spend::{self, SpendRow},
    },
};

/// A client's request body is small: name, models and a few numbers.
const MAX_BODY: usize = 64 * 1024;
/// How much of a key listings show.
const PREFIX_LEN: usize = 10;

/// What the admin client routes work on.
#[derive(Clone, Debug)]
pub struct ClientAdmin {
    pub clients: Arc<ClientDirectory>,
    /// The durable store (`None` only in an app built without binding).
    pub store: Option<Store>,
    /// Tells the other replicas that the runtime clients changed (with
    /// `shared.redis_url`), so that they read them again from the store.
    pub shared: Option<Arc<crate::shared::Outbox>>,
}

impl ClientAdmin {
    fn changed(&self) {
        if let Some(outbox) = &self.shared {
            outbox.clients_changed();
        }
    }
}

impl ClientAdmin {
    fn store(&self) -> Result<&Store, BoxError> {
        self.store.as_ref().ok_or_else(|| StoreFailed::new("no store is open").into())
    }
}

/// `GET /v1/admin/clients`: every client with its settings, its use now and
/// what it spent in each period (from the store).
pub async fn list(admin: &ClientAdmin) -> Result<Response<ProxyBody>, BoxError> {
    let store = admin.store()?;
    let now = now_ms();
    let spend = spend_by_client(store.current_spend(now).await.map_err(StoreFailed::new)?);
    let stored: Vec<StoredClient> = store.load_clients().await.map_err(StoreFailed::new)?;
    let data: Vec<Value> = admin
        .clients
        .list()
        .into_iter()
        .map(|(client, origin)| {
            let policy = client.policy();
            let stored = stored.iter().find(|s| s.name == **client.name());
            let second = now / 1000;
            let (requests, tokens) = client.state().window_use(second);
            let budget = budget_of(&client).map(|meter| {
                let budget = meter.budget();
                json!({
                    "limit_usd": budget.limit_usd,
                    "period": budget.period.as_str(),
                    "spent_usd": meter.spent(now),
                    "reserved_usd": meter.reserved(),
                    "remaining_usd": meter.remaining(now),
                    "resets_at": budget.period.end(now).map(rfc3339),
                })
            });
            json!({
                "name": &**client.name(),
                "origin": match origin { Origin::Config => "config", Origin::Runtime => "runtime" },
                "key_prefix": stored.map(|s| s.key_prefix.as_str()),
                "created_at": stored.map(|s| rfc3339(s.created_ms.max(0) as u64)),
                "expires_at": policy.expires_at_ms.map(rfc3339),
                "models": &policy.models,
                "rpm": policy.rpm,
                "tpm": policy.tpm,
                "max_parallel": policy.max_parallel,
                "budget": budget,
                "in_flight": client.state().in_flight(),
                "requests_last_minute": requests,
                "tokens_last_minute": tokens,
                "spend_usd": spend.get(&**client.name()).cloned().unwrap_or_else(|| json!({})),
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &json!({ "object": "list", "data": data })))
}

/// Each client's spend in the periods that hold now: `{name: {day, week, month, total}}`.
fn spend_by_client(rows: Vec<SpendRow>) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for row in rows.into_iter().filter(|row| row.kind == spend::CLIENT) {
        let entry = out.entry(row.name).or_insert_with(|| json!({}));
        entry[row.period.as_str()] = json!(row.usd);
    }
    out
}

/// `POST /v1/admin/clients`: makes a client and answers its key, once.
pub async fn create<B>(admin: &ClientAdmin, req: Request<B>) -> Result<Response<ProxyBody>, BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(BodyTooLarge::new(MAX_BODY as u64).into());
        }
        Err(err) => return Err(InvalidClient::new(format!("could not read the body: {err}")).into()),
    };
    let mut fields: serde_json::Map<String, Value> = serde_json::from_slice(&body)
        .map_err(|err| InvalidClient::new(format!("the body must be a JSON object ({err})")))?;
    let name = match fields.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err(InvalidClient::new("`name` (a string) is required").into()),
    };
    let expires_ms = match fields.remove("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(at)) => Some(parse_time(&at).ok_or_else(|| {
            InvalidClient::new(format!("expires_at: `{at}` is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)"))
        })?),
        Some(_) => return Err(InvalidClient::new("expires_at: an RFC 3339 time as a string").into()),
    };
    let limits: ClientLimits =
        serde_json::from_value(Value::Object(fields)).map_err(|err| InvalidClient::new(err.to_string()))?;
    let mut policy = limits.policy(&name, "client").map_err(InvalidClient::new)?;
    let now = now_ms();
    if let Some(at) = expires_ms {
        if at <= now {
            return Err(InvalidClient::new("expires_at: already past").into());
        }
        policy = policy.expires_at_ms(at);
    }
    if admin.clients.by_name(&name).is_some() {
        return Err(ClientConflict::new(format!("a client named `{name}` already exists")).into());
    }
    let key = new_key()?;
    let digest = key_digest(&key);
    let stored = StoredClient {
        name: name.clone(),
        key_sha256: hex(&digest),
        key_prefix: key[..PREFIX_LEN].to_owned(),
        settings: serde_json::to_string(&limits).map_err(StoreFailed::new)?,
        created_ms: now as i64,
        expires_ms: expires_ms.map(|at| at as i64),
    };
    let store = admin.store()?;
    store.insert_client(stored.clone()).await.map_err(|err| match err {
        InsertError::NameTaken => {
            BoxError::from(ClientConflict::new(format!("a client named `{name}` already exists")))
        }
        // A fresh 256-bit key is nobody's: nothing more to say about it.
        InsertError::KeyTaken => ClientConflict::new("try again").into(),
        err => StoreFailed::new(err).into(),
    })?;
    if let Err(conflict) = admin.clients.add_runtime(digest, policy) {
        // Made meanwhile under the same name: the store keeps the first.
        let _ = store.delete_client(stored.name).await;
        return Err(ClientConflict::new(conflict.0).into());
    }
    admin.changed();
    let mut answer = serde_json::to_value(&limits).map_err(StoreFailed::new)?;
    answer["name"] = json!(name);
    answer["key"] = json!(key);
    answer["key_prefix"] = json!(&key[..PREFIX_LEN]);
    answer["expires_at"] = json!(expires_ms.map(rfc3339));
    answer["note"] = json!("the key is shown only now: keyrelay keeps only its SHA-256");
    Ok(json(StatusCode::CREATED, &answer))
}

/// `DELETE /v1/admin/clients/{name}`: revokes a runtime client at once.
pub async fn revoke(admin: &ClientAdmin, name: &str) -> Result<Response<ProxyBody>, BoxError> {
    match admin.clients.remove_runtime(name) {
        Err(conflict) => Err(ClientConflict::new(conflict.0).into()),
        Ok(false) => Err(UnknownClient::new(name).into()),
        Ok(true) => {
            admin.store()?.delete_client(name.to_owned()).await.map_err(StoreFailed::new)?;
            admin.changed();
            Ok(json(StatusCode::OK, &json!({ "name": name, "revoked": true })))
        }
    }
}

/// Puts the stored runtime clients in `clients` (at start), and gives
/// each client's budget what the store says it spent in its current
/// period; returns a note for the banner. A stored client whose name is
/// now configured stays shadowed by the configuration.
pub async fn restore(clients: &ClientDirectory, store: &Store) -> Option<String> {
    let cannot =
        |err: &dyn std::fmt::Display| Some(format!("cannot read the client keys from {}: {err}", store.describe()));
    let (restored, _) = match resync(clients, store).await {
        Ok(counts) => counts,
        Err(err) => return cannot(&err),
    };
    let now = now_ms();
    let spent = match store.current_spend(now).await {
        Ok(spent) => spent,
        Err(err) => return cannot(&err),
    };
    for row in spent.into_iter().filter(|row| row.kind == spend::CLIENT) {
        clients.restore_spend(&row.name, now, row.period, row.period_start, row.usd);
    }
    (restored > 0).then(|| format!("restored {restored} client key(s) made at run time from {}", store.describe()))
}

/// Reads the runtime clients from the store (at start, and when another
/// replica made or revoked one): adds those not here, revokes those no
/// longer there.
/// Returns how many were added and removed.
pub async fn resync(clients: &ClientDirectory, store: &Store) -> Result<(usize, usize), String> {
    let stored = store.load_clients().await.map_err(|err| err.to_string())?;
    let mut added = 0;
    for client in stored.iter().filter(|c| clients.by_name(&c.name).is_none()) {
        // A row this build cannot read (a corrupt hash, settings it does
        // not know) is left in the store, unused.
        let Some(digest) = unhex(&client.key_sha256) else { continue };
        let Ok(limits) = serde_json::from_str::<ClientLimits>(&client.settings) else { continue };
        let Ok(mut policy) = limits.policy(&client.name, "stored client") else { continue };
        if let Some(at) = client.expires_ms {
            policy = policy.expires_at_ms(at.max(0) as u64);
        }
        added += usize::from(clients.add_runtime(digest, policy).is_ok());
    }
    let mut removed = 0;
    for (client, origin) in clients.list() {
        if origin == Origin::Runtime && !stored.iter().any(|s| s.name == **client.name()) {
            removed += usize::from(clients.remove_runtime(client.name()).unwrap_or(false));
        }
    }
    Ok((added, removed))
}

/// A fresh client key: `kr-` and 32 bytes of the OS's CSPRNG, in hex.
fn new_key() -> Result<String, BoxError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| StoreFailed::new(format!("no randomness for a key: {err}")))?;
    Ok(format!("kr-{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn parse_time(text: &str) -> Option<u64> {
    let at: jiff::Timestamp = text.parse().ok()?;
    u64::try_from(at.as_millisecond()).ok()
}

fn rfc3339(unix_ms: u64) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(unix_ms).unwrap_or(i64::MAX))
        .map_or_else(|_| String::new(), |at| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_and_digests_round_trip() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("kr-") && a.len() == 67);
        let digest = key_digest(&a);
        assert_eq!(unhex(&hex(&digest)), Some(digest));
        assert_eq!(unhex("zz"), None);
        assert_eq!(parse_time("2027-01-31T00:00:00Z"), Some(1_801_353_600_000));
        assert_eq!(rfc3339(1_801_353_600_000), "2027-01-31T00:00:00Z");
    }
}
