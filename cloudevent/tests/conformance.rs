//! The CloudEvents conformance features (HTTP and Kafka bindings), read from
//! ../shared/conformance/cloudevents-features and run against Ferry's decoders.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use cloudevent::http::{decode_binary, mode, Mode};
use cloudevent::{json, kafka, validate, Event};
use http::{HeaderMap, HeaderName, HeaderValue};

/// One scenario of a feature, with an outline's example substituted.
struct Scenario {
    name: String,
    /// Doc strings in order: the message (request or payload), then the expected data.
    docs: Vec<String>,
    /// Tables by the step line that precedes them (`Kafka headers:`, `the attributes are:`).
    tables: Vec<(String, Vec<(String, String)>)>,
}

impl Scenario {
    fn table(&self, step: &str) -> &[(String, String)] {
        self.tables
            .iter()
            .find(|(s, _)| s.contains(step))
            .map(|(_, t)| t.as_slice())
            .unwrap_or(&[])
    }
}

fn feature(file: &str) -> Vec<Scenario> {
    let path = format!(
        "{}/../../shared/conformance/cloudevents-features/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    for block in text.split("\n    Scenario").skip(1) {
        let (body, examples) = match block.split_once("Examples:") {
            Some((b, e)) => (b, rows(e)),
            None => (block, vec![vec![]]),
        };
        let header = examples.first().cloned().unwrap_or_default();
        let substitutions: Vec<Vec<(String, String)>> = if block.contains("Examples:") {
            examples[1..]
                .iter()
                .map(|row| header.iter().cloned().zip(row.iter().cloned()).collect())
                .collect()
        } else {
            vec![vec![]]
        };
        for subs in substitutions {
            let mut text = body.to_string();
            for (k, v) in &subs {
                text = text.replace(&format!("<{k}>"), v);
            }
            out.push(parse_scenario(&text));
        }
    }
    out
}

fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn parse_scenario(text: &str) -> Scenario {
    let name = text.lines().next().unwrap_or("").trim().to_string();
    let mut docs = Vec::new();
    let mut tables = Vec::new();
    let mut lines = text.lines().skip(1).peekable();
    let mut step = String::new();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == "\"\"\"" {
            let indent = line.len() - line.trim_start().len();
            let mut doc = Vec::new();
            for l in lines.by_ref() {
                if l.trim() == "\"\"\"" {
                    break;
                }
                doc.push(l.get(indent..).unwrap_or(l.trim_start()));
            }
            docs.push(doc.join("\n"));
        } else if t.starts_with('|') {
            let mut block = vec![t.to_string()];
            while lines.peek().is_some_and(|l| l.trim().starts_with('|')) {
                block.push(lines.next().unwrap_or_default().trim().to_string());
            }
            let table = rows(&block.join("\n"))
                .into_iter()
                .skip(1)
                .map(|r| (r[0].clone(), r[1].clone()))
                .collect();
            tables.push((step.clone(), table));
        } else if !t.is_empty() {
            step = t.to_string();
        }
    }
    Scenario { name, docs, tables }
}

fn check(s: &Scenario, event: &Event) {
    validate(event).unwrap_or_else(|e| panic!("{}: {e}", s.name));
    for (k, v) in s.table("the attributes are") {
        assert_eq!(
            event.attr_text(k).as_deref(),
            Some(v.as_str()),
            "{}: {k}",
            s.name
        );
    }
    let got: serde_json::Value = serde_json::from_slice(event.data.as_deref().unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_str(&s.docs[1]).unwrap();
    assert_eq!(got, want, "{}", s.name);
}

#[test]
fn http_protocol_binding_feature() {
    let scenarios = feature("http-protocol-binding.feature");
    assert_eq!(scenarios.len(), 4, "two outlines, two examples each");
    for s in &scenarios {
        let request = &s.docs[0];
        let (head, body) = request.split_once("\n\n").unwrap();
        let mut headers = HeaderMap::new();
        for l in head.lines().skip(1) {
            let (k, v) = l.split_once(':').unwrap();
            headers.append(
                HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes()).unwrap(),
                HeaderValue::from_str(v.trim()).unwrap(),
            );
        }
        let body = Bytes::from(body.to_string());
        let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
        let event = match mode(ct).unwrap() {
            Mode::Binary => decode_binary(&headers, body).unwrap(),
            Mode::Structured => json::decode(&body).unwrap(),
            Mode::Batch => panic!("{}: no batch in the feature", s.name),
        };
        check(s, &event);
    }
}

#[test]
fn kafka_protocol_binding_feature() {
    let scenarios = feature("kafka-protocol-binding.feature");
    assert_eq!(
        scenarios.len(),
        3,
        "one binary scenario, a structured outline of two"
    );
    for s in &scenarios {
        let headers: Vec<(&str, Option<&[u8]>)> = s
            .table("Kafka headers")
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
            .collect();
        let event = kafka::decode(headers, Some(s.docs[0].as_bytes()))
            .unwrap_or_else(|e| panic!("{}: {e}", s.name))
            .unwrap_or_else(|| panic!("{}: not read as a CloudEvent", s.name));
        check(s, &event);
    }
}
