#!/usr/bin/env python3
"""Read a resultstore record with nothing but the Python standard library.

    python tools/read_record.py PATH [--out FILE] [--signing-key KEY --storage-key KEY]

Parses the record as docs/format.md specifies it, verifies the header hash
(xxh3-64), the payload length and checksum (xxh3-128) and, when the header
has one, the payload's SHA-256; with ``--signing-key`` and ``--storage-key``
it also verifies an ``hmac-sha256-v3`` signature. It then prints the metadata
and, for ``json`` records (plain or compressed with lzma, bz2 or zlib), the
value as JSON: tagged values (``{"$type": "tuple", ...}``) are shown as the
JSON they are. A record whose value is a ``bytes`` tag is written raw with
``--out FILE``. For ``npy`` records it prints the array's dtype and shape, and
``--out FILE.npy`` writes a .npy file (which ``numpy.load`` reads); for
``arrow`` records, ``--out FILE.arrow`` writes the Arrow IPC file. Pickle
records are never decoded (unpickling runs code); ``--out`` saves their
payload bytes.

xxh3 is not in the standard library, so it is implemented below (64- and
128-bit, seed 0, the default secret); it hashes about 25 MB/s, so verifying a
record of hundreds of MB takes minutes. Exit status: 0 on success, 1 if the
record is damaged or its signature does not verify, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import ast
import base64
import bz2
import hashlib
import hmac
import json
import lzma
import struct
import sys
import zlib
from typing import Any

M64 = (1 << 64) - 1
P32_1, P32_2, P32_3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
P64_1, P64_2, P64_3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
P64_4, P64_5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5
PMX1, PMX2 = 0x165667919E3779F9, 0x9FB21C651E98DF25
SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
STRIPE, ACCS, RATE = 64, 8, 8
STRIPES_PER_BLOCK = (len(SECRET) - STRIPE) // RATE
BLOCK = STRIPE * STRIPES_PER_BLOCK


def r32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "little")


def r64(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 8], "little")


def swap32(x: int) -> int:
    return int.from_bytes(x.to_bytes(4, "little"), "big")


def swap64(x: int) -> int:
    return int.from_bytes(x.to_bytes(8, "little"), "big")


def rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def fold(a: int, b: int) -> int:
    product = a * b
    return (product ^ (product >> 64)) & M64


def xxh64_avalanche(h: int) -> int:
    h = ((h ^ (h >> 33)) * P64_2) & M64
    h = ((h ^ (h >> 29)) * P64_3) & M64
    return h ^ (h >> 32)


def avalanche(h: int) -> int:
    h = ((h ^ (h >> 37)) * PMX1) & M64
    return h ^ (h >> 32)


def rrmxmx(h: int, length: int) -> int:
    h ^= rotl64(h, 49) ^ rotl64(h, 24)
    h = (h * PMX2) & M64
    h ^= (h >> 35) + length
    h = (h * PMX2) & M64
    return h ^ (h >> 28)


def mix16(data: bytes, at: int, s: int) -> int:
    return fold(r64(data, at) ^ r64(SECRET, s), r64(data, at + 8) ^ r64(SECRET, s + 8))


def long_accumulators(data: bytes) -> list[int]:
    """The eight accumulators after every stripe of an input longer than 240 bytes."""
    acc = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1]
    keys = [struct.unpack_from("<8Q", SECRET, s * RATE) for s in range(STRIPES_PER_BLOCK)]
    last_key = struct.unpack_from("<8Q", SECRET, len(SECRET) - STRIPE - 7)
    scramble = struct.unpack_from("<8Q", SECRET, len(SECRET) - STRIPE)

    def stripe(at: int, key: tuple[int, ...]) -> None:
        lanes = struct.unpack_from("<8Q", data, at)
        for i in range(ACCS):
            value = lanes[i]
            keyed = value ^ key[i]
            acc[i ^ 1] = (acc[i ^ 1] + value) & M64
            acc[i] = (acc[i] + (keyed & 0xFFFFFFFF) * (keyed >> 32)) & M64

    length = len(data)
    blocks = (length - 1) // BLOCK
    for n in range(blocks):
        for s in range(STRIPES_PER_BLOCK):
            stripe(n * BLOCK + s * STRIPE, keys[s])
        for i in range(ACCS):
            a = acc[i]
            acc[i] = (((a ^ (a >> 47)) ^ scramble[i]) * P32_1) & M64
    for s in range(((length - 1) - BLOCK * blocks) // STRIPE):
        stripe(blocks * BLOCK + s * STRIPE, keys[s])
    stripe(length - STRIPE, last_key)
    return acc


def merge(acc: list[int], s: int, start: int) -> int:
    result = start
    for i in range(4):
        result += fold(
            acc[2 * i] ^ r64(SECRET, s + 16 * i), acc[2 * i + 1] ^ r64(SECRET, s + 16 * i + 8)
        )
    return avalanche(result & M64)


def xxh3_64(data: bytes) -> int:
    """XXH3-64 of ``data`` (seed 0, default secret), as xxhash.xxh3_64_intdigest gives it."""
    n = len(data)
    if n == 0:
        return xxh64_avalanche(r64(SECRET, 56) ^ r64(SECRET, 64))
    if n <= 3:
        combined = (data[0] << 16) | (data[n >> 1] << 24) | data[n - 1] | (n << 8)
        return xxh64_avalanche(combined ^ (r32(SECRET, 0) ^ r32(SECRET, 4)))
    if n <= 8:
        keyed = (r32(data, n - 4) + (r32(data, 0) << 32)) ^ (r64(SECRET, 8) ^ r64(SECRET, 16))
        return rrmxmx(keyed, n)
    if n <= 16:
        lo = r64(data, 0) ^ (r64(SECRET, 24) ^ r64(SECRET, 32))
        hi = r64(data, n - 8) ^ (r64(SECRET, 40) ^ r64(SECRET, 48))
        return avalanche((n + swap64(lo) + hi + fold(lo, hi)) & M64)
    if n <= 128:
        acc = n * P64_1
        if n > 32:
            if n > 64:
                if n > 96:
                    acc += mix16(data, 48, 96) + mix16(data, n - 64, 112)
                acc += mix16(data, 32, 64) + mix16(data, n - 48, 80)
            acc += mix16(data, 16, 32) + mix16(data, n - 32, 48)
        acc += mix16(data, 0, 0) + mix16(data, n - 16, 16)
        return avalanche(acc & M64)
    if n <= 240:
        acc = n * P64_1
        for i in range(8):
            acc += mix16(data, 16 * i, 16 * i)
        acc = avalanche(acc & M64)
        for i in range(8, n // 16):
            acc += mix16(data, 16 * i, 16 * (i - 8) + 3)
        acc += mix16(data, n - 16, 136 - 17)
        return avalanche(acc & M64)
    return merge(long_accumulators(data), 11, (n * P64_1) & M64)


def mix32(lo: int, hi: int, data: bytes, a: int, b: int, s: int) -> tuple[int, int]:
    lo = (lo + mix16(data, a, s)) & M64
    lo ^= (r64(data, b) + r64(data, b + 8)) & M64
    hi = (hi + mix16(data, b, s + 16)) & M64
    hi ^= (r64(data, a) + r64(data, a + 8)) & M64
    return lo, hi


def xxh3_128(data: bytes) -> int:
    """XXH3-128 of ``data`` (seed 0, default secret), as xxhash.xxh3_128_intdigest gives it."""
    n = len(data)
    if n == 0:
        lo = xxh64_avalanche(r64(SECRET, 64) ^ r64(SECRET, 72))
        hi = xxh64_avalanche(r64(SECRET, 80) ^ r64(SECRET, 88))
    elif n <= 3:
        combined = (data[0] << 16) | (data[n >> 1] << 24) | data[n - 1] | (n << 8)
        high = ((swap32(combined) << 13) | (swap32(combined) >> 19)) & 0xFFFFFFFF
        lo = xxh64_avalanche(combined ^ (r32(SECRET, 0) ^ r32(SECRET, 4)))
        hi = xxh64_avalanche(high ^ (r32(SECRET, 8) ^ r32(SECRET, 12)))
    elif n <= 8:
        keyed = (r32(data, 0) + (r32(data, n - 4) << 32)) ^ (r64(SECRET, 16) ^ r64(SECRET, 24))
        product = keyed * ((P64_1 + (n << 2)) & M64)
        lo, hi = product & M64, product >> 64
        hi = (hi + (lo << 1)) & M64
        lo ^= hi >> 3
        lo ^= lo >> 35
        lo = (lo * PMX2) & M64
        lo ^= lo >> 28
        hi = avalanche(hi)
    elif n <= 16:
        flip_lo = r64(SECRET, 32) ^ r64(SECRET, 40)
        flip_hi = r64(SECRET, 48) ^ r64(SECRET, 56)
        in_lo, in_hi = r64(data, 0), r64(data, n - 8)
        product = (in_lo ^ in_hi ^ flip_lo) * P64_1
        lo, hi = product & M64, product >> 64
        lo = (lo + ((n - 1) << 54)) & M64
        in_hi ^= flip_hi
        hi = (hi + in_hi + (in_hi & 0xFFFFFFFF) * (P32_2 - 1)) & M64
        lo ^= swap64(hi)
        product = lo * P64_2
        lo, top = product & M64, product >> 64
        hi = (top + hi * P64_2) & M64
        lo, hi = avalanche(lo), avalanche(hi)
    elif n <= 240:
        lo, hi = (n * P64_1) & M64, 0
        if n <= 128:
            if n > 32:
                if n > 64:
                    if n > 96:
                        lo, hi = mix32(lo, hi, data, 48, n - 64, 96)
                    lo, hi = mix32(lo, hi, data, 32, n - 48, 64)
                lo, hi = mix32(lo, hi, data, 16, n - 32, 32)
            lo, hi = mix32(lo, hi, data, 0, n - 16, 0)
        else:
            for i in range(4):
                lo, hi = mix32(lo, hi, data, 32 * i, 32 * i + 16, 32 * i)
            lo, hi = avalanche(lo), avalanche(hi)
            for i in range(4, n // 32):
                lo, hi = mix32(lo, hi, data, 32 * i, 32 * i + 16, 3 + 32 * (i - 4))
            lo, hi = mix32(lo, hi, data, n - 16, n - 32, 136 - 17 - 16)
        total_lo = (lo + hi) & M64
        total_hi = (lo * P64_1 + hi * P64_4 + n * P64_2) & M64
        lo, hi = avalanche(total_lo), (-avalanche(total_hi)) & M64
    else:
        acc = long_accumulators(data)
        lo = merge(acc, 11, (n * P64_1) & M64)
        hi = merge(acc, len(SECRET) - STRIPE - 11, ~(n * P64_2) & M64)
    return (hi << 64) | lo


# -- the record -----------------------------------------------------------------------

PREFIX = struct.Struct("<4sHIQ")
MAGIC, VERSION = b"RSTR", 1


class Damaged(Exception):
    """The record fails a check; the message says which."""


def parse(raw: bytes) -> tuple[dict[str, Any], bytes, list[bytes]]:
    """The header fields, the exact header bytes and the payload segments, all verified."""
    if len(raw) < PREFIX.size:
        raise Damaged(f"only {len(raw)} bytes: shorter than the {PREFIX.size}-byte prefix")
    magic, version, header_len, header_hash = PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise Damaged(f"bad magic {magic!r}: not a resultstore record")
    if version != VERSION:
        raise Damaged(f"format version {version}; this tool reads version {VERSION}")
    header = raw[PREFIX.size : PREFIX.size + header_len]
    if len(header) != header_len:
        raise Damaged("truncated inside the header")
    if xxh3_64(header) != header_hash:
        raise Damaged("header hash (xxh3-64) mismatch")
    fields = json.loads(header)
    lengths = fields["segments"]
    payload = raw[PREFIX.size + header_len :]
    if sum(lengths) != len(payload):
        raise Damaged(
            f"the header claims {sum(lengths)} payload bytes, the file holds {len(payload)}"
        )
    algorithm, _, digest = fields["checksum"].partition(":")
    if algorithm != "xxh3_128":
        raise Damaged(f"unknown checksum algorithm {algorithm!r}")
    if f"{xxh3_128(payload):032x}" != digest:
        raise Damaged("payload checksum (xxh3-128) mismatch")
    if "sha256" in fields and fields["sha256"] != "sha256:" + hashlib.sha256(payload).hexdigest():
        raise Damaged("payload SHA-256 does not match the header's")
    segments, at = [], 0
    for length in lengths:
        segments.append(payload[at : at + length])
        at += length
    return fields, header, segments


def verify_signature(
    fields: dict[str, Any], segments: list[bytes], secret: bytes, key: str
) -> bool:
    """True when the record's signature was made with ``secret`` for storage key ``key``."""
    signature = fields.get("signature")
    if not isinstance(signature, str):
        return False
    unsigned = {k: v for k, v in fields.items() if k != "signature"}
    signed = json.dumps(unsigned, separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (key.encode(), signed):
        mac.update(len(part).to_bytes(8, "little"))
        mac.update(part)
    algorithm = signature.partition(":")[0]
    if algorithm == "hmac-sha256-v2":
        for segment in segments:
            mac.update(segment)
    elif algorithm != "hmac-sha256-v3":
        return False
    return hmac.compare_digest(f"{algorithm}:{mac.hexdigest()}", signature)


def inflate(lib: str, data: bytes) -> bytes:
    if lib == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
        except ImportError:
            raise Damaged("zstd is not in this Python's standard library (3.14 has it)") from None
        return bytes(zstd.decompress(data))
    (declared,) = struct.unpack_from("<Q", data)
    stream = data[8:]
    decompressor: Any = {
        "lzma": lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=72 << 20),
        "bz2": bz2.BZ2Decompressor,
        "zlib": zlib.decompressobj,
    }[lib]()
    text = decompressor.decompress(stream, declared + 1)
    if len(text) != declared:
        raise Damaged(
            f"the {lib} stream inflates to {len(text)} bytes, not the {declared} declared"
        )
    return bytes(text)


def npy_header(data: bytes) -> dict[str, Any]:
    """The dict of an npy header segment, read as a literal (no code runs)."""
    if data[:6] != b"\x93NUMPY":
        raise Damaged("the npy header segment does not start with the npy magic")
    major = data[6]
    start = 10 if major == 1 else 12
    (length,) = struct.unpack_from("<H" if major == 1 else "<I", data, 8)
    if start + length != len(data):
        raise Damaged("the npy header's length does not match its segment")
    fields = ast.literal_eval(data[start:].decode("utf-8" if major == 3 else "latin-1"))
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise Damaged("the npy header is not a dict of descr, fortran_order and shape")
    return fields


def save_open_format(
    serializer: str, segments: list[bytes], payload: bytes, path: str, out: str | None
) -> int:
    """Describe an npy or arrow record; with ``out``, save it as a .npy or .arrow file.

    An npy record's payload is a .npy file as it stands (header segment, then the
    array's bytes); an arrow record's is an Arrow IPC file.
    """
    try:
        if serializer == "npy":
            if len(segments) != 2:
                raise Damaged(f"an npy record has 2 segments, this one {len(segments)}")
            fields = npy_header(segments[0])
            shape = fields["shape"]
            count = 1
            for n in shape:
                count *= n
            described: dict[str, Any] = {
                "dtype": str(fields["descr"]),
                "shape": list(shape),
                "fortran_order": fields["fortran_order"],
                "data_bytes": len(segments[1]),
                "elements": count,
            }
        else:
            if payload[:6] != b"ARROW1" or payload[-6:] != b"ARROW1":
                raise Damaged("an arrow record's payload is not an Arrow IPC file")
            described = {"format": "Arrow IPC file", "bytes": len(payload)}
    except (Damaged, ValueError, SyntaxError, struct.error) as exc:
        print(f"{path}: damaged: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({serializer: described}, indent=2))
    if out:
        with open(out, "wb") as file:
            file.write(payload)
        kind = ".npy file (numpy.load reads it)" if serializer == "npy" else "Arrow IPC file"
        print(f"# {kind}, {len(payload)} bytes, written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the record file")
    parser.add_argument(
        "--out", help="write the value's bytes (a bytes value, or the raw payload) here"
    )
    parser.add_argument("--signing-key", help="verify the signature with this key (text)")
    parser.add_argument(
        "--storage-key", help="the key the record is stored under (for --signing-key)"
    )
    args = parser.parse_args(argv)
    if bool(args.signing_key) != bool(args.storage_key):
        parser.error("--signing-key and --storage-key go together")
    with open(args.path, "rb") as file:
        raw = file.read()
    try:
        fields, _, segments = parse(raw)
        if args.signing_key and not verify_signature(
            fields, segments, args.signing_key.encode(), args.storage_key
        ):
            raise Damaged("the signature does not verify with this key for this storage key")
    except (Damaged, ValueError, KeyError, TypeError) as exc:
        print(f"{args.path}: damaged: {exc}", file=sys.stderr)
        return 1
    serializer = fields["serializer"]
    metadata = {k: v for k, v in fields.items() if k != "signature"}
    metadata["signed"] = "signature" in fields
    metadata["size"] = sum(fields["segments"])
    print(json.dumps({"metadata": metadata}, indent=2))
    payload = b"".join(segments)
    if serializer in ("npy", "arrow"):
        return save_open_format(serializer, segments, payload, args.path, args.out)
    base, _, lib = serializer.partition("+")
    if base != "json":
        print(f"# {serializer} records are not decoded here (unpickling runs code)")
        if args.out:
            with open(args.out, "wb") as out:
                out.write(payload)
            print(f"# payload ({len(payload)} bytes) written to {args.out}")
        return 0
    try:
        text = inflate(lib, payload) if lib else payload
    except Damaged as exc:
        print(f"{args.path}: {exc}", file=sys.stderr)
        return 1
    value = json.loads(text)
    print(json.dumps({"value": value}, indent=2, ensure_ascii=False))
    if args.out:
        if not (isinstance(value, dict) and value.get("$type") in ("bytes", "bytearray")):
            parser.error("--out needs a record whose value is bytes")
        data = base64.b64decode(value["base64"], validate=True)
        with open(args.out, "wb") as out:
            out.write(data)
        print(f"# {len(data)} bytes written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
