//! The filter's snapshot decode (bytes the control plane pushes, read from Envoy's shared data):
//! any bytes decode or are refused; what decodes re-encodes to itself, and every lookup a
//! request makes on it answers without panicking.
#![no_main]

use codexmesh_filter_core::pb;
use codexmesh_filter_core::provider::Provider;
use codexmesh_filter_core::snapshot::SnapshotIndex;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = pb::Snapshot::decode(data) else {
        assert!(SnapshotIndex::decode(data).is_err());
        return;
    };
    let again = pb::Snapshot::decode(decoded.encode_to_vec().as_slice());
    assert_eq!(again.as_ref(), Ok(&decoded));
    let Ok(index) = SnapshotIndex::decode(data) else {
        panic!("decodes as a message but not as an index");
    };
    for pool_ix in 0..=index.pools().len() {
        let _ = (index.pool(pool_ix), index.pool_index(pool_ix));
        for provider in Provider::ALL {
            if let Some(lane) = index.lane(pool_ix, provider) {
                assert!(index.lane_pool(lane).is_some());
                let _ = index.lane_index(lane);
            }
        }
    }
    for pool in index.pools() {
        let _ = index.pool_by_id(&pool.id);
        for account in &pool.accounts {
            assert!(index.account(&account.id).is_some());
        }
    }
    let _ = codexmesh_filter_core::auth::authenticate(&index, Some("Bearer cmk_live"));
});
