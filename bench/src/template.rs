//! Rendering of the Envoy templates in `bench/envoy/` (embedded at build time) by plain
//! `{{NAME}}` replacement.
//!
//! Full-line `#` comments are dropped first (they document the placeholders, and must not be
//! rendered). A multi-line value is indented to the placeholder's column on every line after
//! the first, so YAML fragments nest where they are put. Rendering fails if a value is given
//! for a name the template lacks, or if a `{{` is left over.

use thiserror::Error;

/// The bootstrap: admin, `{{LISTENERS}}`, `{{CLUSTERS}}`.
pub const EDGE: &str = include_str!("../envoy/edge.yaml");
/// One listener: a direct_response route behind `{{HTTP_FILTERS}}`.
pub const LISTENER: &str = include_str!("../envoy/listener.yaml");
/// jwt_authn with inline JWKS.
pub const JWT_AUTHN: &str = include_str!("../envoy/jwt_authn.yaml");
/// HTTP ext_authz to the revocation check.
pub const EXT_AUTHZ: &str = include_str!("../envoy/ext_authz.yaml");
/// The weauth wasm filter.
pub const WEAUTH: &str = include_str!("../envoy/weauth.yaml");
/// The weauth filter's native build (an Envoy dynamic module).
pub const WEAUTH_NATIVE: &str = include_str!("../envoy/weauth-native.yaml");
/// A static loopback cluster.
pub const CLUSTER: &str = include_str!("../envoy/cluster.yaml");

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("the template has no placeholder {{{{{0}}}}}")]
    UnknownName(String),
    #[error("placeholder left unrendered near: {0}")]
    Leftover(String),
}

/// Renders `template` with `values`.
pub fn render(template: &str, values: &[(&str, &str)]) -> Result<String, TemplateError> {
    let mut text: String = template
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    for (name, value) in values {
        let placeholder = format!("{{{{{name}}}}}");
        if !text.contains(&placeholder) {
            return Err(TemplateError::UnknownName((*name).to_string()));
        }
        let mut out = String::with_capacity(text.len() + value.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find(&placeholder) {
            let before = &rest[..at];
            let column = before.len() - before.rfind('\n').map_or(0, |nl| nl + 1);
            let pad = " ".repeat(column);
            out.push_str(before);
            let mut lines = value.trim_end_matches('\n').split('\n');
            out.push_str(lines.next().unwrap_or(""));
            for line in lines {
                out.push('\n');
                if !line.is_empty() {
                    out.push_str(&pad);
                }
                out.push_str(line);
            }
            rest = &rest[at + placeholder.len()..];
        }
        out.push_str(rest);
        text = out;
    }
    if let Some(at) = text.find("{{") {
        let end = (at + 40).min(text.len());
        let near = text.get(at..end).unwrap_or("{{").to_string();
        return Err(TemplateError::Leftover(near));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_multiline_value_indented_to_column() {
        let out = render("a:\n  {{X}}\nb: 1\n", &[("X", "- one\n- two\n")]).unwrap();
        assert_eq!(out, "a:\n  - one\n  - two\nb: 1\n");
    }

    #[test]
    fn render_comment_lines_dropped() {
        let out = render("# uses {{X}}\nv: {{X}}\n", &[("X", "1")]).unwrap();
        assert_eq!(out, "v: 1\n");
    }

    #[test]
    fn render_unknown_name_is_error() {
        assert_eq!(
            render("v: 1\n", &[("X", "1")]),
            Err(TemplateError::UnknownName("X".into()))
        );
    }

    #[test]
    fn render_leftover_placeholder_is_error() {
        assert!(matches!(
            render("v: {{X}}\nw: {{Y}}\n", &[("X", "1")]),
            Err(TemplateError::Leftover(_))
        ));
    }

    #[test]
    fn embedded_edge_template_renders_with_all_names() {
        let cluster = render(CLUSTER, &[("NAME", "feed"), ("PORT", "1")]).unwrap();
        let listener = render(
            LISTENER,
            &[
                ("NAME", "bench"),
                ("LISTEN_PORT", "1"),
                ("HTTP_FILTERS", ""),
            ],
        )
        .unwrap();
        let out = render(
            EDGE,
            &[
                ("ADMIN_PORT", "2"),
                ("LISTENERS", &listener),
                ("CLUSTERS", &cluster),
            ],
        )
        .unwrap();
        assert!(out.contains("    - name: bench\n      address:\n"));
        assert!(out.contains("port_value: 1 }"));
        assert!(out.contains("                stat_prefix: bench\n"));
        assert!(out.contains("    - name: feed\n      type: STATIC\n"));
    }
}
