"""The web page in real headless Chromium, over WebRTC, against the real server.

Chromium is Debian's /usr/bin/chromium, driven by the Python playwright package
(never `playwright install`); the test installs it with apt when missing and it
runs as root, and skips otherwise.

Loopback only: Chromium gathers ICE candidates on every interface it sees, and
offers a loopback candidate only with --allow-loopback-in-peer-connection and a
page that holds camera/microphone permission (WebRTC's "non-default address"
rule). So the test runs the server and the browser together in a child process
inside a network namespace it creates (``unshare --net``) whose only interface
is ``lo``: nothing can bind or reach the machine's other interfaces. The child
writes what it measured to result.json; this test checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACT = REPO / "out" / "test-artifacts" / "browser.png"
CHILD_TIMEOUT = 60  # seconds for the whole child (server + browser); it takes ~15
FIRST_PROMPT = "a red circle moving left on a black background"
NEW_PROMPT = "a green square moving right on a gray background"
SAY_TEXT = (
    "Hello there, I am the voice of this stream, and I will keep talking for a while "
    "so that you can interrupt me."
)

# Flags for headless Chromium in a test. The WebRTC ones:
#  --disable-features=WebRtcHideLocalIpsWithMdns: real host IPs in candidates, not
#    random .local mDNS names (aioice would have to resolve those by multicast);
#  --allow-loopback-in-peer-connection: let 127.0.0.1 be a candidate at all (the
#    page must also hold camera/microphone permission, granted below);
#  --disable-quic, --disable-background-networking, --disable-component-update,
#    --disable-sync, --no-first-run: no traffic of Chromium's own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]


# ---- the test (parent process) ----


def _chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.skip(
            f"{CHROMIUM} is missing and installing it needs root (apt-get install chromium)"
        )
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    if subprocess.run(install, timeout=600).returncode != 0:
        # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], check=True, timeout=600)
        subprocess.run(install, check=True, timeout=600)
    assert os.path.exists(CHROMIUM), "apt-get install chromium did not provide /usr/bin/chromium"
    return CHROMIUM


def _netns_prefix() -> list[str]:
    """A command prefix that runs its command in a fresh network namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux `unshare` is missing: cannot isolate the browser on loopback")
    for prefix in ([unshare, "--net"], [unshare, "--net", "--map-root-user"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("cannot create a network namespace here (needs root or user namespaces)")


def test_page_streams_switches_and_shows_fps_in_chromium(tmp_path: Path) -> None:
    _chromium()
    pytest.importorskip("playwright.async_api")
    t0 = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [*_netns_prefix(), sys.executable, __file__, "--child", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    result_path = tmp_path / "result.json"
    assert proc.returncode == 0 and result_path.exists(), (
        f"browser child failed (rc {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    r: dict[str, Any] = json.loads(result_path.read_text())
    shot = tmp_path / "browser.png"
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)

    # only loopback candidates on both sides
    assert r["offer_candidates"] and set(r["offer_candidates"]) == {"127.0.0.1"}, r
    assert r["answer_candidates"] and set(r["answer_candidates"]) == {"127.0.0.1"}, r
    # the video element plays: time advances and frames decode
    assert r["phase"] == "connected", r
    assert r["current_time"][1] - r["current_time"][0] > 1.0, r["current_time"]
    assert r["quality"]["totalVideoFrames"] > 20, r["quality"]
    assert r["decoded"] > 20, r
    assert r["video_size"] == [128, 128], r
    # the overlay shows a live FPS (and the first-frame time) measured in the page
    assert float(r["overlay_fps"]) > 5.0, r
    assert r["ttff_ms"] is not None and 0 < r["ttff_ms"] < 10_000, r
    assert r["overlay_ttff"].endswith("ms"), r
    # the prompt box switched the engine's prompt (server-side stats of that session)
    before, after = r["server_before"], r["server_after"]
    assert before["prompt"] == FIRST_PROMPT and before["switches"] == 0, before
    assert after["prompt"] == NEW_PROMPT and after["switches"] >= 1, after
    assert any(x.get("type") == "ack" and x.get("for") == "switch_prompt" for x in r["replies"])
    # Apply restarted the stream with the seed and steps from the page; it kept playing
    restart = r["restart"]
    assert restart["seed"] == 7 and restart["steps"] == [1000, 500], restart
    assert restart["current_time"][1] - restart["current_time"][0] > 0.5, restart
    # the voice: silent until asked, heard by a Web Audio analyser, stopped by a barge-in
    v = r["voice"]
    assert v["rms_before"] < 0.005, v
    assert v["meter_readings"] > 100, v
    assert 0 < v["speak_to_heard_ms"] < 3000, v
    assert v["hush_to_silence_ms"] < 500, v  # seconds of queued speech were dropped
    assert v["server"]["cancels"] == 1 and v["server"]["audio_seconds"] > 1, v
    # Disconnect freed the session
    assert r["sessions_after_disconnect"] == 0, r
    assert shot.stat().st_size > 1000
    assert time.perf_counter() - t0 < CHILD_TIMEOUT


def test_page_sends_a_fake_microphone_that_comes_back_converted(tmp_path: Path) -> None:
    """--use-fake-device-for-media-stream with a WAV of speech: the server converts it (WORLD)
    and the page's analyser hears the converted voice."""
    _chromium()
    pytest.importorskip("playwright.async_api")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [*_netns_prefix(), sys.executable, __file__, "--child-mic", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    result_path = tmp_path / "result.json"
    assert proc.returncode == 0 and result_path.exists(), (
        f"browser child failed (rc {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    r: dict[str, Any] = json.loads(result_path.read_text())
    assert r["mic_sending"] is True, r
    assert r["heard_speaking"] is True, r
    audio = r["server"]
    assert audio["input_seconds"] > 2 and audio["audio_seconds"] > 2, audio
    assert audio["says"] == 0  # the voice came from the microphone, not from text


# ---- the child: server + Chromium inside the namespace ----


def _loopback_up() -> None:
    """`ip link set lo up` without iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS on lo."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _candidates(sdp: str) -> list[str]:
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


async def _poll(check: Any, timeout: float, what: str) -> Any:
    """Await ``check()`` until it returns something truthy, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)


async def _child(out: Path) -> None:
    from playwright.async_api import async_playwright

    from apps.server import ServerConfig, SharedStreamFactory, load_voice, start_server
    from models.resolve import ModelOptions

    factory = await asyncio.to_thread(SharedStreamFactory, ModelOptions(model="world"))
    voice = await asyncio.to_thread(load_voice, "default", 1)
    # ice_loopback: WebRTCConfig(host_addresses=("127.0.0.1",)) for the server's peers
    handle = await start_server(ServerConfig(port=0, ice_loopback=True), factory, voice)
    manager = handle.manager
    url = f"{handle.http_url}/"
    result: dict[str, Any] = {}
    try:
        async with async_playwright() as p:
            # a fresh profile (--user-data-dir) every run
            context = await p.chromium.launch_persistent_context(
                tempfile.mkdtemp(prefix="fc-chromium-"),
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1100, "height": 760},
            )
            # Chromium offers loopback candidates only to pages with media permission.
            await context.grant_permissions(["camera", "microphone"], origin=url.rstrip("/"))
            page = await context.new_page()
            sdp_seen: dict[str, str] = {}

            async def on_request(request: Any) -> None:
                if request.url.endswith("/offer"):
                    sdp_seen["offer"] = json.loads(request.post_data or "{}").get("sdp", "")
                    response = await request.response()
                    if response is not None:
                        sdp_seen["answer"] = (await response.json()).get("sdp", "")

            page.on("request", lambda r: asyncio.ensure_future(on_request(r)))
            await page.goto(url)
            await page.fill("#prompt", FIRST_PROMPT)
            await page.click("#connect")
            state = "window.framecast.state"
            await _poll(lambda: page.evaluate(f"{state}.phase === 'connected'"), 15, "connected")
            await _poll(
                lambda: page.evaluate("document.getElementById('video').currentTime > 0"),
                10,
                "video playing",
            )
            session = manager.sessions()[0]
            result["server_before"] = session.stats()
            t1 = await page.evaluate("document.getElementById('video').currentTime")
            await asyncio.sleep(2.0)
            t2 = await page.evaluate("document.getElementById('video').currentTime")
            result["current_time"] = [t1, t2]
            await page.fill("#prompt", NEW_PROMPT)
            await page.click("#switch")

            async def switched() -> bool:
                return bool(session.stats()["switches"] >= 1)

            await _poll(switched, 10, "the engine to apply the switch")
            await asyncio.sleep(1.5)  # a few blocks of the new prompt, and a stats round trip
            result["server_after"] = session.stats()
            result["quality"] = await page.evaluate(
                "(() => { const q = document.getElementById('video').getVideoPlaybackQuality();"
                " return {totalVideoFrames: q.totalVideoFrames,"
                " droppedVideoFrames: q.droppedVideoFrames}; })()"
            )
            result["video_size"] = await page.evaluate(
                "[document.getElementById('video').videoWidth,"
                " document.getElementById('video').videoHeight]"
            )
            js_state = await page.evaluate(
                f"({{phase: {state}.phase, fps: {state}.fps, ttffMs: {state}.ttffMs,"
                f" decoded: {state}.decoded, latencyMs: {state}.latencyMs,"
                f" replies: {state}.replies}})"
            )
            result.update(
                phase=js_state["phase"],
                page_fps=js_state["fps"],
                ttff_ms=js_state["ttffMs"],
                decoded=js_state["decoded"],
                latency_ms=js_state["latencyMs"],
                replies=js_state["replies"],
                overlay_fps=await page.inner_text("#stat-fps"),
                overlay_ttff=await page.inner_text("#stat-ttff"),
                overlay_latency=await page.inner_text("#stat-latency"),
                overlay_server_fps=await page.inner_text("#stat-server-fps"),
            )
            await page.screenshot(path=str(out / "browser.png"))
            # the voice: Speak makes the analyser hear it; Stop speaking silences it
            silent_before = await page.evaluate(f"{state}.audioRms")
            await page.fill("#say", SAY_TEXT)
            await page.click("#speak")
            await _poll(lambda: page.evaluate(f"{state}.speaking"), 10, "the voice to be heard")
            first_heard = await page.evaluate(f"{state}.lastSpeakingAt - {state}.speakAt")
            await asyncio.sleep(1.0)
            await page.click("#hush")
            await asyncio.sleep(1.0)
            result["voice"] = {
                "rms_before": silent_before,
                "speak_to_heard_ms": first_heard,
                "hush_to_silence_ms": await page.evaluate(
                    f"{state}.lastSpeakingAt - {state}.hushAt"
                ),
                "meter_readings": await page.evaluate(f"{state}.audioFrames"),
                "server": session.stats().get("audio"),
            }
            # seed and steps: Apply restarts the session's stream with them
            await page.fill("#seed", "7")
            await page.fill("#steps", "2")
            t3 = await page.evaluate("document.getElementById('video').currentTime")
            await page.click("#apply")

            async def restarted() -> bool:
                return bool(session.stats()["restarts"] >= 1)

            await _poll(restarted, 10, "the stream to restart with the new seed and steps")
            await asyncio.sleep(1.0)
            t4 = await page.evaluate("document.getElementById('video').currentTime")
            result["restart"] = {
                "seed": session.params.seed,
                "steps": list(session.params.steps or ()),
                "current_time": [t3, t4],
            }
            result["offer_candidates"] = _candidates(sdp_seen.get("offer", ""))
            result["answer_candidates"] = _candidates(sdp_seen.get("answer", ""))
            await page.click("#disconnect")

            async def freed() -> bool:
                return manager.active == 0

            with contextlib.suppress(TimeoutError):
                await _poll(freed, 10, "the session to close")
            result["sessions_after_disconnect"] = manager.active
            await context.close()
    finally:
        await handle.stop()
        (out / "result.json").write_text(json.dumps(result, indent=1, default=str))


async def _child_mic(out: Path) -> None:
    import wave

    import numpy as np
    from playwright.async_api import async_playwright

    from apps.server import ServerConfig, SharedStreamFactory, load_converter, start_server
    from engine.audio import AudioStream
    from models.audio.tts import PiperSpeech
    from models.resolve import ModelOptions

    voice = PiperSpeech.load()
    stream = AudioStream(voice, clock=lambda: 0.0)
    stream.feed_text(SAY_TEXT)
    stream.end_input()
    speech = np.concatenate([c.samples[:, 0] for c in iter(stream.next_chunk, None)])
    wav = out / "mic.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(voice.sample_rate)
        w.writeframes((np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes())
    factory = await asyncio.to_thread(
        SharedStreamFactory, ModelOptions(model="nano", height=64, width=64, fps=16)
    )
    handle = await start_server(
        ServerConfig(port=0, ice_loopback=True), factory, load_converter((4.0, 1.0))
    )
    url = f"{handle.http_url}/"
    result: dict[str, Any] = {}
    try:
        async with async_playwright() as p:
            context = await p.chromium.launch_persistent_context(
                tempfile.mkdtemp(prefix="fc-chromium-"),
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    *CHROMIUM_FLAGS,
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={wav}",
                ],
            )
            await context.grant_permissions(["camera", "microphone"], origin=url.rstrip("/"))
            page = await context.new_page()
            await page.goto(url)
            await page.check("#mic")
            await page.click("#connect")
            state = "window.framecast.state"
            await _poll(lambda: page.evaluate(f"{state}.phase === 'connected'"), 15, "connected")
            result["mic_sending"] = await page.evaluate(f"{state}.micSending")
            with contextlib.suppress(TimeoutError):
                await _poll(lambda: page.evaluate(f"{state}.speaking"), 10, "the converted voice")
            result["heard_speaking"] = await page.evaluate(f"{state}.lastSpeakingAt !== null")
            await asyncio.sleep(2.0)
            result["server"] = handle.manager.sessions()[0].stats().get("audio")
            await context.close()
    finally:
        await handle.stop()
        (out / "result.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _loopback_up()
    asyncio.run(_child(Path(sys.argv[2])))

if __name__ == "__main__" and sys.argv[1:2] == ["--child-mic"]:
    _loopback_up()
    asyncio.run(_child_mic(Path(sys.argv[2])))
