"""image_conversion: every encoding against a known RGB image, padding, and bad input."""

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from box_segmentation.image_conversion import (
    ImageConversionError,
    compressed_to_rgb,
    depth_image_to_array,
    image_to_rgb,
    imgmsg_to_rgb,
    rgb_to_imgmsg_fields,
)

HEIGHT, WIDTH = 6, 8


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def padded(pixels: np.ndarray, padding: int) -> tuple[int, bytes]:
    """Rows of pixels (H, row bytes) with `padding` junk bytes after each: (step, data)."""
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    junk = np.full((rows.shape[0], padding), 0xAB, dtype=np.uint8)
    return rows.shape[1] + padding, np.hstack([rows, junk]).tobytes()


def convert(encoding, pixels, padding=0, bigendian=False):
    step, data = padded(pixels, padding)
    return image_to_rgb(encoding, pixels.shape[0], pixels.shape[1], step, bigendian, data)


@pytest.mark.parametrize("padding", [0, 5])
def test_colour_encodings(rgb, padding):
    alpha = np.full((HEIGHT, WIDTH, 1), 7, dtype=np.uint8)
    encoded = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], axis=2),
        "8UC3": rgb[..., ::-1],
    }
    for encoding, pixels in encoded.items():
        result = convert(encoding, np.ascontiguousarray(pixels), padding)
        assert result.shape == (HEIGHT, WIDTH, 3) and result.dtype == np.uint8, encoding
        np.testing.assert_array_equal(result, rgb, err_msg=encoding)


def test_rgb8_and_bgr8_are_views_of_the_message_data(rgb):
    fields = rgb_to_imgmsg_fields(rgb, "bgr8")
    data = bytearray(fields["data"])
    result = image_to_rgb("bgr8", fields["height"], fields["width"], fields["step"], False, data)
    assert np.shares_memory(result, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(result, rgb)


@pytest.mark.parametrize("padding", [0, 3])
def test_mono8(rgb, padding):
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    result = convert("mono8", gray, padding)
    np.testing.assert_array_equal(result, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_keeps_the_high_byte_in_either_byte_order(bigendian):
    values = np.random.default_rng(1).integers(0, 65536, size=(HEIGHT, WIDTH), dtype=np.uint16)
    stored = values.astype(">u2" if bigendian else "<u2")
    result = convert("mono16", stored, padding=4, bigendian=bigendian)
    expected = (values >> 8).astype(np.uint8)
    np.testing.assert_array_equal(result, np.repeat(expected[..., None], 3, axis=2))


# The top-left 2x2 block of each ROS Bayer pattern, as colour channel indices (R=0, G=1, B=2).
BAYER_BLOCKS = {"bayer_rggb8": [[0, 1], [1, 2]], "bayer_bggr8": [[2, 1], [1, 0]],
                "bayer_gbrg8": [[1, 2], [0, 1]], "bayer_grbg8": [[1, 0], [2, 1]]}


def mosaic(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """Samples rgb through the colour filter of a ROS Bayer encoding."""
    channel = np.tile(np.array(BAYER_BLOCKS[encoding]), (rgb.shape[0] // 2, rgb.shape[1] // 2))
    return np.take_along_axis(rgb, channel[..., None], axis=2)[..., 0]


@pytest.mark.parametrize("encoding", sorted(BAYER_BLOCKS))
def test_bayer_channel_order_on_a_flat_colour(encoding):
    flat = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    flat[:] = (200, 120, 30)
    result = convert(encoding, mosaic(flat, encoding), padding=2)
    # Demosaicking a flat colour gives it back exactly: a wrong pattern swaps R and B.
    np.testing.assert_array_equal(result, flat)


@pytest.mark.parametrize("encoding", sorted(BAYER_BLOCKS))
def test_bayer_matches_opencv_demosaic(rgb, encoding):
    raw = mosaic(rgb, encoding)
    opencv_code = {"bayer_rggb8": cv2.COLOR_BayerBG2RGB, "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
                   "bayer_gbrg8": cv2.COLOR_BayerGR2RGB, "bayer_grbg8": cv2.COLOR_BayerGB2RGB}[encoding]
    np.testing.assert_array_equal(convert(encoding, raw), cv2.cvtColor(raw, opencv_code))


@pytest.mark.parametrize("encoding, to_yuv", [
    ("yuv422", cv2.COLOR_RGB2YUV_UYVY), ("uyvy", cv2.COLOR_RGB2YUV_UYVY),
    ("yuv422_yuy2", cv2.COLOR_RGB2YUV_YUY2), ("yuyv", cv2.COLOR_RGB2YUV_YUY2),
])
def test_yuv422(encoding, to_yuv):
    # Pairs of equal pixels survive the 4:2:2 chroma subsampling up to rounding.
    rgb = np.repeat(np.random.default_rng(2).integers(40, 216, size=(HEIGHT, WIDTH // 2, 3), dtype=np.uint8), 2, axis=1)
    yuv = cv2.cvtColor(rgb, to_yuv)
    result = convert(encoding, yuv, padding=4)
    assert np.abs(result.astype(int) - rgb).max() <= 3


def test_imgmsg_to_rgb_reads_message_fields(rgb):
    fields = rgb_to_imgmsg_fields(rgb, "bgr8")
    fields["data"] = array.array("B", fields["data"])  # what rclpy gives for uint8[]
    np.testing.assert_array_equal(imgmsg_to_rgb(SimpleNamespace(**fields)), rgb)


def test_imgmsg_to_rgb_with_a_real_message(rgb):
    from sensor_msgs.msg import Image

    msg = Image(**rgb_to_imgmsg_fields(rgb, "rgb8"))
    np.testing.assert_array_equal(imgmsg_to_rgb(msg), rgb)


@pytest.mark.parametrize("fmt, ext", [("jpeg", ".jpg"), ("png", ".png"), ("rgb8; jpeg compressed bgr8", ".jpg")])
def test_compressed(fmt, ext):
    # Red and blue halves: a decoder that swapped channels would be off by 240.
    rgb = np.zeros((16, 32, 3), dtype=np.uint8)
    rgb[:, :16] = (250, 10, 10)
    rgb[:, 16:] = (10, 10, 250)
    ok, encoded = cv2.imencode(ext, rgb[..., ::-1])
    assert ok
    result = compressed_to_rgb(SimpleNamespace(format=fmt, data=encoded.tobytes()))
    assert result.shape == rgb.shape
    error = np.abs(result.astype(int) - rgb)
    if ext == ".png":
        assert error.max() == 0
    else:  # JPEG's chroma subsampling blurs the two columns at the colour edge
        assert error[:, :14].max() <= 12 and error[:, 18:].max() <= 12


@pytest.mark.parametrize("fmt, data", [("tiff", b"II*\x00"), ("jpeg", b""), ("jpeg", b"not a jpeg")])
def test_compressed_bad_input(fmt, data):
    with pytest.raises(ImageConversionError, match="format"):
        compressed_to_rgb(SimpleNamespace(format=fmt, data=data))


@pytest.mark.parametrize("encoding, height, width, step, size, words", [
    ("rgb16", 4, 4, 24, 96, ["rgb16", "4x4"]),  # unsupported
    ("rgb8", 4, 4, 12, 47, ["rgb8", "4x4", "step 12", "47 bytes"]),  # data short
    ("rgb8", 4, 4, 11, 48, ["rgb8", "step 11"]),  # step shorter than a row
    ("mono16", 4, 4, 7, 48, ["mono16", "step 7"]),
    ("mono8", 0, 4, 4, 0, ["mono8", "4x0"]),  # empty
    ("mono8", 20_000, 20_000, 20_000, 16, ["mono8", "20000x20000"]),  # absurd
    ("yuv422", 2, 3, 6, 12, ["yuv422", "3x2"]),  # odd width
])
def test_bad_input_names_encoding_and_sizes(encoding, height, width, step, size, words):
    with pytest.raises(ImageConversionError) as raised:
        image_to_rgb(encoding, height, width, step, False, bytes(size))
    for word in words:
        assert word in str(raised.value)


def test_depth_image_reads_padded_and_big_endian_rows():
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    padded = np.zeros((3, 6), ">u2")
    padded[:, :4] = depth
    msg = SimpleNamespace(height=3, width=4, encoding="16UC1", is_bigendian=1, step=12, data=padded.tobytes())
    np.testing.assert_array_equal(depth_image_to_array(msg), depth)
    metres = np.full((2, 3), 1.25, np.float32)
    as_float = SimpleNamespace(height=2, width=3, encoding="32FC1", is_bigendian=0, step=12, data=metres.tobytes())
    np.testing.assert_array_equal(depth_image_to_array(as_float), metres)
    short_step = SimpleNamespace(height=3, width=4, encoding="16UC1", is_bigendian=0, step=6, data=bytes(18))
    with pytest.raises(ImageConversionError, match="step shorter than a row of 8 bytes"):
        depth_image_to_array(short_step)
    colour = SimpleNamespace(height=3, width=4, encoding="rgb8", is_bigendian=0, step=12, data=bytes(36))
    with pytest.raises(ImageConversionError, match="unsupported depth encoding 'rgb8'"):
        depth_image_to_array(colour)
