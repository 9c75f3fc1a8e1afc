//! The crates' modules form no import cycle, and herald's layers only point
//! down: transports use the routes, the routes use the core, the core uses
//! configuration, telemetry, authorization and engines, never the other
//! way round. Read from the sources: every `crate::…` and `super::…` path
//! outside comments and unit-test modules is an edge from the module it is
//! written in to the deepest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// herald's top-level modules, from the top layer down. A module may use
/// its own layer and those below it.
const LAYERS: &[&[&str]] = &[
    &["transport"],
    &["http"],
    &["hub"],
    &["config", "telemetry"],
    &["auth"],
    &["engine"],
];

/// Module path (`a::b`, the root is empty) → its source file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, src, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            if parts.first().is_some_and(|p| p == "bin") {
                continue;
            }
            out.insert(parts.join("::"), path);
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The code of a file without comments, strings' contents and its inline
/// test modules (whose `super` is the file itself), which come last.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut in_str = false;
        let mut escaped = false;
        for c in line.chars() {
            if in_str && std::mem::take(&mut escaped) {
                continue;
            }
            match c {
                '\\' if in_str => escaped = true,
                '"' => {
                    in_str = !in_str;
                    out.push(c);
                }
                _ if !in_str => out.push(c),
                _ => {}
            }
        }
        out.push('\n');
    }
    out
}

/// Every path (`crate::a::b::C`, `super::x`, `self::x`, or one starting
/// with the name of one of `children`, with `{…}` groups expanded) written
/// in `code`, as segments.
fn paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    fn ident(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }
    // Expands `prefix::{a::B, c}` into whole paths.
    fn expand(prefix: &[String], rest: &str, out: &mut Vec<Vec<String>>) {
        let rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            let mut end = group.len();
            let mut items = Vec::new();
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&group[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            items.push(&group[start..end]);
            for item in items {
                expand(prefix, item, out);
            }
            return;
        }
        let mut segs = prefix.to_vec();
        let mut s = rest;
        loop {
            let len = s.find(|c: char| !ident(c)).unwrap_or(s.len());
            if len == 0 {
                break;
            }
            segs.push(s[..len].to_owned());
            s = &s[len..];
            match s.strip_prefix("::") {
                Some(r) if r.starts_with('{') => return expand(&segs, r, out),
                Some(r) => s = r,
                None => break,
            }
        }
        out.push(segs);
    }
    let mut out = Vec::new();
    for (i, _) in code.match_indices("::") {
        // The path's first segment must be `crate`, `super`, `self` or a
        // child module.
        let before = &code[..i];
        let start = before.rfind(|c: char| !ident(c)).map_or(0, |j| j + 1);
        let first = &before[start..];
        if !matches!(first, "crate" | "super" | "self") && !children.contains(first) {
            continue;
        }
        // Only the start of a path: `super::super::x` is seen once.
        if code[..start].ends_with("::") {
            continue;
        }
        expand(&[first.to_owned()], &code[i + 2..], &mut out);
    }
    out
}

/// The module a path written in module `from` names: the deepest module
/// its leading segments reach.
fn resolve(from: &str, path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut here: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let mut segs = path;
    match segs.first().map(String::as_str) {
        Some("crate") => {
            here.clear();
            segs = &segs[1..];
        }
        Some("super") => {
            while segs.first().map(String::as_str) == Some("super") {
                here.pop();
                segs = &segs[1..];
            }
        }
        Some("self") => segs = &segs[1..],
        // A child module, named from its parent.
        Some(_) => {}
        None => return None,
    }
    let mut module = here.join("::");
    for s in segs {
        let next = if module.is_empty() {
            s.clone()
        } else {
            format!("{module}::{s}")
        };
        if !known.contains_key(&next) {
            break;
        }
        module = next;
    }
    Some(module)
}

/// Module → the modules it uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(src);
    let mut g = BTreeMap::new();
    for (module, file) in &known {
        let code = code(&std::fs::read_to_string(file).unwrap());
        let prefix = if module.is_empty() {
            String::new()
        } else {
            format!("{module}::")
        };
        let children: BTreeSet<String> = known
            .keys()
            .filter_map(|m| m.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains("::"))
            .map(str::to_owned)
            .collect();
        let edges: BTreeSet<String> = paths(&code, &children)
            .iter()
            .filter_map(|p| resolve(module, p, &known))
            .filter(|m| m != module)
            .collect();
        g.insert(module.clone(), edges);
    }
    g
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn no_crate_has_an_import_cycle() {
    for name in ["herald", "herald-protocol", "herald-cli"] {
        let g = graph(&crate_src(name));
        assert!(g.len() > 3, "{name}: too few modules found: {g:?}");
        let found = cycles(&g);
        assert!(found.is_empty(), "{name}: import cycles: {found:?}");
    }
}

#[test]
fn herald_layers_point_down() {
    let g = graph(&crate_src("herald"));
    let layer = |m: &str| {
        let top = m.split("::").next().unwrap_or("");
        LAYERS.iter().position(|l| l.contains(&top))
    };
    let mut wrong = Vec::new();
    for (from, tos) in &g {
        let Some(lf) = layer(from) else { continue };
        for to in tos {
            let Some(lt) = layer(to) else { continue };
            let same_group = from.split("::").next() == to.split("::").next();
            if lt < lf || (lt == lf && !same_group) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports pointing up or sideways: {wrong:#?}"
    );
    // The checker sees the layers it checks.
    for top in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            g.keys().any(|m| m.split("::").next() == Some(*top)),
            "no module {top}"
        );
    }
    assert!(
        g["transport::server"].contains("http::router"),
        "{:?}",
        g["transport::server"]
    );
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    g.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    g.insert("d".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
    let children = BTreeSet::from(["child".to_owned()]);
    let p = paths(
        "use super::{error::HttpError, policy::{A, B}};\nlet x = crate::hub::Hub::new();\npub use child::C;",
        &children,
    );
    assert!(p.contains(&vec!["child".into(), "C".into()]), "{p:?}");
    assert!(
        p.contains(&vec!["super".into(), "error".into(), "HttpError".into()]),
        "{p:?}"
    );
    assert!(
        p.contains(&vec!["super".into(), "policy".into(), "B".into()]),
        "{p:?}"
    );
    assert!(
        p.contains(&vec![
            "crate".into(),
            "hub".into(),
            "Hub".into(),
            "new".into()
        ]),
        "{p:?}"
    );
}
