"""`python -m rmsprop_c bench` runs and reports against the ceiling (speed is not tested here)."""

import json
import subprocess
import sys


def test_quick_bench_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "rmsprop_c", "bench", "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ceil" in result.stdout
    report = json.loads(out.read_text())
    assert isinstance(report, dict) and report
    text = json.dumps(report)
    for expected in ("plain", "float32", "ceiling"):
        assert expected in text, f"{expected!r} missing from the JSON report"


def test_plot_without_matplotlib_or_with_it(tmp_path):
    plot = tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, "-m", "rmsprop_c", "bench", "--quick", "--sections", "sweep",
         "--no-torch", "--plot", str(plot)],
        capture_output=True, text=True, timeout=600)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result.returncode != 0 and "matplotlib" in (result.stdout + result.stderr)
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
