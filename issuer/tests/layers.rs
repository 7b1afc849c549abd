//! The issuer's folders import one way (`issuer/src/lib.rs`'s header lists the order): every
//! `crate::<module>` a source file names in code outside its tests is at or below the file's
//! own module in [`ORDER`]. Test code (`tests.rs`, `tests/` folders, `#[cfg(test)] mod tests`
//! blocks, the store's contract suite) may reach anything.
//!
//! A text check, not a compiler pass: it reads `crate::` paths in code (comments and doc
//! links are skipped) and `use` groups (`use crate::{a, b}`), which is how this crate names
//! its modules (`super::` stays inside a folder).

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
/// first segment of every member of a `use crate::{…}` group (nested groups and several
/// members a line included). Comments are skipped; a file's inline `mod tests { … }` block
/// and what follows it are test code.
fn named_modules(code: &str) -> Vec<(usize, String)> {
    fn ident(text: &str) -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    }
    let mut out = Vec::new();
    // Inside a `use crate::{` group: its brace depth, and whether the next identifier at
    // depth 1 starts a member.
    let mut group: Option<(usize, bool)> = None;
    for (number, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        // An inline test module ends the file's own code (`mod tests;` only declares one,
        // in a file of its own).
        if line.trim_start().starts_with("mod tests") && line.contains('{') {
            break;
        }
        let mut rest = line;
        while !rest.is_empty() {
            if let Some((depth, member_next)) = group.as_mut() {
                let c = rest.chars().next().unwrap_or(' ');
                match c {
                    '{' => *depth += 1,
                    '}' => {
                        *depth -= 1;
                        if *depth == 0 {
                            group = None;
                        }
                    }
                    ',' if *depth == 1 => *member_next = true,
                    c if (c.is_alphabetic() || c == '_') && *depth == 1 && *member_next => {
                        let name = ident(rest);
                        *member_next = false;
                        rest = &rest[name.len()..];
                        out.push((number + 1, name));
                        continue;
                    }
                    _ => {}
                }
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let Some(at) = rest.find("crate::") else {
                break;
            };
            let after = &rest[at + "crate::".len()..];
            if let Some(members) = after.strip_prefix('{') {
                group = Some((1, true));
                rest = members;
            } else {
                let name = ident(after);
                if !name.is_empty() {
                    out.push((number + 1, name));
                }
                rest = after;
            }
        }
    }
    out
}

/// The crate's top-level modules, from `lib.rs`'s `mod` lines.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("pub ").unwrap_or(line);
            line.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
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
        if own == "lib" || own == "main" {
            // The crate's root names every module.
            continue;
        }
        let Some(own_rank) = rank(&own) else {
            wrong.push(format!("{relative}: module {own} is not in ORDER"));
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
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for module in declared_modules(&lib) {
        if rank(&module).is_none() {
            wrong.push(format!(
                "lib.rs declares {module}, which ORDER does not rank"
            ));
        }
    }
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
                use crate::{\n    telemetry::{A, B},\n    clock::C, api::X,\n};\n\
                use crate::{error::{self, E}, app};\n\
                // crate::api in a comment\n\
                fn f() { crate::feed::read(); }\n\
                /// [`crate::app`]\n\
                #[cfg(test)]\nmod tests;\nuse crate::wechat;\n\
                #[cfg(test)]\nmod tests {\n    use crate::server;\n}\n";
    let names: Vec<String> = named_modules(code).into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        names,
        [
            "store",
            "config",
            "domain",
            "telemetry",
            "clock",
            "api",
            "error",
            "app",
            "feed",
            "wechat"
        ]
    );
}
