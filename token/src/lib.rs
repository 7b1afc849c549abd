//! The weauth token contract, shared by the issuer and the edge filter.
//!
//! One definition of what an access token is, so that the side that mints tokens and the side
//! that checks them cannot drift apart:
//!
//! - [`claims`]: the JWT claims set ([`Claims`]) and the audience type.
//! - [`jwk`]: JSON Web Keys, key sets and RFC 7638 thumbprints (the `kid`).
//! - [`jws`]: signing (`SigningKey`, `sign`) and verification ([`verify`], [`Validation`])
//!   of compact JWS for EdDSA (Ed25519), ES256 and HS256, on the `jsonwebtoken` crate, with
//!   weauth's stricter policy around it (the module docs list what the crate checks and what
//!   weauth adds).
//!
//! Feature `sign` (on by default) builds the signing half: `SigningKey`, `sign`, `SignError`
//! and the signers of [`crypto`]. The edge filter only verifies and depends on this crate
//! without it (the workspace gives `default-features = false`; the issuer, the tests and the
//! bench ask for `sign`), which keeps the Ed25519 and P-256 signing code out of its wasm
//! module: 75 548 bytes less (issue 22 §5, docs/PERFORMANCE.md "Module size").
//! - [`crypto`]: the cryptography under `jsonwebtoken` (EdDSA, ES256, HS256 only), installed
//!   by [`jws`] before it calls the crate.
//! - [`revocation`]: the revocation feed's wire types, as served by the issuer's
//!   `GET /v1/revocations` and consumed by the filter.
//! - [`b64`]: strict base64url without padding.
//!
//! The crate is plain Rust: no I/O, no clock (every time is an argument), no tokio and no
//! proxy-wasm, so it builds for `wasm32-wasip1` and its logic is tested natively. Non-test code
//! never panics (clippy denies `unwrap`, `expect` and `panic`).

pub mod b64;
pub mod claims;
pub mod crypto;
pub mod jwk;
pub mod jws;
pub mod revocation;

pub use claims::{Audience, Claims};
pub use jwk::{Algorithm, Jwk, Jwks, KeySet, VerifyingKey};
#[cfg(feature = "sign")]
pub use jws::{sign, SignError, SigningKey};
pub use jws::{verify, Header, Validation, VerifyError};

/// The JOSE `typ` of a weauth access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
