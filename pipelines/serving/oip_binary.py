"""The binary tensor extension of the Open Inference Protocol's HTTP API (KServe V2, as Triton's clients send it).

A request with binary tensors is a JSON header followed by the tensors' raw bytes; the header's length is in the
HTTP header ``Inference-Header-Content-Length``. An input sent that way has ``"parameters": {"binary_data_size":
N}`` instead of ``data``, and its N bytes follow the header in the order of the inputs: little-endian values of
its datatype, row-major (BOOL one byte each), or, for BYTES, each element as a 4-byte little-endian length and
its bytes (UTF-8 text here). A client asks for binary outputs with ``"parameters": {"binary_data": true}`` on a
requested output, or ``"binary_data_output": true`` in the request's parameters (for every output it does not
name otherwise); the answer is then laid out the same way.

This module only moves bytes: :func:`decode_inputs` turns binary inputs into the JSON form (``data`` lists) that
the service checks as it checks any other request, so both forms are held to the same rules.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "inference-header-content-length"

# the fixed-width datatypes of the protocol and their little-endian numpy types
FIXED: dict[str, str] = {
    "BOOL": "u1",  # one byte, 0 or 1
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES = (*FIXED, "BYTES")
_LENGTH = struct.Struct("<I")


class BinaryTensorError(ValueError):
    """A binary request that cannot be read: ``loc`` is where in the request (as FastAPI's errors give it), the
    message says what is wrong and names the input."""

    def __init__(self, loc: Sequence[Any], message: str) -> None:
        super().__init__(message)
        self.loc, self.message = list(loc), message


class TooManyElements(ValueError):
    """An input with more elements than a request may carry (checked before any of them is decoded)."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(count, limit)
        self.count, self.limit = count, limit


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(the JSON header, the binary part) of a body whose JSON header is ``header_length`` bytes long (the value
    of ``Inference-Header-Content-Length``; None: the whole body is JSON)."""
    if header_length is None:
        return raw, memoryview(b"")
    where = ("header", "Inference-Header-Content-Length")
    text = header_length.strip()
    if not text.isdigit() or not 0 < int(text) <= len(raw):
        raise BinaryTensorError(
            where, f"{header_length!r} is not a length between 1 and the body's {len(raw)} bytes"
        )
    length = int(text)
    return raw[:length], memoryview(raw)[length:]


def has_binary_inputs(body: Any) -> bool:
    """Whether a request's JSON header declares an input sent as binary data."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    return isinstance(inputs, list) and any(
        isinstance(item, dict)
        and isinstance(item.get("parameters"), dict)
        and "binary_data_size" in item["parameters"]
        for item in inputs
    )


def decode_inputs(body: Any, binary: memoryview, max_elements: int | None = None) -> None:
    """Give every binary input of ``body`` (a request's JSON header) its values as a ``data`` list, read from
    ``binary`` (the bytes after the header) in the order of the inputs; inputs with ``data`` are left as they are.

    Raises :class:`BinaryTensorError` naming the input for an unknown datatype, a missing or bad shape or size,
    sizes that do not add up to the binary part, and text that is not UTF-8; :class:`TooManyElements` when an
    input's shape has more than ``max_elements`` elements.
    """
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list):
        if len(binary):
            raise BinaryTensorError(["body", "inputs"], "binary data was sent but no input declares it")
        return
    offset = 0
    for index, item in enumerate(inputs):
        parameters = item.get("parameters") if isinstance(item, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        where = ["body", "inputs", index]
        name = item.get("name")
        label = f"input {name!r}" if isinstance(name, str) else f"input {index}"
        size = parameters["binary_data_size"]
        if type(size) is not int or size < 0:
            raise BinaryTensorError(
                [*where, "parameters", "binary_data_size"], f"{label}: binary_data_size must be a byte count"
            )
        if "data" in item:
            raise BinaryTensorError([*where, "data"], f"{label}: give data or binary_data_size, not both")
        datatype = item.get("datatype")
        if datatype not in DATATYPES:
            raise BinaryTensorError(
                [*where, "datatype"],
                f"{label}: unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})",
            )
        count = _element_count(item.get("shape"), [*where, "shape"], label)
        if max_elements is not None and count > max_elements:
            raise TooManyElements(count, max_elements)
        if offset + size > len(binary):
            raise BinaryTensorError(
                [*where, "parameters", "binary_data_size"],
                f"{label}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes of binary data left after the JSON header, whose length "
                "Inference-Header-Content-Length gives)",
            )
        chunk = binary[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            item["data"] = _strings(chunk, count, [*where, "parameters", "binary_data_size"], label)
        else:
            item["data"] = _fixed(chunk, datatype, count, where, label)
    if offset != len(binary):
        raise BinaryTensorError(
            ["body", "inputs"],
            f"the inputs declare {offset} bytes of binary data, the body has {len(binary)} after its JSON header",
        )


def _element_count(shape: Any, where: list[Any], label: str) -> int:
    if (
        not isinstance(shape, list)
        or not shape
        or not all(type(n) is int and n >= 0 for n in shape)  # bool is not a dimension
    ):
        raise BinaryTensorError(
            where, f"{label}: a binary input needs its shape (a list of sizes), got {shape!r}"
        )
    count = 1
    for n in shape:
        count *= n
    return count


def _fixed(chunk: memoryview, datatype: str, count: int, where: list[Any], label: str) -> list[Any]:
    dtype = np.dtype(FIXED[datatype])
    if len(chunk) != count * dtype.itemsize:
        raise BinaryTensorError(
            [*where, "parameters", "binary_data_size"],
            f"{label}: {count} {datatype} values take {count * dtype.itemsize} bytes, "
            f"binary_data_size is {len(chunk)}",
        )
    values = np.frombuffer(chunk, dtype=dtype)
    if datatype == "BOOL":
        if count and values.max() > 1:
            raise BinaryTensorError([*where, "data"], f"{label}: a BOOL byte is 0 or 1")
        return values.astype(bool).tolist()
    return values.tolist()


def _strings(chunk: memoryview, count: int, where: list[Any], label: str) -> list[str]:
    """``count`` length-prefixed UTF-8 strings filling ``chunk`` exactly."""
    if count * _LENGTH.size > len(chunk):
        raise BinaryTensorError(
            where,
            f"{label}: {count} BYTES elements need at least {count * 4} bytes, binary_data_size is {len(chunk)}",
        )
    data = chunk.tobytes()
    out: list[str] = []
    position = 0
    unpack = _LENGTH.unpack_from
    for element in range(count):
        if position + 4 > len(data):
            raise BinaryTensorError(
                where, f"{label}: element {element} runs past binary_data_size {len(data)}"
            )
        (length,) = unpack(data, position)
        start, position = position + 4, position + 4 + length
        if position > len(data):
            raise BinaryTensorError(
                where, f"{label}: element {element} runs past binary_data_size {len(data)}"
            )
        try:
            out.append(data[start:position].decode())
        except UnicodeDecodeError:
            raise BinaryTensorError(
                [*where[:-2], "data", element], f"{label}: element {element} is not UTF-8 text"
            ) from None
    if position != len(data):
        raise BinaryTensorError(
            where, f"{label}: {count} BYTES elements take {position} bytes, binary_data_size is {len(data)}"
        )
    return out


@dataclass(frozen=True)
class Output:
    """One output of an answer: its name, datatype and values (a numpy array of one dimension)."""

    name: str
    datatype: str
    values: Any


def requested_outputs(body: Any, available: Sequence[str]) -> dict[str, bool] | None:
    """The outputs a request asks for, each with whether it wants it as binary data, in the request's order;
    None when it names none (then every output, binary when ``parameters.binary_data_output`` is true).

    Raises :class:`BinaryTensorError` for an output that is not one of ``available`` or a malformed entry."""
    parameters = body.get("parameters") if isinstance(body, dict) else None
    default = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    outputs = body.get("outputs") if isinstance(body, dict) else None
    if outputs is None or outputs == []:
        return {name: default for name in available} if default else None
    if not isinstance(outputs, list):
        raise BinaryTensorError(["body", "outputs"], "outputs must be a list of {name, parameters}")
    wanted: dict[str, bool] = {}
    for index, item in enumerate(outputs):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in available:
            raise BinaryTensorError(
                ["body", "outputs", index, "name"],
                f"{name!r} is not an output of this model (one of {', '.join(available)})",
            )
        options = item.get("parameters") or {}
        binary = options.get("binary_data", default) if isinstance(options, dict) else None
        if type(binary) is not bool:
            raise BinaryTensorError(
                ["body", "outputs", index, "parameters"],
                f"output {name!r}: binary_data must be true or false",
            )
        wanted[name] = binary
    return wanted


def encode_outputs(outputs: Sequence[Output], binary: dict[str, bool]) -> tuple[list[dict[str, Any]], bytes]:
    """(the outputs' JSON entries, the bytes that follow the JSON header): an output marked binary in ``binary``
    has ``parameters.binary_data_size`` and its little-endian bytes, the others their ``data``."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "shape": [len(output.values)],
            "datatype": output.datatype,
        }
        if binary.get(output.name):
            raw = np.ascontiguousarray(output.values, dtype=FIXED[output.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = output.values.tolist()
        entries.append(entry)
    return entries, b"".join(chunks)
