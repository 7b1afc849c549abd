//! `make bench`: weauth measured side by side with Envoy's jwt_authn and with the usual
//! revocation workaround (jwt_authn + an ext_authz call per request), in one run on one machine.
//!
//! Pure modules (unit-tested): [`stats`] (percentiles, ratios, CPU per request), [`parse`]
//! (`/proc`, Envoy `/stats`, `wrk --latency` output), [`template`] (the Envoy templates in
//! `bench/envoy/`), [`report`] (Markdown tables, targets, SVG plot), [`revset`] (the ext_authz
//! service's in-memory revocation set), [`tokens`] (keys and tokens from `weauth_token`).
//!
//! Glue: [`serve`] (a minimal hyper server), [`feed`] (the driver's own revocation feed in the
//! issuer's wire format), [`revcheck`] (the `weauth-revocation-check` service), [`procs`]
//! (child processes and `/proc` reads), [`edge`] (the edge comparison), [`issuer`] (revocation
//! delay and issuer throughput on the `weauth_tests::harness` stack). The driver binary
//! `weauth-bench` strings them together and writes `bench-results/`.

pub mod edge;
pub mod fanout;
pub mod feed;
pub mod issuer;
pub mod parse;
pub mod procs;
pub mod report;
pub mod revcheck;
pub mod revset;
pub mod serve;
pub mod stats;
pub mod template;
pub mod tokens;
