"""`python -m box_segmentation.node --ros-args ...`: segment_node without ROS tooling."""

import sys

from box_segmentation.node.node import main

sys.exit(main())
