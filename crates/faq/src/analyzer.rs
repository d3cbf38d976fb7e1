//! The one text analysis that entries, customers' questions and the
//! lexicon all go through, so that their words meet in the same form.
//!
//! Words are split on anything that is not a letter or digit, lowercased,
//! folded to ASCII (customers skip accents) and reduced to their English
//! stem, so "shipped", "shipping" and "ships" are one word. Stop words say
//! nothing about which entry is meant, and left in they would count as
//! words the FAQ does not know and lower every chatty question's
//! confidence; the index drops them before stemming. The list is the usual
//! English one (NLTK's) plus what chat adds: greetings, courtesies, filler
//! ("wondering", "stuff", "actually"), modal verbs and contractions typed
//! without their apostrophe ("dont", "whats").
//!
//! A question is read word by word ([`Analyzer::words`]) rather than as the
//! index reads it, because the lexicon's phrases keep their stop words
//! ("sign up" is not "sign in") and a run-together word is split by its
//! letters.

use std::collections::HashSet;

use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    StopWordFilter, TextAnalyzer, TextAnalyzerBuilder,
};

/// The name the index's analyzer is registered under.
pub(crate) const NAME: &str = "faq";

/// Longer tokens are no words (pasted links, serial numbers) and are dropped.
const MAX_WORD_BYTES: usize = 40;

#[rustfmt::skip]
const STOP_WORDS: &[&str] = &[
    // NLTK's English list, without the forms with an apostrophe, which the
    // tokenizer splits into the fragments below.
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours",
    "yourself", "yourselves", "he", "him", "his", "himself", "she", "her", "hers", "herself",
    "it", "its", "itself", "they", "them", "their", "theirs", "themselves", "what", "which",
    "who", "whom", "this", "that", "these", "those", "am", "is", "are", "was", "were", "be",
    "been", "being", "have", "has", "had", "having", "do", "does", "did", "doing", "a", "an",
    "the", "and", "but", "if", "or", "because", "as", "until", "while", "of", "at", "by", "for",
    "with", "about", "against", "between", "into", "through", "during", "before", "after",
    "above", "below", "to", "from", "up", "down", "in", "out", "on", "off", "over", "under",
    "again", "further", "then", "once", "here", "there", "when", "where", "why", "how", "all",
    "any", "both", "each", "few", "more", "most", "other", "some", "such", "no", "nor", "not",
    "only", "own", "same", "so", "than", "too", "very", "s", "t", "can", "will", "just", "don",
    "should", "now", "d", "ll", "m", "o", "re", "ve", "y", "ain", "aren", "couldn", "didn",
    "doesn", "hadn", "hasn", "haven", "isn", "ma", "mightn", "mustn", "needn", "shan",
    "shouldn", "wasn", "weren", "won", "wouldn",
    // Chat: modal verbs NLTK leaves out, contractions without an apostrophe,
    // chat shorthand and courtesies.
    "would", "could", "might", "must", "shall", "may", "dont", "doesnt", "didnt", "cant",
    "wont", "isnt", "arent", "im", "ive", "id", "youre", "whats", "wheres", "hows", "u", "ur",
    "hi", "hello", "hey", "please", "pls", "plz", "thanks", "thank",
    // Chat filler: openings, hedges and vague nouns that come with a
    // question without saying what it is about.
    "also", "really", "actually", "basically", "still", "already", "yet", "ever", "even",
    "ok", "okay", "yes", "yeah", "yep", "hmm", "lol", "guys", "dear", "sir", "madam",
    "question", "wondering", "wonder", "curious", "wanted", "want", "like", "need",
    "know", "tell", "let", "get", "gets", "got", "gotten", "getting", "help", "kindly",
    "hope", "hoping", "possible", "able", "something", "anything", "stuff", "thing", "things",
    "someone", "anyone", "usually", "currently", "maybe", "perhaps", "btw", "anyway", "good",
    "morning",
];

/// Reads texts into words.
#[derive(Clone)]
pub(crate) struct Analyzer {
    /// Tokens lowercased and folded to ASCII.
    folded: TextAnalyzer,
    /// The same tokens, stemmed.
    stemmed: TextAnalyzer,
    stop_words: HashSet<&'static str>,
}

/// One word of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Word {
    /// Lowercased and folded to ASCII.
    pub(crate) text: String,
    /// Its English stem.
    pub(crate) stem: String,
    /// Whether it is a stop word, which the index does not hold.
    pub(crate) stop: bool,
}

impl Analyzer {
    pub(crate) fn new() -> Analyzer {
        Analyzer {
            folded: folding().build(),
            stemmed: folding().filter(Stemmer::new(Language::English)).build(),
            stop_words: STOP_WORDS.iter().copied().collect(),
        }
    }

    /// The analyzer the index reads entries with: the stems of the words
    /// that are not stop words, as [`Analyzer::words`] reads them.
    pub(crate) fn index() -> TextAnalyzer {
        folding()
            .filter(StopWordFilter::remove(
                STOP_WORDS.iter().map(|word| (*word).to_owned()),
            ))
            .filter(Stemmer::new(Language::English))
            .build()
    }

    /// The first `max_words` words of `text`, stop words included.
    pub(crate) fn words(&self, text: &str, max_words: usize) -> Vec<Word> {
        let mut folded = self.folded.clone();
        let mut stemmed = self.stemmed.clone();
        let mut folded = folded.token_stream(text);
        let mut stemmed = stemmed.token_stream(text);
        let mut words = Vec::new();
        // Both streams split alike and neither drops a token.
        while words.len() < max_words && folded.advance() && stemmed.advance() {
            let text = folded.token().text.clone();
            words.push(Word {
                stop: self.stop_words.contains(text.as_str()),
                stem: stemmed.token().text.clone(),
                text,
            });
        }
        words
    }

    /// `text` read as one word, if it is one.
    pub(crate) fn word(&self, text: &str) -> Option<Word> {
        match <[Word; 1]>::try_from(self.words(text, 2)) {
            Ok([word]) => Some(word),
            Err(_) => None,
        }
    }
}

fn folding() -> TextAnalyzerBuilder<impl tantivy::tokenizer::Tokenizer> {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_WORD_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stems(text: &str) -> Vec<String> {
        Analyzer::new()
            .words(text, usize::MAX)
            .into_iter()
            .filter(|word| !word.stop)
            .map(|word| word.stem)
            .collect()
    }

    #[test]
    fn word_forms_share_a_stem_and_chat_is_dropped() {
        assert_eq!(
            stems("Hi! When will my order be SHIPPED, please?"),
            ["order", "ship"]
        );
        assert_eq!(stems("shipping ships"), ["ship", "ship"]);
        assert_eq!(stems("whats the café's address"), ["cafe", "address"]);
    }

    #[test]
    fn questions_and_the_index_read_words_alike() {
        let text = "Hi, I was wondering: can the Café's gift-cards be RETURNED? \
                    https://example.com/a-very-long-link-that-is-no-word-at-all-really";
        let mut index = Analyzer::index();
        let mut stream = index.token_stream(text);
        let mut indexed = Vec::new();
        while stream.advance() {
            indexed.push(stream.token().text.clone());
        }
        assert_eq!(stems(text), indexed);
    }

    #[test]
    fn only_the_first_words_are_read() {
        let words = Analyzer::new().words("refund the gift card", 3);
        let stems: Vec<_> = words.iter().map(|word| word.stem.as_str()).collect();
        assert_eq!(stems, ["refund", "the", "gift"]);
        assert!(words[1].stop);
    }

    #[test]
    fn reads_a_single_word() {
        let analyzer = Analyzer::new();
        assert_eq!(
            analyzer.word("Cards"),
            Some(Word {
                text: "cards".to_owned(),
                stem: "card".to_owned(),
                stop: false
            })
        );
        assert_eq!(analyzer.word("gift cards"), None);
        assert_eq!(analyzer.word("?"), None);
    }
}
