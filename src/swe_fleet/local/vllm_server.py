"""A real vLLM OpenAI-compatible server (CPU build) as a child process on a free loopback port.

Used by the local stack's server-backend councils, the benchmarks and the tests that share one
server; the client side of such a server is :mod:`swe_fleet.llm.server`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from swe_fleet._processes import ManagedProcess, free_port, start_process, wait_for_http_ok
from swe_fleet.llm.cpu_threads import cpu_engine_env
from swe_fleet.spec import DEFAULT_KV_BLOCK_SIZE

log = structlog.get_logger(__name__)

#: Bound on a local vLLM server becoming healthy; measured ~36-40 s on 2 CPU cores (model load + warm-up).
VLLM_READY_TIMEOUT_S = 240.0

#: Environment a vLLM CPU server needs on this kind of machine (see NOTES-platform): offline model
#: loading and a KV cache size (without it the engine refuses to start on this VM's NUMA node).
#: Its threads are bound to every core this process may use, none held back
#: (:func:`swe_fleet.llm.cpu_threads.cpu_engine_env`).
VLLM_CPU_ENV: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


@dataclass
class VLLMServer:
    """A real vLLM OpenAI-compatible server (CPU build) on a free loopback port.

    Started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm serve`` CLI fails for
    the ``vllm-cpu`` dist name), always with ``--enforce-eager`` (the compiled bf16 path returns
    wrong text on CPU). Its engine core is a child of the server, in the same process group, so
    :meth:`stop` ends both.
    """

    workdir: Path
    #: The name clients put in the request's ``model`` field.
    served_model_name: str = "smollm2-135m"
    #: Added to (and overriding) :data:`VLLM_CPU_ENV` and this process's environment.
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    base_url: str = ""
    process: ManagedProcess | None = None

    def start(
        self,
        model_dir: Path,
        *,
        port: int | None = None,
        max_model_len: int = 2048,
        kv_block_size: int | None = DEFAULT_KV_BLOCK_SIZE,
        ready_timeout_s: float = VLLM_READY_TIMEOUT_S,
    ) -> VLLMServer:
        """Start the server on ``model_dir`` (an HF folder) and wait until ``/health`` answers 200.

        Raises:
            LocalStackError: the server exited, or was not healthy within ``ready_timeout_s``
                (the log tail is in the message).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir),
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-model-len", str(max_model_len),
            "--enforce-eager",
            "--dtype", "bfloat16",
            *(["--block-size", str(kv_block_size)] if kv_block_size else []),
        ]  # fmt: skip
        cores = os.sched_getaffinity(0)
        env = {**os.environ, **VLLM_CPU_ENV, **cpu_engine_env(len(cores), cores), **self.env}
        self.process = start_process("vllm-server", argv, self.workdir / f"vllm-{self.port}.log", env)
        started = time.monotonic()
        wait_for_http_ok(self.process, f"{self.base_url}/health", ready_timeout_s, what="the vLLM server")
        log.info("local.vllm.healthy", url=self.base_url, seconds=round(time.monotonic() - started, 1))
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()
