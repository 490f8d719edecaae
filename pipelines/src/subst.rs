//! Tekton's variable substitution: `$(key)` replaced by its value in one pass (a value that
//! itself contains `$(...)` is not substituted again), unknown keys left as written, nothing
//! escaped. Keys: `params.x`, `params["x"]`, `params['x']` (a name with dots needs the
//! brackets), `[i]` of an array, `.key` (or `["key"]`) of an object, `tasks.T.results.R`
//! likewise, and any plain key (`context.taskRun.name`, `workspaces.w.path`,
//! `results.r.path`). A list element that is exactly `$(X[*])` of an array becomes its
//! elements ([`Vars::expand_list`]).

use std::collections::BTreeMap;

/// The values substitution can use, by key (`params.x`, `tasks.t.results.r`, ...).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vars {
    strings: BTreeMap<String, String>,
    arrays: BTreeMap<String, Vec<String>>,
    objects: BTreeMap<String, BTreeMap<String, String>>,
}

impl Vars {
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.strings.insert(key.into(), value.into());
    }

    pub fn set_array(&mut self, key: impl Into<String>, value: Vec<String>) {
        self.arrays.insert(key.into(), value);
    }

    pub fn set_object(&mut self, key: impl Into<String>, value: BTreeMap<String, String>) {
        self.objects.insert(key.into(), value);
    }

    /// Sets `key` to a param or result value of any type.
    pub fn set_value(&mut self, key: impl Into<String>, value: &crate::params::ParamValue) {
        use crate::params::ParamValue;
        let key = key.into();
        match value {
            ParamValue::String(s) => self.set(key, s.clone()),
            ParamValue::Array(a) => self.set_array(key, a.clone()),
            ParamValue::Object(o) => self.set_object(key, o.clone()),
        }
    }

    /// `text` with every known `$(key)` replaced, in one pass.
    pub fn replace(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("$(") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            match closing(after) {
                Some(end) => {
                    let expr = &after[..end];
                    match self.lookup(expr) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(expr);
                            out.push(')');
                        }
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// A list (args, command, array values) with `[*]` elements expanded and the others
    /// replaced.
    pub fn expand_list(&self, items: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match self.whole_array(item) {
                Some(values) => out.extend(values.iter().cloned()),
                None => out.push(self.replace(item)),
            }
        }
        out
    }

    /// The object an element that is exactly `$(X[*])` names.
    pub fn whole_object(&self, item: &str) -> Option<&BTreeMap<String, String>> {
        let expr = item.trim().strip_prefix("$(")?.strip_suffix(')')?;
        let base = expr.strip_suffix("[*]")?;
        self.objects.get(&normalize(base))
    }

    /// The array an element that is exactly `$(X[*])` names.
    pub fn whole_array(&self, item: &str) -> Option<&Vec<String>> {
        let expr = item.trim().strip_prefix("$(")?.strip_suffix(')')?;
        let base = expr.strip_suffix("[*]")?;
        self.arrays.get(&normalize(base))
    }

    /// The value of one expression (without `$(` `)`), as text.
    fn lookup(&self, expr: &str) -> Option<String> {
        if let Some(v) = self.strings.get(expr) {
            return Some(v.clone());
        }
        let key = normalize(expr);
        if let Some(v) = self.strings.get(&key) {
            return Some(v.clone());
        }
        // `base[i]`, `base["key"]`
        if let Some(open) = key.rfind('[').filter(|_| key.ends_with(']')) {
            let (base, index) = (&key[..open], &key[open + 1..key.len() - 1]);
            if let Some(a) = self.arrays.get(base) {
                return index.parse::<usize>().ok().and_then(|i| a.get(i).cloned());
            }
            if let Some(o) = self.objects.get(base) {
                return o.get(unquote(index)?).cloned();
            }
            return None;
        }
        // `base.key`
        if let Some(dot) = key.rfind('.') {
            let (base, field) = (&key[..dot], &key[dot + 1..]);
            if let Some(o) = self.objects.get(base) {
                return o.get(field).cloned();
            }
        }
        None
    }
}

/// The index of the `)` closing an expression that starts right after `$(`, if any; `None`
/// when another `$(` comes first (the outer one is then shell, like `$(( "$(params.a)" + 1 ))`,
/// and the scan goes on inside it). Names never hold `)`, so quotes need no care.
fn closing(s: &str) -> Option<usize> {
    for (i, c) in s.char_indices() {
        match c {
            ')' => return Some(i),
            '$' if s[i..].starts_with("$(") => return None,
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
}

/// `params["x"]` and `params['x']` (also after `tasks.T.results`) as `params.x`; a bracketed
/// index that is not quoted (`[0]`, `[*]`) is kept.
fn normalize(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let inner = &rest[open + 1..];
        let Some(close) = inner.find(']') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let index = &inner[..close];
        let tail = &inner[close + 1..];
        match unquote(index) {
            // A quoted name followed by more: part of the path. At the end it stays an
            // index (an object's key) unless it is the param's name itself.
            Some(name) if !tail.is_empty() || !out.contains('.') || out == "params" => {
                out.push('.');
                out.push_str(name);
            }
            _ => {
                out.push('[');
                out.push_str(index);
                out.push(']');
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.set("params.name", "world");
        v.set("params.a.b", "dotted");
        v.set("context.taskRun.name", "tr-1");
        v.set("params.loop", "$(params.name)");
        v.set_array("params.list", vec!["x".into(), "y z".into()]);
        v.set_object(
            "params.repo",
            [
                ("url".to_string(), "u".to_string()),
                ("commit".to_string(), "c".to_string()),
            ]
            .into(),
        );
        v.set("tasks.t1.results.sum", "22");
        v
    }

    #[test]
    fn the_key_forms_tekton_accepts() {
        let v = vars();
        assert_eq!(v.replace("hello $(params.name)!"), "hello world!");
        assert_eq!(
            v.replace(r#"$(params["name"]) $(params['name'])"#),
            "world world"
        );
        assert_eq!(v.replace(r#"$(params["a.b"])"#), "dotted");
        assert_eq!(v.replace("$(params.list[1])"), "y z");
        assert_eq!(v.replace("$(params.repo.url)@$(params.repo.commit)"), "u@c");
        assert_eq!(v.replace(r#"$(params.repo["url"])"#), "u");
        assert_eq!(
            v.replace("$(tasks.t1.results.sum)-$(context.taskRun.name)"),
            "22-tr-1"
        );
    }

    #[test]
    fn one_pass_and_unknown_keys_left_alone() {
        let v = vars();
        assert_eq!(
            v.replace("$(params.loop)"),
            "$(params.name)",
            "not substituted twice"
        );
        assert_eq!(
            v.replace("$(params.nope) $(params.list[9])"),
            "$(params.nope) $(params.list[9])"
        );
        assert_eq!(
            v.replace("echo $((1+2)) $(params.name"),
            "echo $((1+2)) $(params.name"
        );
        assert_eq!(v.replace("${HOME} $ (x)"), "${HOME} $ (x)");
        // Inside a shell `$(...)` or `$((...))`, quoted or not, references are still seen.
        assert_eq!(
            v.replace(r#"echo $(( "$(tasks.t1.results.sum)" + 1 )) $(cat "$(params.name)")"#),
            r#"echo $(( "22" + 1 )) $(cat "world")"#
        );
    }

    #[test]
    fn a_whole_array_element_expands() {
        let v = vars();
        let items: Vec<String> = ["a", "$(params.list[*])", "b $(params.name)"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(v.expand_list(&items), ["a", "x", "y z", "b world"]);
        // `[*]` inside a longer string is not an expansion.
        assert_eq!(
            v.replace("all: $(params.list[*])"),
            "all: $(params.list[*])"
        );
    }
}
