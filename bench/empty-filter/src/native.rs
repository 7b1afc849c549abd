//! The empty Envoy dynamic module: the native build's counterpart of the empty wasm filter, for
//! the `make bench` rows that price "being a dynamic module at all" — Envoy creating the
//! module's filter per request and calling its hooks — with the same profile (`native`) as
//! `weauth-filter`'s native build and the same ABI (Envoy 1.40.0's `v0.2.0`).
//!
//! Its filter configuration (a `StringValue`) picks what it does per request:
//! - anything else: nothing (every hook returns at once);
//! - `weauth-reads`: reads the request's header map as weauth's native build does (its size,
//!   then every header into an array the module allocates) and counts the request on two
//!   counters (weauth's `allowed` and `cache_hit`) — the ABI calls weauth makes on a request it
//!   forwards untouched (the bench's "plain jwt_authn's job" row);
//! - `weauth-calls`: that read, then weauth's edits with fixed values — add the two identity
//!   headers, remove `authorization`, and clear the route cache so that the route is matched
//!   again — the ABI's share of weauth's job as the bench's weauth rows configure it.
//!
//! The declarations are the few the modes need, written as `filter/src/native/ffi.rs` writes
//! them (the filter's module keeps every `unsafe` of the filter; this bench crate is not part
//! of it). Nothing here can panic.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::hint::black_box;

/// Envoy 1.40.0's `ENVOY_DYNAMIC_MODULES_ABI_VERSION`, NUL-terminated (as the filter's).
const ABI_VERSION: &[u8] = b"v0.2.0\0";
/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
/// `*_status_Continue` of every hook's status enum.
const CONTINUE: u32 = 0;

/// What the module does per request (module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Reads,
    Calls,
}

/// One configuration: its mode and its two counters (a `Box` Envoy holds from the
/// configuration hook to its destroy hook).
struct Empty {
    mode: Mode,
    counters: [Option<usize>; 2],
}

/// What weauth adds on an allowed request (values of the same lengths as the bench's claims).
const ADD: [(&[u8], &[u8]); 2] = [
    (b"x-weauth-sub", b"u_bench_subject_000001"),
    (b"x-weauth-openid", b"o6_bmjrPTlm6_2sgVt7hMZOPfL2M"),
];

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        result_headers: *mut EnvoyHttpHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    ABI_VERSION.as_ptr()
}

/// # Safety
/// Called by Envoy with valid buffers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let text = if config.ptr.is_null() {
        &[][..]
    } else {
        std::slice::from_raw_parts(config.ptr, config.length)
    };
    let mode = match text.trim_ascii() {
        b"weauth-reads" => Mode::Reads,
        b"weauth-calls" => Mode::Calls,
        _ => Mode::Pass,
    };
    let define = |name: &[u8]| {
        let mut id = 0usize;
        let result = envoy_dynamic_module_callback_http_filter_config_define_counter(
            config_envoy,
            ModuleBuffer::of(name),
            std::ptr::null_mut(),
            0,
            &mut id,
        );
        (result == 0).then_some(id)
    };
    let counters = [define(b"empty.allowed"), define(b"empty.cache_hit")];
    Box::into_raw(Box::new(Empty { mode, counters }))
        .cast_const()
        .cast()
}

/// # Safety
/// `config` is what the configuration hook returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if !config.is_null() {
        drop(Box::from_raw(config.cast::<Empty>().cast_mut()));
    }
}

/// The configuration is the filter's: nothing per request to allocate.
///
/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: *mut c_void,
) -> *const c_void {
    config
}

/// # Safety
/// Called by Envoy with the pointers of a live stream; `filter_module` is an `Empty`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    let Some(empty) = filter_module.cast::<Empty>().as_ref() else {
        return CONTINUE;
    };
    if empty.mode == Mode::Pass {
        return CONTINUE;
    }
    let size = envoy_dynamic_module_callback_http_get_headers_size(filter_envoy, REQUEST_HEADER);
    let mut headers = vec![
        EnvoyHttpHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        };
        size
    ];
    let read = size > 0
        && envoy_dynamic_module_callback_http_get_headers(
            filter_envoy,
            REQUEST_HEADER,
            headers.as_mut_ptr(),
        );
    black_box(&headers);
    for id in empty.counters.into_iter().flatten() {
        envoy_dynamic_module_callback_http_filter_increment_counter(
            filter_envoy,
            id,
            std::ptr::null_mut(),
            0,
            1,
        );
    }
    if empty.mode == Mode::Calls && read {
        for (name, value) in ADD {
            envoy_dynamic_module_callback_http_add_header(
                filter_envoy,
                REQUEST_HEADER,
                ModuleBuffer::of(name),
                ModuleBuffer::of(value),
            );
        }
        // A null value removes the header (as the filter removes the token).
        envoy_dynamic_module_callback_http_set_header(
            filter_envoy,
            REQUEST_HEADER,
            ModuleBuffer::of(b"authorization"),
            ModuleBuffer {
                ptr: std::ptr::null(),
                length: 0,
            },
        );
        envoy_dynamic_module_callback_http_clear_route_cache(filter_envoy);
    }
    CONTINUE
}

// Every other hook Envoy requires: nothing to do.

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) -> u32 {
    CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) -> u32 {
    CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(
    _filter_module: *const c_void,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _event_id: u64,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _event_id: u64,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    std::ptr::null()
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _config: *const c_void,
) {
}
