//! README.md's settings tables, derived from the declarations: the test
//! below fails when they differ, and prints the tables to paste.

use super::{Fallback, Kind, Setting, GROUPS};

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
const BEGIN: &str = "<!-- settings: generated from crates/herald-cli/src/settings.rs -->";
const END: &str = "<!-- end of settings -->";

fn row(s: &Setting) -> String {
    let key = match s.kind {
        Kind::Issuers | Kind::Bridges => format!("[[{}]]", s.name),
        _ => s.name.to_owned(),
    };
    let default = match s.default {
        Fallback::Value(v) => format!("`{v}`"),
        Fallback::Unset(what) => what.to_owned(),
    };
    format!(
        "| `{key}` / `--{}` | `{}` | {default} | {} |",
        s.flag(),
        s.variable(),
        s.help
    )
}

/// The tables README.md must hold between [`BEGIN`] and [`END`].
fn tables() -> String {
    let mut out = String::new();
    for g in GROUPS {
        match g.engines {
            [] => {}
            [e] => out.push_str(&format!(
                "\nSettings of the `{e}` engine, refused with another engine:\n\n"
            )),
            [rest @ .., last] => out.push_str(&format!(
                "\nSettings of the {} and `{last}` engines, refused with another engine:\n\n",
                rest.iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        out.push_str("| setting (TOML / `--flag`) | variable | default | meaning |\n");
        out.push_str("|---|---|---|---|\n");
        for s in g.settings {
            out.push_str(&row(s));
            out.push('\n');
        }
    }
    out
}

#[test]
fn readme_tables_match_the_declarations() {
    let readme = std::fs::read_to_string(README).unwrap();
    let start = readme
        .find(BEGIN)
        .unwrap_or_else(|| panic!("README.md lacks the line {BEGIN}"));
    let end = readme
        .find(END)
        .unwrap_or_else(|| panic!("README.md lacks the line {END}"));
    let written = readme[start + BEGIN.len()..end].trim();
    let expected = tables();
    if written == expected.trim() {
        return;
    }
    let missing: Vec<&str> = expected.lines().filter(|l| !written.contains(l)).collect();
    let extra: Vec<&str> = written
        .lines()
        .filter(|l| !expected.lines().any(|e| e == *l))
        .collect();
    panic!(
        "README.md's settings tables differ from the declarations in settings.rs.\n\
         Lines the declarations give but README lacks:\n{}\n\
         Lines in README no declaration gives:\n{}\n\
         Replace the lines between the two markers with:\n\n{}",
        missing.join("\n"),
        extra.join("\n"),
        expected.trim()
    );
}
