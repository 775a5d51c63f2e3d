"""Run the standalone inference server: ``python -m api.inference --model DIR --adapter NAME=DIR ...``."""

from __future__ import annotations

import argparse

from esft.serving import EngineConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api.inference", description=__doc__)
    parser.add_argument("--model", required=True, help="base model directory (save_pretrained layout)")
    parser.add_argument("--name", default=None, help="`model` name of the base model (default: folder name)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="an adapter to serve")
    parser.add_argument("--batching", choices=["mixed", "swap"], default="mixed")
    parser.add_argument("--cache-bytes", type=int, default=EngineConfig.cache_bytes)
    parser.add_argument("--max-batch-size", type=int, default=EngineConfig.max_batch_size)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    adapters = dict(item.split("=", 1) for item in args.adapter)

    import uvicorn

    from api.inference.app import create_inference_app

    config = EngineConfig(batching=args.batching, cache_bytes=args.cache_bytes, max_batch_size=args.max_batch_size)
    app = create_inference_app(args.model, adapters, config=config, base_name=args.name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
