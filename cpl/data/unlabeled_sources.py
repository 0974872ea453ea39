"""The unlabeled-source table: every value of ``unlabeled.source``, the settings it reads and what it means for a run.

This is the one place a source is spelled out. Config validation, the stage weights, the sweep, the Launch page
and the sweep tables read :data:`SOURCES`; the stage layer has one plan (stage ``data``: which training rows stay
labeled, which files) and one build (stage ``unlabeled``: the images) per entry, :data:`cpl.stages.unlabeled.BUILDS`.
Adding a source is one entry here, one plan and build there and, if it has settings, fields of ``unlabeled.*`` in
:mod:`cpl.config` named in its ``options`` (setting them for another source is refused by name).
Torch-free: the app reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How a source reads ``unlabeled.num_images``: the number of images it draws (0 = none) ...
DRAWN = "drawn"
#: ... or a cap on the images it lists (0 = all of them).
CAP = "cap"


@dataclass(frozen=True)
class UnlabeledSource:
    """One unlabeled source (one value of ``unlabeled.source``).

    Attributes:
        name: the value of ``unlabeled.source``.
        description: what a method that trains on unlabeled images gets from it, one line (Launch page, docs).
        control: what a labeled-only method (baseline, center) makes of it, one line: the control it is.
        options: the ``unlabeled.*`` keys only this source reads; another source refuses them when set.
        required: the keys of ``options`` that must name a path (``unlabeled.folder``: the folder of images).
        num_images: how it reads ``unlabeled.num_images``: :data:`DRAWN`, :data:`CAP` or ``""`` (not at all).
        hides_labeled: whether its images are labeled training rows with the labels hidden, so that a labeled-only
            method on it trains on the rows a run with it keeps (the labeled-only control).
        generates: whether its images are generated (a DCGAN trained, or reused from the GAN cache, and sampled).
    """

    name: str
    description: str
    control: str
    options: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    num_images: str = ""
    hides_labeled: bool = False
    generates: bool = False


#: The source of a run without unlabeled images.
NONE = "none"

_TABLE = (
    UnlabeledSource("gan", "images drawn from a DCGAN trained on the labeled training images (the papers' setting)",
                    "counted only, by an epoch length of union: the step-matched control for a run with these GAN "
                    "images", num_images=DRAWN, generates=True),
    UnlabeledSource("folder", "any folder of person images under a data root",
                    "counted only, by an epoch length of union: the step-matched control for a run with these images",
                    options=("folder",), required=("folder",), num_images=CAP),
    UnlabeledSource("holdout", "real training images with their labels hidden: pseudo-labels can be scored right or "
                               "wrong",
                    "the labeled-only control: exactly the labeled rows a holdout run of the same seed keeps, the "
                    "held-out ones never trained on", options=("holdout_fraction",), hides_labeled=True),
    UnlabeledSource(NONE, "no unlabeled images: every method trains on the labeled images only",
                    "an ordinary reference: every labeled image"),
)

#: Every source by name.
SOURCES: dict[str, UnlabeledSource] = {s.name: s for s in _TABLE}


def hides_labeled(name: str) -> bool:
    """Whether the source named ``name`` hides labeled training rows (False for a name not in :data:`SOURCES`, e.g. a
    damaged record's)."""
    source = SOURCES.get(name)
    return source is not None and source.hides_labeled


def unused_option(source: str, values: dict[str, object], defaults: dict[str, object]) -> tuple[str, str] | None:
    """The first ``unlabeled.*`` key (of ``values``, the section as a dict) that only another source reads and that is
    set away from ``defaults``, with the source that reads it; None when source ``source`` can use every setting."""
    own = SOURCES[source].options
    for other in _TABLE:
        for key in other.options:
            if key not in own and values[key] != defaults[key]:
                return key, other.name
    return None
