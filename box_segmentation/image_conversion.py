"""sensor_msgs/Image and CompressedImage to RGB numpy arrays, without cv_bridge.

cv_bridge has no working build without a ROS install: the PyPI `cv-bridge` is a ROS 1 port
that fails with ROS 2 messages and numpy 2. This module reads the message fields directly
(duck-typed, no rclpy import), so the node, the rosbag replay tool and the tests share it.

The common encodings (rgb8, bgr8, rgba8, bgra8) come back as views of the message buffer
(channel-reversed or strided, row padding skipped): the model's tensor conversion makes the
one copy it needs anyway. The other encodings are converted by OpenCV into a new array.

Every image, raw or compressed, passes the same size check before its pixels are touched: at most
MAX_PIXELS, and sides at most MAX_ASPECT_RATIO to 1 (the model cannot take thinner ones, see there).
A compressed image's size is read from its JPEG or PNG header, so a small file that claims a huge
image is refused without decoding it.
"""

import re
import struct

import cv2
import numpy as np
from numpy.lib.stride_tricks import as_strided

MAX_PIXELS = 100_000_000  # anything bigger is a corrupt header, not a camera
# The model scales an image so its long side is at most max_size (320 for the shipped model, 160 for the
# test suite's): a short side under long side / max_size becomes 0 pixels and inference fails (1x1000 does;
# 1x1, upscaled, does not). Cameras stay within about 4:1 (side-by-side stereo); 20:1 leaves room and
# holds for any model with max_size of at least 20.
MAX_ASPECT_RATIO = 20

# encoding -> (bytes per pixel, conversion from the (H, W, channels) stored array)
_BAYER_TO_RGB = {
    # OpenCV names a Bayer pattern by the second row's 2nd and 3rd pixels, ROS by the
    # top-left 2x2 block, so the names are shifted: ROS rggb is OpenCV's BayerBG.
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
_YUV422_TO_RGB = {
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,  # ROS's yuv422 is UYVY byte order
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2,
}
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3,
             **dict.fromkeys(_BAYER_TO_RGB, 1), **dict.fromkeys(_YUV422_TO_RGB, 2)}
_BYTES_PER_CHANNEL = {"mono16": 2, "16uc1": 2}
SUPPORTED_ENCODINGS = sorted(set(_CHANNELS) | set(_BYTES_PER_CHANNEL))
_DEPTH_DTYPES = {"16UC1": "u2", "mono16": "u2", "32FC1": "f4"}  # the ROS spellings
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"  # start of image, then the first marker
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the image size.
_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageConversionError(ValueError):
    """An image message this module cannot turn into RGB: unsupported encoding or bad sizes."""


def image_to_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data) -> np.ndarray:
    """(height, width, 3) uint8 RGB from the fields of a sensor_msgs/Image.

    8UC3 is read as bgr8 (OpenCV's order), 8UC1 as mono8, 16UC1 as mono16. mono16 is scaled to
    8 bits by keeping the high byte (full-range cameras; not meant for depth images).
    """
    name = encoding.lower()
    if name not in _CHANNELS and name not in _BYTES_PER_CHANNEL:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r} ({width}x{height}); supported: {', '.join(SUPPORTED_ENCODINGS)}")
    if name in _YUV422_TO_RGB and width % 2:
        raise ImageConversionError(f"YUV 4:2:2 needs an even width: encoding {encoding!r}, {width}x{height}")
    itemsize = _BYTES_PER_CHANNEL.get(name, 1)
    pixels = _pixels(encoding, height, width, step, is_bigendian, data, _CHANNELS.get(name, 1),
                     np.dtype(f"u{itemsize}"))

    if name == "rgb8":
        return pixels
    if name in ("bgr8", "8uc3"):
        return pixels[..., ::-1]
    if name == "rgba8":
        return pixels[..., :3]
    if name == "bgra8":
        return pixels[..., 2::-1]
    if name in ("mono8", "8uc1"):
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    if itemsize == 2:  # mono16 / 16UC1
        return cv2.cvtColor((pixels >> 8).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    if name in _BAYER_TO_RGB:
        return cv2.cvtColor(pixels, _BAYER_TO_RGB[name])
    return cv2.cvtColor(pixels, _YUV422_TO_RGB[name])


def depth_encoding(encoding: str) -> str:
    """The ROS spelling (16UC1, mono16 or 32FC1) of a depth encoding written in any case; the one place
    depth encodings are matched."""
    for name in _DEPTH_DTYPES:
        if encoding.lower() == name.lower():
            return name
    raise ImageConversionError(f"unsupported depth encoding {encoding!r}; expected one of 16UC1, mono16, 32FC1")


def depth_image_to_array(msg) -> np.ndarray:
    """(height, width) view of a depth sensor_msgs/Image: uint16 for 16UC1 and mono16 (sensor units),
    float32 for 32FC1 (metres), with row padding and byte order honoured."""
    dtype = _DEPTH_DTYPES[depth_encoding(msg.encoding)]
    return _pixels(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data, 1,
                   np.dtype(dtype))[..., 0]


def imgmsg_to_rgb(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a sensor_msgs/Image (or anything with its fields)."""
    return image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)


def compressed_to_rgb(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a sensor_msgs/CompressedImage (jpeg or png).

    The format field is "jpeg", "png", or image_transport's "rgb8; jpeg compressed bgr8": the
    codec is in the data itself, which must be a JPEG or PNG whose header declares a size the
    raw images are allowed (OpenCV would decode other formats too, and up to 2^30 pixels).
    """
    fmt = msg.format.lower()
    if not re.search(r"\b(jpe?g|png)\b", fmt):
        raise ImageConversionError(f"unsupported compressed format {msg.format!r}; expected jpeg or png")
    buffer = _as_bytes_array(msg.data)
    height, width = _declared_size(buffer, msg.format)
    _check_size(height, width, f"compressed format {msg.format!r}, header declares {width}x{height}, "
                               f"{buffer.size} bytes of data")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageConversionError(f"cannot decode {buffer.size} bytes of compressed format {msg.format!r}")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def rgb_to_imgmsg_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict:
    """The fields of a sensor_msgs/Image holding rgb (for tests and tools): rgb8, bgr8 or mono8."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[..., ::-1]
    elif encoding == "mono8":
        pixels = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    else:
        raise ImageConversionError(f"rgb_to_imgmsg_fields writes rgb8, bgr8 or mono8, not {encoding!r}")
    height, width = rgb.shape[:2]
    row_bytes = pixels.size // height
    return {"height": height, "width": width, "step": row_bytes, "encoding": encoding, "is_bigendian": 0,
            "data": np.ascontiguousarray(pixels).tobytes()}


def _pixels(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data, channels: int,
            dtype: np.dtype) -> np.ndarray:
    """(height, width, channels) view of the message's pixels, row padding skipped; sizes checked."""
    buffer = _as_bytes_array(data)
    pixel_bytes = channels * dtype.itemsize
    sizes = f"encoding {encoding!r}, {width}x{height}, step {step}, {buffer.size} bytes of data"
    _check_size(height, width, sizes)
    if step < width * pixel_bytes:
        raise ImageConversionError(f"step shorter than a row of {width * pixel_bytes} bytes: {sizes}")
    if buffer.size < step * height:
        raise ImageConversionError(f"data shorter than step * height = {step * height} bytes: {sizes}")
    # A view of the rows without their padding; nothing is copied.
    pixels = as_strided(buffer, shape=(height, width * pixel_bytes), strides=(step, 1), writeable=False)
    if dtype.itemsize > 1:
        pixels = pixels.view(dtype.newbyteorder(">" if is_bigendian else "<"))
    return pixels.reshape(height, width, channels)


def _check_size(height: int, width: int, sizes: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image: {sizes}")
    if height * width > MAX_PIXELS:
        raise ImageConversionError(f"image too large (over {MAX_PIXELS // 1_000_000} MP): {sizes}")
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ImageConversionError(f"image too thin for the model (sides over {MAX_ASPECT_RATIO}:1): {sizes}")


def _declared_size(data: np.ndarray, fmt: str) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk or a JPEG's frame header, read before any decoding.

    OpenCV has no header-only read, so the two headers are read here. The JPEG marker segments are
    walked as libjpeg walks them up to the first frame header; anything off that path is refused.
    """
    unreadable = f"unreadable {fmt!r} header ({data.size} bytes of data)"
    head = data[:8].tobytes()
    if head == _PNG_SIGNATURE:
        # The first chunk is always IHDR: length, type, then width and height as big-endian uint32.
        if data.size < 24 or data[12:16].tobytes() != b"IHDR":
            raise ImageConversionError(unreadable)
        width, height = struct.unpack(">II", data[16:24].tobytes())
        return height, width
    if head[:3] != _JPEG_SIGNATURE:
        raise ImageConversionError(f"compressed data is neither JPEG nor PNG: format {fmt!r}, "
                                   f"{data.size} bytes starting {head.hex()}")
    position = 2
    while position + 4 <= data.size:
        if data[position] != 0xFF:
            break
        marker = int(data[position + 1])
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM and RSTn stand alone, without a length
            position += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan or end of image before any frame header
            break
        length = int(data[position + 2]) << 8 | int(data[position + 3])
        if marker in _JPEG_FRAME_MARKERS:
            if length < 8 or position + 9 > data.size:
                break
            # Frame header: length, sample precision, then height and width as big-endian uint16.
            height, width = struct.unpack(">HH", data[position + 5:position + 9].tobytes())
            return height, width
        if length < 2:
            break
        position += 2 + length
    raise ImageConversionError(unreadable)


def _as_bytes_array(data) -> np.ndarray:
    # bytes, bytearray, array.array and memoryview are read in place; a list is copied.
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).ravel()
