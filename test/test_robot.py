"""The package as an integrator builds and runs it on a robot.

colcon (from PyPI) builds a clean copy of this checkout in a workspace outside the repository, plain
and with --symlink-install; the dev venv stands in for the ROS install underneath (ament, rosidl,
rclpy and the message packages, from the ROS wheels). The installed segment_node, started from a
shell that sourced install/setup.bash as launch starts it, answers a real image over DDS and stops
cleanly on repeated SIGINT or SIGTERM. Where the ros2 CLI and launch are installed (a ROS machine;
they are not on PyPI), `ros2 launch` runs too.
"""

import ast
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from node_harness import IMAGE_TOPIC, Probe, carton_image

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
PACKAGE = "box_segmentation"
BUILDS = {"plain": [], "symlink": ["--symlink-install"]}
READY = "active:"


def underlay_env() -> dict:
    """A shell with the underlay active: its tools first on PATH, its prefix first on the ament and CMake paths."""
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for name in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
        env[name] = os.pathsep.join(filter(None, [str(VENV), os.environ.get(name)]))
    return env


def copy_checkout(destination: Path) -> None:
    """The files a clone of this checkout would have: the tracked ones and new ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the checkout is not there
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A colcon workspace with the package in src/, built into install_plain/ and install_symlink/."""
    root = tmp_path_factory.mktemp("robot_ws")
    copy_checkout(root / "src" / PACKAGE)
    for build, flags in BUILDS.items():
        command = ["colcon", "build", "--packages-select", PACKAGE, *flags, "--build-base", f"build_{build}",
                   "--install-base", f"install_{build}", "--cmake-args", "-DBUILD_TESTING=OFF"]
        # COLCON_HOME of its own: a user's colcon defaults (e.g. symlink-install) must not change the builds.
        done = subprocess.run(command, cwd=root, env={**underlay_env(), "COLCON_HOME": str(root / "colcon_home")},
                              capture_output=True, text=True, timeout=600)
        log = root / "log" / "latest_build" / PACKAGE / "stdout_stderr.log"
        assert done.returncode == 0, done.stdout[-2000:] + (log.read_text()[-4000:] if log.exists() else "")
    return root


def sourced(workspace: Path, build: str, command: str) -> list[str]:
    """command in a bash that sourced the build's install/setup.bash, as a user's terminal would have."""
    return ["bash", "-c", f". {shlex.quote(str(workspace / f'install_{build}' / 'setup.bash'))} && {command}"]


IMPORTED = """
import sys
import box_segmentation
from ament_index_python.packages import get_package_share_directory
from box_segmentation.msg import BoxMasks
print(repr(box_segmentation.__doc__))
print(box_segmentation.__file__)
print(sys.modules[BoxMasks.__module__].__file__)
print(get_package_share_directory("box_segmentation"))
"""


@pytest.mark.parametrize("build", BUILDS)
def test_colcon_build_installs_the_package_node_launch_and_config(workspace, build):
    prefix = workspace / f"install_{build}" / PACKAGE
    assert os.access(prefix / "lib" / PACKAGE / "segment_node", os.X_OK)
    share = prefix / "share" / PACKAGE
    assert (share / "config" / "segment.yaml").read_text() == (REPO / "config" / "segment.yaml").read_text()
    compile((share / "launch" / "segment.launch.py").read_text(), "segment.launch.py", "exec")
    # Every module of the package, beside the generated messages.
    installed = next((prefix / "lib").glob(f"python3*/site-packages/{PACKAGE}"))
    sources = {path.relative_to(REPO) for path in (REPO / PACKAGE).rglob("*.py")}
    assert sources and all((installed.parent / path).is_file() for path in sources)

    done = subprocess.run(sourced(workspace, build, f"python -c {shlex.quote(IMPORTED)}"), cwd=workspace,
                          env=underlay_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    doc, package_file, message_file, share_directory = done.stdout.splitlines()
    # The project's own __init__.py, not the empty one rosidl writes beside the generated messages.
    assert doc == repr(ast.get_docstring(ast.parse((REPO / PACKAGE / "__init__.py").read_text()))) != "None"
    # Both from the install, neither from this checkout or the dev venv.
    assert Path(package_file) == installed / "__init__.py"
    assert Path(message_file).is_relative_to(installed / "msg")
    assert Path(share_directory) == share


def start_installed_node(workspace: Path, checkpoint: Path, namespace: str) -> subprocess.Popen:
    """lib/box_segmentation/segment_node with the installed config, as launch starts it."""
    prefix = workspace / "install_plain" / PACKAGE
    command = [str(prefix / "lib" / PACKAGE / "segment_node"), "--ros-args", "-r", "__node:=segment_node",
               "-r", f"__ns:={namespace}", "--params-file", str(prefix / "share" / PACKAGE / "config" / "segment.yaml"),
               "-p", f"checkpoint:={checkpoint}", "-r", f"image:={IMAGE_TOPIC}"]
    return subprocess.Popen(sourced(workspace, "plain", "exec " + shlex.join(command)), cwd=workspace,
                            env=underlay_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def installed_nodes(workspace, tiny_checkpoint):
    """Two installed nodes, their masks on /box_masks and /second/box_masks; loaded side by side."""
    nodes = {"/box_masks": start_installed_node(workspace, tiny_checkpoint, "/"),
             "/second/box_masks": start_installed_node(workspace, tiny_checkpoint, "/second")}
    yield nodes
    for node in nodes.values():
        if node.poll() is None:
            node.kill()
            node.communicate()


def request_masks(probe: Probe, nodes: dict, topic: str):
    """An image to the nodes, and the BoxMasks that answers it on topic (retried while the nodes start)."""
    def image():
        for node in nodes.values():
            assert node.poll() is None, f"segment_node exited:\n{node.communicate()[0]}"
        return probe.image(carton_image(0))

    return probe.request(image, topic=topic, attempts=60, timeout=2.0)


def test_installed_node_answers_an_image_with_box_masks(installed_nodes, probe):
    for topic in installed_nodes:
        image, result = request_masks(probe, installed_nodes, topic)
        assert result.header == image.header and (result.height, result.width) == (image.height, image.width)
        assert result.boxes and all(len(box.mask) == box.roi.width * box.roi.height > 0 for box in result.boxes)


def test_repeated_sigint_and_sigterm_stop_the_installed_node_cleanly(installed_nodes, probe):
    """Ctrl-C under `ros2 launch` reaches the node twice (the terminal's SIGINT, then launch's own), and a
    supervisor may repeat SIGTERM: the second one lands while the first one's shutdown runs."""
    for topic in installed_nodes:
        request_masks(probe, installed_nodes, topic)  # both up and answering
    probe.images.publish(probe.image(carton_image(1)))  # a frame in hand: shutdown waits for it
    time.sleep(0.05)
    for node, stop in zip(installed_nodes.values(), (signal.SIGINT, signal.SIGTERM), strict=True):
        node.send_signal(stop)
        time.sleep(0.05)
        node.send_signal(stop)
    for node in installed_nodes.values():
        output = node.communicate(timeout=60)[0]
        assert node.returncode == 0, output
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output


BRINGUP_LAUNCH = """
from launch import LaunchDescription
from launch.actions import ExecuteProcess, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    segment = PathJoinSubstitution([FindPackageShare("box_segmentation"), "launch", "segment.launch.py"])
    return LaunchDescription([ExecuteProcess(cmd=["sleep", "600"]),
                              IncludeLaunchDescription(PythonLaunchDescriptionSource(segment))])
"""


def ros2_launch(workspace: Path, *arguments: str) -> subprocess.Popen:
    """`ros2 launch ...` in its own process group, as in a terminal."""
    command = shlex.join(["ros2", "launch", *arguments])
    return subprocess.Popen(sourced(workspace, "plain", "exec " + command), cwd=workspace, env=underlay_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def finish(launch: subprocess.Popen, timeout: float) -> str:
    """The rest of launch's output once it has ended by itself; killed with its group if it has not."""
    try:
        return launch.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)
        raise AssertionError(f"ros2 launch still running after {timeout} s:\n{launch.communicate()[0]}") from None


def read_until(process: subprocess.Popen, text: str) -> str:
    """The output up to and including the first line holding text, or all of it if the process ends first."""
    output = ""
    for line in process.stdout:
        output += line
        if text in line:
            break
    return output


def test_ros2_launch_starts_the_node_with_its_arguments_and_stops_with_it(workspace, tiny_checkpoint, tmp_path):
    pytest.importorskip("ros2launch")  # the ros2 CLI and launch: a ROS install, not PyPI
    launches = {  # arguments -> what the node's ready line says
        (): "raw images from /camera/color/image_raw (best_effort), masks on /box_masks",
        ("device:=cpu", "namespace:=cam1", "image_topic:=/cam1/image_raw"):
            "on cpu; raw images from /cam1/image_raw (best_effort), masks on /cam1/box_masks",
    }
    for arguments, ready in launches.items():
        launch = ros2_launch(workspace, PACKAGE, "segment.launch.py", f"checkpoint:={tiny_checkpoint}", *arguments)
        output = read_until(launch, READY)
        assert ready in output, output
        os.killpg(launch.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        output += finish(launch, timeout=60)
        assert "process has finished cleanly" in output and "Traceback" not in output, output

    # A node that cannot start ends the launch, its FATAL line the node's last; also a robot's bring-up
    # that includes segment.launch.py among processes that would otherwise run on.
    bringup = tmp_path / "bringup.launch.py"
    bringup.write_text(BRINGUP_LAUNCH)
    launch = ros2_launch(workspace, str(bringup), f"checkpoint:={tmp_path / 'missing.pt'}")
    output = finish(launch, timeout=60)
    node_lines = [line for line in output.splitlines() if line.startswith("[segment_node-")]
    assert "[FATAL]" in node_lines[-1] and "does not exist" in node_lines[-1], output
    assert "process has died" in output, output
