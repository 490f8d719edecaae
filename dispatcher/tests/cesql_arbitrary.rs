//! Arbitrary CESQL to the lexer, parser and evaluator: never a panic or a stack overflow;
//! an expression either compiles or is refused with an error, and what compiles evaluates.
//! (proptest; more cases with `PROPTEST_CASES=100000 cargo test -p dispatcher --test
//! cesql_arbitrary`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use broker::{AttrValue, Event};
use dispatcher::cesql::Expression;
use proptest::prelude::*;

/// Text built from CESQL's own pieces, so the parser gets far, not just the lexer.
fn cesql() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("NOT "),
        Just("-"),
        Just("("),
        Just(")"),
        Just(" AND "),
        Just(" OR "),
        Just(" XOR "),
        Just(" = "),
        Just(" <> "),
        Just(" < "),
        Just(" + "),
        Just(" * "),
        Just(" / "),
        Just(" % "),
        Just(" LIKE "),
        Just(" IN ("),
        Just(", "),
        Just("EXISTS "),
        Just("TRUE"),
        Just("FALSE"),
        Just("id"),
        Just("type"),
        Just("n"),
        Just("'a%_'"),
        Just("'"),
        Just("\""),
        Just("9223372036854775807"),
        Just("-9223372036854775808"),
        Just("0"),
        Just("UPPER("),
        Just("LOWER("),
        Just("CONCAT("),
        Just("SUBSTRING("),
        Just("ABS("),
        Just("INT("),
        Just("BOOL("),
        Just("STRING("),
        Just("IS_INT("),
        Just("LENGTH("),
        Just("NOSUCH("),
    ];
    prop_oneof![
        prop::collection::vec(piece, 0..30).prop_map(|p| p.concat()),
        any::<String>(),
    ]
}

fn event() -> Event {
    Event {
        attributes: vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String("x".into())),
            ("source".into(), AttrValue::String("/s".into())),
            ("type".into(), AttrValue::String("t".into())),
            ("n".into(), AttrValue::Integer(i64::MIN)),
        ],
        data: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(3000)))]

    #[test]
    fn any_text_compiles_or_is_refused_and_what_compiles_evaluates(text in cesql()) {
        if let Ok(e) = Expression::compile(&text) {
            let _ = e.evaluate(&event());
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash(depth in 1usize..5000, kind in 0usize..3) {
        let (open, close) = match kind {
            0 => ("NOT ", ""),
            1 => ("-", ""),
            _ => ("(", ")"),
        };
        let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        if let Ok(e) = Expression::compile(&text) {
            let _ = e.evaluate(&event());
        }
    }
}

/// `PROPTEST_CASES` from the environment (a longer run by hand), else `default`: a config's
/// own case count would otherwise override the variable.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
