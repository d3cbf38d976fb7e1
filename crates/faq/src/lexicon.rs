//! General customer-service vocabulary: which words and phrases customers
//! use for one thing ("postage" for "shipping", "sign up" for "create an
//! account").
//!
//! BM25 only meets a question and an entry on the words they share, and
//! customers rarely use the business's words: most questions it misses
//! share none with the right entry. The lexicon (`data/lexicon.txt`) bridges
//! the commonest of these gaps. It is general vocabulary, written for no
//! one FAQ, and built into the crate: a business writes its FAQ in its own
//! words and gets the bridges for free. Groups an FAQ has no word of find
//! nothing and cost nothing.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::analyzer::{Analyzer, Word};

const TEXT: &str = include_str!("../data/lexicon.txt");

/// The lexicon, read once.
pub(crate) fn lexicon() -> &'static Lexicon {
    static LEXICON: LazyLock<Lexicon> = LazyLock::new(|| Lexicon::parse(TEXT, &Analyzer::new()));
    &LEXICON
}

/// Groups of words and phrases that stand for one thing.
pub(crate) struct Lexicon {
    /// Each member's stems, stop words included, and the groups it is in.
    members: HashMap<Vec<String>, Vec<usize>>,
    /// Each group's members, as the stems an entry must have to say them:
    /// their words that are not stop words.
    groups: Vec<Vec<Vec<String>>>,
    /// The most words in a member.
    longest: usize,
}

/// Where a question's words meet a member of the lexicon.
pub(crate) struct Match<'a> {
    /// How many words the member takes.
    pub(crate) len: usize,
    /// The other members of its groups, as stems an entry must all have.
    pub(crate) related: Vec<&'a [String]>,
}

impl Lexicon {
    /// One group a line, members separated by commas; `#` starts a comment.
    /// A member that is only stop words could never be found by the index,
    /// and is left out.
    fn parse(text: &str, analyzer: &Analyzer) -> Lexicon {
        let mut lexicon = Lexicon {
            members: HashMap::new(),
            groups: Vec::new(),
            longest: 0,
        };
        for group in groups(text) {
            let index = lexicon.groups.len();
            let mut stems: Vec<Vec<String>> = Vec::new();
            for member in group {
                let words = analyzer.words(member, usize::MAX);
                let content = content(&words);
                if content.is_empty() {
                    continue;
                }
                if !stems.contains(&content) {
                    stems.push(content);
                }
                let key: Vec<String> = words.into_iter().map(|word| word.stem).collect();
                lexicon.longest = lexicon.longest.max(key.len());
                let groups = lexicon.members.entry(key).or_default();
                if !groups.contains(&index) {
                    groups.push(index);
                }
            }
            lexicon.groups.push(stems);
        }
        lexicon
    }

    /// The longest member `words` starts with, if any.
    pub(crate) fn find(&self, words: &[Word]) -> Option<Match<'_>> {
        let longest = self.longest.min(words.len());
        (1..=longest).rev().find_map(|len| {
            let key: Vec<String> = words[..len].iter().map(|word| word.stem.clone()).collect();
            let groups = self.members.get(&key)?;
            let own = content(&words[..len]);
            let mut related: Vec<&[String]> = Vec::new();
            for member in groups.iter().flat_map(|&group| &self.groups[group]) {
                if *member != own && !related.contains(&member.as_slice()) {
                    related.push(member);
                }
            }
            Some(Match { len, related })
        })
    }
}

/// The groups of `text`, each as its members.
fn groups(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            line.split(',')
                .map(str::trim)
                .filter(|member| !member.is_empty())
                .collect()
        })
}

/// The stems of the words that are not stop words.
pub(crate) fn content(words: &[Word]) -> Vec<String> {
    words
        .iter()
        .filter(|word| !word.stop)
        .map(|word| word.stem.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn related(text: &str) -> Option<(usize, Vec<String>)> {
        let words = Analyzer::new().words(text, usize::MAX);
        let found = lexicon().find(&words)?;
        Some((
            found.len,
            found.related.iter().map(|stems| stems.join(" ")).collect(),
        ))
    }

    #[test]
    fn every_member_has_a_word_the_index_can_find() {
        let analyzer = Analyzer::new();
        let mut stop_words_only = Vec::new();
        for group in groups(TEXT) {
            assert!(group.len() >= 2, "a group of one: {group:?}");
            stop_words_only.extend(
                group
                    .into_iter()
                    .filter(|member| content(&analyzer.words(member, usize::MAX)).is_empty()),
            );
        }
        assert!(stop_words_only.is_empty(), "{stop_words_only:?}");
    }

    #[test]
    fn finds_the_longest_member_by_its_stems() {
        let (len, postage) = related("postage fee please").expect("a member");
        assert_eq!(len, 2, "\"postage fee\" is a member");
        assert!(postage.contains(&"ship cost".to_owned()), "{postage:?}");

        let (len, signing_up) = related("signing up today").expect("a member");
        assert_eq!(len, 2);
        assert!(signing_up.contains(&"regist".to_owned()), "{signing_up:?}");
        let (_, signing_in) = related("signing in").expect("a member");
        assert!(!signing_in.contains(&"regist".to_owned()), "{signing_in:?}");
    }

    #[test]
    fn words_it_does_not_have_find_nothing() {
        assert!(related("zebra crossing").is_none());
        assert!(related("the").is_none());
    }
}
