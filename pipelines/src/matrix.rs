//! Matrix fan-out: the cartesian product of the matrix params in declaration order (the first
//! param varying fastest, as Tekton enumerates them), then `include` (TEP-0118): an entry adds
//! its non-matrix params to every combination whose matrix params it agrees with; one that
//! agrees with none is a combination of its own.

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
    // `include` (TEP-0118, as GitHub Actions does it): an entry goes into every combination
    // whose matrix params it does not contradict (its other params added, a later entry's
    // replacing an earlier one's); one that fits none is a combination of its own.
    let matrix_keys: Vec<&str> = arrays.iter().map(|(k, _)| k.as_str()).collect();
    let mut extra = Vec::new();
    for inc in include.iter().filter(|i| !i.is_empty()) {
        let mut matched = false;
        for c in combos.iter_mut() {
            let fits = inc
                .iter()
                .all(|(k, v)| !matrix_keys.contains(&k.as_str()) || c.get(k) == Some(v));
            if fits {
                matched = true;
                for (k, v) in inc
                    .iter()
                    .filter(|(k, _)| !matrix_keys.contains(&k.as_str()))
                {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        if !matched {
            extra.push(inc.iter().cloned().collect::<Combination>());
        }
    }
    combos.extend(extra);
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
        // GitHub's documented example of the same rules.
        let c = combinations(
            &[
                arr("fruit", &["apple", "pear"]),
                arr("animal", &["cat", "dog"]),
            ],
            &[
                pairs(&[("color", "green")]),
                pairs(&[("color", "pink"), ("animal", "cat")]),
                pairs(&[("fruit", "apple"), ("shape", "circle")]),
                pairs(&[("fruit", "banana")]),
                pairs(&[("fruit", "banana"), ("animal", "cat")]),
            ],
        );
        assert_eq!(
            show(&c),
            [
                "animal=cat,color=pink,fruit=apple,shape=circle",
                "animal=cat,color=pink,fruit=pear",
                "animal=dog,color=green,fruit=apple,shape=circle",
                "animal=dog,color=green,fruit=pear",
                "fruit=banana",
                "animal=cat,fruit=banana",
            ]
        );
    }
}
