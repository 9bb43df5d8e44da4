"""``python -m rmsprop_c bench``: it runs, writes JSON with every section, times contenders
interleaved, and its command line refuses bad input before any work starts.

Nothing here asserts a speed (that is the benchmarks' job): only what ran and was reported.
"""

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from rmsprop_c import __main__ as cli
from rmsprop_c import _kernels, bench
from rmsprop_c._bench_defs import LOOP_SIZES, MANY_TENSORS
from rmsprop_c._bench_loop import SCENARIOS, busy_machine
from rmsprop_c._bench_timing import Contender, measure, per_step

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``bench --quick --json`` run in a subprocess: (completed process, parsed JSON, path)."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "rmsprop_c", "bench", "--quick", "--json",
         str(path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(path.read_text()), path


def test_quick_run_reports_every_section(quick_run):
    result, report, _ = quick_run
    for section in bench.DEFAULT_SECTIONS:
        assert section in report, f"section {section!r} missing from the JSON"
    assert "distributed" not in report        # starts MPI jobs: only when asked for
    assert report["sweep"] and report["sweep"][0]["rows"][0]["fraction_of_ceiling"] > 0
    assert {case["model"] for case in report["models"]} == {"mlp", "transformer"}
    for title in ("same-traffic kernel and peers", "loop: float32 plain RMSprop.step",
                  "many tensors", "torch"):
        assert title in result.stdout


def test_loop_section_times_every_step_of_every_scenario(quick_run):
    _, report, _ = quick_run
    loop = report["loop"]
    assert {(row["scenario"], row["size"]) for row in loop["rows"]} == \
        {(scenario, size) for scenario in SCENARIOS for size in LOOP_SIZES}
    for row in loop["rows"]:
        for contender in ("default", "one_thread"):
            samples = row[contender]["samples"]
            assert len(samples) == row["steps"] == report["settings"]["loop_steps"]
            assert row[contender]["max"] == max(samples)
        assert row["ratio_median"] == row["default"]["median"] / row["one_thread"]["median"]
        assert row["ratio_mean"] == row["default"]["mean"] / row["one_thread"]["mean"]
    flat = {(row["case"], row["threads"]): row for case in loop["flat"] for row in case["rows"]}
    many = f"{MANY_TENSORS[0]}x{MANY_TENSORS[1]}"
    assert set(flat) == {(case, threads) for case in (many, "transformer")
                         for threads in ("default", "1 thread")}
    assert flat[(many, "default")]["tensors"] == MANY_TENSORS[0]
    assert flat[("transformer", "default")]["tensors"] == 148
    adagrad = loop["adagrad"]
    if report["machine"]["torch"] is None:
        assert adagrad["skipped"] == "torch is not installed"
    else:
        assert [row["threads"] for row in adagrad["rows"]] == report["settings"]["threads"]


def test_user_output_carries_no_targets_or_verdicts(quick_run):
    result, _, path = quick_run
    for text in (result.stdout, path.read_text()):
        assert not re.search(r"\b(PASS|MISS|MISSES)\b", text)
        assert "issue" not in text.lower()


def test_check_targets_reads_the_json(quick_run):
    _, _, path = quick_run
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "check_targets.py"), str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    lines = result.stdout.splitlines()
    statuses = [line.rsplit("  ", 1)[-1].strip() for line in lines
                if line.startswith(("default / 1-thread", "1-thread / default", "4096x256",
                                    "transformer float32", "16M float32 plain vs torch"))]
    assert len(statuses) == 3 * len(LOOP_SIZES) + 5
    assert set(statuses) <= {"holds", "MISSES", "not measured"}
    assert (result.returncode == 1) == ("MISSES" in result.stdout)
    # The quick run has no 16M sweep rows: those targets say so instead of a verdict.
    assert "not measured" in result.stdout


# ---------------------------------------------------------------------------------------
# Timing structure (what runs in which order; no time is asserted)


def _logging_contenders(log, names):
    return [Contender(name, lambda name=name: log.append(name)) for name in names]


def _collapse(log):
    return [name for index, name in enumerate(log) if index == 0 or log[index - 1] != name]


def test_measure_interleaves_contenders_and_keeps_every_sample():
    log = []
    timings = measure(_logging_contenders(log, "AB"), repeats=3, min_time=1e-4)
    # Calibration runs A's batches, then B's; then each repeat times A then B.
    assert _collapse(log) == ["A", "B"] * 4
    for name in "AB":
        assert len(timings[name]["samples"]) == 3 and timings[name]["number"] >= 1


def test_measure_runs_prepare_and_finish_around_every_batch():
    log = []
    contender = Contender("A", lambda: log.append("run"), prepare=lambda: log.append("prepare"),
                          finish=lambda: log.append("finish"))
    measure([contender], repeats=2, min_time=1e-4)
    batches = _collapse(log)
    assert batches == ["prepare", "run", "finish"] * 3


def test_per_step_alternates_and_runs_between_before_every_step():
    log = []
    timings = per_step(_logging_contenders(log, "AB"), steps=4,
                       between=lambda: log.append("between"))
    assert log == ["between", "A", "between", "B"] * 4
    assert len(timings["A"]["samples"]) == len(timings["B"]["samples"]) == 4


def test_busy_machine_stops_its_processes():
    with busy_machine(2) as spinners:
        assert len(spinners) == 2
        assert all(spinner.poll() is None for spinner in spinners)
    assert all(spinner.poll() is not None for spinner in spinners)


# ---------------------------------------------------------------------------------------
# Header and the torch section


def _settings():
    return {"llc": 32 << 20, "threads": [1, 2], "repeats": 3, "min_time": 0.002}


def test_header_shows_the_threading_policy_when_the_engine_has_one(monkeypatch):
    monkeypatch.setattr(_kernels, "threading_policy", lambda: {"decision": "serial"},
                        raising=False)
    assert "threading policy:\n  decision: serial" in bench._header(_settings(), None)
    monkeypatch.delattr(_kernels, "threading_policy")
    assert "threading policy" not in bench._header(_settings(), None)


def test_torch_section_reports_what_the_module_returns(monkeypatch, capsys):
    assert bench.torch_section(True, None, False) == {"skipped": "torch is not installed"}
    assert bench.torch_section(True, None, True) == {"skipped": "--no-torch"}
    fake = types.ModuleType("rmsprop_c._bench_torch")
    fake.run = lambda quick: {"title": "drop-in", "rows": [{"case": "x", "seconds": 2e-3,
                                                            "quick": quick}]}
    monkeypatch.setitem(sys.modules, "rmsprop_c._bench_torch", fake)
    result = bench.torch_section(True, object(), False)
    bench.print_torch(result)
    out = capsys.readouterr().out
    assert "drop-in" in out and "2.00 ms" in out and "True" in out


# ---------------------------------------------------------------------------------------
# Command line errors: named option, expected form, nothing started


@pytest.mark.parametrize("argv, option, expected", [
    (["--sizes", "1X"], "--sizes", "64K"),
    (["--sizes", ""], "--sizes", "64K"),
    (["--threads", "0"], "--threads", "1,2"),
    (["--threads", "two"], "--threads", "1,2"),
    (["--repeats", "x"], "--repeats", "whole number"),
    (["--min-time", "-1"], "--min-time", "number > 0"),
    (["--sections", "sweep,nope"], "--sections", "loop"),
    (["--variants", "adam"], "--variants", "centered"),
    (["--busy-processes", "0"], "--busy-processes", ">= 1"),
])
def test_bad_option_names_the_option_and_its_form(capsys, argv, option, expected):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"argument {option}:" in captured.err and expected in captured.err
    assert "<lambda>" not in captured.err and captured.out == ""


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_output_into_a_missing_directory_fails_before_any_work(capsys, tmp_path, option):
    target = tmp_path / "missing" / "out"
    with pytest.raises(SystemExit) as exit_info:
        bench.main([option, str(target)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"argument {option}:" in captured.err and "does not exist" in captured.err
    assert captured.out == ""              # no header: nothing was measured


def test_output_onto_a_directory_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--json", str(tmp_path)])
    assert "directory" in capsys.readouterr().err


def test_plot_without_the_sweep_section_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--sections", "loop", "--plot", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert "sweep" in capsys.readouterr().err


def test_unknown_command_says_it_is_unknown(capsys):
    assert cli.main(["benchmark"]) == 2
    captured = capsys.readouterr()
    assert "unknown command 'benchmark'" in captured.err
    assert "info, bench, demo" in captured.err
    assert cli.main(["--help"]) == 0 and "python -m rmsprop_c bench" in capsys.readouterr().out


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")        # the test extra installs it
    plot = tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, "-m", "rmsprop_c", "bench", "--quick", "--sections", "sweep",
         "--no-torch", "--sizes", "1K,4K", "--plot", str(plot)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # makes `import matplotlib` fail
    assert bench.main(["--quick", "--plot", str(tmp_path / "x.png")]) == 2
    captured = capsys.readouterr()
    assert "pip install matplotlib" in captured.err and captured.out == ""


def test_lowp_section_reports_every_family_against_float32_and_its_ceiling(quick_run):
    _, report, _ = quick_run
    from rmsprop_c import _bench_lowp
    if "skipped" in report["lowp"]:
        pytest.skip(report["lowp"]["skipped"])
    for case in report["lowp"]["cases"]:
        assert [row["family"] for row in case["rows"]] == list(_bench_lowp.FAMILIES)
        for row in case["rows"]:
            assert row["fraction_of_ceiling"] > 0 and row["speedup_over_float32"] > 0
            assert row["bytes_per_element"] == _bench_lowp.bytes_per_element(row["family"])
    assert [_bench_lowp.bytes_per_element(f) for f in _bench_lowp.FAMILIES] == [20, 16, 10, 10, 22]
