"""Calibration: the detectors' answers on a model with planted neurons, against what was planted.

For one planted type (``dead``, ``token``, ``positional``, ``delta``) with planted set ``P`` (per
layer, each neuron with its expected answer: the covered token, or the positional type; none for
dead and Δ-sensitive neurons) and the detector's found set ``F``:

* ``found``: planted neurons in ``F`` whose answer is the expected one (``covered tokens ==
  {expected token}``; positional type ``== expected``); ``wrong``: in ``F`` with another answer;
  ``missed``: not in ``F``;
* ``false_positives``: neurons of ``F`` outside ``P``;
* ``null``: the detector's own null calibration summed over layers
  (:func:`neuronbench.detectors.null.combine`): ``null_count`` neurons expected on a null of the
  same sample size, with standard deviation ``null_std``.

The calibration passes when ``found == planted`` and ``false_positives ≤ null_count + 2 ·
null_std`` (the number of neurons the detector finds by chance, plus two standard deviations of
it), i.e. for a count::

    allowed = ⌊null_count + 2 · null_std⌋        (0 for a detector without a null)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from neuronbench.detectors.null import NullCalibration, combine
from neuronbench.detectors.result import Detection
from neuronbench.document import MISSING, Block, Paragraph, fmt, narrow_blocks

Neuron = tuple[int, int]


def _no_answer(_detection: Detection, _index: int) -> None:
    return None


def _positional_type(detection: Detection, index: int) -> str:
    return detection.details["types"][index]


def _covered_token(decode: Callable[[int], str]) -> Callable[[Detection, int], str]:
    def answer(detection: Detection, index: int) -> str:
        return "|".join(sorted(decode(int(t)) for t in detection.details["covered_tokens"][index]))

    return answer


ANSWERS: dict[str, Callable[[Callable[[int], str]], Callable[[Detection, int], str | None]]] = {
    "dead": lambda _decode: _no_answer,
    "delta": lambda _decode: _no_answer,
    "positional": lambda _decode: _positional_type,
    "token": _covered_token,
}
"""Per planted type: given a token decoder, the detector's answer for a detected neuron."""


@dataclass(frozen=True)
class CalibrationResult:
    """One detector's answers on the planted neurons of one type (module docstring)."""

    neuron_type: str
    planted: tuple[Neuron, ...]
    found: tuple[Neuron, ...]
    wrong: tuple[tuple[int, int, str | None, str | None], ...]
    missed: tuple[Neuron, ...]
    false_positives: tuple[Neuron, ...]
    null: NullCalibration | None

    @property
    def allowed_false_positives(self) -> int:
        """``⌊null_count + 2 · null_std⌋``, 0 without a null (module docstring)."""
        return 0 if self.null is None else math.floor(self.null.null_count + 2 * self.null.null_std)

    @property
    def passed(self) -> bool:
        return len(self.found) == len(self.planted) and len(self.false_positives) <= self.allowed_false_positives

    def metrics(self) -> dict[str, int | float | bool | None]:
        return {"planted": len(self.planted), "found": len(self.found), "wrong_answer": len(self.wrong),
                "missed": len(self.missed), "false_positives": len(self.false_positives),
                "null_count": None if self.null is None else self.null.null_count,
                "null_std": None if self.null is None else self.null.null_std,
                "allowed_false_positives": self.allowed_false_positives, "passed": self.passed}

    def describe(self) -> str:
        """A sentence naming every planted neuron not found and every false positive."""
        parts = [f"{self.neuron_type}: {len(self.found)}/{len(self.planted)} planted found"]
        parts += [f"L{l}N{i} answered {got!r}, planted {want!r}" for l, i, got, want in self.wrong]
        parts += [f"L{l}N{i} missed" for l, i in self.missed]
        parts.append(f"{len(self.false_positives)} false positives (allowed {self.allowed_false_positives})"
                     + (f": {', '.join(f'L{l}N{i}' for l, i in self.false_positives)}" if self.false_positives else ""))
        return "; ".join(parts)


def calibrate(neuron_type: str, planted: Mapping[int, Mapping[int, str | None]],
              detections: Mapping[int, Detection], decode: Callable[[int], str]) -> CalibrationResult:
    """Compare ``detections`` (``{layer: Detection}``) with ``planted`` (``{layer: {index:
    expected answer}}``), allowing the false positives of the detections' null (module
    docstring); ``decode`` turns a token id into its text."""
    answer = ANSWERS[neuron_type](decode)
    found, wrong, missed, false_positives = [], [], [], []
    for layer, detection in sorted(detections.items()):
        expected = planted.get(layer, {})
        detected = {int(i) for i in detection.indices}
        for index in sorted(expected):
            if index not in detected:
                missed.append((layer, index))
                continue
            got = answer(detection, index)
            (found.append((layer, index)) if got == expected[index]
             else wrong.append((layer, index, got, expected[index])))
        false_positives += [(layer, index) for index in sorted(detected - set(expected))]
    all_planted = tuple((layer, index) for layer in sorted(planted) for index in sorted(planted[layer]))
    missed += [n for n in all_planted if n[0] not in detections]
    return CalibrationResult(neuron_type, all_planted, tuple(found), tuple(wrong), tuple(missed),
                             tuple(false_positives), combine(d.null for d in detections.values()))


CALIBRATION_COLUMNS = ("planted", "found", "wrong_answer", "missed", "false_positives")
CALIBRATION_HEADERS = ("model", "planted type", *CALIBRATION_COLUMNS, "null (count ± std)", "allowed_false_positives",
                       "passed", "missed neurons", "false-positive neurons")


def _null(metrics: dict) -> str:
    if metrics.get("null_count") is None:
        return MISSING
    return f"{fmt(float(metrics['null_count']))} ± {fmt(float(metrics['null_std']))}"


def _named(neurons: list) -> str:
    return ", ".join(f"L{n[0]}N{n[1]}" for n in neurons) or "—"


def calibration_rows(records: list[dict]) -> list[list[object]]:
    """One row per calibration record (``analysis == "calibration"``), columns
    :data:`CALIBRATION_HEADERS`."""
    rows = []
    for record in records:
        if record["analysis"] == "calibration":
            outcome = record.get("figures", {}).get("calibration", {})
            metrics = record["metrics"]
            rows.append([record["model"], record["neuron_type"], *(metrics[c] for c in CALIBRATION_COLUMNS),
                         _null(metrics), metrics["allowed_false_positives"], metrics["passed"],
                         _named(outcome.get("missed", [])), _named(outcome.get("false_positives", []))])
    return rows


def calibration_blocks(records: list[dict]) -> list[Block]:
    """The report's calibration section: :func:`calibration_rows` and what they mean."""
    legend = Paragraph("Planted neurons of the calibration models against each planted type's detector: found "
                       "(with the planted covered token or positional type), found with another answer, missed, "
                       "and neurons found outside the planted set (false positives); the detector's null count "
                       "(neurons it finds on a null of the same sample size, summed over layers) and the false "
                       "positives allowed, ⌊null count + 2 std⌋.")
    return [*narrow_blocks(list(CALIBRATION_HEADERS), calibration_rows(records), keep=2), legend]
