//! The FAQ through its public API: what it accepts, and how it matches
//! word forms, typos, related words, run-together words and questions it
//! cannot answer.

use natter_faq::{
    Config, Entry, Faq, FaqError, MAX_ENTRIES, MAX_ID_BYTES, MAX_QUESTIONS, MAX_TEXT_BYTES, Text,
    Verdict,
};

fn entry(id: &str, questions: &[&str], answer: &str) -> Entry {
    Entry {
        id: id.to_owned(),
        questions: questions.iter().map(|q| (*q).to_owned()).collect(),
        answer: answer.to_owned(),
    }
}

fn shop() -> Vec<Entry> {
    vec![
        entry(
            "shipping",
            &["How long does shipping take?"],
            "Parcels arrive in 3 to 5 business days.",
        ),
        entry(
            "refund",
            &["When will I get my refund?", "How long do refunds take?"],
            "We pay you back within 5 business days of receiving your return.",
        ),
        entry(
            "cancel",
            &["How do I cancel my order?"],
            "Cancel it from your account within 1 hour of placing it.",
        ),
        entry(
            "gift-cards",
            &["Do you sell gift cards?"],
            "Digital gift cards from $10 are emailed instantly.",
        ),
        entry(
            "password",
            &["I forgot my password"],
            "Click Forgot password on the sign-in page.",
        ),
    ]
}

fn answered(faq: &Faq, question: &str) -> (String, f32) {
    match faq.ask(question) {
        Verdict::Answer {
            entry_id,
            confidence,
            ..
        } => (entry_id, confidence),
        unsure => panic!("{question:?} got {unsure:?}"),
    }
}

#[test]
fn answers_with_the_entry_and_its_text() {
    let faq = Faq::build(&shop()).expect("valid");
    assert_eq!(
        faq.ask("how do i cancel my order"),
        Verdict::Answer {
            entry_id: "cancel".to_owned(),
            answer: "Cancel it from your account within 1 hour of placing it.".to_owned(),
            confidence: 1.0,
        }
    );
}

#[test]
fn word_forms_meet_by_their_stem() {
    let faq = Faq::build(&shop()).expect("valid");
    assert_eq!(answered(&faq, "when will it be shipped").0, "shipping");
    assert_eq!(answered(&faq, "Cancelled orders?").0, "cancel");
}

#[test]
fn typos_find_the_word_meant_but_count_less() {
    let faq = Faq::build(&shop()).expect("valid");
    let (entry, typo) = answered(&faq, "refnud");
    assert_eq!(entry, "refund");
    let (_, spelled) = answered(&faq, "refund");
    assert!(typo < spelled, "typo {typo}, spelled right {spelled}");
    assert_eq!(answered(&faq, "forgot my pasword").0, "password");
}

#[test]
fn related_words_find_the_entry_but_count_less() {
    let faq = Faq::build(&shop()).expect("valid");
    let (entry, related) = answered(&faq, "how long does postage take");
    assert_eq!(entry, "shipping");
    let (_, own) = answered(&faq, "how long does shipping take");
    assert!(related < own, "related {related}, own {own}");
    // A phrase: "money back" is a refund, though neither word is in the FAQ.
    assert_eq!(answered(&faq, "when do i get my money back").0, "refund");
}

#[test]
fn phrases_keep_the_stop_words_that_tell_them_apart() {
    let faq = Faq::build(&[
        entry(
            "account",
            &["How do I create an account?"],
            "Click Register.",
        ),
        entry("login", &["How do I log in?"], "Click Log in."),
    ])
    .expect("valid");
    assert_eq!(answered(&faq, "how do i sign up").0, "account");
    assert_eq!(answered(&faq, "how do i sign in").0, "login");
}

#[test]
fn run_together_words_are_split() {
    let faq = Faq::build(&shop()).expect("valid");
    assert_eq!(answered(&faq, "forgotpassword").0, "password");
}

#[test]
fn short_unknown_words_are_not_corrected() {
    let faq = Faq::build(&shop()).expect("valid");
    // "card" is one edit from "cart", but too short to be taken for a typo.
    assert_eq!(
        faq.ask("cart"),
        Verdict::Unsure {
            confidence: 0.0,
            best: None
        }
    );
}

#[test]
fn questions_the_faq_does_not_cover_go_to_a_human() {
    let faq = Faq::build(&shop()).expect("valid");
    for question in ["do you sell cars", "what's the weather like tomorrow", ""] {
        assert!(
            matches!(faq.ask(question), Verdict::Unsure { .. }),
            "{question:?} got {:?}",
            faq.ask(question)
        );
    }
    assert_eq!(
        faq.ask("what is it?"),
        Verdict::Unsure {
            confidence: 0.0,
            best: None
        },
        "stop words only"
    );
}

#[test]
fn a_lower_threshold_answers_what_the_default_hands_over() {
    let eager = Config {
        threshold: 0.0,
        min_margin: 0.0,
    };
    let faq = Faq::build(&shop()).expect("valid").with_config(eager);
    assert_eq!(answered(&faq, "do you sell cars").0, "gift-cards");
}

#[test]
fn is_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Faq>();
}

fn rejected(entries: &[Entry]) -> FaqError {
    Faq::build(entries).expect_err("invalid entries")
}

#[test]
fn rejects_an_empty_or_oversized_faq() {
    assert!(matches!(rejected(&[]), FaqError::NoEntries));
    let many: Vec<Entry> = (0..=MAX_ENTRIES)
        .map(|i| entry(&i.to_string(), &["Question?"], "Answer."))
        .collect();
    let error = rejected(&many);
    assert!(matches!(error, FaqError::TooManyEntries { count: 1001 }));
    assert_eq!(
        error.to_string(),
        "the faq has 1001 entries, at most 1000 are allowed"
    );
}

#[test]
fn rejects_bad_ids() {
    let mut entries = shop();
    entries[1].id = " ".to_owned();
    assert!(matches!(rejected(&entries), FaqError::EmptyId { index: 1 }));

    entries[1].id = "x".repeat(MAX_ID_BYTES + 1);
    assert!(matches!(
        rejected(&entries),
        FaqError::IdTooLong { index: 1, len: 129 }
    ));

    entries[1].id = "shipping".to_owned();
    let error = rejected(&entries);
    assert!(matches!(&error, FaqError::DuplicateId { id } if id == "shipping"));
    assert_eq!(error.to_string(), r#"entry id "shipping" is used twice"#);
}

#[test]
fn rejects_missing_blank_and_oversized_texts() {
    let invalid = |change: fn(&mut Entry)| {
        let mut entries = shop();
        change(&mut entries[2]);
        rejected(&entries)
    };
    assert!(matches!(
        invalid(|e| e.questions.clear()),
        FaqError::NoQuestions { id } if id == "cancel"
    ));
    assert!(matches!(
        invalid(|e| e.questions = vec!["Why?".to_owned(); MAX_QUESTIONS + 1]),
        FaqError::TooManyQuestions { count: 17, .. }
    ));
    assert!(matches!(
        invalid(|e| e.questions.push("\n ".to_owned())),
        FaqError::Blank {
            text: Text::Question,
            ..
        }
    ));
    assert!(matches!(
        invalid(|e| e.answer.clear()),
        FaqError::Blank {
            text: Text::Answer,
            ..
        }
    ));
    let error = invalid(|e| e.answer = "a".repeat(MAX_TEXT_BYTES + 1));
    assert!(matches!(
        error,
        FaqError::TooLong {
            text: Text::Answer,
            len: 2049,
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        r#"entry "cancel" has an overlong answer: 2049 bytes, at most 2048 are allowed"#
    );
    assert!(matches!(
        invalid(|e| e.questions.push("What is it?".to_owned())),
        FaqError::NoWords { question, .. } if question == "What is it?"
    ));
}
