//! The two proxy-wasm host services every context uses besides its own work: a log line tagged
//! with the context id, and the host clock. Apart from `root`, `worker` and `http` so that none
//! of them imports another only for these.

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

use crate::host::Level;

/// Writes one log line tagged with the context id. Never pass tokens or full openids.
pub fn log(level: Level, context_id: u32, message: &str) {
    let level = match level {
        Level::Trace => LogLevel::Trace,
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    };
    let _ = hostcalls::log(level, &format!("weauth[{context_id}] {message}"));
}

/// Host time in unix milliseconds (0 if the host cannot say, which makes everything stale).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
