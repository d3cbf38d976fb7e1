"""The FAQ bot in Python, from stubs generated from Natter's protos: how
another language calls Natter. It answers a customer's question with the
FAQ entry sharing the most words with it, and offers a person otherwise.
(The Rust bot ranks by meaning; this one shows the API, not the ranking.)

    python -m venv .venv && .venv/bin/pip install grpcio-tools
    .venv/bin/python -m grpc_tools.protoc -I proto --python_out=gen \
        --grpc_python_out=gen proto/natter/v1/*.proto
    PYTHONPATH=gen .venv/bin/python services/faqbot/python/faq_bot.py \
        127.0.0.1:7000 "$(natter token --user bot --role bot)"
"""

import queue
import re
import sys

import grpc
from natter.v1 import common_pb2, desk_pb2, gateway_pb2, gateway_pb2_grpc

WORD = re.compile(r"[a-z0-9]+")


def words(text):
    return {w for w in WORD.findall(text.lower()) if len(w) > 2}


def main(address, token):
    outbox = queue.Queue()
    outbox.put(gateway_pb2.ClientFrame(hello=gateway_pb2.Hello(token=token, device_id="python-faq-bot")))
    # The session is a stream of frames each way; requests go through the
    # outbox, answers come back on the same stream.
    frames = gateway_pb2_grpc.GatewayServiceStub(grpc.insecure_channel(address)).Connect(iter(outbox.get, None))
    me = next(frames).welcome.user_id
    # One page of the FAQ (up to 100 entries); follow next_page_token for more.
    outbox.put(gateway_pb2.ClientFrame(desk=desk_pb2.DeskCall(
        client_call_id="faq", list_faq_entries=desk_pb2.ListFaqEntriesRequest())))
    faq = []
    for frame in frames:
        kind = frame.WhichOneof("frame")
        if kind == "desk_answer" and frame.desk_answer.client_call_id == "faq":
            faq = [(words(" ".join(e.questions)), e.answer) for e in frame.desk_answer.list_faq_entries.entries]
            print(f"answering from {len(faq)} entries", flush=True)
        elif kind == "update" and frame.update.event.WhichOneof("kind") == "message":
            message = frame.update.event.message
            outbox.put(gateway_pb2.ClientFrame(ack=gateway_pb2.Ack(cursor=frame.update.cursor)))
            if message.sender_id == me or message.content.WhichOneof("kind") != "text":
                continue
            asked = words(message.content.text)
            overlap, answer = max(((len(asked & q), a) for q, a in faq), default=(0, ""))
            content = (
                common_pb2.MessageContent(reply=common_pb2.Reply(to_seq=message.seq, text=answer))
                if overlap >= 2
                else common_pb2.MessageContent(quick_replies=common_pb2.QuickReplies(
                    text="I'm not sure I can answer that one. Shall I get you a person?",
                    replies=[common_pb2.QuickReply(title="Talk to a person", payload="natter:person")]))
            )
            outbox.put(gateway_pb2.ClientFrame(send=gateway_pb2.Send(
                conversation_id=message.conversation_id,
                client_message_id=f"py-faq-{message.message_id}",
                content=content)))
        elif kind == "error":
            print(f"natter: {frame.error.reason}: {frame.error.message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
