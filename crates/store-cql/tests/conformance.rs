//! The shared store conformance suite, against a real CQL node.

mod common;

use natter_core::Limits;
use natter_store_cql::CqlStore;

async fn store(limits: Limits) -> CqlStore {
    common::store(limits).await
}

natter_store::store_conformance!(store);
