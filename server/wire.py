"""Batches on the wire without per-request protobuf work on the coordinator.

Outgoing: every request is encoded once as the bytes of one ``items`` entry of its kind's
request message (``LoglikelihoodRequest``, ``LoglikelihoodRollingRequest``,
``GenerateUntilRequest``: field 1, length-delimited), so a batch is one ``bytes.join``.

Incoming: a response (``results`` = field 1, ``cost`` = field 3) is kept as bytes and split by a
Numba scan into its entries; each entry's bytes are exactly the serialized ``TokenScores`` or
``Generation`` the store keeps, so answers are stored without being parsed. The scan also finds
which entries carry an ``ItemError`` (parsed with protobuf, rarely) and checks every entry's
request id against the batch's, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from evalfleet.scoring._cache import use_writable_cache

use_writable_cache()  # the scan's compiled kernels go to the writable kernel cache too

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from evalfleet.common.request_kind import RequestKind  # noqa: E402
from evalfleet.v1 import inference_pb2 as pb  # noqa: E402

#: Each kind's answer message, and the field number of its ``error`` field.
ANSWER_MESSAGE = {RequestKind.LOGLIKELIHOOD: pb.TokenScores,
                  RequestKind.LOGLIKELIHOOD_ROLLING: pb.TokenScores,
                  RequestKind.GENERATE_UNTIL: pb.Generation}
ERROR_FIELD = {kind: message.DESCRIPTOR.fields_by_name["error"].number
               for kind, message in ANSWER_MESSAGE.items()}


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: Varints of 0..16383 (every length of one or two bytes), for the encoders' inner loops.
_SMALL_VARINTS = [_varint(n) for n in range(0x4000)]


def encode_loglikelihood_many(request_ids: list[str], arguments: list[tuple[str, str]]
                              ) -> tuple[list[bytes], np.ndarray]:
    """Requests (ids and (context, continuation) pairs) as ``items`` entries, and which of
    them are encoded with ``same_context`` (their context equals the previous request's, and
    is left out: such an entry is sent only right after its predecessor; see
    ``encode_loglikelihood`` for one alone)."""
    small, slow = _SMALL_VARINTS, _varint
    out = []
    append = out.append
    shared = np.zeros(len(request_ids), dtype=bool)
    last_context = None
    for index, (rid, (context, continuation)) in enumerate(zip(request_ids, arguments,
                                                               strict=True)):
        if context and context == last_context:  # a document's choices: the context once
            shared[index] = True
            context_field, flag = b"", b"\x20\x01"
        else:
            c = context.encode()
            lc = len(c)
            context_field, flag = b"\x12" + (small[lc] if lc < 0x4000 else slow(lc)) + c, b""
            last_context = context
        r, k = rid.encode(), continuation.encode()
        lr, lk = len(r), len(k)
        body = b"".join((b"\x0a", small[lr] if lr < 0x4000 else slow(lr), r, context_field,
                         b"\x1a", small[lk] if lk < 0x4000 else slow(lk), k, flag))
        lb = len(body)
        append(b"\x0a" + (small[lb] if lb < 0x4000 else slow(lb)) + body)
    return out, shared


def _string_field(tag: bytes, text: str) -> bytes:
    data = text.encode()
    return tag + _varint(len(data)) + data


def encode_loglikelihood(request_id: str, context: str, continuation: str) -> bytes:
    """One ``LoglikelihoodRequest.items`` entry."""
    body = (_string_field(b"\x0a", request_id) + _string_field(b"\x12", context)
            + _string_field(b"\x1a", continuation))
    return b"\x0a" + _varint(len(body)) + body


def encode_rolling(request_id: str, text: str) -> bytes:
    """One ``LoglikelihoodRollingRequest.items`` entry."""
    body = _string_field(b"\x0a", request_id) + _string_field(b"\x12", text)
    return b"\x0a" + _varint(len(body)) + body


def encode_generate(request_id: str, context: str, params: pb.GenerationParams | None,
                    chat_messages: bool) -> bytes:
    """One ``GenerateUntilRequest.items`` entry."""
    body = pb.GenerateItem(request_id=request_id, context=context, params=params,
                           chat_messages=chat_messages).SerializeToString()
    return b"\x0a" + _varint(len(body)) + body


@nb.njit(cache=True)
def _read_varint(buf, pos):
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


@nb.njit(cache=True)
def _skip(buf, pos, wire):
    if wire == 0:
        _, pos = _read_varint(buf, pos)
        return pos
    if wire == 1:
        return pos + 8
    if wire == 2:
        length, pos = _read_varint(buf, pos)
        return pos + length
    if wire == 5:
        return pos + 4
    return -1


@nb.njit(cache=True)
def _scan(buf, error_field, expected, expected_off, indices):
    """Entries of a response: (starts, ends, has_error, count, cost_start, cost_end, ok)."""
    n = len(buf)
    cap = len(indices) + 1
    starts = np.empty(cap, np.int64)
    ends = np.empty(cap, np.int64)
    errors = np.zeros(cap, np.bool_)
    count = 0
    cost_start = -1
    cost_end = -1
    pos = 0
    while pos < n:
        key, pos = _read_varint(buf, pos)
        field = key >> 3
        wire = key & 7
        if wire == 2 and (field == 1 or field == 3):
            length, pos = _read_varint(buf, pos)
            end = pos + length
            if end > n:
                return starts, ends, errors, count, cost_start, cost_end, False
            if field == 3:
                cost_start = pos
                cost_end = end
            else:
                if count >= len(indices):
                    return starts, ends, errors, count, cost_start, cost_end, False
                starts[count] = pos
                ends[count] = end
                # Inside the answer: its request id (field 1) and whether it has an error.
                p = pos
                matched = False
                while p < end:
                    k, p = _read_varint(buf, p)
                    f = k >> 3
                    w = k & 7
                    if w == 2 and f == 1:
                        ln, p = _read_varint(buf, p)
                        i = indices[count]
                        a = expected_off[i]
                        b = expected_off[i + 1]
                        if b - a == ln:
                            matched = True
                            for j in range(ln):
                                if buf[p + j] != expected[a + j]:
                                    matched = False
                                    break
                        p += ln
                    else:
                        if w == 2 and f == error_field:
                            errors[count] = True
                        p = _skip(buf, p, w)
                        if p < 0:
                            return starts, ends, errors, count, cost_start, cost_end, False
                if not matched:
                    return starts, ends, errors, count, cost_start, cost_end, False
                count += 1
            pos = end
        else:
            pos = _skip(buf, pos, wire)
            if pos < 0 or pos > n:
                return starts, ends, errors, count, cost_start, cost_end, False
    return starts, ends, errors, count, cost_start, cost_end, count == len(indices)


class ExpectedIds:
    """The request ids of a queue, packed for the scan."""

    def __init__(self, ids: list[str]) -> None:
        joined = "".join(ids)
        if joined.isascii():  # a character is a byte: one encode for all
            encoded, sized = joined.encode(), ids
        else:
            sized = [i.encode() for i in ids]
            encoded = b"".join(sized)
        self.buffer = np.frombuffer(encoded or b"\0", dtype=np.uint8)
        lengths = np.fromiter(map(len, sized), dtype=np.int64, count=len(ids))
        self.offsets = np.concatenate(([0], np.cumsum(lengths)))


@dataclass
class SplitResponse:
    """A response split into entries: answers as spans of the raw bytes, errors parsed."""

    answered: np.ndarray  # positions in the batch (int64)
    raw: bytes
    starts: np.ndarray  # answer i is raw[starts[i]:ends[i]]
    ends: np.ndarray
    errors: list[tuple[int, pb.ItemError]]  # (position in the batch, error)
    cost: pb.BatchCost

    @property
    def answers(self) -> list[bytes]:
        """The answers as stored bytes (one object each)."""
        raw = self.raw
        return [raw[a:b] for a, b in zip(self.starts.tolist(), self.ends.tolist(), strict=True)]


class MalformedResponseError(ValueError):
    """The worker's answers do not match the batch (count, order or ids)."""


def compile_kernels() -> None:
    """Compile (or load from the cache) the response scan, as ``split_response`` calls it."""
    split_response(b"", RequestKind.LOGLIKELIHOOD, ExpectedIds([]), np.zeros(0, dtype=np.int64))


def split_response(raw: bytes, kind: RequestKind, expected: ExpectedIds,
                   indices: np.ndarray) -> SplitResponse:
    """Split a raw response to a batch of ``indices`` (into ``expected``)."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    starts, ends, errors, count, cost_start, cost_end, ok = _scan(
        buf, ERROR_FIELD[kind], expected.buffer, expected.offsets, indices)
    if not ok:
        raise MalformedResponseError(
            f"answered {count} of {len(indices)} requests in order, then a missing, extra or "
            "mismatched answer")
    cost = pb.BatchCost.FromString(raw[cost_start:cost_end]) if cost_start >= 0 \
        else pb.BatchCost()
    starts, ends, errors = starts[:count], ends[:count], errors[:count]
    if not errors.any():
        return SplitResponse(np.arange(count), raw, starts, ends, [], cost)
    message = ANSWER_MESSAGE[kind]
    failed = [(j, message.FromString(raw[starts[j]:ends[j]]).error)
              for j in np.flatnonzero(errors).tolist()]
    ok = ~errors
    return SplitResponse(np.flatnonzero(ok), raw, starts[ok], ends[ok], failed, cost)
