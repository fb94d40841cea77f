"""Speed of the synthetic dataset generator: images per second, everything included (render, JPEG, PNG, json),
for each style side by side: "plain" is the generator before the switches (the same bytes), the baseline.

    python benchmarks/bench_synthetic.py --images 200
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import synthetic  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--styles", nargs="+", choices=synthetic.STYLES, default=list(synthetic.STYLES))
    args = parser.parse_args()
    for name in args.styles:
        with tempfile.TemporaryDirectory() as out:
            start, cpu = time.perf_counter(), time.process_time()
            synthetic.generate_dataset(out, args.images, 0, args.seed, args.width, args.height, synthetic.STYLES[name])
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        # CPU seconds as well: on a shared machine they say more than the wall clock
        print(f"{name:8s} {args.images} images at {args.width}x{args.height}: {seconds:.1f} s, "
              f"{args.images / seconds:.1f} images/s; {cpu / args.images * 1000:.0f} CPU ms per image")


if __name__ == "__main__":
    main()
