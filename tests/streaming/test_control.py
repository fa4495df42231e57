"""The JSON control protocol: every malformed case gets its own error code and a useful message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streaming import control as c
from streaming.control import (
    ControlError,
    Pause,
    Resume,
    Start,
    StartParams,
    Stats,
    Stop,
    SwitchPrompt,
    ack,
    encode_reply,
    parse_control,
    parse_start,
)


def code_of(raw: Any) -> tuple[str, str]:
    with pytest.raises(ControlError) as info:
        parse_control(raw)
    reply = info.value.reply()
    assert reply["type"] == "error" and reply["v"] == c.PROTOCOL_VERSION
    assert reply["message"] == info.value.message and len(reply["message"]) > 10
    json.loads(encode_reply(reply))  # replies are plain JSON
    return info.value.code, info.value.message


def test_every_message_type_parses() -> None:
    assert parse_control('{"type": "pause"}') == Pause()
    assert parse_control(b'{"type": "resume", "id": 3}') == Resume(id=3)
    assert parse_control({"type": "stop", "v": 1}) == Stop()
    assert parse_control('{"type": "stats", "id": "q1"}') == Stats(id="q1")
    assert parse_control('{"type": "switch_prompt", "prompt": " a blue square "}') == (
        SwitchPrompt("a blue square", "recache")
    )
    assert parse_control({"type": "switch_prompt", "prompt": "x", "mode": "cut"}).mode == "cut"  # type: ignore[union-attr]
    msg = parse_control(
        {
            "type": "start",
            "prompt": "a red circle",
            "seed": 7,
            "steps": 2,
            "width": 128,
            "height": 96,
            "codec": "h264",
        }
    )
    assert msg == Start(StartParams("a red circle", 7, (1000, 500), 128, 96, "h264"))


def test_start_steps_and_resolution_forms() -> None:
    assert parse_start({"steps": 4}).steps == (1000, 750, 500, 250)
    assert parse_start({"steps": [1000, 600, 200]}).steps == (1000, 600, 200)
    assert parse_start({"steps": 4.0}).steps == (1000, 750, 500, 250)  # JSON numbers
    p = parse_start({"resolution": "160x96"})
    assert (p.width, p.height) == (160, 96)
    p = parse_start({"resolution": [64, 32]})
    assert (p.width, p.height) == (64, 32)
    assert parse_start(None) == StartParams()
    with pytest.raises(ControlError) as info:
        parse_start([1, 2])  # type: ignore[arg-type]  # e.g. /offer's "start": [1, 2]
    assert info.value.code == c.NOT_OBJECT
    assert parse_start({"type": "start"}) == StartParams()
    defaults = StartParams("d", 1, (1000,), 64, 64, "jpeg")
    assert StartParams(seed=5).merged(defaults) == StartParams("d", 5, (1000,), 64, 64, "jpeg")


@pytest.mark.parametrize(
    ("raw", "code", "names"),
    [
        ("{bad json", c.BAD_JSON, "not valid JSON"),
        (b"\xff\xfe{}", c.BAD_JSON, "UTF-8"),
        ('{"type": "stats", "x": NaN}', c.BAD_JSON, "NaN"),
        ("[" * 30000 + "]" * 30000, c.BAD_JSON, "nested"),
        ('"stats"', c.NOT_OBJECT, "JSON object"),
        ("[1, 2]", c.NOT_OBJECT, "JSON object"),
        ("{}", c.MISSING_TYPE, '"type"'),
        ('{"type": "dance"}', c.UNKNOWN_TYPE, "'dance'"),
        ('{"type": 5}', c.UNKNOWN_TYPE, "5"),
        ('{"type": "pause", "prompt": "x"}', c.UNKNOWN_FIELD, "['prompt']"),
        ('{"type": "start", "prompt": "x", "fps": 30}', c.UNKNOWN_FIELD, "['fps']"),
        ('{"type": "switch_prompt", "prompt": "x", "extra": 1}', c.UNKNOWN_FIELD, "extra"),
        ('{"type": "switch_prompt"}', c.MISSING_FIELD, '"prompt"'),
        ('{"type": "start", "width": 128}', c.MISSING_FIELD, '"height"'),
        ('{"type": "switch_prompt", "prompt": 3}', c.BAD_VALUE, "string"),
        ('{"type": "switch_prompt", "prompt": "   "}', c.BAD_VALUE, "empty"),
        ('{"type": "switch_prompt", "prompt": "x", "mode": "fade"}', c.BAD_VALUE, "recache"),
        ('{"type": "start", "seed": -1}', c.BAD_VALUE, '"seed"'),
        ('{"type": "start", "seed": "7"}', c.BAD_VALUE, "integer"),
        ('{"type": "start", "seed": true}', c.BAD_VALUE, "integer"),
        ('{"type": "start", "steps": 0}', c.BAD_VALUE, '"steps"'),
        ('{"type": "start", "steps": 500}', c.BAD_VALUE, '"steps"'),
        ('{"type": "start", "steps": [500, 750]}', c.BAD_VALUE, "descending"),
        ('{"type": "start", "steps": [1001]}', c.BAD_VALUE, "steps"),
        ('{"type": "start", "steps": []}', c.BAD_VALUE, "steps"),
        ('{"type": "start", "width": 8, "height": 64}', c.BAD_VALUE, '"width"'),
        ('{"type": "start", "width": 64, "height": 99999}', c.BAD_VALUE, '"height"'),
        ('{"type": "start", "resolution": "big"}', c.BAD_VALUE, "128x128"),
        ('{"type": "start", "resolution": "¹²⁸x128"}', c.BAD_VALUE, "128x128"),
        ('{"type": "start", "resolution": [64]}', c.BAD_VALUE, "resolution"),
        ('{"type": "start", "resolution": "64x64", "width": 64}', c.BAD_VALUE, "not both"),
        ('{"type": "start", "codec": "vp9"}', c.BAD_VALUE, "jpeg"),
        ('{"type": "stats", "id": [1]}', c.BAD_VALUE, '"id"'),
        ('{"type": "stats", "v": 2}', c.UNSUPPORTED_VERSION, '"v": 1'),
    ],
)
def test_malformed_messages_get_their_code(raw: str | bytes, code: str, names: str) -> None:
    got, message = code_of(raw)
    assert got == code, message
    assert names in message


def test_size_limit_is_64_kib_of_utf8() -> None:
    at_limit = '{"type": "switch_prompt", "prompt": "a", "pad": "' + "x" * 65000
    assert code_of(at_limit + '"}')[0] == c.UNKNOWN_FIELD  # under the limit: read and checked
    code, message = code_of('{"type": "stats", "p": "' + "é" * 40000 + '"}')  # 80 KB as UTF-8
    assert code == c.TOO_LARGE and "65536" in message
    assert code_of(b"x" * (c.MAX_CONTROL_BYTES + 1))[0] == c.TOO_LARGE
    assert code_of({"type": "stats", "p": "x" * 70000})[0] == c.TOO_LARGE  # dicts too
    long_prompt = {"type": "switch_prompt", "prompt": "x" * (c.MAX_PROMPT_CHARS + 1)}
    assert code_of(long_prompt)[0] == c.BAD_VALUE


def test_errors_echo_the_id_and_type() -> None:
    with pytest.raises(ControlError) as info:
        parse_control({"type": "switch_prompt", "id": "m7", "prompt": 1})
    reply = info.value.reply()
    assert reply["id"] == "m7" and reply["for"] == "switch_prompt" and reply["code"] == c.BAD_VALUE


def test_replies() -> None:
    reply = ack(SwitchPrompt("x", id=9), prompt="x")
    assert reply == {"type": "ack", "v": 1, "id": 9, "for": "switch_prompt", "prompt": "x"}
    busy = c.busy_reply(4)
    assert busy["type"] == "error" and busy["code"] == c.BUSY and "4" in busy["message"]
    assert c.stats_reply({"fps": 16.0}, "s")["type"] == "stats"
    with pytest.raises(ValueError):
        encode_reply({"fps": float("nan")})  # never NaN on the wire
