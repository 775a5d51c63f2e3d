"""Rebuild the pretrained toy base model shipped in ``esft/synthetic/toy_pretrained`` (10-20 min on 2 CPU cores).

    python scripts/pretrained_toy.py [--work /tmp/toy-pretrained]
"""

from __future__ import annotations

import argparse

from esft.synthetic.pretrain import pretrain
from esft.synthetic.pretrained import ship


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/toy-pretrained", help="where pretraining writes (a cache)")
    args = parser.parse_args()
    report = pretrain(args.work)
    print(f"general exact match {report['general_mean']:.3f}: {report['general_scores']}")
    print(f"shipped -> {ship(args.work)}")


if __name__ == "__main__":
    main()
