"""Calibration: the detectors' answers on a model with planted neurons, against what was planted.

For one planted type (``dead``, ``token``, ``positional``) with planted set ``P`` (per layer,
each neuron with its expected answer: the covered token, or the positional type) and the
detector's found set ``F``:

* ``found``: planted neurons in ``F`` whose answer is the expected one (``covered tokens ==
  {expected token}``; positional type ``== expected``); ``wrong``: in ``F`` with another answer;
  ``missed``: not in ``F``;
* ``false_positives``: neurons of ``F`` outside ``P``.

The calibration passes when ``found == planted`` and ``false_positives ≤ allowed`` (the number
the detector is expected to find by chance).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from neuronbench.detectors.result import Detection
from neuronbench.document import Block, Paragraph, narrow_blocks

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
    allowed_false_positives: int

    @property
    def passed(self) -> bool:
        return len(self.found) == len(self.planted) and len(self.false_positives) <= self.allowed_false_positives

    def metrics(self) -> dict[str, int | bool]:
        return {"planted": len(self.planted), "found": len(self.found), "wrong_answer": len(self.wrong),
                "missed": len(self.missed), "false_positives": len(self.false_positives),
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
              detections: Mapping[int, Detection], decode: Callable[[int], str],
              allowed_false_positives: int = 0) -> CalibrationResult:
    """Compare ``detections`` (``{layer: Detection}``) with ``planted`` (``{layer: {index:
    expected answer}}``); ``decode`` turns a token id into its text."""
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
                             tuple(false_positives), allowed_false_positives)


CALIBRATION_COLUMNS = ("planted", "found", "wrong_answer", "missed", "false_positives", "allowed_false_positives",
                       "passed")


CALIBRATION_HEADERS = ("model", "planted type", *CALIBRATION_COLUMNS, "missed neurons", "false-positive neurons")


def _named(neurons: list) -> str:
    return ", ".join(f"L{n[0]}N{n[1]}" for n in neurons) or "—"


def calibration_rows(records: list[dict]) -> list[list[object]]:
    """One row per calibration record (``analysis == "calibration"``), columns
    :data:`CALIBRATION_HEADERS`."""
    rows = []
    for record in records:
        if record["analysis"] == "calibration":
            outcome = record.get("figures", {}).get("calibration", {})
            rows.append([record["model"], record["neuron_type"],
                         *(record["metrics"][c] for c in CALIBRATION_COLUMNS),
                         _named(outcome.get("missed", [])), _named(outcome.get("false_positives", []))])
    return rows


def calibration_blocks(records: list[dict]) -> list[Block]:
    """The report's calibration section: :func:`calibration_rows` and what they mean."""
    legend = Paragraph("Planted neurons of the calibration models against each planted type's detector: found "
                       "(with the planted covered token or positional type), found with another answer, missed, "
                       "and neurons found outside the planted set (false positives) against the number allowed.")
    return [*narrow_blocks(list(CALIBRATION_HEADERS), calibration_rows(records), keep=2), legend]
