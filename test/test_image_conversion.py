"""image_conversion: every encoding against a known RGB image, padding, and bad input."""

import array
import tracemalloc
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from box_segmentation.image_conversion import (
    MAX_ASPECT_RATIO,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_to_rgb,
    depth_image_to_array,
    image_to_rgb,
    imgmsg_to_rgb,
    rgb_to_imgmsg_fields,
)
from box_segmentation.pick_pose import depth_to_metres
from box_segmentation.segmenter import Segmenter

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
    # OpenCV also names each pattern by its top-left 2x2 block, as ROS does (COLOR_BayerRGGB2RGB for
    # bayer_rggb8): the expected image comes from OpenCV's naming, not from the module's own table.
    pattern = encoding.removeprefix("bayer_").removesuffix("8").upper()
    raw = mosaic(rgb, encoding)
    expected = cv2.cvtColor(raw, getattr(cv2, f"COLOR_Bayer{pattern}2RGB"))
    np.testing.assert_array_equal(convert(encoding, raw, padding=3), expected)


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


def depth_message(encoding: str) -> SimpleNamespace:
    return SimpleNamespace(height=2, width=3, encoding=encoding, is_bigendian=0, step=6, data=bytes(range(12)))


@pytest.mark.parametrize("encoding", ["16UC1", "16uc1", "MONO16", "32fc1"])
def test_depth_encodings_match_in_any_case_in_the_conversion_and_the_pose_code(encoding):
    msg = depth_message(encoding)
    if "32" in encoding:
        msg.step, msg.data = 12, np.full((2, 3), 1.5, np.float32).tobytes()
    depth = depth_image_to_array(msg)
    metres = depth_to_metres(depth, encoding, (2, 3))
    assert metres.shape == (2, 3) and np.isfinite(metres[-1, -1])


def test_an_unsupported_depth_encoding_is_refused_by_the_conversion_and_the_pose_code():
    with pytest.raises(ImageConversionError, match="unsupported depth encoding 'rgb8'"):
        depth_image_to_array(depth_message("rgb8"))
    with pytest.raises(ValueError, match="unsupported depth encoding 'rgb8'"):
        depth_to_metres(np.zeros((2, 3), np.uint16), "rgb8", (2, 3))


def encoded(rgb: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, rgb[..., ::-1])
    assert ok
    return data.tobytes()


def jpeg_claiming(height: int, width: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to claim height x width pixels."""
    data = bytearray(encoded(np.zeros((8, 8, 3), np.uint8), ".jpg"))
    position = 2
    while data[position + 1] != 0xC0:  # walk the marker segments: FF xx, 2-byte length
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    data[position + 5:position + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_a_compressed_image_claiming_a_huge_size_is_refused_before_decoding():
    bomb = jpeg_claiming(12_000, 12_000)
    assert len(bomb) < 700
    tracemalloc.start()
    try:
        with pytest.raises(ImageConversionError, match="12000x12000"):
            compressed_to_rgb(SimpleNamespace(format="jpeg", data=bomb))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Decoding it allocates 12000 x 12000 x 3 bytes (432 MB); refusing it, next to nothing.
    assert peak < 1_000_000


@pytest.mark.parametrize("height, width", [(1000, 1), (1, 1000), (2, 2000), (2000, 2), (3, 1000)])
def test_sizes_the_model_cannot_take_are_refused_raw_and_compressed(height, width):
    # The model resizes the long side to at most max_size (480 for the shipped model): a side
    # shorter than long / max_size becomes 0 pixels, and inference fails.
    with pytest.raises(ImageConversionError, match=f"{width}x{height}"):
        image_to_rgb("mono8", height, width, width, False, bytes(height * width))
    png = encoded(np.zeros((height, width, 3), np.uint8), ".png")
    with pytest.raises(ImageConversionError, match=f"{width}x{height}"):
        compressed_to_rgb(SimpleNamespace(format="png", data=png))
    with pytest.raises(ImageConversionError, match=f"{width}x{height}"):
        compressed_to_rgb(SimpleNamespace(format="jpeg", data=jpeg_claiming(height, width)))


def test_the_smallest_and_narrowest_accepted_images_run_through_the_model(tiny_checkpoint):
    # The tiny checkpoint's max_size (160) is the smallest of the project's models: the strictest case.
    segmenter = Segmenter(tiny_checkpoint, device="cpu")
    rng = np.random.default_rng(3)
    for height, width in [(1, 1), (1, MAX_ASPECT_RATIO), (2 * MAX_ASPECT_RATIO, 2)]:
        gray = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
        raw = image_to_rgb("mono8", height, width, width, False, gray.tobytes())
        png = compressed_to_rgb(SimpleNamespace(format="png", data=encoded(raw, ".png")))
        np.testing.assert_array_equal(png, raw)
        assert isinstance(segmenter(raw), list), (height, width)
    # Just past the limit is refused.
    with pytest.raises(ImageConversionError, match="sides"):
        image_to_rgb("mono8", 1, MAX_ASPECT_RATIO + 1, MAX_ASPECT_RATIO + 1, False, bytes(MAX_ASPECT_RATIO + 1))


# Property-based: whatever the fields, image conversion returns an RGB image of the stated size that the model
# can take, or raises ImageConversionError, never anything else. Each example starts from a consistent image
# and breaks up to two things in it. Bounded (max_examples) and derandomized so CI is repeatable.
PIXEL_BYTES = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "8uc3": 3, "mono8": 1, "8uc1": 1, "mono16": 2,
               "16uc1": 2, "bayer_rggb8": 1, "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1,
               "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2}
BAD_ENCODINGS = ["", "rgb16", "bgr16", "32FC1", "16UC3", "bayer_rggb16", "yuv420", "jpeg", "8UC4", "mono8 ",
                 "rgb8\x00", "RGB8\u0130"]
HUGE = [2**16, 2**31 - 1, 2**32 - 1]
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def test_the_fuzzed_encodings_are_the_supported_ones():
    assert sorted(PIXEL_BYTES) == SUPPORTED_ENCODINGS


@st.composite
def image_fields(draw):
    encoding = draw(st.sampled_from(sorted(PIXEL_BYTES)))
    if draw(st.booleans()):
        encoding = encoding.upper()
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    step = width * PIXEL_BYTES[encoding.lower()] + draw(st.integers(0, 9))
    is_bigendian = draw(st.booleans())
    length = step * height
    for damage in draw(st.lists(st.sampled_from(["encoding", "height", "width", "step", "length"]), max_size=2)):
        if damage == "encoding":
            encoding = draw(st.sampled_from(BAD_ENCODINGS) | st.text(max_size=12))
        elif damage == "height":
            height = draw(st.integers(-2, 0) | st.sampled_from(HUGE))
        elif damage == "width":
            width = draw(st.integers(-2, 0) | st.sampled_from(HUGE))
        elif damage == "step":
            step = draw(st.integers(-3, 2 * max(step, 0)) | st.sampled_from(HUGE))
        else:
            length = draw(st.integers(0, 2 * length + 8))
    return encoding, height, width, step, is_bigendian, draw(st.binary(min_size=length, max_size=length))


@FUZZ
@given(image_fields())
def test_any_image_fields_give_rgb_or_a_conversion_error(fields):
    encoding, height, width, step, is_bigendian, data = fields
    try:
        rgb = image_to_rgb(encoding, height, width, step, is_bigendian, data)
    except ImageConversionError:
        return
    assert isinstance(rgb, np.ndarray) and rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    assert max(height, width) <= MAX_ASPECT_RATIO * min(height, width)  # a size the model takes


@st.composite
def compressed_fields(draw):
    fmt = draw(st.sampled_from(["jpeg", "png", "JPEG", "rgb8; jpeg compressed bgr8", "tiff", ""]))
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    ext = draw(st.sampled_from([".jpg", ".png"]))
    data = bytearray(encoded(np.full((height, width, 3), 90, np.uint8), ext))
    damage = draw(st.sampled_from(["none", "size", "byte", "truncate", "random"]))
    if damage == "size" and ext == ".jpg":  # any declared size up to 1500 x 1500: decoding it stays cheap
        data = bytearray(jpeg_claiming(draw(st.integers(0, 1500)), draw(st.integers(0, 1500))))
    elif damage == "byte":  # one byte anywhere (headers included) set to any value
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif damage == "truncate":
        del data[draw(st.integers(0, len(data))):]
    elif damage == "random":
        data = draw(st.binary(max_size=64))
    return fmt, bytes(data)


@FUZZ
@given(compressed_fields())
def test_any_compressed_image_gives_rgb_or_a_conversion_error(fields):
    fmt, data = fields
    try:
        rgb = compressed_to_rgb(SimpleNamespace(format=fmt, data=data))
    except ImageConversionError:
        return
    assert isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    assert max(rgb.shape[:2]) <= MAX_ASPECT_RATIO * min(rgb.shape[:2])  # a size the model takes
