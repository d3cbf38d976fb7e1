//! A sample bot on the bot SDK: it answers customers from their business's
//! FAQ (`DeskService.PutFaqEntry`) by meaning, and offers a person when it
//! is unsure. It is a client of the public API like any bot a business
//! writes, not a part of the message path: nothing waits for it.
//!
//! - A customer's question that the FAQ answers with confidence gets the
//!   answer as a reply quoting the question.
//! - One it is unsure of gets an offer of a person: the "Talk to a person"
//!   quick reply asks for one, and the desk routes the conversation.
//! - A customer who asks for a person in words is left to the desk.
//! - While people have control the bot says nothing.
//!
//! Replies are keyed by the question's message id, so a question the bot
//! hears again after a reconnect is answered once. The FAQ is read again
//! every [`Config::refresh`], so edits take effect without a restart.

use std::sync::Arc;
use std::time::Duration;

use natter_bot::{Bot, Error as BotError, Incoming};
use natter_faq::{Entry, Faq, Verdict};
use natter_proto::v1::{self, message_content};
use tokio_util::sync::CancellationToken;

/// What the bot offers when it is unsure.
pub const UNSURE: &str = "I'm not sure I can answer that one. Shall I get you a person?";
/// The quick reply that asks for a person, as the server understands it.
const TALK_TO_A_PERSON: &str = "Talk to a person";

#[derive(Debug, Clone)]
pub struct Config {
    pub bot: natter_bot::Config,
    /// How often the FAQ is read again.
    pub refresh: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FaqBotError {
    #[error(transparent)]
    Bot(#[from] BotError),
}

/// Runs the bot until `shutdown`; fails only if it cannot connect at
/// first (later drops are repaired by the SDK).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), FaqBotError> {
    let mut bot = Bot::connect(config.bot).await?;
    let mut faq = load(&bot, None).await;
    let mut refresh = tokio::time::interval(config.refresh);
    refresh.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = refresh.tick() => faq = load(&bot, faq).await,
            incoming = bot.next() => {
                let Some(incoming) = incoming else { return Ok(()) };
                if let Some(faq) = &faq
                    && let Err(e) = answer(&bot, faq, &incoming).await
                {
                    tracing::warn!(conversation = incoming.conversation_id(), error = %e, "the faq bot could not answer");
                }
            }
        }
    }
}

/// The FAQ as it is now, built anew if it changed; what was there before
/// if it cannot be read or built.
async fn load(bot: &Bot, had: Option<Loaded>) -> Option<Loaded> {
    let entries = match bot.faq().await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, "the faq bot cannot read the faq");
            return had;
        }
    };
    if had.as_ref().is_some_and(|h| h.entries == entries) {
        return had;
    }
    if entries.is_empty() {
        return None;
    }
    let given: Vec<Entry> = entries
        .iter()
        .map(|e| Entry {
            id: e.entry_id.clone(),
            questions: e.questions.clone(),
            answer: e.answer.clone(),
        })
        .collect();
    // Building the index takes milliseconds per hundred entries: off the
    // runtime's threads.
    match tokio::task::spawn_blocking(move || Faq::build(&given)).await {
        Ok(Ok(faq)) => {
            tracing::info!(entries = entries.len(), "the faq bot answers from the faq");
            Some(Loaded {
                entries,
                faq: Arc::new(faq),
            })
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the faq cannot be used; keeping the one before");
            had
        }
        Err(e) => {
            tracing::warn!(error = %e, "building the faq failed");
            had
        }
    }
}

/// An FAQ and the entries it was built from.
struct Loaded {
    entries: Vec<v1::FaqEntry>,
    faq: Arc<Faq>,
}

async fn answer(bot: &Bot, loaded: &Loaded, incoming: &Incoming) -> Result<(), BotError> {
    let Some(question) = incoming.text() else {
        return Ok(());
    };
    let from_customer = incoming.role.is_none_or(|r| r == v1::Role::Customer);
    if !from_customer || !incoming.bot_answers || asks_for_a_person(incoming) {
        return Ok(());
    }
    let faq = loaded.faq.clone();
    let asked = question.to_owned();
    let verdict = tokio::task::spawn_blocking(move || faq.ask(&asked))
        .await
        .map_err(|_| BotError::Stopped)?;
    let message = &incoming.message;
    let content = match verdict {
        Verdict::Answer {
            entry_id,
            answer,
            confidence,
        } => {
            tracing::info!(entry = %entry_id, confidence, "the faq bot answers");
            message_content::Kind::Reply(v1::Reply {
                to_seq: message.seq,
                text: answer,
            })
        }
        Verdict::Unsure { confidence, .. } => {
            tracing::info!(confidence, "the faq bot is unsure and offers a person");
            message_content::Kind::QuickReplies(v1::QuickReplies {
                text: UNSURE.into(),
                replies: vec![v1::QuickReply {
                    title: TALK_TO_A_PERSON.into(),
                    payload: natter_core::ASK_FOR_A_PERSON.into(),
                }],
            })
        }
    };
    let key = format!("faq-{}", message.message_id);
    let content = v1::MessageContent {
        kind: Some(content),
    };
    match bot.send(&message.conversation_id, &key, content).await {
        // People took over between the question and the answer.
        Err(BotError::PeopleHaveControl) => Ok(()),
        sent => sent.map(drop),
    }
}

/// Whether the customer asked for a person: the desk's to answer.
fn asks_for_a_person(incoming: &Incoming) -> bool {
    incoming
        .message
        .content
        .clone()
        .and_then(|c| natter_core::Content::try_from(c).ok())
        .is_some_and(|c| natter_core::asks_for_a_person(&c))
}
