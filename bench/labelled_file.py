"""Issue #16's thyroid case through the command line, without and with a label column.

    python -m bench.labelled_file             # needs ../shared/data (ADBench thyroid); ~10 min on two cores

Writes ADBench thyroid (3,772 rows, 93 anomalies) as a CSV with a ``label`` column three ways:
no column at all; every anomaly marked ``1`` and the other rows blank; half the anomalies
marked (every other one) and the rest blank. Each file is trained on with ``stream-ae train``
at its defaults (0.1 % target) and scored with ``stream-ae score --label-column label``
against the fully marked file; the commands' own lines are printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from trainer.evaluate import load_adbench


def write_csv(path: Path, X: np.ndarray, marks: list[str] | None) -> Path:
    header = [f"x{j}" for j in range(X.shape[1])] + (["label"] if marks is not None else [])
    lines = [",".join(header)]
    for n, row in enumerate(X.tolist()):
        lines.append(",".join([repr(float(v)) for v in row] + ([marks[n]] if marks is not None else [])))
    path.write_text("\n".join(lines) + "\n")
    return path


def main(data_dir: Path = Path("../shared/data")) -> None:
    X, y = load_adbench(data_dir, "thyroid")
    anomalies = np.flatnonzero(y == 1)
    half = set(anomalies[::2].tolist())
    cli = str(Path(sys.executable).parent / "stream-ae")
    env = {**os.environ, "COLUMNS": "200"}  # the commands write to stderr, wrapped to the terminal's width
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        marked = write_csv(work / "marked.csv", X, ["1" if v == 1 else "" for v in y.tolist()])
        files = {
            "no labels": (write_csv(work / "plain.csv", X, None), []),
            "every anomaly marked": (marked, ["--label-column", "label"]),
            "half the anomalies marked": (
                write_csv(work / "half.csv", X, ["1" if i in half else "" for i in range(len(y))]),
                ["--label-column", "label"],
            ),
        }
        for name, (path, label_args) in files.items():
            model = work / path.stem
            trained = subprocess.run(
                [cli, "train", str(path), "--out", str(model), "--device", "cpu", *label_args],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            scored = subprocess.run(
                [cli, "score", str(model), str(marked), "--label-column", "label", "--out", str(work / "s.csv")],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            print(f"{name}:")
            for line in (trained.stderr + scored.stderr).splitlines():
                if line.strip() and not line.lstrip().startswith("training"):
                    print(f"  {line.strip()}")


if __name__ == "__main__":
    main()
