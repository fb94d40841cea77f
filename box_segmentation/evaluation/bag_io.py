"""Reading and writing rosbag2 files without a ROS install, through the `rosbags` library.

rosbag2 itself is not on PyPI; `rosbags` (pure Python) reads and writes the same sqlite3 and
mcap bags, and learns our message types from the .msg files.

mcap chunks carry a CRC of their records. rosbags checks it only for the chunks it decompresses and
writes none (0: "not computed"), so a damaged bag of ours would replay with changed images and no
word. verify_chunk_crcs checks every chunk before a replay and names the damaged one;
add_chunk_crcs fills the CRCs into the bags we write (mcap format spec: https://mcap.dev/spec).
"""

import json
import struct
import warnings
from pathlib import Path
from typing import NamedTuple
from zlib import crc32

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import decompress
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

PACKAGE = "box_segmentation"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
BOX_MASKS_TYPE = f"{PACKAGE}/msg/BoxMasks"
STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
ANNOTATIONS_FILE = "annotations.json"  # written inside the bag folder by from-dataset


MCAP_MAGIC = b"\x89MCAP0\r\n"
MCAP_CHUNK, MCAP_FOOTER = 0x06, 0x02
# A chunk record: start and end time, uncompressed size (uint64 each), uncompressed CRC (uint32),
# compression (uint32-prefixed string), records (uint64-prefixed bytes).
CHUNK_CRC_OFFSET = 24


class BagError(RuntimeError):
    """A bag that is missing, empty, corrupt or lacks the asked-for topic."""


class Undecodable(NamedTuple):
    """Yielded by read_messages in place of a message whose bytes do not deserialize."""

    error: str


class Chunk(NamedTuple):
    offset: int  # of the chunk record in the file
    start_ns: int
    end_ns: int
    uncompressed_size: int
    crc: int
    compression: str
    records_offset: int
    records_size: int


def mcap_chunks(path: Path):
    """The chunk records of an mcap file, walking its top-level records; BagError where the walk breaks."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        if file.read(8) != MCAP_MAGIC:
            raise BagError(f"{path} is not an mcap file (bad magic bytes)")
        offset = 8
        while offset < size - 8:
            file.seek(offset)
            header = file.read(9)
            if len(header) < 9:
                raise BagError(f"{path} is damaged: record at byte {offset} is cut short")
            opcode, length = struct.unpack("<BQ", header)
            if offset + 9 + length > size:
                raise BagError(f"{path} is damaged: record at byte {offset} (opcode {opcode:#x}) claims "
                               f"{length} bytes, past the end of the file")
            if opcode == MCAP_FOOTER:
                return
            if opcode == MCAP_CHUNK:
                start_ns, end_ns, uncompressed_size, crc, name_length = struct.unpack("<QQQII", file.read(32))
                compression = file.read(name_length).decode("ascii", "replace")
                (records_size,) = struct.unpack("<Q", file.read(8))
                records_offset = offset + 9 + 32 + name_length + 8
                if records_offset + records_size > offset + 9 + length:
                    raise BagError(f"{path} is damaged: chunk at byte {offset} holds more than its record")
                yield Chunk(offset, start_ns, end_ns, uncompressed_size, crc, compression, records_offset,
                            records_size)
            offset += 9 + length


def verify_chunk_crcs(bag) -> None:
    """BagError naming the first mcap chunk whose records do not match their CRC; a warning for chunks
    that carry none (their damage cannot be seen). sqlite3 bags have no checksums to verify."""
    unverified = 0
    for path in sorted(Path(bag).glob("*.mcap")):
        with open(path, "rb") as file:
            for index, chunk in enumerate(mcap_chunks(path)):
                if chunk.crc == 0:
                    unverified += 1
                    continue
                file.seek(chunk.records_offset)
                try:  # rosbags' own decompression and CRC check
                    decompress(file.read(chunk.records_size), chunk.compression, chunk.uncompressed_size, chunk.crc)
                except Exception as error:
                    raise BagError(f"{path} is damaged: chunk {index} at byte {chunk.offset} (messages stamped "
                                   f"{chunk.start_ns} to {chunk.end_ns} ns) fails its check: {error}") from error
    if unverified:
        warnings.warn(f"{unverified} mcap chunks of {bag} carry no CRC: damage to them cannot be detected",
                      stacklevel=2)


def add_chunk_crcs(bag) -> None:
    """Writes the CRC of every uncompressed mcap chunk that has none (rosbags' writer leaves 0)."""
    for path in sorted(Path(bag).glob("*.mcap")):
        chunks = [c for c in mcap_chunks(path) if c.crc == 0 and c.compression == ""]
        with open(path, "r+b") as file:
            for chunk in chunks:
                file.seek(chunk.records_offset)
                crc = crc32(file.read(chunk.records_size))
                file.seek(chunk.offset + 9 + CHUNK_CRC_OFFSET)
                file.write(struct.pack("<I", crc))


def message_definitions_folder() -> Path:
    """msg/ of the source tree, or share/box_segmentation/msg of a colcon install."""
    source = Path(__file__).resolve().parents[2] / "msg"
    if source.is_dir():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(PACKAGE)) / "msg"


def make_typestore():
    """The ROS 2 Kilted types plus ours (BoxMasks, BoxMask, RotatedRect)."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted(message_definitions_folder().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    typestore.register(types)
    return typestore


def open_writer(path, storage: str = "mcap") -> Writer:
    """A rosbags Writer; close it with close_writer, which adds the chunk CRCs."""
    path = Path(path)
    if path.exists():
        raise BagError(f"output bag {path} already exists")
    writer = Writer(path, version=9, storage_plugin=STORAGE[storage])
    writer.open()
    return writer


def close_writer(writer: Writer) -> None:
    writer.close()
    add_chunk_crcs(writer.path)


def read_messages(path, topic: str, typestore):
    """Yields (timestamp_ns, message) of one topic, in time order, with clear errors: a damaged bag
    (chunk CRCs checked first) is a BagError; a message that does not deserialize comes as Undecodable."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    verify_chunk_crcs(path)
    try:
        with Reader(path) as reader:
            connections = [c for c in reader.connections if c.topic == topic]
            if not connections:
                topics = sorted({c.topic for c in reader.connections}) or "none"
                raise BagError(f"bag {path} has no topic {topic} (topics: {topics})")
            if sum(c.msgcount for c in connections) == 0:
                raise BagError(f"bag {path} has no messages on {topic}")
            for connection, timestamp, raw in reader.messages(connections=connections):
                try:
                    message = typestore.deserialize_cdr(raw, connection.msgtype)
                except Exception as error:  # rosbags raises struct, index and its own errors on bad CDR
                    message = Undecodable(f"{type(error).__name__}: {error}")
                yield timestamp, message
    except BagError:
        raise
    except Exception as error:  # rosbags raises its own reader errors, sqlite and struct errors
        raise BagError(f"bag {path} cannot be read: {type(error).__name__}: {error}") from error


def read_annotations(path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BagError(f"annotations {path} cannot be read: {error}") from error
