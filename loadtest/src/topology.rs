//! Who talks to whom in a `traffic` run: the conversations and how many
//! members each has, as plain data (sans-I/O, tested).
//!
//! Every member has one device. Message n of a conversation of M members
//! is sent by member `n mod M` and must reach the devices of the M − 1
//! others (the sender's own copy is not counted).

use std::fmt;
use std::str::FromStr;

/// The most members a conversation of a run may have (Natter's default
/// `limits.max_members`).
pub(crate) const MAX_MEMBERS: u32 = 100_000;

/// The group size of `mix` when none is given.
pub(crate) const MIX_GROUP: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// Conversations of two: a customer and an agent.
    Pairs,
    /// Conversations of K members.
    Groups(u32),
    /// One room of S members; devices follow it with `watch`, the only way
    /// messages of rooms above `limits.big_room_members` reach them.
    Room(u32),
    /// Pairs and groups of K alternating: personal conversations plus
    /// group chats.
    Mix(u32),
}

impl Topology {
    /// Members of each conversation, for a run of `conversations`
    /// conversations (a room is always one).
    pub(crate) fn sizes(self, conversations: u32) -> Vec<u32> {
        match self {
            Topology::Pairs => vec![2; conversations as usize],
            Topology::Groups(k) => vec![k; conversations as usize],
            Topology::Room(s) => vec![s],
            Topology::Mix(k) => (0..conversations)
                .map(|c| if c % 2 == 0 { 2 } else { k })
                .collect(),
        }
    }

    /// Whether devices follow their conversation with `watch` (and count
    /// its `message` frames) rather than reading their update log.
    pub(crate) fn watches(self) -> bool {
        matches!(self, Topology::Room(_))
    }
}

impl FromStr for Topology {
    type Err = String;

    fn from_str(text: &str) -> Result<Topology, String> {
        let (name, size) = match text.split_once(':') {
            Some((name, size)) => (name, Some(size)),
            None => (text, None),
        };
        let given = size;
        let size = |default: Option<u32>| -> Result<u32, String> {
            let n = match (given, default) {
                (Some(size), _) => size
                    .parse::<u32>()
                    .map_err(|_| format!("{text:?}: {size:?} is not a number of members"))?,
                (None, Some(default)) => default,
                (None, None) => return Err(format!("{name} needs a size: {name}:N")),
            };
            if (2..=MAX_MEMBERS).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{text:?}: members must be 2 to {MAX_MEMBERS}"))
            }
        };
        match name {
            "pairs" if given.is_none() => Ok(Topology::Pairs),
            "groups" => Ok(Topology::Groups(size(None)?)),
            "room" => Ok(Topology::Room(size(None)?)),
            "mix" => Ok(Topology::Mix(size(Some(MIX_GROUP))?)),
            _ => Err(format!(
                "unknown topology {text:?}: use pairs, groups:K, room:S or mix[:K]"
            )),
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Pairs => write!(f, "pairs"),
            Topology::Groups(k) => write!(f, "groups:{k}"),
            Topology::Room(s) => write!(f, "room:{s}"),
            Topology::Mix(k) => write!(f, "mix:{k}"),
        }
    }
}

/// Where each conversation's devices start in the run's flat list of
/// devices.
pub(crate) fn offsets(sizes: &[u32]) -> Vec<u64> {
    sizes
        .iter()
        .scan(0u64, |next, &size| {
            let start = *next;
            *next += u64::from(size);
            Some(start)
        })
        .collect()
}

/// The member who sends message `n` of a conversation of `members`, and
/// which of that member's own messages it is.
pub(crate) fn sender(n: u64, members: u32) -> (u32, u64) {
    let m = u64::from(members.max(1));
    ((n % m) as u32, n / m)
}

/// How many of a conversation's `count` messages member `member` sends.
pub(crate) fn sent_by(member: u32, members: u32, count: u64) -> u64 {
    let (m, member) = (u64::from(members.max(1)), u64::from(member));
    if member >= count {
        0
    } else {
        (count - member).div_ceil(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topologies_parse_and_print_back() {
        for text in ["pairs", "groups:10", "room:5000", "mix:10"] {
            assert_eq!(text.parse::<Topology>().unwrap().to_string(), text);
        }
        assert_eq!("mix".parse(), Ok(Topology::Mix(MIX_GROUP)));
        for bad in [
            "groups",
            "groups:1",
            "room:x",
            "room:100001",
            "pairs:3",
            "ring",
            "",
        ] {
            assert!(bad.parse::<Topology>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_follow_the_topology() {
        assert_eq!(Topology::Pairs.sizes(3), [2, 2, 2]);
        assert_eq!(Topology::Groups(5).sizes(2), [5, 5]);
        assert_eq!(Topology::Room(2000).sizes(7), [2000]);
        assert_eq!(Topology::Mix(10).sizes(4), [2, 10, 2, 10]);
        assert!(Topology::Room(2).watches() && !Topology::Mix(3).watches());
        assert_eq!(offsets(&[2, 10, 2]), [0, 2, 12]);
    }

    #[test]
    fn senders_take_turns_and_every_message_has_one() {
        let (members, count) = (3, 10);
        assert_eq!(sender(0, members), (0, 0));
        assert_eq!(sender(4, members), (1, 1));
        let by_member: Vec<u64> = (0..members).map(|m| sent_by(m, members, count)).collect();
        assert_eq!(by_member, [4, 3, 3]);
        for n in 0..count {
            let (m, j) = sender(n, members);
            assert!(j < sent_by(m, members, count));
        }
        assert_eq!(sent_by(5, 10, 3), 0);
    }
}
