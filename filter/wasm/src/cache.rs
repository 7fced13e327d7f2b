//! The per-VM copies of the routing table and of the local account table. Reading shared data
//! copies the value, so each request reads only 8-byte version keys, and a table is copied and
//! decoded again only when its version moved: the per-request cost does not grow with the number
//! of accounts.

use std::cell::RefCell;
use std::rc::Rc;

use codexmesh_filter_core::local::LocalTable;
use codexmesh_filter_core::snapshot::{decode_version, encode_version, SnapshotIndex};
use proxy_wasm::types::LogLevel;

use crate::host;

pub const VERSION_KEY: &str = "codexmesh.snapshot.version";
pub const TABLE_KEY: &str = "codexmesh.snapshot";
/// Per-Envoy account state learned from answers (cooldowns, circuits, 401 blocks).
pub const LOCAL_KEY: &str = "codexmesh.local";
/// Bumped (compare-and-swap, so every write gets its own value) after each write of
/// [`LOCAL_KEY`]: a reader that sees it unchanged keeps its decoded copy.
pub const LOCAL_VERSION_KEY: &str = "codexmesh.local.version";

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
    /// The local table as last decoded here, with the version key value it was read under.
    static LOCAL: RefCell<Option<(u64, Rc<LocalTable>)>> = const { RefCell::new(None) };
}

/// This Envoy's local account state (empty when nothing was learned yet). Read up to three times
/// per request: each read costs the 8-byte version; the table is copied only after a write.
pub fn local_table() -> Rc<LocalTable> {
    let Some(version) = host::shared_data(LOCAL_VERSION_KEY).and_then(|b| decode_version(&b))
    else {
        // Nothing written yet by this module (or only by an older one that kept no version).
        return host::shared_data(LOCAL_KEY)
            .map(|bytes| Rc::new(LocalTable::decode(&bytes)))
            .unwrap_or_default();
    };
    LOCAL.with(|cell| {
        let mut cached = cell.borrow_mut();
        if let Some((seen, table)) = cached.as_ref() {
            if *seen == version {
                return table.clone();
            }
        }
        // The table is written before its version, so it is at least as new as `version`.
        let table = Rc::new(
            host::shared_data(LOCAL_KEY)
                .map(|bytes| LocalTable::decode(&bytes))
                .unwrap_or_default(),
        );
        *cached = Some((version, table.clone()));
        table
    })
}

/// Applies `change` to the local table atomically across workers, then bumps its version.
pub fn update_local<F>(mut change: F) -> bool
where
    F: FnMut(&mut LocalTable),
{
    let written = host::update_shared_data(LOCAL_KEY, |bytes| {
        let mut table = LocalTable::decode(bytes);
        change(&mut table);
        table.encode()
    });
    written
        && host::update_shared_data(LOCAL_VERSION_KEY, |bytes| {
            let next = decode_version(bytes).unwrap_or(0).wrapping_add(1);
            encode_version(next).to_vec()
        })
}
