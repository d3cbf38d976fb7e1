//! Contacts: what the business knows of each customer, kept in the
//! `DeskStore` by user id, with index records by email and by phone so a
//! CRM can find a customer without scanning. Contacts are never all in
//! memory: a tenant may have millions.
//!
//! Changes (calls, and the lead forms customers answer) are made by the
//! holder only, one at a time, so a contact and its index records move
//! together; reads go to the store from any desk process.

use std::collections::BTreeMap;
use std::sync::Arc;

use natter_core::{Invalid, Limits, Page, PageRequest, TenantId, Timestamp, UserId};
use natter_proto::convert::{parse_id, timestamp_to_wire};
use natter_proto::v1;
use natter_store::{DeskKind, DeskRecord, DeskStore, DeskWrite, StoreError};
use prost::Message as _;

const MAX_NAME_BYTES: usize = 200;
const MAX_EMAIL_BYTES: usize = 254;
const MAX_PHONE_DIGITS: usize = 32;
const MAX_ATTRIBUTES: usize = 50;
const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
const MAX_ATTRIBUTE_VALUE_BYTES: usize = 500;
const MAX_CONSENTS: usize = 20;
/// The records one export read takes, and about how many bytes of CSV one
/// streamed chunk holds.
pub(crate) const EXPORT_PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ContactError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("no contact for {0}")]
    NotFound(UserId),
    #[error("{0}'s contact was merged into {1}'s")]
    Merged(UserId, UserId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) type Result<T, E = ContactError> = std::result::Result<T, E>;

/// A change of a contact: strings that are empty leave the field as it is;
/// attributes and consents merge, and an attribute set to "" goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Patch {
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) phone: String,
    pub(crate) company: String,
    pub(crate) attributes: BTreeMap<String, String>,
    pub(crate) consents: BTreeMap<String, bool>,
}

impl Patch {
    /// A change from the wire, checked and normalized.
    pub(crate) fn from_wire(contact: v1::Contact) -> Result<(UserId, Patch)> {
        let user = parse_id("contact.user_id", &contact.user_id)?;
        let patch = Patch {
            name: contact.name,
            email: contact.email,
            phone: contact.phone,
            company: contact.company,
            attributes: contact.attributes.into_iter().collect(),
            consents: contact.consents.into_iter().collect(),
        };
        Ok((user, patch.normalized()?))
    }

    /// The change a customer's answers to a lead form make.
    pub(crate) fn from_form(values: &BTreeMap<String, String>) -> Result<Patch> {
        let mut patch = Patch::default();
        for (field, value) in values {
            match field.as_str() {
                "name" => patch.name.clone_from(value),
                "email" => patch.email.clone_from(value),
                "phone" => patch.phone.clone_from(value),
                "company" => patch.company.clone_from(value),
                _ => {
                    patch.attributes.insert(field.clone(), value.clone());
                }
            }
        }
        patch.normalized()
    }

    fn normalized(mut self) -> Result<Patch> {
        let too_long = |field, max| Invalid::new(field, format!("must be at most {max} bytes"));
        self.name = self.name.trim().to_owned();
        self.company = self.company.trim().to_owned();
        if self.name.len() > MAX_NAME_BYTES {
            return Err(too_long("contact.name", MAX_NAME_BYTES).into());
        }
        if self.company.len() > MAX_NAME_BYTES {
            return Err(too_long("contact.company", MAX_NAME_BYTES).into());
        }
        if !self.email.is_empty() {
            self.email = email_key(&self.email)?;
        }
        if !self.phone.is_empty() {
            self.phone = phone_key(&self.phone)?;
        }
        if self.attributes.len() > MAX_ATTRIBUTES || self.consents.len() > MAX_CONSENTS {
            return Err(Invalid::new(
                "contact.attributes",
                "at most 50 attributes and 20 consents",
            )
            .into());
        }
        let keys = self.attributes.keys().chain(self.consents.keys());
        if keys
            .clone()
            .any(|k| k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY_BYTES)
        {
            return Err(Invalid::new("contact.attributes", "keys must be 1 to 64 bytes").into());
        }
        if self
            .attributes
            .values()
            .any(|v| v.len() > MAX_ATTRIBUTE_VALUE_BYTES)
        {
            return Err(too_long("contact.attributes", MAX_ATTRIBUTE_VALUE_BYTES).into());
        }
        Ok(self)
    }
}

/// An email as it is kept and looked up: trimmed and in lower case.
pub(crate) fn email_key(email: &str) -> Result<String> {
    let email = email.trim().to_lowercase();
    let well_formed = email.len() <= MAX_EMAIL_BYTES
        && !email.contains(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if !well_formed {
        return Err(Invalid::new("contact.email", "is not an email address").into());
    }
    Ok(email)
}

/// A phone number as it is kept and looked up: a leading `+` and digits,
/// whatever punctuation it was written with.
pub(crate) fn phone_key(phone: &str) -> Result<String> {
    let phone = phone.trim();
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    let punctuation = |c: char| c.is_ascii_digit() || " +-().".contains(c);
    if digits.len() < 3 || digits.len() > MAX_PHONE_DIGITS || !phone.chars().all(punctuation) {
        return Err(Invalid::new("contact.phone", "is not a phone number").into());
    }
    let plus = if phone.starts_with('+') { "+" } else { "" };
    Ok(format!("{plus}{digits}"))
}

/// The contacts of every tenant, in the store.
#[derive(Clone)]
pub(crate) struct Contacts {
    pub(crate) store: Arc<dyn DeskStore>,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for Contacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contacts").finish_non_exhaustive()
    }
}

impl Contacts {
    /// `user`'s contact, or the one it was merged into.
    pub(crate) async fn get(&self, tenant: &TenantId, user: &UserId) -> Result<v1::Contact> {
        let (owner, contact) = self.find(tenant, user).await?;
        contact.ok_or(ContactError::NotFound(owner))
    }

    /// Whose contact stands for `user` (`user`, or whom it was merged
    /// into), and that contact if there is one.
    async fn find(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<(UserId, Option<v1::Contact>)> {
        if let Some(contact) = self.read(tenant, user).await? {
            return Ok((user.clone(), Some(contact)));
        }
        match self.merged_into(tenant, user).await? {
            Some(owner) => {
                let contact = self.read(tenant, &owner).await?;
                Ok((owner, contact))
            }
            None => Ok((user.clone(), None)),
        }
    }

    async fn read(&self, tenant: &TenantId, user: &UserId) -> Result<Option<v1::Contact>> {
        let record = self
            .store
            .desk_record(tenant, DeskKind::Contact, user.as_str())
            .await?;
        record.as_ref().map(decode).transpose()
    }

    async fn merged_into(&self, tenant: &TenantId, user: &UserId) -> Result<Option<UserId>> {
        let record = self
            .store
            .desk_record(tenant, DeskKind::ContactMerged, user.as_str())
            .await?;
        record
            .map(|r| parse_id("merged_into", &String::from_utf8_lossy(&r.body)))
            .transpose()
            .map_err(Into::into)
    }

    /// Applies `patch` to `user`'s contact (or the one it was merged
    /// into), creating it if need be, and moves its index records along.
    /// Only the holder calls this.
    pub(crate) async fn update(
        &self,
        tenant: &TenantId,
        user: &UserId,
        patch: Patch,
        now: Timestamp,
    ) -> Result<v1::Contact> {
        let (user, old) = self.find(tenant, user).await?;
        let mut contact = old.clone().unwrap_or_else(|| new_contact(&user, now));
        let set = |field: &mut String, value: String| {
            if !value.is_empty() {
                *field = value;
            }
        };
        set(&mut contact.name, patch.name);
        set(&mut contact.email, patch.email);
        set(&mut contact.phone, patch.phone);
        set(&mut contact.company, patch.company);
        for (key, value) in patch.attributes {
            if value.is_empty() {
                contact.attributes.remove(&key);
            } else {
                contact.attributes.insert(key, value);
            }
        }
        contact.consents.extend(patch.consents);
        if contact.attributes.len() > MAX_ATTRIBUTES || contact.consents.len() > MAX_CONSENTS {
            return Err(Invalid::new(
                "contact.attributes",
                "at most 50 attributes and 20 consents in all",
            )
            .into());
        }
        if old.as_ref() == Some(&contact) {
            return Ok(contact);
        }
        contact.updated_at = Some(timestamp_to_wire(now));
        let mut writes = Vec::new();
        move_index(&user, &old.unwrap_or_default(), &contact, &mut writes);
        writes.push(put_contact(&user, &contact));
        self.store.write_desk(tenant, &writes).await?;
        Ok(contact)
    }

    /// Merges `from`'s contact into `into`'s (see `MergeContactsRequest`),
    /// and leaves a record that sends `from` on to `into`. Only the holder
    /// calls this.
    pub(crate) async fn merge(
        &self,
        tenant: &TenantId,
        from: &UserId,
        into: &UserId,
        now: Timestamp,
    ) -> Result<Option<v1::Contact>> {
        if let Some(owner) = self.merged_into(tenant, into).await? {
            return Err(ContactError::Merged(into.clone(), owner));
        }
        if from == into {
            return self.read(tenant, into).await;
        }
        match self.merged_into(tenant, from).await? {
            Some(owner) if &owner == into => return self.read(tenant, into).await,
            Some(owner) => return Err(ContactError::Merged(from.clone(), owner)),
            None => {}
        }
        let gone = self.read(tenant, from).await?;
        let kept = self.read(tenant, into).await?;
        let mut writes = Vec::new();
        let merged = match &gone {
            Some(gone) => {
                move_index(from, gone, &v1::Contact::default(), &mut writes);
                writes.push(DeskWrite::Delete {
                    kind: DeskKind::Contact,
                    id: from.to_string(),
                });
                let mut merged = kept.clone().unwrap_or_else(|| v1::Contact {
                    created_at: gone.created_at,
                    ..new_contact(into, now)
                });
                fill(&mut merged, gone);
                merged.updated_at = Some(timestamp_to_wire(now));
                Some(merged)
            }
            None => kept.clone(),
        };
        writes.push(DeskWrite::Put {
            kind: DeskKind::ContactMerged,
            id: from.to_string(),
            body: into.to_string().into_bytes(),
        });
        if let (Some(merged), Some(_)) = (&merged, &gone) {
            move_index(into, &kept.unwrap_or_default(), merged, &mut writes);
            writes.push(put_contact(into, merged));
        }
        self.store.write_desk(tenant, &writes).await?;
        Ok(merged)
    }

    /// A page of contacts in user id order.
    pub(crate) async fn page(
        &self,
        tenant: &TenantId,
        page: PageRequest<UserId>,
    ) -> Result<Page<v1::Contact, UserId>> {
        let page = self
            .store
            .desk_records(
                tenant,
                DeskKind::Contact,
                PageRequest {
                    after: page.after.map(|u| u.to_string()),
                    size: page.size,
                },
            )
            .await?;
        let contacts = page.items.iter().map(decode).collect::<Result<Vec<_>>>()?;
        let next = page
            .next
            .map(|id| parse_id("page_token", &id))
            .transpose()?;
        Ok(Page {
            items: contacts,
            next,
        })
    }

    /// The contacts whose email (`kind` ContactEmail) or phone is `key`,
    /// up to the page size.
    pub(crate) async fn find_by(
        &self,
        tenant: &TenantId,
        kind: DeskKind,
        key: &str,
    ) -> Result<Vec<v1::Contact>> {
        let prefix = format!("{key} ");
        let page = self
            .store
            .desk_records(
                tenant,
                kind,
                PageRequest {
                    // Every id of `key` sorts after the prefix alone.
                    after: Some(prefix.clone()),
                    size: self.limits.page_size(0),
                },
            )
            .await?;
        let mut found = Vec::new();
        for record in page.items {
            let Some(user) = record.id.strip_prefix(&prefix) else {
                break;
            };
            if let Some(contact) = self.read(tenant, &parse_id("user_id", user)?).await? {
                found.push(contact);
            }
        }
        Ok(found)
    }
}

fn new_contact(user: &UserId, now: Timestamp) -> v1::Contact {
    v1::Contact {
        user_id: user.to_string(),
        created_at: Some(timestamp_to_wire(now)),
        ..v1::Contact::default()
    }
}

/// Takes what `contact` lacks from `other`: empty fields, and attributes
/// and consents it has no value for, while there is room.
fn fill(contact: &mut v1::Contact, other: &v1::Contact) {
    for (field, theirs) in [
        (&mut contact.name, &other.name),
        (&mut contact.email, &other.email),
        (&mut contact.phone, &other.phone),
        (&mut contact.company, &other.company),
    ] {
        if field.is_empty() {
            field.clone_from(theirs);
        }
    }
    for (key, value) in &other.attributes {
        if contact.attributes.len() < MAX_ATTRIBUTES {
            contact
                .attributes
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
    }
    for (key, value) in &other.consents {
        if contact.consents.len() < MAX_CONSENTS {
            contact.consents.entry(key.clone()).or_insert(*value);
        }
    }
}

/// The index writes that take `user`'s contact from `was` to `now`.
fn move_index(user: &UserId, was: &v1::Contact, now: &v1::Contact, writes: &mut Vec<DeskWrite>) {
    for (kind, before, after) in [
        (DeskKind::ContactEmail, &was.email, &now.email),
        (DeskKind::ContactPhone, &was.phone, &now.phone),
    ] {
        if before == after {
            continue;
        }
        if !before.is_empty() {
            writes.push(DeskWrite::Delete {
                kind,
                id: index_id(before, user),
            });
        }
        if !after.is_empty() {
            writes.push(DeskWrite::Put {
                kind,
                id: index_id(after, user),
                body: Vec::new(),
            });
        }
    }
}

/// The contact's own record, written after its index records: an index
/// record without its contact is skipped by lookups, a contact without its
/// index is not found.
fn put_contact(user: &UserId, contact: &v1::Contact) -> DeskWrite {
    DeskWrite::Put {
        kind: DeskKind::Contact,
        id: user.to_string(),
        body: contact.encode_to_vec(),
    }
}

fn index_id(key: &str, user: &UserId) -> String {
    format!("{key} {user}")
}

fn decode(record: &DeskRecord) -> Result<v1::Contact> {
    v1::Contact::decode(record.body.as_slice())
        .map_err(|e| Invalid::new("contact", e.to_string()).into())
}

/// The CSV header, and each contact as a row of it.
pub(crate) const CSV_HEADER: [&str; 9] = [
    "user_id",
    "name",
    "email",
    "phone",
    "company",
    "attributes",
    "consents",
    "created_at",
    "updated_at",
];

/// `contacts` as CSV rows, with the header first when `header`.
pub(crate) fn csv(contacts: &[v1::Contact], header: bool) -> Vec<u8> {
    let mut out = csv::Writer::from_writer(Vec::new());
    // RFC 3339, as protobuf's JSON mapping writes timestamps.
    let rfc3339 = |t: &Option<pbjson_types::Timestamp>| match t.as_ref().map(serde_json::to_value) {
        Some(Ok(serde_json::Value::String(text))) => text,
        _ => String::new(),
    };
    let written = (|| {
        if header {
            out.write_record(CSV_HEADER)?;
        }
        for c in contacts {
            let json = |v: serde_json::Result<String>| v.unwrap_or_default();
            out.write_record([
                c.user_id.as_str(),
                &c.name,
                &c.email,
                &c.phone,
                &c.company,
                &json(serde_json::to_string(&c.attributes)),
                &json(serde_json::to_string(&c.consents)),
                &rfc3339(&c.created_at),
                &rfc3339(&c.updated_at),
            ])?;
        }
        out.flush()
    })();
    if let Err(e) = written {
        // Writing to memory fails only on a bug.
        tracing::error!(error = %e, "cannot write contacts as CSV");
    }
    out.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_takes_only_what_the_contact_lacks() {
        let mut kept = v1::Contact {
            user_id: "known".into(),
            name: "Ann L.".into(),
            attributes: [("plan".to_owned(), "team".to_owned())].into(),
            ..v1::Contact::default()
        };
        let guest = v1::Contact {
            user_id: "guest-1".into(),
            name: "Ann".into(),
            email: "ann@example.com".into(),
            attributes: [
                ("plan".to_owned(), "pro".to_owned()),
                ("page".to_owned(), "/tents".to_owned()),
            ]
            .into(),
            consents: [("marketing".to_owned(), true)].into(),
            ..v1::Contact::default()
        };
        fill(&mut kept, &guest);
        assert_eq!(
            (
                kept.user_id.as_str(),
                kept.name.as_str(),
                kept.email.as_str()
            ),
            ("known", "Ann L.", "ann@example.com")
        );
        assert_eq!(kept.attributes["plan"], "team");
        assert_eq!(kept.attributes["page"], "/tents");
        assert!(kept.consents["marketing"]);
    }

    #[test]
    fn emails_and_phones_are_kept_as_they_are_looked_up() {
        assert_eq!(email_key(" Ann@Example.COM ").unwrap(), "ann@example.com");
        assert!(email_key("ann").is_err());
        assert!(email_key("ann @example.com").is_err());
        assert_eq!(phone_key("+49 (30) 1234-567").unwrap(), "+49301234567");
        assert_eq!(phone_key("030 1234").unwrap(), "0301234");
        assert!(phone_key("call me").is_err());
    }

    #[test]
    fn a_lead_form_fills_the_fields_it_names_and_the_rest_are_attributes() {
        let values = BTreeMap::from([
            ("email".to_owned(), "Ann@Example.com".to_owned()),
            ("name".to_owned(), " Ann ".to_owned()),
            ("plan".to_owned(), "pro".to_owned()),
        ]);
        let patch = Patch::from_form(&values).unwrap();
        assert_eq!(
            (patch.name.as_str(), patch.email.as_str()),
            ("Ann", "ann@example.com")
        );
        assert_eq!(
            patch.attributes.get("plan").map(String::as_str),
            Some("pro")
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let contact = v1::Contact {
            user_id: "ann".into(),
            name: "Ann, \"the\" customer".into(),
            attributes: [("plan".to_owned(), "pro".to_owned())].into(),
            ..v1::Contact::default()
        };
        let text = String::from_utf8(csv(&[contact], true)).unwrap();
        assert_eq!(
            text,
            "user_id,name,email,phone,company,attributes,consents,created_at,updated_at\n\
             ann,\"Ann, \"\"the\"\" customer\",,,,\"{\"\"plan\"\":\"\"pro\"\"}\",{},,\n"
        );
    }
}
