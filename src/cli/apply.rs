//! `ferry apply -f FILE|DIR|-`: multi-document YAML (or JSON) applied file by file. A file is
//! applied whole or not at all; every problem is reported as `FILE: document N: FIELD: MESSAGE`.

use super::client::{Client, ServerArg};
use anyhow::{bail, Context};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// A YAML file, a directory of them (*.yaml, *.yml, *.json), or - for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The namespace of documents that name none (those that do keep theirs) [default: default].
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
    #[arg(skip)]
    pub server: ServerArg,
}

/// One input file and its documents.
pub struct Source {
    pub name: String,
    pub documents: Vec<Value>,
}

/// Reads every input; a YAML syntax error anywhere stops everything before anything is applied.
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    let mut files = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            files.push(("<stdin>".to_string(), text));
        } else if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| ["yaml", "yml", "json"].contains(&e))
                })
                .collect();
            entries.sort();
            for e in entries {
                files.push((e.display().to_string(), read(&e)?));
            }
        } else {
            files.push((p.display().to_string(), read(p)?));
        }
    }
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in files {
        match parse_documents(&text) {
            Ok(documents) => sources.push(Source { name, documents }),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}\nnothing was applied", errors.join("\n"));
    }
    Ok(sources)
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Splits a multi-document YAML text into JSON values. Empty documents are skipped; a
/// `kind: List` contributes its `items`.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value =
            Value::deserialize(doc).map_err(|e| format!("document {}: YAML error: {e}", i + 1))?;
        match value {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(
                    m.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            v => out.push(v),
        }
    }
    Ok(out)
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let sources = read_sources(&args.files)?;
    let client = Client::new(&args.server)?;
    let mut failed = false;
    for mut source in sources {
        if source.documents.is_empty() {
            continue;
        }
        if let Some(ns) = &args.namespace {
            for d in &mut source.documents {
                if let Some(meta) = d.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.entry("namespace").or_insert_with(|| json!(ns));
                }
            }
        }
        let body = json!({ "documents": source.documents });
        match client
            .call(Method::POST, "/api/v1/apply", Some(&body))
            .await?
        {
            Ok(answer) => {
                for a in answer["applied"].as_array().into_iter().flatten() {
                    println!(
                        "{}.{}/{} {} (namespace {})",
                        a["kind"].as_str().unwrap_or("").to_ascii_lowercase(),
                        a["group"].as_str().unwrap_or(""),
                        a["name"].as_str().unwrap_or(""),
                        a["action"].as_str().unwrap_or(""),
                        a["namespace"].as_str().unwrap_or(""),
                    );
                }
            }
            Err(e) => {
                failed = true;
                match e.body.get("errors").and_then(Value::as_array) {
                    Some(errors) => {
                        for fe in errors {
                            let field = fe["field"].as_str().unwrap_or("");
                            let sep = if field.is_empty() { "" } else { ": " };
                            eprintln!(
                                "{}: document {}: {field}{sep}{}",
                                source.name,
                                fe["document"],
                                fe["message"].as_str().unwrap_or("")
                            );
                        }
                        eprintln!("{}: nothing in this file was applied", source.name);
                    }
                    None => eprintln!("{}: {e}", source.name),
                }
            }
        }
    }
    if failed {
        bail!("some files were not applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let docs =
            parse_documents("---\na: 1\n---\n---\nkind: List\nitems:\n- b: 2\n- c: 3\n").unwrap();
        assert_eq!(
            docs,
            vec![json!({"a": 1}), json!({"b": 2}), json!({"c": 3})]
        );
    }

    #[test]
    fn yaml_syntax_errors_name_the_document_and_line() {
        let err = parse_documents("a: 1\n---\nb: [1, 2\n").unwrap_err();
        assert!(err.starts_with("document 2: YAML error"), "{err}");
        assert!(err.contains("line"), "{err}");
    }
}
