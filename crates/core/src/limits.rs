/// Every size and count the domain bounds, in one place so operators can
/// tune them and the API can document them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Upper bound on a message's content, counted as the bytes of all its
    /// strings plus its thumbnail.
    pub max_message_bytes: usize,
    /// Upper bound on an attachment's inline thumbnail.
    pub max_thumbnail_bytes: usize,
    /// Upper bound on members of one conversation.
    pub max_members: usize,
    /// Upper bound on members named in one create or add request.
    pub max_members_per_request: usize,
    /// Rooms with more members than this are big: their new messages are
    /// not written to every member's update log, and devices read them by
    /// watching the conversation. Fan-out then costs one publish per
    /// message instead of one log write per member.
    pub big_room_members: usize,
    /// Upper bound on quick replies offered by one message.
    pub max_quick_replies: usize,
    /// Upper bound on buttons in one template.
    pub max_buttons: usize,
    /// Upper bound on a button, quick reply or postback title, in characters.
    pub max_title_chars: usize,
    /// Upper bound on a postback payload, in bytes.
    pub max_payload_bytes: usize,
    /// Upper bound on a conversation subject, in characters.
    pub max_subject_chars: usize,
    /// Upper bound on the tags a conversation carries, and on the tags one
    /// change names.
    pub max_tags: usize,
    /// Upper bound on a form's fields, and on the values of a reply.
    pub max_form_fields: usize,
    /// Upper bound on one value of a form reply, in characters.
    pub max_form_value_chars: usize,
    /// Page size used when a list request names none.
    pub default_page_size: u32,
    /// Upper bound on any page; larger requests are clamped to it.
    pub max_page_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_thumbnail_bytes: 16 * 1024,
            max_members: 100_000,
            max_members_per_request: 1_000,
            big_room_members: 1_000,
            max_quick_replies: 13,
            max_buttons: 3,
            max_title_chars: 80,
            max_payload_bytes: 1_000,
            max_subject_chars: 200,
            max_tags: 20,
            max_form_fields: 10,
            max_form_value_chars: 500,
            default_page_size: 50,
            max_page_size: 1_000,
        }
    }
}

impl Limits {
    /// The page size to use for a request that asked for `requested`
    /// (zero meaning "no preference").
    pub fn page_size(&self, requested: u32) -> u32 {
        match requested {
            0 => self.default_page_size,
            n => n.min(self.max_page_size),
        }
    }
}
