//! The published worker contract, `contract/asyncapi.json`, is exactly what
//! `nats_bridge::asyncapi::render` generates from the catalogue with the default
//! configuration. After a change to the catalogue, the envelopes or the headers, regenerate it:
//!
//! ```sh
//! UPDATE_CONTRACT=1 cargo test -p nats-bridge --test contract
//! ```
//!
//! and commit the new file with the change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use nats_bridge::asyncapi::{self, channel_id};
use nats_bridge::envelope::{ErrorBody, RequestEnvelope, ResponseEnvelope, ResponseStatus};
use nats_bridge::{catalogue, BridgeConfig, Pattern, SubjectScheme};
use serde::Serialize;
use serde_json::{json, Value};

const REGENERATE: &str = "UPDATE_CONTRACT=1 cargo test -p nats-bridge --test contract";

fn contract_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contract/asyncapi.json")
}

fn checked_in() -> String {
    let path = contract_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}; generate it with `{REGENERATE}`", path.display()))
}

#[test]
fn contract_is_in_sync_with_the_catalogue() {
    let fresh = asyncapi::render(&BridgeConfig::default());
    let path = contract_path();
    if std::env::var("UPDATE_CONTRACT").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &fresh).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
        return;
    }
    let current = checked_in();
    if current != fresh {
        let diff = similar::TextDiff::from_lines(&current, &fresh);
        let shown =
            diff.unified_diff().context_radius(3).header("contract/asyncapi.json (checked in)", "generated from the catalogue").to_string();
        panic!(
            "contract/asyncapi.json is out of date with the catalogue. Regenerate it with `{REGENERATE}`, review and commit.\n\n{shown}"
        );
    }
}

#[test]
fn contract_lists_every_operation_with_its_subjects() {
    let doc: Value = serde_json::from_str(&checked_in()).expect("the contract is json");
    assert_eq!(doc["asyncapi"], "3.0.0");
    let config = BridgeConfig::default();
    let mut per_merchant = config.clone();
    per_merchant.subjects.scheme = SubjectScheme::PerMerchant;
    let named: BTreeSet<&str> =
        doc["operations"].as_object().expect("operations").values().filter_map(|o| o["x-operation"].as_str()).collect();
    let expected: BTreeSet<&str> = catalogue::all().map(|op| op.name).collect();
    assert_eq!(named, expected, "the contract's operations are not the catalogue's");
    assert_eq!(named.len(), 35);
    for op in catalogue::all() {
        for (id, c) in [(channel_id(op, SubjectScheme::Shared), &config), (channel_id(op, SubjectScheme::PerMerchant), &per_merchant)] {
            let operation = &doc["operations"][&id];
            assert_eq!(operation["action"], "receive", "{id}");
            assert_eq!(operation["channel"]["$ref"], format!("#/channels/{id}"), "{id}");
            let channel = &doc["channels"][&id];
            assert_eq!(channel["address"], c.subject_template(op), "{id}: subject");
            assert_eq!(channel["x-pattern"], op.pattern.to_string(), "{id}: pattern");
            match op.pattern {
                Pattern::Durable => {
                    assert_eq!(operation["reply"]["address"]["location"], "$message.header#/X-Reply-To", "{id}: reply address");
                    assert_eq!(channel["x-stream"], c.stream_name(op.family), "{id}: stream");
                }
                Pattern::Query => {
                    assert!(operation["reply"]["address"].is_null(), "{id}: a query replies on the request's reply subject");
                    assert_eq!(operation["reply"]["channel"]["$ref"], "#/channels/replies_request_reply", "{id}");
                }
            }
        }
    }
}

// ---- the generator against the types it describes ---------------------------------------

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

fn full_request() -> RequestEnvelope {
    RequestEnvelope {
        operation: "payments.capture".into(),
        merchant_id: "m".into(),
        payment_id: "p".into(),
        attempt_id: "a".into(),
        correlation_id: "c".into(),
        idempotency_key: "k".into(),
        timestamp: 1,
        connector: Some("stripe".into()),
        router_data: json!({ "amount": 1 }),
        metadata: BTreeMap::from([("x".to_string(), "y".to_string())]),
    }
}

fn full_response() -> ResponseEnvelope {
    ResponseEnvelope {
        status: ResponseStatus::Failure,
        correlation_id: "c".into(),
        merchant_id: Some("m".into()),
        payment_id: Some("p".into()),
        transaction_id: Some("t".into()),
        connector_response: json!({ "x": 1 }),
        error: Some(ErrorBody { code: "c".into(), message: "m".into() }),
    }
}

/// Each schema's properties are exactly the type's fields, and `required` lists exactly
/// the fields whose absence fails decoding.
fn schema_matches<T: Serialize + serde::de::DeserializeOwned>(name: &str, full: &T) {
    let doc = asyncapi::document(&BridgeConfig::default());
    let schema = &doc["components"]["schemas"][name];
    let sample = serde_json::to_value(full).unwrap();
    assert_eq!(keys(&schema["properties"]), keys(&sample), "{name}: schema properties differ from the type's fields");
    let required: BTreeSet<String> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    for field in keys(&sample) {
        let mut v = sample.clone();
        v.as_object_mut().unwrap().remove(&field);
        let decodes = serde_json::from_value::<T>(v).is_ok();
        assert_eq!(!decodes, required.contains(&field), "{name}.{field}: required in the schema iff decoding needs it");
    }
}

#[test]
fn schemas_match_the_envelope_types() {
    schema_matches("RequestEnvelope", &full_request());
    schema_matches("ResponseEnvelope", &full_response());
    schema_matches("ErrorBody", &ErrorBody { code: "c".into(), message: "m".into() });
}

#[test]
fn status_enum_matches_the_type() {
    let all = |s: ResponseStatus| match s {
        // A new variant fails to compile here: add it to the list and to the schema.
        ResponseStatus::Success | ResponseStatus::Failure | ResponseStatus::Processing | ResponseStatus::RequiresCustomerAction => s,
    };
    let names: Vec<Value> =
        [ResponseStatus::Success, ResponseStatus::Failure, ResponseStatus::Processing, ResponseStatus::RequiresCustomerAction]
            .into_iter()
            .map(|s| serde_json::to_value(all(s)).unwrap())
            .collect();
    let doc = asyncapi::document(&BridgeConfig::default());
    assert_eq!(doc["components"]["schemas"]["ResponseStatus"]["enum"], Value::Array(names));
}

#[test]
fn every_operation_has_both_schemes_and_references_resolve() {
    let doc = asyncapi::document(&BridgeConfig::default());
    for op in catalogue::all() {
        for id in [channel_id(op, SubjectScheme::Shared), channel_id(op, SubjectScheme::PerMerchant)] {
            assert_eq!(doc["operations"][&id]["x-operation"], op.name, "{id}");
            assert_eq!(doc["channels"][&id]["x-operation"], op.name, "{id}");
        }
        assert!(doc["channels"][channel_id(op, SubjectScheme::PerMerchant)]["parameters"]["merchant_id"].is_object());
    }
    // Every $ref points at something.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        out.push(x.as_str().unwrap());
                    } else {
                        refs(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let pointer = r.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "dangling reference {r}");
    }
}

#[test]
fn canonical_text_sorts_keys() {
    let v = json!({ "b": 1, "a": { "d": [ { "z": 1, "y": 2 } ], "c": null } });
    assert_eq!(asyncapi::canonical_json(&v), "{\n  \"a\": {\n    \"c\": null,\n    \"d\": [\n      {\n        \"y\": 2,\n        \"z\": 1\n      }\n    ]\n  },\n  \"b\": 1\n}\n");
}

#[test]
fn header_schemas_list_the_bridge_headers() {
    let doc = asyncapi::document(&BridgeConfig::default());
    let required = |schema: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][schema]["required"].as_array().expect(schema).iter().map(|v| v.as_str().unwrap().to_string()).collect()
    };
    let all: BTreeSet<String> = nats_bridge::headers::REQUEST_HEADERS.iter().map(|h| h.to_string()).collect();
    assert_eq!(required("DurableRequestHeaders"), all);
    let query: BTreeSet<String> =
        all.iter().filter(|h| *h != nats_bridge::headers::NATS_MSG_ID && *h != nats_bridge::headers::REPLY_TO).cloned().collect();
    assert_eq!(required("QueryRequestHeaders"), query);
    for h in all {
        assert!(!nats_bridge::headers::misuses_reserved_prefix(&h), "{h}");
    }
}
