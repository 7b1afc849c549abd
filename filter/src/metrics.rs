//! The filter's Envoy stats: metric ids defined once per VM, and the allow path's counters,
//! counted in the VM and flushed to Envoy on the tick. Apart from `root` because both sides
//! count through it: the root (fetch outcomes, gauges, the flush) and every request (allow,
//! cache and deny counters).

use std::cell::Cell;
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::gauges::{self, Reporter};
use crate::host::Stats;
use crate::metrics_names::{DefinedIds, COUNTERS, DENY_REASONS, GAUGES};

thread_local! {
    /// The VM's metric ids ([`DefinedIds`]: each stat defined with Envoy once per VM, not
    /// once per configuration).
    static DEFINED: std::cell::RefCell<DefinedIds> = std::cell::RefCell::new(DefinedIds::default());
}

/// The id of stat `name` of type `kind`, defined with the host on its first use in this VM.
fn define(kind: MetricType, name: &str) -> Option<u32> {
    DEFINED.with(|defined| {
        defined
            .borrow_mut()
            .get_or_define(name, || hostcalls::define_metric(kind, name).ok())
    })
}

/// A counter of the allow path, counted in the VM and added to Envoy's stat on the tick
/// ([`Metrics::flush`]): one host call per counter per 100 ms instead of one per request. Envoy's
/// stats therefore lag by up to one tick (and a VM torn down loses at most one tick's counts).
#[derive(Debug, Default)]
pub struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

impl Counter {
    fn new(id: Option<u32>) -> Counter {
        Counter {
            id,
            pending: Cell::new(0),
        }
    }

    /// Adds one, in the VM only (no host call).
    pub fn bump(&self) {
        self.pending.set(self.pending.get().saturating_add(1));
    }

    /// What is counted and not yet flushed; resets it.
    fn take(&self) -> u64 {
        self.pending.replace(0)
    }
}

/// Metric ids, defined once per VM (Envoy shares the underlying stats across VMs). The
/// counters of the allow path are [`Counter`]s, so a request never looks an id up by name nor
/// crosses the host boundary to count.
#[derive(Debug, Default)]
pub struct Metrics {
    /// This configuration on the VM's gauge board.
    reporter: Reporter,
    ids: HashMap<&'static str, u32>,
    denied: HashMap<&'static str, u32>,
    pub allowed: Counter,
    pub anonymous: Counter,
    pub cache_hit: Counter,
    pub cache_miss: Counter,
}

impl Metrics {
    /// The ids of every metric, defined with the host on their first use in this VM (each
    /// configuration's `on_configure` asks). A metric the host refuses is left out, and
    /// counting it does nothing.
    pub fn define() -> Metrics {
        // Field by field: a `Drop` type cannot be built from `..Metrics::default()`.
        let mut metrics = Metrics {
            reporter: Reporter::next(),
            ids: HashMap::new(),
            denied: HashMap::new(),
            allowed: Counter::default(),
            anonymous: Counter::default(),
            cache_hit: Counter::default(),
            cache_miss: Counter::default(),
        };
        for name in COUNTERS {
            if let Some(id) = define(MetricType::Counter, &format!("weauth.{name}")) {
                metrics.ids.insert(name, id);
            }
        }
        for name in GAUGES {
            if let Some(id) = define(MetricType::Gauge, &format!("weauth.{name}")) {
                metrics.ids.insert(name, id);
            }
        }
        metrics.allowed = Counter::new(metrics.ids.get("allowed").copied());
        metrics.anonymous = Counter::new(metrics.ids.get("anonymous").copied());
        metrics.cache_hit = Counter::new(metrics.ids.get("cache_hit").copied());
        metrics.cache_miss = Counter::new(metrics.ids.get("cache_miss").copied());
        for reason in DENY_REASONS {
            if let Some(id) = define(MetricType::Counter, &format!("weauth.denied.{reason}")) {
                metrics.denied.insert(reason, id);
            }
        }
        metrics
    }

    /// Adds the allow path's counts since the last flush to Envoy's stats (on the tick): one
    /// host call per counter that moved.
    pub fn flush(&self) {
        for counter in [
            &self.allowed,
            &self.anonymous,
            &self.cache_hit,
            &self.cache_miss,
        ] {
            let pending = counter.take();
            if let (Some(id), true) = (counter.id, pending > 0) {
                let _ = hostcalls::increment_metric(id, i64::try_from(pending).unwrap_or(i64::MAX));
            }
        }
    }

    /// Adds one to a counter.
    pub fn count(&self, name: &str) {
        if let Some(id) = self.ids.get(name) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    /// Adds one to `weauth.denied.<reason>`.
    pub fn denied(&self, reason: &str) {
        if let Some(id) = self.denied.get(reason) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    /// Sets this configuration's value of a gauge; the stat shows the worst of the VM's
    /// configurations ([`crate::gauges`]).
    pub fn gauge(&self, name: &'static str, value: u64) {
        if let Some(id) = self.ids.get(name) {
            let shown = gauges::board().set(self.reporter, name, value);
            let _ = hostcalls::record_metric(*id, shown);
        }
    }
}

/// A configuration gone (its worker dropped): the stats show the worst of the others.
impl Drop for Metrics {
    fn drop(&mut self) {
        for (name, shown) in gauges::board().remove(self.reporter) {
            if let Some(id) = self.ids.get(name) {
                let _ = hostcalls::record_metric(*id, shown);
            }
        }
    }
}

impl Stats for Metrics {
    fn allowed(&self) {
        self.allowed.bump();
    }

    fn anonymous(&self) {
        self.anonymous.bump();
    }

    fn cache_hit(&self) {
        self.cache_hit.bump();
    }

    fn cache_miss(&self) {
        self.cache_miss.bump();
    }

    fn denied(&self, reason: &'static str) {
        Metrics::denied(self, reason);
    }

    fn count(&self, name: &'static str) {
        Metrics::count(self, name);
    }
}
