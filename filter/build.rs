//! The native build (`--features envoy-native`) is linked with `-z now`: every Envoy callback
//! the module declares is resolved when Envoy `dlopen`s it, so a callback missing from the
//! Envoy binary (another ABI) refuses the configuration at load instead of aborting at the
//! first call. (Only a missing one: an Envoy exporting the same names with another meaning
//! loads it, with a warning about the ABI version — the module is built for one Envoy minor.)

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let native = std::env::var_os("CARGO_FEATURE_ENVOY_NATIVE").is_some();
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if native && linux {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,now");
    }
}
