"""Intrinsics from CameraInfo as image_geometry reads them: P for rectified images, K and D for raw ones;
intrinsics that cannot be a camera's refused with the reason."""

import math

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo

from box_segmentation.camera_model import CameraInfoError, Intrinsics, camera_model_from_info

WIDTH, HEIGHT = 640, 480
K = [600.0, 0.0, 322.0, 0.0, 605.0, 236.0, 0.0, 0.0, 1.0]
P = [580.0, 0.0, 318.0, 0.0, 0.0, 585.0, 241.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # image_proc's new camera matrix
D = [-0.12, 0.08, 0.001, -0.002, -0.02]  # a wide lens' barrel distortion


def info(k=K, p=P, d=D, model="plumb_bob", width=WIDTH, height=HEIGHT):
    return CameraInfo(width=width, height=height, distortion_model=model, d=list(d), k=list(k), p=list(p),
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])


def test_rectified_images_use_p_and_no_distortion():
    model = camera_model_from_info(info(), "rectified")
    assert (model.fx, model.fy, model.cx, model.cy) == (580.0, 585.0, 318.0, 241.0) and not model.distorted
    x, y = model.normalised(np.array([318, 898]), np.array([241, 241]))
    np.testing.assert_allclose([x, y], [[0, 1], [0, 0]])


def test_raw_images_use_k_and_undo_the_distortion():
    model = camera_model_from_info(info(), "raw")
    assert (model.fx, model.fy, model.cx, model.cy) == (600.0, 605.0, 322.0, 236.0) and model.distorted
    # Distort known rays with OpenCV's forward model; their pixels must come back to the same rays.
    rays = np.array([[0.0, 0.0], [0.3, -0.2], [-0.45, 0.3], [0.5, 0.35]])
    camera = np.array(K).reshape(3, 3)
    pixels = cv2.projectPoints(np.column_stack([rays, np.ones(4)]), np.zeros(3), np.zeros(3), camera,
                               np.array(D))[0][:, 0]
    x, y = model.normalised(pixels[:, 0], pixels[:, 1])  # sub-pixel positions: undistorted directly
    np.testing.assert_allclose(np.column_stack([x, y]), rays, atol=1e-6)
    whole = np.round(pixels).astype(int)  # whole pixels: from the table built once per camera
    np.testing.assert_allclose(np.column_stack(model.normalised(whole[:, 0], whole[:, 1])),
                               np.column_stack(model.normalised(*whole.T.astype(float))), atol=1e-9)
    pinhole = (whole - [322.0, 236.0]) / [600.0, 605.0]
    assert np.abs(np.column_stack([x, y]) - pinhole).max() > 0.01, "the distortion is not negligible here"


def test_equidistant_and_zero_distortion():
    model = camera_model_from_info(info(d=[0.1, 0.01, 0.0, 0.0], model="equidistant"), "raw")
    point = np.array([[[0.4, -0.3, 1.0]]])
    pixel = cv2.fisheye.projectPoints(point, np.zeros(3), np.zeros(3), np.array(K).reshape(3, 3),
                                      np.array([0.1, 0.01, 0.0, 0.0]))[0][0, 0]
    np.testing.assert_allclose(model.normalised(np.array([pixel[0]]), np.array([pixel[1]])), [[0.4], [-0.3]],
                               atol=1e-5)
    plain = camera_model_from_info(info(d=[0.0] * 5), "raw")
    assert plain == Intrinsics(600.0, 605.0, 322.0, 236.0, width=WIDTH, height=HEIGHT) and not plain.distorted
    assert camera_model_from_info(info(d=[], model=""), "raw") == plain


@pytest.mark.parametrize(("changes", "problem"), [
    ({"k": [1e-30, 0, 322, 0, 1e-30, 236, 0, 0, 1]}, "K's fx 1e-30 is no camera's for 640 pixels"),
    ({"k": [6e5, 0, 322, 0, 6e5, 236, 0, 0, 1]}, "K's fx 600000 is no camera's"),
    ({"k": [600, 0, 322, 0, 2, 236, 0, 0, 1]}, "K's fy 2 is no camera's for 480 pixels"),
    ({"k": [math.nan, 0, 322, 0, 605, 236, 0, 0, 1]}, "not finite"),
    ({"d": [math.inf, 0, 0, 0, 0]}, "not finite"),
    ({"k": [0.0] * 9}, "not calibrated"),
    ({"k": [600, 0, 900, 0, 605, 236, 0, 0, 1]}, r"principal point \(900, 236\) lies outside the 640x480 image"),
    ({"k": [600, 0, 322, 0, 605, -5, 0, 0, 1]}, "principal point"),
    ({"model": "kannala_brandt"}, "distortion model 'kannala_brandt' is not one of"),
    ({"d": [0.1, 0.2]}, "plumb_bob distortion needs 5 coefficients, D has 2"),
    ({"width": 0}, "image size 0x480 is empty"),
    # Coefficients no lens has, which OpenCV's undistortion takes to NaN or to rays far outside the image: once
    # non-finite planes in estimate_poses (LinAlgError, the frame's poses lost).
    ({"d": [-10, 0, 0, 0, 0]}, r"plumb_bob distortion D \[-10.0, 0.0, 0.0, 0.0, 0.0\] is no lens's"),
    ({"model": "rational_polynomial", "d": [0, 0, 0, 0, 0, 1000, 0, 0]}, "is no lens's: undone, it takes some"),
    ({"model": "equidistant", "d": [-1, 0, 0, 0]}, "beyond a 170-degree field of view"),
])
def test_intrinsics_that_cannot_be_a_camera_are_refused(changes, problem):
    with pytest.raises(CameraInfoError, match=problem):
        camera_model_from_info(info(**changes), "raw")


def test_rectified_checks_p_and_unknown_geometry_is_an_error():
    with pytest.raises(CameraInfoError, match="P's fx"):
        camera_model_from_info(info(p=[1e-30, 0, 318, 0, 0, 585, 241, 0, 0, 0, 1, 0]), "rectified")
    with pytest.raises(ValueError, match="camera geometry must be one of"):
        camera_model_from_info(info(), "undistorted")
