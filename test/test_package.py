"""package.xml is valid and declares what the installed code imports."""

import ast
import sys
from pathlib import Path

from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]

# Import name -> the rosdep key package.xml declares for it.
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
    "pycocotools": "python3-pycocotools",
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
    missing = {name for name in imported if ROSDEP_KEYS[name] not in runtime}
    assert not missing, f"package.xml lacks exec_depend for: {sorted(ROSDEP_KEYS[n] for n in missing)}"
