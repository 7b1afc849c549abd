//! End-to-end support for weauth: the doubles and the harness the end-to-end tests run on.
//!
//! - [`mock_wechat`]: a test double of WeChat's server API (jscode2session, access tokens,
//!   phone numbers, checksession) with WeChat's quirks, control routes standing in for the
//!   mini-program client, and fault injection. Used in-process by the issuer's integration
//!   tests and by the harness, and as the `weauth-mock-wechat` binary.
//! - [`upstream`]: the demo upstream that echoes the request headers it received, so tests can
//!   see the identity headers the filter forwarded (`weauth-demo-upstream` binary).
//! - [`harness`]: boots the whole stack (mock, upstream, issuer process, Envoy with the filter)
//!   on free loopback ports, or on the fixed `make up` ports for `weauth-stack`.
//! - [`redis`]: a real `redis-server` (and `redis-sentinel`) on free loopback ports, each
//!   with its own data directory and AOF `appendfsync always`.
//! - [`prometheus`]: a real `prometheus` scraping a stack with the shipped
//!   `deploy/monitoring/prometheus.yml` (`make up MONITOR=1`, the dashboard's test).
//! - [`template`]: rendering of `envoy/envoy.yaml` and `envoy/plugin-config.json` (pure).
//! - [`walkthrough`]: the README's walkthroughs, which `make up` prints and a test runs.
//! - [`serve`]: the small hyper 1 server glue the two doubles share; [`signal`]: Ctrl-C and
//!   SIGTERM for the binaries.

pub mod harness;
pub mod mariadb;
pub mod mock_wechat;
pub mod prometheus;
pub mod redis;
pub mod serve;
pub mod signal;
pub mod template;
pub mod upstream;
pub mod walkthrough;
