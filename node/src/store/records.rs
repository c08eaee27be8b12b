//! Small records of the components built on the store, key → bytes: the browser gateway's
//! session records and its resume-token key. Writes go through the writer, in order with
//! every other request, except [`record_or_insert`]'s, made at once for values made once.

use redb::{ReadableDatabase as _, ReadableTable as _};

use super::failed;
use super::schema::{read_table, RECORDS};
use ferry::StoreError;

/// Every record whose key starts with `prefix`, in key order.
pub(crate) fn with_prefix(
    db: &redb::Database,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let txn = db.begin_read().map_err(failed)?;
    let Some(records) = read_table(&txn, RECORDS).map_err(failed)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in records.range(prefix..).map_err(failed)? {
        let (key, value) = row.map_err(failed)?;
        if !key.value().starts_with(prefix) {
            break;
        }
        out.push((key.value().to_owned(), value.value().to_vec()));
    }
    Ok(out)
}

/// The record `key`, written now with `value` if there is none.
pub(crate) fn record_or_insert(
    db: &redb::Database,
    key: &str,
    value: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    let txn = db.begin_write().map_err(failed)?;
    let value = {
        let mut records = txn.open_table(RECORDS).map_err(failed)?;
        let existing = records
            .get(key)
            .map_err(failed)?
            .map(|v| v.value().to_vec());
        match existing {
            Some(existing) => existing,
            None => {
                records.insert(key, value.as_slice()).map_err(failed)?;
                value
            }
        }
    };
    txn.commit().map_err(failed)?;
    Ok(value)
}
