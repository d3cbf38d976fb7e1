//! What a message carries. Rich content follows the shapes business chat
//! has settled on: text, attachments by reference, quick replies, button
//! templates, and postbacks (a button press sent back to the business).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::{Invalid, Result};
use crate::ids::{PaymentId, Seq};
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Attachment(Attachment),
    QuickReplies(QuickReplies),
    Template(Template),
    Postback(Postback),
    /// The conversation's lifecycle after a change (`lifecycle.rs`).
    /// Written by the server only: a sender cannot send one.
    Activity(Lifecycle),
    Form(Form),
    FormReply(FormReply),
    Reply(Reply),
    /// A request for payment with a link to pay it. Written by the desk
    /// only (`RequestPayment`): a sender cannot send one.
    PaymentRequest(PaymentRequest),
    /// A payment's new status. Written by the desk only.
    PaymentUpdate(PaymentUpdate),
}

/// The most line items a payment request lists.
pub const MAX_LINE_ITEMS: usize = 20;
/// The most a payment request may ask for, in the currency's minor unit
/// (the payment provider's bound: eight digits).
pub const MAX_PAYMENT_MINOR: u64 = 99_999_999;
/// The longest description or line item name, in characters.
const MAX_PAYMENT_TEXT_CHARS: usize = 500;

/// A request for payment: what it is for, how much, and where the customer
/// pays it (a page of the payment provider's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    pub payment_id: PaymentId,
    /// The total, in the currency's minor unit (cents); the sum of the
    /// line items when there are any.
    pub amount_minor: u64,
    /// ISO 4217, three lowercase letters ([`currency_code`] normalises).
    pub currency: String,
    pub description: String,
    pub line_items: Vec<LineItem>,
    /// Where the customer pays: the provider's checkout page.
    pub checkout_url: String,
    /// The status when requested (pending).
    pub status: PaymentStatus,
}

/// One line of a [`PaymentRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineItem {
    pub name: String,
    pub quantity: u64,
    pub unit_amount_minor: u64,
}

/// A payment's new status, after the provider said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentUpdate {
    pub payment_id: PaymentId,
    pub status: PaymentStatus,
}

/// Where a payment stands: pending until the provider settles it, then
/// paid, failed or expired for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    Pending,
    Paid,
    Failed,
    Expired,
}

impl PaymentStatus {
    /// Whether a payment may move from `self` to `next`: only out of
    /// pending, so a late or repeated word from the provider changes
    /// nothing once a payment is settled.
    pub fn may_become(self, next: PaymentStatus) -> bool {
        self == PaymentStatus::Pending && next != PaymentStatus::Pending
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Paid => "paid",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Expired => "expired",
        }
    }
}

/// An ISO 4217 currency code in the form kept: three ASCII letters, in
/// lower case (as the payment provider spells them).
pub fn currency_code(code: &str) -> Result<String> {
    let code = code.trim();
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(Invalid::new(
            "currency",
            "must be an ISO 4217 code of three letters, such as eur",
        ));
    }
    Ok(code.to_ascii_lowercase())
}

impl PaymentRequest {
    /// Checks the request: a description, a known-looking currency, an
    /// amount within bounds that the line items add up to, and a link to
    /// pay.
    pub fn validate(&self) -> Result<()> {
        non_blank("content.payment_request.description", &self.description)?;
        max_chars(
            "content.payment_request.description",
            &self.description,
            MAX_PAYMENT_TEXT_CHARS,
        )?;
        if currency_code(&self.currency).ok().as_deref() != Some(self.currency.as_str()) {
            return Err(Invalid::new(
                "content.payment_request.currency",
                "must be three lowercase letters (ISO 4217)",
            ));
        }
        if self.amount_minor == 0 || self.amount_minor > MAX_PAYMENT_MINOR {
            return Err(Invalid::new(
                "content.payment_request.amount",
                format!("must be 1 to {MAX_PAYMENT_MINOR} in the currency's minor unit"),
            ));
        }
        if self.line_items.len() > MAX_LINE_ITEMS {
            return Err(Invalid::new(
                "content.payment_request.line_items",
                format!("at most {MAX_LINE_ITEMS}"),
            ));
        }
        let mut total: u64 = 0;
        for item in &self.line_items {
            non_blank("content.payment_request.line_items.name", &item.name)?;
            max_chars(
                "content.payment_request.line_items.name",
                &item.name,
                MAX_PAYMENT_TEXT_CHARS,
            )?;
            if item.quantity == 0 || item.unit_amount_minor == 0 {
                return Err(Invalid::new(
                    "content.payment_request.line_items",
                    "quantity and unit_amount must be positive",
                ));
            }
            total = item
                .quantity
                .checked_mul(item.unit_amount_minor)
                .and_then(|line| total.checked_add(line))
                .ok_or_else(|| Invalid::new("content.payment_request.line_items", "too large"))?;
        }
        if !self.line_items.is_empty() && total != self.amount_minor {
            return Err(Invalid::new(
                "content.payment_request.amount",
                format!(
                    "is {}, but the line items add up to {total}",
                    self.amount_minor
                ),
            ));
        }
        check_url("content.payment_request.checkout_url", &self.checkout_url)?;
        Ok(())
    }
}

fn max_chars(field: &'static str, value: &str, max: usize) -> Result<()> {
    let chars = value.chars().count();
    if chars > max {
        return Err(Invalid::new(
            field,
            format!("must be at most {max} characters, got {chars}"),
        ));
    }
    Ok(())
}

/// Text that quotes an earlier message of the same conversation, as an
/// agent answers one question of several. Whoever shows it finds the
/// quoted message by its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    /// The quoted message: stored already, so below the reply's own seq
    /// (the sequencer checks).
    pub to: Seq,
}

/// A form for the customer to fill in, such as a lead form: the widget
/// renders its fields and checks them before sending a [`FormReply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// The business's name for the form, echoed in the reply.
    pub form_id: String,
    pub text: String,
    pub fields: Vec<FormField>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormField {
    /// The value's key in the reply.
    pub name: String,
    pub label: String,
    pub kind: FieldKind,
    pub required: bool,
}

/// What a form field's value must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Email,
    Phone,
    /// A whole number from 1 to 5: a satisfaction score, shown as stars.
    Rating,
}

/// The customer's answer to a [`Form`]: a value per field filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormReply {
    pub form_id: String,
    pub values: BTreeMap<String, String>,
}

/// A file stored elsewhere; Natter keeps only the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub url: String,
    pub mime_type: String,
    pub size_bytes: u64,
    pub file_name: String,
    /// A small preview so clients can render before fetching `url`.
    pub thumbnail: Option<Bytes>,
}

/// A prompt with tappable answers; a tap comes back as a [`Postback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickReplies {
    pub text: String,
    pub replies: Vec<QuickReply>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickReply {
    pub title: String,
    pub payload: String,
}

/// Text with buttons that either post back or open a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub text: String,
    pub buttons: Vec<Button>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Button {
    pub title: String,
    pub action: ButtonAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ButtonAction {
    Postback { payload: String },
    OpenUrl { url: String },
}

/// A quick reply or button press, sent back by the visitor's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postback {
    pub title: String,
    pub payload: String,
}

impl Content {
    /// The bytes this content weighs against [`Limits::max_message_bytes`].
    pub fn size_bytes(&self) -> usize {
        match self {
            Content::Text(text) | Content::Reply(Reply { text, .. }) => text.len(),
            Content::Attachment(a) => {
                a.url.len()
                    + a.mime_type.len()
                    + a.file_name.len()
                    + a.thumbnail.as_ref().map_or(0, Bytes::len)
            }
            Content::QuickReplies(q) => {
                q.text.len()
                    + q.replies
                        .iter()
                        .map(|r| r.title.len() + r.payload.len())
                        .sum::<usize>()
            }
            Content::Template(t) => {
                t.text.len()
                    + t.buttons
                        .iter()
                        .map(|b| {
                            b.title.len()
                                + match &b.action {
                                    ButtonAction::Postback { payload } => payload.len(),
                                    ButtonAction::OpenUrl { url } => url.len(),
                                }
                        })
                        .sum::<usize>()
            }
            Content::Postback(p) => p.title.len() + p.payload.len(),
            Content::Activity(lifecycle) => lifecycle.size_bytes(),
            Content::Form(f) => {
                f.form_id.len()
                    + f.text.len()
                    + f.fields
                        .iter()
                        .map(|field| field.name.len() + field.label.len())
                        .sum::<usize>()
            }
            Content::FormReply(r) => {
                r.form_id.len()
                    + r.values
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
            Content::PaymentRequest(p) => {
                p.currency.len()
                    + p.description.len()
                    + p.checkout_url.len()
                    + p.line_items
                        .iter()
                        .map(|item| item.name.len())
                        .sum::<usize>()
            }
            Content::PaymentUpdate(_) => 0,
        }
    }

    /// Checks every rule that does not need storage: non-empty, within
    /// limits, well-formed references. (Whether a sender may send it is
    /// [`Content::sendable`].)
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        let size = self.size_bytes();
        if size > limits.max_message_bytes {
            return Err(Invalid::new(
                "content",
                format!(
                    "message is {size} bytes, the limit is {}",
                    limits.max_message_bytes
                ),
            ));
        }
        match self {
            Content::Text(text) => non_blank("content.text", text),
            Content::Reply(r) => {
                if r.to == Seq::ZERO {
                    return Err(Invalid::new("content.reply.to_seq", "must name a message"));
                }
                non_blank("content.reply.text", &r.text)
            }
            Content::Attachment(a) => {
                check_url("content.attachment.url", &a.url)?;
                check_mime("content.attachment.mime_type", &a.mime_type)?;
                if let Some(thumb) = &a.thumbnail
                    && thumb.len() > limits.max_thumbnail_bytes
                {
                    return Err(Invalid::new(
                        "content.attachment.thumbnail",
                        format!(
                            "thumbnail is {} bytes, the limit is {}",
                            thumb.len(),
                            limits.max_thumbnail_bytes
                        ),
                    ));
                }
                Ok(())
            }
            Content::QuickReplies(q) => {
                non_blank("content.quick_replies.text", &q.text)?;
                bounded_list(
                    "content.quick_replies.replies",
                    q.replies.len(),
                    limits.max_quick_replies,
                )?;
                for reply in &q.replies {
                    title("content.quick_replies.replies.title", &reply.title, limits)?;
                    payload(
                        "content.quick_replies.replies.payload",
                        &reply.payload,
                        limits,
                    )?;
                }
                Ok(())
            }
            Content::Template(t) => {
                non_blank("content.template.text", &t.text)?;
                bounded_list(
                    "content.template.buttons",
                    t.buttons.len(),
                    limits.max_buttons,
                )?;
                for button in &t.buttons {
                    title("content.template.buttons.title", &button.title, limits)?;
                    match &button.action {
                        ButtonAction::Postback { payload: p } => {
                            payload("content.template.buttons.payload", p, limits)?
                        }
                        ButtonAction::OpenUrl { url } => {
                            check_url("content.template.buttons.url", url)?
                        }
                    }
                }
                Ok(())
            }
            Content::Postback(p) => {
                title("content.postback.title", &p.title, limits)?;
                payload("content.postback.payload", &p.payload, limits)
            }
            Content::Activity(_) => Ok(()),
            Content::Form(f) => {
                form_key("content.form.form_id", &f.form_id, 64)?;
                non_blank("content.form.text", &f.text)?;
                bounded_list(
                    "content.form.fields",
                    f.fields.len(),
                    limits.max_form_fields,
                )?;
                let mut names = std::collections::BTreeSet::new();
                for field in &f.fields {
                    form_key("content.form.fields.name", &field.name, 32)?;
                    title("content.form.fields.label", &field.label, limits)?;
                    if !names.insert(&field.name) {
                        return Err(Invalid::new(
                            "content.form.fields.name",
                            format!("{:?} names two fields", field.name),
                        ));
                    }
                }
                Ok(())
            }
            Content::FormReply(r) => {
                form_key("content.form_reply.form_id", &r.form_id, 64)?;
                bounded_list(
                    "content.form_reply.values",
                    r.values.len(),
                    limits.max_form_fields,
                )?;
                for (name, value) in &r.values {
                    form_key("content.form_reply.values.name", name, 32)?;
                    non_blank("content.form_reply.values.value", value)?;
                    let chars = value.chars().count();
                    if chars > limits.max_form_value_chars {
                        return Err(Invalid::new(
                            "content.form_reply.values.value",
                            format!(
                                "must be at most {} characters, got {chars}",
                                limits.max_form_value_chars
                            ),
                        ));
                    }
                }
                Ok(())
            }
            Content::PaymentRequest(p) => p.validate(),
            Content::PaymentUpdate(u) => {
                if u.status == PaymentStatus::Pending {
                    return Err(Invalid::new(
                        "content.payment_update.status",
                        "a payment starts pending; an update settles it",
                    ));
                }
                Ok(())
            }
        }
    }

    /// What the sender wrote in words, if the content is words: a text or
    /// a reply's text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Content::Text(text) | Content::Reply(Reply { text, .. }) => Some(text),
            _ => None,
        }
    }

    /// Refuses what only the server writes: an activity, a payment
    /// request or a payment's update.
    pub fn sendable(&self) -> Result<()> {
        match self {
            Content::Activity(_) => Err(Invalid::new(
                "content.activity",
                "is written by the server; change a conversation's lifecycle with UpdateLifecycle",
            )),
            Content::PaymentRequest(_) => Err(Invalid::new(
                "content.payment_request",
                "is written by the server; ask for a payment with RequestPayment",
            )),
            Content::PaymentUpdate(_) => Err(Invalid::new(
                "content.payment_update",
                "is written by the server when the payment provider reports",
            )),
            _ => Ok(()),
        }
    }

    /// Whether only the desk writes this kind: a payment request or
    /// update, which the sequencer takes from the desk alone.
    pub fn desk_writes(&self) -> bool {
        matches!(self, Content::PaymentRequest(_) | Content::PaymentUpdate(_))
    }
}

impl Form {
    /// Checks a reply against the form: every required field filled in,
    /// no value for a field it does not have, and each value of the kind
    /// its field asks for. (The widget checks the same before sending;
    /// whoever stores the values checks again.)
    pub fn check_reply(&self, reply: &FormReply) -> Result<()> {
        if reply.form_id != self.form_id {
            return Err(Invalid::new(
                "form_id",
                format!("answers form {:?}, not {:?}", reply.form_id, self.form_id),
            ));
        }
        for name in reply.values.keys() {
            if !self.fields.iter().any(|f| &f.name == name) {
                return Err(Invalid::new(
                    "values",
                    format!("the form has no field {name:?}"),
                ));
            }
        }
        for field in &self.fields {
            match reply.values.get(&field.name) {
                None if field.required => {
                    return Err(Invalid::new(
                        "values",
                        format!("{:?} is required", field.name),
                    ));
                }
                None => {}
                Some(value) if !field.kind.accepts(value) => {
                    return Err(Invalid::new(
                        "values",
                        format!("{:?} is not a valid {:?}", field.name, field.kind),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl FieldKind {
    /// Whether `value` looks like this kind: an address with one `@` and
    /// a dot in its domain, or a phone number of 6 to 20 digits with the
    /// usual punctuation. Deliverability is not this check's business.
    pub fn accepts(self, value: &str) -> bool {
        let value = value.trim();
        match self {
            FieldKind::Text => !value.is_empty(),
            FieldKind::Email => value.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.split('.').count() >= 2
                    && domain.split('.').all(|part| !part.is_empty())
                    && !value.chars().any(char::is_whitespace)
            }),
            FieldKind::Phone => {
                let digits = value.chars().filter(char::is_ascii_digit).count();
                (6..=20).contains(&digits)
                    && value
                        .chars()
                        .all(|c| c.is_ascii_digit() || " +-().".contains(c))
            }
            FieldKind::Rating => matches!(value, "1" | "2" | "3" | "4" | "5"),
        }
    }
}

/// A form's or field's name: `max` bytes at most of lowercase letters,
/// digits, `_` and `-`.
fn form_key(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.is_empty()
        || value.len() > max
        || !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(Invalid::new(
            field,
            format!("must be 1 to {max} lowercase letters, digits, '_' or '-'"),
        ));
    }
    Ok(())
}

fn non_blank(field: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    Ok(())
}

fn bounded_list(field: &'static str, len: usize, max: usize) -> Result<()> {
    if len == 0 || len > max {
        return Err(Invalid::new(
            field,
            format!("must have 1 to {max} entries, got {len}"),
        ));
    }
    Ok(())
}

fn title(field: &'static str, value: &str, limits: &Limits) -> Result<()> {
    non_blank(field, value)?;
    let chars = value.chars().count();
    if chars > limits.max_title_chars {
        return Err(Invalid::new(
            field,
            format!(
                "must be at most {} characters, got {chars}",
                limits.max_title_chars
            ),
        ));
    }
    Ok(())
}

fn payload(field: &'static str, value: &str, limits: &Limits) -> Result<()> {
    non_blank(field, value)?;
    if value.len() > limits.max_payload_bytes {
        return Err(Invalid::new(
            field,
            format!(
                "must be at most {} bytes, got {}",
                limits.max_payload_bytes,
                value.len()
            ),
        ));
    }
    Ok(())
}

fn check_url(field: &'static str, url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| Invalid::new(field, "must be an http or https url"))?;
    if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            field,
            "must be an absolute url without spaces",
        ));
    }
    Ok(())
}

fn check_mime(field: &'static str, mime: &str) -> Result<()> {
    match mime.split_once('/') {
        Some((kind, sub))
            if !kind.is_empty()
                && !sub.is_empty()
                && !mime.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(())
        }
        _ => Err(Invalid::new(
            field,
            "must be a media type such as image/png",
        )),
    }
}

#[cfg(test)]
mod form_tests {
    use super::*;

    fn lead() -> Form {
        let field = |name: &str, kind, required| FormField {
            name: name.into(),
            label: name.to_uppercase(),
            kind,
            required,
        };
        Form {
            form_id: "lead".into(),
            text: "How can we reach you?".into(),
            fields: vec![
                field("name", FieldKind::Text, true),
                field("email", FieldKind::Email, true),
                field("phone", FieldKind::Phone, false),
            ],
        }
    }

    fn reply(values: &[(&str, &str)]) -> FormReply {
        FormReply {
            form_id: "lead".into(),
            values: values
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn forms_and_replies_are_checked() {
        let limits = Limits::default();
        assert!(Content::Form(lead()).validate(&limits).is_ok());
        let mut twice = lead();
        twice.fields.push(twice.fields[0].clone());
        assert_eq!(
            Content::Form(twice).validate(&limits).unwrap_err().field,
            "content.form.fields.name"
        );
        let ok = reply(&[
            ("name", "Ann"),
            ("email", "ann@example.com"),
            ("phone", "+49 (30) 123-456"),
        ]);
        assert!(Content::FormReply(ok.clone()).validate(&limits).is_ok());
        assert!(lead().check_reply(&ok).is_ok());
        assert!(
            lead()
                .check_reply(&reply(&[("name", "Ann"), ("email", "ann@example.com")]))
                .is_ok()
        );
        for bad in [
            reply(&[("name", "Ann")]),
            reply(&[("name", "Ann"), ("email", "ann@example")]),
            reply(&[
                ("name", "Ann"),
                ("email", "ann@example.com"),
                ("phone", "call me"),
            ]),
            reply(&[("name", "Ann"), ("email", "a@b.co"), ("fax", "1")]),
        ] {
            assert!(lead().check_reply(&bad).is_err(), "{bad:?}");
        }
        assert!(
            Content::FormReply(reply(&[("Name", "x")]))
                .validate(&limits)
                .is_err()
        );
        assert!(
            Content::FormReply(reply(&[("name", " ")]))
                .validate(&limits)
                .is_err()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn text_must_be_non_blank_and_within_size() {
        assert!(Content::Text("hi".into()).validate(&limits()).is_ok());
        assert_eq!(
            Content::Text("  ".into())
                .validate(&limits())
                .unwrap_err()
                .field,
            "content.text"
        );
        let reply = |text: &str, to| {
            Content::Reply(Reply {
                text: text.into(),
                to: Seq::new(to),
            })
            .validate(&limits())
        };
        assert!(reply("yes", 1).is_ok());
        assert_eq!(reply("yes", 0).unwrap_err().field, "content.reply.to_seq");
        assert_eq!(reply(" ", 1).unwrap_err().field, "content.reply.text");
        let big = Content::Text("x".repeat(64 * 1024 + 1));
        assert_eq!(big.validate(&limits()).unwrap_err().field, "content");
    }

    #[test]
    fn attachment_checks_url_mime_and_thumbnail() {
        let ok = Attachment {
            url: "https://cdn.example/a.png".into(),
            mime_type: "image/png".into(),
            size_bytes: 10,
            file_name: "a.png".into(),
            thumbnail: Some(Bytes::from(vec![0; 16 * 1024])),
        };
        assert!(Content::Attachment(ok.clone()).validate(&limits()).is_ok());
        let bad_url = Attachment {
            url: "ftp://x".into(),
            ..ok.clone()
        };
        assert!(Content::Attachment(bad_url).validate(&limits()).is_err());
        let big_thumb = Attachment {
            thumbnail: Some(Bytes::from(vec![0; 16 * 1024 + 1])),
            ..ok
        };
        assert_eq!(
            Content::Attachment(big_thumb)
                .validate(&limits())
                .unwrap_err()
                .field,
            "content.attachment.thumbnail"
        );
    }

    fn payment() -> PaymentRequest {
        PaymentRequest {
            payment_id: PaymentId::generate(),
            amount_minor: 2 * 1250 + 500,
            currency: "eur".into(),
            description: "Order 1042".into(),
            line_items: vec![
                LineItem {
                    name: "Trail tent".into(),
                    quantity: 2,
                    unit_amount_minor: 1250,
                },
                LineItem {
                    name: "Shipping".into(),
                    quantity: 1,
                    unit_amount_minor: 500,
                },
            ],
            checkout_url: "https://checkout.example/c/pay/cs_1".into(),
            status: PaymentStatus::Pending,
        }
    }

    #[test]
    fn payment_requests_add_up_and_only_the_server_writes_them() {
        let ok = payment();
        assert!(
            Content::PaymentRequest(ok.clone())
                .validate(&limits())
                .is_ok()
        );
        let field = |p: PaymentRequest| {
            Content::PaymentRequest(p)
                .validate(&limits())
                .unwrap_err()
                .field
        };
        assert_eq!(
            field(PaymentRequest {
                amount_minor: 3001,
                ..ok.clone()
            }),
            "content.payment_request.amount"
        );
        assert_eq!(
            field(PaymentRequest {
                currency: "EUR".into(),
                ..ok.clone()
            }),
            "content.payment_request.currency"
        );
        assert_eq!(
            field(PaymentRequest {
                description: " ".into(),
                ..ok.clone()
            }),
            "content.payment_request.description"
        );
        assert_eq!(
            field(PaymentRequest {
                amount_minor: MAX_PAYMENT_MINOR + 1,
                line_items: Vec::new(),
                ..ok.clone()
            }),
            "content.payment_request.amount"
        );
        let mut overflow = ok.clone();
        overflow.line_items[0].quantity = u64::MAX;
        assert_eq!(field(overflow), "content.payment_request.line_items");
        assert!(
            Content::PaymentRequest(PaymentRequest {
                line_items: Vec::new(),
                amount_minor: 999,
                ..ok.clone()
            })
            .validate(&limits())
            .is_ok()
        );
        assert_eq!(currency_code(" USD ").unwrap(), "usd");
        assert!(currency_code("eu").is_err() && currency_code("e1r").is_err());

        let update = Content::PaymentUpdate(PaymentUpdate {
            payment_id: ok.payment_id,
            status: PaymentStatus::Paid,
        });
        assert!(update.validate(&limits()).is_ok());
        for content in [Content::PaymentRequest(ok), update] {
            assert!(content.desk_writes());
            assert!(content.sendable().is_err());
        }
        assert!(!Content::Text("hi".into()).desk_writes());
    }

    #[test]
    fn a_payment_settles_once() {
        use PaymentStatus::*;
        for next in [Paid, Failed, Expired] {
            assert!(Pending.may_become(next));
            for settled in [Paid, Failed, Expired] {
                assert!(!settled.may_become(next), "{settled:?} -> {next:?}");
            }
        }
        assert!(!Pending.may_become(Pending));
    }

    #[test]
    fn templates_bound_their_buttons() {
        let button = Button {
            title: "Yes".into(),
            action: ButtonAction::Postback {
                payload: "YES".into(),
            },
        };
        let four = Content::Template(Template {
            text: "Pick".into(),
            buttons: vec![button; 4],
        });
        assert_eq!(
            four.validate(&limits()).unwrap_err().field,
            "content.template.buttons"
        );
    }
}
