"""``python -m tests.worker.sigterm_child PATH``: writes its pid to PATH.ready, waits; SIGTERM writes PATH."""

import os
import signal
import sys
import time


def main(path: str) -> None:
    def stop(*_) -> None:
        with open(path, "w") as f:
            f.write("stopped")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    with open(path + ".ready", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1])
