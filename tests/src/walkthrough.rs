//! The README's walkthroughs as data: `make up` prints them and `tests/tests/e2e_walkthrough.rs`
//! runs them as shell scripts, so the text a new user pastes is the text that is tested.
//!
//! A walkthrough is the fenced `sh` block between `<!-- walkthrough:NAME -->` and
//! `<!-- /walkthrough:NAME -->` in `README.md` (embedded at build time). It is written for the
//! `make up` ports ([`StackPorts::LOCAL`]); [`for_ports`] rewrites every `127.0.0.1:PORT` of
//! those to the ports of another stack in one pass (so a free port that happens to equal a
//! `make up` port is not rewritten twice). Pure: no I/O.

use crate::harness::StackPorts;

/// `README.md` as built into this crate.
pub const README: &str = include_str!("../../README.md");

/// The main walkthrough: log in, call the API with and without the token, log out, see the
/// token refused at the edge.
pub const MAIN: &str = "main";
/// The user-data walkthrough: phone number and encrypted data through the mock's helpers.
pub const USER_DATA: &str = "userdata";
/// The admin walkthrough: scopes, ban, lookup, unban (admin token `dev-admin-token`).
pub const ADMIN: &str = "admin";

/// The body of the fenced block of walkthrough `name` in `readme`, without the fences.
pub fn block<'a>(readme: &'a str, name: &str) -> Option<&'a str> {
    let begin = format!("<!-- walkthrough:{name} -->");
    let end = format!("<!-- /walkthrough:{name} -->");
    let start = readme.find(&begin)? + begin.len();
    let stop = start + readme[start..].find(&end)?;
    let section = &readme[start..stop];
    let open = section.find("```sh\n")? + "```sh\n".len();
    let close = open + section[open..].rfind("```")?;
    Some(&section[open..close])
}

/// `script` with each `127.0.0.1:PORT` of a `make up` port rewritten to `ports`' port.
pub fn for_ports(script: &str, ports: StackPorts) -> String {
    let local = StackPorts::LOCAL;
    let map = [
        (local.envoy, ports.envoy),
        (local.internal, ports.internal),
        (local.admin, ports.admin),
        (local.issuer, ports.issuer),
        (local.upstream, ports.upstream),
        (local.mock, ports.mock),
    ];
    const HOST: &str = "127.0.0.1:";
    let mut out = String::with_capacity(script.len());
    let mut rest = script;
    while let Some(at) = rest.find(HOST) {
        let after = &rest[at + HOST.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(&rest[..at + HOST.len()]);
        let port: Option<u16> = after[..digits].parse().ok();
        match port.and_then(|p| map.iter().find(|(from, _)| *from == p)) {
            Some((_, to)) => out.push_str(&to.to_string()),
            None => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "intro\n<!-- walkthrough:demo -->\n```sh\ncurl http://127.0.0.1:10000/a\n```\n<!-- /walkthrough:demo -->\n";

    #[test]
    fn block_found_between_markers_without_fences() {
        assert_eq!(
            block(SAMPLE, "demo"),
            Some("curl http://127.0.0.1:10000/a\n")
        );
        assert_eq!(block(SAMPLE, "other"), None);
    }

    #[test]
    fn readme_walkthroughs_present() {
        for name in [MAIN, USER_DATA, ADMIN] {
            let script = block(README, name).unwrap_or_else(|| panic!("walkthrough {name}"));
            assert!(script.contains("curl"), "{name}: {script}");
        }
    }

    #[test]
    fn for_ports_rewrites_each_local_port_once() {
        let ports = StackPorts {
            envoy: 8090,
            internal: 5,
            admin: 1,
            issuer: 10000,
            upstream: 3,
            mock: 4,
        };
        let script =
            "a 127.0.0.1:10000/x b 127.0.0.1:8090 c 127.0.0.1:8080/ d 127.0.0.1:5555 e 127.0.0.1:";
        assert_eq!(
            for_ports(script, ports),
            "a 127.0.0.1:8090/x b 127.0.0.1:4 c 127.0.0.1:10000/ d 127.0.0.1:5555 e 127.0.0.1:"
        );
    }

    #[test]
    fn for_ports_local_is_identity() {
        let script = block(README, MAIN).unwrap_or_default();
        assert_eq!(for_ports(script, StackPorts::LOCAL), script);
    }
}
