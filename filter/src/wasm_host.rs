//! The proxy-wasm host services every context uses besides its own work: a log line tagged
//! with the context id, the host's two clocks, and the request's header map read raw. Apart
//! from `root`, `worker` and `http` so that none of them imports another only for these. The
//! raw header read and the monotonic clock's WASI call are the wasm build's only `unsafe` (the
//! native build's are all in `native::ffi`).

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType};

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

/// The wall clock in Unix milliseconds (0 if the host cannot say: every token is then refused
/// as not yet valid). One host call (`proxy_get_current_time_nanoseconds`): a request's only
/// clock call ([`crate::host::WasmClock::request`]).
pub fn unix_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// WASI's monotonic clock (`CLOCKID_MONOTONIC`).
const CLOCK_MONOTONIC: u32 = 1;

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    /// WASI preview 1's `clock_time_get(id, precision, *time) -> errno`. std imports it too
    /// (for `SystemTime` and `Instant`, whose readings are opaque and per VM), so the module
    /// gains no import; declared with the wasm types std's binding lowers to:
    /// (i32, i64, i32) -> i32.
    fn clock_time_get(id: u32, precision: u64, time: *mut u64) -> u32;
}

/// The monotonic clock in nanoseconds, `None` if the host refuses it. proxy-wasm-cpp-host
/// answers clock id 1 with the host's `getMonotonicTimeNanoseconds` — Envoy's process-wide
/// steady clock, so readings compare across the VMs of one Envoy ([`crate::host::WasmClock`]).
/// Read only in the root context's hooks, never per request.
pub fn monotonic_ns() -> Option<u64> {
    let mut time: u64 = 0;
    // SAFETY: the host writes one u64 (a WASI timestamp) at the address given, a live local
    // of this frame, and nothing else; `precision` is only a hint.
    let errno = unsafe { clock_time_get(CLOCK_MONOTONIC, 1, &mut time) };
    (errno == 0).then_some(time)
}

#[link(wasm_import_module = "env")]
extern "C" {
    /// The proxy-wasm ABI's `proxy_get_header_map_pairs` (declared by the SDK too, privately:
    /// one import). `map_type` a `MapType`, the result a `Status` (0 = Ok).
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    /// The ABI's header edits, declared here for their `Status`: the SDK's wrappers
    /// (`hostcalls::set_map_value` and its kin) panic on any status but Ok, which aborts the
    /// VM serving every request of its worker, where a refused edit must answer that one
    /// request 503 (`request::on_request_headers`). The same imports as the SDK's.
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
}

/// What a request-header edit does ([`edit_request_header`]).
pub enum Edit<'a> {
    /// Sets the header, replacing every copy.
    Set(&'a str),
    /// Adds a copy.
    Add(&'a str),
    /// Removes every copy.
    Remove,
}

/// Edits request header `name`; whether the host made the edit (its `Status` was Ok).
pub fn edit_request_header(name: &str, edit: Edit<'_>) -> bool {
    let map = MapType::HttpRequestHeaders as u32;
    let (key, key_size) = (name.as_ptr(), name.len());
    // SAFETY: every pointer is to a live buffer of the given size, which the host only reads
    // during the call.
    let status = unsafe {
        match edit {
            Edit::Set(value) => {
                proxy_replace_header_map_value(map, key, key_size, value.as_ptr(), value.len())
            }
            Edit::Add(value) => {
                proxy_add_header_map_value(map, key, key_size, value.as_ptr(), value.len())
            }
            Edit::Remove => proxy_remove_header_map_value(map, key, key_size),
        }
    };
    status == 0
}

/// The request's header map, serialized as the host writes it (`headers::parse_map_pairs`
/// reads it, borrowing). The SDK's reader would copy every name and value into vectors of its
/// own: measured under V8 (`scripts/profile-request-path.sh`, the bench's ten headers), 669 ns
/// a request against 244 for this and the borrowed reading. `None` when the host refuses.
pub fn request_header_map() -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a length into the two locations given.
    let status = unsafe {
        proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size)
    };
    if status != 0 {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: the host wrote `size` bytes into a buffer it allocated in this VM through the
    // SDK's `proxy_on_memory_allocate(size)` — a boxed slice of exactly `size` bytes, given
    // up — so the buffer is ours to own and free, as the SDK's own reader takes it.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}
