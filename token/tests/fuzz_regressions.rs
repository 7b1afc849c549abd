//! Replays the token crate's fuzz inputs as ordinary tests (`cargo test --workspace`): for each
//! fuzz target (`jws_verify`, `jws_verify_mutated`, `jws_signed`, `jwks_parse`, `feed_decode`)
//! every committed seed in `fuzz/seeds/<target>/`, every crash the fuzzer found in
//! `fuzz/regressions/<target>/` (none is fine: the seeds still run) and a set of large
//! generated hostile inputs go through the very harness the fuzzer runs
//! (`fuzz/src/token_harness.rs`, included below), which calls the production functions and
//! asserts its oracles. Here the outcome is also pinned: nothing hostile verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/src/fixture.rs"]
mod fixture;
#[path = "../../fuzz/src/token_harness.rs"]
mod harness;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

use replay::{count, inputs, run_all, Origin};

fn load(target: &str, min_seeds: usize) -> Vec<replay::Input> {
    let all = inputs(&replay::fuzz_dir(env!("CARGO_MANIFEST_DIR")), target);
    assert!(
        count(&all, Origin::Seed) >= min_seeds,
        "fuzz/seeds/{target}/ has fewer than {min_seeds} seeds: the corpus was lost"
    );
    all
}

#[test]
fn jws_verify_inputs_only_issued_tokens_verify() {
    let fx = harness::Fixture::new();
    let all = load("jws_verify", 10);
    run_all(&all, |input| {
        let accepted = harness::jws_verify(&fx, &input.data);
        let issued = fx.tokens.iter().any(|t| t.as_bytes() == input.data);
        assert_eq!(accepted, issued, "accepted={accepted} issued={issued}");
    });
    // The seeds include the fixture's valid tokens, so the oracle is exercised both ways.
    let valid = all
        .iter()
        .filter(|i| fx.tokens.iter().any(|t| t.as_bytes() == i.data))
        .count();
    assert_eq!(valid, fx.tokens.len(), "each valid token is a seed");
}

#[test]
fn jws_verify_mutated_inputs_only_unedited_tokens_verify() {
    let fx = harness::Fixture::new();
    run_all(&load("jws_verify_mutated", 5), |input| {
        let accepted = harness::jws_verify_mutated(&fx, &input.data);
        let unchanged = input.data.split_first().is_some_and(|(&pick, script)| {
            let original = &fx.tokens[usize::from(pick) % fx.tokens.len()];
            harness::mutate(original, script) == original.as_bytes()
        });
        assert_eq!(accepted, unchanged);
    });
}

#[test]
fn jws_signed_inputs_accepted_only_when_valid() {
    let fx = harness::Fixture::new();
    let all = load("jws_signed", 8);
    let mut accepted = 0;
    run_all(&all, |input| {
        if harness::jws_signed(&fx, &input.data) {
            accepted += 1;
        }
    });
    // The seeds hold a few well-formed claims sets (one per key, under the issuer's header and
    // under a header of their own), so acceptance is reachable and its oracle ran; everything
    // else is hostile and refused.
    assert!(accepted >= 6, "only {accepted} signed seeds verified");
    let file = |input: &replay::Input| {
        let path = std::path::Path::new(&input.name);
        let name = path.file_name().and_then(|name| name.to_str());
        name.unwrap_or_default().to_string()
    };
    for input in &all {
        let expected = if file(input).starts_with("header-kid-extra-members-") {
            Some(true)
        } else if file(input).starts_with("header-kid-") {
            Some(false)
        } else {
            None
        };
        if let Some(expected) = expected {
            assert_eq!(
                harness::jws_signed(&fx, &input.data),
                expected,
                "{}",
                input.name
            );
        }
    }
    assert_eq!(
        all.iter()
            .filter(|i| file(i).starts_with("header-kid-"))
            .count(),
        12,
        "the headers-with-a-kid seeds are missing: run write_generated_seeds"
    );
    assert!(
        accepted < all.len() / 2,
        "{accepted} of {} verified",
        all.len()
    );
}

#[test]
fn jwks_parse_inputs_never_panic() {
    let fx = harness::Fixture::new();
    let all = load("jwks_parse", 6);
    let mut parsed = 0;
    run_all(&all, |input| {
        if harness::jwks_parse(&fx, &input.data).is_some() {
            parsed += 1;
        }
    });
    assert!(parsed >= 1, "no JWKS seed parsed");
    // The fixture's own JWKS parses into its three keys and verifies its tokens.
    assert_eq!(harness::jwks_parse(&fx, &fx.jwks_json()), Some(3));
}

#[test]
fn feed_decode_inputs_never_panic() {
    let all = load("feed_decode", 6);
    let mut decoded = 0;
    run_all(&all, |input| {
        if harness::feed_decode(&input.data) {
            decoded += 1;
        }
    });
    assert!(decoded >= 1, "no feed seed decoded");
    assert!(decoded < all.len(), "hostile feeds decoded");
}

/// Writes the generated seeds (valid tokens, signed claims sets, the fixture's JWKS). Run by
/// hand after changing the token format:
/// `cargo test -p weauth-token --test fuzz_regressions -- --ignored write_generated_seeds`.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand"]
fn write_generated_seeds() {
    let fx = harness::Fixture::new();
    let seeds = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = seeds.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let algs = ["eddsa", "es256", "hs256"];
    for (i, token) in fx.tokens.iter().enumerate() {
        write(
            "jws_verify",
            &format!("valid-{}", algs[i]),
            token.as_bytes(),
        );
        // pick byte i, no edits / one base64 edit in the signature / one in the header
        write(
            "jws_verify_mutated",
            &format!("unedited-{}", algs[i]),
            &[i as u8],
        );
        let last = u16::try_from(token.len() - 1).unwrap();
        write(
            "jws_verify_mutated",
            &format!("sig-edit-{}", algs[i]),
            &[i as u8, 0xc0 | (last >> 8) as u8, last as u8, 7],
        );
        write(
            "jws_verify_mutated",
            &format!("header-edit-{}", algs[i]),
            &[i as u8, 0xc0, 5, 9],
        );
        let claims = serde_json::to_vec(&harness::claims(fx.signing[i].algorithm())).unwrap();
        let mut data = vec![i as u8];
        data.extend_from_slice(&claims);
        write("jws_signed", &format!("valid-claims-{}", algs[i]), &data);
        // Headers of their own under the key's kid (without it, any other header ends at
        // `UnknownKey`: the fixture has three keys): accepted with extra members and the
        // long typ, refused with a forbidden member set to null or a member given twice.
        let kid = fx.signing[i].kid();
        let alg = fx.signing[i].algorithm();
        for (name, header) in [
            (
                "header-kid-extra-members",
                format!(
                    r#"{{"alg":"{alg}","typ":"Application/AT+JWT","kid":"{kid}","cty":"JWT","x-extra":{{"a":[1,null]}}}}"#
                ),
            ),
            (
                "header-kid-crit-null",
                format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{kid}","crit":null}}"#),
            ),
            (
                "header-kid-repeated-kid",
                format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"other","kid":"{kid}"}}"#),
            ),
            (
                "header-kid-repeated-alg",
                format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{kid}","alg":"{alg}"}}"#),
            ),
        ] {
            let mut data = vec![i as u8];
            data.extend_from_slice(header.as_bytes());
            data.push(0xff);
            data.extend_from_slice(&claims);
            write("jws_signed", &format!("{name}-{}", algs[i]), &data);
        }
    }
    write("jwks_parse", "fixture-jwks.json", &fx.jwks_json());
    // Algorithm confusion: HS256 "signed" with the EdDSA key's public bytes as the secret.
    use hmac::Mac as _;
    let eddsa = &fx.signing[0];
    let public = match eddsa.verifying_key() {
        weauth_token::VerifyingKey::Ed25519(key) => key.to_bytes(),
        _ => unreachable!("key 0 is the EdDSA key"),
    };
    let header = format!(
        r#"{{"alg":"HS256","typ":"at+jwt","kid":"{}"}}"#,
        eddsa.kid()
    );
    let claims = serde_json::to_vec(&harness::claims(eddsa.algorithm())).unwrap();
    let input = format!(
        "{}.{}",
        weauth_token::b64::encode(&header),
        weauth_token::b64::encode(&claims)
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public).unwrap();
    mac.update(input.as_bytes());
    let token = format!(
        "{input}.{}",
        weauth_token::b64::encode(mac.finalize().into_bytes())
    );
    write(
        "jws_verify",
        "hostile-hs256-with-eddsa-public-key",
        token.as_bytes(),
    );
}
