//! BuildKit's own conformance data for the Dockerfile parser and the shell lexer, read from
//! the shared vectors folder (`../shared/vectors/buildkit-dockerfile`, or
//! `$KILN_SHARED_VECTORS/buildkit-dockerfile`). Every case is run and every failure is
//! reported by name before the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use kiln_engine::frontend::parser::{dump, parse};
use kiln_engine::frontend::shell::Lexer;

fn vectors() -> Option<PathBuf> {
    let dir = match std::env::var_os("KILN_SHARED_VECTORS") {
        Some(v) => PathBuf::from(v).join("buildkit-dockerfile"),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/vectors/buildkit-dockerfile"
        )),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: {} not found", dir.display());
        None
    }
}

fn case_dirs(dir: PathBuf) -> Vec<(String, PathBuf)> {
    let mut cases: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    cases.sort();
    cases
}

fn report(what: &str, total: usize, failures: &[String]) {
    println!("{what}: {} of {total} passed", total - failures.len());
    assert!(
        failures.is_empty(),
        "{} {what} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_buildkit_parser_case_dumps_like_buildkit() {
    let Some(root) = vectors() else { return };
    let cases = case_dirs(root.join("parser"));
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for (name, dir) in &cases {
        let src = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let want = fs::read_to_string(dir.join("result")).unwrap();
        match parse(&src) {
            Ok(ast) => {
                let got = dump(&ast);
                if got != want {
                    failures.push(format!(
                        "{name}: dump differs\n--- got\n{got}--- want\n{want}"
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: parse error: {e}")),
        }
    }
    report("parser", cases.len(), &failures);
}

#[test]
fn every_buildkit_negative_case_is_rejected() {
    let Some(root) = vectors() else { return };
    let cases = case_dirs(root.join("parser-negative"));
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for (name, dir) in &cases {
        let src = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        if let Ok(ast) = parse(&src) {
            failures.push(format!("{name}: accepted:\n{}", dump(&ast)));
        }
    }
    report("parser-negative", cases.len(), &failures);
}

fn env_var_test_env() -> BTreeMap<String, String> {
    [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn every_envvartest_line_expands_like_buildkit() {
    let Some(root) = vectors() else { return };
    let text = fs::read_to_string(root.join("shell/envVarTest")).unwrap();
    let env = env_var_test_env();
    let lexer = Lexer::new('\\');
    let (mut total, mut failures) = (0, Vec::new());
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(parts.len(), 3, "envVarTest line {}: {line}", n + 1);
        let platform = parts[0].trim();
        if !(platform == "A" || platform == "U") {
            continue; // W: Windows-only (case-insensitive variable names)
        }
        total += 1;
        let (input, want) = (parts[1].trim(), parts[2].trim());
        let got = lexer.process_word(input, &env);
        let ok = match (&got, want) {
            (Err(_), "error") => true,
            (Ok(g), w) => g == w,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "envVarTest line {}: {input:?}: got {got:?}, want {want:?}",
                n + 1
            ));
        }
    }
    report("envVarTest", total, &failures);
}

#[test]
fn every_wordstest_line_splits_like_buildkit() {
    let Some(root) = vectors() else { return };
    let text = fs::read_to_string(root.join("shell/wordsTest")).unwrap();
    let mut env = BTreeMap::new();
    let lexer = Lexer::new('\\');
    let (mut total, mut failures) = (0, Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(kv) = line.strip_prefix("ENV ") {
            let (k, v) = kv.split_once('=').unwrap();
            env.insert(k.to_string(), v.to_string());
            continue;
        }
        let (input, want) = line.split_once('|').unwrap();
        // As BuildKit's test: only leading blanks are trimmed from the expectation.
        let (input, want) = (input.trim(), want.trim_start_matches(' '));
        total += 1;
        let got = lexer.process_words(input, &env);
        let ok = match (&got, want) {
            (Err(_), "error") => true,
            (Ok(words), w) => words.join(",") == w,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "wordsTest line {}: {input:?}: got {got:?}, want {want:?}",
                n + 1
            ));
        }
    }
    report("wordsTest", total, &failures);
}
