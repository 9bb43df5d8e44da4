"""Fuzzed checkpoints: a mutated state_dict or a damaged file either loads exactly or raises
CheckpointError with the optimizer unchanged; no other exception, no half-load."""

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rmsprop_c as rc

from test_contract_support import assert_same_state, frozen, make_optimizer

# derandomize and no database: the same examples on every run and no .hypothesis directory.
FUZZ_SETTINGS = settings(max_examples=250, derandomize=True, database=None, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])
SIZES = (3, 5, 2)

SPECIAL_NUMBERS = [0, 1, -1, 2 ** 62, 2 ** 62 + 1, 2 ** 63, 2 ** 64, -2 ** 63, 10 ** 30,
                   0.0, -0.0, 0.5, 1.0, 1e-300, 1e300, 1e39, float("nan"), float("inf"),
                   float("-inf")]
leaf = st.one_of(
    st.none(), st.booleans(), st.sampled_from(SPECIAL_NUMBERS),
    st.integers(min_value=-2 ** 70, max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.sampled_from(["false", "true", "0.1", "torch", "keras", "step"]),
    st.complex_numbers(max_magnitude=10),
    st.sampled_from([np.float32(0.5), np.float64(2.0), np.int64(3), np.bool_(True),
                     np.bool_(False), np.array(0.5), np.zeros(2), np.zeros((2, 2)),
                     np.array(["x"]), np.ma.array([1.0])]),
)
junk = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


def places(value, trail=()):
    """Every (container, key) inside a state_dict, arrays counted as leaves."""
    found = []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return found
    for key, item in items:
        found.append((value, key))
        found.extend(places(item))
    return found


def mutate_array(data, array):
    kind = data.draw(st.sampled_from(["poison", "astype", "reshape", "slice", "tolist"]))
    if kind == "poison":
        array = array.copy()
        index = data.draw(st.integers(0, array.size - 1))
        array.reshape(-1)[index] = data.draw(st.sampled_from(
            [np.nan, np.inf, -np.inf, -1.0, -0.0, 0.0, 1e30, 3.0]))
        return array
    if kind == "astype":
        return array.astype(data.draw(st.sampled_from(
            [np.float64, np.float16, np.int32, object, ">f4", np.complex64])))
    if kind == "reshape":
        return array.reshape(1, -1)
    if kind == "slice":
        return array[:-1]
    return array.tolist()


def plausible(data, value):
    """A value of the same kind, often valid: the "loads exactly" branch needs examples."""
    if isinstance(value, (bool, np.bool_)):
        return data.draw(st.sampled_from([True, False, np.bool_(True), np.bool_(False)]))
    if isinstance(value, (int, float)):
        return data.draw(st.one_of(
            st.floats(0, 1), st.integers(0, 2 ** 62), st.floats(0, 1).map(np.float32),
            st.integers(0, 100).map(np.int64), st.floats(0, 1).map(np.array)))
    return data.draw(junk)


def mutate(data, state):
    for _ in range(data.draw(st.integers(1, 3))):
        container, key = data.draw(st.sampled_from(places(state)))
        operation = data.draw(st.sampled_from(["replace", "delete", "insert", "array",
                                               "plausible", "plausible"]))
        if operation == "array" and isinstance(container[key], np.ndarray) \
                and container[key].size:
            container[key] = mutate_array(data, container[key])
        elif operation == "plausible":
            container[key] = plausible(data, container[key])
        elif operation == "delete":
            del container[key]
        elif operation == "insert":
            if isinstance(container, dict):
                container[data.draw(st.text(max_size=6))] = data.draw(junk)
            else:
                container.insert(key, data.draw(junk))
        else:
            container[key] = data.draw(junk)
        if not places(state):
            break


def check_loaded_or_refused(target, load, expected):
    """``load()`` loads ``expected`` exactly, or raises CheckpointError changing nothing."""
    before, state_before = frozen(target), target.state_dict()
    try:
        load()
    except rc.CheckpointError:
        assert frozen(target) == before
        assert_same_state(target.state_dict(), state_before)
        return False
    assert_same_state(target.state_dict(), expected)
    return True


@pytest.fixture(scope="module")
def source_state():
    return make_optimizer(seed=1, sizes=SIZES, steps=3).state_dict()


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_state_dict_loads_exactly_or_is_refused(source_state, data):
    state = copy.deepcopy(source_state)
    mutate(data, state)
    target = make_optimizer(seed=2, sizes=SIZES, steps=5)
    check_loaded_or_refused(target, lambda: target.load_state_dict(state),
                            with_later_defaults(state))


def with_later_defaults(state):
    """What a load must give: options added after the first checkpoint format take their
    registry default when a group lacks them (a checkpoint from an earlier version)."""
    from rmsprop_c._checkpoint import OPTIONS_ADDED_LATER, TOP_DEFAULTS_ADDED_LATER
    from rmsprop_c._options import OPTIONS
    defaults = {option.name: option.default for option in OPTIONS}
    expected = copy.copy(state)
    if isinstance(state, dict):
        expected = {**TOP_DEFAULTS_ADDED_LATER, **state}
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if isinstance(groups, list):
        expected["param_groups"] = [
            {**{key: defaults[key] for key in OPTIONS_ADDED_LATER}, **group}
            if isinstance(group, dict) else group for group in groups]
    return expected


@pytest.fixture(scope="module")
def saved_file(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    source = make_optimizer(seed=1, sizes=SIZES, steps=3)
    path = directory / "good.npz"
    source.save(path)
    return path.read_bytes(), source.state_dict(), directory / "damaged.npz"


@FUZZ_SETTINGS
@given(data=st.data())
def test_damaged_file_loads_exactly_or_is_refused(saved_file, data):
    good, expected, path = saved_file
    damaged = bytearray(good)
    if data.draw(st.booleans()):
        damaged = damaged[:data.draw(st.integers(0, len(good) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            position = data.draw(st.integers(0, len(good) - 1))
            damaged[position] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(damaged))
    target = make_optimizer(seed=2, sizes=SIZES, steps=5)
    check_loaded_or_refused(target, lambda: target.load(path), expected)


def test_the_fuzzers_reach_both_outcomes(saved_file, source_state):
    # The properties above are only meaningful if both branches happen.
    target = make_optimizer(seed=2, sizes=SIZES, steps=5)
    assert check_loaded_or_refused(target, lambda: target.load_state_dict(source_state),
                                   source_state)
    good, expected, path = saved_file
    path.write_bytes(good[:100])
    target = make_optimizer(seed=2, sizes=SIZES, steps=5)
    assert not check_loaded_or_refused(target, lambda: target.load(path), expected)
