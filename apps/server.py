"""`framecast serve`: the web page, WebRTC signaling, the WebSocket endpoint and /metrics.

One process, two ports: aiohttp serves HTTP on ``port`` (the page at ``/``,
``GET /config``, ``POST /offer``, ``GET /metrics``) and the websockets library
serves the WebSocket endpoint on ``ws_port`` (default ``port + 1``). Two ports
rather than ``/ws`` on one: the WebSocket transport is built on the websockets
package (its flow control, limits and close handling), which owns its
listening socket; the page learns the WebSocket URL from ``GET /config``.

Both bind 127.0.0.1 unless told otherwise. With a token, ``POST /offer`` and
the WebSocket handshake need ``Authorization: Bearer <token>`` (or
``?token=<token>``, for browsers); the page, /config and /metrics stay open
(they carry no prompts and start nothing).

Usage (tests, scripts)::

    handle = await start_server(ServerConfig(port=0), SharedStreamFactory(ModelOptions()))
    ...  # handle.http_url, handle.ws_url, handle.manager
    await handle.stop()

    with ServerThread(ServerConfig(port=0), factory) as handle:   # from sync code
        ...
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import json
import logging
import os
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiohttp import web
from websockets.asyncio.server import Server as WsServer

from apps.args import add_model_arguments, model_options
from engine.media import VideoFrame
from engine.parallel import Pipeline, PipelineConfig
from engine.protocols import CausalGenerator
from engine.stream import Stream
from models.audio.dsp_vc import ConverterConfig as ConverterSettings
from models.resolve import GeneratorSpec, ModelOptions, build_stream, latent_hw, resolve
from streaming.control import (
    BAD_JSON,
    BAD_VALUE,
    PROTOCOL_VERSION,
    UNAUTHORIZED,
    ControlError,
    StartParams,
    error_reply,
)
from streaming.metrics_export import CONTENT_TYPE as METRICS_CONTENT_TYPE
from streaming.metrics_export import PromText
from streaming.session import (
    DEFAULT_PROMPT,
    LiveSession,
    SessionBusy,
    SessionConfig,
    SessionManager,
    SpeechFactory,
    StreamFactory,
)
from streaming.websocket import WebSocketConfig, WebSocketEndpoint, token_matches
from streaming.wsproto import VERSION as FRAME_VERSION

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).parent / "web"
DEFAULT_PORT = 8080
MAX_OFFER_BYTES = 256 * 1024  # an SDP offer is a few KiB


@dataclass(frozen=True)
class ServerConfig:
    """Everything `framecast serve` takes, with working defaults."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # HTTP; 0 picks a free port
    ws_port: int | None = None  # None: port + 1 (a free port when port is 0)
    token: str | None = None  # bearer token for /offer and the WebSocket
    max_sessions: int = 4
    defaults: StartParams = field(default_factory=StartParams)  # of a start message
    web_root: Path = WEB_ROOT
    # WebRTC (streaming.webrtc.WebRTCConfig)
    webrtc_codec: Literal["vp8", "h264"] = "vp8"
    bitrate: int | None = None  # bits/s for WebRTC and WebSocket H.264; None: by resolution
    ice_loopback: bool = False  # ICE host candidates on 127.0.0.1 only
    ice_servers: tuple[str, ...] = ()
    microphone_buffer: int | None = None  # audio frames; None: WebRTCConfig's default
    ws: WebSocketConfig = field(default_factory=WebSocketConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    record: Path | None = None  # MP4 of the first session
    # the sessions' voice: "auto" (the packaged Piper voice when framecast[tts] is installed),
    # "default" (that voice, or an error naming what to install), "none", or a Piper .onnx path
    voice: str = "auto"
    voice_threads: int = 2  # ONNX Runtime threads of the voice
    # sessions convert microphone audio instead of speaking text: WORLD (semitones, formant)
    # or a user's ONNX converter (a Path; models/audio/onnx_vc.py)
    convert: tuple[float, float] | Path | None = None

    def __post_init__(self) -> None:
        for name in ("port", "ws_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be in [0, 65535], got {value}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token is empty")


class SharedStreamFactory:
    """Loads the model once; each session gets its own Stream over the shared weights.

    A session owns its caches (allocated by Stream.start) and its decoder state
    (a copy of the template's decoder); the generator and prompt encoder are
    shared read-only, which the engine allows: the model keeps no per-stream
    state outside the caches it is handed.

    With a PipelineConfig the generator's forwards run on a pipeline of stage
    processes (engine.parallel); the decoder and prompt encoder stay here. If a
    stage dies or hangs, the sessions running then end with an error and the
    next session starts a fresh pipeline.
    """

    def __init__(self, opts: ModelOptions, pipeline: PipelineConfig | None = None) -> None:
        self.resolved = resolve(opts)
        self.opts = self.resolved.options
        self.pipeline_config = pipeline
        self.pipeline: Pipeline | None = None
        self.pipeline_restarts = 0
        generator = None
        if pipeline is not None:
            self.pipeline = _start_pipeline(self.opts, pipeline)
            generator = self.pipeline.generator
        self._template = build_stream(self.resolved, name="template", generator=generator)
        self._lock = threading.Lock()  # sessions are built on their own worker threads

    @property
    def fps(self) -> int:
        return self._template.config.fps

    @property
    def defaults(self) -> StartParams:
        """What a session gets when its start message leaves a field out."""
        c = self._template.config
        up = self._template.decoder.upscale
        return StartParams(
            seed=c.seed,
            steps=c.schedule.steps,
            width=c.latent_hw[1] * up,
            height=c.latent_hw[0] * up,
        )

    def _generator(self) -> CausalGenerator:
        """The shared generator; a failed pipeline is replaced first (caller holds the lock)."""
        if self.pipeline is None:
            return self._template.generator
        if not self.pipeline.healthy:
            assert self.pipeline_config is not None
            log.warning("pipeline failed (%s); starting a new one", self.pipeline.error)
            self.pipeline.close()
            self.pipeline = _start_pipeline(self.opts, self.pipeline_config)
            self.pipeline_restarts += 1
        return self.pipeline.generator

    def __call__(self, params: StartParams) -> Stream:
        t = self._template
        config = t.config
        if params.seed is not None:
            config = dataclasses.replace(config, seed=params.seed)
        if params.steps is not None:
            config = dataclasses.replace(
                config, schedule=dataclasses.replace(config.schedule, steps=params.steps)
            )
        if params.width is not None and params.height is not None:
            hw = latent_hw(self.resolved.wan, params.height, params.width)
            config = dataclasses.replace(config, latent_hw=hw)
        with self._lock:
            decoder = copy.deepcopy(t.decoder)
            generator = self._generator()
        decoder.reset()
        return Stream(generator, decoder, t.encoder, config)

    def close(self) -> None:
        """Stop the pipeline's stage processes, if any."""
        if self.pipeline is not None:
            self.pipeline.close()


def _start_pipeline(opts: ModelOptions, config: PipelineConfig) -> Pipeline:
    spec = GeneratorSpec(opts)
    if os.environ.get("RANK") is not None and os.environ.get("WORLD_SIZE") is not None:
        return Pipeline.attach(spec, config)  # launched by torchrun: this is rank 0
    return Pipeline.spawn(spec, config)


class FirstSessionRecorder:
    """Records the first session to MP4 (H.264) on a writer thread, every frame, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames = 0
        self.dropped = 0  # frames the writer could not keep up with
        self.done = asyncio.Event()
        self._taken = False
        self._task: asyncio.Task[None] | None = None

    def __call__(self, session: LiveSession) -> None:
        if self._taken:
            return
        self._taken = True
        self._task = asyncio.get_running_loop().create_task(self._record(session))

    async def _record(self, session: LiveSession) -> None:
        from streaming.recording import Mp4Writer

        frames: queue.Queue[VideoFrame | None] = queue.Queue(maxsize=256)

        def on_frame(frame: VideoFrame) -> None:
            try:
                frames.put_nowait(frame)
            except queue.Full:
                self.dropped += 1

        width, height = session.size
        session.add_frame_listener(on_frame)
        log.info("[%s] recording to %s", session.id, self.path)

        def write() -> None:
            with Mp4Writer(self.path, fps=session.fps, width=width, height=height) as writer:
                while (frame := frames.get()) is not None:
                    try:
                        writer.write(frame)
                        self.frames += 1
                    except ValueError as e:  # e.g. a restart at another resolution
                        log.error("[%s] recording stopped: %s", session.id, e)
                        break

        writer_done = asyncio.get_running_loop().run_in_executor(None, write)
        await session.wait_closed()
        frames.put(None)
        try:
            await writer_done
        finally:
            log.info("[%s] recorded %d frames to %s", session.id, self.frames, self.path)
            self.done.set()

    async def wait(self) -> None:
        if self._task is not None:
            await self._task


def _load_gateway(config: ServerConfig) -> Any | None:
    """streaming.webrtc's gateway, or None when WebRTC is not available (POST /offer -> 501)."""
    try:
        from streaming.webrtc import WebRTCConfig, WebRTCGateway
    except ImportError as e:
        log.warning("WebRTC unavailable (%s): POST /offer will answer 501", e)
        return None
    rtc = WebRTCConfig(
        codec=config.webrtc_codec,
        bitrate=config.bitrate,
        ice_servers=config.ice_servers,
        host_addresses=("127.0.0.1",) if config.ice_loopback else None,
    )
    if config.microphone_buffer is not None:
        rtc = dataclasses.replace(rtc, microphone_buffer=config.microphone_buffer)
    return WebRTCGateway(rtc)


def _json(data: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    return web.json_response(data, status=status, headers=headers or None)


class HttpApp:
    """The aiohttp routes; one per server."""

    def __init__(
        self,
        config: ServerConfig,
        manager: SessionManager,
        gateway: Any | None,
        ws_endpoint: WebSocketEndpoint,
    ) -> None:
        self.config = config
        self.manager = manager
        self.gateway = gateway
        self.ws_endpoint = ws_endpoint
        self.ws_port = 0  # set once the WebSocket server is bound
        self.app = web.Application(client_max_size=MAX_OFFER_BYTES)
        self.app.router.add_get("/", self.index)
        self.app.router.add_get("/config", self.config_json)
        self.app.router.add_post("/offer", self.offer)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/{path:.+}", self.static)

    # -- page --

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = self.config.web_root / "index.html"
        if page.is_file():
            return web.FileResponse(page, headers={"Cache-Control": "no-cache"})
        return web.Response(text=_PLACEHOLDER, content_type="text/html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        root = self.config.web_root.resolve()
        try:
            path = (root / request.match_info["path"]).resolve()
        except (OSError, ValueError):
            raise web.HTTPNotFound() from None
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def config_json(self, request: web.Request) -> web.Response:
        """What the page needs: where the WebSocket is, what is on, the start defaults."""
        host = request.url.host or self.config.host
        scheme = "wss" if request.url.scheme == "https" else "ws"
        d = self.manager.defaults
        return _json(
            {
                "version": PROTOCOL_VERSION,
                "frame_version": FRAME_VERSION,
                "ws_url": f"{scheme}://{_url_host(host)}:{self.ws_port}/",
                "ws_port": self.ws_port,
                "webrtc": self.gateway is not None,
                "webrtc_codec": self.config.webrtc_codec,
                "ws_codec": self.config.ws.codec,
                "token_required": self.config.token is not None,
                "max_sessions": self.manager.max_sessions,
                "defaults": {
                    "prompt": d.prompt,
                    "seed": d.seed,
                    "steps": list(d.steps) if d.steps else None,
                    "width": d.width,
                    "height": d.height,
                },
            }
        )

    # -- signaling --

    def _authorized(self, request: web.Request) -> bool:
        token = self.config.token
        return token is None or token_matches(
            request.headers.get("Authorization", ""), request.query.get("token", ""), token
        )

    async def offer(self, request: web.Request) -> web.Response:
        """JSON {"sdp", "type", optional "start": {...}} -> {"sdp", "type", "session"}."""
        if not self._authorized(request):
            return _json(
                error_reply(
                    UNAUTHORIZED,
                    "send 'Authorization: Bearer <token>' or add ?token=<token> to the URL",
                ),
                401,
                **{"WWW-Authenticate": 'Bearer realm="framecast"'},
            )
        if request.content_type != "application/json":
            # also keeps cross-site form posts out: JSON needs a CORS preflight we never grant
            return _json(
                error_reply(BAD_JSON, "POST /offer takes Content-Type: application/json"), 415
            )
        if self.gateway is None:
            return _json(
                error_reply(
                    "unavailable",
                    "WebRTC is not available on this server; use the "
                    "WebSocket endpoint (see GET /config)",
                ),
                501,
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _json(error_reply(BAD_JSON, f"the offer is not valid JSON: {e}"), 400)
        if not isinstance(body, dict):
            return _json(error_reply(BAD_JSON, 'send a JSON object {"sdp": ..., "type": ...}'), 400)
        sdp, type_ = body.get("sdp"), body.get("type")
        if not isinstance(sdp, str) or not isinstance(type_, str):
            return _json(error_reply(BAD_VALUE, 'the offer needs "sdp" and "type" strings'), 400)
        unknown = sorted(set(body) - {"sdp", "type", "start"})
        if unknown:
            return _json(
                error_reply("unknown_field", f"/offer does not take field(s) {unknown}"), 400
            )
        try:
            session = await self.manager.open(body.get("start"))
        except SessionBusy as e:
            return _json(e.reply(), 503, **{"Retry-After": "5"})
        except ControlError as e:
            return _json(e.reply(), 400)
        try:
            answer_sdp, answer_type = await self.gateway.answer(sdp, type_, session)
        except ValueError as e:
            await session.close("bad offer")
            return _json(error_reply("bad_offer", str(e)), 400)
        except Exception:
            await session.close("WebRTC setup failed")
            log.exception("[%s] WebRTC setup failed", session.id)
            return _json(error_reply("internal", "WebRTC setup failed; see the server log"), 500)
        return _json({"sdp": answer_sdp, "type": answer_type, "session": session.id})

    # -- metrics --

    async def metrics(self, request: web.Request) -> web.Response:
        text = self.manager.metrics_text()
        extra = PromText()
        extra.declare("framecast_ws_connections", "gauge", "WebSocket connections open now.")
        extra.sample("framecast_ws_connections", self.ws_endpoint.connections)
        if self.gateway is not None:
            extra.declare("framecast_webrtc_connections", "gauge", "WebRTC peers open now.")
            extra.sample("framecast_webrtc_connections", self.gateway.connections)
        return web.Response(
            body=(text + extra.render()).encode(),
            headers={"Content-Type": METRICS_CONTENT_TYPE},
        )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_PLACEHOLDER = """<!doctype html><meta charset="utf-8"><title>Framecast</title>
<h1>Framecast</h1><p>The web page (apps/web/index.html) is not installed.
The server is running: see <a href="/config">/config</a> and <a href="/metrics">/metrics</a>,
and docs/protocol.md for the WebSocket protocol.</p>
"""


@dataclass
class ServerHandle:
    """A running server: its bound ports and parts; ``await stop()`` shuts everything down."""

    config: ServerConfig
    http_port: int
    ws_port: int
    manager: SessionManager
    ws_endpoint: WebSocketEndpoint
    gateway: Any | None
    recorder: FirstSessionRecorder | None
    _runner: web.AppRunner
    _ws_server: WsServer
    _stopped: bool = False

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.config.host)}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{_url_host(self.config.host)}:{self.ws_port}/"

    async def stop(self) -> None:
        """Stop accepting, close every session (freeing its caches), finish the recording."""
        if self._stopped:
            return
        self._stopped = True
        self._ws_server.close()  # connections get 1001 (going away)
        await self._ws_server.wait_closed()
        if self.gateway is not None:
            await self.gateway.close()
        await self.manager.close_all()
        if self.recorder is not None:
            await self.recorder.wait()
        await self._runner.cleanup()
        log.info("server stopped")


def load_voice(voice: str, threads: int) -> SpeechFactory | None:
    """A speech factory for ``ServerConfig.voice`` (one voice shared by every session)."""
    if voice == "none":
        return None
    from models.audio.phonemes import EspeakPhonemizer
    from models.audio.piper import PiperVoice
    from models.audio.tts import PiperSpeech

    try:
        loaded = PiperVoice.load(
            None if voice in ("auto", "default") else Path(voice), threads=threads
        )
        phonemizer = EspeakPhonemizer(loaded.config.espeak_voice)
    except ImportError as e:
        if voice != "auto":
            raise RuntimeError(f"cannot load the voice: {e}") from None
        log.warning("sessions have no voice (say/cancel answer no_audio): %s", e)
        return None
    log.info("voice: %s (%s)", loaded.path.name, ", ".join(loaded.providers))

    def factory(params: StartParams) -> PiperSpeech:
        return PiperSpeech(loaded, phonemizer)

    return factory


ConvertSpec = tuple[float, float] | Path  # WORLD (semitones, formant), or a user's ONNX file


def parse_convert(text: str) -> ConvertSpec:
    """ "world", "world:+4", "world:-3:0.9" -> (semitones, formant); "onnx:PATH" -> PATH."""
    kind, _, rest = text.partition(":")
    if kind == "onnx" and rest:
        return Path(rest)
    parts = rest.split(":") if rest else []
    try:
        if kind != "world" or len(parts) > 2:
            raise ValueError
        semitones = float(parts[0]) if parts else ConverterSettings().semitones
        formant = float(parts[1]) if len(parts) > 1 else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(
            "--convert takes world[:SEMITONES[:FORMANT]] (e.g. world:+4:1.1) or onnx:PATH; "
            f"got {text!r}"
        ) from None
    return semitones, formant


def load_converter(spec: ConvertSpec) -> SpeechFactory:
    """A factory of voice converters, each session with its own state; the first is built
    now, so a missing package or a model off the contract fails at startup, not per session."""
    if isinstance(spec, Path):
        from models.audio.onnx_vc import OnnxVoiceConverter

        OnnxVoiceConverter(spec)
        log.info("sessions convert the microphone with %s", spec)

        def onnx_factory(params: StartParams) -> OnnxVoiceConverter:
            return OnnxVoiceConverter(spec)

        return onnx_factory
    from models.audio.dsp_vc import ConverterConfig, WorldVoiceConverter

    semitones, formant = spec
    config = ConverterConfig(semitones=semitones, formant=formant)
    WorldVoiceConverter(config)
    log.info("sessions convert the microphone: %+.1f semitones, formant x%.2f", semitones, formant)

    def factory(params: StartParams) -> WorldVoiceConverter:
        return WorldVoiceConverter(config)

    return factory


async def start_server(
    config: ServerConfig, factory: StreamFactory, speech: SpeechFactory | None = None
) -> ServerHandle:
    """Bind both ports and serve; returns once listening (port 0 -> free ports).

    ``speech`` gives every session a voice (see ``load_voice``); None: video only.
    """
    defaults = config.defaults
    if isinstance(factory, SharedStreamFactory):  # show the model's own defaults in /config
        defaults = defaults.merged(factory.defaults)
    manager = SessionManager(
        factory,
        config.max_sessions,
        defaults=defaults,
        config=config.session,
        speech_factory=speech,
    )
    recorder = None
    if config.record is not None:
        recorder = FirstSessionRecorder(config.record)
        manager.add_open_listener(recorder)
    ws_config = config.ws
    if config.bitrate is not None and ws_config.h264_bitrate is None:
        ws_config = dataclasses.replace(ws_config, h264_bitrate=config.bitrate)
    endpoint = WebSocketEndpoint(manager, ws_config, token=config.token)
    gateway = _load_gateway(config)
    http = HttpApp(config, manager, gateway, endpoint)
    runner = web.AppRunner(http.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    http_port = _bound_port(runner)
    ws_port = (
        config.ws_port if config.ws_port is not None else (config.port + 1 if config.port else 0)
    )
    try:
        ws_server = await endpoint.serve(config.host, ws_port)
    except OSError:
        await runner.cleanup()
        raise
    ws_port = int(ws_server.sockets[0].getsockname()[1])
    http.ws_port = ws_port
    endpoint.page_port = http_port
    log.info(
        "serving http://%s:%d (page, /config, /offer, /metrics) and ws://%s:%d",
        config.host,
        http_port,
        config.host,
        ws_port,
    )
    return ServerHandle(
        config, http_port, ws_port, manager, endpoint, gateway, recorder, runner, ws_server
    )


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError(f"the HTTP server has no TCP address: {runner.addresses}")


class ServerThread:
    """A server on its own event loop thread, for sync code (tests, browsers, benchmarks)."""

    def __init__(
        self, config: ServerConfig, factory: StreamFactory, *, timeout: float = 60
    ) -> None:
        self.config, self.factory, self.timeout = config, factory, timeout
        self.loop = asyncio.new_event_loop()
        self.handle: ServerHandle | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="framecast-server")

    def start(self) -> ServerHandle:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_server(self.config, self.factory), self.loop
        )
        self.handle = future.result(self.timeout)
        return self.handle

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the server's loop (e.g. to read manager state) and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(self.timeout)

    def stop(self) -> None:
        if self.handle is not None:
            asyncio.run_coroutine_threadsafe(self.handle.stop(), self.loop).result(self.timeout)
            self.handle = None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(self.timeout)
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.close()

    def __enter__(self) -> ServerHandle:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_server(
    config: ServerConfig, opts: ModelOptions, pipeline: PipelineConfig | None = None
) -> int:
    """Serve until SIGINT/SIGTERM (the `framecast serve` command); returns an exit code."""

    async def main() -> None:
        log.info("loading %s ...", opts.model or "the default model")
        factory = await asyncio.to_thread(SharedStreamFactory, opts, pipeline)
        speech: SpeechFactory | None
        try:
            if config.convert is not None:
                speech = load_converter(config.convert)
            else:
                speech = await asyncio.to_thread(load_voice, config.voice, config.voice_threads)
        except Exception:
            factory.close()
            raise
        try:
            handle = await start_server(config, factory, speech)
        except OSError as e:  # port in use, address not on this machine, ...
            factory.close()
            raise RuntimeError(f"cannot listen on {config.host}:{config.port}: {e}") from None
        print(
            f"framecast serving {handle.http_url}/ (WebSocket {handle.ws_url}); Ctrl-C stops",
            flush=True,
        )
        stop = asyncio.Event()
        aloop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            aloop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await handle.stop()
            await asyncio.to_thread(factory.close)

    asyncio.run(main())
    return 0


# ---- `framecast serve` ----


def add_serve_arguments(p: argparse.ArgumentParser) -> None:

    d, w = ServerConfig(), WebSocketConfig()
    p.add_argument("--host", default=d.host, help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=d.port, help="HTTP port (page, /offer, /metrics)")
    p.add_argument("--ws-port", type=int, help="WebSocket port (default: --port + 1)")
    p.add_argument(
        "--token",
        default=os.environ.get("FRAMECAST_TOKEN"),
        help="bearer token required by /offer and the WebSocket (default: $FRAMECAST_TOKEN)",
    )
    p.add_argument("--max-sessions", type=int, default=d.max_sessions, help="busy beyond this")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of sessions that give none")
    p.add_argument("--codec", choices=["vp8", "h264"], default=d.webrtc_codec, help="WebRTC video")
    p.add_argument(
        "--bitrate", type=int, help="video bits/s (WebRTC, WebSocket H.264); default by size"
    )
    p.add_argument("--ws-codec", choices=["jpeg", "h264"], default=w.codec, help="WebSocket video")
    p.add_argument(
        "--ice-loopback",
        action="store_true",
        help="ICE host candidates on 127.0.0.1 only (automatic when no other interface is usable)",
    )
    p.add_argument("--ice-server", action="append", default=[], help="stun:/turn: URL (repeatable)")
    p.add_argument(
        "--microphone-buffer",
        type=int,
        help="20 ms frames the server buffers of a WebRTC microphone before converting it "
        "(default: 1, for loopback and LANs; aiortc's own is 4)",
    )
    p.add_argument("--record", type=Path, help="record the first session to this MP4")
    p.add_argument(
        "--voice",
        default=d.voice,
        help="the sessions' voice for say/cancel: auto (the packaged Piper voice if "
        "framecast[tts] is installed), default (that voice or an error), none, or a Piper .onnx",
    )
    p.add_argument(
        "--voice-threads", type=int, default=d.voice_threads, help="ONNX Runtime threads"
    )
    p.add_argument(
        "--convert",
        type=parse_convert,
        metavar="world[:SEMITONES[:FORMANT]]|onnx:PATH",
        help="sessions convert the client's microphone (WebRTC audio or WebSocket audio units) "
        "instead of speaking text: WORLD, e.g. world:+4:1.1, or a user's ONNX converter "
        "(contract in docs/audio.md), e.g. onnx:vc.onnx (default: off)",
    )
    p.add_argument(
        "--ws-audio-codec",
        choices=["pcm16", "opus"],
        default=w.audio_codec,
        help="WebSocket audio payload",
    )
    p.add_argument("--web-root", type=Path, default=d.web_root, help="static files of the page")
    g = p.add_argument_group("pipeline parallelism (docs/parallel.md)")
    g.add_argument(
        "--pipeline",
        type=int,
        default=0,
        metavar="N",
        help="run the generator as an N-stage pipeline of processes (0: in this process)",
    )
    g.add_argument(
        "--pipeline-layers",
        type=parse_layer_ranges,
        help="blocks per stage, e.g. 0-1,2-3 (default: an even split)",
    )
    g.add_argument(
        "--pipeline-backend", choices=["gloo", "nccl"], default="gloo", help="gloo: CPU tensors"
    )
    g.add_argument("--pipeline-threads", type=int, help="torch CPU threads per stage process")
    g.add_argument(
        "--pipeline-timeout",
        type=float,
        default=PipelineConfig().timeout_s,
        help="seconds without a reply before a stage counts as hung",
    )
    add_model_arguments(p)


def parse_layer_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """ "0-1,2-3" -> ((0, 2), (2, 4)): inclusive block ranges per stage (argparse type)."""
    ranges = []
    for piece in text.split(","):
        first, sep, last = piece.strip().partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise argparse.ArgumentTypeError(
                f"--pipeline-layers takes FIRST-LAST block ranges like 0-1,2-3, got {text!r}"
            )
        a = int(first)
        b = int(last) if sep else a
        ranges.append((a, b + 1))
    return tuple(ranges)


def pipeline_config(a: argparse.Namespace) -> PipelineConfig | None:
    if not a.pipeline:
        return None
    return PipelineConfig(
        stages=a.pipeline,
        layers=a.pipeline_layers,
        backend=a.pipeline_backend,
        device="cuda" if a.pipeline_backend == "nccl" else "cpu",
        threads_per_stage=a.pipeline_threads,
        timeout_s=a.pipeline_timeout,
    )


def serve_command(a: argparse.Namespace) -> int:

    config = ServerConfig(
        host=a.host,
        port=a.port,
        ws_port=a.ws_port,
        token=a.token or None,
        max_sessions=a.max_sessions,
        defaults=StartParams(prompt=a.prompt),
        web_root=a.web_root,
        webrtc_codec=a.codec,
        bitrate=a.bitrate,
        ice_loopback=a.ice_loopback,
        ice_servers=tuple(a.ice_server),
        microphone_buffer=a.microphone_buffer,
        ws=WebSocketConfig(codec=a.ws_codec, audio_codec=a.ws_audio_codec),
        record=a.record,
        voice=a.voice,
        voice_threads=a.voice_threads,
        convert=a.convert,
    )
    opts, pipeline = model_options(a), pipeline_config(a)
    if pipeline is not None and int(os.environ.get("RANK", "0")) > 0:
        from engine.parallel.pipeline import serve_stage

        serve_stage(GeneratorSpec(opts), pipeline)  # a torchrun-launched stage
        return 0
    return run_server(config, opts, pipeline)
