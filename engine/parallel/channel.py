"""One message per hop: a header and its tensors packed into one byte buffer.

A gloo or NCCL point-to-point transfer has a fixed cost per message (tens to
hundreds of microseconds on CPU), and a stage that receives a header, then the
latents, then the timesteps pays it three times per forward, on its critical
path. Here a forward's header and tensors travel as one contiguous buffer, and a
stage posts the receive for the next message before it computes the current one,
so the transfer overlaps the compute.

A receiver must post a buffer at least as large as the message (gloo) or exactly
as large (NCCL). Every rank therefore keeps a *slot size* that grows, at the same
point of the op stream on every rank (after a NEW_CACHE op has been passed on),
to fit the largest forward of any stream's cache; with ``exact=True`` (NCCL)
every message is padded to the slot.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.parallel.wire import HEADER_LEN, Header

HEADER_BYTES = HEADER_LEN * 8
MIN_SLOT_BYTES = HEADER_BYTES + 64 * 1024
MAX_INFLIGHT_SENDS = 8


@dataclass(frozen=True)
class Message:
    """A received message: its header and the bytes after it."""

    header: Header
    payload: Tensor  # uint8 [nbytes]; views into it stay valid (each receive has its own buffer)

    def unpack(self, *specs: tuple[tuple[int, ...], torch.dtype]) -> list[Tensor]:
        """Tensors of the given shapes and dtypes, laid out one after another."""
        out, offset = [], 0
        for shape, dtype in specs:
            n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            out.append(self.payload[offset : offset + n].view(dtype).view(shape))
            offset += n
        return out


def payload_bytes(*specs: tuple[tuple[int, ...], torch.dtype]) -> int:
    return sum(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for s, d in specs)


class Channel:
    """Packed sends and prefetched receives on a torch.distributed process group."""

    def __init__(self, group: Any, device: torch.device, *, exact: bool = False) -> None:
        self.group, self.device, self.exact = group, device, exact
        self.slot_bytes = MIN_SLOT_BYTES
        self._sends: deque[tuple[Any, Tensor]] = deque()
        self._prefetched: dict[int, tuple[Any, Tensor]] = {}

    def grow(self, payload: int) -> None:
        """Make room for messages with ``payload`` bytes after the header."""
        self.slot_bytes = max(self.slot_bytes, HEADER_BYTES + payload)

    # ---- sending ----

    def send(self, header: Header, tensors: list[Tensor], dst: int) -> None:
        parts = [header.tensor(self.device).view(torch.uint8)]
        parts += [t.detach().contiguous().view(-1).view(torch.uint8) for t in tensors]
        message = torch.cat(parts)
        if message.numel() > self.slot_bytes:
            raise ValueError(
                f"a {message.numel()}-byte message exceeds the {self.slot_bytes}-byte slot"
            )
        if self.exact and message.numel() < self.slot_bytes:
            message = torch.cat([message, message.new_zeros(self.slot_bytes - message.numel())])
        self._post_send(message, dst)

    def send_tensor(self, tensor: Tensor, dst: int) -> None:
        """An extra exact-size tensor after a message (whose header gave its shape)."""
        self._post_send(tensor.detach().contiguous(), dst)

    def _post_send(self, tensor: Tensor, dst: int) -> None:
        self._sends.append((self.group.send([tensor], dst, 0), tensor))
        while len(self._sends) > MAX_INFLIGHT_SENDS:
            self._sends.popleft()[0].wait()

    def drain(self) -> None:
        while self._sends:
            self._sends.popleft()[0].wait()

    # ---- receiving ----

    def prefetch(self, src: int, nbytes: int | None = None) -> None:
        """Post the receive of the next message from src now (it lands while we compute)."""
        if src not in self._prefetched:
            buf = torch.empty(nbytes or self.slot_bytes, dtype=torch.uint8, device=self.device)
            self._prefetched[src] = (self.group.recv([buf], src, 0), buf)

    def ready(self, src: int) -> bool:
        """Whether the next message from src has already arrived (posts its receive)."""
        self.prefetch(src)
        return bool(self._prefetched[src][0].is_completed())

    def recv(self, src: int, nbytes: int | None = None, timeout: Any = None) -> Message:
        """The next message from src (the prefetched one, if any). ``timeout``: a
        timedelta after which a TimeoutError is raised."""
        self.prefetch(src, nbytes)
        work, buf = self._prefetched.pop(src)
        if timeout is None:
            work.wait()
        elif not work.wait(timeout):
            raise TimeoutError(f"no message from rank {src} in {timeout}")
        header = Header.from_tensor(buf[:HEADER_BYTES].view(torch.int64))
        return Message(header, buf[HEADER_BYTES:])

    def recv_tensor(
        self, shape: tuple[int, ...], src: int, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        t = torch.empty(shape, dtype=dtype, device=self.device)
        self.group.recv([t], src, 0).wait()
        return t
