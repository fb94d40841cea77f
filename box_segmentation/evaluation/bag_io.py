"""Reading and writing rosbag2 files without a ROS install, through the `rosbags` library.

rosbag2 itself is not on PyPI; `rosbags` (pure Python) reads and writes the same sqlite3 and
mcap bags, and learns our message types from the .msg files.
"""

import json
from pathlib import Path

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

PACKAGE = "box_segmentation"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
BOX_MASKS_TYPE = f"{PACKAGE}/msg/BoxMasks"
STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
ANNOTATIONS_FILE = "annotations.json"  # written inside the bag folder by from-dataset


class BagError(RuntimeError):
    """A bag that is missing, empty, corrupt or lacks the asked-for topic."""


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
    path = Path(path)
    if path.exists():
        raise BagError(f"output bag {path} already exists")
    writer = Writer(path, version=9, storage_plugin=STORAGE[storage])
    writer.open()
    return writer


def read_messages(path, topic: str, typestore):
    """Yields (timestamp_ns, message) of one topic, in time order, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        with Reader(path) as reader:
            connections = [c for c in reader.connections if c.topic == topic]
            if not connections:
                topics = sorted({c.topic for c in reader.connections}) or "none"
                raise BagError(f"bag {path} has no topic {topic} (topics: {topics})")
            if sum(c.msgcount for c in connections) == 0:
                raise BagError(f"bag {path} has no messages on {topic}")
            for connection, timestamp, raw in reader.messages(connections=connections):
                yield timestamp, typestore.deserialize_cdr(raw, connection.msgtype)
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
