"""Plain functions and constants the test modules share (``from helpers import cli``); the
shared fixtures are in conftest.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(),
                                    reason="torchrun not installed next to this python")


MACPO_MODELS = ("tiny:llama-1x32+toy-preference@5", "tiny:gpt2-1x32+toy-preference@5",
                "tiny:llama-2x32+toy-preference@5")
"""``w2s macpo``'s tiny test models: two weak teachers and the strong student."""
MACPO_TINY = ["--weak", f"{MACPO_MODELS[0]},{MACPO_MODELS[1]}", "--strong", MACPO_MODELS[2],
              "--task", "toy-preference", "--iterations", "1", "--n-train", "24", "--n-test",
              "6", "--judge", "vader", "--sft-max-steps", "2", "--dpo-max-steps", "2",
              "--sft-batch-size", "8", "--sft-micro-batch-size", "8", "--dpo-batch-size", "4",
              "--dpo-micro-batch-size", "4", "--max-new-tokens", "8", "--max-len", "96",
              "--generation-batch-size", "16"]
"""A fast ``w2s macpo`` run on them (one iteration, two steps a training)."""


def flags(options: dict[str, str], **changes: str) -> list[str]:
    """``options`` (``{"n-eval": "4"}``) with ``changes`` (``n_eval="8"``) applied, as CLI flags
    ``["--n-eval", "8", ...]``: a test module's tiny run, varied per test."""
    merged = {**options, **{k.replace("_", "-"): v for k, v in changes.items()}}
    return [part for key, value in merged.items() for part in (f"--{key}", value)]


def cli(args: list[str], entry=None, **kwargs) -> int:
    """Run the CLI ``entry`` (``w2s.cli.main`` unless given) on ``args``, with ``kwargs``; its
    exit code (it always ends by raising SystemExit)."""
    if entry is None:
        from w2s.cli import main as entry
    with pytest.raises(SystemExit) as exit_info:
        entry(args, **kwargs)
    return exit_info.value.code


def run_cli(args: list[str], capsys, entry=None, **kwargs) -> tuple[int, str, str]:
    """:func:`cli`, and what it printed: (exit code, stdout, stderr)."""
    code = cli(args, entry, **kwargs)
    out = capsys.readouterr()
    return code, out.out, out.err


def fan_out(method: str, args: list[str], run_dir: Path, jobs: list[str]) -> dict:
    """``w2s METHOD ARGS --launcher local --workers 2`` into ``run_dir``: its metrics, after
    checking that the sweep ran as ``jobs`` and the parent's pass trained nothing."""
    assert cli([method, *args, "--launcher", "local", "--workers", "2",
                "--run-dir", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trained_models"] == 0  # the jobs trained everything
    assert sorted(p.name for p in (run_dir / "jobs").iterdir() if p.is_dir()) == jobs
    return metrics


def in_one_process(method: str, args: list[str], run_dir: Path, cache_dir: Path) -> dict:
    """The same sweep in one process, on a fresh cache (``cache_dir`` moved aside to
    used-cache): its metrics."""
    cache_dir.rename(cache_dir.with_name("used-cache"))
    assert cli([method, *args, "--run-dir", str(run_dir)]) == 0
    return json.loads((run_dir / "metrics.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file, one a line."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(args: list[str], nproc: int, *, timeout: float, env: dict | None = None,
                  cwd: Path | None = None) -> None:
    """``python ARGS`` in one process (``nproc`` 1), or in ``nproc`` under torchrun on
    127.0.0.1; one thread each, offline, with ``env`` added. Fails the test, showing the end of
    the output, unless it exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


class LocalServer:
    """An HTTP server on 127.0.0.1 (a port of its own) for the tests' fake APIs: a subclass
    makes its request handler and calls :meth:`serve`; ``url`` is then the API's /v1 root."""

    def serve(self, handler) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def launch_env(config: str, nproc: int) -> dict[str, str]:
    """What `accelerate launch --config_file recipes/accelerate/<config>` puts in the
    environment of each process (accelerate's own launch code, no process started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args([
        "--config_file", str(ROOT / "recipes/accelerate" / config),
        "--num_processes", str(nproc), "-m", "w2s"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items()
            if k.startswith(("FSDP_", "ACCELERATE_USE_", "ACCELERATE_DEEPSPEED_",
                             "ACCELERATE_CONFIG_DS_"))}


def need_deepspeed() -> None:
    """Skip without DeepSpeed (an optional extra), unless the run requires it (make test)."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        if os.environ.get("W2S_REQUIRE_DEEPSPEED") == "1":
            pytest.fail("W2S_REQUIRE_DEEPSPEED=1 but deepspeed is not installed "
                        "(pip install -e '.[deepspeed]')")
        pytest.skip("deepspeed is not installed (pip install -e '.[deepspeed]')")


# Script text, for the training scripts test_train_distributed.py and test_train_sharded.py
# launch: ``seqs``, 17 sequences of 8 tokens below 64 (a random 4-token prompt, twice), drawn
# from their own generator.
TOY_SEQUENCES = textwrap.dedent("""\
    g = torch.Generator().manual_seed(1)
    seqs = []
    for _ in range(17):
        prompt = torch.randint(3, 64, (4,), generator=g)
        seqs.append(torch.cat([prompt, prompt]))
""")


def long_context_judge(folder: Path) -> Path:
    """A tiny llama saved with room for a benchmark's judge prompt (AlpacaEval's, MT-Bench's and
    Arena-Hard's run to thousands of the tiny tokenizer's byte tokens; rotary positions, so a
    longer context needs no new weights): an offline ``llm:`` judge for end-to-end tests."""
    from w2s.models import load_causal_lm

    model, tok = load_causal_lm("tiny:llama-1x32", device="cpu", seed=0)
    model.config.max_position_embeddings = tok.model_max_length = 8192
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
