//! [`DeskStore`]: the support desk's records, kept as the bytes the desk
//! service encoded.

use std::ops::Bound;

use async_trait::async_trait;
use natter_core::TenantId;
use natter_store::{
    DeskKind, DeskRecord, DeskStore, DeskWrite, Page, PageRequest, Result, validate_desk_writes,
};

use crate::tables::DESK_RECORDS;
use crate::{EmbeddedStore, into_page};

#[async_trait]
impl DeskStore for EmbeddedStore {
    async fn write_desk(&self, tenant: &TenantId, writes: &[DeskWrite]) -> Result<()> {
        validate_desk_writes(writes)?;
        if writes.is_empty() {
            return Ok(());
        }
        let (tenant, writes) = (tenant.clone(), writes.to_vec());
        // One transaction: all of the call lands or none.
        self.write(move |txn| {
            let mut records = txn.open_table(DESK_RECORDS)?;
            let t = tenant.as_str();
            for write in &writes {
                match write {
                    DeskWrite::Put { kind, id, body } => {
                        records.insert((t, kind.as_str(), id.as_str()), body.as_slice())?;
                    }
                    DeskWrite::Delete { kind, id } => {
                        records.remove((t, kind.as_str(), id.as_str()))?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn write_desk_together(&self, tenant: &TenantId, writes: &[DeskWrite]) -> Result<()> {
        // `write_desk` is one transaction already.
        self.write_desk(tenant, writes).await
    }

    async fn desk_record(
        &self,
        tenant: &TenantId,
        kind: DeskKind,
        id: &str,
    ) -> Result<Option<DeskRecord>> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.read(move |txn| {
            let records = txn.open_table(DESK_RECORDS)?;
            let body = records
                .get((tenant.as_str(), kind.as_str(), id.as_str()))?
                .map(|body| body.value().to_vec());
            Ok(body.map(|body| DeskRecord { id, body }))
        })
        .await
    }

    async fn desk_records(
        &self,
        tenant: &TenantId,
        kind: DeskKind,
        page: PageRequest<String>,
    ) -> Result<Page<DeskRecord, String>> {
        let size = self.page_size(page.size);
        let tenant = tenant.clone();
        self.read(move |txn| {
            let records = txn.open_table(DESK_RECORDS)?;
            let (t, k) = (tenant.as_str(), kind.as_str());
            let lower = match &page.after {
                Some(after) => Bound::Excluded((t, k, after.as_str())),
                None => Bound::Included((t, k, "")),
            };
            let mut items = Vec::with_capacity(size + 1);
            for entry in records.range((lower, Bound::Unbounded))? {
                let (key, value) = entry?;
                let (kt, kk, id) = key.value();
                if (kt, kk) != (t, k) || items.len() == size + 1 {
                    break;
                }
                items.push(DeskRecord {
                    id: id.to_owned(),
                    body: value.value().to_vec(),
                });
            }
            Ok(into_page(items, size, |r: &DeskRecord| r.id.clone()))
        })
        .await
    }
}
