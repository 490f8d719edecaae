//! The CESQL TCK (../shared/conformance/cesql-tck): every case of every file.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use broker::{AttrValue, Event};
use dispatcher::cesql::{ErrorKind, Expression, Value};
use serde::Deserialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct File {
    name: String,
    tests: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    expression: String,
    result: Option<Json>,
    error: Option<String>,
    event: Option<BTreeMap<String, Json>>,
    event_overrides: Option<BTreeMap<String, Json>>,
}

fn attr(v: &Json) -> AttrValue {
    match v {
        Json::Bool(b) => AttrValue::Boolean(*b),
        Json::Number(n) => AttrValue::Integer(n.as_i64().unwrap()),
        Json::String(s) => AttrValue::String(s.clone()),
        other => AttrValue::String(other.to_string()),
    }
}

fn event(case: &Case) -> Event {
    let mut attrs: BTreeMap<String, Json> = match &case.event {
        Some(e) => e.clone(),
        None => [
            ("specversion", "1.0"),
            ("id", "123"),
            ("source", "/source"),
            ("type", "type"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Json::String(v.into())))
        .collect(),
    };
    for (k, v) in case.event_overrides.iter().flatten() {
        attrs.insert(k.clone(), v.clone());
    }
    Event {
        attributes: attrs.iter().map(|(k, v)| (k.clone(), attr(v))).collect(),
        data: None,
    }
}

fn kind(s: &str) -> ErrorKind {
    match s {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingAttribute" => ErrorKind::MissingAttribute,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        other => panic!("unknown error kind {other}"),
    }
}

fn expected_value(v: &Json) -> Value {
    match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Int(n.as_i64().unwrap() as i32),
        Json::String(s) => Value::Str(s.clone()),
        other => panic!("unexpected result {other}"),
    }
}

#[test]
fn every_tck_case_passes() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/cesql-tck"
    );
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    let mut failures = Vec::new();
    let mut count = 0;
    for path in &paths {
        let file: File = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for case in &file.tests {
            count += 1;
            let label = format!("{} / {}: {}", file.name, case.name, case.expression);
            let want_error = case.error.as_deref().map(kind);
            match Expression::compile(&case.expression) {
                Err(e) => {
                    if want_error != Some(e.kind) {
                        failures.push(format!(
                            "{label}: compile error {e}, expected {:?}",
                            case.error
                        ));
                    }
                }
                Ok(expr) => {
                    let got = expr.evaluate(&event(case));
                    if got.error != want_error {
                        failures.push(format!(
                            "{label}: error {:?}, expected {want_error:?}",
                            got.error
                        ));
                    }
                    if let Some(want) = &case.result {
                        if got.value != expected_value(want) {
                            failures.push(format!("{label}: {:?}, expected {want}", got.value));
                        }
                    }
                }
            }
        }
    }
    assert_eq!(count, 275, "the TCK has 275 cases");
    assert!(
        failures.is_empty(),
        "{} of {count} TCK cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn compile_errors_say_where() {
    let e = Expression::compile("type = 'a' AND (").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Parse);
    assert_eq!(e.column, 17);
    let e = Expression::compile("NOPE(1)").unwrap_err();
    assert_eq!(e.kind, ErrorKind::MissingFunction);
    assert!(e.to_string().contains("NOPE"), "{e}");
    let e = Expression::compile("source LIKE 'x").unwrap_err();
    assert_eq!(e.column, 13);
}

#[test]
fn filters_match_only_true_without_error() {
    let ev = Event {
        attributes: vec![
            ("type".into(), AttrValue::String("order.created".into())),
            ("amount".into(), AttrValue::String("250".into())),
        ],
        data: None,
    };
    assert!(Expression::compile("type LIKE 'order.%' AND amount > 100")
        .unwrap()
        .matches(&ev));
    assert!(!Expression::compile("amount > 1000").unwrap().matches(&ev));
    assert!(
        !Expression::compile("missing = 'x' OR NOT (missing = 'x')")
            .unwrap()
            .matches(&ev),
        "an error means no match"
    );
    assert!(
        !Expression::compile("'abc'").unwrap().matches(&ev),
        "a non-boolean result means no match"
    );
}

#[test]
fn hostile_expressions_are_refused_not_a_stack_overflow() {
    // Each was enough to kill the server (issue "Hardening"): deep NOTs, signs, parentheses.
    for text in [
        format!("{}TRUE", "NOT ".repeat(60_000)),
        format!("{}1 = 1", "- ".repeat(60_000)),
        format!("{}TRUE{}", "(".repeat(60_000), ")".repeat(60_000)),
        format!("{}1{}", "ABS(".repeat(10_000), ")".repeat(10_000)),
    ] {
        let e = Expression::compile(&text).expect_err("too deep or too long");
        assert_eq!(e.kind, ErrorKind::Parse);
        assert!(
            e.message.contains("nests deeper") || e.message.contains("tokens"),
            "{}",
            e.message
        );
    }
    // A long chain is a deep tree: refused past the token limit.
    let chain = vec!["TRUE"; 3000].join(" AND ");
    assert!(Expression::compile(&chain).is_err());
    // What real filters look like still compiles: 64 levels, 1000 terms.
    let nested = format!("{}TRUE{}", "(".repeat(60), ")".repeat(60));
    assert!(Expression::compile(&nested).is_ok());
    let long = vec!["type = 'a'"; 300].join(" OR ");
    assert!(Expression::compile(&long).is_ok());
}
