//! `docs/CONFIGURATION.md`'s table of the issuer's variables, rendered from [`VARIABLES`] (the
//! table `--help` prints and the parsing takes its defaults from), and the test that fails when
//! the committed file and the code differ.
//!
//! The table sits between [`BEGIN`] and [`END`] in the file; everything else there is written by
//! hand. `make docs` (`UPDATE_DOCS=1 cargo test -p weauth-issuer --lib config_reference`)
//! rewrites the table from the code.

use crate::config::VARIABLES;

/// The line before the generated table.
pub const BEGIN: &str = "<!-- generated from VARIABLES in issuer/src/config/variables.rs by `make docs`: edit the code, not this table -->";
/// The line after it.
pub const END: &str = "<!-- end of the generated table -->";

/// The variables as a Markdown table: name (with its `_FILE` variant), default, meaning.
pub fn table() -> String {
    let mut out = String::from("| variable | default | |\n|---|---|---|\n");
    for v in VARIABLES {
        let name = if v.file {
            format!("`{}` (or `{}_FILE`)", v.name, v.name)
        } else {
            format!("`{}`", v.name)
        };
        let default = if v.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", v.default)
        };
        out.push_str(&format!(
            "| {name} | {default} | {} |\n",
            markdown_text(v.help)
        ));
    }
    out
}

/// `text` safe in a Markdown table cell outside code spans: `|`, `<`, `>` and `*` would be read
/// as a cell break, an HTML tag or emphasis.
fn markdown_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '*' => out.push_str("\\*"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// `doc` with the text between the [`BEGIN`] and [`END`] lines replaced by `table`; `None` when
/// a marker is missing.
pub fn with_table(doc: &str, table: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let stop = start + doc[start..].find(END)?;
    Some(format!("{}\n{table}{}", &doc[..start], &doc[stop..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIGURATION.md");

    #[test]
    fn config_reference_equals_the_variable_table() {
        let committed = std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("{DOC}: {e}"));
        let generated = with_table(&committed, &table())
            .unwrap_or_else(|| panic!("{DOC} lacks the lines `{BEGIN}` and `{END}`"));
        if generated == committed {
            return;
        }
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(DOC, generated).unwrap_or_else(|e| panic!("{DOC}: {e}"));
            return;
        }
        panic!(
            "docs/CONFIGURATION.md's variable table differs from VARIABLES in issuer/src/config/variables.rs; \
             regenerate it with `make docs` (or `UPDATE_DOCS=1 cargo test -p weauth-issuer --lib \
             config_reference`) and commit the file"
        );
    }

    #[test]
    fn table_has_a_row_per_variable_with_its_default() {
        let table = table();
        assert_eq!(table.lines().count(), VARIABLES.len() + 2);
        assert!(table.contains("| `WEAUTH_ACCESS_TTL` | `15m` |"));
        assert!(table.contains("| `WEAUTH_DATA_KEY` (or `WEAUTH_DATA_KEY_FILE`) | — |"));
        assert!(table.contains("&lt;db&gt;.datakey"), "{table}");
    }

    #[test]
    fn with_table_replaces_only_between_the_markers() {
        let doc = format!("intro\n{BEGIN}\nold\n{END}\nrest\n");
        assert_eq!(
            with_table(&doc, "new\n").as_deref(),
            Some(format!("intro\n{BEGIN}\nnew\n{END}\nrest\n").as_str())
        );
        assert_eq!(with_table("no markers", "new\n"), None);
    }
}
