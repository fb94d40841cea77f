"""Carton instance segmentation for depalletizing robots."""

# The generated message modules (box_segmentation.msg) may be installed in another
# folder than this source tree (the pip development set-up installs them into the venv);
# extend_path lets the package span both.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
