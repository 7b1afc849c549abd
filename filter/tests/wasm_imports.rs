//! Checks that the built module imports only `env.proxy_*` and `wasi_snapshot_preview1.*`
//! (a JWT crate that pulls in `wasm-bindgen` or `__wbindgen_*` imports would fail to load in
//! Envoy; see proxy-wasm-rust-sdk#179 and jsonwebtoken#431 — `jsonwebtoken` on
//! `wasm32-wasip1`, with weauth's crypto provider as with its own `rust_crypto` before,
//! does not, and this test is what says so), and that it exports only the callbacks the filter
//! implements (`scripts/wasm-link` leaves the SDK's others out, so Envoy never calls them).
//!
//! The import and export sections are read with `wasmparser`. The check on the real artefact
//! needs the release build first, so it is `#[ignore]`d by default (`make test` runs it):
//!
//! ```text
//! cargo build -p weauth-filter --target wasm32-wasip1 --profile wasm-release
//! cargo test -p weauth-filter --test wasm_imports -- --include-ignored
//! ```
//!
//! The file is `$WEAUTH_FILTER_WASM`, else `$CARGO_TARGET_DIR` (or `target`)
//! `/wasm32-wasip1/wasm-release/weauth_filter.wasm`.

use std::path::PathBuf;

use wasmparser::{Parser, Payload};

/// The (module, field) imports and the export names of a wasm binary.
struct Sections {
    imports: Vec<(String, String)>,
    exports: Vec<String>,
}

fn sections(bytes: &[u8]) -> Result<Sections, wasmparser::BinaryReaderError> {
    let mut found = Sections {
        imports: Vec::new(),
        exports: Vec::new(),
    };
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    found
                        .imports
                        .push((import.module.to_string(), import.name.to_string()));
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    found.exports.push(export?.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

fn imports(bytes: &[u8]) -> Result<Vec<(String, String)>, wasmparser::BinaryReaderError> {
    sections(bytes).map(|s| s.imports)
}

fn foreign(imports: &[(String, String)]) -> Vec<String> {
    imports
        .iter()
        .filter(|(module, field)| {
            !((module == "env" && field.starts_with("proxy_"))
                || module == "wasi_snapshot_preview1")
        })
        .map(|(module, field)| format!("{module}.{field}"))
        .collect()
}

/// A module with the given function imports (all of type 0) and nothing else, written by hand
/// so the reader is tested against bytes it did not produce.
fn module_with(imports: &[(&str, &str)]) -> Vec<u8> {
    let mut section = vec![imports.len() as u8];
    for (module, field) in imports {
        section.push(module.len() as u8);
        section.extend_from_slice(module.as_bytes());
        section.push(field.len() as u8);
        section.extend_from_slice(field.as_bytes());
        section.extend_from_slice(&[0, 0]);
    }
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    bytes.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]); // type section: one () -> ()
    bytes.push(2);
    bytes.push(section.len() as u8);
    bytes.extend_from_slice(&section);
    bytes
}

#[test]
fn imports_reader_reads_function_imports() {
    let bytes = module_with(&[("env", "proxy_log"), ("wasi_snapshot_preview1", "fd_write")]);
    assert_eq!(
        imports(&bytes).unwrap(),
        vec![
            ("env".to_string(), "proxy_log".to_string()),
            ("wasi_snapshot_preview1".to_string(), "fd_write".to_string())
        ]
    );
}

#[test]
fn foreign_import_detected() {
    let bytes = module_with(&[("env", "proxy_log"), ("__wbindgen_placeholder__", "x")]);
    assert_eq!(
        foreign(&imports(&bytes).unwrap()),
        vec!["__wbindgen_placeholder__.x"]
    );
}

#[test]
fn env_non_proxy_import_detected() {
    let bytes = module_with(&[("env", "abort")]);
    assert_eq!(foreign(&imports(&bytes).unwrap()), vec!["env.abort"]);
}

#[test]
fn imports_truncated_module_refused() {
    let bytes = module_with(&[("env", "proxy_log")]);
    assert!(imports(&bytes[..bytes.len() - 3]).is_err());
}

fn artefact() -> PathBuf {
    if let Ok(path) = std::env::var("WEAUTH_FILTER_WASM") {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("wasm32-wasip1/wasm-release/weauth_filter.wasm")
}

#[test]
#[ignore = "needs `cargo build -p weauth-filter --target wasm32-wasip1 --profile wasm-release`"]
fn release_module_imports_only_proxy_and_wasi_and_exports_only_its_callbacks() {
    let path = artefact();
    let bytes =
        std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let found = sections(&bytes).unwrap();
    assert!(
        found.imports.iter().any(|(module, _)| module == "env"),
        "no env.proxy_* import at all: is this the filter?"
    );
    assert_eq!(
        foreign(&found.imports),
        Vec::<String>::new(),
        "foreign imports in {}",
        path.display()
    );
    // The ABI marker and exactly the callbacks the filter implements (plus the SDK's
    // lifecycle): every other callback is left out at link time (scripts/wasm-link), so that
    // Envoy never calls into the VM for it. A callback the filter starts implementing must
    // come off that script's list and onto this one.
    let mut exports = found.exports.clone();
    exports.sort();
    assert_eq!(
        exports,
        [
            "_initialize",
            "memory",
            "proxy_abi_version_0_2_1",
            "proxy_on_configure",
            "proxy_on_context_create",
            "proxy_on_delete",
            "proxy_on_http_call_response",
            "proxy_on_memory_allocate",
            "proxy_on_request_headers",
            "proxy_on_tick",
            "proxy_on_vm_start",
        ],
        "exports of {}",
        path.display()
    );
}
