//! The per-VM copy of the routing table. Reading shared data copies the value, so each request
//! reads only the 8-byte version and the table is decoded again only when that moved.

use std::cell::RefCell;
use std::rc::Rc;

use codexmesh_filter_core::local::LocalTable;
use codexmesh_filter_core::snapshot::{decode_version, SnapshotIndex};
use proxy_wasm::types::LogLevel;

use crate::host;

pub const VERSION_KEY: &str = "codexmesh.snapshot.version";
pub const TABLE_KEY: &str = "codexmesh.snapshot";
/// Per-Envoy account state learned from answers (cooldowns, circuits, 401 blocks).
pub const LOCAL_KEY: &str = "codexmesh.local";

#[derive(Default)]
struct Cache {
    index: Option<Rc<SnapshotIndex>>,
    /// Version key value whose table failed to decode: not retried until the key moves.
    bad_version: Option<u64>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The newest snapshot this VM can see, or None when none has arrived yet.
pub fn current() -> Option<Rc<SnapshotIndex>> {
    let announced = host::shared_data(VERSION_KEY).and_then(|b| decode_version(&b));
    CACHE.with(|cell| {
        let mut cache = cell.borrow_mut();
        let Some(announced) = announced else {
            return cache.index.clone();
        };
        let fresh = cache
            .index
            .as_ref()
            .is_some_and(|ix| ix.version() == announced);
        if fresh || cache.bad_version == Some(announced) {
            return cache.index.clone();
        }
        match host::shared_data(TABLE_KEY).map(|bytes| SnapshotIndex::decode(&bytes)) {
            Some(Ok(index)) => {
                // The table may be newer than the version we read (the writer stores the table
                // first); then the next request sees the key move and decodes again.
                cache.index = Some(Rc::new(index));
                cache.bad_version = None;
            }
            Some(Err(err)) => {
                host::log(LogLevel::Error, &format!("keeping snapshot in use: {err}"));
                cache.bad_version = Some(announced);
            }
            None => {}
        }
        cache.index.clone()
    })
}

thread_local! {
    /// The local table as last decoded here, with the CAS token of the value it came from.
    static LOCAL: RefCell<Option<(u32, Rc<LocalTable>)>> = const { RefCell::new(None) };
}

/// This Envoy's local account state (empty when nothing was learned yet). Decoded again only
/// when another write changed it: it is read up to three times per request.
pub fn local_table() -> Rc<LocalTable> {
    let Some((bytes, cas)) = host::shared_data_with_cas(LOCAL_KEY) else {
        return Rc::default();
    };
    LOCAL.with(|cell| {
        let mut cached = cell.borrow_mut();
        if let (Some(cas), Some((seen, table))) = (cas, cached.as_ref()) {
            if *seen == cas {
                return table.clone();
            }
        }
        let table = Rc::new(LocalTable::decode(&bytes));
        *cached = cas.map(|cas| (cas, table.clone()));
        table
    })
}

/// Applies `change` to the local table atomically across workers.
pub fn update_local<F>(mut change: F) -> bool
where
    F: FnMut(&mut LocalTable),
{
    host::update_shared_data(LOCAL_KEY, |bytes| {
        let mut table = LocalTable::decode(bytes);
        change(&mut table);
        table.encode()
    })
}
