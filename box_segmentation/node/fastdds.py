"""The Fast DDS profile that lets camera-sized messages pass between processes on one host (config/, README)."""

import os
from pathlib import Path

PROFILE = "fastdds_large_frames.xml"


def profile_path() -> Path:
    """config/fastdds_large_frames.xml of the source tree, or of the installed package's share folder."""
    source = Path(__file__).resolve().parents[2] / "config" / PROFILE
    if source.exists():
        return source
    from ament_index_python.packages import get_package_share_directory  # installed with colcon

    return Path(get_package_share_directory("box_segmentation")) / "config" / PROFILE


def use_profile(environ=os.environ) -> None:
    """Has the DDS participants of this process (and of the processes it starts) load the profile, unless
    FASTDDS_DEFAULT_PROFILES_FILE already names one. Fast DDS reads it once: call before rclpy.init."""
    environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile_path()))
