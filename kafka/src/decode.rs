//! What a message means. The value is one JSON object: on `user-events` and
//! `transaction-stream` the event that `POST /v1/events` takes; on `product-updates` the body of
//! `PUT /v1/items/{id}` plus `item_id`, or `{"item_id": .., "deleted": true}`. Anything else is
//! rejected with a reason, which the caller sends to the dead-letter topic.

use common::{Event, EventInput, Item, ItemInput};
use serde_json::Value;

use crate::{Message, Settings, Topic};

#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    Event(Event),
    Upsert(Item),
    Delete(String),
}

/// The id of an event that came without one: its place in the topic, so that a redelivery gets
/// the same id and is dropped as a duplicate.
pub fn default_event_id(settings: &Settings, message: &Message) -> String {
    format!(
        "{}-{}-{}",
        settings.topic(message.topic),
        message.partition,
        message.offset
    )
}

/// Decodes `message`; `now` (epoch ms) stamps what has neither its own nor a broker timestamp.
pub fn decode(settings: &Settings, message: &Message, now: i64) -> Result<Decoded, String> {
    let payload = message
        .payload
        .as_deref()
        .ok_or("the message has no value")?;
    let ts = message.timestamp.filter(|t| *t >= 0).unwrap_or(now);
    match message.topic {
        Topic::UserEvents | Topic::Transactions => {
            let input: EventInput = serde_json::from_slice(payload)
                .map_err(|e| format!("not a valid event object: {e}"))?;
            let event = input
                .validate(ts, || default_event_id(settings, message))
                .map_err(|e| format!("invalid event: {e}"))?;
            Ok(Decoded::Event(event))
        }
        Topic::ProductUpdates => {
            let mut object = match serde_json::from_slice(payload) {
                Ok(Value::Object(object)) => object,
                Ok(_) => return Err("not a JSON object".into()),
                Err(e) => return Err(format!("not valid JSON: {e}")),
            };
            let item_id = match object.remove("item_id") {
                Some(Value::String(id)) => id,
                _ => return Err("`item_id` must be a string".into()),
            };
            common::validate_id("item_id", &item_id).map_err(|e| format!("invalid item: {e}"))?;
            match object.remove("deleted") {
                Some(Value::Bool(true)) => return Ok(Decoded::Delete(item_id)),
                None | Some(Value::Bool(false)) => {}
                Some(_) => return Err("`deleted` must be a boolean".into()),
            }
            let input: ItemInput = serde_json::from_value(Value::Object(object))
                .map_err(|e| format!("invalid item: {e}"))?;
            let item = input
                .validate(&item_id, now)
                .map_err(|e| format!("invalid item: {e}"))?;
            Ok(Decoded::Upsert(item))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> Settings {
        Settings {
            brokers: "127.0.0.1:9092".into(),
            group: "g".into(),
            prefix: String::new(),
            partitions: 12,
            replication: 1,
            produce_timeout: Duration::from_secs(1),
            session_timeout: Duration::from_secs(6),
            options: Default::default(),
        }
    }

    fn message(topic: Topic, payload: &str) -> Message {
        Message {
            topic,
            partition: 3,
            offset: 41,
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            timestamp: Some(1_700_000_000_000),
            trace: None,
        }
    }

    fn decode_str(topic: Topic, payload: &str) -> Result<Decoded, String> {
        decode(&settings(), &message(topic, payload), 5)
    }

    #[test]
    fn events_without_id_or_time_take_their_place_and_broker_time() {
        let decoded = decode_str(
            Topic::Transactions,
            r#"{"user_id":"u1","item_id":"i1","kind":"purchase","value":9.5}"#,
        );
        let Ok(Decoded::Event(event)) = decoded else {
            panic!("{decoded:?}");
        };
        assert_eq!(event.event_id, "transaction-stream-3-41");
        assert_eq!(event.ts, 1_700_000_000_000);
        assert_eq!(event.value, Some(9.5));
        let own = decode_str(
            Topic::UserEvents,
            r#"{"event_id":"e7","user_id":"u1","item_id":"i1","kind":"view","ts":12}"#,
        );
        let Ok(Decoded::Event(event)) = own else {
            panic!("{own:?}");
        };
        assert_eq!((event.event_id.as_str(), event.ts), ("e7", 12));
    }

    #[test]
    fn product_updates_upsert_or_delete() {
        let upsert = decode_str(
            Topic::ProductUpdates,
            r#"{"item_id":"sku-1","title":"Lamp","categories":["home"],"available":false}"#,
        );
        let Ok(Decoded::Upsert(item)) = upsert else {
            panic!("{upsert:?}");
        };
        assert_eq!(
            (item.item_id.as_str(), item.title.as_str()),
            ("sku-1", "Lamp")
        );
        assert_eq!(
            (item.categories.clone(), item.available),
            (vec!["home".to_owned()], false)
        );
        assert_eq!(
            decode_str(
                Topic::ProductUpdates,
                r#"{"item_id":"sku-1","deleted":true}"#
            ),
            Ok(Decoded::Delete("sku-1".into()))
        );
    }

    #[test]
    fn malformed_messages_say_why() {
        let cases = [
            (Topic::UserEvents, "not json", "not a valid event object"),
            (
                Topic::UserEvents,
                r#"{"user_id":"u","item_id":"i","kind":"teleport"}"#,
                "`kind` must be one of",
            ),
            (
                Topic::UserEvents,
                r#"{"user_id":"","item_id":"i","kind":"view"}"#,
                "`user_id` must not be empty",
            ),
            (
                Topic::UserEvents,
                r#"{"user_id":"u","item_id":"i","kind":"view","extra":1}"#,
                "unknown field",
            ),
            (Topic::ProductUpdates, r#"[1,2]"#, "not a JSON object"),
            (
                Topic::ProductUpdates,
                r#"{"title":"x"}"#,
                "`item_id` must be a string",
            ),
            (
                Topic::ProductUpdates,
                r#"{"item_id":"a","deleted":"yes"}"#,
                "`deleted` must be a boolean",
            ),
            (
                Topic::ProductUpdates,
                r#"{"item_id":"a","title":""}"#,
                "`title` must be",
            ),
        ];
        for (topic, payload, why) in cases {
            let error = decode_str(topic, payload).expect_err(payload);
            assert!(error.contains(why), "{payload}: {error}");
        }
        let mut empty = message(Topic::UserEvents, "");
        empty.payload = None;
        assert_eq!(
            decode(&settings(), &empty, 0),
            Err("the message has no value".into())
        );
    }

    #[test]
    fn a_nul_in_a_product_title_or_attribute_is_a_dead_letter_not_a_catalog_write() {
        for payload in [
            r#"{"item_id":"sku-1","title":"Lamp\u0000"}"#,
            r#"{"item_id":"sku-1","title":"Lamp","attributes":{"colour":"red\u0000"}}"#,
            r#"{"item_id":"sku-1","title":"Lamp","attributes":{"x":{"k\u0000":1}}}"#,
        ] {
            let error = decode_str(Topic::ProductUpdates, payload).expect_err(payload);
            assert!(error.contains("control characters"), "{payload}: {error}");
        }
    }

    /// Any JSON value, its strings drawn from every character (controls included) and its keys
    /// often the fields decoding looks for, so that generated objects reach every branch.
    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let fields = prop::sample::select(vec![
            "event_id",
            "user_id",
            "item_id",
            "kind",
            "value",
            "ts",
            "title",
            "categories",
            "tags",
            "attributes",
            "available",
            "deleted",
        ]);
        let key = prop_oneof![fields.prop_map(str::to_owned), any::<String>()].boxed();
        let text = prop_oneof![
            prop::sample::select(vec!["view", "purchase", "rating", "u1", "i1", "Lamp", " "])
                .prop_map(str::to_owned),
            any::<String>(),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (0i64..40_000_000_000_000).prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Objects shaped like an event or a product update, with arbitrary values: most of them get
    /// past parsing, so the validation behind it is what is exercised.
    fn shaped() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = || {
            prop_oneof![
                3 => prop::sample::select(vec!["u1", "i1", "Lamp", "a b", ""]).prop_map(str::to_owned),
                1 => any::<String>(),
            ]
        };
        let kind = prop_oneof![
            prop::sample::select(common::EventKind::ALL.map(|k| k.as_str()).to_vec())
                .prop_map(str::to_owned),
            any::<String>(),
        ];
        let event = (
            proptest::option::of(text()),
            text(),
            text(),
            kind,
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(|(id, user, item, kind, value, ts)| {
                let mut e = serde_json::json!({"user_id": user, "item_id": item, "kind": kind});
                if let Some(id) = id {
                    e["event_id"] = id.into();
                }
                if let Some(v) = value {
                    e["value"] = v.into();
                }
                if let Some(ts) = ts {
                    e["ts"] = ts.into();
                }
                e
            });
        let product = (
            text(),
            text(),
            prop::collection::vec(text(), 0..4),
            json(),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(id, title, labels, attributes, deleted)| {
                let mut p = serde_json::json!({"item_id": id, "title": title, "tags": labels});
                if attributes.is_object() {
                    p["attributes"] = attributes;
                }
                if let Some(d) = deleted {
                    p["deleted"] = d.into();
                }
                p
            });
        prop_oneof![event, product]
    }

    fn topic() -> impl proptest::strategy::Strategy<Value = Topic> {
        proptest::sample::select(vec![
            Topic::UserEvents,
            Topic::Transactions,
            Topic::ProductUpdates,
        ])
    }

    /// What decoding promises: an answer, never a panic; an event or item it hands on passes the
    /// same validation again unchanged (so the log and the catalog only ever hold valid data); a
    /// refusal says why.
    fn check(decoded: Result<Decoded, String>) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::prop_assert;
        use proptest::prop_assert_eq;
        match decoded {
            Ok(Decoded::Event(event)) => {
                let again = EventInput {
                    event_id: Some(event.event_id.clone()),
                    user_id: event.user_id.clone(),
                    item_id: event.item_id.clone(),
                    kind: event.kind.as_str().to_owned(),
                    value: event.value,
                    ts: Some(event.ts),
                }
                .validate(0, || unreachable!("the event has an id"));
                prop_assert_eq!(again, Ok(event));
            }
            Ok(Decoded::Upsert(item)) => {
                let again = ItemInput {
                    title: item.title.clone(),
                    categories: item.categories.clone(),
                    tags: item.tags.clone(),
                    attributes: item.attributes.clone(),
                    available: Some(item.available),
                }
                .validate(&item.item_id, item.updated_at);
                prop_assert_eq!(again, Ok(item));
            }
            Ok(Decoded::Delete(id)) => prop_assert!(common::validate_id("item_id", &id).is_ok()),
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        #[test]
        fn arbitrary_bytes_decode_to_an_event_a_catalog_change_or_a_reason(
            topic in topic(),
            payload in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..256)),
            timestamp in proptest::option::of(proptest::num::i64::ANY),
        ) {
            let message = Message { payload, timestamp, ..message(topic, "") };
            check(decode(&settings(), &message, 1_700_000_000_000))?;
        }

        #[test]
        fn arbitrary_json_decodes_to_an_event_a_catalog_change_or_a_reason(
            topic in topic(),
            value in proptest::prop_oneof![json(), shaped()],
            timestamp in proptest::option::of(proptest::num::i64::ANY),
        ) {
            let payload = serde_json::to_vec(&value).expect("serialises");
            let message = Message { payload: Some(payload), timestamp, ..message(topic, "") };
            check(decode(&settings(), &message, 1_700_000_000_000))?;
        }
    }
}
