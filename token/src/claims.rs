//! The access token's claims set (see `docs/INTERFACES.md` and DESIGN.md's token contract).

use serde::{Deserialize, Serialize};

/// The claims of a weauth access token.
///
/// Deserialization refuses a claims set that repeats a member (serde's derive reports a
/// duplicate field), so `{"sub":"a","sub":"b"}` cannot mean one thing to us and another to an
/// upstream. Unknown members are ignored, as RFC 7519 §4 asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer URL.
    pub iss: String,
    /// Audience(s).
    pub aud: Audience,
    /// Stable internal user id (never the openid).
    pub sub: String,
    /// Login session id: one per successful `wx.login` exchange.
    pub sid: String,
    /// Unique token id.
    pub jti: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
    /// WeChat openid of the user for `appid`.
    pub openid: String,
    /// WeChat unionid, only when WeChat returned one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    /// The mini-program the user logged into.
    pub appid: String,
    /// Optional space-delimited scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Claims {
    /// The scopes as a list (empty when there is no `scope` claim).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.as_deref().unwrap_or("").split_ascii_whitespace()
    }

    /// Whether every scope in `required` is granted.
    pub fn has_scopes<S: AsRef<str>>(&self, required: &[S]) -> bool {
        required
            .iter()
            .all(|want| self.scopes().any(|have| have == want.as_ref()))
    }

    /// The value of a claim by name, as a header-ready string (`None` when absent).
    /// Known names: `iss sub sid jti openid unionid appid scope aud iat nbf exp`; `aud` with
    /// several values is space-joined.
    pub fn get(&self, name: &str) -> Option<String> {
        match name {
            "iss" => Some(self.iss.clone()),
            "sub" => Some(self.sub.clone()),
            "sid" => Some(self.sid.clone()),
            "jti" => Some(self.jti.clone()),
            "openid" => Some(self.openid.clone()),
            "unionid" => self.unionid.clone(),
            "appid" => Some(self.appid.clone()),
            "scope" => self.scope.clone(),
            "aud" => Some(self.aud.iter().collect::<Vec<_>>().join(" ")),
            "iat" => Some(self.iat.to_string()),
            "nbf" => Some(self.nbf.to_string()),
            "exp" => Some(self.exp.to_string()),
            _ => None,
        }
    }
}

/// The `aud` claim: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// Every audience value.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let slice: &[String] = match self {
            Audience::One(one) => std::slice::from_ref(one),
            Audience::Many(many) => many,
        };
        slice.iter().map(String::as_str)
    }

    /// Whether any of `accepted` is among the values.
    pub fn contains_any<S: AsRef<str>>(&self, accepted: &[S]) -> bool {
        self.iter()
            .any(|have| accepted.iter().any(|want| want.as_ref() == have))
    }
}

impl From<&[String]> for Audience {
    fn from(values: &[String]) -> Self {
        match values {
            [one] => Audience::One(one.clone()),
            many => Audience::Many(many.to_vec()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(now: i64) -> Claims {
        Claims {
            iss: "https://issuer.example".into(),
            aud: Audience::One("weauth".into()),
            sub: "u_1".into(),
            sid: "s_1".into(),
            jti: "j_1".into(),
            iat: now,
            nbf: now,
            exp: now + 900,
            openid: "oABC".into(),
            unionid: None,
            appid: "wx1".into(),
            scope: Some("read write".into()),
        }
    }

    #[test]
    fn claims_duplicate_member_refused() {
        let json = r#"{"iss":"i","aud":"a","sub":"x","sub":"y","sid":"s","jti":"j","iat":1,"nbf":1,"exp":2,"openid":"o","appid":"w"}"#;
        assert!(serde_json::from_str::<Claims>(json).is_err());
    }

    #[test]
    fn claims_unknown_member_ignored() {
        let json = r#"{"iss":"i","aud":["a","b"],"sub":"x","sid":"s","jti":"j","iat":1,"nbf":1,"exp":2,"openid":"o","appid":"w","extra":true}"#;
        let claims: Claims = serde_json::from_str(json).unwrap();
        assert!(claims.aud.contains_any(&["b"]));
        assert!(!claims.aud.contains_any(&["c"]));
    }

    #[test]
    fn claims_unionid_absent_not_serialized() {
        let text = serde_json::to_string(&sample(0)).unwrap();
        assert!(!text.contains("unionid"));
    }

    #[test]
    fn has_scopes_requires_all() {
        let claims = sample(0);
        assert!(claims.has_scopes(&["read"]));
        assert!(claims.has_scopes(&["write", "read"]));
        assert!(!claims.has_scopes(&["admin"]));
        assert!(claims.has_scopes::<&str>(&[]));
    }

    #[test]
    fn get_unknown_claim_none() {
        let claims = sample(5);
        assert_eq!(claims.get("sub").as_deref(), Some("u_1"));
        assert_eq!(claims.get("exp").as_deref(), Some("905"));
        assert_eq!(claims.get("unionid"), None);
        assert_eq!(claims.get("nope"), None);
    }

    #[test]
    fn get_each_documented_claim_by_name() {
        // The filter forwards claims to upstreams by these names (header injection): each name
        // must reach its own claim, never another's and never nothing.
        let mut claims = sample(5);
        claims.unionid = Some("un_1".into());
        claims.aud = Audience::Many(vec!["a1".into(), "a2".into()]);
        let expected = [
            ("iss", "https://issuer.example"),
            ("sub", "u_1"),
            ("sid", "s_1"),
            ("jti", "j_1"),
            ("openid", "oABC"),
            ("unionid", "un_1"),
            ("appid", "wx1"),
            ("scope", "read write"),
            ("aud", "a1 a2"),
            ("iat", "5"),
            ("nbf", "5"),
            ("exp", "905"),
        ];
        for (name, value) in expected {
            assert_eq!(claims.get(name).as_deref(), Some(value), "{name}");
        }
        // The optional claims are absent, not empty, when the token has none.
        let bare = sample(5);
        assert_eq!(bare.get("unionid"), None);
        let no_scope = Claims {
            scope: None,
            ..sample(5)
        };
        assert_eq!(no_scope.get("scope"), None);
    }
}
