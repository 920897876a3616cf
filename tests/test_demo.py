"""plsc-demo --quick as a user runs it: real data built from fonts, 2-rank training, eval, ONNX export."""
import json
import os
import subprocess
import sys

DEMO = "import sys; from plsc.cli.demo import demo_main; sys.exit(demo_main())"  # plsc-demo


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-c", DEMO,
                           "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["ranks"] == 2 and s["steps"] > 0
    assert s["last_loss"] < 0.7 * s["first_loss"]
    assert s["accuracy"] > 0.6, s  # unseen characters; chance is 0.5 (the full demo reaches > 0.9)
    assert abs(s["onnx_accuracy"] - s["accuracy"]) <= 0.005, "the exported ONNX model verifies like the checkpoint"
    for p in s["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(s["onnx"]) and os.path.isfile(os.path.join(s["checkpoint"], "manifest.json"))
    assert (out / "data" / "train.rec").stat().st_size > 0 and (out / "data" / "fontfaces_val.bin").exists()
    assert "verification accuracy" in proc.stdout
    # progress on the terminal while training runs: a bar per ~10 % of the steps, with loss, speed and ETA
    bars = [line for line in proc.stdout.splitlines() if line.startswith("[demo] train [")]
    assert len(bars) >= 5 and all("loss" in b and "img/s" in b and "ETA" in b for b in bars), proc.stdout[-3000:]
    assert bars[-1].split("step ")[1].split()[0] == f"{s['steps']}/{s['steps']}"
    assert "[demo] train done in" in proc.stdout
    # a second run into the same folder is refused unless --force
    again = subprocess.run([sys.executable, "-c", DEMO,
                            "--quick", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already holds a demo run" in again.stderr
