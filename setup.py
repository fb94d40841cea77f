"""pip install of the Python package (the CMake/ament build is in CMakeLists.txt)."""

from setuptools import find_packages, setup

setup(
    name="box_segmentation",
    version="0.1.0",
    description="Carton instance segmentation for depalletizing robots (ROS 2 + Mask R-CNN)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["box_segmentation", "box_segmentation.*"]),
    install_requires=["torch", "torchvision", "numpy", "opencv-python-headless", "pycocotools", "tqdm", "rosbags"],
    entry_points={"console_scripts": ["segment_node = box_segmentation.node.node:main"]},
)
