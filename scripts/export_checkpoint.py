"""Strips a training checkpoint down to what deployment needs: model, settings, metrics.

    python scripts/export_checkpoint.py runs/x/best.pt models/carton_r18_synthetic.pt --half

The optimizer and scheduler state go; --half stores the weights as float16 (half the size; they
load back into a float32 model as they are).
"""

import argparse

from box_segmentation.model import load_model, read_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a checkpoint written by training/train.py")
    parser.add_argument("target", help="where to write the deployment checkpoint")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    args = parser.parse_args()
    payload = read_checkpoint(args.source)
    model, config = load_model(payload)
    save_checkpoint(args.target, model, config, metrics=payload["metrics"], half=args.half)
    print(f"wrote {args.target}: {config.arch} for {config.classes}, metrics {payload['metrics']}")


if __name__ == "__main__":
    main()
