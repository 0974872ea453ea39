"""The remedy table: the three remedies for CPL's hub collapse as the app and the sweep name them, which config
keys each owns, which methods' labels it acts on, and a sweep's remedy *variants* (docs/methods.md, "Remedies").

Torch-free and free of method-name literals: what a remedy acts on is read from ``Method.label_from`` in the
method table. The math is in :mod:`cpl.pseudo.remedies`; config validation (``cpl.config._validate_remedies``)
stays the one judge of a combination, and this module only names and groups the settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cpl.methods import FROM_CENTERS, FROM_SOFTMAX, METHODS


@dataclass(frozen=True)
class Remedy:
    """One remedy for hub collapse.

    Attributes:
        name: its short name in tables, run labels and a sweep's ``--variants`` (a path-safe word).
        label: its heading on the Launch page.
        description: the one line the Launch page shows under it.
        reference: the paper(s) it comes from.
        keys: the dotted ``train.*`` config keys it owns (its switch first).
        preset: the ``key=value`` settings a sweep variant of this name applies; () when the remedy has no
            setting valid for every method it acts on (confidence thresholds are a cosine for ``cpl`` and a
            probability for ``onehot``), so a variant must give its values.
        label_from: the ``Method.label_from`` values of the methods it acts on.
    """

    name: str
    label: str
    description: str
    reference: str
    keys: tuple[str, ...]
    preset: tuple[str, ...]
    label_from: tuple[str, ...]

    def acts_on(self, method: str | None) -> bool:
        """Whether this remedy can act on method ``method``'s pseudo-label (False for a name not in the table)."""
        entry = METHODS.get(method)  # type: ignore[arg-type]
        return entry is not None and bool(entry.label_from) and entry.label_from in self.label_from


_TABLE = (
    Remedy("sinkhorn", "Balanced assignment (Sinkhorn-Knopp)",
           "Labels of the whole unlabeled set at each epoch start as an optimal transport with equal class "
           "shares, so no few centers ('hubs') take every image.",
           "Y. M. Asano et al., \"Self-labelling via simultaneous clustering and representation learning\" (SeLa), "
           "ICLR 2020; M. Caron et al., SwAV, NeurIPS 2020",
           ("train.assignment", "train.sinkhorn_epsilon", "train.sinkhorn_iters"), ("train.assignment=sinkhorn",),
           (FROM_CENTERS,)),
    Remedy("csls", "Hubness-aware similarity (CSLS)",
           "2·cos(u, c) − r(c) − r(u): a center near everything pays for it, so hubs lose their pull.",
           "A. Conneau et al., \"Word translation without parallel data\", ICLR 2018",
           ("train.similarity", "train.csls_k"), ("train.similarity=csls",), (FROM_CENTERS,)),
    Remedy("select", "Confidence selection",
           "An unlabeled image whose label's score or margin to the runner-up is below the minimum is not trained "
           "on in that step (the share kept is logged per epoch).",
           "K. Sohn et al., \"FixMatch\", NeurIPS 2020; B. Zhang et al., \"FlexMatch\", NeurIPS 2021",
           ("train.select_min_score", "train.select_min_margin"), (), (FROM_CENTERS, FROM_SOFTMAX)),
)

#: Every remedy by name, in the order the UI lists them.
REMEDIES: dict[str, Remedy] = {r.name: r for r in _TABLE}
#: The sweep variant without any remedy (the published method).
PLAIN = "none"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,39}$")


def remedy_of_key(key: str) -> Remedy | None:
    """The remedy owning dotted config key ``key`` (``train.csls_k`` → csls), None for any other key."""
    return next((r for r in _TABLE if key in r.keys), None)


def acting_remedies(method: str | None) -> list[Remedy]:
    """The remedies that can act on method ``method``, in table order ([] for baseline, lsro, ...)."""
    return [r for r in _TABLE if r.acts_on(method)]


@dataclass(frozen=True)
class Variant:
    """One remedy variant of a sweep: a name (its table label, ``cpl + <name>``) and its ``key=value`` settings,
    all of them remedy keys. ``PLAIN`` has no settings."""

    name: str
    settings: tuple[str, ...] = ()

    def acts_on(self, method: str | None) -> bool:
        """Whether every remedy the variant sets can act on ``method`` (the plain variant acts on every method)."""
        return all(remedy_of_key(s.split("=", 1)[0].strip()).acts_on(method) for s in self.settings)  # type: ignore[union-attr]

    def to_dict(self) -> dict:
        """The variant as sweep.json records it: ``{"name": ..., "settings": [...]}``."""
        return {"name": self.name, "settings": list(self.settings)}


def parse_variants(text: str) -> list[Variant]:
    """``--variants`` → variants. Entries are separated by ``;``; each is ``none``, a remedy's name, names joined
    by ``+`` (``sinkhorn+csls``: their presets together), or ``NAME:key=value,key=value`` with remedy keys only
    (``select:train.select_min_margin=0.05``). Raises ValueError naming the entry (the caller adds the flag)."""
    out: list[Variant] = []
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        variant = _parse_entry(entry)
        if _folder_name(variant.name) in {_folder_name(v.name) for v in out}:  # two cells in one run directory
            raise ValueError(f"variant {variant.name!r} is named twice (run ids write '+' as '-')")
        out.append(variant)
    if not out:
        raise ValueError("give at least one variant (e.g. 'none;sinkhorn;csls')")
    return out


def _folder_name(name: str) -> str:
    return name.replace("+", "-")


def _parse_entry(entry: str) -> Variant:
    name, sep, rest = entry.partition(":")
    name = name.strip()
    if not _NAME_OK.match(name):
        raise ValueError(f"{name!r}: a variant name is a word of letters, digits, '.', '_', '-', '+'")
    if sep:
        if name == PLAIN:
            raise ValueError(f"{PLAIN!r} is the published method and takes no settings; name the variant")
        settings = tuple(s.strip() for s in rest.split(",") if s.strip())
        for s in settings:
            key = s.split("=", 1)[0].strip()
            if "=" not in s or remedy_of_key(key) is None:
                raise ValueError(f"{name}: {s!r} is not a remedy setting key=value (keys: "
                                 + ", ".join(k for r in _TABLE for k in r.keys) + ")")
        if not settings:
            raise ValueError(f"{name}: no settings after ':'")
        return Variant(name, settings)
    if name == PLAIN:
        return Variant(PLAIN)
    settings = []
    for part in name.split("+"):
        remedy = REMEDIES.get(part)
        if remedy is None or not remedy.preset:
            presets = ", ".join(r.name for r in _TABLE if r.preset)
            raise ValueError(f"{part!r} has no preset (presets: {PLAIN}, {presets}); give its settings as "
                             f"NAME:key=value, e.g. select:train.select_min_margin=0.05")
        settings += remedy.preset
    return Variant(name, tuple(settings))


def variant_from_dict(data: dict | None) -> Variant:
    """A variant as sweep.json records it (``None``, a sweep made before variants: the plain one)."""
    if not data:
        return Variant(PLAIN)
    return Variant(str(data["name"]), tuple(data.get("settings") or ()))


def variant_label(method: str, variant: str) -> str:
    """A method under a variant as the tables name it: ``cpl`` (plain), ``cpl + sinkhorn``,
    ``cpl + sinkhorn + csls``."""
    return method if variant in ("", PLAIN) else " + ".join([method, *variant.split("+")])


def format_variants(variants: list[Variant]) -> str:
    """The ``--variants`` text that :func:`parse_variants` reads back as ``variants`` (each written out with its
    settings, so a resumed sweep applies exactly what its sweep.json records)."""
    return ";".join(v.name if not v.settings else f"{v.name}:{','.join(v.settings)}" for v in variants)
