"""package.xml is valid and declares what the installed code imports."""

import ast
import sys
from pathlib import Path

from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]
# Test-only keys, checked in rosdistro's rosdep/python.yaml like the ones below.
TEST_KEYS = {"python3-pytest", "python3-catkin-pkg"}

# Import name -> the rosdep key package.xml declares for it, each checked in ros/rosdistro (ROS packages
# in the distributions' files, the python3-* keys in rosdep/python.yaml), or None where rosdistro has no
# key: rosdep cannot install those, and requirements-robot.txt lists them for pip.
ROSDEP_KEYS = {
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "ament_index_python": "ament_index_python",
    "std_msgs": "std_msgs",
    "sensor_msgs": "sensor_msgs",
    "geometry_msgs": "geometry_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "visualization_msgs": "visualization_msgs",
    "builtin_interfaces": "std_msgs",  # comes with std_msgs
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "torch": "python3-torch",
    "torchvision": "python3-torchvision",
    "pycocotools": None,
    "tqdm": "python3-tqdm",
    "rosbags": "python3-rosbags-pip",
}


def imported_top_level_modules(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"box_segmentation"}


def test_package_xml_parses_as_format_3_ament_cmake():
    package = parse_package(str(REPO / "package.xml"))
    package.validate()
    assert package.name == "box_segmentation"
    assert package.package_format == 3
    assert package.get_build_type() == "ament_cmake"
    assert {d.name for d in package.member_of_groups} == {"rosidl_interface_packages"}


def test_package_xml_declares_every_runtime_import():
    package = parse_package(str(REPO / "package.xml"))
    runtime = {d.name for d in package.exec_depends + package.build_export_depends}
    imported = imported_top_level_modules(REPO / "box_segmentation")
    assert "rclpy" in imported, "the node package should import rclpy"
    unknown = imported - ROSDEP_KEYS.keys()
    assert not unknown, f"imports with no known rosdep key (add them here and to package.xml): {unknown}"
    missing = {name for name in imported if ROSDEP_KEYS[name] and ROSDEP_KEYS[name] not in runtime}
    assert not missing, f"package.xml lacks exec_depend for: {sorted(ROSDEP_KEYS[n] for n in missing)}"
    pip_only = {name for name in imported if ROSDEP_KEYS[name] is None}
    requirements = (REPO / "requirements-robot.txt").read_text().splitlines()
    robot_requirements = {line.split("#")[0].strip() for line in requirements}
    assert pip_only <= robot_requirements, f"requirements-robot.txt lacks: {sorted(pip_only - robot_requirements)}"


def test_package_xml_uses_only_rosdep_keys_that_exist():
    package = parse_package(str(REPO / "package.xml"))
    keys = {d.name for d in package.build_depends + package.buildtool_depends + package.exec_depends
            + package.build_export_depends + package.test_depends}
    checked = set(ROSDEP_KEYS.values()) | TEST_KEYS
    unchecked = {key for key in keys if key.startswith("python3-") and key not in checked}
    assert not unchecked, f"keys not checked in rosdistro's rosdep/python.yaml: {sorted(unchecked)}"
