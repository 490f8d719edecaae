//! A pipeline's graph: an edge T → U when U names T in `runAfter` or uses one of T's results
//! (`$(tasks.T.results.R)` in its params, `when`, matrix, display name or embedded task).
//! Cycles are refused naming the tasks on them.

use crate::spec::{PipelineSpec, PipelineTask};
use std::collections::{BTreeMap, BTreeSet};

/// The tasks a string refers to by result: the `T` of every `$(tasks.T.results.…)`.
pub fn result_refs(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("$(tasks.") {
        let after = &rest[at + "$(tasks.".len()..];
        if let Some(dot) = after.find('.') {
            let task = &after[..dot];
            if after[dot..].starts_with(".results.") && !task.is_empty() {
                found.insert(task.to_string());
            }
        }
        rest = after;
    }
    found
}

/// The `(T, R)` of every `$(tasks.T.results.R…)` in a string.
pub fn result_pairs(text: &str) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("$(tasks.") {
        let after = &rest[at + "$(tasks.".len()..];
        if let Some((task, tail)) = after.split_once(".results.") {
            if !task.is_empty() && !task.contains(['.', ')', ' ']) {
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                    .unwrap_or(tail.len());
                if end > 0 {
                    found.insert((task.to_string(), tail[..end].to_string()));
                }
            }
        }
        rest = after;
    }
    found
}

/// Every string of a pipeline task that may refer to other tasks' results.
pub fn task_texts(t: &PipelineTask) -> Vec<String> {
    let mut texts = Vec::new();
    let mut values = |params: &[crate::spec::Param]| {
        for p in params {
            match &p.value {
                crate::params::ParamValue::String(s) => texts.push(s.clone()),
                crate::params::ParamValue::Array(a) => texts.extend(a.iter().cloned()),
                crate::params::ParamValue::Object(o) => texts.extend(o.values().cloned()),
            }
        }
    };
    values(&t.params);
    if let Some(m) = &t.matrix {
        values(&m.params);
        for i in &m.include {
            values(&i.params);
        }
    }
    for w in &t.when {
        texts.push(w.input.clone());
        texts.extend(w.values.iter().cloned());
    }
    if let Some(d) = &t.display_name {
        texts.push(d.clone());
    }
    if let Some(spec) = &t.task_spec {
        if let Ok(s) = serde_json::to_string(&spec.spec) {
            texts.push(s);
        }
    }
    texts
}

/// The tasks `t` must wait for: its `runAfter` and the tasks whose results it uses.
pub fn parents(t: &PipelineTask) -> BTreeSet<String> {
    let mut p: BTreeSet<String> = t.run_after.iter().cloned().collect();
    for text in task_texts(t) {
        p.extend(result_refs(&text));
    }
    p
}

/// A problem with a pipeline's graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphError {
    /// `task` depends on `missing`, which is no task of the pipeline (`via`: runAfter or a
    /// result reference).
    Unknown {
        task: String,
        missing: String,
        via: &'static str,
    },
    /// The tasks of a cycle, in order, the first repeated at the end.
    Cycle(Vec<String>),
}

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphError::Unknown { task, missing, via } => {
                write!(
                    f,
                    "task {task:?} {via} {missing:?}, which is not a task of the pipeline"
                )
            }
            GraphError::Cycle(path) => write!(f, "cycle in the tasks: {}", path.join(" -> ")),
        }
    }
}

/// The DAG of a pipeline's `tasks` (finally tasks are not in it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dag {
    /// Each task's parents.
    pub parents: BTreeMap<String, BTreeSet<String>>,
}

impl Dag {
    pub fn of(spec: &PipelineSpec) -> Result<Dag, Vec<GraphError>> {
        let names: BTreeSet<&str> = spec.tasks.iter().map(|t| t.name.as_str()).collect();
        let mut errors = Vec::new();
        let mut parents = BTreeMap::new();
        for t in &spec.tasks {
            for after in &t.run_after {
                if !names.contains(after.as_str()) {
                    errors.push(GraphError::Unknown {
                        task: t.name.clone(),
                        missing: after.clone(),
                        via: "runs after",
                    });
                }
            }
            let mut refs = BTreeSet::new();
            for text in task_texts(t) {
                refs.extend(result_refs(&text));
            }
            for r in &refs {
                if !names.contains(r.as_str()) {
                    errors.push(GraphError::Unknown {
                        task: t.name.clone(),
                        missing: r.clone(),
                        via: "uses a result of",
                    });
                }
            }
            let p: BTreeSet<String> = self::parents(t)
                .into_iter()
                .filter(|p| names.contains(p.as_str()))
                .collect();
            parents.insert(t.name.clone(), p);
        }
        let dag = Dag { parents };
        if let Some(cycle) = dag.cycle() {
            errors.push(GraphError::Cycle(cycle));
        }
        if errors.is_empty() {
            Ok(dag)
        } else {
            Err(errors)
        }
    }

    /// A cycle, if there is one: depth-first, the path from where it closes.
    fn cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done,
        }
        fn visit(
            dag: &Dag,
            node: &str,
            marks: &mut BTreeMap<String, Mark>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            match marks.get(node) {
                Some(Mark::Done) => return None,
                Some(Mark::Open) => {
                    let from = path.iter().position(|n| n == node).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(node.to_string());
                    return Some(cycle);
                }
                None => {}
            }
            marks.insert(node.to_string(), Mark::Open);
            path.push(node.to_string());
            for p in dag.parents.get(node).into_iter().flatten() {
                if let Some(c) = visit(dag, p, marks, path) {
                    return Some(c);
                }
            }
            path.pop();
            marks.insert(node.to_string(), Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        for node in self.parents.keys() {
            let mut path = Vec::new();
            if let Some(mut c) = visit(self, node, &mut marks, &mut path) {
                // Found walking parents: print it in running order.
                c.reverse();
                return Some(c);
            }
        }
        None
    }

    /// The tasks that may start: not started, every parent finished.
    pub fn ready<'a>(
        &'a self,
        finished: &BTreeSet<String>,
        started: &BTreeSet<String>,
    ) -> Vec<&'a str> {
        self.parents
            .iter()
            .filter(|(t, p)| !started.contains(*t) && p.iter().all(|p| finished.contains(p)))
            .map(|(t, _)| t.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pipeline(tasks: serde_json::Value) -> PipelineSpec {
        serde_json::from_value(json!({"tasks": tasks})).unwrap()
    }

    #[test]
    fn edges_come_from_run_after_and_results() {
        let p = pipeline(json!([
            {"name": "a", "taskRef": {"name": "t"}},
            {"name": "b", "taskRef": {"name": "t"}, "params": [{"name": "x", "value": "$(tasks.a.results.sum)"}]},
            {"name": "c", "taskRef": {"name": "t"}, "runAfter": ["b"],
             "when": [{"input": "$(tasks.a.results.ok)", "operator": "in", "values": ["yes"]}]},
        ]));
        let dag = Dag::of(&p).unwrap();
        assert_eq!(dag.parents["b"], ["a".to_string()].into());
        assert_eq!(dag.parents["c"], ["a".to_string(), "b".to_string()].into());
        let none = BTreeSet::new();
        assert_eq!(dag.ready(&none, &none), ["a"]);
        let a: BTreeSet<String> = ["a".to_string()].into();
        assert_eq!(dag.ready(&a, &a), ["b"]);
    }

    #[test]
    fn unknown_tasks_and_cycles_are_named() {
        let p = pipeline(json!([
            {"name": "a", "taskRef": {"name": "t"}, "runAfter": ["c"]},
            {"name": "b", "taskRef": {"name": "t"}, "runAfter": ["a", "ghost"]},
            {"name": "c", "taskRef": {"name": "t"}, "params": [{"name": "x", "value": "$(tasks.b.results.r) $(tasks.nope.results.r)"}]},
        ]));
        let errors = Dag::of(&p).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "task \"b\" runs after \"ghost\", which is not a task of the pipeline",
                "task \"c\" uses a result of \"nope\", which is not a task of the pipeline",
                "cycle in the tasks: a -> b -> c -> a",
            ]
        );
    }
}
