"""What a person looks at: the debug overlay image and RViz markers of the picks (messages, no rclpy)."""

import cv2
import numpy as np
from geometry_msgs.msg import Point, Pose, Vector3
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from box_segmentation.msg import BoxMasks
from box_segmentation.pick_pose import CartonPose

MARKER_THICKNESS = 0.01  # metres: the top face drawn as a thin box
LABEL_SIZE = 0.05  # metres: height of the pick rank's text, raised this far off the top face


def instance_colour(box_id: int) -> np.ndarray:
    """RGB uint8 colour of an instance, the same in the overlay and the markers."""
    return np.array(cv2.applyColorMap(np.uint8([[box_id * 47 % 256]]), cv2.COLORMAP_JET)[0, 0][::-1])


def pick_markers(header, picks: list, poses: list[CartonPose]) -> MarkerArray:
    """RViz markers of the boxes with OK poses (picks, in pick order): each top face as a thin box, its rank
    as text above it; a DELETEALL first clears the last frame's."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for box in picks:
        red, green, blue = instance_colour(box.id) / 255.0
        markers.append(Marker(header=header, ns="cartons", id=box.id, type=Marker.CUBE, action=Marker.ADD,
                              pose=box.pose, scale=Vector3(x=box.top_length, y=box.top_width, z=MARKER_THICKNESS),
                              color=ColorRGBA(r=red, g=green, b=blue, a=0.7)))
        label = poses[box.id].position + LABEL_SIZE * poses[box.id].normal  # off the face, toward the camera
        markers.append(Marker(header=header, ns="pick_rank", id=box.id, type=Marker.TEXT_VIEW_FACING,
                              action=Marker.ADD, text=str(box.pick_rank),
                              pose=Pose(position=Point(x=float(label[0]), y=float(label[1]), z=float(label[2]))),
                              scale=Vector3(z=LABEL_SIZE), color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)))
    return MarkerArray(markers=markers)


def draw_overlay(rgb: np.ndarray, result: BoxMasks) -> np.ndarray:
    """The image with each instance's mask tinted, its rotated rectangle and its label."""
    overlay = rgb.copy()
    for box in result.boxes:
        colour = instance_colour(box.id)
        roi = box.roi
        mask = np.frombuffer(bytes(box.mask), np.uint8).reshape(roi.height, roi.width).astype(bool)
        region = overlay[roi.y_offset:roi.y_offset + roi.height, roi.x_offset:roi.x_offset + roi.width]
        region[mask] = (region[mask] // 2 + colour // 2).astype(np.uint8)
        r = box.rotated_rect
        corners = cv2.boxPoints(((r.center_x, r.center_y), (r.length, r.width), np.degrees(r.angle)))
        cv2.polylines(overlay, [corners.round().astype(np.int32)], True, colour.tolist(), 1)
        cv2.putText(overlay, f"{box.class_name} {box.score:.2f}", (roi.x_offset, max(roi.y_offset - 2, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour.tolist(), 1)
    return overlay
