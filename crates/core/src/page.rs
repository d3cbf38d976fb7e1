//! What a read of a list asks for and gets: a bounded page after a key, or
//! a bounded range of a conversation's messages. The stores answer them,
//! and `natter_proto::page` turns the API's page tokens into them.

use crate::Seq;

/// One page of a list, and where the next page starts if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

/// Asks for up to `size` items strictly after `after` in the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest<K> {
    pub after: Option<K>,
    pub size: u32,
}

/// Which messages of a conversation to read, in ascending seq order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRange {
    /// Up to `limit` messages with seq greater than `after`.
    After { after: Seq, limit: u32 },
    /// The `limit` newest messages with seq less than `before`, or the
    /// newest messages of all when `before` is `None`.
    Before { before: Option<Seq>, limit: u32 },
}
