//! Every scenario against both ways Natter runs: the five services as
//! separate processes on real NATS and Cassandra (`separate`), and all of
//! it in one process on the embedded defaults, `natter dev` (`single`).

macro_rules! scenarios {
    ($name:ident, $mode:expr) => {
        mod $name {
            use natter_tests::scenarios;
            use natter_tests::{Mode, Transport};

            const MODE: Mode = $mode;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_devices_and_an_agent_over_grpc() {
                scenarios::two_devices_and_an_agent(MODE, Transport::Grpc).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_devices_and_an_agent_over_websocket() {
                scenarios::two_devices_and_an_agent(MODE, Transport::WsJson).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn metrics_count_the_traffic() {
                scenarios::metrics_count_the_traffic(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn offline_device_catches_up_over_websocket() {
                scenarios::offline_device_catches_up(MODE, Transport::WsProto).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retries_and_read_markers_over_grpc() {
                scenarios::retries_and_read_markers(MODE, Transport::Grpc).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lifecycle_changes_over_websocket() {
                scenarios::lifecycle_changes(MODE, Transport::WsJson).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_bot_hands_over_to_people_and_waits_to_be_passed_back() {
                scenarios::handover(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_bot_on_the_sdk_answers_hands_over_and_reconnects() {
                natter_tests::bots::sdk(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_faq_bot_answers_by_meaning_and_offers_a_person() {
                natter_tests::bots::faq(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_python_faq_bot_answers_on_generated_stubs() {
                natter_tests::bots::python(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_desk_queues_offers_and_requeues() {
                natter_tests::desk::queue(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_desk_answers_out_of_hours() {
                natter_tests::desk::out_of_hours(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_lead_form_lands_on_the_contact() {
                natter_tests::desk::lead_capture(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn notes_stay_with_agents_and_replies_quote() {
                natter_tests::desk::notes_and_quotes(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_webhook_down_for_a_while_gets_every_event() {
                natter_tests::webhooks::webhooks(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_payment_is_requested_and_paid_through_stripe() {
                natter_tests::payments::pay(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_desk_closes_what_was_resolved_and_left() {
                natter_tests::desk::auto_close(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rules_pick_the_team() {
                natter_tests::desk::rules(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn access_and_bad_input_over_websocket() {
                scenarios::access_and_bad_input(MODE, Transport::WsJson).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn access_and_bad_input_over_grpc() {
                scenarios::access_and_bad_input(MODE, Transport::Grpc).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn who_may_create_conversations() {
                scenarios::who_may_create_conversations(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn graceful_shutdown() {
                scenarios::graceful_shutdown(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn big_room() {
                scenarios::big_room(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gateway_crash_with_many_sessions() {
                scenarios::gateway_crash_with_many_sessions(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn survives_kill_9() {
                scenarios::survives_kill_9(MODE).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn analytics_from_a_day_of_traffic() {
                natter_tests::analytics::day_of_traffic(MODE, false).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn analytics_exact_after_kill_9_mid_stream() {
                natter_tests::analytics::day_of_traffic(MODE, true).await;
            }
        }
    };
}

scenarios!(separate, Mode::Separate);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequencer_takeover_while_sends_are_in_flight() {
    natter_tests::scenarios::sequencer_takeover(natter_tests::Mode::Separate).await;
}
scenarios!(single, Mode::Single);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_need_a_provider() {
    natter_tests::payments::no_provider(natter_tests::Mode::Single).await;
}
