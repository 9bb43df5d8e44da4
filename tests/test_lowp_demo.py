"""The low-precision demo: every mode trains, and the table and plot come out."""

import pytest

pytest.importorskip("ml_dtypes")

from rmsprop_c import demo  # noqa: E402
from rmsprop_c._demo_data import load_spirals_dataset  # noqa: E402
from rmsprop_c._demo_lowp import MODES, train  # noqa: E402


def test_every_mode_learns_something():
    dataset = load_spirals_dataset()
    for mode in MODES:
        history = train(dataset, mode, lr=1e-2, epochs=3, hidden=(16,))
        assert len(history) == 3
        assert history[-1]["train_loss"] < history[0]["train_loss"], mode
        assert 0 <= history[-1]["frozen"] <= 1


def test_float32_mode_is_the_plain_optimizer_and_stochastic_differs_from_nearest():
    dataset = load_spirals_dataset()
    nearest = train(dataset, "bfloat16 params, nearest", lr=1e-3, epochs=2, hidden=(16,))
    stochastic = train(dataset, "bfloat16 params, stochastic", lr=1e-3, epochs=2, hidden=(16,))
    assert nearest[-1]["train_loss"] != stochastic[-1]["train_loss"]
    # small updates: nearest rounding leaves more pushed weights where they were
    assert nearest[-1]["frozen"] > stochastic[-1]["frozen"]


def test_the_cli_prints_every_mode_and_draws_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "lowp.png"
    assert demo.main(["--low-precision", "--epochs", "2", "--seeds", "1",
                      "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    for mode in MODES:
        assert mode in out
    assert path.stat().st_size > 0
