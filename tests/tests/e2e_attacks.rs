//! The JWT attack corpus, run through the real Envoy with the weauth filter AND through the
//! issuer's own bearer check (`GET /v1/me`, reached directly, bypassing Envoy).
//!
//! The stack's issuer signs with a key this test generated (`WEAUTH_SIGNING_KEY_FILE`), so the
//! test can forge tokens that are *correctly signed* and wrong in exactly one way (expired,
//! wrong `typ`, `crit`, duplicate claims, ...): a refusal then proves the check, not a bad
//! signature. A positive control (the same forging path with nothing wrong) must pass at both.
//! For every case the test asserts the status at Envoy (`GET /api/hello`, which would reach the
//! demo upstream), the status at the issuer, and that the upstream's request counter did not
//! move. All cases run, then every mismatch is reported at once, with a table of the statuses
//! (visible with `--nocapture`).
//!
//! Needs the issuer binary, Envoy and the filter module (see `weauth_tests::harness`); a
//! missing one fails, it is never skipped. Run:
//! `cargo test --target x86_64-unknown-linux-musl -p weauth-tests --test suites -- e2e_attacks:: --nocapture`.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use serde_json::{json, Value};
use weauth_tests::harness::{peek_claims, peek_header, temp_dir, Stack, StackBuilder, TempDir};
use weauth_token::{b64, Algorithm, SigningKey};

/// A generated Ed25519 key, its PEM file for the issuer, and the temp dir holding it.
struct TestKey {
    key: SigningKey,
    pem_path: std::path::PathBuf,
    _dir: TempDir,
}

fn random_key(alg: Algorithm) -> SigningKey {
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    SigningKey::from_seed(alg, &seed).unwrap()
}

fn test_key() -> TestKey {
    let dir = temp_dir("weauth-attacks-key").unwrap();
    let key = random_key(Algorithm::EdDSA);
    let pem_path = dir.path().join("signing.pem");
    std::fs::write(&pem_path, key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    TestKey {
        key,
        pem_path,
        _dir: dir,
    }
}

async fn start(builder: StackBuilder, key: &TestKey) -> Stack {
    let builder = builder.issuer_env(
        "WEAUTH_SIGNING_KEY_FILE",
        key.pem_path.to_string_lossy().to_string(),
    );
    match builder.start().await {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the weauth stack: {e}"),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `b64(header).b64(payload).b64(sig)` over raw bytes, signed with `key`.
fn forge_raw(header: &[u8], payload: &[u8], key: &SigningKey) -> String {
    let input = format!("{}.{}", b64::encode(header), b64::encode(payload));
    let signature = key.sign_input(input.as_bytes()).unwrap();
    format!("{input}.{}", b64::encode(signature))
}

fn forge(header: &Value, payload: &Value, key: &SigningKey) -> String {
    forge_raw(
        &serde_json::to_vec(header).unwrap(),
        &serde_json::to_vec(payload).unwrap(),
        key,
    )
}

/// The header the issuer uses, for `key`.
fn good_header(key: &SigningKey) -> Value {
    json!({"alg": key.algorithm().as_str(), "typ": "at+jwt", "kid": key.kid()})
}

/// `base` with the members of `patch` set (a `null` removes the member).
fn with(base: &Value, patch: Value) -> Value {
    let mut out = base.clone();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            out.as_object_mut().unwrap().remove(k);
        } else {
            out[k] = v.clone();
        }
    }
    out
}

/// Replaces segment `i` of `token`.
fn set_segment(token: &str, i: usize, value: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[i] = value;
    parts.join(".")
}

fn segment(token: &str, i: usize) -> &str {
    token.split('.').nth(i).unwrap()
}

/// The last character of a base64url segment re-spelled with non-zero trailing bits: decodes
/// to the same bytes under a lenient decoder, so a cache keyed by token text could be fooled.
fn non_canonical_tail(seg: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let unused_bits = match seg.len() % 4 {
        2 => 4,
        3 => 2,
        _ => return None,
    };
    let last = *seg.as_bytes().last()?;
    let index = ALPHABET.iter().position(|&c| c == last)?;
    let respelled = ALPHABET[index | ((1 << unused_bits) - 1)] as char;
    Some(format!("{}{respelled}", &seg[..seg.len() - 1]))
}

/// One hostile request.
struct Case {
    name: String,
    /// `Authorization` header values (each sent as its own header line).
    authorization: Vec<String>,
    /// Appended to the path, e.g. `?access_token=...`.
    query: String,
    /// Expected status at Envoy (`GET /api/hello`).
    envoy: u16,
    /// Expected status at the issuer (`GET /v1/me`, direct); `None`: not checked.
    issuer: Option<u16>,
}

fn bearer_case(name: impl Into<String>, token: impl AsRef<str>) -> Case {
    Case {
        name: name.into(),
        authorization: vec![format!("Bearer {}", token.as_ref())],
        query: String::new(),
        envoy: 401,
        issuer: Some(401),
    }
}

/// Sends `case` to Envoy and to the issuer; returns the mismatches (empty when all held).
async fn run_case(stack: &Stack, http: &reqwest::Client, case: &Case) -> (u16, u16, Vec<String>) {
    let mut problems = Vec::new();
    let before = stack.upstream.requests();
    let mut req = http.get(format!("{}/api/hello{}", stack.envoy_url(), case.query));
    for value in &case.authorization {
        req = req.header("authorization", value);
    }
    let (envoy_status, envoy_body) = match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    };
    if envoy_status != case.envoy {
        problems.push(format!(
            "{}: Envoy answered {envoy_status} (wanted {}): {}",
            case.name,
            case.envoy,
            envoy_body.chars().take(200).collect::<String>()
        ));
    }
    // A token was presented (a `Bearer` header with something in it): its refusal must be
    // the filter's judgement of that token — not the refusal of a request without one, which
    // every forged case would also get if the filter never read the header.
    let presented = matches!(case.authorization.as_slice(),
        [one] if one.strip_prefix("Bearer ").is_some_and(|token| !token.trim().is_empty()));
    if case.envoy == 401 && envoy_status == 401 {
        let body: Value = serde_json::from_str(&envoy_body).unwrap_or(Value::Null);
        if body["error"] != "invalid_token" && body["error"] != "invalid_request" {
            problems.push(format!("{}: Envoy 401 body {envoy_body}", case.name));
        }
        if presented && body["error_description"] == "an access token is required" {
            problems.push(format!(
                "{}: Envoy refused it as a request without a token: {envoy_body}",
                case.name
            ));
        }
    }
    let after = stack.upstream.requests();
    if case.envoy != 200 && after != before {
        problems.push(format!(
            "{}: the upstream was reached ({} → {after} requests)",
            case.name, before
        ));
    }

    let mut req = http.get(format!("{}/v1/me{}", stack.issuer_url(), case.query));
    for value in &case.authorization {
        req = req.header("authorization", value);
    }
    let (issuer_status, issuer_challenge, issuer_body) = match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (status, challenge, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, String::new(), e.to_string()),
    };
    if case.issuer.is_some_and(|want| want != issuer_status) {
        problems.push(format!(
            "{}: the issuer answered {issuer_status} (wanted {:?}): {}",
            case.name,
            case.issuer,
            issuer_body.chars().take(200).collect::<String>()
        ));
    }
    // RFC 6750: the challenge to a request without a token has no error code.
    if presented && issuer_status == 401 && !issuer_challenge.contains("error=\"invalid_token\"") {
        problems.push(format!(
            "{}: the issuer refused it as a request without a token ({issuer_challenge}): {issuer_body}",
            case.name
        ));
    }
    (envoy_status, issuer_status, problems)
}

async fn run_all(stack: &Stack, cases: &[Case]) {
    // A fresh connection per request: a refused request must not poison the next one, and the
    // requests spread over Envoy's workers.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    let mut problems = Vec::new();
    let mut table = String::from("case | envoy | issuer\n");
    for case in cases {
        let (envoy, issuer, mut p) = run_case(stack, &http, case).await;
        table.push_str(&format!("{} | {envoy} | {issuer}\n", case.name));
        problems.append(&mut p);
    }
    println!("{table}");
    assert!(
        problems.is_empty(),
        "{} of {} attack cases did not hold:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}

#[tokio::test]
async fn jwt_attack_corpus_refused_at_envoy_and_issuer() {
    let key = test_key();
    let stack = start(Stack::builder().concurrency(2), &key).await;
    let k = &key.key;
    let tokens = stack.login("mallory").await.unwrap();
    let real = tokens.access_token.clone();
    assert_eq!(
        peek_header(&real).unwrap().kid.as_deref(),
        Some(k.kid().as_str()),
        "the issuer must sign with the test's key file"
    );
    let claims = serde_json::to_value(peek_claims(&real).unwrap()).unwrap();
    let hdr = good_header(k);
    let t = now();

    // Positive controls: the forging path, with nothing wrong, passes at both.
    let control = forge(&hdr, &claims, k);
    let application_typ = forge(
        &with(&hdr, json!({"typ": "application/at+jwt"})),
        &claims,
        k,
    );
    let mut cases = vec![
        Case {
            name: "control: issued token".into(),
            envoy: 200,
            issuer: Some(200),
            ..bearer_case("", &real)
        },
        Case {
            name: "control: forged with the issuer's key, nothing wrong".into(),
            envoy: 200,
            issuer: Some(200),
            ..bearer_case("", &control)
        },
        Case {
            name: "control: typ application/at+jwt".into(),
            envoy: 200,
            issuer: Some(200),
            ..bearer_case("", &application_typ)
        },
    ];

    // alg: none, any case, with an empty and with a real signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = with(&hdr, json!({ "alg": alg }));
        let unsigned = format!(
            "{}.{}.",
            b64::encode(serde_json::to_vec(&header).unwrap()),
            b64::encode(serde_json::to_vec(&claims).unwrap())
        );
        cases.push(bearer_case(
            format!("alg {alg}, empty signature"),
            &unsigned,
        ));
        cases.push(bearer_case(
            format!("alg {alg}, signed"),
            forge(&header, &claims, k),
        ));
    }
    for alg in ["RS256", "ES256", "HS512", "PS256", ""] {
        cases.push(bearer_case(
            format!("alg {alg:?} (not allowed)"),
            forge(&with(&hdr, json!({ "alg": alg })), &claims, k),
        ));
    }

    // Algorithm confusion: HS256 with the public key as the HMAC secret, in every form a
    // confused verifier might use (raw key bytes, the JWK JSON, the PEM-less base64url x).
    let jwk = k.jwk();
    let x = jwk.x.clone().unwrap_or_default();
    let public_forms: Vec<(&str, Vec<u8>)> = vec![
        ("raw public key", b64::decode(&x).unwrap()),
        ("JWK JSON", serde_json::to_vec(&jwk).unwrap()),
        ("x as text", x.clone().into_bytes()),
    ];
    for (form, secret) in public_forms {
        let mut secret = secret;
        secret.resize(secret.len().max(32), 0);
        let hmac = SigningKey::hmac(&secret).unwrap();
        let header = with(&hdr, json!({"alg": "HS256"}));
        cases.push(bearer_case(
            format!("HS256 signed with the {form} (alg confusion)"),
            forge(&header, &claims, &hmac),
        ));
    }

    // Keys the stack does not trust, and injected kids.
    let stranger = random_key(Algorithm::EdDSA);
    cases.push(bearer_case(
        "untrusted Ed25519 key, its own kid",
        forge(&good_header(&stranger), &claims, &stranger),
    ));
    cases.push(bearer_case(
        "untrusted key, the issuer's kid",
        forge(&hdr, &claims, &stranger),
    ));
    let es = random_key(Algorithm::ES256);
    cases.push(bearer_case(
        "untrusted ES256 key",
        forge(&good_header(&es), &claims, &es),
    ));
    for kid in [
        "unknown-kid".to_string(),
        "../../../../dev/null".to_string(),
        "' OR '1'='1".to_string(),
        "\u{0000}".to_string(),
        "k".repeat(4000),
        format!("{} ", k.kid()),
    ] {
        let shown: String = kid.chars().take(24).collect();
        cases.push(bearer_case(
            format!("injected kid {shown:?}, signed by the issuer's key"),
            forge(&with(&hdr, json!({ "kid": kid })), &claims, k),
        ));
    }
    cases.push(bearer_case(
        "kid as a number",
        forge(&with(&hdr, json!({"kid": 1})), &claims, k),
    ));

    // Header members that point at other keys, and crit — all correctly signed.
    let stranger_jwk = serde_json::to_value(stranger.jwk()).unwrap();
    for (name, patch) in [
        ("jku", json!({"jku": "http://127.0.0.1:1/jwks.json"})),
        ("x5u", json!({"x5u": "http://127.0.0.1:1/cert.pem"})),
        ("x5c", json!({"x5c": ["MIIB"]})),
        ("embedded jwk (own key)", json!({ "jwk": jwk })),
        ("crit [exp]", json!({"crit": ["exp"]})),
        ("crit []", json!({"crit": []})),
    ] {
        cases.push(bearer_case(
            format!("{name} header, signed by the issuer's key"),
            forge(&with(&hdr, patch), &claims, k),
        ));
    }
    cases.push(bearer_case(
        "embedded jwk of the attacker's key, signed by it",
        forge(
            &with(&good_header(&stranger), json!({ "jwk": stranger_jwk })),
            &claims,
            &stranger,
        ),
    ));

    // Time claims (the leeway is 60 s on both sides).
    for (name, patch) in [
        (
            "expired",
            json!({"exp": t - 3600, "iat": t - 7200, "nbf": t - 7200}),
        ),
        ("expired just beyond the leeway", json!({"exp": t - 120})),
        ("not yet valid", json!({"nbf": t + 3600, "exp": t + 7200})),
        (
            "issued in the future",
            json!({"iat": t + 3600, "exp": t + 7200}),
        ),
        ("exp as a string", json!({"exp": (t + 600).to_string()})),
        ("exp missing", json!({"exp": null})),
        ("exp far beyond i64 seconds", json!({"exp": 1e300})),
    ] {
        cases.push(bearer_case(
            format!("{name}, correctly signed"),
            forge(&hdr, &with(&claims, patch), k),
        ));
    }

    // Identity claims and the token type.
    for (name, patch) in [
        ("wrong iss", json!({"iss": "http://evil.example"})),
        (
            "iss with a trailing slash",
            json!({"iss": format!("{}/", claims["iss"].as_str().unwrap())}),
        ),
        ("wrong aud", json!({"aud": "other"})),
        ("aud array without ours", json!({"aud": ["other", "third"]})),
        ("sub missing", json!({"sub": null})),
        ("sub as a number", json!({"sub": 42})),
    ] {
        cases.push(bearer_case(
            format!("{name}, correctly signed"),
            forge(&hdr, &with(&claims, patch), k),
        ));
    }
    for (name, patch) in [
        ("typ JWT", json!({"typ": "JWT"})),
        ("typ rt+jwt", json!({"typ": "rt+jwt"})),
        ("typ missing", json!({"typ": null})),
        ("typ id_token", json!({"typ": "id_token+jwt"})),
    ] {
        cases.push(bearer_case(
            format!("{name}, correctly signed"),
            forge(&with(&hdr, patch), &claims, k),
        ));
    }
    cases.push(bearer_case(
        "the refresh token used as an access token",
        &tokens.refresh_token,
    ));

    // Tampering with an issued token.
    let tampered_header = b64::encode(serde_json::to_vec(&with(&hdr, json!({"x": 1}))).unwrap());
    let mut evil_claims = claims.clone();
    evil_claims["sub"] = json!("someone-else");
    let tampered_payload = b64::encode(serde_json::to_vec(&evil_claims).unwrap());
    let sig = segment(&real, 2).to_string();
    let mut flipped_sig = b64::decode(&sig).unwrap();
    flipped_sig[10] ^= 0x01;
    cases.push(bearer_case(
        "tampered header",
        set_segment(&real, 0, &tampered_header),
    ));
    cases.push(bearer_case(
        "tampered payload (sub)",
        set_segment(&real, 1, &tampered_payload),
    ));
    cases.push(bearer_case(
        "tampered signature (one bit)",
        set_segment(&real, 2, &b64::encode(&flipped_sig)),
    ));
    cases.push(bearer_case(
        "signature of another token",
        set_segment(&real, 2, segment(&control, 2)),
    ));
    cases.push(bearer_case(
        "signature truncated by one byte",
        set_segment(&real, 2, &b64::encode(&b64::decode(&sig).unwrap()[..63])),
    ));

    // Shape: segments, base64url, JSON.
    let (h, p) = (segment(&real, 0), segment(&real, 1));
    for (name, token) in [
        ("one segment", h.to_string()),
        ("two segments", format!("{h}.{p}")),
        ("empty signature", format!("{h}.{p}.")),
        ("extra segment", format!("{real}.{sig}")),
        ("trailing dot", format!("{real}.")),
        ("leading dot", format!(".{real}")),
        (
            "five segments (JWE shape)",
            format!("{h}.{p}.{sig}.{sig}.{sig}"),
        ),
        ("empty segments", "..".to_string()),
        ("signature padded with =", format!("{real}==")),
        ("payload padded with =", format!("{h}.{p}=.{sig}")),
        (
            "space inside the payload",
            format!("{h}.{} {}.{sig}", &p[..10], &p[10..]),
        ),
        ("percent-encoded dot", real.replacen('.', "%2E", 1)),
    ] {
        cases.push(bearer_case(name, token));
    }
    if let Some(respelled) = non_canonical_tail(&sig) {
        cases.push(bearer_case(
            "signature with non-canonical trailing bits (same bytes)",
            set_segment(&real, 2, &respelled),
        ));
    }
    if let Some(respelled) = non_canonical_tail(p) {
        cases.push(bearer_case(
            "payload with non-canonical trailing bits (same bytes)",
            set_segment(&real, 1, &respelled),
        ));
    }
    // Standard-alphabet spelling (+ /) of a valid, correctly signed token.
    let standard = (0..200)
        .map(|i| forge(&hdr, &with(&claims, json!({"jti": format!("std-{i}")})), k))
        .find(|tok| tok.contains('-') || tok.contains('_'))
        .unwrap();
    cases.push(bearer_case(
        "standard base64 alphabet (+ /) instead of base64url",
        standard.replace('-', "+").replace('_', "/"),
    ));
    for (name, header, payload) in [
        (
            "header not JSON",
            b"not json".to_vec(),
            serde_json::to_vec(&claims).unwrap(),
        ),
        (
            "payload not JSON",
            serde_json::to_vec(&hdr).unwrap(),
            b"hello world".to_vec(),
        ),
        (
            "payload a JSON array",
            serde_json::to_vec(&hdr).unwrap(),
            b"[1,2,3]".to_vec(),
        ),
        (
            "payload JSON with trailing garbage",
            serde_json::to_vec(&hdr).unwrap(),
            [serde_json::to_vec(&claims).unwrap(), b"xyz".to_vec()].concat(),
        ),
        (
            "header a JSON string",
            b"\"EdDSA\"".to_vec(),
            serde_json::to_vec(&claims).unwrap(),
        ),
        (
            "payload invalid UTF-8",
            serde_json::to_vec(&hdr).unwrap(),
            vec![0xff, 0xfe, 0x7b],
        ),
    ] {
        cases.push(bearer_case(
            format!("{name}, correctly signed"),
            forge_raw(&header, &payload, k),
        ));
    }

    // Duplicate members, correctly signed: one parser must not see another's value.
    let claims_text = serde_json::to_string(&claims).unwrap();
    let dup_sub = claims_text.replacen('{', "{\"sub\":\"someone-else\",", 1);
    let dup_exp = claims_text.replacen('{', &format!("{{\"exp\":{},", t + 999_999), 1);
    let hdr_text = serde_json::to_string(&hdr).unwrap();
    let dup_alg = hdr_text.replacen('{', "{\"alg\":\"none\",", 1);
    let dup_kid = hdr_text.replacen('{', "{\"kid\":\"other\",", 1);
    for (name, header, payload) in [
        ("duplicate sub claim", &hdr_text, &dup_sub),
        ("duplicate exp claim", &hdr_text, &dup_exp),
        ("duplicate alg header", &dup_alg, &claims_text),
        ("duplicate kid header", &dup_kid, &claims_text),
    ] {
        cases.push(bearer_case(
            format!("{name}, correctly signed"),
            forge_raw(header.as_bytes(), payload.as_bytes(), k),
        ));
    }

    // Size: a correctly signed token over max_token_bytes (8192), and a 100 KB header, which
    // Envoy refuses before any filter (431: its 60 KiB header limit).
    let huge = forge(&hdr, &with(&claims, json!({"scope": "a ".repeat(5000)})), k);
    cases.push(bearer_case(
        format!("huge token ({} bytes), correctly signed", huge.len()),
        &huge,
    ));
    cases.push(Case {
        envoy: 431,
        issuer: Some(401),
        ..bearer_case("100 KB Authorization header", "A".repeat(100_000))
    });

    // Credentials in odd places.
    cases.push(Case {
        name: "two Authorization headers, valid first".into(),
        authorization: vec![format!("Bearer {real}"), "Bearer junk".into()],
        query: String::new(),
        envoy: 400,
        issuer: Some(400),
    });
    cases.push(Case {
        name: "two Authorization headers, valid second".into(),
        authorization: vec!["Bearer junk".into(), format!("Bearer {real}")],
        query: String::new(),
        envoy: 400,
        issuer: Some(400),
    });
    cases.push(Case {
        name: "two Authorization headers, both valid".into(),
        authorization: vec![format!("Bearer {real}"), format!("Bearer {control}")],
        query: String::new(),
        envoy: 400,
        issuer: Some(400),
    });
    cases.push(Case {
        name: "one Authorization header with two tokens (comma)".into(),
        authorization: vec![format!("Bearer {real}, Bearer {control}")],
        query: String::new(),
        envoy: 400,
        issuer: Some(401),
    });
    cases.push(Case {
        name: "valid token only in the query (not a configured source)".into(),
        authorization: vec![],
        query: format!("?access_token={real}"),
        envoy: 401,
        issuer: Some(401),
    });
    cases.push(Case {
        query: format!("?access_token={real}"),
        ..bearer_case("junk in the header, valid token in the query", "junk")
    });
    cases.push(Case {
        name: "valid token with the Basic scheme".into(),
        authorization: vec![format!("Basic {real}")],
        query: String::new(),
        envoy: 401,
        issuer: Some(401),
    });
    cases.push(bearer_case("empty bearer", ""));

    run_all(&stack, &cases).await;
    // The filter counted the refusals (and never crashed: Envoy still answers the control).
    let (status, _) = stack.get_json("/api/hello", Some(&real)).await.unwrap();
    assert_eq!(status, 200, "the filter still serves after the corpus");
}

/// With both a header and a query source configured, the first configured source (the header)
/// decides: a token in the query cannot stand in for a bad header, and a junk query parameter
/// does not spoil a valid header. The filter does not refuse a request carrying both (the
/// query source is off in the default configuration, where the query is never read).
#[tokio::test]
async fn header_and_query_tokens_header_decides() {
    let key = test_key();
    let stack = start(
        Stack::builder().plugin_config_patch(json!({"token_sources": [
            {"header": "authorization", "prefix": "Bearer "},
            {"query": "access_token"}]})),
        &key,
    )
    .await;
    let real = stack.login("mallory").await.unwrap().access_token;
    let cases = vec![
        Case {
            query: format!("?access_token={real}"),
            ..bearer_case("junk in the header, valid token in the query", "junk")
        },
        Case {
            name: "alg-none token in the header, valid token in the query".into(),
            query: format!("?access_token={real}"),
            ..bearer_case("", "eyJhbGciOiJub25lIn0.e30.")
        },
        Case {
            name: "valid header, junk query token".into(),
            query: "?access_token=junk".into(),
            envoy: 200,
            issuer: Some(200),
            ..bearer_case("", &real)
        },
        Case {
            name: "valid token only in the query (configured source)".into(),
            authorization: vec![],
            query: format!("?access_token={real}"),
            envoy: 200,
            // The issuer reads only the Authorization header.
            issuer: Some(401),
        },
    ];
    run_all(&stack, &cases).await;
}

/// A request through Envoy carrying the access token only in the `weauth_at` cookie, as a
/// browser sends it, with the headers a browser adds (`Origin`, `Sec-Fetch-Site`, ...).
struct CookieCase {
    name: &'static str,
    method: reqwest::Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    /// Form body (a form post); `None`: no body.
    form: Option<&'static str>,
    /// Send the token as `Authorization: Bearer` instead of the cookie.
    bearer: bool,
    want: u16,
}

/// Cross-site request forgery through the session cookie: the filter's CSRF rule refuses an
/// unsafe request authenticated only by the cookie unless it comes from the same origin
/// (`Sec-Fetch-Site: same-origin`/`none`) or an allowed `Origin`, with 403 and
/// `weauth.denied.csrf`; what a browser legitimately sends still passes (a same-origin form
/// post from the demo page, a cross-site GET, a bearer-header POST from anywhere). Neither the
/// token nor its cookie reaches the upstream (`forward_authorization` defaults to false).
#[tokio::test]
async fn cookie_csrf_refused_at_edge_legitimate_requests_pass() {
    let key = test_key();
    // The shipped rules, plus a hook path that turns the CSRF rule off (said in Envoy's log).
    let mut config: Value =
        serde_json::from_str(weauth_tests::template::PLUGIN_CONFIG_TEMPLATE).unwrap();
    let mut rules = config["rules"].as_array_mut().unwrap().clone();
    rules.insert(
        0,
        json!({"prefix": "/api/hooks/", "require": "required", "csrf": false}),
    );
    config = json!({"rules": rules, "csrf_allowed_origins": ["https://h5.example.com"]});
    let stack = start(Stack::builder().plugin_config_patch(config), &key).await;
    let token = stack.login("carol").await.unwrap().access_token;
    let sub = peek_claims(&token).unwrap().sub;
    let site = stack.envoy_url();
    let cross = |origin: &str, fetch_site: &str| {
        vec![
            ("origin", origin.to_string()),
            ("sec-fetch-site", fetch_site.to_string()),
            ("sec-fetch-mode", "navigate".to_string()),
        ]
    };
    use reqwest::Method;
    let cases = vec![
        // The attacks.
        CookieCase {
            name: "cross-site form POST",
            method: Method::POST,
            path: "/api/transfer",
            headers: cross("https://evil.example", "cross-site"),
            form: Some("to=mallory&amount=100"),
            bearer: false,
            want: 403,
        },
        CookieCase {
            name: "same-site POST from a sibling origin",
            method: Method::POST,
            path: "/api/transfer",
            headers: cross("http://127.0.0.1:1", "same-site"),
            form: Some("to=mallory&amount=100"),
            bearer: false,
            want: 403,
        },
        CookieCase {
            name: "DELETE with Origin: null",
            method: Method::DELETE,
            path: "/api/account",
            headers: vec![("origin", "null".into())],
            form: None,
            bearer: false,
            want: 403,
        },
        CookieCase {
            name: "PUT with Origin: null",
            method: Method::PUT,
            path: "/api/account",
            headers: vec![("origin", "null".into())],
            form: Some("role=admin"),
            bearer: false,
            want: 403,
        },
        CookieCase {
            name: "POST with neither Origin nor Sec-Fetch-Site",
            method: Method::POST,
            path: "/api/transfer",
            headers: vec![],
            form: Some("amount=1"),
            bearer: false,
            want: 403,
        },
        CookieCase {
            name: "PATCH, cross-site, claiming to be the site in Referer only",
            method: Method::PATCH,
            path: "/api/account",
            headers: vec![
                ("sec-fetch-site", "cross-site".into()),
                ("referer", format!("{site}/demo/")),
            ],
            form: None,
            bearer: false,
            want: 403,
        },
        // What must pass.
        CookieCase {
            name: "same-origin form POST from the demo page",
            method: Method::POST,
            path: "/api/transfer",
            headers: vec![
                ("origin", site.clone()),
                ("sec-fetch-site", "same-origin".into()),
                ("sec-fetch-mode", "navigate".into()),
                ("sec-fetch-dest", "document".into()),
                ("referer", format!("{site}/demo/")),
            ],
            form: Some("to=dave&amount=1"),
            bearer: false,
            want: 200,
        },
        CookieCase {
            name: "POST typed by the user (Sec-Fetch-Site: none)",
            method: Method::POST,
            path: "/api/transfer",
            headers: vec![("sec-fetch-site", "none".into())],
            form: None,
            bearer: false,
            want: 200,
        },
        CookieCase {
            name: "cross-site GET (a link)",
            method: Method::GET,
            path: "/api/hello",
            headers: cross("https://evil.example", "cross-site"),
            form: None,
            bearer: false,
            want: 200,
        },
        CookieCase {
            name: "cross-site HEAD",
            method: Method::HEAD,
            path: "/api/hello",
            headers: cross("https://evil.example", "cross-site"),
            form: None,
            bearer: false,
            want: 200,
        },
        CookieCase {
            name: "cross-site POST from an allowed origin",
            method: Method::POST,
            path: "/api/transfer",
            headers: cross("https://h5.example.com", "cross-site"),
            form: Some("amount=1"),
            bearer: false,
            want: 200,
        },
        CookieCase {
            name: "bearer-header POST from another site",
            method: Method::POST,
            path: "/api/transfer",
            headers: cross("https://evil.example", "cross-site"),
            form: Some("amount=1"),
            bearer: true,
            want: 200,
        },
        CookieCase {
            name: "cross-site POST to a rule with csrf: false",
            method: Method::POST,
            path: "/api/hooks/payment",
            headers: cross("https://psp.example", "cross-site"),
            form: Some("paid=1"),
            bearer: false,
            want: 200,
        },
    ];
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    let mut problems = Vec::new();
    let mut table = String::from("case | envoy\n");
    let mut refused = 0;
    for case in &cases {
        let before = stack.upstream.requests();
        let mut req = http.request(case.method.clone(), format!("{site}{}", case.path));
        req = if case.bearer {
            req.bearer_auth(&token)
        } else {
            req.header("cookie", format!("theme=dark; weauth_at={token}"))
        };
        for (name, value) in &case.headers {
            req = req.header(*name, value);
        }
        if let Some(form) = case.form {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let challenge = resp.headers().get("www-authenticate").cloned();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        table.push_str(&format!("{} | {status}\n", case.name));
        let reached = stack.upstream.requests() - before;
        if status != case.want {
            problems.push(format!(
                "{}: {status} (wanted {}): {body}",
                case.name, case.want
            ));
        } else if status == 403 {
            refused += 1;
            if body["error"] != "access_denied"
                || !body["error_description"]
                    .as_str()
                    .is_some_and(|d| d.contains("cross-site request refused"))
                || challenge.is_some()
                || reached != 0
            {
                problems.push(format!(
                    "{}: 403 should state the CSRF reason, carry no Bearer challenge and not \
                     reach the upstream (reached {reached}): {body}",
                    case.name
                ));
            }
        } else if case.method != Method::HEAD {
            let headers = &body["headers"];
            let cookie = headers["cookie"].as_str().unwrap_or("");
            if headers["x-weauth-sub"] != sub.as_str()
                || headers.get("authorization").is_some()
                || cookie.contains("weauth_at")
                || (!case.bearer && cookie != "theme=dark")
            {
                problems.push(format!(
                    "{}: the upstream should get the identity, the other cookies and no token: \
                     {headers}",
                    case.name
                ));
            }
        }
    }
    println!("{table}");
    assert!(
        problems.is_empty(),
        "{} of {} CSRF cases did not hold:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
    let stats = stack
        .envoy_stats_once(&stack.filter_stat("denied.csrf"), refused)
        .await
        .unwrap();
    assert_eq!(
        weauth_tests::harness::stat_value(&stats, &stack.filter_stat("denied.csrf")),
        Some(refused),
        "one denied.csrf per refusal"
    );
    let log = std::fs::read_to_string(stack.envoy_log()).unwrap_or_default();
    assert!(
        log.contains("rules[0] (prefix /api/hooks/) turns the CSRF rule off"),
        "the csrf: false rule is said at load"
    );
    // Cookie tossing: a sibling host plants its own user's token (`Domain=` the parent and a
    // longer `Path`, so the browser sends it first) beside this user's. Taking either would
    // let the planted one act for this user (the CSRF rule passes a same-origin request):
    // refused as ambiguous, as a repeated Authorization header is, and nothing upstream.
    let planted = stack.login("mallory").await.unwrap().access_token;
    let before = stack.upstream.requests();
    let resp = http
        .post(format!("{site}/api/transfer"))
        .header(
            "cookie",
            format!("weauth_at={planted}; theme=dark; weauth_at={token}"),
        )
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("to=mallory&amount=100")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 400, "two weauth_at cookies: {body}");
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert_eq!(
        stack.upstream.requests(),
        before,
        "nothing reached the upstream"
    );
}

/// A client's trace context (W3C's and B3's) stops at the public listener (`envoy/envoy.yaml`): passed on,
/// it let a client outside the mesh pick its requests' trace ids and have every one exported
/// by the issuer (its parent-based sampler follows the caller's flag; a ratio is judged on the
/// trace id), filling the span exporter's queue.
#[tokio::test]
async fn a_clients_trace_context_is_not_passed_on() {
    let key = test_key();
    let stack = start(Stack::builder(), &key).await;
    let token = stack.login("tracer").await.unwrap().access_token;
    let resp = stack
        .request(reqwest::Method::GET, "/api/hello")
        .bearer_auth(&token)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c800000-b7ad6b7169203331-01",
        )
        .header("tracestate", "vendor=chosen")
        .header("b3", "0af7651916cd43dd8448eb211c800000-b7ad6b7169203331-1")
        .header("x-b3-traceid", "0af7651916cd43dd8448eb211c800000")
        .header("x-b3-spanid", "b7ad6b7169203331")
        .header("x-b3-parentspanid", "b7ad6b7169203330")
        .header("x-b3-sampled", "1")
        .header("x-b3-flags", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    let headers = echo["headers"].as_object().unwrap();
    for name in [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        assert!(headers.get(name).is_none(), "{name}: {headers:?}");
    }
}

/// Identity headers the configuration does not set are still the filter's: with
/// `claim_to_headers` naming only `sub` and `openid`, a client's own `x-weauth-scope: admin`,
/// `x-weauth-sid`, `X-Weauth-Role` never reach the upstream — on an allowed request, an
/// anonymous one (`optional` without a token) and one whose rule checks nothing (`none`).
/// Nor do their underscore spellings (`x_weauth_unionid`), which Envoy passes by default and a
/// CGI-style upstream reads as the dashed header.
#[tokio::test]
async fn unconfigured_identity_headers_spoofed_never_reach_upstream() {
    let key = test_key();
    let mut config: Value =
        serde_json::from_str(weauth_tests::template::PLUGIN_CONFIG_TEMPLATE).unwrap();
    let mut rules = config["rules"].as_array_mut().unwrap().clone();
    rules.insert(0, json!({"prefix": "/api/open/", "require": "none"}));
    rules.insert(0, json!({"prefix": "/api/maybe/", "require": "optional"}));
    config = json!({"rules": rules, "claim_to_headers": [
        {"claim": "sub", "header": "x-weauth-sub"},
        {"claim": "openid", "header": "x-weauth-openid"}]});
    let stack = start(Stack::builder().plugin_config_patch(config), &key).await;
    let token = stack.login("mallory").await.unwrap().access_token;
    let claims = peek_claims(&token).unwrap();
    let spoofs = [
        ("x-weauth-sub", "root"),
        ("x-weauth-scope", "admin"),
        ("x-weauth-sid", "spoof"),
        ("X-Weauth-Role", "admin"),
        ("x-weauth-scope", "second copy"),
        ("x_weauth_unionid", "victim"),
        ("X_Weauth_Sub", "root"),
    ];
    for (path, bearer) in [
        ("/api/hello", true),
        ("/api/maybe/x", false),
        ("/api/open/x", false),
    ] {
        let mut req = stack.request(reqwest::Method::GET, path);
        if bearer {
            req = req.bearer_auth(&token);
        }
        for (name, value) in spoofs {
            req = req.header(name, value);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let echo: Value = resp.json().await.unwrap();
        let headers = echo["headers"].as_object().unwrap();
        let ours: Vec<_> = headers
            .iter()
            .filter(|(name, _)| name.replace('_', "-").starts_with("x-weauth-"))
            .collect();
        if bearer {
            assert_eq!(
                ours.len(),
                2,
                "{path}: only the configured headers: {ours:?}"
            );
            assert_eq!(headers["x-weauth-sub"], claims.sub.as_str());
            assert_eq!(headers["x-weauth-openid"], claims.openid.as_str());
            assert!(
                headers.get("authorization").is_none(),
                "{path}: token forwarded"
            );
        } else {
            assert!(ours.is_empty(), "{path}: {ours:?}");
        }
    }
}

/// Envoy picks a request's route before the filter runs, on the headers as the client sent
/// them. A route on what the filter forwards must be matched on what it forwards: not on a
/// client's own `x-weauth-sub` (the filter replaces or strips it), not on the token the filter
/// removes, and a route on the verified identity is taken. Both builds: Envoy's wasm host
/// clears the route cache on every header edit, the native build once after its edits.
#[tokio::test]
async fn routes_are_matched_on_the_request_the_filter_forwards() {
    let key = test_key();
    let teapot = |header: serde_json::Value, why: &str| {
        json!({"match": {"prefix": "/api/", "headers": [header]},
               "direct_response": {"status": 418, "body": {"inline_string": why}}})
    };
    let routes = vec![
        teapot(
            json!({"name": "x-weauth-sub", "string_match": {"exact": "root"}}),
            "routed on the client's own x-weauth-sub",
        ),
        teapot(
            json!({"name": "authorization", "present_match": true}),
            "routed on a token the filter removes",
        ),
        json!({"match": {"prefix": "/api/by-identity/",
                         "headers": [{"name": "x-weauth-sub", "present_match": true}]},
               "route": {"cluster": "demo_upstream"},
               "request_headers_to_add": [{"header": {"key": "x-routed-by", "value": "identity"}}]}),
        json!({"match": {"prefix": "/api/by-identity/"},
               "direct_response": {"status": 421,
                                   "body": {"inline_string": "not routed on the identity"}}}),
    ];
    let mut config: Value =
        serde_json::from_str(weauth_tests::template::PLUGIN_CONFIG_TEMPLATE).unwrap();
    let mut rules = config["rules"].as_array_mut().unwrap().clone();
    rules.insert(0, json!({"prefix": "/api/open/", "require": "none"}));
    config = json!({"rules": rules});
    let stack = start(
        Stack::builder()
            .plugin_config_patch(config)
            .routes_first(routes),
        &key,
    )
    .await;
    let token = stack.login("mallory").await.unwrap().access_token;
    let sub = peek_claims(&token).unwrap().sub;
    let send = |path: &str, headers: &[(&str, &str)]| {
        let mut req = stack.request(reqwest::Method::GET, path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    let bearer = format!("Bearer {token}");

    // Control: on a path whose rule checks nothing, the filter leaves the token in place and
    // edits nothing, so the route on `authorization` is taken: the routes are in place.
    let (status, body) = send("/api/open/x", &[("authorization", &bearer)]).await;
    assert_eq!(
        (status, body.as_str()),
        (418, "routed on a token the filter removes")
    );

    let echo = |body: &str| -> Value { serde_json::from_str(body).unwrap() };
    // A valid token with a spoofed x-weauth-sub: the filter sets the verified one and removes
    // the token; the route is matched on that, so it reaches the upstream.
    let (status, body) = send(
        "/api/hello",
        &[("authorization", &bearer), ("x-weauth-sub", "root")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo(&body)["headers"]["x-weauth-sub"], sub.as_str());
    // No token, a spoofed x-weauth-sub, on the open path: stripped, then routed without it.
    let (status, body) = send("/api/open/x", &[("x-weauth-sub", "root")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        echo(&body)["headers"].get("x-weauth-sub").is_none(),
        "{body}"
    );
    // The route on the verified identity is taken.
    let (status, body) = send("/api/by-identity/x", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    let headers = &echo(&body)["headers"];
    assert_eq!(headers["x-routed-by"], "identity", "{body}");
    assert_eq!(headers["x-weauth-sub"], sub.as_str());
}

/// A gRPC client refused at the edge gets a gRPC status that says why — 16 UNAUTHENTICATED
/// without a token, 7 PERMISSION_DENIED for a missing scope — in a trailers-only answer, as
/// Envoy writes a local reply to a gRPC request. Never 0 (OK), which a streaming client reads
/// as an empty success: the native build passed Envoy's dynamic-module ABI a literal 0.
#[tokio::test]
async fn grpc_requests_refused_with_the_grpc_status_of_the_denial() {
    let key = test_key();
    let mut config: Value =
        serde_json::from_str(weauth_tests::template::PLUGIN_CONFIG_TEMPLATE).unwrap();
    let mut rules = config["rules"].as_array_mut().unwrap().clone();
    rules.insert(
        0,
        json!({"prefix": "/admin.Service/", "require": "required", "scopes": ["admin"]}),
    );
    config = json!({"rules": rules});
    let stack = start(Stack::builder().plugin_config_patch(config), &key).await;
    let token = stack.login("grpc-caller").await.unwrap().access_token;
    let grpc = |path: &str, bearer: Option<&str>| {
        let mut req = stack
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0]);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    for (path, bearer, want) in [
        ("/demo.Service/Call", None, "16"),
        ("/admin.Service/Call", Some(token.as_str()), "7"),
    ] {
        let resp = grpc(path, bearer).await.unwrap();
        let status = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or("").to_string());
        assert_eq!(
            status.as_deref(),
            Some(want),
            "{path}: {:?}",
            resp.headers()
        );
    }
}
