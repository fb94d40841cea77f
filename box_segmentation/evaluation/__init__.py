"""Evaluation tools, not runtime: COCO scoring, SCD's folder layout, rosbag datasets and replay.

Needs pycocotools, rosbags and tqdm (requirements-robot.txt); the node never imports this package.
"""
