"""Phantom follow-ups, registration, matching and change, each against the truth the phantom knows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from nodule_bundle.core.geometry import LPS_TO_RAS
from nodule_bundle.data.followup_phantom import FollowupConfig, make_followup_scan, schedule
from nodule_bundle.data.phantom import PhantomConfig, make_scan
from nodule_bundle.followup.change import diameter_change_mm, lung_rads_with_prior, measurement_error_mm, status, vdt_interval, volume_doubling_time
from nodule_bundle.followup.compare import change_row
from nodule_bundle.followup.matching import match_nodules
from nodule_bundle.followup.registration import FollowupError, register
from nodule_bundle.followup.report import format_followup_table

CFG = PhantomConfig(fov_mm=(160.0, 140.0, 100.0), nodules_per_scan=(8, 10))
SERIES = FollowupConfig(timepoints=3)


@pytest.fixture(scope="module")
def series():
    return [make_followup_scan(2, 0, t, CFG, SERIES) for t in range(SERIES.timepoints)]


def test_the_baseline_is_the_phantoms_own_scan_and_the_series_one_patients(series):
    assert np.array_equal(series[0].volume_hu, make_scan(2, 0, CFG).volume_hu)
    dates = [date for date, _ in schedule(2, 0, SERIES)]
    assert [s.study_date for s in series] == dates == sorted(dates) and len(set(dates)) == 3
    assert len({s.patient_id for s in series}) == 1 and len({s.seriesuid for s in series}) == 3
    assert len({s.spacing_mm[2] for s in series[:2]}) == 2 and series[2].spacing_mm[2] != series[0].spacing_mm[2]  # another slice thickness


def test_each_nodule_grows_by_its_doubling_time_and_is_drawn_where_its_record_says(series):
    days = [d for _, d in schedule(2, 0, SERIES)]
    before = {n.track_id: n for n in series[0].nodules}
    grown = 0
    for scan, day in zip(series[1:], days[1:]):
        for n in scan.nodules:  # each record's centre lies in its own reference mask
            voxel = tuple(np.rint(np.linalg.solve(scan.affine_lps, [*n.nodule.center_world_mm, 1.0])[:3]).astype(int))
            assert scan.label_map[voxel] == scan.nodules.index(n) + 1
            prior = before.get(n.track_id)
            if prior is not None and prior.nodule.diameter_mm >= 8.0 and math.isfinite(n.vdt_days):
                assert n.volume_mm3 / prior.volume_mm3 == pytest.approx(2.0 ** (day / n.vdt_days), rel=0.05)
                grown += 1
    assert grown >= 2
    tracks = [{n.track_id for n in s.nodules} for s in series]
    assert tracks[1] - tracks[0] or tracks[2] - tracks[1], "some nodules are new"
    assert all(math.isinf(n.vdt_days) == (n.volume_mm3 == before[n.track_id].volume_mm3) for n in series[1].nodules if n.track_id in before)


def test_registration_carries_the_prior_nodules_onto_the_current_ones(series):
    prior, current = series[0], series[2]
    registration = register(prior.image(), current.image())
    ours = {n.track_id: n.nodule.center_world_mm for n in current.nodules}
    common = [n for n in prior.nodules if n.track_id in ours]
    moved = np.array([ours[n.track_id] for n in common]) - np.array([n.nodule.center_world_mm for n in common])
    carried = registration.prior_to_current(np.array([n.nodule.center_world_mm for n in common]))
    error = np.linalg.norm(carried - np.array([ours[n.track_id] for n in common]), axis=1)
    assert np.median(np.linalg.norm(moved, axis=1)) > 5.0 and error.max() < 1.5  # moved far, carried within 1.5 mm
    assert registration.lung_dice > 0.9 and registration.vessel_correlation > 0.5
    assert np.allclose(registration.current_to_prior(carried), [n.nodule.center_world_mm for n in common], atol=1e-3)


def test_scans_of_two_patients_or_without_lungs_are_refused_naming_both(series):
    other = make_followup_scan(2, 4, 1, CFG, SERIES)
    with pytest.raises(FollowupError, match="prior.scan -> current.scan: .*not one patient's"):
        register(series[0].image(), other.image(), "prior.scan", "current.scan")
    body_only = series[1].volume_hu.copy()
    body_only[body_only < -300] = 40  # no aerated lung: not a chest CT that can be followed
    no_lungs = MetaTensor(torch.from_numpy(body_only[None].astype(np.float32)), affine=series[1].image().affine)
    with pytest.raises(FollowupError, match="current.nii.gz: no lungs found"):
        register(series[0].image(), no_lungs, "prior.nii.gz", "current.nii.gz")


def test_scans_of_different_parts_of_the_chest_are_refused(series):
    """The prior holds the upper half of the chest, the current one the lower half: no overlap to compare."""

    def part(scan, slices: slice) -> MetaTensor:
        affine = scan.affine_lps.copy()
        affine[:3, 3] += affine[:3, 2] * slices.start
        return MetaTensor(torch.from_numpy(scan.volume_hu[:, :, slices][None].astype(np.float32)), affine=torch.as_tensor(LPS_TO_RAS @ affine))

    upper = part(series[0], slice(0, series[0].volume_hu.shape[2] // 2))
    lower = part(series[1], slice(series[1].volume_hu.shape[2] // 2, series[1].volume_hu.shape[2]))
    with pytest.raises(FollowupError, match=r"upper -> lower: the registered lungs overlap by 0\.\d+ .*do not cover the same lungs"):
        register(upper, lower, "upper", "lower")


def test_matching_pairs_each_nodule_once_within_the_gate():
    prior = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    current = np.array([[7.0, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 30.0, 0.0]])  # swapped order; one new, one gone
    matches = match_nodules(prior, current, gate_mm=5.0)
    assert [(m.prior, m.current) for m in matches] == [(1, 0), (0, 1), (None, 2), (2, None)]
    assert matches[0].distance_mm == pytest.approx(math.hypot(1.0, 0.5)) and matches[0].displacement_mm == (-1.0, 0.5, 0.0)
    # the nearest for each alone would take prior 0 twice over; the assignment does not
    crowded = match_nodules(np.array([[0.0, 0, 0], [3.0, 0, 0]]), np.array([[1.0, 0, 0], [1.5, 0, 0]]), gate_mm=5.0)
    assert sorted((m.prior, m.current) for m in crowded) == [(0, 0), (1, 1)]
    assert match_nodules(np.zeros((0, 3)), np.zeros((0, 3))) == []


def test_volume_doubling_time_and_its_interval():
    assert volume_doubling_time(100.0, 200.0, 120) == pytest.approx(120.0)
    assert volume_doubling_time(200.0, 100.0, 90) == pytest.approx(-90.0) and volume_doubling_time(5.0, 5.0, 30) == math.inf
    low, high = vdt_interval(100.0, 400.0, 200, log_sd=0.1)
    assert low < 100.0 < high < math.inf
    assert vdt_interval(100.0, 105.0, 200, log_sd=0.1)[1] == math.inf  # within the measurement's error: maybe no growth
    with pytest.raises(ValueError, match="positive"):
        volume_doubling_time(0.0, 10.0, 30)


@pytest.mark.parametrize(
    "args, expected",
    [
        (("solid", 5.0, 5.0, None), "3"),  # new 4-<6
        (("solid", 3.5, 3.5, None), "2"),  # new <4
        (("solid", 9.0, 9.0, None), "4B"),  # new >=8
        (("solid", 7.5, 7.5, 5.5), "4A"),  # growing <8
        (("solid", 10.0, 10.0, 8.2), "4B"),  # growing >=8
        (("solid", 7.0, 7.0, 6.5), "2"),  # a 3 that stayed
        (("solid", 9.0, 9.0, 8.5), "3"),  # a 4A that stayed
        (("solid", 8.4, 8.4, 7.6), "4A"),  # not growth, but it reached a higher size category
        (("solid", 16.0, 16.0, 16.2), "4B"),
        (("solid", None, None, 6.0), None),  # gone
        (("part-solid", 5.0, 2.0, None), "3"),  # new, total <6
        (("part-solid", 9.0, 3.0, None), "4A"),  # new, solid component <4
        (("part-solid", 12.0, 6.0, 11.0, 3.0, "part-solid"), "4B"),  # solid component growing, >=4
        (("part-solid", 4.5, 2.0, 4.0, 0.0, "ground-glass"), "2"),  # a solid component appeared, but the nodule is under 6 mm
        (("ground-glass", 32.0, 0.0, None), "3"),
        (("ground-glass", 32.0, 0.0, 31.0, 0.0, "ground-glass"), "2"),
        (("solid", 7.0, 7.0, 6.5, None, None, 1.8), "4A"),  # the change given (from the volumes): growing
        (("solid", 7.5, 7.5, 5.5, None, None, 0.4), "3"),  # the diameters differ by 2 mm, the volumes say stable
        (("solid", 8.1, 8.1, 7.7, None, None, 0.3), "4A"),  # enlarged a little, into a higher size category
        (("solid", 8.1, 8.1, 7.7, None, None, 0.3, 0.45), "2"),  # ... by less than the measurements' error: a 3 that stayed
        (("solid", 8.1, 8.1, 7.7, None, None, -0.1), "2"),  # over 8 mm now, but the volumes say it did not enlarge: a 3 that stayed
        (("solid", 7.0, 7.0, 8.0, 0.0, "ground-glass", -0.5), "3"),  # no enlargement, but ground glass turned solid
    ],
)
def test_lung_rads_with_the_prior(args, expected):
    assert lung_rads_with_prior(*args) == expected


def test_status_by_the_change_in_mean_diameter():
    assert [status(None, 5.0), status(5.0, None), status(5.0, 6.6), status(5.0, 6.4), status(6.6, 5.0)] == ["new", "resolved", "growing", "stable", "shrinking"]


def _ball(diameter_mm: float) -> float:
    """A ball's volume (mm3)."""
    return math.pi / 6.0 * diameter_mm**3


def _sizes(mean_mm: float, volume_mm3: float) -> dict:
    """A solid finding's sizes as ``change_row`` takes them."""
    return {"mean_diameter_mm": mean_mm, "volume_mm3": volume_mm3, "solid_mean_diameter_mm": mean_mm, "texture": "solid"}


def test_status_by_the_change_in_mean_diameter_the_volumes_imply():
    assert status(5.0, 6.4, change_mm=1.6) == "growing" and status(5.0, 6.6, change_mm=0.2) == "stable"
    # a ball of 8 mm grown to 10 mm: the volumes' ratio says +2 mm whatever error the diameters carry
    assert diameter_change_mm(8.6, 9.4, _ball(8.0), _ball(10.0)) == pytest.approx(2.0)  # the diameters alone: +0.8 mm
    assert diameter_change_mm(8.0, 9.0) == 1.0 and diameter_change_mm(8.0, 9.0, None, 300.0) == 1.0  # no volumes: the difference


def test_measured_sizes_must_enlarge_beyond_their_error_to_reach_a_higher_category():
    # one standard deviation of two measured volumes' change, in mean diameter: about 6 % of it
    assert measurement_error_mm(7.8, 8.1) == pytest.approx(0.057 * 7.95, rel=0.02)
    # 7.8 -> 8.1 mm: the volumes say +0.25 mm, within the measurements' error: a 3 that stayed
    prior, current = _sizes(7.8, _ball(7.8)), _sizes(8.1, _ball(8.05))
    assert change_row(prior, current, 365)["lung_rads_category"] == "2"
    # the same sizes exact (a reference's): any enlargement into 4A counts
    assert change_row(prior, current, 365, measured=False)["lung_rads_category"] == "4A"
    # enlarged beyond the error (+0.6 mm by the volumes): 4A
    assert change_row(prior, _sizes(8.1, _ball(8.4)), 365)["lung_rads_category"] == "4A"


def test_a_change_row_reads_growth_from_the_volumes_unless_told_not_to():
    prior, current = _sizes(6.0, 113.1), _sizes(7.8, 120.0)  # the diameters say +1.8 mm, the volumes +0.1 mm
    by_volume, by_diameter = change_row(prior, current, 365), change_row(prior, current, 365, measured=False)
    assert by_volume["status"] == "stable" and by_volume["mean_diameter_change_mm"] == 0.1 and by_volume["lung_rads_category"] == "2"
    assert by_diameter["status"] == "growing" and by_diameter["mean_diameter_change_mm"] == 1.8 and by_diameter["lung_rads_category"] == "4A"
    # the table shows the change the status was decided on beside both sizes
    table = format_followup_table([{**by_volume, "current_nodule_id": "n1", "prior_nodule_id": "p1", "prior": prior, "current": current}])
    assert table.splitlines()[1].split()[2:6] == ["stable", "6.0", "7.8", "+0.1"]
