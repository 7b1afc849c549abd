//! The issuer's folders import one way (`issuer/src/lib.rs`'s header lists the order): every
//! `crate::<module>` a source file names in code outside its tests is at or below the file's
//! own module in [`ORDER`]. Test code (`tests.rs`, `tests/` folders, `#[cfg(test)] mod tests`
//! blocks, the store's contract suite) may reach anything.
//!
//! A text check, not a compiler pass: it reads `crate::` paths in code (comments and doc
//! links are skipped) and `use` groups (`use crate::{a, b}`), which is how this crate names
//! its modules (`super::` stays inside a folder).

// Test code: unwrap/expect/panic are how a test fails (the lints guard the service code).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// The issuer's top-level modules, lowest first; a module may name those of its own rank or
/// below. Kept in step with `issuer/src/lib.rs`'s header.
const ORDER: &[&[&str]] = &[
    &["clock", "secrets", "apisec"],
    &["config"],
    &["domain"],
    &["telemetry"],
    &["store"],
    &["wechat"],
    &["error"],
    &["feed"],
    &["service"],
    &["app"],
    &["api"],
    &["server", "cli"],
];

fn rank(module: &str) -> Option<usize> {
    ORDER.iter().position(|rank| rank.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Whether `relative` (to `issuer/src`) holds only test code.
fn is_test_file(relative: &str) -> bool {
    relative.ends_with("/tests.rs")
        || relative.contains("/tests/")
        || relative.starts_with("store/contract/")
}

/// The modules `code` names as `crate::<module>`, with their lines: paths in code, and the
/// members of `use crate::{…}` groups. Comments are skipped; a file's `#[cfg(test)] mod
/// tests` block and what follows it are test code.
fn named_modules(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_group = false;
    for (number, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        // An inline test module ends the file's own code (`mod tests;` only declares one,
        // in a file of its own).
        if line.trim_start().starts_with("mod tests") && line.contains('{') {
            break;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() && after.starts_with('{') {
                let group: String = after.chars().skip(1).collect();
                for member in group.split([',', '}']) {
                    let member: String = member
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !member.is_empty() {
                        out.push((number + 1, member));
                    }
                }
                in_group = !after.contains('}');
            } else if !name.is_empty() {
                out.push((number + 1, name));
            }
            rest = after;
        }
        if in_group && !line.contains("crate::") {
            // The next lines of a `use crate::{` group: each starts with a member.
            let member: String = line
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !member.is_empty() {
                out.push((number + 1, member));
            }
            if line.contains('}') {
                in_group = false;
            }
        }
    }
    out
}

#[test]
fn the_issuers_folders_import_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen = 0;
    for file in files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let own = relative
            .split(['/', '.'])
            .next()
            .unwrap_or_default()
            .to_string();
        let Some(own_rank) = rank(&own) else {
            // lib.rs, main.rs: the crate's root names every module.
            continue;
        };
        if is_test_file(&relative) {
            continue;
        }
        let code = std::fs::read_to_string(&file).unwrap();
        for (line, module) in named_modules(&code) {
            seen += 1;
            if rank(&module).is_some_and(|named| named > own_rank) {
                wrong.push(format!("{relative}:{line}: {own} names crate::{module}"));
            }
        }
    }
    assert!(seen > 100, "the check read the sources ({seen} names)");
    assert!(
        wrong.is_empty(),
        "imports against the layer order (issuer/src/lib.rs):\n{}",
        wrong.join("\n")
    );
}

/// The reader finds what the check relies on.
#[test]
fn named_modules_reads_paths_groups_and_skips_comments_and_tests() {
    let code = "use crate::store::Store;\n\
                use crate::{\n    config::Config,\n    domain,\n};\n\
                // crate::api in a comment\n\
                fn f() { crate::feed::read(); }\n\
                /// [`crate::app`]\n\
                #[cfg(test)]\nmod tests;\nuse crate::wechat;\n\
                #[cfg(test)]\nmod tests {\n    use crate::server;\n}\n";
    let names: Vec<String> = named_modules(code).into_iter().map(|(_, m)| m).collect();
    assert_eq!(names, ["store", "config", "domain", "feed", "wechat"]);
}
