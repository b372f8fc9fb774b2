"""A local stand-in of the CPSign CLI for tests (the jar is not installable here).

It records each command line (one JSON line per call in $CPSIGN_STANDIN_LOG), checks
the arguments the engine must pass, writes the file named by --model-out, and fails
like CPSign does (message on stderr, non-zero exit) when asked to train a split listed
in $CPSIGN_STANDIN_FAIL_SPLITS. It trains nothing.

`predict` writes prediction intervals for the rows of the predict file: the first
$CPSIGN_STANDIN_COVERAGE share of them (default 0.9) contain the row's label, the rest
miss it, so a test chooses the coverage the validity check sees."""

import json
import os
import sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["CPSIGN_STANDIN_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
program = args[0]
if (
    os.environ.get("CPSIGN_STANDIN_LICENSE")
    and args[args.index("--license") + 1] != os.environ["CPSIGN_STANDIN_LICENSE"]
):
    sys.exit("standin: wrong or missing --license")
if program == "train":
    splits = args[args.index("--splits") + 1].split(",")
    failing = set(filter(None, os.environ.get("CPSIGN_STANDIN_FAIL_SPLITS", "").split(",")))
    if failing & set(splits):
        print(
            f"ERROR: training of split(s) {','.join(sorted(failing & set(splits)))} failed: LIBLINEAR did not converge",
            file=sys.stderr,
        )
        sys.exit(3)
if program == "predict":
    import csv

    confidence = args[args.index("--confidences") + 1]
    with open(args[args.index("--predict-file") + 2], newline="") as f:
        labels = [float(row["label"]) for row in csv.DictReader(f)]
    covered = round(float(os.environ.get("CPSIGN_STANDIN_COVERAGE", "0.9")) * len(labels))
    with open(args[args.index("--output") + 1], "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["label", f"Prediction_interval_lower_{confidence}", f"Prediction_interval_upper_{confidence}"])
        for i, y in enumerate(labels):
            centre = y if i < covered else y + 5
            out.writerow([y, centre - 1, centre + 1])
if "--model-out" in args:
    Path(args[args.index("--model-out") + 1]).write_bytes(b"standin model")
