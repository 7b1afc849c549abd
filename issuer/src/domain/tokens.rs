//! Minting and checking tokens (pure: the time is an argument, randomness comes in as values).
//!
//! Access tokens are `weauth_token` JWTs (`typ: at+jwt`, which `weauth_token::verify` checks
//! as the token kind); refresh tokens are opaque 256-bit strings whose SHA-256 (and the family they share with
//! their session, [`family_of_sid`]) is all the store ever sees. JWT logic itself lives in `weauth-token`, never here.

use weauth_token::{Audience, Claims, KeySet, SigningKey, Validation, VerifyError};

use crate::secrets::{self, DataKey};

/// What the issuer stamps into tokens.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Access-token lifetime, seconds.
    pub access_ttl: i64,
    /// Clock skew tolerated when the issuer checks its own tokens, seconds.
    pub leeway: i64,
}

/// The identity a session carries into its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub sub: String,
    pub sid: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub appid: String,
}

/// The claims of a new access token issued at `now` with id `jti`.
pub fn access_claims(policy: &TokenPolicy, subject: &Subject, jti: String, now: i64) -> Claims {
    Claims {
        iss: policy.issuer.clone(),
        aud: Audience::from(policy.audiences.as_slice()),
        sub: subject.sub.clone(),
        sid: subject.sid.clone(),
        jti,
        iat: now,
        nbf: now,
        exp: now + policy.access_ttl,
        openid: subject.openid.clone(),
        unionid: subject.unionid.clone(),
        appid: subject.appid.clone(),
        scope: None,
    }
}

/// Signs claims (with `jsonwebtoken`, through `weauth_token::sign`).
///
/// # Errors
/// [`weauth_token::SignError`]: not expected with the issuer's keys, reported if it happens.
pub fn mint(claims: &Claims, key: &SigningKey) -> Result<String, weauth_token::SignError> {
    weauth_token::sign(claims, key)
}

/// The validation the issuer applies to bearer tokens on its own routes.
pub fn validation(policy: &TokenPolicy, keys: &KeySet) -> Validation {
    let mut validation = Validation::new(policy.issuer.clone(), policy.audiences.clone());
    validation.leeway = policy.leeway;
    // Accept every algorithm we have a key for: each key is bound to its own algorithm by
    // weauth-token, so the header still cannot choose.
    let mut algorithms = Vec::new();
    for kid in keys.kids() {
        if let Some(key) = keys.get(kid) {
            if !algorithms.contains(&key.algorithm()) {
                algorithms.push(key.algorithm());
            }
        }
    }
    validation.algorithms = algorithms;
    validation
}

/// Checks signature and claims (revocation is the caller's next step).
///
/// # Errors
/// The [`VerifyError`] of the first failed check.
pub fn check(
    token: &str,
    keys: &KeySet,
    policy: &TokenPolicy,
    now: i64,
) -> Result<Claims, VerifyError> {
    weauth_token::verify(token, keys, &validation(policy, keys), now)
}

/// Extracts the token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Characters of a session's *family*: the routing part its refresh tokens share with its sid.
pub const FAMILY_LEN: usize = 8;

/// A session's family: the first [`FAMILY_LEN`] characters of its sid's random part (after
/// `s_`), which are also the first characters of every refresh token the session gets. A
/// rotation knows only the presented token; with the family in it, a sharded store (Redis
/// Cluster) keeps a session and its refresh tokens on one shard chosen by the family and
/// reaches it directly, so refreshes spread over every shard. The other stores ignore it.
/// The 8 characters are 6 random bytes: a refresh token keeps 26 bytes (208 bits) that only
/// it carries, and the family says nothing an access token's `sid` does not already say.
pub fn family_of_sid(sid: &str) -> &str {
    head(sid.strip_prefix("s_").unwrap_or(sid))
}

/// The family a refresh token names (its first [`FAMILY_LEN`] characters).
pub fn family_of_refresh(token: &str) -> &str {
    head(token)
}

fn head(text: &str) -> &str {
    text.get(..FAMILY_LEN).unwrap_or(text)
}

/// A new refresh token of the session whose family is `family`: (the token for the client,
/// its hash for the store). Its first 6 bytes are the family's (when `family` is 8 base64url
/// characters, as [`family_of_sid`] gives for every sid the issuer makes), the other 26 are
/// random.
pub fn new_refresh_token(family: &str) -> (String, String) {
    refresh_token_of(family, secrets::random_bytes(32))
}

/// The one successor of the refresh token `presented` ([`new_refresh_token`]'s shape, in
/// `presented`'s family): derived from it under the data key, so every rotation of
/// `presented` — the first, a retry after a lost answer, a second use within the reuse grace,
/// on any replica — hands out the same token. A session is one chain of tokens: whoever
/// replays a token within its grace gets the token its owner got, and the first of the two to
/// use it after the other's grace ends the session as reuse, where a sibling of its own let a
/// replayed token's chain live on undetected. Nobody without the data key can compute it.
pub fn successor_refresh_token(data_key: &DataKey, presented: &str) -> (String, String) {
    refresh_token_of(
        family_of_refresh(presented),
        data_key
            .derive("refresh token successor", presented.as_bytes())
            .to_vec(),
    )
}

/// 32 bytes as a refresh token of `family`: its first 6 bytes replaced by the family's (when
/// `family` is 8 base64url characters, as [`family_of_sid`] gives for every sid the issuer
/// makes), the other 26 kept.
fn refresh_token_of(family: &str, mut bytes: Vec<u8>) -> (String, String) {
    if let Ok(head) = weauth_token::b64::decode(family) {
        if head.len() == 6 && family.len() == FAMILY_LEN && bytes.len() == 32 {
            bytes[..6].copy_from_slice(&head);
        }
    }
    let token = weauth_token::b64::encode(&bytes);
    let hash = refresh_hash(&token);
    (token, hash)
}

/// The stored form of a refresh token.
pub fn refresh_hash(token: &str) -> String {
    secrets::sha256_hex(token.as_bytes())
}

/// Whether `token` has the shape of one of our refresh tokens (43 base64url characters), so
/// garbage is refused before touching the store.
pub fn refresh_token_well_formed(token: &str) -> bool {
    token.len() == 43 && weauth_token::b64::decode(token).is_ok_and(|bytes| bytes.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "http://issuer.test".into(),
            audiences: vec!["weauth".into()],
            access_ttl: 900,
            leeway: 60,
        }
    }

    fn subject() -> Subject {
        Subject {
            sub: "u_1".into(),
            sid: "s_1".into(),
            openid: "o_1".into(),
            unionid: None,
            appid: "wx1".into(),
        }
    }

    fn keyset(key: &SigningKey) -> KeySet {
        let mut keys = KeySet::default();
        keys.insert(key.kid(), key.verifying_key());
        keys
    }

    #[test]
    fn access_claims_lifetime_from_policy() {
        let claims = access_claims(&policy(), &subject(), "j".into(), NOW);
        assert_eq!(claims.iat, NOW);
        assert_eq!(claims.nbf, NOW);
        assert_eq!(claims.exp, NOW + 900);
        assert_eq!(claims.aud, Audience::One("weauth".into()));
        assert_eq!(claims.sid, "s_1");
    }

    #[test]
    fn mint_then_check_roundtrip_ok() {
        let key = SigningKey::from_seed(weauth_token::Algorithm::EdDSA, &[1u8; 32]).unwrap();
        let claims = access_claims(&policy(), &subject(), "j".into(), NOW);
        let token = mint(&claims, &key).unwrap();
        assert_eq!(
            check(&token, &keyset(&key), &policy(), NOW + 10).unwrap(),
            claims
        );
    }

    #[test]
    fn check_expired_refused() {
        let key = SigningKey::from_seed(weauth_token::Algorithm::EdDSA, &[1u8; 32]).unwrap();
        let token = mint(&access_claims(&policy(), &subject(), "j".into(), NOW), &key).unwrap();
        assert_eq!(
            check(&token, &keyset(&key), &policy(), NOW + 900 + 61),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn check_other_key_refused() {
        let key = SigningKey::from_seed(weauth_token::Algorithm::EdDSA, &[1u8; 32]).unwrap();
        let other = SigningKey::from_seed(weauth_token::Algorithm::EdDSA, &[2u8; 32]).unwrap();
        let token = mint(&access_claims(&policy(), &subject(), "j".into(), NOW), &key).unwrap();
        assert_eq!(
            check(&token, &keyset(&other), &policy(), NOW),
            Err(VerifyError::UnknownKey)
        );
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn refresh_token_shape_and_hash() {
        let sid = secrets::random_id("s_");
        let (token, hash) = new_refresh_token(family_of_sid(&sid));
        assert!(refresh_token_well_formed(&token));
        assert_eq!(hash, refresh_hash(&token));
        assert_eq!(hash.len(), 64);
        assert_ne!(new_refresh_token(family_of_sid(&sid)).0, token);
        assert!(!refresh_token_well_formed("short"));
        assert!(!refresh_token_well_formed(&"+".repeat(43)));
    }

    #[test]
    fn a_session_and_its_refresh_tokens_share_the_family() {
        let sid = secrets::random_id("s_");
        let family = family_of_sid(&sid);
        assert_eq!(family.len(), FAMILY_LEN);
        assert_eq!(family, &sid[2..10]);
        let (first, _) = new_refresh_token(family);
        // A rotation makes the next token from the presented one's family.
        let (next, _) = new_refresh_token(family_of_refresh(&first));
        assert_eq!(family_of_refresh(&first), family);
        assert_eq!(family_of_refresh(&next), family);
        assert_ne!(first[FAMILY_LEN..], next[FAMILY_LEN..]);
        // Another session, another family (6 random bytes each).
        let other = secrets::random_id("s_");
        assert_ne!(family_of_sid(&other), family);
    }

    #[test]
    fn a_token_has_one_successor_under_a_data_key() {
        let key = DataKey::from_bytes(&[3u8; 32]);
        let (first, _) = new_refresh_token(family_of_sid(&secrets::random_id("s_")));
        let (next, hash) = successor_refresh_token(&key, &first);
        assert!(refresh_token_well_formed(&next));
        assert_eq!(hash, refresh_hash(&next));
        assert_eq!(family_of_refresh(&next), family_of_refresh(&first));
        assert_ne!(next[FAMILY_LEN..], first[FAMILY_LEN..]);
        // Every rotation of `first`, on any replica with the key: the same token.
        assert_eq!(
            successor_refresh_token(&DataKey::from_bytes(&[3u8; 32]), &first),
            (next.clone(), hash)
        );
        // Another data key, another token: nobody without it computes the successor.
        assert_ne!(
            successor_refresh_token(&DataKey::from_bytes(&[4u8; 32]), &first).0,
            next
        );
        // And the chain goes on: the successor's successor is another token.
        assert_ne!(successor_refresh_token(&key, &next).0, next);
    }

    #[test]
    fn families_of_odd_inputs_never_panic() {
        assert_eq!(family_of_sid("s-1"), "s-1");
        assert_eq!(family_of_sid("s_ab"), "ab");
        assert_eq!(family_of_refresh(""), "");
        // The 8th byte inside a character: the whole text, not a panic.
        assert_eq!(family_of_sid("s_€€€x"), "€€€x");
        // A family that is not 6 bytes of base64url gives a fully random token.
        let (token, _) = new_refresh_token("not b64!");
        assert!(refresh_token_well_formed(&token));
        let (token, _) = new_refresh_token("s-1");
        assert!(refresh_token_well_formed(&token));
        // Valid base64url of another length than 6 bytes (4 and 12 characters): decoded, then
        // left out, not copied over the token's first bytes.
        for family in ["abcd", "AAAAAAAAAAAA"] {
            let (token, _) = new_refresh_token(family);
            assert!(refresh_token_well_formed(&token), "{family}");
        }
    }
}
