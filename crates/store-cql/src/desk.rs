//! [`DeskStore`] on CQL: the support desk's records, one `desk_records`
//! partition per tenant and kind, kept as the bytes the desk service
//! encoded. Written rarely, by the one process that holds the tenant's
//! partition: plain writes, one after another, no LWT.

use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use natter_core::TenantId;
use natter_store::{
    DeskKind, DeskRecord, DeskStore, DeskWrite, Page, PageRequest, Result, validate_desk_writes,
};

use scylla::statement::batch::{Batch, BatchType};

use crate::announcements::now_micros;
use crate::conversations::ROWS_PER_READ;
use crate::db::corrupt;
use crate::sequences::Either;
use crate::{CqlStore, page};

/// The timestamp this process gave a desk write last.
static LAST_TIMESTAMP: AtomicI64 = AtomicI64::new(0);

/// The timestamp of a desk write: the clock in microseconds, raised above
/// every one this process gave before, so that of a call's writes of one
/// record the later stands. The nodes' timestamps could run backwards from
/// one coordinator to the next, and a batch's would tie, which a delete
/// wins over a put.
fn next_timestamp() -> i64 {
    let now = now_micros();
    let after = |last: i64| now.max(last.saturating_add(1));
    match LAST_TIMESTAMP.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
        Some(after(last))
    }) {
        Ok(last) | Err(last) => after(last),
    }
}

fn record(kind: DeskKind, id: String, body: Option<Vec<u8>>) -> Result<DeskRecord> {
    let body = body.ok_or_else(|| corrupt(&format!("desk {} {id}", kind.as_str()), "no body"))?;
    Ok(DeskRecord { id, body })
}

#[async_trait]
impl DeskStore for CqlStore {
    async fn write_desk(&self, tenant: &TenantId, writes: &[DeskWrite]) -> Result<()> {
        validate_desk_writes(writes)?;
        // In order, each once the one before has landed, so what a failure
        // leaves is a prefix of `writes`.
        let db = self.db();
        for write in writes {
            match write {
                DeskWrite::Put { kind, id, body } => {
                    let values = (
                        tenant.as_str(),
                        kind.as_str(),
                        id.as_str(),
                        body.as_slice(),
                        next_timestamp(),
                    );
                    let put = &self.statements.desk_record_put;
                    db.write("put desk record", put, values).await?;
                }
                DeskWrite::Delete { kind, id } => {
                    let values = (
                        next_timestamp(),
                        tenant.as_str(),
                        kind.as_str(),
                        id.as_str(),
                    );
                    let delete = &self.statements.desk_record_delete;
                    db.write("delete desk record", delete, values).await?;
                }
            }
        }
        Ok(())
    }

    async fn write_desk_together(&self, tenant: &TenantId, writes: &[DeskWrite]) -> Result<()> {
        validate_desk_writes(writes)?;
        if writes.is_empty() {
            return Ok(());
        }
        // One logged batch: the batch log makes it land whole, across the
        // partitions of its kinds, or not at all. Each statement keeps its
        // own timestamp, raised in order, so later writes of one record in
        // the call stand.
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_is_idempotent(true);
        let mut values = Vec::with_capacity(writes.len());
        for write in writes {
            match write {
                DeskWrite::Put { kind, id, body } => {
                    batch.append_statement(self.statements.desk_record_put.clone());
                    values.push(Either::Left((
                        tenant.as_str(),
                        kind.as_str(),
                        id.as_str(),
                        body.as_slice(),
                        next_timestamp(),
                    )));
                }
                DeskWrite::Delete { kind, id } => {
                    batch.append_statement(self.statements.desk_record_delete.clone());
                    values.push(Either::Right((
                        next_timestamp(),
                        tenant.as_str(),
                        kind.as_str(),
                        id.as_str(),
                    )));
                }
            }
        }
        self.db()
            .batch("write desk records together", &batch, values)
            .await
    }

    async fn desk_record(
        &self,
        tenant: &TenantId,
        kind: DeskKind,
        id: &str,
    ) -> Result<Option<DeskRecord>> {
        let row: Option<(Option<Vec<u8>>,)> = self
            .db()
            .row(
                "read desk record",
                &self.statements.desk_record_get,
                (tenant.as_str(), kind.as_str(), id),
            )
            .await?;
        row.map(|(body,)| record(kind, id.to_owned(), body))
            .transpose()
    }

    async fn desk_records(
        &self,
        tenant: &TenantId,
        kind: DeskKind,
        request: PageRequest<String>,
    ) -> Result<Page<DeskRecord, String>> {
        let size = self.page_size(request.size);
        // One past the page, to tell whether another follows; bodies run
        // to 64 KiB, so a few requests of up to `ROWS_PER_READ` rows each.
        let limit = size as usize + 1;
        let mut records = Vec::new();
        // Every id sorts after "": no id is empty.
        let mut after = request.after.unwrap_or_default();
        while records.len() < limit {
            let want = (limit - records.len()).min(ROWS_PER_READ as usize);
            let rows: Vec<(String, Option<Vec<u8>>)> = self
                .db()
                .rows(
                    "list desk records",
                    &self.statements.desk_records_after,
                    (tenant.as_str(), kind.as_str(), after.as_str(), want as i32),
                )
                .await?;
            let got = rows.len();
            for (id, body) in rows {
                records.push(record(kind, id, body)?);
            }
            match records.last() {
                Some(last) if got == want => after.clone_from(&last.id),
                _ => break,
            }
        }
        Ok(page(records, size, |r| r.id.clone()))
    }
}
