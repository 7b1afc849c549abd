//! The `weauth-issuer keys ...` subcommands: key management against the same store and data
//! key the server uses (same environment configuration).
//!
//! - `keys rotate`: inserts a new key of `WEAUTH_SIGNING_ALG` that is published at once and
//!   signs after `WEAUTH_KEY_PUBLISH_DELAY`; running issuers pick it up on their next key
//!   reload, no restart needed.
//! - `keys list`: every stored key with its role now.
//! - `data-key reseal`: after a data-key rotation (`WEAUTH_DATA_KEY_PREVIOUS`), seals every
//!   user's phone number again under `WEAUTH_DATA_KEY` (each only while it is the value read:
//!   a number bound meanwhile is kept) and names the signing keys still sealed under a
//!   previous key — what keeps a previous key needed beyond sessions and the WeChat token,
//!   which are sealed anew as they are made.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::app::open_store;
use crate::clock::{Clock as _, SystemClock};
use crate::config::Config;
use crate::domain::keys::{self, Role};
use crate::feed::revocation;
use crate::secrets::DataKey;
use crate::service::userdata;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve,
    KeysRotate,
    KeysList,
    DataKeyReseal,
    Help,
    Version,
}

/// Usage text.
pub const USAGE: &str =
    "usage: weauth-issuer [serve | keys rotate | keys list | data-key reseal | --help | --version]";

/// The `--help` text: the commands, then every variable with its default.
pub fn help() -> String {
    format!(
        "{USAGE}

  serve          run the login service (the default)
  keys rotate    add the next signing key: published at once, signs after WEAUTH_KEY_PUBLISH_DELAY
  keys list      the stored keys: kid alg created_at activate_at role
  data-key reseal  after a data-key rotation: phone numbers sealed again under
                 WEAUTH_DATA_KEY, and the signing keys still under a previous key
                 (these commands need only the store and the data key, not WeChat)

Configuration comes from the environment; a secret may also be read from the file named by
its *_FILE variant. Durations: 500ms, 30s, 15m, 2h, 7d or bare seconds.

{}",
        crate::config::help_text()
    )
}

/// Parses the arguments after the program name.
///
/// # Errors
/// The usage text for anything unknown.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["serve"] => Ok(Command::Serve),
        ["keys", "rotate"] => Ok(Command::KeysRotate),
        ["keys", "list"] => Ok(Command::KeysList),
        ["data-key", "reseal"] => Ok(Command::DataKeyReseal),
        ["-h"] | ["--help"] | ["help"] => Ok(Command::Help),
        ["-V"] | ["--version"] | ["version"] => Ok(Command::Version),
        _ => Err(USAGE.to_string()),
    }
}

/// `keys rotate`: returns the text to print.
///
/// # Errors
/// Store, key or sealing failures, as text.
pub async fn rotate(config: &Arc<Config>) -> Result<String, String> {
    // Run without the replicas' WEAUTH_STORE, it made a database (and a data key file) where
    // the shell stood, then failed on it.
    no_database_made(
        config,
        "nothing to rotate: an issuer makes its first key when it starts",
    )?;
    let (store, data_key) = open_store(config).await.map_err(|err| err.to_string())?;
    let now = SystemClock.now();
    let delay = crate::config::secs(config.key_publish_delay);
    let existing = store.keys().await.map_err(|err| err.to_string())?;
    // The replicas must be able to open what is added: refused here, a key sealed with
    // another data key would stop every replica's key reloads and then its restarts.
    let retain = config.key_retain_secs(config.access_ttl_secs());
    let ring = keys::ring(&existing, &data_key, now, retain).map_err(|err| match err {
        keys::KeyError::NoSigningKey => "the store holds no signing key yet: an issuer makes \
                                         its first one when it starts"
            .to_string(),
        other => format!(
            "the store's signing keys cannot be read with this WEAUTH_DATA_KEY ({other}); run \
             `keys rotate` with the replicas' WEAUTH_STORE and WEAUTH_DATA_KEY"
        ),
    })?;
    // The algorithm the replicas will sign with, not this shell's WEAUTH_SIGNING_ALG (changing
    // it is done on the replicas: they publish a key of the new algorithm themselves): the
    // latest scheduled key's — during a change of algorithm that key is the new algorithm's,
    // not yet signing, and a key of the signing one scheduled after it undid the change.
    let alg = existing
        .iter()
        .filter(|record| !record.sealed.is_empty())
        .max_by(|a, b| (a.activate_at, &a.kid).cmp(&(b.activate_at, &b.kid)))
        .and_then(|latest| weauth_token::Algorithm::from_name(&latest.alg))
        .unwrap_or_else(|| ring.signing.algorithm());
    if alg == weauth_token::Algorithm::HS256 {
        return Err(
            "an HS256 secret is never published, so no verifier could learn a \
                    generated one: rotate it by putting the new secret in \
                    WEAUTH_SIGNING_KEY_FILE"
                .into(),
        );
    }
    let activate_at = keys::next_activation(&existing, now, delay);
    let key = keys::generate(alg);
    let record = keys::seal(&key, &data_key, now, activate_at).map_err(|err| err.to_string())?;
    store
        .insert_key(&record, None)
        .await
        .map_err(|err| err.to_string())?;
    Ok(format!(
        "new {} key {} published; it signs from {} (in {}s)\n",
        alg,
        key.kid(),
        activate_at,
        activate_at - now
    ))
}

/// `data-key reseal`: returns the text to print. A second pass checks that every phone number
/// opens under `WEAUTH_DATA_KEY` itself: a Redis `SCAN` cursor carried across a failover or a
/// resharding can skip users, and a number bound with the old key meanwhile is left.
///
/// # Errors
/// Store failures (with what was done before); phone numbers the check finds under a previous
/// key or under no key (the others resealed all the same).
pub async fn reseal(config: &Arc<Config>) -> Result<String, String> {
    no_database_made(config, "nothing to reseal")?;
    let (store, data_key) = open_store(config).await.map_err(|err| err.to_string())?;
    let done = phone_pass(store.as_ref(), &data_key, true).await?;
    let mut out = format!(
        "phone numbers: {} sealed again under WEAUTH_DATA_KEY, {} under it already, {} changed \
         meanwhile\n",
        done.resealed, done.current, done.left
    );
    let records = store.keys().await.map_err(|err| err.to_string())?;
    let previous: Vec<&str> = records
        .iter()
        .filter(|record| keys::sealed_under_another_key(record, &data_key))
        .map(|record| record.kid.as_str())
        .collect();
    if previous.is_empty() {
        out.push_str("signing keys: every one under WEAUTH_DATA_KEY\n");
    } else {
        let _ = writeln!(
            out,
            "signing keys not under WEAUTH_DATA_KEY: {} (run `keys rotate`; they go once retired)",
            previous.join(" ")
        );
    }
    let check = phone_pass(store.as_ref(), &data_key, false).await?;
    if check.left > 0 || check.unreadable > 0 {
        return Err(format!(
            "{out}check: {} phone numbers still under a previous key (bound or missed during \
             the run: run it again), {} under no key (WEAUTH_DATA_KEY, \
             WEAUTH_DATA_KEY_PREVIOUS): keep the previous keys",
            check.left, check.unreadable
        ));
    }
    out.push_str("check: every phone number under WEAUTH_DATA_KEY\n");
    Ok(out)
}

/// What one pass over the phone numbers met ([`phone_pass`]).
#[derive(Debug, Default)]
struct PhonePass {
    /// Sealed again under the current key.
    resealed: u64,
    /// Under the current key already.
    current: u64,
    /// Under a previous key, left: changed meanwhile (resealing), or found (checking).
    left: u64,
    /// Under no key.
    unreadable: u64,
}

/// Every user's phone number once, sealed again under the current key when `reseal`.
async fn phone_pass(
    store: &dyn Store,
    data_key: &DataKey,
    reseal: bool,
) -> Result<PhonePass, String> {
    let mut pass = PhonePass::default();
    let failed = |err: StoreError, pass: &PhonePass| format!("{err} (stopped after {pass:?})");
    let mut cursor = String::new();
    loop {
        let (page, next) = store
            .phones_page(&cursor, 500)
            .await
            .map_err(|err| failed(err, &pass))?;
        for (sub, stored) in page {
            match userdata::reseal_phone(data_key, &sub, &stored) {
                Ok(None) => pass.current += 1,
                Ok(Some(_)) if !reseal => pass.left += 1,
                Ok(Some(sealed)) => match store.reseal_phone(&sub, &stored, &sealed).await {
                    Ok(true) => pass.resealed += 1,
                    Ok(false) => pass.left += 1,
                    Err(err) => return Err(failed(err, &pass)),
                },
                Err(_) => pass.unreadable += 1,
            }
        }
        match next {
            Some(next) => cursor = next,
            None => return Ok(pass),
        }
    }
}

/// An operator command on an SQLite store refuses a database that does not exist rather than
/// create one: `why` says what it would have done.
fn no_database_made(config: &Config, why: &str) -> Result<(), String> {
    match config.sqlite_path() {
        Some(path) if !path.exists() => Err(format!(
            "no database at {} (WEAUTH_STORE): {why}",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// `keys list`: one line per key: kid, alg, created, activates, role. Reads the store only
/// (no data key needed) and creates nothing: a missing database is an error.
///
/// # Errors
/// A missing database, store failures, as text.
pub async fn list(config: &Arc<Config>) -> Result<String, String> {
    no_database_made(config, "nothing to list")?;
    let store: Arc<dyn Store> = match config.sqlite_path() {
        Some(path) => {
            let path = path.to_path_buf();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                .await
                .map_err(|err| err.to_string())?
                .map_err(|err| err.to_string())?;
            Arc::new(store)
        }
        None => open_store(config).await.map_err(|err| err.to_string())?.0,
    };
    let records = store.keys().await.map_err(|err| err.to_string())?;
    let now = SystemClock.now();
    // Retired keys are kept as the replicas keep them: for the longest lifetime any of them
    // reports issuing, not only this configuration's.
    let lifetime = revocation::read_lifetime(store.as_ref(), config.access_ttl_secs(), now)
        .await
        .map_err(|err| err.to_string())?;
    let retain = config.key_retain_secs(lifetime);
    let pairs: Vec<(&str, i64)> = records
        .iter()
        .map(|r| (r.kid.as_str(), r.activate_at))
        .collect();
    let roles = keys::schedule(&pairs, now, retain);
    let mut out = String::from("kid\talg\tcreated_at\tactivate_at\trole\n");
    for (record, role) in records.iter().zip(roles) {
        let role = match role {
            Role::Next => "next",
            Role::Signing => "signing",
            Role::Retiring => "retiring",
            Role::Dropped => "dropped",
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}",
            record.kid, record.alg, record.created_at, record.activate_at, role
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_commands() {
        assert_eq!(parse(&args(&[])), Ok(Command::Serve));
        assert_eq!(parse(&args(&["keys", "rotate"])), Ok(Command::KeysRotate));
        assert_eq!(parse(&args(&["keys", "list"])), Ok(Command::KeysList));
        assert_eq!(
            parse(&args(&["data-key", "reseal"])),
            Ok(Command::DataKeyReseal)
        );
        assert!(parse(&args(&["data-key"])).is_err());
        assert_eq!(parse(&args(&["--version"])), Ok(Command::Version));
        assert_eq!(parse(&args(&["--help"])), Ok(Command::Help));
        assert!(parse(&args(&["keys"])).is_err());
        assert!(parse(&args(&["bogus"])).is_err());
    }

    /// A key retired 400 s ago, this configuration's lifetime 5 min, a replica reporting
    /// 15 min a moment ago: the key is still retiring (the replicas keep it: its tokens may
    /// still verify), not dropped as this configuration's lifetime alone would say.
    #[tokio::test]
    async fn list_keeps_a_retired_key_for_the_longest_reported_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weauth.db");
        let now = SystemClock.now();
        let store = SqliteStore::open(&path).unwrap();
        for (kid, activate_at) in [("old", now - 2000), ("new", now - 400)] {
            let key = crate::store::KeyRecord {
                kid: kid.into(),
                alg: "EdDSA".into(),
                sealed: vec![7],
                created_at: activate_at,
                activate_at,
            };
            store.insert_key(&key, None).await.unwrap();
        }
        let url = format!("sqlite://{}", path.display());
        let vars = [
            ("WEAUTH_STORE", url.as_str()),
            ("WEAUTH_ACCESS_TTL", "5m"),
            ("WEAUTH_LEEWAY", "0s"),
        ];
        let lookup = |name: &str| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.to_string())
        };
        let config = Arc::new(
            Config::load(
                &crate::config::Source {
                    lookup: &lookup,
                    read_file: &|_| Err(std::io::ErrorKind::NotFound.into()),
                },
                crate::config::Mode::Keys,
            )
            .unwrap(),
        );
        let role_of_old = |listed: &str| {
            listed
                .lines()
                .find(|line| line.starts_with("old\t"))
                .and_then(|line| line.rsplit('\t').next())
                .map(String::from)
        };
        let listed = list(&config).await.unwrap();
        assert_eq!(role_of_old(&listed).as_deref(), Some("dropped"), "{listed}");
        store.report_access_ttl(900, now - 10, 0).await.unwrap();
        let listed = list(&config).await.unwrap();
        assert_eq!(
            role_of_old(&listed).as_deref(),
            Some("retiring"),
            "{listed}"
        );
    }
}
