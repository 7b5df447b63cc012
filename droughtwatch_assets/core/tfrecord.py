"""Read and write Drought Watch TFRecord shards (serialized tf.train.Example) without TensorFlow.

Decoding checks the framing and both CRCs of every record, then parses all records into one
preallocated (n, 11, 65, 65) uint8 stack (laid out band by band, see `empty_stack`); any bad
record fails the whole shard.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

BANDS: tuple[str, ...] = tuple(f"B{i}" for i in range(1, 12))
IMAGE_SIDE = 65
BAND_BYTES = IMAGE_SIDE * IMAGE_SIDE
UNLABELLED = -1
LABEL_FEATURE = "label"
ID_FEATURE = "filename"
NUM_CLASSES = 4

_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class ShardFormatError(ValueError):
    """Bad shard; names the shard and, where known, the record index."""

    def __init__(self, shard: str, reason: str, record: int | None = None) -> None:
        self.shard = shard
        self.reason = reason
        self.record = record
        where = f"shard {shard!r}" if record is None else f"shard {shard!r}, record {record}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[type[ShardFormatError], tuple[str, str, int | None]]:
        # The default reduce would call cls(message) and lose shard/record across processes.
        return (type(self), (self.shard, self.reason, self.record))


def empty_stack(n: int) -> np.ndarray:
    """An uninitialised (n, 11, 65, 65) uint8 image stack, laid out band by band.

    It is a transposed view of an (11, n, 65, 65) array: indexing and arithmetic see the usual
    (image, band, y, x) order, while each band of all images is one contiguous block. That is
    the shape the work takes after decoding: the lake stores one column per band, the indices
    read four bands, the cloud test three, so none of them copies or gathers strided bytes.
    """
    return np.empty((len(BANDS), n, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8).transpose(1, 0, 2, 3)


def select_images(images: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`images[keep]` (a boolean mask or indices over images) that keeps a band-by-band layout."""
    by_band = images.transpose(1, 0, 2, 3)
    if not by_band.flags.c_contiguous:
        return images[keep]
    keep = np.asarray(keep)
    if keep.dtype == bool and keep.shape != images.shape[:1]:
        raise IndexError(f"mask of shape {keep.shape} for {images.shape[0]} images")
    index = np.flatnonzero(keep) if keep.dtype == bool else keep
    # np.take writes a fresh C-order (11, k, 65, 65) array; by_band[:, keep] would not.
    return np.take(by_band, index, axis=1).transpose(1, 0, 2, 3)


@dataclass(frozen=True)
class DecodedShard:
    """All records of one shard, in file order."""

    images: np.ndarray  # (n, 11, 65, 65) uint8 from empty_stack, band order B1..B11
    labels: np.ndarray  # (n,) int8, UNLABELLED where the record has no label
    ids: np.ndarray  # (n,) unicode: the filename feature, or f"{shard}#{index}"

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _build_message_classes() -> dict[str, type]:
    """tensorflow/core/example/{example,feature}.proto rebuilt in code, same field numbers."""
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        # A private pool and a file name of our own: TensorFlow registering the real
        # tensorflow.Example in the default pool in the same process cannot clash with this.
        name="droughtwatch/tf_example.proto",
        package="tensorflow",
        syntax="proto3",
    )

    def add_message(name: str, fields: list[tuple[str, int, int, int, str | None]]):
        msg = proto.message_type.add(name=name)
        for field_name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
        return msg

    rep, opt = f.LABEL_REPEATED, f.LABEL_OPTIONAL
    add_message("BytesList", [("value", 1, f.TYPE_BYTES, rep, None)])
    float_list = add_message("FloatList", [("value", 1, f.TYPE_FLOAT, rep, None)])
    float_list.field[0].options.packed = True
    int64_list = add_message("Int64List", [("value", 1, f.TYPE_INT64, rep, None)])
    int64_list.field[0].options.packed = True
    feature = add_message(
        "Feature",
        [
            ("bytes_list", 1, f.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
            ("float_list", 2, f.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
            ("int64_list", 3, f.TYPE_MESSAGE, opt, ".tensorflow.Int64List"),
        ],
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = add_message(
        "Features", [("feature", 1, f.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry")]
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=opt)
    entry.field.add(
        name="value", number=2, type=f.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature"
    )
    entry.options.map_entry = True
    add_message("Example", [("features", 1, f.TYPE_MESSAGE, opt, ".tensorflow.Features")])

    pool = descriptor_pool.DescriptorPool()
    file_desc = pool.Add(proto) or pool.FindFileByName(proto.name)
    return {
        name: message_factory.GetMessageClass(file_desc.message_types_by_name[name])
        for name in ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")
    }


_MESSAGES = _build_message_classes()
Example = _MESSAGES["Example"]
Features = _MESSAGES["Features"]
Feature = _MESSAGES["Feature"]
BytesList = _MESSAGES["BytesList"]
FloatList = _MESSAGES["FloatList"]
Int64List = _MESSAGES["Int64List"]


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    # google_crc32c only accepts bytes; one copy of a few-MB shard is cheaper than per-slice ones.
    return data if isinstance(data, bytes) else bytes(data)


def _record_frames(buf: bytes, shard: str) -> Iterator[tuple[int, int, int]]:
    """Yield (start, end, stored payload crc) of each record after checking its header.

    The payload crc itself is checked by _checked_payload, just before the payload is used.
    """
    end = len(buf)
    pos = 0
    index = 0
    while pos < end:
        left = end - pos
        if left < _HEADER.size:
            raise ShardFormatError(
                shard, f"truncated header: {left} bytes left, need {_HEADER.size}", index
            )
        length, length_crc = _HEADER.unpack_from(buf, pos)
        if _masked_crc(buf[pos : pos + 8]) != length_crc:
            if index == 0:
                raise ShardFormatError(
                    shard,
                    "not a TFRecord file: crc of the first record's length does not match",
                    index,
                )
            raise ShardFormatError(shard, "length crc mismatch in the record header", index)
        pos += _HEADER.size
        left = end - pos
        if length > left:
            raise ShardFormatError(
                shard,
                f"truncated payload: record length {length} exceeds the {left} bytes left",
                index,
            )
        if length + _CRC.size > left:
            raise ShardFormatError(
                shard,
                f"truncated payload crc: {left - length} of {_CRC.size} bytes present",
                index,
            )
        (payload_crc,) = _CRC.unpack_from(buf, pos + length)
        yield pos, pos + length, payload_crc
        pos += length + _CRC.size
        index += 1


def _checked_payload(buf: bytes, frame: tuple[int, int, int], shard: str, index: int) -> bytes:
    start, end, stored_crc = frame
    # google_crc32c only takes bytes, hence the copy; callers drop it before the next record,
    # so its memory is reused (keeping all copies alive costs a page fault per 4 KiB).
    payload = buf[start:end]
    if _masked_crc(payload) != stored_crc:
        raise ShardFormatError(shard, "payload crc mismatch", index)
    return payload


def iter_record_payloads(
    data: bytes | bytearray | memoryview, shard: str
) -> Iterator[memoryview | bytes]:
    """Yield each record's payload (bytes) after checking its framing and both CRCs.

    Raises ShardFormatError naming the shard and record for truncation (in a header, a payload
    or a trailing crc), a CRC mismatch, and bytes that are not a TFRecord file at all.
    """
    buf = _as_bytes(data)
    for index, frame in enumerate(_record_frames(buf, shard)):
        yield _checked_payload(buf, frame, shard, index)


def _single_bytes(features, name: str, shard: str, index: int) -> bytes | None:
    """The one bytes value of feature `name`, or None when the feature is absent."""
    if name not in features:
        return None
    feature = features[name]
    kind = feature.WhichOneof("kind")
    if kind != "bytes_list":
        raise ShardFormatError(
            shard, f"feature {name} is {kind or 'empty (no kind set)'}, expected bytes_list", index
        )
    values = feature.bytes_list.value
    if len(values) != 1:
        raise ShardFormatError(
            shard, f"feature {name} has {len(values)} values, expected exactly 1", index
        )
    return values[0]


def _band_error(features, band: str, shard: str, index: int) -> ShardFormatError:
    """The error for a band that failed the fast check in decode_shard."""
    value = _single_bytes(features, band, shard, index)  # raises for wrong kind / count
    if value is None:
        return ShardFormatError(shard, f"band {band} is missing", index)
    return ShardFormatError(
        shard, f"band {band} has {len(value)} bytes, expected at least {BAND_BYTES}", index
    )


def _label(features, shard: str, index: int) -> int:
    if LABEL_FEATURE not in features:
        return UNLABELLED
    feature = features[LABEL_FEATURE]
    kind = feature.WhichOneof("kind")
    if kind != "int64_list":
        raise ShardFormatError(
            shard,
            f"feature {LABEL_FEATURE} is {kind or 'empty (no kind set)'}, expected int64_list",
            index,
        )
    values = feature.int64_list.value
    if len(values) != 1:
        raise ShardFormatError(
            shard, f"feature {LABEL_FEATURE} has {len(values)} values, expected exactly 1", index
        )
    label = values[0]
    if not 0 <= label < NUM_CLASSES:
        raise ShardFormatError(shard, f"label {label} outside 0..{NUM_CLASSES - 1}", index)
    return label


def decode_shard(data: bytes | bytearray | memoryview, shard: str) -> DecodedShard:
    """Decode every record of a shard held in memory; one bad record fails the whole shard.

    Shards whose records all share one layout (every shard the benchmark writes, and the real
    sample) take a vectorised path (see _decode_uniform); the others are parsed record by
    record. Both give the same result and the same errors.
    """
    buf = _as_bytes(data)
    # All framing first (a truncated file fails before any parsing): n is then known and the
    # output preallocated. Payload crcs are checked record by record, before each parse.
    frames = list(_record_frames(buf, shard))
    if frames:
        # Record 0 through the full parser first: its errors are reported as usual, and it is
        # the template the uniform path compares every other record with.
        _decode_records(buf, frames[:1], shard)
        uniform = _decode_uniform(buf, frames, shard)
        if uniform is not None:
            return uniform
    return _decode_records(buf, frames, shard)


def _decode_records(buf: bytes, frames: Sequence[tuple[int, int, int]], shard: str) -> DecodedShard:
    """The general path: parse each record with protobuf."""
    n = len(frames)
    images = empty_stack(n)
    # A flat byte view lets each band land with one buffer copy, no numpy temporaries.
    flat = memoryview(images.transpose(1, 0, 2, 3).reshape(-1))
    band_offsets = [(band, b * n * BAND_BYTES) for b, band in enumerate(BANDS)]
    labels = np.empty(n, dtype=np.int8)
    ids: list[str] = []
    parse = Example.FromString
    for index, frame in enumerate(frames):
        payload = _checked_payload(buf, frame, shard, index)
        try:
            # A fresh message per record: upb re-parsing into a reused one is ~10x slower.
            example = parse(payload)
        except DecodeError as exc:
            raise ShardFormatError(
                shard, f"payload is not a valid tf.train.Example: {exc}", index
            ) from exc
        features = example.features.feature
        base = index * BAND_BYTES
        for band, band_offset in band_offsets:
            feature = features.get(band)
            # A feature of another kind reads as an empty bytes_list, so one check on the
            # value count covers missing, wrong-kind and multi-valued bands; _band_error
            # then works out which it was.
            values = () if feature is None else feature.bytes_list.value
            if len(values) != 1 or len(value := values[0]) < BAND_BYTES:
                raise _band_error(features, band, shard, index)
            offset = base + band_offset
            flat[offset : offset + BAND_BYTES] = (
                value if len(value) == BAND_BYTES else value[:BAND_BYTES]
            )
        labels[index] = _label(features, shard, index)
        raw_id = _single_bytes(features, ID_FEATURE, shard, index)
        if raw_id is None:
            ids.append(f"{shard}#{index}")
        else:
            ids.append(_decode_id(raw_id, shard, index))
    return DecodedShard(images=images, labels=labels, ids=np.array(ids, dtype=str))


def _decode_id(raw: bytes, shard: str, index: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ShardFormatError(
            shard, f"feature {ID_FEATURE} is not valid UTF-8: {exc}", index
        ) from exc


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _example_layout(payload: bytes) -> dict[str, tuple[str, list[tuple[int, int]]]] | None:
    """Where each feature's values lie in a serialized Example: name -> (kind, [(start, end)]).

    Only the plain encoding TensorFlow writes (one Features message, map entries of key then
    value, bytes and int64 lists) is understood; anything else gives None and the caller falls
    back to the protobuf parser.
    """
    try:
        tag, pos = _varint(payload, 0)
        if tag != 0x0A:  # Example.features, length-delimited
            return None
        size, pos = _varint(payload, pos)
        end = pos + size
        if end != len(payload):
            return None
        layout: dict[str, tuple[str, list[tuple[int, int]]]] = {}
        while pos < end:
            tag, pos = _varint(payload, pos)
            if tag != 0x0A:  # Features.feature map entry
                return None
            size, pos = _varint(payload, pos)
            entry_end = pos + size
            tag, pos = _varint(payload, pos)
            if tag != 0x0A:  # entry key first
                return None
            size, pos = _varint(payload, pos)
            name = payload[pos : pos + size].decode("utf-8")
            pos += size
            tag, pos = _varint(payload, pos)
            if tag != 0x12 or name in layout:  # then the value; no repeated keys
                return None
            size, pos = _varint(payload, pos)
            if pos + size != entry_end or size == 0:
                return None
            kind_tag, pos = _varint(payload, pos)
            size, pos = _varint(payload, pos)
            if pos + size != entry_end:
                return None
            spans: list[tuple[int, int]] = []
            if kind_tag == 0x0A:  # bytes_list: repeated length-delimited values
                while pos < entry_end:
                    tag, pos = _varint(payload, pos)
                    if tag != 0x0A:
                        return None
                    size, pos = _varint(payload, pos)
                    spans.append((pos, pos + size))
                    pos += size
                layout[name] = ("bytes", spans)
            elif kind_tag == 0x1A:  # int64_list: packed or not
                while pos < entry_end:
                    tag, pos = _varint(payload, pos)
                    if tag == 0x08:
                        start = pos
                        _, pos = _varint(payload, pos)
                        spans.append((start, pos))
                    elif tag == 0x0A:
                        size, pos = _varint(payload, pos)
                        packed_end = pos + size
                        while pos < packed_end:
                            start = pos
                            _, pos = _varint(payload, pos)
                            spans.append((start, pos))
                    else:
                        return None
                layout[name] = ("int64", spans)
            else:
                return None
            if pos != entry_end:
                return None
        return layout
    except (IndexError, ValueError):
        return None


def _decode_uniform(
    buf: bytes, frames: Sequence[tuple[int, int, int]], shard: str
) -> DecodedShard | None:
    """The vectorised path, for shards whose records are byte for byte alike outside their
    values: same length, same features in the same order, one label byte.

    Record 0 (already checked by the parser) gives the layout. The file is then one 2-D array
    of records (no copies); every byte that is not a band, label or id value must equal record
    0's, which makes each record parse exactly like record 0 with its own values, so the bands
    are copied out with one numpy slice each, labels and ids read at their fixed offsets, and
    each payload crc checked on its row. None (the caller parses record by record) when the
    records differ in layout.
    """
    n = len(frames)
    start0, end0, _ = frames[0]
    size = end0 - start0
    stride = _HEADER.size + size + _CRC.size
    if start0 != _HEADER.size or len(buf) != n * stride:
        return None  # records of different lengths
    layout = _example_layout(buf[start0:end0])
    if layout is None:
        return None
    band_starts = []
    variable = np.zeros(stride, dtype=bool)
    for band in BANDS:
        kind, spans = layout.get(band, ("", []))
        if kind != "bytes" or len(spans) != 1 or spans[0][1] - spans[0][0] < BAND_BYTES:
            return None
        start, end = spans[0]
        band_starts.append(_HEADER.size + start)
        variable[_HEADER.size + start : _HEADER.size + end] = True
    label_at = None
    if LABEL_FEATURE in layout:
        kind, spans = layout[LABEL_FEATURE]
        if kind != "int64" or len(spans) != 1 or spans[0][1] - spans[0][0] != 1:
            return None
        label_at = _HEADER.size + spans[0][0]
        variable[label_at] = True
    id_span = None
    if ID_FEATURE in layout:
        kind, spans = layout[ID_FEATURE]
        if kind != "bytes" or len(spans) != 1:
            return None
        id_span = (_HEADER.size + spans[0][0], _HEADER.size + spans[0][1])
        variable[id_span[0] : id_span[1]] = True
    variable[-_CRC.size :] = True  # each record's payload crc, checked below

    rows = np.frombuffer(buf, dtype=np.uint8).reshape(n, stride)
    fixed = np.flatnonzero(~variable)
    same = (rows[:, fixed] == rows[0, fixed]).all(axis=1)
    if not same.all():
        return None
    if label_at is not None:
        raw_labels = rows[:, label_at]
        # A byte >= 0x80 would start a longer varint: not the same layout after all.
        if (raw_labels >= 0x80).any():
            return None
    # The parser checks record by record: payload crc, then the label, then the id. Find the
    # first failure of each kind and report the earliest, so both paths give the same error.
    errors: list[tuple[int, int, str]] = []  # (record, order within a record, reason)
    crcs = rows[:, -_CRC.size :].copy().view("<u4").ravel()
    for index in range(n):
        if _masked_crc(rows[index, _HEADER.size : _HEADER.size + size]) != crcs[index]:
            errors.append((index, 0, "payload crc mismatch"))
            break
    if label_at is not None:
        bad = np.flatnonzero(raw_labels >= NUM_CLASSES)
        if bad.size:
            index = int(bad[0])
            errors.append((index, 1, f"label {raw_labels[index]} outside 0..{NUM_CLASSES - 1}"))
        labels = raw_labels.astype(np.int8)
    else:
        labels = np.full(n, UNLABELLED, dtype=np.int8)
    ids: list[str] = []
    if id_span is None:
        ids = [f"{shard}#{index}" for index in range(n)]
    else:
        for index in range(n):
            try:
                ids.append(_decode_id(rows[index, id_span[0] : id_span[1]].tobytes(), shard, index))
            except ShardFormatError as exc:
                errors.append((index, 2, exc.reason))
                break
    if errors:
        index, _, reason = min(errors)
        raise ShardFormatError(shard, reason, index)
    images = empty_stack(n)
    by_band = images.transpose(1, 0, 2, 3).reshape(len(BANDS), n, BAND_BYTES)
    for b, start in enumerate(band_starts):
        by_band[b] = rows[:, start : start + BAND_BYTES]
    return DecodedShard(
        images=images,
        labels=labels,
        ids=np.array(ids, dtype=str),
    )


def read_shard(path: str | os.PathLike[str], shard: str | None = None) -> DecodedShard:
    """Decode a local shard file; errors name `shard`, which defaults to the path."""
    return decode_shard(Path(path).read_bytes(), os.fspath(path) if shard is None else shard)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    expected = (len(BANDS), IMAGE_SIDE, IMAGE_SIDE)
    if image.shape != expected or image.dtype != np.uint8:
        raise ValueError(f"image must be {expected} uint8, got {image.shape} {image.dtype}")
    return image


def encode_example(image: np.ndarray, label: int | None, record_id: str | None) -> bytes:
    """Serialize one tf.train.Example; label None (or < 0) and record_id None are omitted."""
    image = np.ascontiguousarray(_check_image(image))
    example = Example()
    features = example.features.feature
    for band_index, band in enumerate(BANDS):
        features[band].bytes_list.value.append(image[band_index].tobytes())
    if label is not None and int(label) >= 0:
        if int(label) >= NUM_CLASSES:
            raise ValueError(f"label {label} outside 0..{NUM_CLASSES - 1} (or None/-1)")
        features[LABEL_FEATURE].int64_list.value.append(int(label))
    if record_id is not None:
        if "\x00" in record_id:
            # numpy unicode arrays strip trailing NULs, so such an id would not round-trip.
            raise ValueError(f"record id {record_id!r} contains a NUL character")
        features[ID_FEATURE].bytes_list.value.append(record_id.encode("utf-8"))
    # Deterministic (fixed map key order) so equal inputs give byte-identical shards.
    return example.SerializeToString(deterministic=True)


def frame_record(payload: bytes) -> bytes:
    """Wrap one payload in TFRecord framing: length, its masked crc, payload, payload crc."""
    payload = bytes(payload)
    length = struct.pack("<Q", len(payload))
    return b"".join(
        (
            length,
            _CRC.pack(_masked_crc(length)),
            payload,
            _CRC.pack(_masked_crc(payload)),
        )
    )


def encode_shard(
    images: np.ndarray,
    labels: Sequence[int | None] | np.ndarray,
    ids: Sequence[str | None] | None = None,
) -> bytes:
    """A whole shard in memory; labels None or < 0 mean unlabelled, ids None omit filename."""
    images = np.asarray(images)
    if images.shape[1:] != (len(BANDS), IMAGE_SIDE, IMAGE_SIDE) or images.ndim != 4:
        raise ValueError(f"images must be (n, 11, 65, 65) uint8, got shape {images.shape}")
    n = images.shape[0]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    if ids is not None and len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} images")
    return b"".join(
        frame_record(
            encode_example(
                images[i],
                None if labels[i] is None else int(labels[i]),
                None if ids is None else ids[i],
            )
        )
        for i in range(n)
    )


def write_shard(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: Sequence[int | None] | np.ndarray,
    ids: Sequence[str | None] | None = None,
) -> int:
    """Write encode_shard(...) to a local file atomically; returns the bytes written."""
    data = encode_shard(images, labels, ids)
    target = Path(path)
    # Hidden temp name in the same folder: os.replace stays atomic, and shard listings
    # (names starting with "part-") never see a half-written file.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)
