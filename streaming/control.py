"""The JSON control protocol shared by the WebSocket and WebRTC transports (version 1).

A client controls its session with small JSON objects; each one gets exactly one
JSON reply. Every message is checked before anything is applied: bad input
(oversized, not JSON, unknown type, unknown field, wrong type or range) is
answered with an ``error`` reply that names the problem and what to do, and
never ends the stream. docs/protocol.md is the user-facing description.

Usage::

    try:
        msg = parse_control(raw)            # str | bytes | dict
    except ControlError as e:
        reply = e.reply()                   # {"type": "error", "code": ..., "message": ...}
    else:
        if isinstance(msg, SwitchPrompt):
            ...
        reply = ack(msg)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, get_args

from engine.schedule import FlowSchedule

PROTOCOL_VERSION: Final = 1
MAX_CONTROL_BYTES: Final = 64 * 1024  # one control message, UTF-8 encoded
MAX_PROMPT_CHARS: Final = 2000
MAX_STEPS: Final = 50  # denoising steps per block
MIN_SIDE, MAX_SIDE = 16, 4096  # video pixels; the model checks its own multiples
MAX_SEED: Final = 2**63 - 1

SwitchMode: TypeAlias = Literal["recache", "keep", "cut"]
VideoCodec: TypeAlias = Literal["jpeg", "h264"]  # WebSocket payloads; WebRTC negotiates its own
AudioCodec: TypeAlias = Literal["pcm16", "opus"]  # WebSocket audio payloads (48 kHz, 20 ms)
SWITCH_MODES: tuple[str, ...] = get_args(SwitchMode)
VIDEO_CODECS: tuple[str, ...] = get_args(VideoCodec)
AUDIO_CODECS: tuple[str, ...] = get_args(AudioCodec)
MAX_SAY_CHARS: Final = 4000  # one "say" piece; a long text goes in several

# Error codes (the "code" of an error reply). Stable: clients may branch on them.
TOO_LARGE: Final = "too_large"  # message over MAX_CONTROL_BYTES
BAD_JSON: Final = "bad_json"  # not UTF-8 JSON
NOT_OBJECT: Final = "not_object"  # JSON, but not an object
MISSING_TYPE: Final = "missing_type"
UNKNOWN_TYPE: Final = "unknown_type"
UNKNOWN_FIELD: Final = "unknown_field"
MISSING_FIELD: Final = "missing_field"
BAD_VALUE: Final = "bad_value"  # wrong type or out of range
UNSUPPORTED_VERSION: Final = "unsupported_version"
BAD_MESSAGE: Final = "bad_message"  # e.g. a binary WebSocket message from a client
NOT_STARTED: Final = "not_started"  # a control message before the session started
NO_AUDIO: Final = "no_audio"  # "say" or "cancel" to a session without a voice
BUSY: Final = "busy"  # the server is at its session limit
CLOSED: Final = "closed"  # the session was stopped or closed
MODEL_ERROR: Final = "model_error"  # the generator failed; the session is over
UNAUTHORIZED: Final = "unauthorized"  # missing or wrong bearer token (HTTP 401)
ERROR_CODES: tuple[str, ...] = (
    TOO_LARGE,
    BAD_JSON,
    NOT_OBJECT,
    MISSING_TYPE,
    UNKNOWN_TYPE,
    UNKNOWN_FIELD,
    MISSING_FIELD,
    BAD_VALUE,
    UNSUPPORTED_VERSION,
    BAD_MESSAGE,
    NOT_STARTED,
    NO_AUDIO,
    BUSY,
    CLOSED,
    MODEL_ERROR,
    UNAUTHORIZED,
)

MessageId: TypeAlias = "str | int | None"


class ControlError(ValueError):
    """A control message that cannot be applied; ``reply()`` is what the client gets back."""

    def __init__(
        self, code: str, message: str, *, msg_id: MessageId = None, for_type: str | None = None
    ) -> None:
        assert code in ERROR_CODES, f"unknown error code {code!r}"
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id
        self.for_type = for_type

    def reply(self) -> dict[str, Any]:
        return error_reply(self.code, self.message, msg_id=self.msg_id, for_type=self.for_type)


# ---- messages ----


@dataclass(frozen=True)
class StartParams:
    """What shapes a session; None means the server's default. Also the stream factory's input."""

    prompt: str | None = None
    seed: int | None = None
    steps: tuple[int, ...] | None = None  # denoising timesteps, decreasing, in (0, 1000]
    width: int | None = None  # video pixels
    height: int | None = None
    codec: VideoCodec | None = None  # WebSocket video payload
    audio_codec: AudioCodec | None = None  # WebSocket audio payload (sessions with a voice)

    def merged(self, defaults: StartParams) -> StartParams:
        """These parameters with every None taken from ``defaults``."""
        return StartParams(
            **{
                k: getattr(defaults, k) if getattr(self, k) is None else getattr(self, k)
                for k in self.__dataclass_fields__
            }
        )


@dataclass(frozen=True)
class Start:
    params: StartParams = field(default_factory=StartParams)
    id: MessageId = None
    type: Literal["start"] = "start"


@dataclass(frozen=True)
class SwitchPrompt:
    prompt: str
    mode: SwitchMode = "recache"
    id: MessageId = None
    type: Literal["switch_prompt"] = "switch_prompt"


@dataclass(frozen=True)
class Pause:
    id: MessageId = None
    type: Literal["pause"] = "pause"


@dataclass(frozen=True)
class Resume:
    id: MessageId = None
    type: Literal["resume"] = "resume"


@dataclass(frozen=True)
class Stop:
    id: MessageId = None
    type: Literal["stop"] = "stop"


@dataclass(frozen=True)
class Say:
    """A piece of text to speak (as a language model streams it); ``final`` ends the utterance,
    so what the chunker still holds is spoken without waiting for more."""

    text: str
    final: bool = False
    id: MessageId = None
    type: Literal["say"] = "say"


@dataclass(frozen=True)
class Cancel:
    """Barge-in: drop all speech not yet played."""

    id: MessageId = None
    type: Literal["cancel"] = "cancel"


@dataclass(frozen=True)
class Stats:
    id: MessageId = None
    type: Literal["stats"] = "stats"


ControlMessage: TypeAlias = "Start | SwitchPrompt | Pause | Resume | Stop | Say | Cancel | Stats"

COMMON_FIELDS = frozenset({"type", "id", "v"})
FIELDS: dict[str, frozenset[str]] = {
    "start": frozenset(
        {"prompt", "seed", "steps", "width", "height", "resolution", "codec", "audio_codec"}
    ),
    "switch_prompt": frozenset({"prompt", "mode"}),
    "pause": frozenset(),
    "resume": frozenset(),
    "stop": frozenset(),
    "say": frozenset({"text", "final"}),
    "cancel": frozenset(),
    "stats": frozenset(),
}
MESSAGE_TYPES: tuple[str, ...] = tuple(FIELDS)


# ---- parsing ----


def parse_control(raw: str | bytes | bytearray | dict[str, Any]) -> ControlMessage:
    """Validate one control message; raises ControlError naming the problem."""
    obj = _decode(raw)
    msg_id = obj.get("id")
    if not (msg_id is None or isinstance(msg_id, str | int)) or isinstance(msg_id, bool):
        raise ControlError(BAD_VALUE, '"id" must be a string or an integer (it is echoed back)')
    if isinstance(msg_id, str) and len(msg_id) > 128:
        raise ControlError(BAD_VALUE, '"id" must be at most 128 characters')
    typ = obj.get("type")
    if typ is None:
        raise ControlError(
            MISSING_TYPE,
            f'the message has no "type"; add one of {list(MESSAGE_TYPES)}',
            msg_id=msg_id,
        )
    if not isinstance(typ, str) or typ not in FIELDS:
        raise ControlError(
            UNKNOWN_TYPE,
            f"unknown message type {typ!r}; use one of {list(MESSAGE_TYPES)}",
            msg_id=msg_id,
        )
    version = obj.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ControlError(
            UNSUPPORTED_VERSION,
            f"protocol version {version!r} is not supported; this server speaks "
            f'"v": {PROTOCOL_VERSION} (or leave "v" out)',
            msg_id=msg_id,
            for_type=typ,
        )
    unknown = sorted(set(obj) - COMMON_FIELDS - FIELDS[typ])
    if unknown:
        allowed = sorted(FIELDS[typ] | COMMON_FIELDS)
        raise ControlError(
            UNKNOWN_FIELD,
            f"{typ!r} does not take field(s) {unknown}; allowed: {allowed}",
            msg_id=msg_id,
            for_type=typ,
        )
    try:
        return _build(typ, obj, msg_id)
    except ControlError as e:
        e.msg_id, e.for_type = msg_id, typ
        raise


def parse_start(raw: str | bytes | dict[str, Any] | StartParams | None) -> StartParams:
    """Start parameters from a start message, or from a bare dict of its fields (``/offer``)."""
    if raw is None:
        return StartParams()
    if isinstance(raw, StartParams):
        return raw
    if isinstance(raw, dict) and "type" not in raw:
        raw = {"type": "start", **raw}
    msg = parse_control(raw)
    if not isinstance(msg, Start):
        raise ControlError(BAD_VALUE, f'expected a "start" message, got {msg.type!r}')
    return msg.params


def _decode(raw: str | bytes | bytearray | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, dict):
        # Already parsed (a transport that decodes JSON itself): the size limit still holds.
        try:
            size = len(json.dumps(raw).encode())
        except (TypeError, ValueError) as e:
            raise ControlError(BAD_JSON, f"message is not JSON-serialisable: {e}") from None
        _check_size(size)
        return raw
    if isinstance(raw, str):
        _check_size(len(raw.encode("utf-8", errors="surrogatepass")))
        text = raw
    elif not isinstance(raw, bytes | bytearray):  # e.g. a JSON list where an object belongs
        raise ControlError(
            NOT_OBJECT, f"a control message must be a JSON object, got {type(raw).__name__}"
        )
    else:
        _check_size(len(raw))
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ControlError(BAD_JSON, f"message is not UTF-8 text: {e}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ControlError(
            BAD_JSON,
            f"message is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            'send one JSON object such as {"type": "stats"}',
        ) from None
    except ValueError as e:  # NaN/Infinity, or a number too large to read
        raise ControlError(BAD_JSON, f"message is not valid JSON: {e}") from None
    except RecursionError:
        raise ControlError(BAD_JSON, "message is nested too deeply to read") from None
    if not isinstance(obj, dict):
        raise ControlError(
            NOT_OBJECT,
            f"a control message must be a JSON object, got a JSON {type(obj).__name__}; "
            'send e.g. {"type": "stats"}',
        )
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _check_size(size: int) -> None:
    if size > MAX_CONTROL_BYTES:
        raise ControlError(
            TOO_LARGE,
            f"control message is {size} bytes; the limit is {MAX_CONTROL_BYTES} bytes "
            "(send shorter prompts)",
        )


def _build(typ: str, obj: dict[str, Any], msg_id: MessageId) -> ControlMessage:
    if typ == "start":
        return Start(_start_params(obj), id=msg_id)
    if typ == "switch_prompt":
        if "prompt" not in obj:
            raise ControlError(MISSING_FIELD, '"switch_prompt" needs a "prompt" (a string)')
        mode = obj.get("mode", "recache")
        if mode not in SWITCH_MODES:
            raise ControlError(
                BAD_VALUE, f'"mode" must be one of {list(SWITCH_MODES)}, got {mode!r}'
            )
        return SwitchPrompt(_prompt(obj["prompt"]), mode, id=msg_id)
    if typ == "pause":
        return Pause(id=msg_id)
    if typ == "resume":
        return Resume(id=msg_id)
    if typ == "stop":
        return Stop(id=msg_id)
    if typ == "say":
        if "text" not in obj:
            raise ControlError(MISSING_FIELD, '"say" needs a "text" (a string)')
        text, final = obj["text"], obj.get("final", False)
        if not isinstance(text, str):
            raise ControlError(BAD_VALUE, f'"text" must be a string, got {type(text).__name__}')
        if len(text) > MAX_SAY_CHARS:
            raise ControlError(
                BAD_VALUE,
                f'"text" is {len(text)} characters; send at most {MAX_SAY_CHARS} per "say"',
            )
        if not isinstance(final, bool):
            raise ControlError(BAD_VALUE, f'"final" must be true or false, got {final!r}')
        return Say(text, final, id=msg_id)
    if typ == "cancel":
        return Cancel(id=msg_id)
    assert typ == "stats", typ
    return Stats(id=msg_id)


def _start_params(obj: dict[str, Any]) -> StartParams:
    prompt = _prompt(obj["prompt"]) if "prompt" in obj else None
    seed = _int(obj["seed"], "seed", 0, MAX_SEED) if "seed" in obj else None
    steps = _steps(obj["steps"]) if "steps" in obj else None
    width = height = None
    if "resolution" in obj:
        if "width" in obj or "height" in obj:
            raise ControlError(BAD_VALUE, 'give either "resolution" or "width"/"height", not both')
        width, height = _resolution(obj["resolution"])
    elif "width" in obj or "height" in obj:
        if "width" not in obj or "height" not in obj:
            raise ControlError(MISSING_FIELD, '"width" and "height" go together; give both')
        width = _int(obj["width"], "width", MIN_SIDE, MAX_SIDE)
        height = _int(obj["height"], "height", MIN_SIDE, MAX_SIDE)
    codec = obj.get("codec")
    if codec is not None and codec not in VIDEO_CODECS:
        raise ControlError(BAD_VALUE, f'"codec" must be one of {list(VIDEO_CODECS)}, got {codec!r}')
    audio_codec = obj.get("audio_codec")
    if audio_codec is not None and audio_codec not in AUDIO_CODECS:
        raise ControlError(
            BAD_VALUE, f'"audio_codec" must be one of {list(AUDIO_CODECS)}, got {audio_codec!r}'
        )
    return StartParams(prompt, seed, steps, width, height, codec, audio_codec)


def _prompt(value: object) -> str:
    if not isinstance(value, str):
        raise ControlError(BAD_VALUE, f'"prompt" must be a string, got {type(value).__name__}')
    if not value.strip():
        raise ControlError(BAD_VALUE, '"prompt" is empty; describe the scene in a few words')
    if len(value) > MAX_PROMPT_CHARS:
        raise ControlError(
            BAD_VALUE, f'"prompt" is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}'
        )
    return value.strip()


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        value = int(value)  # JSON has one number type; 4.0 means 4
    if not isinstance(value, int) or isinstance(value, bool):
        raise ControlError(BAD_VALUE, f'"{name}" must be an integer, got {value!r}')
    if not lo <= value <= hi:
        raise ControlError(BAD_VALUE, f'"{name}" must be in [{lo}, {hi}], got {value}')
    return value


def even_steps(n: int) -> tuple[int, ...]:
    """n evenly spaced timesteps from 1000 down: 4 -> (1000, 750, 500, 250)."""
    return tuple(round(1000 - i * 1000 / n) for i in range(n))


def _steps(value: object) -> tuple[int, ...]:
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_STEPS:
            raise ControlError(
                BAD_VALUE,
                f'"steps" as a list must have 1 to {MAX_STEPS} timesteps, got {len(value)}',
            )
        steps = tuple(_int(v, "steps[]", 1, 1000) for v in value)
        try:
            FlowSchedule(steps=steps)  # the one place a step list is validated
        except ValueError as e:
            raise ControlError(BAD_VALUE, f'"steps": {e}') from None
        return steps
    # A number: how many denoising steps, spaced evenly from 1000.
    return even_steps(_int(value, "steps", 1, MAX_STEPS))


def _digits(text: str) -> bool:
    return 0 < len(text) <= 6 and text.isascii() and text.isdigit()


def _resolution(value: object) -> tuple[int, int]:
    if isinstance(value, str):
        w, sep, h = (s.strip() for s in value.lower().partition("x"))
        if not (sep and _digits(w) and _digits(h)):
            raise ControlError(BAD_VALUE, f'"resolution" must look like "128x128", got {value!r}')
        pair: list[object] = [int(w), int(h)]
    elif isinstance(value, list) and len(value) == 2:
        pair = value
    else:
        raise ControlError(
            BAD_VALUE, f'"resolution" must be "WIDTHxHEIGHT" or [width, height], got {value!r}'
        )
    return _int(pair[0], "width", MIN_SIDE, MAX_SIDE), _int(pair[1], "height", MIN_SIDE, MAX_SIDE)


# ---- replies ----


def _base(kind: str, msg_id: MessageId) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": kind, "v": PROTOCOL_VERSION}
    if msg_id is not None:
        reply["id"] = msg_id
    return reply


def ack(msg: ControlMessage, **extra: Any) -> dict[str, Any]:
    """``{"type": "ack", "for": <message type>, ...}``: the message was applied."""
    return {**_base("ack", msg.id), "for": msg.type, **extra}


def error_reply(
    code: str, message: str, *, msg_id: MessageId = None, for_type: str | None = None
) -> dict[str, Any]:
    reply = {**_base("error", msg_id), "code": code, "message": message}
    if for_type is not None:
        reply["for"] = for_type
    return reply


def busy_reply(max_sessions: int) -> dict[str, Any]:
    return error_reply(
        BUSY,
        f"the server is at its limit of {max_sessions} concurrent sessions; try again later",
    )


def stats_reply(stats: dict[str, Any], msg_id: MessageId = None) -> dict[str, Any]:
    return {**_base("stats", msg_id), **stats}


def encode_reply(reply: dict[str, Any]) -> str:
    """Compact JSON text, as sent on the wire."""
    return json.dumps(reply, separators=(",", ":"), allow_nan=False)
