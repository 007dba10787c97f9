import json

import pytest

from mol_engine.kl_controller import HORIZON, MAX_ERROR, MAX_WEIGHT, MIN_WEIGHT, KLController, next_weight


def test_weight_rises_while_the_kl_is_above_the_target_and_falls_below_it():
    assert next_weight(1.0, 0.10, 0.05) == pytest.approx(1 + MAX_ERROR / HORIZON)  # error clipped to +0.2
    assert next_weight(1.0, 0.055, 0.05) == pytest.approx(1 + 0.1 / HORIZON)  # proportional inside the clip
    assert next_weight(1.0, 0.0, 0.05) == pytest.approx(1 - MAX_ERROR / HORIZON)
    assert next_weight(2.0, 0.05, 0.05) == 2.0  # on target: unchanged


def test_weight_stays_within_its_bounds():
    assert next_weight(MAX_WEIGHT, 10.0, 0.05) == MAX_WEIGHT
    assert next_weight(MIN_WEIGHT, 0.0, 0.05) == MIN_WEIGHT
    controller = KLController(target=0.05)
    for _ in range(2_000):
        controller.update(5.0)
    assert controller.weight == MAX_WEIGHT


def test_running_kl_is_a_short_average_that_starts_at_the_first_step():
    controller = KLController(target=0.05)
    assert controller.update(0.2) == pytest.approx(1 + MAX_ERROR / HORIZON) and controller.running == 0.2
    controller.update(0.0)
    assert 0 < controller.running < 0.2


def test_state_round_trips_through_json_exactly():
    controller = KLController(target=0.05)
    for kl in (0.3, 0.01, 0.07):
        controller.update(kl)
    back = KLController.from_state(json.loads(json.dumps(controller.state())), target=0.05)
    assert back == controller
    assert back.update(0.04) == controller.update(0.04)
