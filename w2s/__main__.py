"""``python -m w2s ...`` (what ``torchrun`` and ``accelerate launch -m w2s`` call)."""

import sys

from w2s.cli import main

if __name__ == "__main__":
    try:
        main()
        code = 0
    except SystemExit as e:  # how main() ends on an error, a help page, or an abort
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if "torch.distributed" in sys.modules:  # a launch may have set up a process group
        from w2s.train.launch import end_launch

        end_launch(code)  # leaves the process group and skips interpreter shutdown
    sys.exit(code)
