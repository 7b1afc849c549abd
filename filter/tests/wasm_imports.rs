//! Checks that the built module imports only `env.proxy_*` and `wasi_snapshot_preview1.*`
//! (a JWT crate that pulls in `wasm-bindgen` or `__wbindgen_*` imports would fail to load in
//! Envoy; see proxy-wasm-rust-sdk#179 and jsonwebtoken#431).
//!
//! The import section is read with a tiny hand-written parser (no wasm crate needed). The check
//! on the real artefact needs the release build first, so it is `#[ignore]`d by default:
//!
//! ```text
//! cargo build -p weauth-filter --target wasm32-wasip1 --profile wasm-release
//! cargo test -p weauth-filter --test wasm_imports -- --include-ignored
//! ```
//!
//! The file is `$WEAUTH_FILTER_WASM`, else `$CARGO_TARGET_DIR` (or `target`)
//! `/wasm32-wasip1/wasm-release/weauth_filter.wasm`.

use std::path::PathBuf;

fn leb_u32(bytes: &[u8], pos: &mut usize) -> Result<u32, String> {
    let mut result: u32 = 0;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(*pos).ok_or("truncated LEB128")?;
        *pos += 1;
        result |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(result);
        }
        shift += 7;
        if shift > 28 {
            return Err("LEB128 too long".into());
        }
    }
}

fn name(bytes: &[u8], pos: &mut usize) -> Result<String, String> {
    let len = leb_u32(bytes, pos)? as usize;
    let text = bytes.get(*pos..*pos + len).ok_or("truncated name")?;
    *pos += len;
    String::from_utf8(text.to_vec()).map_err(|_| "name is not UTF-8".to_string())
}

/// Every (module, field) import of a wasm binary.
fn imports(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    if bytes.get(..8) != Some(b"\0asm\x01\0\0\0") {
        return Err("not a wasm v1 module".into());
    }
    let mut pos = 8;
    let mut found = Vec::new();
    while pos < bytes.len() {
        let id = bytes[pos];
        pos += 1;
        let size = leb_u32(bytes, &mut pos)? as usize;
        let end = pos + size;
        if end > bytes.len() {
            return Err("truncated section".into());
        }
        if id == 2 {
            let mut at = pos;
            let count = leb_u32(bytes, &mut at)?;
            for _ in 0..count {
                let module = name(bytes, &mut at)?;
                let field = name(bytes, &mut at)?;
                let kind = *bytes.get(at).ok_or("truncated import")?;
                at += 1;
                match kind {
                    0 => {
                        leb_u32(bytes, &mut at)?; // type index
                    }
                    1 => {
                        at += 1; // reftype
                        let flags = leb_u32(bytes, &mut at)?;
                        leb_u32(bytes, &mut at)?;
                        if flags & 1 == 1 {
                            leb_u32(bytes, &mut at)?;
                        }
                    }
                    2 => {
                        let flags = leb_u32(bytes, &mut at)?;
                        leb_u32(bytes, &mut at)?;
                        if flags & 1 == 1 {
                            leb_u32(bytes, &mut at)?;
                        }
                    }
                    3 => at += 2, // valtype, mutability
                    other => return Err(format!("unknown import kind {other}")),
                }
                found.push((module, field));
            }
        }
        pos = end;
    }
    Ok(found)
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

/// A module with the given function imports (all of type 0) and nothing else.
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
fn imports_parser_reads_function_imports() {
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
fn release_module_imports_only_proxy_and_wasi() {
    let path = artefact();
    let bytes =
        std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let all = imports(&bytes).unwrap();
    assert!(
        all.iter().any(|(module, _)| module == "env"),
        "no env.proxy_* import at all: is this the filter?"
    );
    assert_eq!(
        foreign(&all),
        Vec::<String>::new(),
        "foreign imports in {}",
        path.display()
    );
    // The module must also export the proxy-wasm ABI marker.
    assert!(
        bytes
            .windows(b"proxy_abi_version_0_2_1".len())
            .any(|w| w == b"proxy_abi_version_0_2_1"),
        "proxy_abi_version_0_2_1 export missing"
    );
}
