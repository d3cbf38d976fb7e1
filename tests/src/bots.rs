//! A bot built on the bot SDK, as a business's internal service would
//! build one: it answers customers, hands over to people, stays silent
//! while they have control, and survives a gateway restart; and the
//! sample FAQ bot built on it.

use natter_bot::{Bot, Config, Error, Incoming};
use natter_core::Role;
use std::time::{Duration, Instant};

use natter_proto::v1::{
    FaqEntry, LifecycleChange, PutFaqEntryRequest, ThreadOwner, UpdateLifecycleRequest,
    message_content,
};
use tokio::io::AsyncBufReadExt;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, Mode, Service, authed};
use crate::device::{Device, Transport, WAIT, text_of};

pub async fn sdk(mode: Mode) {
    let mut cluster = Cluster::start(mode).await;
    let conversation = crate::scenarios::conversation(
        &cluster,
        &[
            ("cus", Role::Customer),
            ("helper", Role::Bot),
            ("ann", Role::Agent),
        ],
    )
    .await;
    let config = Config {
        device_id: "helper-1".into(),
        ..Config::new(
            format!("http://{}", cluster.addrs.gateway_grpc),
            cluster.token("helper", Role::Bot),
        )
    };
    let mut bot = Bot::connect(config).await.expect("the bot connects");
    let mut web = customer(&cluster, 0).await;

    web.send_text(&conversation, "c1", "Where is my parcel?")
        .await
        .expect("the customer asks");
    let asked = hears(&mut bot, "a text", |i| i.text().is_some()).await;
    assert_eq!(asked.text(), Some("Where is my parcel?"));
    assert!(asked.from_customer() && asked.bot_answers, "{asked:?}");
    bot.say(&conversation, "b1", "It left our warehouse today.")
        .await
        .expect("the bot answers");
    let answer = web.messages(&conversation, 2).await;
    assert_eq!(text_of(&answer[1]), "It left our warehouse today.");

    // The bot passes control to people: it still hears the customer, but
    // may not answer until control comes back.
    let lifecycle = bot
        .pass_to_people(&conversation, "pass-1")
        .await
        .expect("the bot passes control");
    assert_eq!(lifecycle.owner(), ThreadOwner::Inbox);
    if cluster.services().contains(&Service::Gateway) {
        cluster.restart(Service::Gateway).await;
        web = customer(&cluster, web.cursor).await;
    }
    web.send_text(&conversation, "c2", "Thanks, and can I change the address?")
        .await
        .expect("the customer asks again");
    let heard = hears(&mut bot, "a text", |i| i.text().is_some()).await;
    assert_eq!(heard.text(), Some("Thanks, and can I change the address?"));
    assert!(!heard.bot_answers, "people have control: {heard:?}");
    let refused = bot
        .say(&conversation, "b2", "Sure!")
        .await
        .expect_err("a bot is silent while people have control");
    assert!(matches!(refused, Error::PeopleHaveControl), "{refused:?}");

    // The agent passes control back; the bot answers again.
    cluster
        .conversations()
        .await
        .update_lifecycle(authed(
            &cluster.token("ann", Role::Agent),
            UpdateLifecycleRequest {
                conversation_id: conversation.clone(),
                client_change_id: "back-1".into(),
                change: Some(LifecycleChange {
                    owner: ThreadOwner::Bot.into(),
                    ..LifecycleChange::default()
                }),
            },
        ))
        .await
        .expect("the agent passes control back");
    let back = hears(&mut bot, "control come back", |i| i.bot_answers).await;
    assert!(matches!(
        back.message.content.and_then(|c| c.kind),
        Some(message_content::Kind::Activity(_))
    ));
    bot.say(&conversation, "b3", "Yes: which address?")
        .await
        .expect("the bot answers again");
}

/// The customer `cus` on the web, from `cursor`.
async fn customer(cluster: &Cluster, cursor: u64) -> Device {
    let token = cluster.token("cus", Role::Customer);
    Device::connect(cluster, Transport::WsJson, &token, "web", cursor)
        .await
        .expect("the customer connects")
}

/// The next message the bot hears that `wanted` accepts, passing over
/// the others.
async fn hears(bot: &mut Bot, what: &str, wanted: impl Fn(&Incoming) -> bool) -> Incoming {
    timeout(WAIT, async {
        loop {
            let incoming = bot.next().await.expect("the bot runs");
            if wanted(&incoming) {
                return incoming;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the bot never hears {what}"))
}

/// The sample FAQ bot: it answers from the FAQ the business keeps through
/// the desk, by meaning, offers a person when unsure, and picks up edits
/// of the FAQ without a restart.
pub async fn faq(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let service = cluster.token("crm", Role::Service);
    let mut desk = cluster.desk().await;
    let entry = |id: &str, question: &str, answer: &str| FaqEntry {
        entry_id: id.into(),
        questions: vec![question.into()],
        answer: answer.into(),
    };
    let put = |entry: FaqEntry| PutFaqEntryRequest { entry: Some(entry) };
    for e in [
        entry(
            "shipping",
            "How long does shipping take?",
            "Orders arrive in 3 to 5 working days.",
        ),
        entry(
            "returns",
            "How do I return an item?",
            "Send it back within 30 days with the return label.",
        ),
        entry(
            "hours",
            "When is your store open?",
            "Our store is open 9 to 6, Monday to Saturday.",
        ),
    ] {
        desk.put_faq_entry(authed(&service, put(e)))
            .await
            .expect("a service writes the faq");
    }
    let blank = desk
        .put_faq_entry(authed(&service, put(entry("blank", " ", "An answer."))))
        .await
        .expect_err("a blank question is refused");
    assert_eq!(blank.code(), tonic::Code::InvalidArgument);
    let agent = desk
        .put_faq_entry(authed(
            &cluster.token("ann", Role::Agent),
            put(entry("x", "Why?", "Because.")),
        ))
        .await
        .expect_err("agents do not edit the faq");
    assert_eq!(agent.code(), tonic::Code::PermissionDenied);

    let shutdown = CancellationToken::new();
    let config = natter_faqbot::Config {
        bot: Config {
            device_id: "faq-1".into(),
            ..Config::new(
                format!("http://{}", cluster.addrs.gateway_grpc),
                cluster.token("faq", Role::Bot),
            )
        },
        refresh: Duration::from_millis(500),
    };
    let bot = tokio::spawn(natter_faqbot::run(config, shutdown.clone()));
    let conversation =
        crate::scenarios::conversation(&cluster, &[("cus", Role::Customer), ("faq", Role::Bot)])
            .await;
    let mut web = customer(&cluster, 0).await;

    // In other words than the FAQ's: answered, quoting the question.
    answers_shipping(
        &mut web,
        &conversation,
        "faq",
        "how long till my order ships",
    )
    .await;
    web.send_text(&conversation, "q2", "what is the capital of peru")
        .await
        .expect("the customer asks");
    match bot_says(&mut web, &conversation, "faq").await {
        message_content::Kind::QuickReplies(offer) => {
            assert_eq!(offer.text, natter_faqbot::UNSURE);
            assert_eq!(offer.replies[0].payload, natter_core::ASK_FOR_A_PERSON);
        }
        other => panic!("expected an offer of a person, got {other:?}"),
    }

    // The business adds an entry; the bot answers from it soon after.
    desk.put_faq_entry(authed(
        &service,
        put(entry(
            "gift-cards",
            "Do you sell gift cards?",
            "Yes, from 10 to 500 euros.",
        )),
    ))
    .await
    .expect("a service adds an entry");
    let deadline = Instant::now() + WAIT;
    for attempt in 0.. {
        web.send_text(
            &conversation,
            &format!("g{attempt}"),
            "can i buy a gift card",
        )
        .await
        .expect("the customer asks");
        if let message_content::Kind::Reply(reply) = bot_says(&mut web, &conversation, "faq").await
        {
            assert_eq!(reply.text, "Yes, from 10 to 500 euros.");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bot never learned the new entry"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shutdown.cancel();
    bot.await
        .expect("the bot's task")
        .expect("the bot stops cleanly");
}

/// The FAQ bot's Python example (`services/faqbot/python`), on stubs
/// generated from the protos: another language calling Natter through the
/// public API alone answers a customer from the business's FAQ.
pub async fn python(mode: Mode) {
    let (python, stubs) = match (
        std::env::var("NATTER_TEST_PYTHON"),
        std::env::var("NATTER_TEST_PYTHON_STUBS"),
    ) {
        (Ok(python), Ok(stubs)) => (python, stubs),
        _ => panic!(
            "NATTER_TEST_PYTHON and NATTER_TEST_PYTHON_STUBS must name a python with grpcio \
             and the generated stubs: run the tests with scripts/test, which makes them"
        ),
    };
    let cluster = Cluster::start(mode).await;
    let mut desk = cluster.desk().await;
    desk.put_faq_entry(authed(
        &cluster.token("crm", Role::Service),
        PutFaqEntryRequest {
            entry: Some(FaqEntry {
                entry_id: "shipping".into(),
                questions: vec!["How long does shipping take?".into()],
                answer: "Orders arrive in 3 to 5 working days.".into(),
            }),
        },
    ))
    .await
    .expect("a service writes the faq");
    let conversation =
        crate::scenarios::conversation(&cluster, &[("cus", Role::Customer), ("py", Role::Bot)])
            .await;
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/faqbot/python/faq_bot.py"
    );
    let mut bot = tokio::process::Command::new(&python)
        .arg(example)
        .arg(cluster.addrs.gateway_grpc.to_string())
        .arg(cluster.token("py", Role::Bot))
        .env("PYTHONPATH", &stubs)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    // Its first line says it has read the FAQ.
    let mut said = tokio::io::BufReader::new(bot.stdout.take().expect("its stdout")).lines();
    let first = timeout(WAIT, said.next_line())
        .await
        .expect("the Python bot reads the FAQ in time")
        .expect("its output");
    assert_eq!(first.as_deref(), Some("answering from 1 entries"));

    let mut web = customer(&cluster, 0).await;
    answers_shipping(
        &mut web,
        &conversation,
        "py",
        "how long does shipping take to Lyon?",
    )
    .await;
    bot.kill().await.expect("the Python bot stops");
}

/// The customer asks `question`; `bot` answers with the shipping entry,
/// as a reply to it.
async fn answers_shipping(web: &mut Device, conversation: &str, bot: &str, question: &str) {
    let asked = web
        .send_text(conversation, "q1", question)
        .await
        .expect("the customer asks")
        .seq;
    match bot_says(web, conversation, bot).await {
        message_content::Kind::Reply(reply) => {
            assert_eq!(reply.to_seq, asked);
            assert_eq!(reply.text, "Orders arrive in 3 to 5 working days.");
        }
        other => panic!("expected the shipping answer, got {other:?}"),
    }
}

/// What `bot` sends the conversation next.
async fn bot_says(web: &mut Device, conversation: &str, bot: &str) -> message_content::Kind {
    loop {
        let message = web.messages(conversation, 1).await.remove(0);
        if message.sender_id == bot
            && let Some(kind) = message.content.and_then(|c| c.kind)
        {
            return kind;
        }
    }
}
