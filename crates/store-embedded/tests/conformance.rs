//! The shared store contract, run against the embedded store.

use natter_core::Limits;
use natter_store_embedded::EmbeddedStore;

async fn temporary(limits: Limits) -> EmbeddedStore {
    EmbeddedStore::temporary(limits).expect("open a temporary store")
}

natter_store::store_conformance!(temporary);
