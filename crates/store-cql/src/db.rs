//! The thin layer over the driver: run a prepared statement, decode its
//! rows or its LWT outcome, and turn driver errors into [`StoreError`]s.

use std::fmt::Display;

use natter_store::{Result, StoreError};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::serialize::batch::BatchValues;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

/// A driver error as a store error. What a retry can fix (no connection,
/// timeouts, overload, too few replicas) is `Unavailable`; a row that does
/// not decode is `Corrupt`. The rest (a rejected statement, a permission
/// error) is a defect or a misconfiguration that no caller can handle
/// either; it is logged and also reported as `Unavailable`, the store
/// error that promises least.
pub(crate) fn driver_error(what: &str, error: ExecutionError) -> StoreError {
    if !is_transient(&error) {
        tracing::error!(error = %error, "cql {what} failed");
    }
    StoreError::Unavailable(format!("cql {what}: {error}"))
}

fn is_transient(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::ReadFailure { .. }
                | DbError::WriteFailure { .. }
                | DbError::RateLimitReached { .. }
                | DbError::ServerError
        ),
        ExecutionError::LastAttemptError(
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId,
        ) => true,
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        _ => false,
    }
}

/// A stored value that does not decode.
pub(crate) fn corrupt(what: &str, error: impl Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

/// The outcome of a conditional (LWT) statement: whether it applied and,
/// when it did not, the current values of the columns it tested.
#[derive(Debug)]
pub(crate) struct Lwt {
    pub(crate) applied: bool,
    columns: Vec<(String, Option<CqlValue>)>,
}

impl Lwt {
    fn parse(result: QueryResult) -> Result<Self> {
        let rows = result
            .into_rows_result()
            .map_err(|e| corrupt("lwt result", e))?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|spec| spec.name().to_owned())
            .collect();
        let row = rows
            .maybe_first_row::<Row>()
            .map_err(|e| corrupt("lwt result", e))?
            .ok_or_else(|| corrupt("lwt result", "no row"))?;
        let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
        Ok(Self {
            applied,
            columns: names.into_iter().zip(row.columns).collect(),
        })
    }

    fn value(&self, name: &str) -> Option<&CqlValue> {
        self.columns
            .iter()
            .find(|(column, _)| column == name)
            .and_then(|(_, value)| value.as_ref())
    }

    /// A `bigint` column of the current row; `None` if absent or null.
    pub(crate) fn bigint(&self, name: &str) -> Option<i64> {
        match self.value(name) {
            Some(CqlValue::BigInt(v)) => Some(*v),
            _ => None,
        }
    }

    /// A `boolean` column of the current row; `None` if absent or null.
    pub(crate) fn boolean(&self, name: &str) -> Option<bool> {
        match self.value(name) {
            Some(CqlValue::Boolean(v)) => Some(*v),
            _ => None,
        }
    }
}

/// The session every statement runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Db<'a> {
    pub(crate) session: &'a Session,
}

impl Db<'_> {
    /// Runs a statement for its effect.
    pub(crate) async fn write(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<()> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| driver_error(what, e))?;
        Ok(())
    }

    /// Runs a batch for its effect.
    pub(crate) async fn batch(
        &self,
        what: &str,
        batch: &Batch,
        values: impl BatchValues,
    ) -> Result<()> {
        self.session
            .batch(batch, values)
            .await
            .map_err(|e| driver_error(what, e))?;
        Ok(())
    }

    /// Runs a conditional statement. The error is the driver's: a failed
    /// LWT has an unknown outcome and some callers resolve it themselves.
    pub(crate) async fn try_lwt(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> std::result::Result<Result<Lwt>, ExecutionError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map(Lwt::parse)
    }

    /// Runs a conditional statement, mapping every error.
    pub(crate) async fn lwt(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Lwt> {
        self.try_lwt(statement, values)
            .await
            .map_err(|e| driver_error(what, e))?
    }

    /// Runs a query and decodes every row it returns (queries carry their
    /// own LIMIT, so this is bounded).
    pub(crate) async fn rows<R>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| driver_error(what, e))?
            .into_rows_result()
            .map_err(|e| corrupt(what, e))?;
        result
            .rows::<R>()
            .map_err(|e| corrupt(what, e))?
            .map(|row| row.map_err(|e| corrupt(what, e)))
            .collect()
    }

    /// Runs a query that returns at most one row.
    pub(crate) async fn row<R>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        Ok(self.rows(what, statement, values).await?.into_iter().next())
    }
}
