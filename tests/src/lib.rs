//! End-to-end support for weauth: the doubles and the harness the end-to-end tests run on.
//!
//! - [`mock_wechat`]: the test double of WeChat's server API — its own crate,
//!   `weauth-mock-wechat` (`mockwechat/`), so that the issuer's tests use it without this
//!   harness; re-exported here, with its hyper glue [`serve`].
//! - [`upstream`]: the demo upstream that echoes the request headers it received, so tests can
//!   see the identity headers the filter forwarded (`weauth-demo-upstream` binary).
//! - [`harness`]: boots the whole stack (mock, upstream, issuer process, Envoy with the filter)
//!   on free loopback ports, or on the fixed `make up` ports for `weauth-stack`.
//! - [`redis`], [`mariadb`]: a real `redis-server` (and `redis-sentinel`) and a real
//!   `mariadbd` on free loopback ports — the `weauth-servers` crate (`servers/`), shared with
//!   the issuer's store tests.
//! - [`replicas`]: what the tests of several issuer replicas behind Envoy share.
//! - [`prometheus`]: a real `prometheus` scraping a stack with the shipped
//!   `deploy/monitoring/prometheus.yml` (`make up MONITOR=1`, the dashboard's test).
//! - [`template`]: rendering of `envoy/envoy.yaml` and `envoy/plugin-config.json` (pure).
//! - [`walkthrough`]: the README's walkthroughs, which `make up` prints and a test runs.
//! - [`signal`]: Ctrl-C and SIGTERM for the binaries.

pub mod harness;
pub mod prometheus;
pub mod replicas;
pub mod signal;
pub mod template;
pub mod upstream;
pub mod walkthrough;

// The mock WeChat, the hyper glue and the real-server starters live in their own crates (the
// issuer's tests use them without this harness); re-exported under their old paths.
pub use weauth_mock_wechat as mock_wechat;
pub use weauth_mock_wechat::serve;
pub use weauth_servers::{mariadb, redis, report_skip};
