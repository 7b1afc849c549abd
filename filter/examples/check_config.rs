//! Validates a plugin configuration the way `on_configure` does, without Envoy.
//!
//! `cargo run -p weauth-filter --example check_config < plugin-config.json`
//! Prints the load's warnings and `ok` and exits 0, or prints the error naming the field and
//! exits 1. A
//! `revocation.credential_env` is looked up in this process's environment, standing in for
//! the variables Envoy would pass the VM.

use std::io::Read;

fn main() {
    let mut text = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut text) {
        eprintln!("cannot read stdin: {err}");
        std::process::exit(2);
    }
    match weauth_filter::config::Config::parse_with_env(&text, &|name| std::env::var(name).ok()) {
        Ok(config) => {
            for warning in &config.warnings {
                println!("warning: {warning}");
            }
            println!("ok");
        }
        Err(err) => {
            println!("invalid plugin configuration: {err}");
            std::process::exit(1);
        }
    }
}
