"""``saga-dlq``: list, inspect and replay dead letters.

    saga-dlq list [--service order_svc] [--reason invalid_json]
    saga-dlq show SEQ
    saga-dlq replay SEQ [SEQ ...] | --reason max_deliveries [--service S]  [--keep]

``replay`` publishes a dead letter's original body, byte for byte, back to its original subject,
once the cause is fixed. The event is processed like any other, so once: a consumer that already
applied its event_id skips it. A replayed dead letter is removed from the DLQ (``--keep`` keeps
it); if it fails again it is dead-lettered again, under a new sequence.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from shared.connection import CredentialsError, RefusedByServer, connect, nats_url_from_env
from shared.jetstream import MSG_ID_HEADER
from shared.partitions import split_stored
from shared.subjects import PUBLIC_STREAMS, STREAM_SUBJECTS, Stream

REPLAYED_FROM_HEADER = "Dlq-Replayed-From"


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    subject: str
    headers: dict[str, str]
    body: bytes
    time: str

    @property
    def reason(self) -> str:
        return self.headers.get("Dlq-Reason", "?")

    @property
    def service(self) -> str:
        return self.headers.get("Dlq-Service", "?")

    @property
    def original_subject(self) -> str:
        return self.headers.get("Dlq-Original-Subject", "")


def _from_raw(msg: RawStreamMsg) -> DeadLetter:
    return DeadLetter(
        seq=msg.seq or 0,
        subject=msg.subject or "",
        headers=dict(msg.headers or {}),
        body=msg.data or b"",
        time=str(msg.time or ""),
    )


async def dead_letters(
    js: JetStreamContext, service: str | None = None, reason: str | None = None
) -> AsyncIterator[DeadLetter]:
    """Every dead letter still in the DLQ stream, oldest first, optionally filtered."""
    info = await js.stream_info(Stream.DLQ.value)
    if not info.state.messages:
        return
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            letter = _from_raw(await js.get_msg(Stream.DLQ.value, seq))
        except NotFoundError:  # deleted (replayed) ones leave gaps
            continue
        if (service is None or letter.service == service) and (reason is None or letter.reason == reason):
            yield letter


async def get(js: JetStreamContext, seq: int) -> DeadLetter:
    return _from_raw(await js.get_msg(Stream.DLQ.value, seq))


def replay_subject(original: str) -> str:
    """Where a dead letter goes back to: a saga event stored renamed by partition goes back as it
    was published, so that its stream renames it again; a sub-step, as it was."""
    partition, published = split_stored(original)
    public = {STREAM_SUBJECTS[s].removesuffix(".>") for s in PUBLIC_STREAMS}
    return published if partition is not None and published.split(".")[0] in public else original


async def replay(js: JetStreamContext, letter: DeadLetter, keep: bool = False) -> int:
    """Publish ``letter`` back to its original subject; return the new stream sequence."""
    if not letter.original_subject:
        raise ValueError(f"dead letter {letter.seq} has no Dlq-Original-Subject")
    headers = {
        # A retried replay of the same dead letter is dropped by the stream's duplicate window.
        MSG_ID_HEADER: f"dlq-replay:{letter.seq}",
        REPLAYED_FROM_HEADER: f"{Stream.DLQ.value}:{letter.seq}",
    }
    ack = await js.publish(replay_subject(letter.original_subject), letter.body, headers=headers)
    if not keep:
        await js.delete_msg(Stream.DLQ.value, letter.seq)
    return ack.seq


def _printable(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError:
        return repr(body)


async def main_async(args: argparse.Namespace) -> int:
    nc = await connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=3)
    js = nc.jetstream()
    try:
        if args.command == "list":
            count = 0
            print(f"{'seq':>6}  {'service':<14} {'reason':<18} {'original subject':<44} detail")
            async for letter in dead_letters(js, args.service, args.reason):
                count += 1
                detail = letter.headers.get("Dlq-Detail", "")
                print(
                    f"{letter.seq:>6}  {letter.service:<14} {letter.reason:<18} {letter.original_subject:<44} "
                    f"{detail[:80]}"
                )
            print(f"{count} dead letter(s)")
            return 0
        if args.command == "show":
            letter = await get(js, args.seq)
            print(f"seq:     {letter.seq}\nsubject: {letter.subject}\ntime:    {letter.time}")
            for key, value in sorted(letter.headers.items()):
                print(f"{key}: {value}")
            print(f"\n{_printable(letter.body)}")
            return 0
        # replay
        if args.seq:
            letters = [await get(js, seq) for seq in args.seq]
        elif args.reason or args.service:
            letters = [letter async for letter in dead_letters(js, args.service, args.reason)]
        else:
            print("saga-dlq replay: name sequences, or select with --reason/--service", file=sys.stderr)
            return 2
        for letter in letters:
            new_seq = await replay(js, letter, keep=args.keep)
            print(f"replayed {letter.seq} ({letter.reason}) to {letter.original_subject} as stream seq {new_seq}")
        print(f"{len(letters)} replayed")
        return 0
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-dlq", description="List, inspect and replay dead letters.")
    parser.add_argument("--nats-url", default=nats_url_from_env(), help="server(s), comma-separated (NATS_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every dead letter, oldest first")
    listing.add_argument("--service")
    listing.add_argument("--reason")
    show = commands.add_parser("show", help="one dead letter's headers and body")
    show.add_argument("seq", type=int)
    again = commands.add_parser("replay", help="publish dead letters back to their original subject")
    again.add_argument("seq", type=int, nargs="*")
    again.add_argument("--service")
    again.add_argument("--reason")
    again.add_argument("--keep", action="store_true", help="leave the dead letter in the DLQ")
    args = parser.parse_args(argv)
    try:
        code = asyncio.run(main_async(args))
    except NotFoundError as exc:
        print(f"saga-dlq: not found: {exc.description}", file=sys.stderr)
        code = 1
    except (RefusedByServer, CredentialsError) as exc:  # one line, not a traceback: docs/operations.md
        print(f"saga-dlq: cannot connect: {exc}", file=sys.stderr)
        code = 2
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        print(f"saga-dlq: {exc!r}", file=sys.stderr)
        code = 2
    raise SystemExit(code)


if __name__ == "__main__":
    main()
