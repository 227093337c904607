//! The proto3 JSON mapping matches etcd's HTTP gateway: original field names out, both
//! spellings in, 64-bit integers as strings, enums by name or number, zero values omitted.

use etcdgate_proto::etcdserverpb::*;
use etcdgate_proto::mvccpb::{event::EventType, Event, KeyValue};

#[test]
fn output_uses_original_names_strings_for_64_bit_and_omits_zero_values() {
    let lease = LeaseGrantResponse { header: None, id: 7587, ttl: 60, error: String::new() };
    assert_eq!(serde_json::to_string(&lease).unwrap(), r#"{"ID":"7587","TTL":"60"}"#);

    let member = Member { id: 1, name: "m0".into(), peer_ur_ls: vec!["http://p".into()], client_ur_ls: vec!["http://c".into()], is_learner: false };
    assert_eq!(
        serde_json::to_string(&member).unwrap(),
        r#"{"ID":"1","name":"m0","peerURLs":["http://p"],"clientURLs":["http://c"]}"#
    );

    let deleted_nothing = DeleteRangeResponse { header: Some(ResponseHeader { revision: 3, ..Default::default() }), deleted: 0, prev_kvs: vec![] };
    assert_eq!(serde_json::to_string(&deleted_nothing).unwrap(), r#"{"header":{"revision":"3"}}"#);

    let event = Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue { key: b"a".to_vec(), mod_revision: 4, ..Default::default() }),
        prev_kv: None,
    };
    assert_eq!(serde_json::to_string(&event).unwrap(), r#"{"type":"DELETE","kv":{"key":"YQ==","mod_revision":"4"}}"#);
    let put = Event { r#type: EventType::Put as i32, ..Default::default() };
    assert_eq!(serde_json::to_string(&put).unwrap(), "{}");
}

#[test]
fn input_accepts_both_spellings_numbers_as_strings_or_numbers_enums_by_name_or_number() {
    // lua-resty-etcd's shapes: lowerCamel in one call, snake_case in another.
    let txn: TxnRequest = serde_json::from_str(
        r#"{"compare":[{"key":"YQ==","result":"EQUAL","target":"MOD","mod_revision":"0"}],
            "success":[{"requestPut":{"key":"YQ==","value":"MQ=="}}],
            "failure":[{"request_range":{"key":"YQ==","rangeEnd":"Yg=="}}]}"#,
    )
    .unwrap();
    assert_eq!(txn.compare[0].target, compare::CompareTarget::Mod as i32);
    assert_eq!(txn.compare[0].target_union, Some(compare::TargetUnion::ModRevision(0)));
    assert!(matches!(txn.success[0].request, Some(request_op::Request::RequestPut(_))));
    let Some(request_op::Request::RequestRange(range)) = &txn.failure[0].request else { panic!() };
    assert_eq!(range.range_end, b"b");

    let camel: Compare = serde_json::from_str(r#"{"key":"YQ==","target":3,"createRevision":5,"unknown":{"x":1}}"#).unwrap();
    assert_eq!(camel.target, compare::CompareTarget::Value as i32);
    assert_eq!(camel.target_union, Some(compare::TargetUnion::CreateRevision(5)));

    let grant: LeaseGrantRequest = serde_json::from_str(r#"{"TTL":"60","ID":42}"#).unwrap();
    assert_eq!((grant.ttl, grant.id), (60, 42));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert!(serde_json::from_str::<RangeRequest>(r#"{"key":"!!!"}"#).is_err());
    assert!(serde_json::from_str::<RangeRequest>(r#"{"key":5}"#).is_err());
    assert!(serde_json::from_str::<RangeRequest>(r#"{"limit":"x"}"#).is_err());
    assert!(serde_json::from_str::<RangeRequest>(r#"{"sort_order":"SIDEWAYS"}"#).is_err());
    assert!(serde_json::from_str::<RangeRequest>(r#"[1,2]"#).is_err());
}
