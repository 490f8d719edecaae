//! Every kind this server serves validates arbitrary documents without panicking (deep,
//! wide, wrongly typed, templated, huge), and what it accepts validates again the same after a
//! round trip through its JSON form. (More cases by hand: `PROPTEST_CASES=100000`.)

use control::{FieldErrors, Registry};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// Field names of the kinds' specs, so arbitrary documents reach past the first checks.
const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "annotations",
    "labels",
    "spec",
    "broker",
    "filter",
    "filters",
    "attributes",
    "exact",
    "prefix",
    "suffix",
    "all",
    "any",
    "not",
    "cesql",
    "subscriber",
    "uri",
    "ref",
    "delivery",
    "retry",
    "backoffPolicy",
    "backoffDelay",
    "deadLetterSink",
    "timeout",
    "retryAfterMax",
    "sink",
    "schedule",
    "data",
    "contentType",
    "bootstrapServers",
    "topics",
    "topic",
    "consumerGroup",
    "net",
    "auth",
    "template",
    "containers",
    "image",
    "command",
    "args",
    "env",
    "value",
    "ports",
    "containerPort",
    "traffic",
    "percent",
    "revisionName",
    "latestRevision",
    "configurationName",
    "tag",
    "containerConcurrency",
    "timeoutSeconds",
    "steps",
    "script",
    "params",
    "type",
    "default",
    "results",
    "workspaces",
    "tasks",
    "taskRef",
    "taskSpec",
    "runAfter",
    "when",
    "input",
    "operator",
    "values",
    "finally",
    "matrix",
    "include",
    "pipelineRef",
    "pipelineSpec",
    "taskRunTemplate",
    "retries",
    "properties",
    "description",
    "workingDir",
    "emptyDir",
    "config",
    "replicationFactor",
    "numPartitions",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-zA-Z0-9./_-]{0,12}",
        1 => proptest::sample::select(&[
            "ferry.dev/partitions", "ferry.dev/retention", "ferry.dev/adopt-topic",
            "autoscaling.knative.dev/min-scale", "autoscaling.knative.dev/max-scale",
            "autoscaling.knative.dev/target", "ferry.dev/max-event-age",
        ][..]).prop_map(str::to_string),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,20}",
        proptest::sample::select(
            &[
                "",
                "default",
                "a-b",
                "http://127.0.0.1:1/x",
                "$(params.p)",
                "$(tasks.a.results.r)",
                "$(workspaces.w.path)",
                "$(params.p[*])",
                "PT1S",
                "P1D",
                "-1",
                "0",
                "100",
                "1.5",
                "exponential",
                "linear",
                "string",
                "array",
                "object",
                "in",
                "notin",
                "true",
                "* * * * *",
                "TRUE AND NOT FALSE",
                "type = 'x' AND (",
                "eventing.knative.dev/v1",
                "serving.knative.dev/v1",
                "tekton.dev/v1",
                "Broker",
                "Task",
                "$(",
                "$()",
            ][..]
        )
        .prop_map(str::to_string),
        // Long: limits are checked, not tripped over.
        (1usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// What the kinds need alive: their runtime (serving's and pipelines' process spawners) and
/// state directories.
type Parts = (Registry, tokio::runtime::Runtime, tempfile::TempDir);

/// The registry `ferry serve` builds, kinds only (nothing started).
fn registry() -> &'static Parts {
    static REGISTRY: OnceLock<Parts> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _entered = runtime.enter();
        let dir = tempfile::tempdir().unwrap();
        let serving = serving::Serving::new(
            serving::ServingConfig {
                gateway_addr: "127.0.0.1:1".parse().unwrap(),
                domain: "localhost".into(),
                revision_history: 20,
                defaults: Default::default(),
                state_dir: dir.path().join("serving"),
            },
            &prometheus::Registry::new(),
        )
        .unwrap();
        let pipelines = pipelines::Pipelines::new(pipelines::PipelinesConfig {
            work_dir: dir.path().join("pipelines"),
            shell: "sh".into(),
            max_result_size: 1024 * 1024,
            max_running_tasks: 4,
        })
        .unwrap();
        let mut kinds = Registry::new();
        control::kinds::register_eventing(&mut kinds);
        serving::register(&mut kinds, &serving);
        pipelines::register(&mut kinds, &pipelines);
        drop(_entered);
        (kinds, runtime, dir)
    })
}

fn validate(doc: &Value) -> (FieldErrors, Option<control::Resource>) {
    let mut errors = FieldErrors::new(0);
    let r = registry().0.validate(&mut errors, doc);
    (errors, r)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(3000)))]

    #[test]
    fn every_kind_survives_arbitrary_documents(
        which in 0usize..64,
        metadata in json_value(),
        spec in json_value(),
        name in "[a-z][a-z0-9-]{0,10}",
    ) {
        let kinds = registry().0.all();
        let info = kinds[which % kinds.len()].info();
        // As given, and with a well-formed envelope around the arbitrary spec.
        for doc in [
            json!({"apiVersion": info.api_version(), "kind": info.kind, "metadata": metadata, "spec": spec}),
            json!({"apiVersion": info.api_version(), "kind": info.kind,
                   "metadata": {"name": name, "namespace": "default"}, "spec": spec}),
        ] {
            let (errors, r) = validate(&doc);
            if let (true, Some(r)) = (errors.is_empty(), r) {
                // Accepted: its JSON form is accepted again, as the same resource.
                let again = serde_json::to_value(&r).unwrap();
                let (errors, r2) = validate(&again);
                prop_assert!(errors.is_empty(), "{again}: {:?}", errors.list);
                prop_assert_eq!(Some(r), r2);
            }
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
