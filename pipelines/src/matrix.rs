//! Matrix fan-out: the cartesian product of the matrix params in declaration order (the first
//! param varying fastest, as Tekton enumerates them), then `include`: an include whose params
//! all fit a combination (each either absent from it or equal) adds its other params to every
//! such combination without overwriting; one that fits none is a combination of its own.

use crate::spec::Matrix;
use std::collections::BTreeMap;

/// One combination: param name → value.
pub type Combination = BTreeMap<String, String>;

/// The combinations of a matrix whose array params have been substituted (`arrays`: name →
/// values, in declaration order; `include`s as name → value lists). Empty when a matrix param
/// is an empty array (the task is then skipped: "Matrix Parameters have an empty array").
pub fn combinations(
    arrays: &[(String, Vec<String>)],
    include: &[Vec<(String, String)>],
) -> Vec<Combination> {
    let mut combos: Vec<Combination> = if arrays.is_empty() {
        Vec::new()
    } else {
        vec![Combination::new()]
    };
    for (name, values) in arrays {
        let mut next = Vec::with_capacity(combos.len() * values.len());
        for v in values {
            for c in &combos {
                let mut c = c.clone();
                c.insert(name.clone(), v.clone());
                next.push(c);
            }
        }
        combos = next;
    }
    if arrays.iter().any(|(_, v)| v.is_empty()) {
        return Vec::new();
    }
    let originals = combos.len();
    for inc in include {
        let fits = |c: &Combination| {
            inc.iter()
                .all(|(k, v)| c.get(k).is_none_or(|existing| existing == v))
                && inc.iter().any(|(k, _)| c.contains_key(k))
        };
        let mut matched = false;
        for c in combos.iter_mut().take(originals) {
            if fits(c) {
                matched = true;
                for (k, v) in inc {
                    c.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        if !matched {
            combos.push(inc.iter().cloned().collect());
        }
    }
    combos
}

/// Whether a pipeline task fans out.
pub fn is_matrixed(m: Option<&Matrix>) -> bool {
    m.is_some_and(|m| !m.params.is_empty() || !m.include.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(name: &str, values: &[&str]) -> (String, Vec<String>) {
        (name.into(), values.iter().map(|v| v.to_string()).collect())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn show(c: &[Combination]) -> Vec<String> {
        c.iter()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    #[test]
    fn the_product_in_declaration_order() {
        let c = combinations(
            &[
                arr("platform", &["linux", "mac"]),
                arr("browser", &["chrome", "firefox"]),
            ],
            &[],
        );
        assert_eq!(
            show(&c),
            [
                "browser=chrome,platform=linux",
                "browser=chrome,platform=mac",
                "browser=firefox,platform=linux",
                "browser=firefox,platform=mac",
            ]
        );
        assert!(
            combinations(&[arr("v", &[])], &[]).is_empty(),
            "an empty array: no combination"
        );
    }

    #[test]
    fn include_adds_to_what_fits_or_stands_alone() {
        // Tekton's documented example: GOARCH × version, with includes.
        let c = combinations(
            &[
                arr("GOARCH", &["linux/amd64", "linux/ppc64le"]),
                arr("version", &["go1.17", "go1.18.1"]),
            ],
            &[
                pairs(&[("version", "go1.17"), ("flags", "-cover")]),
                pairs(&[("GOARCH", "linux/s390x"), ("flags", "-race")]),
            ],
        );
        assert_eq!(
            show(&c),
            [
                "GOARCH=linux/amd64,flags=-cover,version=go1.17",
                "GOARCH=linux/ppc64le,flags=-cover,version=go1.17",
                "GOARCH=linux/amd64,version=go1.18.1",
                "GOARCH=linux/ppc64le,version=go1.18.1",
                "GOARCH=linux/s390x,flags=-race",
            ]
        );
        // Only includes: each is a combination.
        let c = combinations(&[], &[pairs(&[("platform", "linux")])]);
        assert_eq!(show(&c), ["platform=linux"]);
    }
}
