//! The support desk's scenarios: customers asking for a person, queued
//! and offered to agents with a capacity, as every deployment must route
//! them.

use std::time::{Duration, Instant};

use natter_core::Role;
use natter_proto::v1::client_frame::Frame as ClientKind;
use natter_proto::v1::desk_answer::Answer;
use natter_proto::v1::desk_call::Call;
use natter_proto::v1::desk_service_client::DeskServiceClient;
use natter_proto::v1::desk_signal::Signal;
use natter_proto::v1::server_frame::Frame as ServerKind;
use natter_proto::v1::{
    AcceptOfferRequest, AddNoteRequest, Agent, AgentPresence, BusinessHours, Contact,
    ConversationStatus, CreateConversationRequest, DeskCall, ExportContactsRequest, Form,
    FormField, FormFieldKind, FormReply, GetContactRequest, GetDeskRequest, GetDeskResponse,
    Lifecycle, LifecycleChange, ListContactsRequest, ListMessagesRequest, ListNotesRequest,
    MergeContactsRequest, Message, MessageContent, NewMember, Opening, Priority, PutAgentRequest,
    PutRuleRequest, PutTeamRequest, QueuePosition, Reply, RoutingRule, SendMessageRequest, Team,
    TellPlaceRequest, ThreadOwner, UpdateContactRequest, UpdateLifecycleRequest, message_content,
};
use tonic::transport::Channel;

use crate::cluster::{Cluster, Mode, authed};
use crate::device::{Device, Transport, WAIT};

/// Two agents with room for one conversation each and three customers
/// asking for a person: the third waits, knowing its place, until an
/// agent resolves one; a reopened conversation goes back to its agent; an
/// agent who goes offline hands their conversation back to the queue.
pub async fn queue(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let service = cluster.token("crm", Role::Service);
    let mut desk = cluster.desk().await;
    put_team(&mut desk, &service, team("support")).await;
    for agent in ["ann", "bob"] {
        put_agent(&mut desk, &service, agent).await;
    }
    let mut ann = connect(&cluster, Transport::WsJson, "ann", Role::Agent).await;
    let mut bob = connect(&cluster, Transport::Grpc, "bob", Role::Agent).await;
    both_online(&mut desk, &service).await;

    let mut customers = Vec::new();
    for n in 1..=3 {
        let user = format!("customer-{n}");
        let mut web = connect(&cluster, Transport::WsJson, &user, Role::Customer).await;
        let conversation = own_conversation(&cluster, &user).await;
        web.send_text(&conversation, "hello", "Can I talk to a human?")
            .await
            .expect("the customer's message is stored");
        customers.push((web, conversation));
    }
    let [(first, c1), (second, c2), (third, c3)] = &mut customers[..] else {
        unreachable!("three customers");
    };

    // Least busy, ties in turn: the first to Ann, the second to Bob, and
    // the third waits at the head of the queue.
    assert_eq!(offered(&mut ann).await, *c1);
    assert_eq!(offered(&mut bob).await, *c2);
    let place = queued(third, c3).await;
    assert_eq!(place.ahead, 0);
    // Places are signals: a customer who reconnects asks to be told again,
    // the one desk call a customer may make.
    let Answer::TellPlace(_) = call(
        third,
        Call::TellPlace(TellPlaceRequest {
            conversation_id: c3.clone(),
        }),
    )
    .await
    else {
        panic!("tell_place answers TellPlace");
    };
    assert_eq!(queued(third, c3).await.ahead, 0);
    call(
        &mut ann,
        Call::AcceptOffer(AcceptOfferRequest {
            conversation_id: c1.clone(),
        }),
    )
    .await;
    desk.accept_offer(authed(
        &cluster.token("bob", Role::Agent),
        AcceptOfferRequest {
            conversation_id: c2.clone(),
        },
    ))
    .await
    .expect("bob accepts over gRPC");

    // The assignment is an activity every member sees, Ann included now.
    let assigned = activity(first, c1, true).await;
    assert_eq!(
        (assigned.assignee_id.as_str(), assigned.owner()),
        ("ann", ThreadOwner::Inbox)
    );
    assert_eq!(activity(&mut ann, c1, true).await.assignee_id, "ann");
    assert_eq!(activity(second, c2, true).await.assignee_id, "bob");
    let now = desk_until(&mut desk, &service, "the third waiting", |d| {
        d.waiting.len() == 1 && assigned_to(d, "ann") == [c1.clone()]
    })
    .await;
    assert_eq!(now.waiting[0].conversation_id, *c3);
    assert_eq!(assigned_to(&now, "bob"), std::slice::from_ref(c2));

    // Ann resolves hers and the waiting one is hers to take.
    resolve(&cluster, "ann", c1).await;
    assert_eq!(offered(&mut ann).await, *c3);
    call(
        &mut ann,
        Call::AcceptOffer(AcceptOfferRequest {
            conversation_id: c3.clone(),
        }),
    )
    .await;
    assert_eq!(activity(third, c3, true).await.assignee_id, "ann");

    // Resolved, then reopened by the customer: straight back to Ann, who
    // is online with room, without an offer.
    resolve(&cluster, "ann", c3).await;
    desk_until(&mut desk, &service, "ann free", |d| {
        assigned_to(d, "ann").is_empty()
    })
    .await;
    third
        .send_text(c3, "again", "One more thing")
        .await
        .expect("stored");
    desk_until(&mut desk, &service, "the reopened one back with ann", |d| {
        assigned_to(d, "ann") == [c3.clone()]
    })
    .await;

    // Bob leaves: his conversation goes back to the queue, its assignee
    // cleared, and waits, since Ann is full.
    drop(bob);
    let now = desk_until(&mut desk, &service, "bob's conversation waiting", |d| {
        d.waiting.iter().any(|w| w.conversation_id == *c2)
    })
    .await;
    let bob_now = now
        .agents
        .iter()
        .find(|a| a.agent.as_ref().is_some_and(|a| a.user_id == "bob"))
        .expect("bob is an agent");
    assert_eq!(bob_now.presence(), AgentPresence::Offline);
    assert!(bob_now.assigned_conversation_ids.is_empty());
    let requeued = activity(second, c2, false).await;
    assert_eq!(
        (requeued.assignee_id.as_str(), requeued.team_id.as_str()),
        ("", "support")
    );
    assert_eq!(queued(second, c2).await.ahead, 0);
}

/// A customer who asks for a person while the team is closed gets the
/// team's automatic reply, and the time it opens again with their place.
pub async fn out_of_hours(mode: Mode) {
    const DAY_MS: i64 = 86_400_000;
    let cluster = Cluster::start(mode).await;
    let service = cluster.token("crm", Role::Service);
    // Open only two days from now, 09:00 to 17:00 UTC: closed today.
    let today = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64)
        / DAY_MS;
    let opens = today + 2;
    let weekday = u32::try_from((opens + 3) % 7 + 1).expect("a weekday");
    let hours = BusinessHours {
        time_zone: "UTC".into(),
        openings: vec![Opening {
            weekday,
            start_minute: 9 * 60,
            end_minute: 17 * 60,
        }],
        holidays: Vec::new(),
        closed_reply: "We are closed; back soon.".into(),
    };
    let with_hours = Team {
        hours: Some(hours),
        ..team("support")
    };
    put_team(&mut cluster.desk().await, &service, with_hours).await;

    let mut web = connect(&cluster, Transport::WsJson, "night-owl", Role::Customer).await;
    let conversation = own_conversation(&cluster, "night-owl").await;
    web.send_text(&conversation, "hello", "I need a person please")
        .await
        .expect("stored");
    let place = web
        .expect(|frame| match desk_signal(frame) {
            Some(Signal::Queued(q)) if q.conversation_id == conversation => Some(q.clone()),
            _ => None,
        })
        .await;
    let opens_at = place.opens_at.expect("the time the team opens");
    assert_eq!(opens_at.seconds * 1000, opens * DAY_MS + 9 * 3_600_000);
    loop {
        let message = web.messages(&conversation, 1).await.remove(0);
        if let Some(message_content::Kind::Text(text)) =
            message.content.as_ref().and_then(|c| c.kind.clone())
            && message.sender_id == "desk"
        {
            assert_eq!(text, "We are closed; back soon.");
            break;
        }
    }
}

/// A customer's answers to a lead form land on their contact, which a
/// CRM then finds by email or phone, changes, and exports.
pub async fn lead_capture(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let service = cluster.token("crm", Role::Service);
    let agent = cluster.token("ann", Role::Agent);
    let conversation = crate::scenarios::conversation(
        &cluster,
        &[("lead-1", Role::Customer), ("ann", Role::Agent)],
    )
    .await;
    let field = |name: &str, kind: FormFieldKind| FormField {
        name: name.into(),
        label: name.into(),
        kind: kind.into(),
        required: false,
    };
    cluster
        .conversations()
        .await
        .send_message(authed(
            &agent,
            SendMessageRequest {
                conversation_id: conversation.clone(),
                client_message_id: "form".into(),
                content: Some(MessageContent {
                    kind: Some(message_content::Kind::Form(Form {
                        form_id: "lead".into(),
                        text: "How can we reach you?".into(),
                        fields: vec![
                            field("name", FormFieldKind::Text),
                            field("email", FormFieldKind::Email),
                            field("plan", FormFieldKind::Text),
                        ],
                    })),
                }),
            },
        ))
        .await
        .expect("the agent asks for contact details");
    let mut web = connect(&cluster, Transport::WsJson, "lead-1", Role::Customer).await;
    let values = [
        ("name", "Ann Lee"),
        ("email", "Ann.Lee@Example.com"),
        ("plan", "pro"),
    ];
    web.send_content(
        &conversation,
        "answers",
        MessageContent {
            kind: Some(message_content::Kind::FormReply(FormReply {
                form_id: "lead".into(),
                values: values
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            })),
        },
    )
    .await
    .expect("the customer answers");

    let mut desk = cluster.desk().await;
    let deadline = Instant::now() + WAIT;
    let contact = loop {
        let found = desk
            .get_contact(authed(
                &service,
                GetContactRequest {
                    user_id: "lead-1".into(),
                },
            ))
            .await;
        match found {
            Ok(found) => break found.into_inner().contact.expect("the contact"),
            Err(e) if e.code() == tonic::Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no contact from the lead form: {e:?}"),
        }
    };
    assert_eq!(
        (contact.name.as_str(), contact.email.as_str()),
        ("Ann Lee", "ann.lee@example.com")
    );
    assert_eq!(
        contact.attributes.get("plan").map(String::as_str),
        Some("pro")
    );

    // An agent adds a phone number; the CRM finds the contact by either.
    desk.update_contact(authed(
        &agent,
        UpdateContactRequest {
            contact: Some(Contact {
                user_id: "lead-1".into(),
                phone: "+49 (30) 1234-567".into(),
                ..Contact::default()
            }),
        },
    ))
    .await
    .expect("an agent updates the contact");
    let find = |email: &str, phone: &str| ListContactsRequest {
        email: email.into(),
        phone: phone.into(),
        ..ListContactsRequest::default()
    };
    for request in [find("ANN.LEE@example.com", ""), find("", "+49 30 1234567")] {
        let found = desk
            .list_contacts(authed(&service, request))
            .await
            .expect("the CRM searches")
            .into_inner()
            .contacts;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].user_id.as_str(), found[0].phone.as_str()),
            ("lead-1", "+49301234567")
        );
    }
    let mut export = desk
        .export_contacts(authed(&service, ExportContactsRequest {}))
        .await
        .expect("the CRM exports")
        .into_inner();
    let mut csv = Vec::new();
    while let Some(chunk) = export.message().await.expect("a chunk") {
        csv.extend_from_slice(&chunk.csv);
    }
    let csv = String::from_utf8(csv).expect("utf-8");
    assert!(
        csv.starts_with("user_id,name,email,phone,company,"),
        "{csv}"
    );
    assert!(
        csv.contains("lead-1,Ann Lee,ann.lee@example.com,+49301234567,"),
        "{csv}"
    );

    let customer = cluster.token("lead-1", Role::Customer);
    let denied = desk
        .get_contact(authed(
            &customer,
            GetContactRequest {
                user_id: "lead-1".into(),
            },
        ))
        .await
        .expect_err("customers do not read contacts");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // The guest signs in as a customer the CRM knows: the merge keeps
    // what the lead form captured, the known contact's own fields win, and
    // the guest's id leads to the merged contact.
    desk.update_contact(authed(
        &service,
        UpdateContactRequest {
            contact: Some(Contact {
                user_id: "known-1".into(),
                name: "Ann L.".into(),
                company: "Acme".into(),
                ..Contact::default()
            }),
        },
    ))
    .await
    .expect("the CRM knows the customer");
    let merge = MergeContactsRequest {
        from_user_id: "lead-1".into(),
        into_user_id: "known-1".into(),
    };
    let denied = desk
        .merge_contacts(authed(&agent, merge.clone()))
        .await
        .expect_err("agents do not merge contacts");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    for _ in 0..2 {
        let merged = desk
            .merge_contacts(authed(&service, merge.clone()))
            .await
            .expect("the CRM merges, twice alike")
            .into_inner()
            .contact
            .expect("the merged contact");
        assert_eq!(
            (
                merged.user_id.as_str(),
                merged.name.as_str(),
                merged.email.as_str(),
                merged.phone.as_str(),
                merged.company.as_str(),
                merged.attributes.get("plan").map(String::as_str),
            ),
            (
                "known-1",
                "Ann L.",
                "ann.lee@example.com",
                "+49301234567",
                "Acme",
                Some("pro")
            )
        );
    }
    let by_guest = desk
        .get_contact(authed(
            &service,
            GetContactRequest {
                user_id: "lead-1".into(),
            },
        ))
        .await
        .expect("the guest's id still finds the contact")
        .into_inner()
        .contact
        .expect("a contact");
    assert_eq!(by_guest.user_id, "known-1");
    let found = desk
        .list_contacts(authed(&service, find("ann.lee@example.com", "")))
        .await
        .expect("the CRM searches")
        .into_inner()
        .contacts;
    assert_eq!(
        found.iter().map(|c| c.user_id.as_str()).collect::<Vec<_>>(),
        ["known-1"]
    );
    let backwards = desk
        .merge_contacts(authed(
            &service,
            MergeContactsRequest {
                from_user_id: "known-1".into(),
                into_user_id: "lead-1".into(),
            },
        ))
        .await
        .expect_err("nothing merges into a merged id");
    assert_eq!(backwards.code(), tonic::Code::FailedPrecondition);
}

/// Agents write internal notes that reach the other agents at once and
/// never the customer, and reply quoting one of the customer's messages.
pub async fn notes_and_quotes(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let service = cluster.token("crm", Role::Service);
    let mut desk = cluster.desk().await;
    put_team(&mut desk, &service, team("support")).await;
    for agent in ["ann", "bob"] {
        put_agent(&mut desk, &service, agent).await;
    }
    let conversation =
        crate::scenarios::conversation(&cluster, &[("cus", Role::Customer), ("ann", Role::Agent)])
            .await;
    let mut ann = connect(&cluster, Transport::WsJson, "ann", Role::Agent).await;
    let mut bob = connect(&cluster, Transport::Grpc, "bob", Role::Agent).await;
    let mut web = connect(&cluster, Transport::WsJson, "cus", Role::Customer).await;
    both_online(&mut desk, &service).await;
    let question = web
        .send_text(
            &conversation,
            "q",
            "Does it ship to Norway? Is it waterproof?",
        )
        .await
        .expect("the customer asks")
        .seq;

    let Answer::AddNote(added) = call(
        &mut ann,
        Call::AddNote(AddNoteRequest {
            conversation_id: conversation.clone(),
            text: "VIP: refunded twice before".into(),
        }),
    )
    .await
    else {
        panic!("a note answers AddNote");
    };
    let note = added.note.expect("the note");
    assert_eq!(note.author_id, "ann");
    let told = bob
        .expect(|frame| match desk_signal(frame) {
            Some(Signal::Note(note)) => Some(note.clone()),
            _ => None,
        })
        .await;
    assert_eq!(told, note);

    // The agent answers the second question, quoting the message.
    let quoted = |to_seq: u64| MessageContent {
        kind: Some(message_content::Kind::Reply(Reply {
            to_seq,
            text: "Yes, fully waterproof.".into(),
        })),
    };
    let ahead = ann
        .send_content(&conversation, "too-far", quoted(question + 5))
        .await
        .expect_err("a reply quotes only what is there");
    assert_eq!(ahead.code, tonic::Code::InvalidArgument as i32, "{ahead:?}");
    let reply = ann
        .send_content(&conversation, "a", quoted(question))
        .await
        .expect("the agent replies quoting");
    assert_eq!(reply.seq, question + 1, "the note took no seq");

    // The customer gets the question and the reply, gap-free, and never
    // the note: not live, not in a read of the conversation.
    let got = web.messages(&conversation, 2).await;
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [question, question + 1]
    );
    assert_eq!(
        got[1].content.as_ref().and_then(|c| c.kind.clone()),
        quoted(question).kind
    );
    let customer = cluster.token("cus", Role::Customer);
    let read = cluster
        .conversations()
        .await
        .list_messages(authed(
            &customer,
            ListMessagesRequest {
                conversation_id: conversation.clone(),
                ..ListMessagesRequest::default()
            },
        ))
        .await
        .expect("the customer reads the conversation")
        .into_inner();
    assert!(!format!("{read:?}").contains("VIP"), "{read:?}");
    web.send(ClientKind::Desk(DeskCall {
        client_call_id: "peek".into(),
        call: Some(Call::ListNotes(ListNotesRequest {
            conversation_id: conversation.clone(),
            ..ListNotesRequest::default()
        })),
    }))
    .await;
    let refused = web.error().await;
    assert_eq!(
        (refused.client_message_id.as_str(), refused.code),
        ("peek", tonic::Code::PermissionDenied as i32)
    );
    let denied = desk
        .list_notes(authed(
            &customer,
            ListNotesRequest {
                conversation_id: conversation.clone(),
                ..ListNotesRequest::default()
            },
        ))
        .await
        .expect_err("customers do not read notes");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // The notes are there for the business, oldest first.
    let second = desk
        .add_note(authed(
            &service,
            AddNoteRequest {
                conversation_id: conversation.clone(),
                text: "CRM: order 1234 shipped".into(),
            },
        ))
        .await
        .expect("a service writes a note")
        .into_inner()
        .note
        .expect("the note");
    let listed = desk
        .list_notes(authed(
            &service,
            ListNotesRequest {
                conversation_id: conversation.clone(),
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .expect("a service reads the notes")
        .into_inner();
    assert_eq!(listed.notes, [note]);
    let rest = desk
        .list_notes(authed(
            &cluster.token("bob", Role::Agent),
            ListNotesRequest {
                conversation_id: conversation.clone(),
                page_size: 1,
                page_token: listed.next_page_token,
            },
        ))
        .await
        .expect("an agent reads the notes")
        .into_inner();
    assert_eq!(rest.notes, [second]);
}

/// A team that closes what was resolved and left alone: closed after its
/// idle time, and reopened, to the same agent, when the customer writes.
pub async fn auto_close(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let service = cluster.token("crm", Role::Service);
    let mut desk = cluster.desk().await;
    let closing = Team {
        auto_close_after_seconds: 1,
        ..team("support")
    };
    put_team(&mut desk, &service, closing).await;
    put_agent(&mut desk, &service, "ann").await;
    let mut ann = connect(&cluster, Transport::WsJson, "ann", Role::Agent).await;
    desk_until(&mut desk, &service, "ann online", |d| {
        d.agents
            .iter()
            .any(|a| a.presence() == AgentPresence::Online)
    })
    .await;
    let mut web = connect(&cluster, Transport::WsJson, "sleepy", Role::Customer).await;
    let conversation = own_conversation(&cluster, "sleepy").await;
    web.send_text(&conversation, "hello", "A person, please")
        .await
        .expect("stored");
    assert_eq!(offered(&mut ann).await, conversation);
    call(
        &mut ann,
        Call::AcceptOffer(AcceptOfferRequest {
            conversation_id: conversation.clone(),
        }),
    )
    .await;
    activity(&mut web, &conversation, true).await;
    resolve(&cluster, "ann", &conversation).await;
    loop {
        let closed = activity(&mut web, &conversation, true).await;
        if closed.status() == ConversationStatus::Closed {
            assert_eq!(closed.assignee_id, "ann", "closing keeps who answered");
            break;
        }
    }
    web.send_text(&conversation, "again", "Sorry, one more thing")
        .await
        .expect("stored");
    desk_until(&mut desk, &service, "the reopened one back with ann", |d| {
        assigned_to(d, "ann") == [conversation.clone()]
    })
    .await;
}

/// Rules pick the team, skills and priority from what the customer wrote
/// first and from their contact; a conversation no rule matches goes to
/// the first team.
pub async fn rules(mode: Mode) {
    let cluster = Cluster::start(mode).await;
    let service = cluster.token("crm", Role::Service);
    let mut desk = cluster.desk().await;
    for id in ["general", "german", "returns"] {
        put_team(&mut desk, &service, team(id)).await;
    }
    let rule =
        |id: &str, team: &str, keywords: &[&str], attributes: &[(&str, &str)]| PutRuleRequest {
            rule: Some(RoutingRule {
                rule_id: id.into(),
                team_id: team.into(),
                keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
                contact_attributes: attributes
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                skills: vec!["returns".into()],
                priority: if team == "returns" {
                    Priority::High.into()
                } else {
                    Priority::Unspecified.into()
                },
            }),
        };
    desk.put_rule(authed(
        &service,
        rule("1-returns", "returns", &["refund", "return"], &[]),
    ))
    .await
    .expect("a keyword rule");
    desk.put_rule(authed(
        &service,
        rule("2-german", "german", &[], &[("language", "DE")]),
    ))
    .await
    .expect("a contact rule");
    desk.update_contact(authed(
        &service,
        UpdateContactRequest {
            contact: Some(Contact {
                user_id: "hans".into(),
                attributes: [("language".to_owned(), "de".to_owned())].into(),
                ..Contact::default()
            }),
        },
    ))
    .await
    .expect("the CRM knows Hans speaks German");

    let mut asked = Vec::new();
    for (customer, text) in [
        ("rosa", "I want to return my boots. Can I talk to a person?"),
        ("hans", "Hallo! Can I talk to a person?"),
        ("gil", "Can I talk to a person?"),
    ] {
        let mut web = connect(&cluster, Transport::WsJson, customer, Role::Customer).await;
        let conversation = own_conversation(&cluster, customer).await;
        web.send_text(&conversation, "hello", text)
            .await
            .expect("stored");
        asked.push(conversation);
    }
    let now = desk_until(&mut desk, &service, "all three waiting", |d| {
        d.waiting.len() == 3
    })
    .await;
    let team_of = |conversation: &str| {
        let waiting = now
            .waiting
            .iter()
            .find(|w| w.conversation_id == conversation)
            .expect("waiting");
        (waiting.team_id.as_str(), waiting.priority())
    };
    assert_eq!(team_of(&asked[0]), ("returns", Priority::High));
    assert_eq!(team_of(&asked[1]), ("german", Priority::Normal));
    assert_eq!(team_of(&asked[2]), ("general", Priority::Normal));
}

fn team(id: &str) -> Team {
    Team {
        team_id: id.into(),
        ..Team::default()
    }
}

async fn put_team(desk: &mut DeskServiceClient<Channel>, service: &str, team: Team) {
    desk.put_team(authed(service, PutTeamRequest { team: Some(team) }))
        .await
        .expect("a service sets up a team");
}

/// An agent of the support team with room for one conversation.
async fn put_agent(desk: &mut DeskServiceClient<Channel>, service: &str, user: &str) {
    let agent = Agent {
        user_id: user.into(),
        team_ids: vec!["support".into()],
        skills: Vec::new(),
        capacity: 1,
    };
    desk.put_agent(authed(service, PutAgentRequest { agent: Some(agent) }))
        .await
        .expect("a service adds an agent");
}

async fn connect(cluster: &Cluster, transport: Transport, user: &str, role: Role) -> Device {
    let token = cluster.token(user, role);
    Device::connect(cluster, transport, &token, "console", 0)
        .await
        .unwrap_or_else(|closed| panic!("{user} could not connect: {closed:?}"))
}

/// A conversation a customer opens for themselves, as the widget does.
async fn own_conversation(cluster: &Cluster, user: &str) -> String {
    let token = cluster.token(user, Role::Customer);
    let request = CreateConversationRequest {
        conversation_id: String::new(),
        subject: String::new(),
        members: vec![NewMember {
            user_id: user.into(),
            role: natter_proto::v1::Role::Customer.into(),
        }],
    };
    cluster
        .conversations()
        .await
        .create_conversation(authed(&token, request))
        .await
        .expect("a customer opens a conversation")
        .into_inner()
        .conversation
        .expect("the conversation")
        .conversation_id
}

async fn resolve(cluster: &Cluster, agent: &str, conversation: &str) {
    cluster
        .conversations()
        .await
        .update_lifecycle(authed(
            &cluster.token(agent, Role::Agent),
            UpdateLifecycleRequest {
                conversation_id: conversation.into(),
                client_change_id: format!("resolve-{conversation}"),
                change: Some(LifecycleChange {
                    status: ConversationStatus::Resolved.into(),
                    ..LifecycleChange::default()
                }),
            },
        ))
        .await
        .expect("the agent resolves their conversation");
}

/// The conversation offered to the agent next.
async fn offered(agent: &mut Device) -> String {
    agent
        .expect(|frame| match desk_signal(frame) {
            Some(Signal::Offered(offer)) => Some(offer.conversation_id.clone()),
            _ => None,
        })
        .await
}

/// The next place in the queue a member of `conversation` is told.
async fn queued(device: &mut Device, conversation: &str) -> QueuePosition {
    device
        .expect(|frame| match desk_signal(frame) {
            Some(Signal::Queued(q)) if q.conversation_id == conversation => q.position,
            _ => None,
        })
        .await
}

fn desk_signal(frame: &natter_proto::v1::ServerFrame) -> Option<&Signal> {
    match &frame.frame {
        Some(ServerKind::DeskSignal(signal)) => signal.signal.as_ref(),
        _ => None,
    }
}

/// The lifecycle of the next activity of `conversation` the device gets
/// that names an assignee (`assigned`) or none.
async fn activity(device: &mut Device, conversation: &str, assigned: bool) -> Lifecycle {
    loop {
        let messages: Vec<Message> = device.messages(conversation, 1).await;
        if let Some(message_content::Kind::Activity(lifecycle)) =
            messages[0].content.as_ref().and_then(|c| c.kind.clone())
            && lifecycle.assignee_id.is_empty() != assigned
        {
            return lifecycle;
        }
    }
}

/// Makes a desk call over the session and waits for its answer.
async fn call(device: &mut Device, call: Call) -> Answer {
    let id = natter_testkit::unique_name("call");
    device
        .send(ClientKind::Desk(DeskCall {
            client_call_id: id.clone(),
            call: Some(call),
        }))
        .await;
    device
        .expect(|frame| match &frame.frame {
            Some(ServerKind::DeskAnswer(answer)) if answer.client_call_id == id => {
                answer.answer.clone()
            }
            Some(ServerKind::Error(error)) if error.client_message_id == id => {
                panic!("the desk refused the call: {error:?}")
            }
            _ => None,
        })
        .await
}

fn assigned_to(desk: &GetDeskResponse, agent: &str) -> Vec<String> {
    desk.agents
        .iter()
        .find(|a| a.agent.as_ref().is_some_and(|a| a.user_id == agent))
        .map(|a| a.assigned_conversation_ids.clone())
        .unwrap_or_default()
}

/// Waits until the desk sees both agents online.
async fn both_online(desk: &mut DeskServiceClient<Channel>, service: &str) {
    desk_until(desk, service, "both agents online", |d| {
        d.agents
            .iter()
            .filter(|a| a.presence() == AgentPresence::Online)
            .count()
            == 2
    })
    .await;
}

/// Polls the desk until `done` holds, and returns it then.
async fn desk_until(
    desk: &mut DeskServiceClient<Channel>,
    token: &str,
    what: &str,
    mut done: impl FnMut(&GetDeskResponse) -> bool,
) -> GetDeskResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = desk
            .get_desk(authed(token, GetDeskRequest {}))
            .await
            .expect("the desk answers")
            .into_inner();
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "never {what}: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
