"""A local stand-in of the CPSign CLI for tests (the jar is not installable here).

It records each command line (one JSON line per call in $CPSIGN_STANDIN_LOG), checks
the arguments the engine must pass, writes the file named by --model-out, and fails
like CPSign does (message on stderr, non-zero exit) when asked to train a split listed
in $CPSIGN_STANDIN_FAIL_SPLITS. It trains nothing."""
import json
import os
import sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["CPSIGN_STANDIN_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
program = args[0]
if os.environ.get("CPSIGN_STANDIN_LICENSE") and args[args.index("--license") + 1] != os.environ["CPSIGN_STANDIN_LICENSE"]:
    sys.exit("standin: wrong or missing --license")
if program == "train":
    splits = args[args.index("--splits") + 1].split(",")
    failing = set(filter(None, os.environ.get("CPSIGN_STANDIN_FAIL_SPLITS", "").split(",")))
    if failing & set(splits):
        print(f"ERROR: training of split(s) {','.join(sorted(failing & set(splits)))} failed: "
              "LIBLINEAR did not converge", file=sys.stderr)
        sys.exit(3)
if "--model-out" in args:
    Path(args[args.index("--model-out") + 1]).write_bytes(b"standin model")
