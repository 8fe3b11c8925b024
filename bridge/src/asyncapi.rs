//! The worker protocol as an AsyncAPI 3.0 document, generated from the catalogue.
//!
//! The document describes a worker: the application that receives the bridge's requests and
//! replies. Every catalogue row gives two channels and two operations, one per subject scheme
//! (`payments_capture` for the shared scheme, `payments_capture_per_merchant` with its
//! `{merchant_id}` parameter; ids are operation names with `_` for `.`, and each channel and
//! operation names its catalogue row in `x-operation`), a request message pinned to the
//! operation's name, and the reply: durable
//! operations answer on the inbox named by the request's `X-Reply-To` header, queries on the
//! NATS reply subject of the request. Auxiliary channels: the reply lookup a bridge asks after a
//! duplicate publish, and the dead-letter subjects.
//!
//! [`render`] gives the canonical text (JSON, keys sorted, two-space indent, final newline)
//! checked in as `contract/asyncapi.json`; a test regenerates it and fails on any drift.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::catalogue::{self, Operation, Pattern};
use crate::config::{BridgeConfig, SubjectScheme};
use crate::headers;

/// The AsyncAPI version of the document.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// The version of the worker protocol (the envelopes, headers and subjects). Raise the major
/// version for any change an existing worker cannot read.
pub const PROTOCOL_VERSION: &str = "1.0.0";

/// Channel and operation id suffix of the per-merchant subject scheme.
pub const PER_MERCHANT_SUFFIX: &str = "_per_merchant";

/// An id for the document's maps: the operation name with `_` for `.` (`payments_capture`);
/// plain identifiers suit every AsyncAPI tool and code generator.
pub fn ident(name: &str) -> String {
    name.replace('.', "_")
}

/// Recommended durable consumer name of a worker for `op` (`worker_<family>_<action>`).
pub fn consumer_name(op: Operation) -> String {
    format!("worker_{}_{}", op.family, op.action)
}

fn reference(path: &str) -> Value {
    json!({ "$ref": path })
}

/// A JSON pointer token (`~` and `/` escaped).
fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn with_scheme(config: &BridgeConfig, scheme: SubjectScheme) -> BridgeConfig {
    let mut c = config.clone();
    c.subjects.scheme = scheme;
    c
}

/// The parameters of a subject template (`{merchant_id}`, `{connector}`).
fn parameters(template: &str) -> Option<Value> {
    let mut params = Map::new();
    if template.contains("{merchant_id}") {
        params.insert(
            "merchant_id".into(),
            json!({ "description": "The merchant's id: one subject token (letters, digits, `_`, `-`; no dots, wildcards or spaces). Must equal the body's `merchant_id`." }),
        );
    }
    if template.contains("{connector}") {
        params.insert(
            "connector".into(),
            json!({ "description": "The connector's name (the body's `connector`, `default` when absent): one subject token." }),
        );
    }
    (!params.is_empty()).then_some(Value::Object(params))
}

fn header_schema(names: &[&str], extra_description: &str) -> Value {
    let describe = |name: &str| -> &'static str {
        match name {
            headers::NATS_MSG_ID => "JetStream de-duplication id: `<merchant_id>:<payment_id>:<operation>:<attempt_id>`. Unique per operation instance (authorization attempt, each capture, void, refund...), identical across transport retries of that instance.",
            headers::MESSAGE_ID => "The same message id, on queries and replies too (they do not go through JetStream).",
            headers::OPERATION => "Catalogue name of the operation (`payments.capture`).",
            headers::MERCHANT_ID => "Copy of the body's `merchant_id`, for observability and routing. The body is authoritative.",
            headers::PAYMENT_ID => "Copy of the body's `payment_id`.",
            headers::ATTEMPT_ID => "Copy of the body's `attempt_id`: the operation instance.",
            headers::CORRELATION_ID => "Copy of the body's `correlation_id`; replies echo it.",
            headers::IDEMPOTENCY_KEY => "Copy of the body's `idempotency_key`: the key to pass to the processor and to store the result under.",
            headers::REPLY_TO => "Durable operations only: the subject to publish the reply to (the bridge's reply inbox). JetStream keeps the message's own reply subject for its ack, so the inbox travels here.",
            headers::LOOKUP => "`hit`: the body is the stored reply; `pending`: a delivery holds a live claim on the key and may be at the processor (empty body; the caller must not conclude the operation never happened); `miss`: no stored result and no live claim (empty body).",
            _ => "",
        }
    };
    let mut props = Map::new();
    for name in names {
        props.insert((*name).to_string(), json!({ "type": "string", "description": describe(name) }));
    }
    json!({
        "type": "object",
        "description": format!("NATS message headers. {extra_description} Card data never travels in a header; no custom header uses the reserved `Nats-` prefix."),
        "required": names,
        "properties": props,
        "additionalProperties": { "type": "string" },
    })
}

/// Header names of a request of `pattern`, in wire order.
pub fn request_headers(pattern: Pattern) -> Vec<&'static str> {
    headers::REQUEST_HEADERS
        .iter()
        .copied()
        .filter(|h| pattern == Pattern::Durable || (*h != headers::NATS_MSG_ID && *h != headers::REPLY_TO))
        .collect()
}

/// Header names a worker sets on a reply.
pub const REPLY_HEADERS: [&str; 4] = [headers::MESSAGE_ID, headers::OPERATION, headers::CORRELATION_ID, headers::IDEMPOTENCY_KEY];

fn schemas() -> Value {
    json!({
        "RequestEnvelope": {
            "type": "object",
            "description": "What the bridge sends to a worker. Decoders must ignore unknown fields: later versions may add some.",
            "required": ["operation", "merchant_id", "payment_id", "attempt_id", "correlation_id", "idempotency_key", "timestamp"],
            "additionalProperties": true,
            "properties": {
                "operation": { "type": "string", "description": "Catalogue name of the operation (`payments.capture`)." },
                "merchant_id": { "type": "string", "description": "The merchant; authoritative (the header copy is for observability only)." },
                "payment_id": { "type": "string", "description": "The payment the operation belongs to (the payout, for payouts)." },
                "attempt_id": { "type": "string", "description": "The operation instance: the attempt id of an authorization, the capture id, the refund id... Part of the message id." },
                "correlation_id": { "type": "string", "description": "Traces the logical operation; the reply must echo it." },
                "idempotency_key": { "type": "string", "description": "Pass it to the processor and store the result under it: the same key never moves money twice." },
                "timestamp": { "type": "integer", "format": "int64", "minimum": 0, "description": "When the operation instance was created, unix epoch milliseconds; stable across retries." },
                "connector": { "type": "string", "description": "Connector name, for routing webhooks by connector. Absent when not set." },
                "router_data": { "description": "The orchestrator's router data: amounts, currency, payment method. The only place card data may appear. Null when the operation has none." },
                "metadata": { "type": "object", "additionalProperties": { "type": "string" }, "description": "Free-form string metadata. Absent when empty." }
            }
        },
        "ResponseStatus": {
            "type": "string",
            "enum": ["success", "failure", "processing", "requires_customer_action"],
            "description": "`success`: the processor did it. `failure`: refused or definitely failed (`error` says why). `processing`: accepted, not final (sync later). `requires_customer_action`: e.g. a 3DS redirect (`connector_response` says how)."
        },
        "ErrorBody": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": true,
            "properties": {
                "code": { "type": "string", "description": "Machine-readable code (`card_declined`, `amount_exceeds_capturable`...)." },
                "message": { "type": "string", "description": "Human-readable message." }
            }
        },
        "ResponseEnvelope": {
            "type": "object",
            "description": "What a worker sends back. Decoders must ignore unknown fields.",
            "required": ["status", "correlation_id"],
            "additionalProperties": true,
            "properties": {
                "status": { "$ref": "#/components/schemas/ResponseStatus" },
                "correlation_id": { "type": "string", "description": "Echo of the request's correlation id; a reply with another one is discarded." },
                "merchant_id": { "type": "string", "description": "Echo of the request's merchant; a reply for another merchant is discarded." },
                "payment_id": { "type": "string", "description": "Echo of the request's payment; a reply for another payment is discarded." },
                "transaction_id": { "type": "string", "description": "The processor's reference for the effect." },
                "connector_response": { "description": "The processor's raw answer, passed through. Null when there is none." },
                "error": { "$ref": "#/components/schemas/ErrorBody" }
            }
        },
        "DurableRequestHeaders": header_schema(&request_headers(Pattern::Durable), "A durable request's headers."),
        "QueryRequestHeaders": header_schema(&request_headers(Pattern::Query), "A query's headers (no `Nats-Msg-Id`, no `X-Reply-To`: the reply goes to the NATS reply subject)."),
        "ReplyHeaders": header_schema(&REPLY_HEADERS, "A worker's reply headers: echoes of the request's, so a caller that gave up can match a late reply to its operation."),
        "LookupReplyHeaders": header_schema(&[headers::LOOKUP], "The answer to a reply lookup."),
        "DeadLetterHeaders": {
            "type": "object",
            "description": "The dead-lettered message's original headers, plus where it came from. `Nats-Msg-Id` is replaced by `dlq:<stream>:<sequence>`, so copying the same message twice stores it once.",
            "required": ["Nats-Msg-Id", "X-Dlq-Reason", "X-Dlq-Sequence"],
            "properties": {
                "Nats-Msg-Id": { "type": "string", "description": "`dlq:<stream>:<stream sequence of the original>`." },
                "X-Dlq-Reason": { "type": "string", "description": "Why: `max deliveries (N) reached`, `undecodable envelope: ...`, `operation X on the subject of Y`." },
                "X-Dlq-Sequence": { "type": "string", "description": "Stream sequence of the original message." }
            },
            "additionalProperties": { "type": "string" }
        }
    })
}

fn request_message(config: &BridgeConfig, op: Operation) -> Value {
    let t = config.timeouts(op);
    let (headers_ref, how) = match op.pattern {
        Pattern::Durable => (
            "#/components/schemas/DurableRequestHeaders",
            format!(
                "Durable: stored in stream `{}`, delivered to the operation's durable pull consumer with explicit ack. The bridge waits {} ms for JetStream's ack and {} ms for the reply.",
                config.stream_name(op.family),
                t.ack.map(|d| d.as_millis()).unwrap_or(0),
                t.reply.as_millis()
            ),
        ),
        Pattern::Query => (
            "#/components/schemas/QueryRequestHeaders",
            format!("Query: core NATS request/reply, nothing stored. The bridge waits {} ms for the reply.", t.reply.as_millis()),
        ),
    };
    json!({
        "name": format!("{}.request", op.name),
        "title": format!("{} request", op.name),
        "summary": op.description,
        "description": format!("`{}` ({}). {how}", op.name, op.trait_name),
        "contentType": "application/json",
        "headers": reference(headers_ref),
        "payload": {
            "allOf": [
                reference("#/components/schemas/RequestEnvelope"),
                { "type": "object", "properties": { "operation": { "const": op.name } } }
            ]
        }
    })
}

fn messages(config: &BridgeConfig) -> Value {
    let mut m = Map::new();
    for op in catalogue::all() {
        m.insert(format!("{}_request", ident(op.name)), request_message(config, op));
    }
    m.insert(
        "response".into(),
        json!({
            "name": "response",
            "title": "Worker reply",
            "summary": "The outcome of one operation instance.",
            "contentType": "application/json",
            "headers": reference("#/components/schemas/ReplyHeaders"),
            "payload": reference("#/components/schemas/ResponseEnvelope")
        }),
    );
    m.insert(
        "lookup_request".into(),
        json!({
            "name": "lookup_request",
            "title": "Reply lookup",
            "summary": "The original request again: which stored result is asked for (by its idempotency key).",
            "contentType": "application/json",
            "headers": reference("#/components/schemas/QueryRequestHeaders"),
            "payload": reference("#/components/schemas/RequestEnvelope")
        }),
    );
    m.insert(
        "lookup_reply".into(),
        json!({
            "name": "lookup_reply",
            "title": "Reply lookup answer",
            "summary": "`X-Lookup: hit` with the stored reply as body, `X-Lookup: pending` (a delivery is working on it) or `X-Lookup: miss`, both with an empty body.",
            "contentType": "application/json",
            "headers": reference("#/components/schemas/LookupReplyHeaders"),
            "payload": { "oneOf": [reference("#/components/schemas/ResponseEnvelope"), { "type": "string", "maxLength": 0 }] }
        }),
    );
    m.insert(
        "dead_letter".into(),
        json!({
            "name": "dead_letter",
            "title": "Dead letter",
            "summary": "A request that could not be processed, copied unchanged to the dead-letter stream.",
            "contentType": "application/json",
            "headers": reference("#/components/schemas/DeadLetterHeaders"),
            "payload": { "description": "The original body, byte for byte (it may not even be JSON)." }
        }),
    );
    Value::Object(m)
}

fn operation_channel(config: &BridgeConfig, op: Operation, scheme: SubjectScheme) -> Value {
    let c = with_scheme(config, scheme);
    let template = c.subject_template(op);
    let t = c.timeouts(op);
    let mut ch = json!({
        "address": template,
        "title": op.name,
        "description": format!(
            "{} ({}, {} scheme). Subscribe to `{}`.",
            op.description,
            op.pattern,
            match scheme { SubjectScheme::Shared => "shared", SubjectScheme::PerMerchant => "per-merchant" },
            crate::subjects::wildcard(&template)
        ),
        "messages": { "request": reference(&format!("#/components/messages/{}_request", ident(op.name))) },
        "x-operation": op.name,
        "x-pattern": op.pattern.to_string(),
        "x-trait": op.trait_name,
        "x-reply-timeout-ms": t.reply.as_millis() as u64,
    });
    if let Some(p) = parameters(&template) {
        ch["parameters"] = p;
    }
    if op.pattern == Pattern::Durable {
        ch["x-stream"] = json!(c.stream_name(op.family));
        ch["x-durable-consumer"] = json!(consumer_name(op));
        ch["x-ack-timeout-ms"] = json!(t.ack.map(|d| d.as_millis() as u64).unwrap_or(0));
        ch["x-dead-letter-subject"] = json!(c.dlq_subject(op));
    }
    ch
}

/// The id of `op`'s channel and operation for a subject scheme (`payments_capture`,
/// `payments_capture_per_merchant`).
pub fn channel_id(op: Operation, scheme: SubjectScheme) -> String {
    match scheme {
        SubjectScheme::Shared => ident(op.name),
        SubjectScheme::PerMerchant => format!("{}{PER_MERCHANT_SUFFIX}", ident(op.name)),
    }
}

fn operation(op: Operation, scheme: SubjectScheme) -> Value {
    let id = channel_id(op, scheme);
    let channel = format!("#/channels/{}", pointer_token(&id));
    let (reply_channel, what) = match op.pattern {
        Pattern::Durable => ("replies_inbox", "Process the message (idempotently, by its idempotency key), store the result, publish the reply to the subject in `X-Reply-To`, and only then ack the JetStream message."),
        Pattern::Query => ("replies_request_reply", "Answer on the message's NATS reply subject. Nothing is stored by JetStream; a query must not move money."),
    };
    let mut reply = json!({
        "channel": reference(&format!("#/channels/{reply_channel}")),
        "messages": [reference(&format!("#/channels/{reply_channel}/messages/response"))],
    });
    if op.pattern == Pattern::Durable {
        reply["address"] = json!({
            "location": format!("$message.header#/{}", pointer_token(headers::REPLY_TO)),
            "description": "The bridge's reply inbox, from the request's `X-Reply-To` header."
        });
    }
    json!({
        "action": "receive",
        "channel": reference(&channel),
        "title": format!("Serve {}", op.name),
        "summary": op.description,
        "description": what,
        "messages": [reference(&format!("{channel}/messages/request"))],
        "reply": reply,
        "x-operation": op.name,
        "x-pattern": op.pattern.to_string(),
    })
}

/// The document for `config`'s prefixes, stream names and timeouts.
pub fn document(config: &BridgeConfig) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    for op in catalogue::all() {
        for scheme in [SubjectScheme::Shared, SubjectScheme::PerMerchant] {
            let id = channel_id(op, scheme);
            channels.insert(id.clone(), operation_channel(config, op, scheme));
            operations.insert(id, operation(op, scheme));
        }
    }
    channels.insert(
        "replies_inbox".into(),
        json!({
            "address": null,
            "title": "Reply inbox",
            "description": "Where durable replies go: the subject in the request's `X-Reply-To` header (the bridge's one multiplexed inbox, `_INBOX.hsb.<bridge id>.<token>`). Publish with core NATS, not JetStream.",
            "messages": { "response": reference("#/components/messages/response") }
        }),
    );
    channels.insert(
        "replies_request_reply".into(),
        json!({
            "address": null,
            "title": "Request/reply subject",
            "description": "Where query replies go: the NATS reply subject of the request message (`msg.reply`), as with any core NATS request.",
            "messages": {
                "response": reference("#/components/messages/response"),
                "lookup_reply": reference("#/components/messages/lookup_reply")
            }
        }),
    );
    let prefix = &config.subjects.prefix;
    for scheme in [SubjectScheme::Shared, SubjectScheme::PerMerchant] {
        let c = with_scheme(config, scheme);
        let template = c.lookup_template();
        let id = match scheme {
            SubjectScheme::Shared => "replies_lookup".to_string(),
            SubjectScheme::PerMerchant => format!("replies_lookup{PER_MERCHANT_SUFFIX}"),
        };
        let mut ch = json!({
            "address": template,
            "title": "Reply lookup",
            "description": "A bridge whose durable publish JetStream reported as a duplicate asks here for the stored result of the original (the body is the request again). Answer from the result store; never process the request.",
            "messages": { "lookup_request": reference("#/components/messages/lookup_request") }
        });
        if let Some(p) = parameters(&template) {
            ch["parameters"] = p;
        }
        channels.insert(id.clone(), ch);
        operations.insert(
            id.clone(),
            json!({
                "action": "receive",
                "channel": reference(&format!("#/channels/{}", pointer_token(&id))),
                "title": "Answer reply lookups",
                "summary": "Re-send a stored result to a bridge that lost the original reply.",
                "messages": [reference(&format!("#/channels/{}/messages/lookup_request", pointer_token(&id)))],
                "reply": {
                    "channel": reference("#/channels/replies_request_reply"),
                    "messages": [reference("#/channels/replies_request_reply/messages/lookup_reply")]
                }
            }),
        );
    }
    let durable_families: Vec<String> = catalogue::durable_families().map(|f| f.to_string()).collect();
    let durable_actions: Vec<&str> = {
        let mut a: Vec<&str> = catalogue::all().filter(|o| o.pattern == Pattern::Durable).map(|o| o.action).collect();
        a.sort_unstable();
        a.dedup();
        a
    };
    channels.insert(
        "dead_letters".into(),
        json!({
            "address": format!("{prefix}.dlq.{{family}}.{{action}}"),
            "title": "Dead letters",
            "description": format!(
                "Stream `{}`. A durable message that cannot be processed (undecodable, wrong operation) or that reached the consumer's `max_deliver` (JetStream's `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES` advisory) is copied here with JetStream, then terminated; nothing is lost.",
                config.dlq_stream_name()
            ),
            "parameters": {
                "family": { "description": "The operation's family.", "enum": durable_families },
                "action": { "description": "The operation's action (last subject token).", "enum": durable_actions }
            },
            "messages": { "dead_letter": reference("#/components/messages/dead_letter") }
        }),
    );
    operations.insert(
        "dead_letters".into(),
        json!({
            "action": "send",
            "channel": reference("#/channels/dead_letters"),
            "title": "Dead-letter a message",
            "summary": "Copy a message that will never be processed to the dead-letter stream (JetStream publish), then terminate it (`AckKind::Term`).",
            "messages": [reference("#/channels/dead_letters/messages/dead_letter")]
        }),
    );

    let host =
        config.server_urls().first().map(|u| u.split("://").last().unwrap_or(u).to_string()).unwrap_or_else(|| "127.0.0.1:4222".into());
    json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Hyperswitch NATS bridge: worker protocol",
            "version": PROTOCOL_VERSION,
            "description": format!(
                "The messages a worker receives from the NATS bridge and what it answers, for every one of the {} operations of the catalogue (`protocol/src/catalogue.rs`). Generated by `nats_bridge::asyncapi`; do not edit by hand.\n\n\
                 - **Durable** operations are published to JetStream (one stream per family, de-duplicated by `Nats-Msg-Id`). A worker pulls them from a durable consumer with explicit ack, looks the idempotency key up in its result store, calls the processor with that key, stores the result, publishes the reply to the subject in `X-Reply-To`, and only then acks.\n\
                 - **Query** operations are core NATS request/reply: a worker answers on the message's reply subject.\n\
                 - The body's `merchant_id` is authoritative; headers are copies. Card data travels only in `router_data`.\n\
                 - Decoders ignore unknown fields.\n\n\
                 Subjects use the shared scheme (`{prefix}.<family>.<action>`) by default; channels with the `{PER_MERCHANT_SUFFIX}` suffix describe the per-merchant scheme. The guide for worker authors is `docs/worker-guide.md`.",
                catalogue::CATALOGUE.len()
            )
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": host,
                "protocol": "nats",
                "description": "A NATS server (or cluster) with JetStream enabled."
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages(config),
            "schemas": schemas()
        }
    })
}

/// A JSON value serialized with object keys sorted, whatever `serde_json`'s map order.
struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, &Sorted(v))?;
                }
                map.end()
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&Sorted(v))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Canonical text of a JSON value: keys sorted, two-space indent, final newline.
pub fn canonical_json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&Sorted(value)).expect("a json value serializes");
    text.push('\n');
    text
}

/// The document for `config` as canonical JSON text (what `contract/asyncapi.json` holds for
/// the default configuration).
pub fn render(config: &BridgeConfig) -> String {
    canonical_json(&document(config))
}
