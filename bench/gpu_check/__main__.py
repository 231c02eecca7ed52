"""python -m bench.gpu_check --out DIR [--smoke] [--device auto|cuda|cpu] [--only 1,3]

Exit codes: 0 every target met; 1 a target missed or a check stopped by an error (the report says
which); 2 bad arguments or a Python that lacks a package (one line names it and the fix); 3 no CUDA
device (one line; nothing was run). Only torch is imported before the device is known, so a machine
without CUDA hears so even if it lacks the project's other packages.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_CUDA = 0, 1, 2, 3


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu-check.md and gpu-check.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models and data: the harness, not a result")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: CUDA if present; the CPU only with --smoke")
    parser.add_argument("--only", type=_numbers, default=None, help="run only these checks, e.g. 1,3")
    return parser.parse_args(argv)


def _numbers(text: str) -> set[int]:
    try:
        numbers = {int(n) for n in text.split(",") if n.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--only takes check numbers 1-5 separated by commas, not {text!r}")
    if not numbers or not numbers <= {1, 2, 3, 4, 5}:
        raise argparse.ArgumentTypeError(f"--only takes check numbers 1-5 separated by commas, not {text!r}")
    return numbers


def pick_device(requested: str, smoke: bool) -> tuple[str | None, str]:
    """(device, why not) for the run: CUDA when asked for or present; the CPU only for the smoke run."""
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" or (requested == "auto" and not smoke):
        if has_cuda:
            return "cuda", ""
        return None, (f"no CUDA device here (torch {torch.__version__}: torch.cuda.is_available() is False); "
                      "nothing was checked. Run it on a GPU node, or add --smoke (GPU_CHECK_ARGS=--smoke) "
                      "to run the harness on the CPU")
    if requested == "cpu" and not smoke:
        return None, "--device cpu needs --smoke: the checks' figures mean something on a GPU only"
    return ("cuda" if has_cuda and requested == "auto" else "cpu"), ""


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device, why = pick_device(args.device, args.smoke)
    if device is None:
        print(f"gpu-check: {why}", file=sys.stderr)
        return EXIT_NO_CUDA if "CUDA" in why else EXIT_USAGE
    try:
        import torch

        from bench.gpu_check.run import run_checks
        from bench.gpu_check.sizes import GPU, SMOKE
    except ImportError as exc:
        print(f"gpu-check: {sys.executable} cannot import {exc.name or exc} ({exc}); run `make gpu-wheels` on a "
              "machine with internet, copy .wheels/ into this checkout and run `make gpu-check` again",
              file=sys.stderr)
        return EXIT_USAGE
    return run_checks(args.out, torch.device(device), SMOKE if args.smoke else GPU, args.only)


if __name__ == "__main__":
    sys.exit(main())
