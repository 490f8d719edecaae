//! Trigger filters: Knative's `filter.attributes` and the Subscriptions API dialects of
//! `filters` (`exact`, `prefix`, `suffix`, `all`, `any`, `not`, `cesql`). Compiled once from the
//! trigger's spec; matching is a pure function of the event. Filters never look at data.

use crate::cesql::Expression;
use broker::Event;
use serde_json::Value;

/// A compiled filter.
#[derive(Clone, Debug)]
pub enum Filter {
    /// Matches every event (no filter, or empty `filters`).
    Everything,
    /// `filter.attributes`: every key present; a non-empty value must match exactly.
    Attributes(Vec<(String, String)>),
    Exact(Vec<(String, String)>),
    Prefix(Vec<(String, String)>),
    Suffix(Vec<(String, String)>),
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Cesql(Box<Expression>),
}

/// How deep `all`/`any`/`not` may nest in `filters`.
pub const MAX_FILTER_NESTING: usize = 16;
/// How many dialects `filters` may hold in all, nested ones included.
pub const MAX_FILTERS: usize = 256;

/// A problem in a filter, with the field path (`spec.filters[1].cesql`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub field: String,
    pub message: String,
}

impl Filter {
    /// Compiles a trigger's `spec.filter` and `spec.filters` (`filters` wins when non-empty).
    pub fn compile(
        filter: Option<&Value>,
        filters: Option<&Value>,
    ) -> Result<Filter, Vec<FilterError>> {
        let mut errors = Vec::new();
        let compiled = match filters {
            Some(Value::Array(list)) if !list.is_empty() => {
                let mut c = Compiling {
                    errors: &mut errors,
                    count: 0,
                };
                let all: Vec<Filter> = list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, f)| c.dialect(&format!("spec.filters[{i}]"), f, 1))
                    .collect();
                Filter::All(all)
            }
            Some(Value::Array(_)) | Some(Value::Null) | None => match filter {
                None | Some(Value::Null) => Filter::Everything,
                Some(f) => legacy(f, &mut errors),
            },
            Some(_) => {
                errors.push(err("spec.filters", "must be a list of filters"));
                Filter::Everything
            }
        };
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors)
        }
    }

    pub fn matches(&self, event: &Event) -> bool {
        let text = |name: &str| event.attr_text(name);
        match self {
            Filter::Everything => true,
            Filter::Attributes(pairs) => pairs.iter().all(|(k, v)| match text(k) {
                Some(actual) => v.is_empty() || actual == v.as_str(),
                None => false,
            }),
            Filter::Exact(pairs) => pairs
                .iter()
                .all(|(k, v)| text(k).is_some_and(|a| a == v.as_str())),
            Filter::Prefix(pairs) => pairs
                .iter()
                .all(|(k, v)| text(k).is_some_and(|a| a.starts_with(v.as_str()))),
            Filter::Suffix(pairs) => pairs
                .iter()
                .all(|(k, v)| text(k).is_some_and(|a| a.ends_with(v.as_str()))),
            Filter::All(fs) => fs.iter().all(|f| f.matches(event)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(event)),
            Filter::Not(f) => !f.matches(event),
            Filter::Cesql(e) => e.matches(event),
        }
    }
}

fn err(field: &str, message: impl Into<String>) -> FilterError {
    FilterError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn is_attribute_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// `filter: {attributes: {...}}`.
fn legacy(f: &Value, errors: &mut Vec<FilterError>) -> Filter {
    let Some(obj) = f.as_object() else {
        errors.push(err("spec.filter", "must be a mapping with attributes"));
        return Filter::Everything;
    };
    for key in obj.keys().filter(|k| *k != "attributes") {
        errors.push(err(&format!("spec.filter.{key}"), "unknown field"));
    }
    match obj.get("attributes") {
        None | Some(Value::Null) => Filter::Everything,
        Some(Value::Object(attrs)) => {
            let mut pairs = Vec::new();
            for (k, v) in attrs {
                let field = format!("spec.filter.attributes.{k}");
                if !is_attribute_name(k) {
                    errors.push(err(
                        &field,
                        "attribute names are lower-case letters and digits, starting with a letter",
                    ));
                }
                match v.as_str() {
                    Some(s) => pairs.push((k.clone(), s.to_string())),
                    None => errors.push(err(&field, "must be a string")),
                }
            }
            Filter::Attributes(pairs)
        }
        Some(_) => {
            errors.push(err(
                "spec.filter.attributes",
                "must be a mapping of attribute to value",
            ));
            Filter::Everything
        }
    }
}

/// The state of one `filters` compilation: its errors and the dialects met so far.
struct Compiling<'a> {
    errors: &'a mut Vec<FilterError>,
    count: usize,
}

impl Compiling<'_> {
    /// One element of `filters` at nesting `depth` (the top level is 1): exactly one dialect.
    fn dialect(&mut self, path: &str, f: &Value, depth: usize) -> Option<Filter> {
        // Counted first: however many filters are too deep, their errors are bounded too.
        self.count += 1;
        if self.count > MAX_FILTERS {
            if self.count == MAX_FILTERS + 1 {
                self.errors.push(err(
                    path,
                    format!(
                        "a trigger may hold at most {MAX_FILTERS} filters, nested ones included"
                    ),
                ));
            }
            return None;
        }
        if depth > MAX_FILTER_NESTING {
            self.errors.push(err(
                path,
                format!("filters nest deeper than {MAX_FILTER_NESTING} levels of all/any/not"),
            ));
            return None;
        }
        let Some(obj) = f.as_object() else {
            self.errors.push(err(
                path,
                "must be a mapping with one dialect (exact, prefix, suffix, all, any, not, cesql)",
            ));
            return None;
        };
        if obj.len() != 1 {
            let found: Vec<&str> = obj.keys().map(String::as_str).collect();
            self.errors.push(err(
                path,
                format!(
                    "needs exactly one dialect, found {}: {}",
                    obj.len(),
                    found.join(", ")
                ),
            ));
            return None;
        }
        let (name, body) = obj.iter().next()?;
        let field = format!("{path}.{name}");
        match name.as_str() {
            "exact" | "prefix" | "suffix" => {
                let pairs = string_map(&field, body, self.errors)?;
                Some(match name.as_str() {
                    "exact" => Filter::Exact(pairs),
                    "prefix" => Filter::Prefix(pairs),
                    _ => Filter::Suffix(pairs),
                })
            }
            "all" | "any" => {
                let Some(list) = body.as_array().filter(|l| !l.is_empty()) else {
                    self.errors
                        .push(err(&field, "needs a list of at least one filter"));
                    return None;
                };
                let children: Vec<Filter> = list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, f)| self.dialect(&format!("{field}[{i}]"), f, depth + 1))
                    .collect();
                Some(if name == "all" {
                    Filter::All(children)
                } else {
                    Filter::Any(children)
                })
            }
            "not" => self
                .dialect(&field, body, depth + 1)
                .map(|f| Filter::Not(Box::new(f))),
            "cesql" => match body.as_str() {
                Some(text) => match Expression::compile(text) {
                    Ok(e) => Some(Filter::Cesql(Box::new(e))),
                    Err(e) => {
                        // The expression quoted, cut if long (a refused one may be huge).
                        let shown: String = text.chars().take(200).collect();
                        let more = if shown.len() < text.len() { "..." } else { "" };
                        self.errors
                            .push(err(&field, format!("{e} in {shown:?}{more}")));
                        None
                    }
                },
                None => {
                    self.errors
                        .push(err(&field, "must be a CESQL expression string"));
                    None
                }
            },
            other => {
                self.errors.push(err(
                    &field,
                    format!(
                        "unknown dialect {other:?} (exact, prefix, suffix, all, any, not, cesql)"
                    ),
                ));
                None
            }
        }
    }
}

/// A non-empty map of attribute → non-empty string.
fn string_map(
    field: &str,
    body: &Value,
    errors: &mut Vec<FilterError>,
) -> Option<Vec<(String, String)>> {
    let Some(obj) = body.as_object().filter(|o| !o.is_empty()) else {
        errors.push(err(field, "needs a mapping of attribute to value"));
        return None;
    };
    let mut pairs = Vec::new();
    for (k, v) in obj {
        match v.as_str() {
            Some(s) if !s.is_empty() && !k.is_empty() => pairs.push((k.clone(), s.to_string())),
            _ => errors.push(err(
                &format!("{field}.{k}"),
                "keys and values must be non-empty strings",
            )),
        }
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::AttrValue;
    use serde_json::json;

    fn event(pairs: &[(&str, &str)]) -> Event {
        Event {
            attributes: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), AttrValue::String(v.to_string())))
                .collect(),
            data: None,
        }
    }

    fn compile(filter: Value, filters: Value) -> Filter {
        Filter::compile(Some(&filter), Some(&filters)).unwrap()
    }

    #[test]
    fn no_filter_and_empty_filters_match_everything() {
        let e = event(&[("type", "x")]);
        assert!(Filter::compile(None, None).unwrap().matches(&e));
        assert!(compile(Value::Null, json!([])).matches(&e));
    }

    #[test]
    fn attributes_are_anded_exact_and_empty_matches_any_present() {
        let f = compile(
            json!({"attributes": {"type": "order.created", "source": ""}}),
            Value::Null,
        );
        assert!(f.matches(&event(&[("type", "order.created"), ("source", "/shop")])));
        assert!(
            !f.matches(&event(&[("type", "order.created")])),
            "source must be present"
        );
        assert!(
            !f.matches(&event(&[("type", "Order.Created"), ("source", "/s")])),
            "case-sensitive"
        );
    }

    #[test]
    fn dialects() {
        let e = event(&[
            ("type", "com.shop.order.created"),
            ("source", "/eu/shop"),
            ("subject", "42"),
        ]);
        let yes = [
            json!([{"exact": {"subject": "42"}}]),
            json!([{"prefix": {"type": "com.shop."}}]),
            json!([{"suffix": {"type": ".created", "source": "/shop"}}]),
            json!([{"all": [{"prefix": {"source": "/eu"}}, {"exact": {"subject": "42"}}]}]),
            json!([{"any": [{"exact": {"subject": "1"}}, {"exact": {"subject": "42"}}]}]),
            json!([{"not": {"exact": {"subject": "1"}}}]),
            json!([{"cesql": "type LIKE '%.created' AND subject > 10"}]),
            json!([{"exact": {"subject": "42"}}, {"prefix": {"type": "com."}}]),
        ];
        for f in yes {
            assert!(
                compile(json!({"attributes": {"type": "never"}}), f.clone()).matches(&e),
                "{f} wins over filter and matches"
            );
        }
        let no = [
            json!([{"exact": {"subject": "4"}}]),
            json!([{"exact": {"missing": "x"}}]),
            json!([{"not": {"prefix": {"type": "com."}}}]),
            json!([{"any": [{"exact": {"subject": "1"}}, {"exact": {"subject": "2"}}]}]),
            json!([{"cesql": "missing = 'x'"}]),
            json!([{"exact": {"subject": "42"}}, {"prefix": {"type": "org."}}]),
        ];
        for f in no {
            assert!(!compile(Value::Null, f.clone()).matches(&e), "{f}");
        }
    }

    #[test]
    fn invalid_filters_name_their_field() {
        let errs = Filter::compile(
            None,
            Some(&json!([
                {"exact": {"type": "a"}, "prefix": {"type": "b"}},
                {"all": []},
                {"cesql": "type = "},
                {"exact": {"type": ""}},
                {"bogus": {}},
            ])),
        )
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.filters[0]",
                "spec.filters[1].all",
                "spec.filters[2].cesql",
                "spec.filters[3].exact.type",
                "spec.filters[4].bogus"
            ]
        );
        assert!(errs[2].message.contains("column"), "{}", errs[2].message);
        let errs = Filter::compile(Some(&json!({"attributes": {"Type": "x"}})), None).unwrap_err();
        assert_eq!(errs[0].field, "spec.filter.attributes.Type");
    }

    #[test]
    fn deep_or_numerous_filters_are_refused_naming_the_limit() {
        let mut deep = json!({"exact": {"type": "a"}});
        for _ in 0..MAX_FILTER_NESTING {
            deep = json!({"not": deep});
        }
        let errs = Filter::compile(None, Some(&json!([deep]))).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("deeper than 16 levels"),
            "{}",
            errs[0].message
        );
        // One level less is fine.
        let ok = deep["not"].clone();
        assert!(Filter::compile(None, Some(&json!([ok]))).is_ok());

        let many: Vec<Value> = (0..=MAX_FILTERS)
            .map(|i| json!({"exact": {"type": i.to_string()}}))
            .collect();
        let errs = Filter::compile(None, Some(&json!([{"any": many}]))).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].message.contains("at most 256 filters"),
            "{}",
            errs[0].message
        );
    }
}
