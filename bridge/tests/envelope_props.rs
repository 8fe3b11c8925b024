//! Property tests of the envelopes, and backward compatibility with released message samples.
//!
//! - Every envelope type survives a JSON round trip unchanged.
//! - Decoding ignores fields it does not know (a newer peer may send more).
//! - The samples of every released protocol version, `snapshots/compat/<version>/*.json`,
//!   still decode, and re-encoding keeps every field they had. Those files are frozen: never
//!   edit them. To freeze the current format as a new version (say `v2`) when it changes:
//!   `COMPAT_VERSION=v2 cargo test -p nats-bridge --test envelope_props -- --ignored freeze`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nats_bridge::catalogue;
use nats_bridge::envelope::{ErrorBody, RequestEnvelope, ResponseEnvelope, ResponseStatus};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn compat_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../snapshots/compat")
}

// ---- strategies -------------------------------------------------------------------------

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9_.:-]{0,24}", any::<String>(),]
}

/// Arbitrary JSON (numbers: integers and binary fractions, which print and parse exactly).
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1_000_000i32..1_000_000).prop_map(|x| json!(x as f64 / 8.0)),
        arb_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(arb_text(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_operation() -> impl Strategy<Value = String> {
    prop_oneof![prop::sample::select(catalogue::all().map(|op| op.name).collect::<Vec<_>>()).prop_map(str::to_string), arb_text(),]
}

prop_compose! {
    fn arb_request()(
        operation in arb_operation(),
        merchant_id in arb_text(),
        payment_id in arb_text(),
        attempt_id in arb_text(),
        correlation_id in arb_text(),
        idempotency_key in arb_text(),
        timestamp in any::<u64>(),
        connector in prop::option::of(arb_text()),
        router_data in arb_json(),
        metadata in prop::collection::btree_map(arb_text(), arb_text(), 0..4),
    ) -> RequestEnvelope {
        RequestEnvelope { operation, merchant_id, payment_id, attempt_id, correlation_id, idempotency_key, timestamp, connector, router_data, metadata }
    }
}

fn arb_status() -> impl Strategy<Value = ResponseStatus> {
    prop_oneof![
        Just(ResponseStatus::Success),
        Just(ResponseStatus::Failure),
        Just(ResponseStatus::Processing),
        Just(ResponseStatus::RequiresCustomerAction),
    ]
}

prop_compose! {
    fn arb_error()(code in arb_text(), message in arb_text()) -> ErrorBody {
        ErrorBody { code, message }
    }
}

prop_compose! {
    fn arb_response()(
        status in arb_status(),
        correlation_id in arb_text(),
        merchant_id in prop::option::of(arb_text()),
        payment_id in prop::option::of(arb_text()),
        transaction_id in prop::option::of(arb_text()),
        connector_response in arb_json(),
        error in prop::option::of(arb_error()),
    ) -> ResponseEnvelope {
        ResponseEnvelope { status, correlation_id, merchant_id, payment_id, transaction_id, connector_response, error }
    }
}

/// Unknown fields to mix in: names no envelope uses.
fn arb_extra() -> impl Strategy<Value = BTreeMap<String, Value>> {
    prop::collection::btree_map("(x_|future_|zz)[a-z_]{1,12}", arb_json(), 1..4)
}

fn with_extra(mut v: Value, extra: &BTreeMap<String, Value>) -> Value {
    let obj = v.as_object_mut().expect("an envelope is an object");
    for (k, x) in extra {
        obj.insert(k.clone(), x.clone());
    }
    v
}

// ---- properties -------------------------------------------------------------------------

proptest! {
    #[test]
    fn request_round_trips(r in arb_request()) {
        let text = serde_json::to_string(&r).unwrap();
        prop_assert_eq!(&serde_json::from_str::<RequestEnvelope>(&text).unwrap(), &r);
        let bytes = serde_json::to_vec(&r).unwrap();
        prop_assert_eq!(serde_json::from_slice::<RequestEnvelope>(&bytes).unwrap(), r);
    }

    #[test]
    fn response_round_trips(r in arb_response()) {
        let text = serde_json::to_string(&r).unwrap();
        prop_assert_eq!(serde_json::from_str::<ResponseEnvelope>(&text).unwrap(), r);
    }

    #[test]
    fn error_body_and_status_round_trip(e in arb_error(), s in arb_status()) {
        prop_assert_eq!(serde_json::from_str::<ErrorBody>(&serde_json::to_string(&e).unwrap()).unwrap(), e);
        prop_assert_eq!(serde_json::from_str::<ResponseStatus>(&serde_json::to_string(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn request_decoding_ignores_unknown_fields(r in arb_request(), extra in arb_extra()) {
        let v = with_extra(serde_json::to_value(&r).unwrap(), &extra);
        prop_assert_eq!(serde_json::from_str::<RequestEnvelope>(&v.to_string()).unwrap(), r);
    }

    #[test]
    fn response_decoding_ignores_unknown_fields(r in arb_response(), extra in arb_extra(), nested in arb_extra()) {
        let mut v = with_extra(serde_json::to_value(&r).unwrap(), &extra);
        if v["error"].is_object() {
            v["error"] = with_extra(v["error"].take(), &nested);
        }
        prop_assert_eq!(serde_json::from_str::<ResponseEnvelope>(&v.to_string()).unwrap(), r);
    }
}

// ---- released samples -------------------------------------------------------------------

/// Every key of `old` is in `new` with the same value (an old reader still finds its fields).
fn keeps_fields(old: &Value, new: &Value, at: &str) -> Result<(), String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return if old == new { Ok(()) } else { Err(format!("{at}: {old} became {new}")) };
    };
    for (k, v) in o {
        match n.get(k) {
            None => return Err(format!("{at}.{k} is lost when the decoded envelope is encoded again")),
            Some(x) => keeps_fields(v, x, &format!("{at}.{k}"))?,
        }
    }
    Ok(())
}

fn check_sample(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let sample: Value = serde_json::from_str(&text).map_err(|e| format!("not json: {e}"))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let request: RequestEnvelope =
        serde_json::from_value(sample["request"].clone()).map_err(|e| format!("the request no longer decodes: {e}"))?;
    if request.operation != stem {
        return Err(format!("the request is for {}, not {stem}", request.operation));
    }
    if catalogue::find(&request.operation).is_none() {
        return Err(format!("the catalogue no longer has {}", request.operation));
    }
    keeps_fields(&sample["request"], &serde_json::to_value(&request).unwrap(), "request")?;
    let responses = sample["responses"].as_object().ok_or("no responses")?;
    for (name, v) in responses {
        let r: ResponseEnvelope = serde_json::from_value(v.clone()).map_err(|e| format!("the {name} response no longer decodes: {e}"))?;
        if serde_json::to_value(r.status).unwrap() != json!(name) {
            return Err(format!("the {name} response decodes with status {:?}", r.status));
        }
        if r.mismatch(&request).is_some() {
            return Err(format!("the {name} response no longer matches its request"));
        }
        keeps_fields(v, &serde_json::to_value(&r).unwrap(), &format!("responses.{name}"))?;
    }
    Ok(())
}

#[test]
fn released_samples_still_decode() {
    let root = compat_dir();
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    versions.sort();
    assert!(versions.iter().any(|v| v.ends_with("v1")), "the v1 samples are missing from {}", root.display());
    let mut errors = Vec::new();
    for version in &versions {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(version).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
        files.sort();
        assert!(files.len() >= 35, "{}: {} samples, expected one per operation of that release", version.display(), files.len());
        for f in files {
            if let Err(e) = check_sample(&f) {
                errors.push(format!("{}: {e}", f.strip_prefix(&root).unwrap_or(&f).display()));
            }
        }
    }
    assert!(errors.is_empty(), "released message samples broken by this change (backward incompatible):\n{}", errors.join("\n"));
}

#[test]
fn a_renamed_field_breaks_a_released_sample() {
    // The compatibility check is not vacuous: a sample whose field was renamed fails.
    let dir = std::env::temp_dir().join(format!("compat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let original = std::fs::read_to_string(compat_dir().join("v1/payments.capture.json")).expect("v1 sample of payments.capture");
    let renamed = original.replace("\"idempotency_key\"", "\"idempotencyKey\"");
    let path = dir.join("payments.capture.json");
    std::fs::write(&path, renamed).unwrap();
    let err = check_sample(&path).expect_err("a sample without idempotency_key must fail");
    assert!(err.contains("idempotency_key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes today's samples as a new released version. Run once per protocol release.
#[test]
#[ignore = "writes snapshots/compat/$COMPAT_VERSION; run by hand when releasing a protocol version"]
fn freeze_compat_samples() {
    let version = std::env::var("COMPAT_VERSION").expect("set COMPAT_VERSION (v2, v3...)");
    let dir = compat_dir().join(&version);
    assert!(!dir.exists(), "{} exists: released samples are never rewritten", dir.display());
    std::fs::create_dir_all(&dir).unwrap();
    let sample = hs_fixtures::Fixtures::new(20_250_601).sample();
    for op in catalogue::all() {
        let request = hs_fixtures::operations::fixed_request(op, &sample, 1_750_000_000_000);
        let responses: Map<String, Value> = hs_fixtures::operations::responses(op, &sample, request.envelope())
            .into_iter()
            .map(|(name, r)| (name.to_string(), serde_json::to_value(r).unwrap()))
            .collect();
        let doc = json!({ "request": request.envelope(), "responses": responses });
        let text = nats_bridge::asyncapi::canonical_json(&doc);
        std::fs::write(dir.join(format!("{}.json", op.name)), text).unwrap();
    }
    eprintln!("wrote {}", dir.display());
}
