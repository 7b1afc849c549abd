//! The wasm build's shared-data key names, namespaced by what is fetched so that two plugin
//! configurations with different issuers in one VM group do not mix (pure, so that the
//! namespacing is tested natively; the wasm adapter's `worker` and `root` use it).
//!
//! **One writer per key.** Each kind of data has its own fetcher lease, namespaced exactly as
//! the data it writes: the JWKS by its source, the revocation set by its feed. Two
//! configurations with the same feed but different JWKS sources (two listeners, or a
//! configuration update that changes only `jwks` while the old one drains) so elect one
//! revocation writer between them, not two: the set's publication protocol
//! (`revocation::replica`) assumes a single writer, and two writing the same shards and meta
//! can leave every reader on a torn set — no new revocation applied — until the shard is
//! written again. (A VM of the build before, with one lease per pair of sources, may still
//! write alongside during a plugin update; the writer rewrites every shard once it sees the
//! meta written by another VM: `root`'s `SharedData::publish_set`.)
//!
//! **A change of meaning renames the keys.** Envoy runs the VMs of the old module next to the
//! new one while a configuration update pointing to a new `.wasm` drains the old, and shared
//! data (per `vm_id`, process-wide) is common to both: a key whose value the new build reads
//! otherwise than the old gets a new name, so that neither misreads the other's. So `rev2`
//! came with the compact shard format, and `jwks2` and `rev3` with the monotonic clock
//! (`host::WasmClock`): the builds before wrote the wall clock into the leases' expiries, the
//! JWKS blob's fetch time, the unknown-`kid` hint and the meta's `last_ok_ms`, where this one
//! writes Envoy's steady clock (milliseconds since the host's boot). Read across, an old VM
//! would find every new lease expired and take it (two writers of one set), and a new one
//! every old lease live for decades and the old set's age 0 (never stale). Every key of a
//! kind goes together — lease, data and hint — since the data is written only under its
//! lease (one writer per key). During the drain each build so fetches and publishes on its
//! own (twice the fetches, one set more in shared data), as with `rev2`.

use crate::config::{Config, JwksSource};
use crate::revocation::fnv1a;

/// Shared-data key names for one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The lease of the VM that fetches the JWKS (`None`: the keys are inline).
    pub jwks_lease: Option<String>,
    /// The lease of the VM that follows the revocation feed (`None`: no feed).
    pub feed_lease: Option<String>,
    pub jwks: String,
    pub jwks_wanted: String,
    pub meta: String,
    /// Rewritten (empty: its CAS is the version) after every meta write: what a request reads
    /// to learn whether the meta moved, instead of copying the whole meta across the boundary.
    pub meta_version: String,
    shard_prefix: String,
}

impl Keys {
    /// The key names for this configuration's JWKS source and revocation feed.
    pub fn new(config: &Config) -> Keys {
        let jwks_ns = match &config.jwks {
            JwksSource::Remote(remote) => fnv1a(&[
                remote.cluster.as_bytes(),
                remote.authority.as_bytes(),
                remote.path.as_bytes(),
            ]),
            JwksSource::Inline(_) => 0,
        };
        // The clock skew too: the fetcher drops an entry that long past its `until`, so a set
        // kept for a smaller skew lacks entries a larger one still needs (a revoked token would
        // pass again until its `exp` plus the larger skew).
        // And the long-poll wait: a set is as fresh as its writer's polls keep it, so one kept
        // by a writer waiting 50 s was older than a 20 s `stale_after_seconds` allows for most
        // of each wait (a 503 under `stale_mode: deny`) — a configuration update changing
        // both, while the old one drained.
        let skew = config.validation.leeway.to_le_bytes();
        let feed_ns = config.revocation.as_ref().map_or(0, |feed| {
            fnv1a(&[
                feed.cluster.as_bytes(),
                feed.authority.as_bytes(),
                feed.path.as_bytes(),
                feed.credential.as_bytes(),
                &skew,
                &feed.wait_seconds.to_le_bytes(),
            ])
        });
        Keys {
            jwks_lease: matches!(config.jwks, JwksSource::Remote(_))
                .then(|| format!("weauth.lease.jwks2.{jwks_ns:016x}")),
            feed_lease: config
                .revocation
                .is_some()
                .then(|| format!("weauth.lease.rev3.{feed_ns:016x}")),
            // `jwks2`: the blob's fetch time and the hint on the monotonic clock (module docs).
            jwks: format!("weauth.jwks2.{jwks_ns:016x}"),
            jwks_wanted: format!("weauth.jwks2.{jwks_ns:016x}.wanted"),
            // `rev3`: the compact shard format (WRS2, since `rev2`) and the meta's `last_ok_ms`
            // on the monotonic clock. A VM of an older build, still running during a plugin
            // update, keeps to its own keys instead of misreading these.
            meta: format!("weauth.rev3.{feed_ns:016x}.meta"),
            meta_version: format!("weauth.rev3.{feed_ns:016x}.v"),
            shard_prefix: format!("weauth.rev3.{feed_ns:016x}.shard."),
        }
    }

    /// The key of revocation shard `index`.
    pub fn shard(&self, index: usize) -> String {
        format!("{}{index}", self.shard_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(patch: serde_json::Value) -> Keys {
        let mut json = serde_json::json!({
            "issuer": "https://issuer", "audiences": ["weauth"],
            "jwks": {"cluster": "weauth_issuer"},
            "revocation": {"cluster": "weauth_issuer", "credential": "feed-secret"}
        });
        if let (Some(base), Some(patch)) = (json.as_object_mut(), patch.as_object()) {
            for (name, value) in patch {
                base.insert(name.clone(), value.clone());
            }
        }
        Keys::new(&Config::parse(json.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn each_lease_is_namespaced_as_the_data_it_writes() {
        let base = keys(serde_json::json!({}));
        // Another JWKS source, the same feed: one revocation writer between them.
        let other_jwks = keys(serde_json::json!({"jwks": {"cluster": "weauth_issuer",
                                                          "path": "/keys"}}));
        assert_eq!(other_jwks.feed_lease, base.feed_lease);
        assert_eq!(other_jwks.meta, base.meta);
        assert_ne!(other_jwks.jwks_lease, base.jwks_lease);
        assert_ne!(other_jwks.jwks, base.jwks);
        // Another feed, the same JWKS source: one JWKS writer.
        let other_feed = keys(
            serde_json::json!({"revocation": {"cluster": "weauth_issuer",
                                                               "credential": "another-secret"}}),
        );
        assert_eq!(other_feed.jwks_lease, base.jwks_lease);
        assert_eq!(other_feed.jwks, base.jwks);
        assert_ne!(other_feed.feed_lease, base.feed_lease);
        assert_ne!(other_feed.meta, base.meta);
        assert_ne!(base.jwks_lease, base.feed_lease);
        // Another clock skew: the fetcher keeps entries that long past their `until`, so
        // not one set between them.
        let wider = keys(serde_json::json!({"clock_skew_seconds": 300}));
        assert_ne!(wider.feed_lease, base.feed_lease);
        assert_ne!(wider.meta, base.meta);
        assert_eq!(wider.jwks_lease, base.jwks_lease);
        // Another long-poll wait: not one set either (its freshness is the writer's wait).
        let quicker = keys(
            serde_json::json!({"revocation": {"cluster": "weauth_issuer",
            "credential": "feed-secret", "wait_seconds": 5, "stale_after_seconds": 10}}),
        );
        assert_ne!(quicker.feed_lease, base.feed_lease);
        assert_ne!(quicker.meta, base.meta);
        assert_eq!(quicker.jwks_lease, base.jwks_lease);
    }

    /// The builds before wrote wall-clock times into these keys (module docs): not one name
    /// in common with them.
    #[test]
    fn keys_with_times_on_the_monotonic_clock_share_no_name_with_the_wall_clock_builds() {
        let base = keys(serde_json::json!({}));
        let names = [
            base.jwks_lease.clone().unwrap(),
            base.feed_lease.clone().unwrap(),
            base.jwks.clone(),
            base.jwks_wanted.clone(),
            base.meta.clone(),
            base.meta_version.clone(),
            base.shard(0),
        ];
        let namespace = |name: &str| name.rsplit('.').next().unwrap_or_default().to_string();
        let jwks_ns = namespace(base.jwks_lease.as_deref().unwrap());
        let feed_ns = namespace(base.feed_lease.as_deref().unwrap());
        let before = [
            format!("weauth.lease.jwks.{jwks_ns}"),
            format!("weauth.lease.rev2.{feed_ns}"),
            format!("weauth.jwks.{jwks_ns}"),
            format!("weauth.jwks.{jwks_ns}.wanted"),
            format!("weauth.rev2.{feed_ns}.meta"),
            format!("weauth.rev2.{feed_ns}.v"),
            format!("weauth.rev2.{feed_ns}.shard.0"),
        ];
        for name in &names {
            assert!(!before.contains(name), "{name} is a wall-clock build's key");
        }
        assert_eq!(base.jwks, format!("weauth.jwks2.{jwks_ns}"));
        assert_eq!(base.meta, format!("weauth.rev3.{feed_ns}.meta"));
    }

    #[test]
    fn nothing_fetched_no_lease() {
        let jwk = serde_json::to_value(
            weauth_token::SigningKey::from_seed(weauth_token::Algorithm::EdDSA, &[7; 32])
                .unwrap()
                .jwk(),
        )
        .unwrap();
        let inline = keys(serde_json::json!({"jwks": {"inline": {"keys": [jwk]}},
                                             "revocation": null}));
        assert_eq!((inline.jwks_lease, inline.feed_lease), (None, None));
    }
}
