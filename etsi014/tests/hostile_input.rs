//! Every parser of the crate takes arbitrary input without panicking, and what parses
//! serializes back to something that parses to the same value.

use proptest::prelude::*;
use qsi_etsi014::{
    EncKeysQuery, Endpoint, KeyContainer, KeyId, KeyIds, KeyRequest, Limits, parse_dec_keys_query,
    validate_key_ids, validate_key_request,
};

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), text in ".{0,80}") {
        let l = Limits::default();
        if let Ok(r) = KeyRequest::from_json(&bytes) {
            let _ = validate_key_request(&r, &l, "b");
        }
        if let Ok(ids) = KeyIds::from_json(&bytes) {
            let _ = validate_key_ids(&ids, &l);
        }
        let _ = KeyContainer::from_json(&bytes).map(|c| c.validate(None, None));
        let _ = Endpoint::parse(&text);
        let _ = EncKeysQuery::parse(Some(&text));
        let _ = parse_dec_keys_query(Some(&text));
        let _ = KeyId::parse(&text);
    }

    #[test]
    fn key_requests_round_trip(number in proptest::option::of(any::<i64>()), size in proptest::option::of(any::<i64>()),
                               extra in proptest::option::of(proptest::collection::vec("[a-z-]{1,8}", 0..3))) {
        let r = KeyRequest { number, size, additional_slave_sae_ids: extra, ..Default::default() };
        let back = KeyRequest::from_json(&serde_json::to_vec(&r).unwrap()).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn valid_requests_respect_the_limits(number in -5i64..2000, size in -16i64..10000) {
        let l = Limits::default();
        let r = KeyRequest { number: Some(number), size: Some(size), ..Default::default() };
        if let Ok(v) = validate_key_request(&r, &l, "b") {
            prop_assert!(v.number >= 1 && v.number <= l.max_key_per_request);
            prop_assert!(v.size % 8 == 0 && v.size >= l.min_key_size && v.size <= l.max_key_size);
        }
    }

    #[test]
    fn paths_round_trip(id in "\\PC{1,20}") {
        let ep = Endpoint::EncKeys { slave_sae_id: id };
        prop_assert_eq!(Endpoint::parse(&ep.path()).unwrap(), ep);
    }
}
