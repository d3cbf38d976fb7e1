//! A bot built on the bot SDK, as a business's internal service would
//! build one: it answers customers, hands over to people, stays silent
//! while they have control, and survives a gateway restart.

use natter_bot::{Bot, Config, Error, Incoming};
use natter_core::Role;
use natter_proto::v1::{LifecycleChange, ThreadOwner, UpdateLifecycleRequest, message_content};
use tokio::time::timeout;

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
    let mut web = Device::connect(
        &cluster,
        Transport::WsJson,
        &cluster.token("cus", Role::Customer),
        "web",
        0,
    )
    .await
    .expect("the customer connects");

    web.send_text(&conversation, "c1", "Where is my parcel?")
        .await
        .expect("the customer asks");
    let asked = next_text(&mut bot).await;
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
        web = Device::connect(
            &cluster,
            Transport::WsJson,
            &cluster.token("cus", Role::Customer),
            "web",
            web.cursor,
        )
        .await
        .expect("the customer reconnects");
    }
    web.send_text(&conversation, "c2", "Thanks, and can I change the address?")
        .await
        .expect("the customer asks again");
    let heard = next_text(&mut bot).await;
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
    let back = timeout(WAIT, async {
        loop {
            let incoming = bot.next().await.expect("the bot runs");
            if incoming.bot_answers {
                return incoming;
            }
        }
    })
    .await
    .expect("the bot hears control come back");
    assert!(matches!(
        back.message.content.and_then(|c| c.kind),
        Some(message_content::Kind::Activity(_))
    ));
    bot.say(&conversation, "b3", "Yes: which address?")
        .await
        .expect("the bot answers again");
}

/// The next text the bot hears, passing over lifecycle changes.
async fn next_text(bot: &mut Bot) -> Incoming {
    timeout(WAIT, async {
        loop {
            let incoming = bot.next().await.expect("the bot runs");
            if incoming.text().is_some() {
                return incoming;
            }
        }
    })
    .await
    .expect("the bot hears a text in time")
}
